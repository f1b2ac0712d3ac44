"""The seed's 200-epoch recipe, jresnet against the seed's PyTorch loop: snapshots and report.

Layout under a results directory (``results/`` in the repository)::

    RESULTS/seed-recipe/jresnet/metrics.jsonl   jresnet's per-epoch records (train.py)
    RESULTS/seed-recipe/jresnet/run-info.json   config, commit, versions, machine, timing
    RESULTS/seed-recipe/jresnet/resnet20.safetensors   final weights (seed layout), when done
    RESULTS/seed-recipe/pytorch/...             the same for benchmarks/torch_seed.py
    RESULTS/seed-recipe/curves.png              both runs' test accuracy and training loss
    RESULTS/seeds-example/SEED_DIR/             results.json and metrics.jsonl of each run
    RESULTS/seeds-example/run-info.json         of the README's several-seeds example
    RESULTS/seeds-example/curves.png            its runs' eval accuracy, mean and std band
    RESULTS/README.md                           the tables, written from the files above

Command lines::

    python -m benchmarks.seed_recipe snapshot NAME WORKDIR --clone CLONE --venv VENV \\
        --command "THE COMMAND THAT RUNS IT" [--results results] [--data_dir DIR]
    python -m benchmarks.seed_recipe snapshot-seeds RUN_DIR... --clone CLONE --venv VENV \\
        --command "THE COMMAND THAT RUNS THEM" [--results results]
    python -m benchmarks.seed_recipe report [RESULTS] [--readme README.md]

``snapshot`` only reads ``WORKDIR``, ``CLONE`` (the pinned clone that runs the code) and
``VENV``: it copies the complete records of ``WORKDIR/metrics.jsonl`` and writes
``run-info.json`` with the run's config (from jresnet's newest checkpoint, or
``config.json`` of a `benchmarks.torch_seed` work directory), ``git -C CLONE rev-parse
HEAD``, the package versions of ``VENV``, this machine's CPU model and core count (and, for
a run moved between machines with `benchmarks.run_state`, which machine ran which epochs:
`machines`), the training time summed over the records and the median images/s. When a
jresnet run has finished, it also exports its final weights with ``python -m jresnet.convert
WORKDIR OUT.safetensors`` and evaluates that file on the test split with ``train.py
--config.eval_only=True --config.init_from=OUT.safetensors`` (both with ``VENV`` in
``CLONE``) and with the seed's PyTorch model (``python -m benchmarks.torch_seed evaluate
--weights OUT.safetensors``, which loads it with ``strict=True``), recording whether both
accuracies equal the last record's.

``snapshot-seeds`` copies the ``results.json`` and ``metrics.jsonl`` of several runs (the
README's example of seeds) into ``RESULTS/seeds-example/`` and writes one ``run-info.json``
for them (command, commit, versions, machine, data).

``report`` writes ``curves.png`` and ``README.md`` (and, with ``--readme``, the same table
between the ``seed-recipe-table`` markers of that file); an unfinished run is marked
"running: E/N epochs". When ``RESULTS/seeds-example/`` exists, it also runs ``python -m
jresnet.summarize`` on its runs and puts that table (and its ``--plot``) in both files, the
README's between the ``seeds-example-table`` markers. Every number comes from the files;
nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks import machine
from benchmarks.report import replace_between
from jresnet import safe_files
from jresnet.errors import ConfigError, run_cli

SUBDIR = "seed-recipe"
# jresnet.reporting.METRICS_FILE and jresnet.checkpoint.CHECKPOINT_DIR (not imported: they
# load JAX, which reading files does not need).
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
RUN_INFO_FILE = "run-info.json"
CURVES_FILE = "curves.png"
RESUME_SUBDIR = "resume"  # an unfinished run's packed state (benchmarks.run_state)
README_FILE = "README.md"
TABLE_START = "<!-- seed-recipe-table:start -->"
TABLE_END = "<!-- seed-recipe-table:end -->"
SEEDS_SUBDIR = "seeds-example"
SEEDS_START = "<!-- seeds-example-table:start -->"
SEEDS_END = "<!-- seeds-example-table:end -->"
# What jresnet.summarize reads of a run (jresnet.results.RESULTS_FILE and METRICS_FILE).
SEED_RUN_FILES = ("results.json", METRICS_FILE)
# The runs the report knows, in table order: directory name -> label.
RUNS = {"jresnet": "jresnet (JAX/Flax)", "pytorch": "the seed's PyTorch loop"}
PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "tensorflow-datasets",
    "numpy",
    "torch",
)
DATA = (
    "the JPEG copy of CIFAR-10 (`../shared/data/cifar10_jpeg.tar.gz`: every official image "
    "re-encoded as JPEG quality 75), prepared with `python -m jresnet.prepare_data`; "
    "not the official pixels"
)
# The run's config keys its weights are evaluated with: how to build and feed the model
# (a weights file does not say), and where compiled programs are cached.
EVAL_KEYS = (
    "model",
    "shortcut",
    "normalization",
    "dataset",
    "eval_split",
    "compilation_cache_dir",
)
# This repository: where the PyTorch evaluation of exported weights runs (the run's pinned
# clone may predate `benchmarks.torch_seed evaluate`).
REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# An accuracy equal "within float rounding": at most this many test images apart.
WEIGHTS_TOLERANCE_IMAGES = 1
# The measure: one seed each, the two final test accuracies should agree within
# this many percentage points (seed-to-seed spread at 200 epochs is a few tenths).
AGREEMENT_POINTS = 1.0


# --------------------------------------------------------------------------------------------
# Reading a run.


def read_records(path: str) -> list[dict[str, Any]]:
    """The complete JSON lines of a ``metrics.jsonl`` (a torn last line of a live run is
    left out); [] if there is no file."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


