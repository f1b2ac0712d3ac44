"""What a training run tells its user: the console, metrics files, TensorBoard, curves.

Only process 0 prints and writes (multi-host runs call these on every process).

* The console (stderr): on a terminal, a live progress bar per epoch (steps, loss,
  images/s, ETA; redrawn in place with a carriage return) and one line per finished
  epoch; when stderr is not a terminal (a pipe, a log file), plain lines every
  ``log_every_steps`` steps and one per epoch. `info` lines (compiling, warnings,
  signals) clear the bar first, so they never mix with it.
* ``<workdir>/metrics.jsonl``: one JSON object per epoch (see `MetricsLog.write`).
  Each checkpoint also holds the history up to its epoch, and a resumed run
  rewrites the file from it, so the file always matches the resumed state (a
  run killed between its checkpoint and its metrics write loses no record).
* TensorBoard event files in ``<workdir>/tensorboard`` (``tensorboard --logdir``): the
  tags of `TENSORBOARD_TAGS` against the global step, accuracies in % as on the console.
* ``<workdir>/curves.png``: loss (log scale), accuracy (%) and learning rate per epoch,
  titled with the run's model, recipe and seed; rewritten after every epoch.

Files are written through `jresnet.safe_files`: complete or not at all, and a planted
symlink (``metrics.jsonl`` pointing at another file) is refused with `OutputError`, never
written through. A write that fails (a full disk, a read-only directory) is an
`OutputError` of one line; the checkpoints hold the metrics history, so rerunning the same
command rebuilds ``metrics.jsonl`` and the curves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

import jax

from jresnet import safe_files

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
TENSORBOARD_DIR = "tensorboard"

# metrics.jsonl key -> (TensorBoard tag, factor): grouped by train/eval/perf, accuracy in %.
TENSORBOARD_TAGS = {
    "train_loss": ("train/loss", 1.0),
    "train_accuracy": ("train/accuracy", 100.0),
    "learning_rate": ("train/learning_rate", 1.0),
    "eval_loss": ("eval/loss", 1.0),
    "eval_accuracy": ("eval/accuracy", 100.0),
    "images_per_s": ("perf/images_per_s", 1.0),
    "epoch_time_s": ("perf/epoch_time_s", 1.0),
    "epoch": ("train/epoch", 1.0),
}


def is_main_process() -> bool:
    return jax.process_index() == 0


class _Console:
    """stderr, shared by the live progress bar and every other line (process 0 only).

    Holds whether a bar is on screen, so that a line printed meanwhile first clears it.
    """

    def __init__(self) -> None:
        self.bar_width = 0  # characters of the bar on screen; 0: none

    def line(self, message: str, stream: TextIO | None = None) -> None:
        stream = stream or sys.stderr
        self._clear_bar(stream)
        print(message, file=stream, flush=True)

    def bar(self, text: str, stream: TextIO) -> None:
        stream.write("\r" + text.ljust(self.bar_width))
        stream.flush()
        self.bar_width = len(text)

    def _clear_bar(self, stream: TextIO) -> None:
        if self.bar_width:
            stream.write("\r" + " " * self.bar_width + "\r")
            self.bar_width = 0


_console = _Console()


def info(message: str) -> None:
    """Prints a line to stderr (process 0 only), flushed; clears a progress bar first."""
    if is_main_process():
        _console.line(message)


def warn(message: str) -> None:
    """Prints ``warning: message`` to stderr (process 0 only): the one warning channel."""
    info(f"warning: {message}")


_ORBAX_TAGS = re.compile(r"^(\[[a-z_]+=[^\]]*\])+\s*")


class _DropLines(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        # Orbax starts some messages with "[process=0][thread=...]" tags: not part of the line.
        message = _ORBAX_TAGS.sub("", record.getMessage(), count=1)
        return not message.startswith(self.prefixes)


@contextlib.contextmanager
def without_log_lines(*prefixes: str, logger: str = "absl") -> Iterator[None]:
    """Drops the log records of ``logger`` that start with one of ``prefixes`` while the
    block runs: third-party warnings about states jresnet expects (Orbax and TFDS log
    through absl's "absl" logger). Say at each use why the lines are expected."""
    target = logging.getLogger(logger)
    drop = _DropLines(prefixes)
    target.addFilter(drop)
    try:
        yield
    finally:
        target.removeFilter(drop)


def plural(count: int, noun: str) -> str:
    """``(1, "epoch")`` -> ``"1 epoch"``, ``(2, "epoch")`` -> ``"2 epochs"``."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def format_duration(seconds: float) -> str:
    """``3725.2`` -> ``"1:02:05"``."""
    seconds = max(round(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal (not a pipe or a file)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class Progress:
    """The console during training: throughput and ETA, measured from `restart` (after
    compilation), as a live bar on a terminal or as plain lines otherwise.

    Args:
      total_steps: steps of the whole run (all epochs).
      start_step: the global step the run starts (or resumes) at.
      batch_size: global images per step.
      log_every_steps: plain mode prints a line each time an epoch passes a multiple of it.
      stream: where to write; None: ``sys.stderr`` at each write.
      live: draw a bar in place; None: when ``stream`` is a terminal.
    """

    def __init__(
        self,
        total_steps: int,
        start_step: int,
        batch_size: int,
        log_every_steps: int = 50,
        stream: TextIO | None = None,
        live: bool | None = None,
    ):
        self.total_steps = total_steps
        self.batch_size = batch_size
        self.log_every_steps = max(log_every_steps, 1)
        self.start_step = start_step
        self.start_time = time.time()
        self._stream = stream
        self.live = is_terminal(self.stream) if live is None else live

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr

    def restart(self, step: int) -> None:
        """Measures from now and ``step`` on (call after compilation)."""
        self.start_step = step
        self.start_time = time.time()

    def due(self, done_before: int, done_after: int, steps_per_epoch: int) -> bool:
        """Whether a call that took an epoch from ``done_before`` to ``done_after`` steps
        should be shown (`update`): every call on a bar; in plain mode, when a multiple of
        ``log_every_steps`` was passed inside the epoch (its end gets `epoch_done`)."""
        if done_after >= steps_per_epoch:
            return False
        if self.live:
            return True
        return done_after // self.log_every_steps > done_before // self.log_every_steps

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
        """Shows the epoch's progress: ``metrics`` holds the epoch's mean ``loss`` and
        ``accuracy`` (0-1) so far and the last step's ``learning_rate``."""
        if not is_main_process():
            return
        step = epoch * steps_per_epoch + step_in_epoch
        images_per_s, eta = self._rate_and_eta(step)
        eta_text = format_duration(eta) if eta == eta else "?"
        if self.live:
            _console.bar(
                _bar_text(
                    epoch, num_epochs, step_in_epoch, steps_per_epoch, metrics, images_per_s,
                    eta_text, shutil.get_terminal_size().columns,
                ),
                self.stream,
            )  # fmt: skip
            return
        _console.line(
            f"epoch {epoch + 1}/{num_epochs} step {step_in_epoch}/{steps_per_epoch} "
            f"loss {metrics['loss']:.4f} acc {100 * metrics['accuracy']:.2f}% "
            f"lr {metrics['learning_rate']:.4g} {images_per_s:,.0f} img/s ETA {eta_text}",
            self.stream,
        )

    def epoch_done(self, record: Mapping[str, Any], num_epochs: int) -> None:
        """One line for a finished epoch (replacing the bar on a terminal)."""
        if not is_main_process():
            return
        _, eta = self._rate_and_eta(record["step"])
        _console.line(
            f"epoch {record['epoch']}/{num_epochs} done: loss {record['train_loss']:.4f} "
            f"train acc {100 * record['train_accuracy']:.2f}% "
            f"eval acc {100 * record['eval_accuracy']:.2f}% "
            f"(loss {record['eval_loss']:.4f}) lr {record['learning_rate']:.4g} "
            f"{record['images_per_s']:,.0f} img/s epoch {record['epoch_time_s']:.1f}s "
            f"ETA {format_duration(eta) if eta == eta else '0:00:00'}",
            self.stream,
        )


def _bar_text(
    epoch: int,
    num_epochs: int,
    step_in_epoch: int,
    steps_per_epoch: int,
    metrics: Mapping[str, float],
    images_per_s: float,
    eta_text: str,
    columns: int,
) -> str:
    """``epoch 2/5 [######......] 8/16 loss 1.9234 acc 31.25% 642 img/s ETA 0:01:23``,
    at most ``columns - 1`` characters (a full line would wrap and break the redraw)."""
    head = f"epoch {epoch + 1}/{num_epochs} "
    tail = (
        f" {step_in_epoch}/{steps_per_epoch} loss {metrics['loss']:.4f} "
        f"acc {100 * metrics['accuracy']:.2f}% {images_per_s:,.0f} img/s ETA {eta_text}"
    )
    room = columns - 1 - len(head) - len(tail) - 2
    width = min(max(room, 0), 30)
    filled = width * step_in_epoch // max(steps_per_epoch, 1)
    bar = f"[{'#' * filled}{'.' * (width - filled)}]" if width >= 5 else ""
    return (head + bar + tail)[: max(columns - 1, 1)]


def describe_run(config: Mapping[str, Any] | Any) -> str:
    """The run in one line for titles: model, recipe and seed."""
    return (
        f"{config.model} (shortcut {config.shortcut}) on {config.dataset} "
        f"{config.train_split}; batch {config.batch_size}, lr {config.learning_rate:g} "
        f"{config.schedule}, wd {config.weight_decay:g}, {plural(config.num_epochs, 'epoch')}, "
        f"{config.dtype}; seed {config.seed}"
    )


# Seconds between two redraws of curves.png while a run goes on: drawing takes about a
# second of CPU, nothing beside a real epoch but most of a short run's (tests, smoke runs).
PLOT_EVERY_S = 60.0


def _summary_writer(logdir: str) -> Any:
    """A ``tensorboardX.SummaryWriter`` for ``logdir``, imported without PyTorch.

    tensorboardX, not CLU's metric writers or flax.metrics.tensorboard: both import
    TensorFlow, which jresnet does not need anywhere else. tensorboardX imports PyTorch
    when it is installed (only to accept its tensors, which jresnet never passes), seconds
    of a run's start-up: unless something imported it already, it is hidden during the
    import (a ``None`` in ``sys.modules`` makes ``import torch`` fail), then shown again.
    """
    hidden = "torch" not in sys.modules
    if hidden:
        sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hidden:
            del sys.modules["torch"]
    return SummaryWriter(logdir)


class MetricsLog:
    """Per-epoch records in ``metrics.jsonl`` and TensorBoard; the run's summary and plot."""

    def __init__(
        self,
        workdir: str,
        records: list[dict[str, Any]],
        title: str = "",
        plot_every_s: float = PLOT_EVERY_S,
    ):
        """Starts ``metrics.jsonl`` over with ``records``, the history of the resumed state;
        ``title`` heads the curves (`describe_run`), which `write` redraws when
        ``plot_every_s`` seconds have passed since they were last drawn (or since the start),
        and `plot` at once."""
        self.workdir = workdir
        self.path = os.path.join(workdir, METRICS_FILE)
        self.title = title
        self.records = [dict(r) for r in records]
        self.plot_every_s = plot_every_s
        self._plotted_at = time.monotonic()
        self._writer = None
        if is_main_process():
            safe_files.write_bytes(
                self.path, "".join(json.dumps(r) + "\n" for r in self.records).encode()
            )
            self._writer = _summary_writer(os.path.join(workdir, TENSORBOARD_DIR))

    def write(self, record: Mapping[str, Any]) -> None:
        """Appends one epoch's record (keys ``epoch``, ``step`` and float metrics) to
        ``metrics.jsonl`` and TensorBoard, and redraws ``curves.png`` if it is due."""
        self.records.append(dict(record))
        if not is_main_process():
            return
        # Disk full: OutputError, no torn line; the checkpoint holds the record and a
        # rerun rewrites the file from it.
        safe_files.append_bytes(self.path, (json.dumps(dict(record)) + "\n").encode())
        for key, value in record.items():
            if key in TENSORBOARD_TAGS:
                tag, factor = TENSORBOARD_TAGS[key]
                self._writer.add_scalar(tag, factor * value, record["step"])
        self._writer.flush()
        if time.monotonic() - self._plotted_at >= self.plot_every_s:
            self.plot()

    def add_to_last(self, fields: Mapping[str, Any]) -> None:
        """Adds ``fields`` to the last record and rewrites ``metrics.jsonl`` atomically (the
        end-of-run test results, `jresnet.results.test_fields`; not sent to TensorBoard)."""
        self.records[-1].update(fields)
        if is_main_process():
            safe_files.write_bytes(
                self.path, "".join(json.dumps(r) + "\n" for r in self.records).encode()
            )

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
        """Writes ``curves.png`` from the records so far; returns its path."""
        if not is_main_process() or not self.records:
            return None
        self._plotted_at = time.monotonic()
        return plot_curves(self.records, os.path.join(self.workdir, CURVES_FILE), self.title)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def format_summary(summary: Mapping[str, Any]) -> str:
    if "final_eval_accuracy" not in summary:
        return f"Nothing to train (total {format_duration(summary['wall_time_s'])})."
    return (
        f"Finished {plural(summary['epochs'], 'epoch')} ({plural(summary['steps'], 'step')}): "
        f"final eval accuracy {100 * summary['final_eval_accuracy']:.2f}%, best "
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


def plot_curves(records: list[Mapping[str, Any]], path: str, title: str = "") -> str:
    """Writes `curves_figure` as a PNG at ``path``, whole or not at all; returns ``path``.

    Raises `OutputError` if the file can't be written (no partial file is left).
    """
    import matplotlib.pyplot as plt

    fig = curves_figure(records, title)
    try:
        with safe_files.atomic_writer(path) as f:
            fig.savefig(f, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path


def curves_figure(records: list[Mapping[str, Any]], title: str = "") -> Any:
    """A matplotlib figure of three panels against the epoch (integer ticks): train and
    eval loss (log scale), train and eval accuracy (%), and the learning rate (of each
    epoch's last step); ``title`` (`describe_run`) above them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(14, 4))
    line = {"marker": "o", "markersize": 3}  # one epoch is a point, not an invisible line
    ax_loss.plot(epochs, [r["train_loss"] for r in records], label="train", **line)
    ax_loss.plot(epochs, [r["eval_loss"] for r in records], label="eval", **line)
    ax_loss.set_yscale("log")  # the first epochs' eval loss would squash a linear axis
    ax_loss.set_ylabel("cross-entropy loss (log scale)")
    ax_acc.plot(epochs, [100 * r["train_accuracy"] for r in records], label="train", **line)
    ax_acc.plot(epochs, [100 * r["eval_accuracy"] for r in records], label="eval", **line)
    ax_acc.set_ylabel("accuracy (%)")
    ax_lr.plot(epochs, [r["learning_rate"] for r in records], color="tab:green", **line)
    ax_lr.set_ylabel("learning rate (last step of the epoch)")
    ax_lr.set_ylim(bottom=0)
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ax_loss.legend()
    ax_acc.legend()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
