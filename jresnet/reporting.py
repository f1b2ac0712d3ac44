"""What a training run tells its user: progress lines, metrics files, curves.

Only process 0 prints and writes (multi-host runs call these on every process).

* ``<workdir>/metrics.jsonl``: one JSON object per epoch (see `MetricsLog.write`).
  Each checkpoint also holds the history up to its epoch, and a resumed run
  rewrites the file from it, so the file always matches the resumed state (a
  run killed between its checkpoint and its metrics write loses no record).
* TensorBoard event files in ``<workdir>/tensorboard`` (``tensorboard --logdir``).
* ``<workdir>/curves.png``: loss and accuracy per epoch, written at the end.

Files are written through `jresnet.safe_files`: a planted symlink (``metrics.jsonl``
pointing at another file) is refused with `OutputError`, never written through.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax

from jresnet import safe_files

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
TENSORBOARD_DIR = "tensorboard"


def is_main_process() -> bool:
    return jax.process_index() == 0


def info(message: str) -> None:
    """Prints a line to stderr (process 0 only), flushed."""
    if is_main_process():
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """Prints ``warning: message`` to stderr (process 0 only): the one warning channel."""
    info(f"warning: {message}")


def format_duration(seconds: float) -> str:
    """``3725.2`` -> ``"1:02:05"``."""
    seconds = max(round(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class Progress:
    """Progress lines with throughput and ETA, measured from `restart` (after compilation)."""

    def __init__(self, total_steps: int, start_step: int, batch_size: int):
        self.total_steps = total_steps
        self.batch_size = batch_size
        self.start_step = start_step
        self.start_time = time.time()

    def restart(self, step: int) -> None:
        """Measures from now and ``step`` on (call after compilation)."""
        self.start_step = step
        self.start_time = time.time()

    def _rate_and_eta(self, step: int) -> tuple[float, float]:
        done = step - self.start_step
        elapsed = time.time() - self.start_time
        steps_per_s = done / elapsed if elapsed > 0 and done > 0 else 0.0
        eta = (self.total_steps - step) / steps_per_s if steps_per_s else float("nan")
        return steps_per_s * self.batch_size, eta

    def update(
        self,
        epoch: int,
        num_epochs: int,
        step_in_epoch: int,
        steps_per_epoch: int,
        metrics: Mapping[str, float],
    ) -> None:
        step = epoch * steps_per_epoch + step_in_epoch
        images_per_s, eta = self._rate_and_eta(step)
        info(
            f"epoch {epoch + 1}/{num_epochs} step {step_in_epoch}/{steps_per_epoch} "
            f"loss {metrics['loss']:.4f} acc {100 * metrics['accuracy']:.2f}% "
            f"lr {metrics['learning_rate']:.4g} {images_per_s:,.0f} img/s "
            f"ETA {format_duration(eta) if eta == eta else '?'}"
        )

    def epoch_done(self, record: Mapping[str, Any], num_epochs: int) -> None:
        _, eta = self._rate_and_eta(record["step"])
        info(
            f"epoch {record['epoch']}/{num_epochs} done: loss {record['train_loss']:.4f} "
            f"train acc {100 * record['train_accuracy']:.2f}% "
            f"eval acc {100 * record['eval_accuracy']:.2f}% "
            f"(loss {record['eval_loss']:.4f}) lr {record['learning_rate']:.4g} "
            f"{record['images_per_s']:,.0f} img/s epoch {record['epoch_time_s']:.1f}s "
            f"ETA {format_duration(eta) if eta == eta else '0:00:00'}"
        )


class MetricsLog:
    """Per-epoch records in ``metrics.jsonl`` and TensorBoard; the run's summary and plot."""

    def __init__(self, workdir: str, records: list[dict[str, Any]]):
        """Starts ``metrics.jsonl`` over with ``records``, the history of the resumed state."""
        self.workdir = workdir
        self.path = os.path.join(workdir, METRICS_FILE)
        self.records = [dict(r) for r in records]
        self._writer = None
        if is_main_process():
            safe_files.write_bytes(
                self.path, "".join(json.dumps(r) + "\n" for r in self.records).encode()
            )
            # tensorboardX, not CLU's metric writers or flax.metrics.tensorboard: both
            # import TensorFlow, which jresnet does not need anywhere else.
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))

    def write(self, record: Mapping[str, Any]) -> None:
        """Appends one epoch's record (keys ``epoch``, ``step`` and float metrics)."""
        self.records.append(dict(record))
        if not is_main_process():
            return
        # Disk full: OutputError, no torn line; the checkpoint holds the record and a
        # rerun rewrites the file from it.
        safe_files.append_bytes(self.path, (json.dumps(dict(record)) + "\n").encode())
        for key, value in record.items():
            if key not in ("epoch", "step"):
                self._writer.add_scalar(key, value, record["epoch"])
        self._writer.flush()

    def summary(self, wall_time_s: float) -> dict[str, Any]:
        """Final and best eval accuracy over all epochs (resumed ones included)."""
        if not self.records:
            return {"wall_time_s": wall_time_s}
        best = max(self.records, key=lambda r: r["eval_accuracy"])
        last = self.records[-1]
        return {
            "final_eval_accuracy": last["eval_accuracy"],
            "best_eval_accuracy": best["eval_accuracy"],
            "best_epoch": best["epoch"],
            "epochs": last["epoch"],
            "steps": last["step"],
            "wall_time_s": wall_time_s,
        }

    def plot(self) -> str | None:
        """Writes ``curves.png`` (loss and accuracy per epoch); returns its path."""
        if not is_main_process() or not self.records:
            return None
        return plot_curves(self.records, os.path.join(self.workdir, CURVES_FILE))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def format_summary(summary: Mapping[str, Any]) -> str:
    if "final_eval_accuracy" not in summary:
        return f"Nothing to train (total {format_duration(summary['wall_time_s'])})."
    return (
        f"Finished {summary['epochs']} epochs ({summary['steps']:,} steps): final eval accuracy "
        f"{100 * summary['final_eval_accuracy']:.2f}%, best "
        f"{100 * summary['best_eval_accuracy']:.2f}% (epoch {summary['best_epoch']}), "
        f"wall time {format_duration(summary['wall_time_s'])}"
    )


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """The records of ``<workdir>/metrics.jsonl`` (ignoring a torn last line)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


def plot_curves(records: list[Mapping[str, Any]], path: str) -> str:
    """Plots train/eval loss and accuracy against epoch into a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in records], label="train")
    ax_loss.plot(epochs, [r["eval_loss"] for r in records], label="eval")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * r["train_accuracy"] for r in records], label="train")
    ax_acc.plot(epochs, [100 * r["eval_accuracy"] for r in records], label="eval")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        with safe_files.atomic_writer(path) as f:
            fig.savefig(f, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path