def checkpoint_steps(workdir: str) -> list[int]:
    """The steps of the complete jresnet checkpoints in ``workdir``, oldest first (Orbax names
    one it is still writing ``STEP.orbax-checkpoint-tmp-*``: not a number)."""
    directory = os.path.join(workdir, CHECKPOINT_DIR)
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def read_run_config(workdir: str) -> tuple[str, dict[str, Any]]:
    """``(implementation, config)`` of a work directory: ``"pytorch"`` with the
    ``config.json`` of `benchmarks.torch_seed`, or ``"jresnet"`` with the config of its newest
    checkpoint (read as the JSON file Orbax wrote, without opening a checkpoint manager)."""
    torch_config = os.path.join(workdir, "config.json")
    if os.path.exists(torch_config):
        with open(torch_config) as f:
            return "pytorch", json.load(f)
    for step in reversed(checkpoint_steps(workdir)):
        path = os.path.join(workdir, CHECKPOINT_DIR, str(step), "config", "metadata")
        if os.path.exists(path):
            with open(path) as f:
                return "jresnet", json.load(f)
    raise ConfigError(
        f"{workdir} holds neither a config.json (benchmarks.torch_seed) nor a jresnet checkpoint "
        "yet; snapshot it after its first epoch"
    )


def summarize(records: Sequence[Mapping[str, Any]], num_epochs: int) -> dict[str, Any]:
    """What the table shows of a run's records: final and best test accuracy, the epoch of
    the best, epochs done, whether it finished, training time (the records' ``epoch_time_s``
    summed) and the median images/s."""
    if not records:
        return {"epochs_done": 0, "num_epochs": num_epochs, "finished": False}
    best = max(records, key=lambda r: r["eval_accuracy"])  # the first of equal bests
    return {
        "epochs_done": records[-1]["epoch"],
        "num_epochs": num_epochs,
        "finished": records[-1]["epoch"] >= num_epochs,
        "final_eval_accuracy": records[-1]["eval_accuracy"],
        "best_eval_accuracy": best["eval_accuracy"],
        "best_epoch": best["epoch"],
        "eval_count": records[-1]["eval_count"],
        "train_time_s": sum(r["epoch_time_s"] for r in records),
        "images_per_s_median": statistics.median(r["images_per_s"] for r in records),
    }


