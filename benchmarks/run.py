"""jresnet's benchmark: one command, one worker process per configuration and round.

Usage (from the repository root)::

    python -m benchmarks.run --data-dir DIR [--profile cpu|gpu] [--dry-run] [--rounds N]
                             [--output PATH] [--only NAMES] [--budget-s S]
                             [--baseline-tree DIR] [--readme README.md]
    python -m benchmarks.run --render RESULTS.json [--output PATH] [--readme README.md]

``--data-dir`` is a TFDS data dir holding ``cifar10`` (``python -m jresnet.prepare_data``
writes one); it is loaded once (`benchmarks.data`) and handed to the workers.

Profiles (`benchmarks.configs`):

* ``cpu`` (15 to 60 minutes on 2 cores): jresnet against a PyTorch reproduction of the
  seed's training (`benchmarks.torch_seed`). The model step (random data, compile time
  apart) through jresnet's jitted driver (`jresnet.steps.make_train_fn`) with default
  XLA flags, the YNN flag, K unrolled steps per call and a rolled scan; end to end,
  `jresnet.train.train_and_evaluate` itself over two short epochs (the second timed by
  the loop's own ``metrics.jsonl``), against the seed's ``DataLoader(num_workers=2)``
  loop; eval at batch 1000; each of ResNet-20's 21 convolutions alone; the fp32 matmul
  peak; peak RSS; once, where the step spends time beyond the model.
* ``gpu`` (one GPU; ``--budget-s`` caps it): the fused train step in float32 and bfloat16
  at the seed's batch and a large one, K unrolled steps per call against rolled scans
  (K, or a whole epoch per call), with XLA's cost of a step against the card's
  datasheet (`benchmarks.gpu`) and a measured device copy; the seed's model step and
  loop on the same card (eager and channels_last); jresnet's loop end to end.

Every configuration runs in its own worker process (`benchmarks.workers`: XLA flags,
thread settings, the GPU's memory and the peak RSS belong to it alone), interleaved
``A B C ... A B C ...`` over ``--rounds`` rounds; tables show the median over rounds, the
min-max, and ratios of medians (`benchmarks.report`).

``--baseline-tree DIR`` (a checkout of another commit, e.g. made with ``git worktree add
--detach DIR COMMIT``) measures a change against that commit in the same run: each
configuration's worker runs from this checkout, then from DIR (its working directory and
``PYTHONPATH``, so DIR's ``benchmarks`` and ``jresnet``), interleaved ``A A' B B' ...``;
both use the data this checkout prepared. The report adds a section with both rows,
labelled with each tree's short commit (``git describe --always --dirty``), and the ratio
of their medians. It is written only to ``--output``, never into benchmarks/.

A full run writes ``benchmarks/RESULTS.md`` (cpu) or ``benchmarks/GPU_RESULTS.md`` (gpu)
and the ``.json`` beside it, which is rewritten after every worker (a run cut short keeps
what it measured); ``--render`` writes the ``.md`` again from a ``.json``. ``--readme
README.md`` (a full CPU run, or ``--render`` of one) also writes its summary, jresnet's img/s
against the seed's PyTorch loop (`benchmarks.report.speed_table`), between that file's
``speed-table`` markers: the README's speed numbers are never typed. ``--dry-run``
runs each configuration once at tiny sizes (the gpu profile's on a CPU too), prints the
report and writes only to ``--output``; its numbers mean nothing, and it is never
written into benchmarks/. No file names a path of the machine (data dir, checkout,
Python).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from jresnet import errors
from jresnet.results import code_version
from jresnet.xla_setup import KNOWN_JAXLIB_PREFIXES, YNN_FUSION_FLAG

try:
    from benchmarks import data as bench_data
    from benchmarks import machine, report
    from benchmarks.configs import PROFILES, SIZES, Config, profile_configs
    from benchmarks.resnet20 import conv_totals
except ModuleNotFoundError as e:  # run as a file: benchmarks/ is not importable as a package
    if e.name != "benchmarks":
        raise
    print("error: run from the repository root: python -m benchmarks.run", file=sys.stderr)
    raise SystemExit(errors.EXIT_USAGE) from None

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
WORKER_TIMEOUT_S = 600
DEFAULT_OUTPUT = {"cpu": "RESULTS.md", "gpu": "GPU_RESULTS.md"}


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[Config]]:
    """The options and the configurations to run (``--only``, else the profile's; a dry
    run: not the "once" ones)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--data-dir", help="TFDS data dir holding cifar10 (required)")
    parser.add_argument("--profile", choices=PROFILES, default="cpu", help="default: cpu")
    parser.add_argument("--dry-run", action="store_true", help="one round, tiny sizes")
    parser.add_argument("--rounds", type=int, help="default 3 (gpu, dry run: 1)")
    parser.add_argument("--output", help="report path (default benchmarks/; dry run: stdout)")
    parser.add_argument("--only", help="comma-separated config names (for development)")
    parser.add_argument("--budget-s", type=float, help="no worker starts or runs past it")
    parser.add_argument("--render", help="only write the report of this results .json")
    parser.add_argument(
        "--baseline-tree", help="a checkout of another commit: each worker runs from it too"
    )
    parser.add_argument(
        "--readme",
        help="also write a full CPU run's summary between this file's speed-table markers",
    )
    args = parser.parse_args(argv)
    if args.readme and (args.dry_run or args.baseline_tree or args.only or args.profile != "cpu"):
        parser.error("--readme takes a full CPU run (no --dry-run, --only, --baseline-tree)")
    if args.render:
        return args, []
    if not args.data_dir:
        parser.error("--data-dir is required: a TFDS data dir holding cifar10")
    if args.baseline_tree:
        args.baseline_tree = os.path.abspath(args.baseline_tree)
        if not os.path.isfile(os.path.join(args.baseline_tree, "benchmarks", "workers.py")):
            parser.error(
                f"--baseline-tree {args.baseline_tree} holds no benchmarks/workers.py: give "
                "a checkout of jresnet, e.g. made with git worktree add --detach DIR COMMIT"
            )
    default_rounds = 1 if args.dry_run or args.profile == "gpu" else 3
    args.rounds = args.rounds or default_rounds
    configs = profile_configs(args.profile)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {c.name for c in configs}
        if unknown:
            known = sorted(c.name for c in configs)
            parser.error(f"unknown {args.profile} configs {sorted(unknown)}; known: {known}")
        return args, [c for c in configs if c.name in wanted]
    return args, [c for c in configs if not (args.dry_run and c.once)]


