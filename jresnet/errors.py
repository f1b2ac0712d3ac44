"""Errors that are the user's to fix, and the exit codes of every jresnet command line.

Any exception derived from `JresnetError` means "the input or the environment is wrong":
the command lines print ``error: <message>`` (no traceback) and exit with the error's
``exit_code``. Anything else is a bug in jresnet and keeps its traceback.

Exit codes, the same for ``train.py``, ``python -m jresnet.convert``,
``python -m jresnet.prepare_data`` and the other ``python -m jresnet.*`` tools:

====  ==============================================================================
0     success
1     an unexpected error (a bug: Python's own traceback and status)
2     bad input or environment (`JresnetError`): config, flags, files, data, weights
3     training diverged (`TrainingDivergedError`); the saved checkpoints are finite
130   interrupted (Ctrl-C / SIGINT, SIGTERM); rerun the same command to resume
====  ==============================================================================

The rule: one class per kind of bad input, all defined here and nowhere else, each a
subclass of `JresnetError` (and of the builtin a caller would catch, where one fits):

* `ConfigError`: a config key, flag or command-line option is wrong;
* `DataError`: a dataset is missing, damaged or malformed (archives, image folders,
  prepared TFDS files); the message names the file;
* `WeightsError`: a weights source (work directory, ``.pth``/``.th``/``.safetensors``
  file, published name) is unknown, unreadable, hostile or does not fit the model;
* `CheckpointError`: a work directory's checkpoints are unreadable, missing or busy;
* `OutputError`: an output (export, converted weights, metrics) cannot be written where
  asked, or the path is not the user's to write (a planted symlink);
* `ImageError`: an image given to ``predict`` cannot be read as one.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130


class JresnetError(Exception):
    """The user's input or environment is wrong; the message says what to change."""

    exit_code = EXIT_USAGE


class ConfigError(JresnetError, ValueError):
    """The config asks for something jresnet can't do."""


class DataError(JresnetError, ValueError):
    """A dataset is missing, damaged or malformed; the message names the file."""


class WeightsError(JresnetError, ValueError):
    """A weights source is unknown, unreadable, hostile or does not fit the model."""


class CheckpointError(JresnetError, RuntimeError):
    """A work directory's checkpoints are unreadable, missing or held by another run."""


class OutputError(JresnetError, OSError):
    """An output cannot be written where asked (missing directory, read-only, symlink)."""


class ImageError(JresnetError, ValueError):
    """An image given to predict cannot be read as one."""


class TrainingDivergedError(JresnetError, RuntimeError):
    """The loss, or a parameter, statistic or optimizer value, became NaN or infinite."""

    exit_code = EXIT_DIVERGED


class InterruptedRun(JresnetError):
    """A signal stopped the run after saving a checkpoint; rerunning resumes from it."""

    exit_code = EXIT_INTERRUPTED


def _is_closed_loop_callback(exc: BaseException | None) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def _is_abandoned_orbax_read(info: Any) -> bool:
    code = getattr(info.object, "cr_code", None)  # a coroutine collected with its error
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


class _AbandonedOrbaxTasks(logging.Filter):
    """asyncio's "Task exception was never retrieved" for an Orbax read (see below)."""

    def filter(self, record: logging.LogRecord) -> bool:
        tb = record.exc_info[2] if record.exc_info else None
        files = [frame.filename for frame in traceback.extract_tb(tb)] if tb else []
        return not any(f"{os.sep}orbax{os.sep}" in name for name in files)


def _drop_closed_loop_callbacks() -> None:
    """Stops printing the tracebacks of Orbax reads abandoned by a failed restore, which
    jresnet has already reported in one line: ``RuntimeError: Event loop is closed`` from
    TensorStore's threads, and ``Exception ignored in: <coroutine ...>`` with a raw
    TensorStore spec for each array still in flight (30-250 of them; nothing to act on),
    and asyncio's "Task exception was never retrieved" for the same reads.
    Every other exception reaches the previous hooks unchanged. Installed once."""
    if getattr(sys.unraisablehook, "drops_abandoned_orbax_reads", False):
        return
    previous_unraisable, previous_excepthook = sys.unraisablehook, sys.excepthook

    def unraisable(info: Any) -> None:
        if not (_is_closed_loop_callback(info.exc_value) or _is_abandoned_orbax_read(info)):
            previous_unraisable(info)

    def excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if not _is_closed_loop_callback(value):
            previous_excepthook(kind, value, tb)

    unraisable.drops_abandoned_orbax_reads = True  # type: ignore[attr-defined]
    sys.unraisablehook, sys.excepthook = unraisable, excepthook
    logging.getLogger("asyncio").addFilter(_AbandonedOrbaxTasks())


def run_cli(main: Callable[[], int | None]) -> int:
    """Runs a command line's ``main``: `JresnetError` -> ``error: message`` and its exit code.

    A stop that was asked for (`InterruptedRun`, Ctrl-C) prints ``stopped: ...`` and ends
    with `EXIT_INTERRUPTED`; any other exception
    propagates with its traceback (it is a bug, not the user's mistake).
    """
    _drop_closed_loop_callbacks()
    try:
        return main() or EXIT_OK
    except InterruptedRun as e:  # asked for, not a mistake: "stopped", not "error"
        print(f"stopped: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except JresnetError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        print(
            "stopped: interrupted; rerun the same command to resume from the last checkpoint",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_INTERRUPTED