def _run(command: Sequence[str], cwd: str | None = None) -> str:
    """``command``'s stdout; `ConfigError` with its last stderr line if it fails. Python
    writes no bytecode (the clone and the venv of a live run are only read)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ConfigError(
            f"`{' '.join(command)}` failed (exit {result.returncode}): "
            f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ''}"
        )
    return result.stdout


def _run_json(command: Sequence[str], cwd: str | None = None) -> dict[str, Any]:
    """The JSON object that `_run` (``command``) prints on its last line of stdout."""
    return json.loads(_run(command, cwd).strip().splitlines()[-1])


_VERSIONS_SCRIPT = """
import json, platform
from importlib import metadata
out = {"python": platform.python_version()}
for name in %r:
    try:
        out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        pass
print(json.dumps(out))
"""


def venv_versions(venv: str) -> dict[str, str]:
    """Python's and `PACKAGES`' versions in the virtual environment ``venv``."""
    python = os.path.join(venv, "bin", "python")
    return json.loads(_run([python, "-c", _VERSIONS_SCRIPT % (PACKAGES,)]))


def export_and_check_weights(
    workdir: str,
    clone: str,
    venv: str,
    out_path: str,
    config: Mapping[str, Any],
    final: Mapping[str, Any],
    data_dir: str = "",
) -> dict[str, Any]:
    """Exports a finished jresnet run's final weights to ``out_path`` (seed layout,
    safetensors; kept if it exists) and evaluates the file on the run's eval split twice:
    with jresnet (``train.py --config.eval_only``, in ``clone``) and with the seed's PyTorch
    model loading it with ``strict=True`` (``benchmarks.torch_seed evaluate``, in this
    repository).

    Returns what run-info.json records: the file, the commands, the accuracy each gives and
    whether both equal the final record's within `WEIGHTS_TOLERANCE_IMAGES` images.
    """
    python = os.path.join(venv, "bin", "python")
    out_path = os.path.abspath(out_path)
    data_dir = data_dir or config.get("data_dir", "")
    export = [python, "-m", "jresnet.convert", os.path.abspath(workdir), out_path]
    if not os.path.exists(out_path):
        _run(export, cwd=clone)
    with tempfile.TemporaryDirectory() as tmp:
        evaluate = [
            python,
            "train.py",
            f"--workdir={os.path.join(tmp, 'no-checkpoints')}",
            "--config.eval_only=True",
            f"--config.init_from={out_path}",
            f"--config.data_dir={data_dir}",
            *(f"--config.{key}={config[key]}" for key in EVAL_KEYS if key in config),
        ]
        measured = _run_json(evaluate, cwd=clone)
    model = config.get("model", "resnet20")  # "resnet20": 20 layers
    evaluate_torch = [python, "-m", "benchmarks.torch_seed", "evaluate", f"--weights={out_path}"]
    evaluate_torch += [f"--data_dir={data_dir}", f"--split={config.get('eval_split', 'test')}"]
    evaluate_torch += [f"--depth={model.removeprefix('resnet')}"]
    measured_torch = _run_json(evaluate_torch, cwd=REPO_DIR)

    def images_apart(metrics: Mapping[str, Any]) -> float:
        return abs(metrics["eval_accuracy"] - final["eval_accuracy"]) * metrics["eval_count"]

    return {
        "file": os.path.basename(out_path),
        "export_command": " ".join(["python", *export[1:]]),
        "eval_command": " ".join(["python", *evaluate[1:]]).replace(tmp, "EMPTY_DIR"),
        "eval_accuracy": measured["eval_accuracy"],
        "eval_count": measured["eval_count"],
        "pytorch_eval_command": " ".join(["python", *evaluate_torch[1:]]),
        "pytorch_eval_accuracy": measured_torch["eval_accuracy"],
        "final_record_eval_accuracy": final["eval_accuracy"],
        "equals_final_record": max(images_apart(measured), images_apart(measured_torch))
        <= WEIGHTS_TOLERANCE_IMAGES + 1e-9,
    }


def _write_text(path: str, text: str) -> None:
    """Writes ``path`` whole or not at all (`jresnet.safe_files.write_bytes`)."""
    safe_files.write_bytes(path, text.encode())


def this_machine() -> dict[str, Any]:
    """This machine's ``{"cpu": model, "cores": logical CPUs}``."""
    info = machine.machine_info()
    return {"cpu": info["cpu"], "cores": info["logical_cpus"]}


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def clone_commit(clone: str) -> str:
    """The commit checked out in ``clone``."""
    return _run(["git", "-C", clone, "rev-parse", "HEAD"]).strip()