def ynn_flag_usable(jaxlib_version: str) -> bool:
    """Whether this jaxlib accepts the YNN flag (known versions, else a probe process)."""
    if jaxlib_version.startswith(KNOWN_JAXLIB_PREFIXES):
        return True
    env = dict(os.environ, XLA_FLAGS=YNN_FUSION_FLAG, JAX_PLATFORMS="cpu")
    probe = "import jax.numpy as jnp; jnp.zeros(2).block_until_ready()"
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True)
    return result.returncode == 0


def worker_env(cfg: Config | None, tree: str | None = None) -> dict[str, str]:
    """A worker's environment: XLA_FLAGS only for "ynn" configurations; the cpu profile's
    JAX on the CPU; ``PYTHONPATH`` the baseline ``tree`` for its workers."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = tree
    env.pop("XLA_FLAGS", None)
    env.pop("JRESNET_XLA_CPU_FLAGS", None)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if cfg is None or cfg.platform == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
    if cfg is not None and cfg.xla == "ynn":
        env["XLA_FLAGS"] = YNN_FUSION_FLAG
    return env


def worker_args(name: str, dry_run: bool, data: str, result: str) -> list[str]:
    """A worker's arguments after ``python -m benchmarks.workers``."""
    return ["--worker", name, "--result", result, "--data", data] + ["--dry-run"] * dry_run


def shown_command(argv: Sequence[str]) -> str:
    """``python -m benchmarks.run ARGS`` with path-valued options shown as placeholders."""
    placeholders = {
        "--data-dir": "DATA_DIR",
        "--output": "OUTPUT",
        "--render": "RESULTS",
        "--baseline-tree": "BASELINE_TREE",
    }
    shown: list[str] = []
    hide: str | None = None
    for arg in argv:
        if hide:
            shown.append(hide)
            hide = None
            continue
        option, equals, _ = arg.partition("=")
        if option in placeholders:
            if equals:
                shown.append(f"{option}={placeholders[option]}")
                continue
            hide = placeholders[option]
        shown.append(arg)
    return shlex.join(["python", "-m", "benchmarks.run", *shown])


def tree_commit(tree: str) -> str:
    """The checkout ``tree``'s short commit, ``-dirty`` where tracked files changed
    (`jresnet.results.code_version` of its jresnet); "unknown" where git can't say."""
    return code_version(os.path.join(tree, "jresnet"), abbrev=7) or "unknown"


def scrub_paths(text: str, paths: dict[str, str]) -> str:
    """``text`` with each of ``paths``' keys (machine paths) replaced by its placeholder."""
    for path in sorted(paths, key=len, reverse=True):
        text = text.replace(path, paths[path])
    return text


