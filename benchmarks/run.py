"""jresnet against a PyTorch reproduction of the seed's training, on this machine, in one run.

Usage (from the repository root; about 15 minutes on 2 cores, ``--quick`` about 3)::

    python -m benchmarks.run [--quick] [--data-dir /work/data/tfds] [--rounds 3] [--output PATH]

Every configuration (`benchmarks.configs`) runs in its own worker process
(`benchmarks.workers`, so XLA flags, thread settings and the peak RSS belong to that
configuration alone), interleaved ``A B C ... A B C ...`` over ``--rounds`` rounds; tables
show the median over rounds, the min-max, and ratios of medians (`benchmarks.report`).

Measurements:

1. model step: training images/s at batch 128 on random data already on the device, after
   warm-up (compile time apart), through jresnet's own jitted driver
   (`jresnet.steps.make_train_fn`, no augmentation) with default XLA flags, with the YNN
   flag, with K steps per call (``steps_per_call``, an unrolled scan), and once with a
   rolled scan (an XLA while loop, what XLA:CPU runs slowly); against the seed in torch,
   eager NCHW and channels_last. Also as a share of the machine's fp32 matmul peak.
2. end to end: jresnet's real training loop, `jresnet.train.train_and_evaluate` itself (as
   ``train.py`` runs it, XLA flags from `jresnet.xla_setup`), over two short epochs of the
   same steps, the second timed by the loop's own ``images_per_s``; the data comes from
   memory (``train_and_evaluate(..., data=input_pipeline.Splits(...))`` with the arrays this
   run loaded once: real CIFAR-10 when ``--data-dir`` holds it, synthetic otherwise).
   Against the seed's ``DataLoader(num_workers=2)`` loop, eager and channels_last.
3. eval: batch 1000, inference mode.
4. peak RSS of each configuration's process (and of its DataLoader workers).
5. each of ResNet-20's 21 convolutions alone (forward, input gradient, weight gradient),
   XLA (shipped flags, on 1 CPU, default flags) against torch (eager, channels_last), and
   their count-weighted sum per training step: where the model step's time goes.

Plus the fp32 matmul peak (4096 x 4096; numpy, jax and torch), the CPU time other processes
took meanwhile (the run's noise), and, once, where jresnet's training step spends time
beyond the model (augmentation, the sharded driver, host-side work per step).

The full run writes ``benchmarks/RESULTS.md`` and ``benchmarks/RESULTS.json``; ``--quick``
(one round, few steps) prints the report and writes only to ``--output`` if given. Neither
file names a path of the machine (data dir, checkout, Python): the report says only
whether the data was real or synthetic, and how many images.
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
from jresnet.xla_setup import KNOWN_JAXLIB_PREFIXES, YNN_FUSION_FLAG

try:
    from benchmarks import data as bench_data
    from benchmarks import machine, report
    from benchmarks.configs import CONFIG_BY_NAME, CONFIGS, Config, sizes_for
    from benchmarks.resnet20 import conv_totals
except ModuleNotFoundError as e:  # run as a file: benchmarks/ is not importable as a package
    if e.name != "benchmarks":
        raise
    print("error: run from the repository root: python -m benchmarks.run", file=sys.stderr)
    raise SystemExit(errors.EXIT_USAGE) from None

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
DEFAULT_DATA_DIR = "/work/data/tfds"
WORKER_TIMEOUT_S = 600


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[Config]]:
    """The options and the configurations to run (``--only``, else all; --quick: not once)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--quick", action="store_true", help="one round, few steps (~3 min)")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="TFDS data dir")
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (quick: 1)")
    parser.add_argument("--output", help="report path (default RESULTS.md; quick: stdout)")
    parser.add_argument("--only", help="comma-separated config names (for development)")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - set(CONFIG_BY_NAME)
        if unknown:
            parser.error(f"unknown configs {sorted(unknown)}; known: {sorted(CONFIG_BY_NAME)}")
        return args, [c for c in CONFIGS if c.name in wanted]
    return args, [c for c in CONFIGS if not (args.quick and c.once)]


def ynn_flag_usable(jaxlib_version: str) -> bool:
    """Whether this jaxlib accepts the YNN flag (known versions, else a probe process)."""
    if jaxlib_version.startswith(KNOWN_JAXLIB_PREFIXES):
        return True
    env = dict(os.environ, XLA_FLAGS=YNN_FUSION_FLAG)
    probe = "import jax.numpy as jnp; jnp.zeros(2).block_until_ready()"
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True)
    return result.returncode == 0


def worker_env(cfg: Config | None) -> dict[str, str]:
    """A worker's environment: XLA_FLAGS only for "ynn" configurations."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env.pop("JRESNET_XLA_CPU_FLAGS", None)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if cfg is not None and cfg.xla == "ynn":
        env["XLA_FLAGS"] = YNN_FUSION_FLAG
    return env


def worker_args(name: str, quick: bool, data: str | None, result: str) -> list[str]:
    """A worker's arguments after ``python -m benchmarks.workers``."""
    args = ["--worker", name, "--result", result]
    if data:
        args += ["--data", data]
    if quick:
        args.append("--quick")
    return args


def shown_command(argv: Sequence[str]) -> str:
    """``python -m benchmarks.run ARGS`` with path-valued options shown as placeholders."""
    placeholders = {"--data-dir": "DATA_DIR", "--output": "OUTPUT"}
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


def scrub_paths(text: str, paths: dict[str, str]) -> str:
    """``text`` with each of ``paths``' keys (machine paths) replaced by its placeholder."""
    for path in sorted(paths, key=len, reverse=True):
        text = text.replace(path, paths[path])
    return text