def where_it_ran(clone: str, venv: str, command: str) -> dict[str, Any]:
    """What a run-info.json says of any run: ``command``, ``commit`` (and ``clone_modified``)
    of the pinned ``clone``, the ``versions`` of ``venv``, this ``machine``'s CPU and cores,
    the ``data`` and the time of the snapshot."""
    return {
        "command": command,
        "commit": clone_commit(clone),
        # --no-optional-locks: git status must not refresh the clone's index file.
        "clone_modified": bool(
            _run(["git", "--no-optional-locks", "-C", clone, "status", "--porcelain"]).strip()
        ),
        "versions": venv_versions(venv),
        "machine": this_machine(),
        "data": DATA,
        "snapshot_utc": utc_now(),
    }


def begins_with(records: Sequence[Mapping[str, Any]], head: Sequence[Mapping[str, Any]]) -> bool:
    """Whether ``records`` begin with the records ``head`` (same epochs and accuracies): the
    later records of the same run, not another run's."""
    return len(head) <= len(records) and all(
        (a["epoch"], a["eval_accuracy"]) == (b["epoch"], b["eval_accuracy"])
        for a, b in zip(head, records, strict=False)
    )


def machines(
    previous: tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]] | None,
    info: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Which machine ran which epochs: ``[{"cpu", "cores", "epochs": [first, last]}, ...]``.

    A run packed on one machine and unpacked on another (`benchmarks.run_state`) spans
    both. The epochs that an earlier snapshot of the same run attributed keep their
    machine; the epochs since then are given to this snapshot's machine
    (``info["machine"]``), so snapshot a run before it moves. ``previous`` is that earlier
    snapshot's ``(run info, records)``; it is the same run when its commit is
    ``info["commit"]`` and ``records`` begin with its records (`begins_with`).
    """
    if not records:
        return []
    here = {**info["machine"], "epochs": [records[0]["epoch"], records[-1]["epoch"]]}
    before_info, before = previous or ({}, [])
    if not (
        before and before_info.get("commit") == info["commit"] and begins_with(records, before)
    ):
        return [here]
    # Snapshots older than this field ran on the one machine they name.
    spans = [dict(span) for span in before_info.get("machines") or []] or [
        {**before_info["machine"], "epochs": [before[0]["epoch"], before[-1]["epoch"]]}
    ]
    if len(records) > len(before):
        last = spans[-1]
        if (last["cpu"], last["cores"]) == (here["cpu"], here["cores"]):
            last["epochs"] = [last["epochs"][0], records[-1]["epoch"]]
        else:
            spans.append({**here, "epochs": [records[len(before)]["epoch"], records[-1]["epoch"]]})
    return spans


def snapshot(
    name: str,
    workdir: str,
    clone: str,
    venv: str,
    command: str,
    results_dir: str,
    data_dir: str = "",
    weights: bool = True,
) -> dict[str, Any]:
    """Copies a run's records into ``results_dir/seed-recipe/NAME/`` and writes its
    run-info.json (see the module docstring); reads ``workdir``, ``clone`` and ``venv`` only.
    Returns the run info."""
    if name not in RUNS:
        raise ConfigError(f"unknown run name {name!r}; one of {', '.join(RUNS)}")
    implementation, config = read_run_config(workdir)
    records = read_records(os.path.join(workdir, METRICS_FILE))
    summary = summarize(records, int(config["num_epochs"]))
    out_dir = os.path.join(results_dir, SUBDIR, name)
    os.makedirs(out_dir, exist_ok=True)
    info = {
        "name": name,
        "implementation": implementation,
        "config": config,
        **where_it_ran(clone, venv, command),
        **summary,
    }
    # The same run (its commit, its records) behind the snapshot already there.
    previous = load_runs(results_dir).get(name)
    if (
        previous
        and previous[0].get("commit") == info["commit"]
        and begins_with(previous[1], records)
        and len(records) < len(previous[1])
    ):
        raise ConfigError(
            f"{workdir} holds {len(records)} epoch records of the run whose {len(previous[1])} "
            f"records {out_dir} already holds: it is behind that snapshot, which is kept. "
            "Unpack the run's packed state there (python -m benchmarks.run_state unpack) or "
            f"let it catch up; to snapshot another run in its place, remove {out_dir} first"
        )
    info["machines"] = machines(previous, info, records)
    if weights and summary["finished"] and implementation == "jresnet":
        info["weights"] = export_and_check_weights(
            workdir,
            clone,
            venv,
            os.path.join(out_dir, f"{config.get('model', 'resnet20')}.safetensors"),
            config,
            records[-1],
            data_dir,
        )
    _write_text(os.path.join(out_dir, METRICS_FILE), "".join(json.dumps(r) + "\n" for r in records))
    _write_text(os.path.join(out_dir, RUN_INFO_FILE), json.dumps(info, indent=2) + "\n")
    return info


def snapshot_seeds(
    run_dirs: Sequence[str], clone: str, venv: str, command: str, results_dir: str
) -> dict[str, Any]:
    """Copies the `SEED_RUN_FILES` of each of ``run_dirs`` (one finished or in progress) into
    ``results_dir/seeds-example/BASENAME/`` and writes ``seeds-example/run-info.json``
    (`where_it_ran` and the runs' names); reads the runs, ``clone`` and ``venv`` only.
    Returns the run info."""
    if not run_dirs:
        raise ConfigError("no run directories given: snapshot-seeds RUN_DIR... --clone ...")
    names = [os.path.basename(os.path.normpath(run_dir)) for run_dir in run_dirs]
    if len(set(names)) != len(names):
        raise ConfigError(
            f"the run directories' names repeat ({', '.join(names)}); name each apart"
        )
    out_dir = os.path.join(results_dir, SEEDS_SUBDIR)
    for run_dir in run_dirs:
        if not os.path.exists(os.path.join(run_dir, METRICS_FILE)):
            raise ConfigError(f"{run_dir} has no {METRICS_FILE}: give the --workdir of a run")
    for run_dir, name in zip(run_dirs, names, strict=True):
        os.makedirs(os.path.join(out_dir, name), exist_ok=True)
        for file in SEED_RUN_FILES:  # a run in progress has no results.json yet
            if os.path.exists(os.path.join(run_dir, file)):
                with open(os.path.join(run_dir, file), "rb") as f:
                    safe_files.write_bytes(os.path.join(out_dir, name, file), f.read())
    info = {"runs": names, **where_it_ran(clone, venv, command)}
    _write_text(os.path.join(out_dir, RUN_INFO_FILE), json.dumps(info, indent=2) + "\n")
    return info


# --------------------------------------------------------------------------------------------
# The report.


def load_runs(results_dir: str) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """``name -> (run info, records)`` of the runs snapshotted under ``results_dir``."""
    runs = {}
    for name in RUNS:
        run_dir = os.path.join(results_dir, SUBDIR, name)
        info_path = os.path.join(run_dir, RUN_INFO_FILE)
        if os.path.exists(info_path):
            with open(info_path) as f:
                info = json.load(f)
            runs[name] = info, read_records(os.path.join(run_dir, METRICS_FILE))
    return runs


def format_duration(seconds: float) -> str:
    """``3725.2`` -> ``"1:02:05"`` (as `jresnet.reporting.format_duration`)."""
    seconds = max(round(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def status(summary: Mapping[str, Any]) -> str:
    """``"finished: 200 epochs"`` or ``"running: 37/200 epochs"`` (at the snapshot)."""
    if summary["finished"]:
        return f"finished: {summary['epochs_done']} epochs"
    return f"running: {summary['epochs_done']}/{summary['num_epochs']} epochs"


def table(runs: Mapping[str, tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]]) -> str:
    """The markdown table of both runs, computed from their records."""
    lines = [
        "| run | status | final test accuracy | best test accuracy (epoch) | training time "
        "| images/s (median) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, label in RUNS.items():
        if name not in runs:
            lines.append(f"| {label} | not started | - | - | - | - |")
            continue
        info, records = runs[name]
        summary = summarize(records, int(info["num_epochs"]))
        if not records:
            lines.append(f"| {label} | {status(summary)} | - | - | - | - |")
            continue
        lines.append(
            f"| {label} | {status(summary)} | {100 * summary['final_eval_accuracy']:.2f}% "
            f"| {100 * summary['best_eval_accuracy']:.2f}% ({summary['best_epoch']}) "
            f"| {format_duration(summary['train_time_s'])} "
            f"| {summary['images_per_s_median']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def comparison(runs: Mapping[str, tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]]) -> str:
    """A paragraph comparing the runs' test accuracy at the latest epoch both have recorded,
    ``|100 a_jresnet - 100 a_pytorch|`` percentage points apart; once both have finished,
    whether their final accuracies agree within `AGREEMENT_POINTS`. Empty until both have
    records."""
    records = {name: runs[name][1] for name in RUNS if name in runs and runs[name][1]}
    if len(records) < len(RUNS):
        return ""
    epoch = min(recs[-1]["epoch"] for recs in records.values())
    jresnet, pytorch = (
        100 * {r["epoch"]: r for r in records[name]}[epoch]["eval_accuracy"] for name in RUNS
    )
    points = abs(jresnet - pytorch)
    accuracies = f"jresnet {jresnet:.2f}%, the seed's PyTorch loop {pytorch:.2f}%"
    if all(summarize(runs[n][1], int(runs[n][0]["num_epochs"]))["finished"] for n in RUNS):
        verdict = "within" if points <= AGREEMENT_POINTS else "**not within**"
        return (
            f"\nFinal test accuracy: {accuracies}; {points:.2f} points apart, {verdict} the "
            f"{AGREEMENT_POINTS:g} point that one seed each allows.\n"
        )
    return (
        f"\nTest accuracy at epoch {epoch}, the latest both runs have reached: {accuracies} "
        f"({points:.2f} points apart; the runs are compared at their end).\n"
    )


def describe(info: Mapping[str, Any], data_prefix: str = "") -> str:
    """One sentence of `where_it_ran`'s fields: command, commit, machine (each machine and
    its epochs, for a run that moved), versions, data."""
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    modified = " (with uncommitted changes)" if info.get("clone_modified") else ""
    spans = info.get("machines") or []
    if len(spans) > 1:  # a run that moved between machines (benchmarks.run_state)
        where = "; ".join(
            f"epochs {m['epochs'][0]}-{m['epochs'][1]} on {m['cpu']}, {m['cores']} cores"
            for m in spans
        )
    else:
        where = f"{info['machine']['cpu']}, {info['machine']['cores']} cores"
    return (
        f"`{info['command']}` at commit `{info['commit']}`{modified}; "
        f"{where}; {versions}; "
        f"{data_prefix}{info['data']}; snapshot of {info['snapshot_utc']}."
    )


def provenance(runs: Mapping[str, tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]]) -> str:
    """One paragraph per run: its command, commit, machine, versions, data and weights."""
    parts = []
    for name, label in RUNS.items():
        if name not in runs:
            continue
        info, records = runs[name]
        count = f"{records[-1]['eval_count']:,} test images, " if records else ""
        text = f"- **{label}**: {describe(info, count)}"
        weights = info.get("weights")
        if weights:
            agree = weights["equals_final_record"]
            text += (
                f" Final weights: [`{weights['file']}`]({SUBDIR}/{name}/{weights['file']}) "
                f"(`{weights['export_command']}`); evaluated with `{weights['eval_command']}` "
                f"they give {100 * weights['eval_accuracy']:.2f}%"
            )
            if "pytorch_eval_accuracy" in weights:  # snapshots since the PyTorch check
                text += (
                    ", and loaded into the seed's PyTorch model with `strict=True` "
                    f"(`{weights['pytorch_eval_command']}`, from this repository) "
                    f"{100 * weights['pytorch_eval_accuracy']:.2f}%"
                )
            text += f"; {'as' if agree else '**not** as'} the last record says."
        parts.append(text)
    return "\n".join(parts) + "\n"


def plot(runs: Mapping[str, tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]], path: str):
    """Both runs' test accuracy and training loss per epoch, overlaid, into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    last_epoch = 1  # the x axis spans the whole schedule, so a running run shows how far
    for name, label in RUNS.items():
        if name not in runs or not runs[name][1]:
            continue
        info, records = runs[name]
        last_epoch = max(last_epoch, int(info["num_epochs"]))
        epochs = [r["epoch"] for r in records]
        style = {"label": label, "marker": ".", "markersize": 3, "linewidth": 1}
        ax_acc.plot(epochs, [100 * r["eval_accuracy"] for r in records], **style)
        ax_loss.plot(epochs, [r["train_loss"] for r in records], **style)
    ax_acc.set_ylabel("test accuracy (%), JPEG copy of CIFAR-10")
    ax_loss.set_ylabel("training loss (cross-entropy)")
    ax_loss.set_yscale("log")
    for ax in (ax_acc, ax_loss):
        ax.set_xlabel("epoch")
        ax.set_xlim(0, last_epoch)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    with safe_files.atomic_writer(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def readme(
    runs: Mapping[str, tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]],
    packed: Sequence[str] = (),
) -> str:
    """results/README.md; ``packed``: the runs whose state waits in `RESUME_SUBDIR`."""
    in_progress = any(
        name not in runs
        or not summarize(runs[name][1], int(runs[name][0]["num_epochs"]))["finished"]
        for name in RUNS
    )
    note = (
        "**The runs are in progress**: the numbers below are those of the latest snapshot.\n\n"
        if in_progress
        else ""
    )
    if packed:
        note += (
            "The newest state of each unfinished run is packed in "
            + ", ".join(f"`{SUBDIR}/{name}/{RESUME_SUBDIR}/`" for name in packed)
            + " (`python -m benchmarks.run_state`), so that it can go on on another machine.\n\n"
        )
    return (
        "# Results\n\n"
        "<!-- Written by `python -m benchmarks.seed_recipe report results` from the files "
        "under results/seed-recipe/: do not edit by hand. -->\n\n"
        "## The seed's recipe, 200 epochs: jresnet and the seed's PyTorch loop\n\n"
        "ResNet-20 (option B), batch 128, SGD (learning rate 0.1, momentum 0.9, weight decay "
        "1e-4), cosine schedule stepped per epoch, random crop and flip; trained on the 50,000 "
        "training images and evaluated on the 10,000 test images after every epoch, one seed "
        "each, on a CPU.\n\n"
        "These are numbers on the JPEG copy of CIFAR-10, **not official CIFAR-10 results**: "
        "its pixels differ from the official ones (JPEG quality 75), and a model trained on "
        "the official pixels loses about 10 points on its test split. Official-data and GPU "
        "numbers come when that data and hardware are available.\n\n"
        f"{note}"
        f"{table(runs)}{comparison(runs)}\n"
        "Training time is the sum of the epochs' training loops (`epoch_time_s` of the "
        "records: evaluation, checkpoints and jresnet's compilation excluded); images/s is "
        "the median over epochs. The CPU was shared with other work while the runs went, so "
        "times and images/s are not benchmark numbers (the README's Speed section has "
        "those). jresnet drops each epoch's last partial batch (390 steps), the seed's "
        "DataLoader keeps it (391).\n\n"
        f"![test accuracy and training loss per epoch]({SUBDIR}/{CURVES_FILE})\n\n"
        f"{provenance(runs)}"
    )