@dataclasses.dataclass
class Session:
    """One benchmark run's worker scheduling: where results go and what was started.

    Attributes:
      dry_run: the profiles' dry-run sizes.
      tmp: temporary folder for the workers' results and the prepared data.
      log: progress messages (stderr).
      placeholders: machine path -> placeholder, applied to worker errors.
      deadline: ``time.time()`` after which no worker starts or runs (``--budget-s``).
      worker_commands: configuration name -> (environment, command) as shown in the report
        (a baseline worker's under ``"NAME (baseline)"``).
      baseline_tree: the ``--baseline-tree`` checkout, or None.
    """

    dry_run: bool
    tmp: str
    log: Callable[[str], None]
    placeholders: dict[str, str]
    deadline: float = float("inf")
    worker_commands: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    baseline_tree: str | None = None

    def spawn(
        self, name: str, cfg: Config | None, extra: Sequence[str] = (), baseline: bool = False
    ) -> dict[str, Any]:
        """Runs one worker (from the baseline tree if ``baseline``); returns its result (or
        the error), wall time and background load."""
        left = self.deadline - time.time()
        if left <= 0:
            return {"skipped": "out of time (--budget-s)"}
        tree = self.baseline_tree if baseline else None
        result_path = os.path.join(self.tmp, f"{name}{'-baseline' * baseline}.json")
        if os.path.exists(result_path):
            os.remove(result_path)
        args = worker_args(name, self.dry_run, self.tmp, result_path) + list(extra)
        busy_before, cpu_before = machine.busy_cpu_s(), machine.children_cpu_s()
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.workers", *args],
                cwd=tree or ROOT,
                env=worker_env(cfg, tree),
                capture_output=True,
                text=True,
                timeout=min(WORKER_TIMEOUT_S, left),
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {time.perf_counter() - start:.0f} s"}
        wall = time.perf_counter() - start
        # CPU time that processes other than this worker (and its children) used meanwhile.
        other = (machine.busy_cpu_s() - busy_before) - (machine.children_cpu_s() - cpu_before)
        if proc.returncode != 0 or not os.path.exists(result_path):
            tail = scrub_paths((proc.stderr or proc.stdout)[-2000:], self.placeholders)
            return {"error": f"exit {proc.returncode}: {tail}", "wall_s": wall}
        with open(result_path) as f:
            result = json.load(f)
        result["wall_s"] = wall
        result["other_load"] = max(other, 0.0) / wall
        return result

    def record_command(
        self, name: str, cfg: Config | None, extra: Sequence[str] = (), baseline: bool = False
    ) -> None:
        """Notes a worker's command line for the report, paths as placeholders."""
        env = f"XLA_FLAGS={shlex.quote(YNN_FUSION_FLAG)} " if cfg and cfg.xla == "ynn" else ""
        if baseline:
            env = f"cd BASELINE_TREE && PYTHONPATH=BASELINE_TREE {env}"
        args = worker_args(name, self.dry_run, "DATA", "OUT.json") + list(extra)
        command = shlex.join(["python", "-m", "benchmarks.workers", *args])
        self.worker_commands[f"{name} (baseline)" if baseline else name] = (env, command)


def prepare_data(session: Session, data_dir: str) -> dict[str, Any]:
    """Loads TFDS CIFAR-10 once into ``session.tmp`` as .npy (the ``prepare`` worker)."""
    if not os.path.isdir(os.path.join(data_dir, bench_data.DATASET)):
        raise errors.DataError(
            f"--data-dir {data_dir} holds no {bench_data.DATASET}: give a TFDS data dir "
            "(python -m jresnet.prepare_data writes one)"
        )
    session.record_command("prepare", None, ["--data-dir", "DATA_DIR"])
    info = session.spawn("prepare", None, ["--data-dir", data_dir])
    if "error" in info or "skipped" in info:
        tail = info.get("error", info.get("skipped", ""))[-500:]
        raise errors.DataError(f"could not load --data-dir {data_dir}: {tail}")
    return info


def log_result(session: Session, progress: str, cfg: Config, result: dict[str, Any]) -> None:
    """One progress line (and the error's tail) for one worker's result."""
    if "error" in result:
        session.log(f"{progress} {cfg.name}: error")
        session.log(result["error"][-1500:])
    elif result.get("skipped"):
        session.log(f"{progress} {cfg.name}: not measured: {result['skipped']}")
    else:
        shown = result.get(report.headline(result))
        session.log(
            f"{progress} {cfg.name}: {report.fmt(shown, 1)} ({result['wall_s']:.1f} s, "
            f"background load {result.get('other_load', 0.0):.2f} cores)"
        )


