"""Several runs (seeds) side by side: ``python -m jresnet.summarize RUN_DIR...``.

One row per work directory: seed, epochs done (or "running"), final and best eval accuracy,
final and best test accuracy, wall time; then, over the finished runs only, the mean, the
sample standard deviation (n - 1), min, max and n of each accuracy. A run is finished when
its ``results.json`` covers the last epoch of its ``metrics.jsonl`` (`jresnet.results`); runs
still in progress (or stopped) are shown with their ``metrics.jsonl`` so far and left out of
the statistics. Only files are read, so runs copied from other machines work too.

``--json`` prints the same as one JSON object (accuracies as fractions); ``--plot FILE.png``
draws the runs' eval-accuracy curves with the finished runs' mean and a +-1 std band.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jresnet import checkpoint, errors, reporting, results, safe_files
from jresnet.errors import ConfigError

ACCURACIES = (
    "final_eval_accuracy",
    "best_eval_accuracy",
    "final_test_accuracy",
    "best_test_accuracy",
)
_LABELS = {
    "final_eval_accuracy": "final eval",
    "best_eval_accuracy": "best eval",
    "final_test_accuracy": "final test",
    "best_test_accuracy": "best test",
}


def _seed_of_running(run_dir: str) -> int | None:
    """The seed in the newest checkpoint's config; None if there is no readable one."""
    if not os.path.isdir(checkpoint.checkpoint_dir(run_dir)):
        return None
    try:
        return checkpoint.load_config(run_dir).get("seed")
    except Exception:  # a run being written or damaged: its seed is just unknown here
        return None


def read_run(run_dir: str) -> dict[str, Any]:
    """One row: ``run_dir``, ``status`` ("finished" or "running"), ``seed``, ``epochs``,
    the accuracies of `ACCURACIES` (fractions; None where unknown), ``best_epoch``,
    ``wall_s`` and ``eval_curve`` (eval accuracy per epoch, from ``metrics.jsonl``)."""
    if not os.path.isdir(run_dir) or not results.is_run_dir(run_dir):
        raise ConfigError(
            f"{run_dir} is not a jresnet run directory (no {reporting.METRICS_FILE} or "
            f"{results.RESULTS_FILE}); give the --workdir of training runs"
        )
    records = reporting.read_metrics(run_dir)
    final = results.read(run_dir)
    last_epoch = records[-1]["epoch"] if records else 0
    if final is not None and final.get("epochs", -1) >= last_epoch:
        row = {key: final.get(key) for key in (*ACCURACIES, "best_epoch", "seed", "wall_s")}
        row.update(status="finished", epochs=final.get("epochs"))
    else:
        best = max(records, key=lambda r: r["eval_accuracy"]) if records else {}
        row = {
            "status": "running",
            "epochs": last_epoch,
            "seed": _seed_of_running(run_dir),
            "final_eval_accuracy": records[-1]["eval_accuracy"] if records else None,
            "best_eval_accuracy": best.get("eval_accuracy"),
            "best_epoch": best.get("epoch"),
            "final_test_accuracy": None,
            "best_test_accuracy": None,
            "wall_s": records[-1].get("wall_s") if records else None,
        }
    row["run_dir"] = run_dir
    row["eval_curve"] = [r["eval_accuracy"] for r in records]
    return row


def statistics(values: Sequence[float]) -> dict[str, Any]:
    """``mean``, ``std`` (sample, n - 1; None for n < 2), ``min``, ``max`` and ``n``."""
    array = np.asarray(values, dtype=np.float64)
    n = len(array)
    if n == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if n > 1 else None,
        "min": float(array.min()),
        "max": float(array.max()),
        "n": n,
    }