def seeds_table(results_dir: str) -> tuple[dict[str, Any], str] | None:
    """``(run info, table)`` of the runs under ``results_dir/seeds-example/``: the table is
    what ``python -m jresnet.summarize`` prints for them, and its ``--plot`` goes to
    ``seeds-example/curves.png``. None when there is no such snapshot.

    A subprocess, as a user runs it (and jresnet.summarize loads JAX, which this module
    does not need)."""
    out_dir = os.path.join(results_dir, SEEDS_SUBDIR)
    info_path = os.path.join(out_dir, RUN_INFO_FILE)
    if not os.path.exists(info_path):
        return None
    with open(info_path) as f:
        info = json.load(f)
    run_dirs = [os.path.join(out_dir, name) for name in info["runs"]]
    plot_path = os.path.join(out_dir, CURVES_FILE)
    command = [sys.executable, "-m", "jresnet.summarize", *run_dirs, "--plot", plot_path]
    return info, _run(command)


def seeds_section(info: Mapping[str, Any], markdown: str) -> str:
    """results/README.md's section on the several-seeds example."""
    return (
        "\n## Several seeds: the README's example\n\n"
        f"{len(info['runs'])} independent runs of the command below, one per seed, each "
        "choosing its best epoch on a validation slice and evaluating the test split once at "
        "the end, summarised by `python -m jresnet.summarize` (accuracies in percent, std in "
        "percentage points). A demonstration of the protocol on a CPU, not a result: a few "
        "epochs on a slice of the training set is far from a trained ResNet, and the data is "
        "the JPEG copy of CIFAR-10, not the official pixels. Wall times are those of a CPU "
        "shared with other work, not speed measurements.\n\n"
        f"{markdown.rstrip()}\n\n"
        f"![eval accuracy per epoch, mean and std]({SEEDS_SUBDIR}/{CURVES_FILE})\n\n"
        f"- {describe(info)}\n"
    )


