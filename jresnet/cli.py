"""``jresnet COMMAND [OPTIONS]`` (or ``python -m jresnet COMMAND``): every command line in one.

Each command is the ``main(argv) -> exit code`` of one module, imported by name only when
it runs (`COMMANDS`): ``jresnet --help`` answers without importing JAX, and a command
whose module this version lacks says so in one line. ``jresnet COMMAND --help`` lists the
command's options; exit codes are `jresnet.errors`'s.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import sys
from collections.abc import Sequence

from jresnet import errors


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: ``module.function(argv)`` runs it and returns its exit code."""

    module: str
    function: str
    summary: str  # one line for ``jresnet --help``


COMMANDS = {
    "train": Command(
        "jresnet.train_command",
        "main",
        "train a CIFAR ResNet, or resume the run in --workdir (python train.py does the same)",
    ),
    "eval": Command(
        "jresnet.train_command",
        "eval_main",
        "evaluate a work directory's latest checkpoint (train with --config.eval_only=True)",
    ),
    "predict": Command("jresnet.predict", "main", "the most probable classes of image files"),
    "convert": Command(
        "jresnet.convert", "main", "PyTorch or safetensors weights <-> jresnet work directories"
    ),
    "export": Command("jresnet.export", "main", "write a model as ONNX or jax.export (StableHLO)"),
    "pretrained": Command(
        "jresnet.pretrained", "main", "the published weights jresnet loads, and which are cached"
    ),
    "prepare": Command(
        "jresnet.prepare_data", "main", "write CIFAR-10/100 as a TFDS dataset from a local copy"
    ),
    "summarize": Command(
        "jresnet.summarize", "main", "tables of final and best accuracy over runs' metrics"
    ),
}


def usage() -> str:
    """``jresnet --help``: the commands, one line each."""
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {c.summary}" for name, c in COMMANDS.items()]
    return "\n".join(
        [
            "usage: jresnet COMMAND [OPTIONS]   (or: python -m jresnet COMMAND [OPTIONS])",
            "",
            "commands:",
            *lines,
            "",
            "`jresnet COMMAND --help` lists a command's options.",
        ]
    )


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return errors.EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``jresnet argv...``; returns the exit code (the ``jresnet`` console script)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return errors.EXIT_OK if argv else errors.EXIT_USAGE
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return _error(f"unknown command {name!r}{hint} (commands: {', '.join(COMMANDS)})")
    command = COMMANDS[name]
    try:
        module = importlib.import_module(command.module)
    except ModuleNotFoundError as e:
        if e.name != command.module:
            raise  # a dependency is missing: the traceback names it
        return _error(f"`jresnet {name}` needs {command.module}, which this jresnet lacks")
    try:
        return getattr(module, command.function)(rest)
    except SystemExit as e:  # argparse's --help (0) and usage errors (2)
        if e.code is None or isinstance(e.code, int):
            return e.code or errors.EXIT_OK
        return _error(str(e.code))