def summarize(run_dirs: Sequence[str]) -> dict[str, Any]:
    """``{"accuracy_unit", "runs": [row, ...], "statistics": {accuracy: statistics}}``,
    the statistics over the finished runs that have that accuracy."""
    if not run_dirs:
        raise ConfigError("no run directories given: python -m jresnet.summarize RUN_DIR...")
    rows = [read_run(run_dir) for run_dir in run_dirs]
    finished = [row for row in rows if row["status"] == "finished"]
    stats = {
        key: statistics([row[key] for row in finished if row[key] is not None])
        for key in ACCURACIES
    }
    return {"accuracy_unit": results.ACCURACY_UNIT, "runs": rows, "statistics": stats}


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def format_table(summary: Mapping[str, Any]) -> str:
    """The runs and the statistics as two Markdown tables (accuracies in percent; std in
    percentage points)."""
    lines = [
        "| run | seed | epochs | final eval | best eval (epoch) | final test | best test "
        "| wall time |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in summary["runs"]:
        epochs = row["epochs"] if row["status"] == "finished" else f"running ({row['epochs']} done)"
        best = _percent(row["best_eval_accuracy"])
        if row["best_epoch"] is not None:
            best += f" ({row['best_epoch']})"
        wall = "-" if row["wall_s"] is None else reporting.format_duration(row["wall_s"])
        seed = "?" if row["seed"] is None else row["seed"]
        lines.append(
            f"| {row['run_dir']} | {seed} | {epochs} | {_percent(row['final_eval_accuracy'])} "
            f"| {best} | {_percent(row['final_test_accuracy'])} "
            f"| {_percent(row['best_test_accuracy'])} | {wall} |"
        )
    finished = sum(row["status"] == "finished" for row in summary["runs"])
    lines += [
        "",
        f"| over the {finished} finished runs | mean | std (n-1) | min | max | n |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, stat in summary["statistics"].items():
        std = "-" if stat["std"] is None else f"{100 * stat['std']:.2f}"
        lines.append(
            f"| {_LABELS[key]} | {_percent(stat['mean'])} | {std} | {_percent(stat['min'])} "
            f"| {_percent(stat['max'])} | {stat['n']} |"
        )
    return "\n".join(lines)


def plot(summary: Mapping[str, Any], path: str) -> str:
    """Writes a PNG of every run's eval accuracy per epoch (runs in progress dashed) with
    the finished runs' mean and +-1 sample std band; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    finished_curves = []
    for row in summary["runs"]:
        curve = 100 * np.asarray(row["eval_curve"], dtype=np.float64)
        if not len(curve):
            continue
        running = row["status"] != "finished"
        label = f"seed {row['seed']}" if row["seed"] is not None else row["run_dir"]
        ax.plot(
            np.arange(1, len(curve) + 1),
            curve,
            linewidth=1,
            alpha=0.6,
            linestyle="--" if running else "-",
            marker="." if len(curve) < 20 else None,
            label=label + (" (running)" if running else ""),
        )
        if not running:
            finished_curves.append(curve)
    if finished_curves:
        epochs = max(len(c) for c in finished_curves)
        per_epoch = [[c[e] for c in finished_curves if len(c) > e] for e in range(epochs)]
        mean = np.array([np.mean(v) for v in per_epoch])
        std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in per_epoch])
        x = np.arange(1, epochs + 1)
        ax.plot(x, mean, color="black", linewidth=2, label=f"mean of {len(finished_curves)}")
        ax.fill_between(x, mean - std, mean + std, color="black", alpha=0.15, label="±1 std")
    ax.set_xlabel("epoch")
    ax.set_ylabel("eval accuracy (%)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(
        f"eval accuracy per epoch: {len(summary['runs'])} runs, mean and ±1 std of the "
        f"{len(finished_curves)} finished"
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    safe_files.write_bytes(path, buffer.getvalue())
    return path


def _without_curves(summary: Mapping[str, Any]) -> dict[str, Any]:
    rows = [{k: v for k, v in row.items() if k != "eval_curve"} for row in summary["runs"]]
    return {**summary, "runs": rows}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jresnet.summarize",
        description=(
            "Summarise training runs (e.g. several seeds): one row per run (seed, epochs done "
            "or 'running', final and best eval accuracy, final and best test accuracy, wall "
            "time), then mean, sample std (n-1), min, max and n over the finished runs. Runs "
            "in progress are shown but left out of the statistics."
        ),
        epilog="Example: python -m jresnet.summarize runs/seed*  --plot seeds.png",
    )
    parser.add_argument(
        "run_dirs", nargs="*", metavar="RUN_DIR", help="work directories of training runs"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (runs, and per accuracy mean/std/min/max/n; fractions)",
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also write the runs' eval-accuracy curves, their mean and a +-1 std band",
    )
    return parser


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    summary = summarize(args.run_dirs)
    if args.plot:
        plot(summary, args.plot)
    if args.json:
        print(json.dumps(_without_curves(summary), indent=2))
    else:
        print(format_table(summary))
    return errors.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns its exit code (`jresnet.errors`)."""
    return errors.run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