def report(results_dir: str, readme_path: str | None = None) -> str:
    """Writes ``curves.png`` and ``README.md`` (and the tables into ``readme_path``); returns
    the seed recipe's table and `comparison`."""
    runs = load_runs(results_dir)
    os.makedirs(os.path.join(results_dir, SUBDIR), exist_ok=True)
    plot(runs, os.path.join(results_dir, SUBDIR, CURVES_FILE))
    seeds = seeds_table(results_dir)
    packed = [n for n in RUNS if os.path.isdir(os.path.join(results_dir, SUBDIR, n, RESUME_SUBDIR))]
    results_readme = readme(runs, packed) + (seeds_section(*seeds) if seeds else "")
    _write_text(os.path.join(results_dir, README_FILE), results_readme)
    markdown = table(runs) + comparison(runs)
    if readme_path:
        with open(readme_path) as f:
            text = f.read()
        text = replace_between(text, TABLE_START, TABLE_END, markdown, readme_path)
        if seeds:
            text = replace_between(text, SEEDS_START, SEEDS_END, seeds[1], readme_path)
        _write_text(readme_path, text)
    return markdown


# --------------------------------------------------------------------------------------------
# Command line.


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.seed_recipe", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    snap = commands.add_parser("snapshot", help="copy a run's records and write run-info.json")
    snap.add_argument("name", choices=list(RUNS))
    snap.add_argument("workdir")
    snap.add_argument("--clone", required=True, help="the pinned clone that runs the code")
    snap.add_argument("--venv", required=True, help="the virtual environment that runs it")
    snap.add_argument("--command", required=True, dest="run_command", help="the run's command")
    snap.add_argument("--results", default="results")
    snap.add_argument("--data_dir", default="", help="TFDS data dir (default: the config's)")
    snap.add_argument("--no_weights", action="store_true", help="skip the final weights")
    seeds = commands.add_parser(
        "snapshot-seeds", help="copy several runs' results.json and metrics.jsonl"
    )
    seeds.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    seeds.add_argument("--clone", required=True, help="the pinned clone that runs the code")
    seeds.add_argument("--venv", required=True, help="the virtual environment that runs it")
    seeds.add_argument("--command", required=True, dest="run_command", help="the runs' command")
    seeds.add_argument("--results", default="results")
    rep = commands.add_parser("report", help="write curves.png and README.md")
    rep.add_argument("results", nargs="?", default="results")
    rep.add_argument("--readme", help="also replace the table between the markers of this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def job() -> int:
        if args.command == "snapshot":
            info = snapshot(
                args.name,
                args.workdir,
                args.clone,
                args.venv,
                args.run_command,
                args.results,
                args.data_dir,
                weights=not args.no_weights,
            )
            print(f"{args.name}: {status(info)}", file=sys.stderr)
            weights = info.get("weights")
            if weights and not weights["equals_final_record"]:
                # Not the user's mistake but a finding: exit 1, said in one line.
                print(
                    f"the exported weights give {weights['eval_accuracy']} (jresnet) and "
                    f"{weights['pytorch_eval_accuracy']} (PyTorch) on the test split, the last "
                    f"record says {weights['final_record_eval_accuracy']}",
                    file=sys.stderr,
                )
                return 1
        elif args.command == "snapshot-seeds":
            info = snapshot_seeds(
                args.run_dirs, args.clone, args.venv, args.run_command, args.results
            )
            print(f"{SEEDS_SUBDIR}: {', '.join(info['runs'])}", file=sys.stderr)
        else:
            print(report(args.results, args.readme), end="")
        return 0

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