def run_rounds(
    session: Session,
    configs: list[Config],
    rounds: int,
    runs: report.Runs,
    save: Callable,
    baseline_runs: report.Runs | None = None,
) -> None:
    """Every configuration once per round, interleaved, into ``runs``; with
    ``baseline_runs``, each right after it from the baseline tree too, into those. "Once"
    ones (and rolled) in round 1 only. ``save`` runs after each worker."""
    measure_once = {c.name for c in configs if c.once}
    trees = [(False, runs)] + ([(True, baseline_runs)] if baseline_runs is not None else [])
    for r in range(rounds):
        for cfg in configs:
            if cfg.name in measure_once and r > 0:
                continue
            for baseline, tree_runs in trees:
                result = session.spawn(cfg.name, cfg, baseline=baseline)
                session.record_command(cfg.name, cfg, baseline=baseline)
                tree_runs[cfg.name].append(result)
                if "ms" in result:
                    result["total_ms"] = conv_totals(result["ms"])["all"]
                progress = f"round {r + 1}/{rounds}{' baseline' * baseline}"
                log_result(session, progress, cfg, result)
                save()
            if runs[cfg.name][-1].get("rolled_while_loop") and cfg.name not in measure_once:
                measure_once.add(cfg.name)
                session.log(f"{cfg.name}: rolled XLA while loop (very slow), so measured once")


def output_path(args: argparse.Namespace) -> str | None:
    """Where the report goes: ``--output``; else benchmarks/ (a dry run or one against a
    baseline tree: nowhere)."""
    if args.output or args.render:
        return args.output or os.path.splitext(args.render)[0] + ".md"
    if args.dry_run or args.baseline_tree:
        return None
    return os.path.join(BENCH_DIR, DEFAULT_OUTPUT[args.profile])


def _write_readme(results: dict[str, Any], readme_path: str) -> None:
    """The README's speed table from ``results`` (a full CPU run's, read or measured)."""
    if results["profile"] != "cpu" or results["dry_run"]:
        raise errors.ConfigError("--readme takes a full CPU run's results, not a dry or GPU run's")
    report.write_speed_table(results, readme_path)


def main(argv: Sequence[str] | None = None) -> None:
    args, configs = parse_args(argv)
    output = output_path(args)
    if output and not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        raise errors.OutputError(f"--output {output}: its folder does not exist")
    if args.render:
        with open(args.render) as f:
            results = json.load(f)
        report.write_results(results, output, BENCH_DIR)
        if args.readme:
            _write_readme(results, args.readme)
        print(report.render_report(results))
        return
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] {message}", file=sys.stderr, flush=True)

    versions = machine.versions()
    ynn_usable = ynn_flag_usable(versions["jaxlib"])
    configs = [c for c in configs if ynn_usable or c.xla != "ynn"]
    machine_at_start = machine.machine_info()
    if args.profile == "gpu" and not args.dry_run and machine_at_start["gpu"] is None:
        raise errors.ConfigError(
            "--profile gpu needs an NVIDIA GPU (nvidia-smi found none); "
            "--dry-run runs it tiny on a CPU"
        )
    data_dir = os.path.abspath(args.data_dir)
    results: dict[str, Any] = {
        "command": shown_command(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "profile": args.profile,
        "dry_run": args.dry_run,
        "rounds": args.rounds,
        "machine": machine_at_start,
        "versions": versions,
        "ynn_usable": ynn_usable,
        "sizes": dataclasses.asdict(SIZES[args.profile, args.dry_run]),
    }
    if args.baseline_tree:
        results["commits"] = {
            "this": tree_commit(ROOT),
            "baseline": tree_commit(args.baseline_tree),
        }
        results["baseline_runs"] = {c.name: [] for c in configs}
    with tempfile.TemporaryDirectory(prefix="jresnet-bench-") as tmp:
        placeholders = {tmp: "TMP", data_dir: "DATA_DIR", ROOT: ".", sys.prefix: "VENV"}
        if args.baseline_tree:
            placeholders[args.baseline_tree] = "BASELINE_TREE"
        deadline = time.time() + (args.budget_s or float("inf"))
        session = Session(
            args.dry_run, tmp, log, placeholders, deadline, baseline_tree=args.baseline_tree
        )
        results["data"] = bench_data.describe(prepare_data(session, data_dir))
        log(f"data: {results['data']}")
        results["worker_commands"] = session.worker_commands
        results["runs"] = {c.name: [] for c in configs}

        def save() -> None:
            results["wall_min"] = (time.perf_counter() - started) / 60
            if output:
                report.write_json(results, output, BENCH_DIR)

        run_rounds(
            session, configs, args.rounds, results["runs"], save, results.get("baseline_runs")
        )
    shipped = [r for c in configs if c.xla == "shipped" for r in results["runs"][c.name]]
    results["shipped_flags"] = next((r["xla_flags"] for r in shipped if "xla_flags" in r), "")
    save()
    text = report.render_report(results)
    if output:
        report.write_results(results, output, BENCH_DIR)
        log(f"wrote {output}")
    if args.readme:
        _write_readme(results, args.readme)
        log(f"wrote the speed table into {args.readme}")
    print(text)


if __name__ == "__main__":
    raise SystemExit(errors.run_cli(main))