@dataclasses.dataclass
class Session:
    """One benchmark run's worker scheduling: where results go and what was started.

    Attributes:
      quick: the QUICK sizes.
      tmp: temporary folder for the workers' results (and the prepared data).
      log: progress messages (stderr).
      placeholders: machine path -> placeholder, applied to worker errors.
      data: folder of the prepared .npy data; None: synthetic data.
      worker_commands: configuration name -> (environment, command) as shown in the report.
    """

    quick: bool
    tmp: str
    log: Callable[[str], None]
    placeholders: dict[str, str]
    data: str | None = None
    worker_commands: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)

    def spawn(self, name: str, cfg: Config | None, extra: Sequence[str] = ()) -> dict[str, Any]:
        """Runs one worker; returns its result (or the error), wall time and background load."""
        result_path = os.path.join(self.tmp, f"{name}.json")
        if os.path.exists(result_path):
            os.remove(result_path)
        args = worker_args(name, self.quick, self.data, result_path) + list(extra)
        busy_before, cpu_before = machine.busy_cpu_s(), machine.children_cpu_s()
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.workers", *args],
            cwd=ROOT,
            env=worker_env(cfg),
            capture_output=True,
            text=True,
            timeout=WORKER_TIMEOUT_S,
        )
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

    def record_command(self, name: str, cfg: Config | None, extra: Sequence[str] = ()) -> None:
        """Notes a worker's command line for the report, paths as placeholders."""
        env = f"XLA_FLAGS={shlex.quote(YNN_FUSION_FLAG)} " if cfg and cfg.xla == "ynn" else ""
        args = worker_args(name, self.quick, self.data and "DATA", "OUT.json") + list(extra)
        command = shlex.join(["python", "-m", "benchmarks.workers", *args])
        self.worker_commands[name] = (env, command)


def prepare_data(session: Session, data_dir: str) -> dict[str, Any] | None:
    """Loads TFDS CIFAR-10 once into ``session.tmp`` (sets ``session.data``); None: synthetic."""
    if not os.path.isdir(os.path.join(data_dir, bench_data.DATASET)):
        return None
    session.data = session.tmp  # where the prepare worker writes (its --data)
    session.record_command("prepare", None, ["--data-dir", "DATA_DIR"])
    info = session.spawn("prepare", None, ["--data-dir", data_dir])
    if "error" in info:
        session.log(f"could not load --data-dir: {info['error'][-500:]}; using synthetic data")
        session.data = None
        return None
    return info


def log_result(session: Session, progress: str, cfg: Config, result: dict[str, Any]) -> None:
    """One progress line (and the error's tail) for one worker's result."""
    if "error" in result:
        session.log(f"{progress} {cfg.name}: error")
        session.log(result["error"][-1500:])
    elif result.get("skipped"):
        session.log(f"{progress} {cfg.name}: not measured (rolled while loop)")
    else:
        shown = result.get("img_s", result.get("gflops", result.get("total_ms")))
        session.log(
            f"{progress} {cfg.name}: {report.fmt(shown, 1)} ({result['wall_s']:.1f} s, "
            f"background load {result.get('other_load', 0.0):.2f} cores)"
        )


def run_rounds(session: Session, configs: list[Config], rounds: int) -> report.Runs:
    """Every configuration once per round, interleaved; "once" ones (and rolled) in round 1."""
    runs: report.Runs = {c.name: [] for c in configs}
    measure_once = {c.name for c in configs if c.once}
    for r in range(rounds):
        for cfg in configs:
            if cfg.name in measure_once and r > 0:
                continue
            result = session.spawn(cfg.name, cfg)
            session.record_command(cfg.name, cfg)
            runs[cfg.name].append(result)
            if result.get("rolled_while_loop") and cfg.name not in measure_once:
                measure_once.add(cfg.name)
                session.log(f"{cfg.name}: rolled XLA while loop (very slow), so measured once")
            if "ms" in result:
                result["total_ms"] = conv_totals(result["ms"])["all"]
            log_result(session, f"round {r + 1}/{rounds}", cfg, result)
    return runs


def main(argv: Sequence[str] | None = None) -> None:
    args, configs = parse_args(argv)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] {message}", file=sys.stderr, flush=True)

    versions = machine.versions()
    ynn_usable = ynn_flag_usable(versions["jaxlib"])
    configs = [c for c in configs if ynn_usable or c.xla != "ynn"]
    machine_at_start = machine.machine_info()
    data_dir = os.path.abspath(args.data_dir)
    with tempfile.TemporaryDirectory(prefix="jresnet-bench-") as tmp:
        placeholders = {tmp: "TMP", data_dir: "DATA_DIR", ROOT: ".", sys.prefix: "VENV"}
        session = Session(args.quick, tmp, log, placeholders)
        data_desc = bench_data.describe(prepare_data(session, data_dir))
        log(f"data: {data_desc}")
        runs = run_rounds(session, configs, args.rounds)
    shipped = [r for c in configs if c.xla == "shipped" for r in runs[c.name]]
    results = {
        "command": shown_command(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "rounds": args.rounds,
        "wall_min": (time.perf_counter() - started) / 60,
        "machine": machine_at_start,
        "versions": versions,
        "data": data_desc,
        "real_data": session.data is not None,
        "ynn_usable": ynn_usable,
        "shipped_flags": next((r["xla_flags"] for r in shipped if "xla_flags" in r), ""),
        "sizes": dataclasses.asdict(sizes_for(args.quick)),
        "worker_commands": session.worker_commands,
        "runs": runs,
    }
    text = report.render_report(results)
    output = args.output or (None if args.quick else os.path.join(BENCH_DIR, "RESULTS.md"))
    if output:
        report.write_results(results, text, output)
        log(f"wrote {output}")
    print(text)


if __name__ == "__main__":
    raise SystemExit(errors.run_cli(main))
