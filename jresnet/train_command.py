"""``jresnet train`` and ``jresnet eval`` (also ``python train.py``): flags -> config -> run.

``--workdir DIR``, ``--config=FILE`` (default: `jresnet/configs/default.py`, the seed's
recipe) and ``--config.KEY=VALUE`` for any key of the config; ``--help`` lists every key
with its default and comment (`jresnet.configs.describe`). Rerunning the same command
resumes from the latest checkpoint in ``--workdir``. Exit codes are `jresnet.errors`'s
(0 done, 2 bad input, 3 diverged, 130 interrupted).

Importing this module sets the XLA:CPU flag (`jresnet.xla_setup`), so import it before
JAX. `jresnet.main` (which imports JAX, TFDS and Orbax, seconds of work) is imported only
once the flags are checked, so ``--help`` and a mistyped flag answer at once.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence

from jresnet import xla_setup

xla_setup.configure_cpu_flags()  # XLA:CPU speed flag; must precede the first JAX import

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jresnet import errors  # noqa: E402
from jresnet.configs import describe  # noqa: E402

# The README's relative --config paths (jresnet/configs/paper.py) are relative to this.
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(SOURCE_ROOT, "jresnet", "configs", "default.py")
HELP_FLAGS = ("-h", "--help", "--helpfull", "-?")

_USAGE = """\
usage: {prog} --workdir DIR [--config=FILE] [--config.KEY=VALUE ...] [--verbosity N]
       (the same: python -m jresnet {command} ..., {script})

{what}

options:
  --workdir DIR        checkpoints, metrics.jsonl, TensorBoard events and curves.png
                       (default: ckpt/)
  --config=FILE        config file (default: jresnet/configs/default.py, the seed's recipe;
                       jresnet/configs/paper.py: He et al.'s); a relative path is looked up
                       in the current directory, then in jresnet's source tree
  --config.KEY=VALUE   override one key of the config (below)
  --verbosity N        absl log level of the libraries (default: warnings only)

config keys, with their values in {config_file}:
{keys}
"""
_WHAT = {
    "train": (
        "Trains a CIFAR ResNet, or resumes the run in --workdir: rerunning the same command\n"
        "continues from its latest checkpoint."
    ),
    "eval": (
        "Evaluates the latest checkpoint in --workdir (trained or converted; with none,\n"
        "--config.init_from) on eval_split and exits: train with --config.eval_only=True."
    ),
}


class _UsageError(Exception):
    """A command line that can't be run; its message is one line."""


def _config_file_argument(arg: str) -> str:
    """``--config=PATH[:ARGS]`` with PATH made absolute: as given, else under `SOURCE_ROOT`."""
    path, colon, rest = arg.removeprefix("--config=").partition(":")
    candidates = (path, os.path.join(SOURCE_ROOT, path))
    found = next((p for p in candidates if os.path.isfile(p)), None)
    if found is None:
        raise _UsageError(f"--config file {path!r} not found (nor in {SOURCE_ROOT})")
    return f"--config={os.path.abspath(found)}{colon}{rest}"


def parse(argv: Sequence[str], prog: str = "jresnet train"):
    """``(config, workdir, verbosity_given)`` from command-line arguments (no program name).

    Raises:
      _UsageError: an unknown flag or config key, a bad value, a missing config file or a
        stray argument, in one line.
    """
    args = [_config_file_argument(a) if a.startswith("--config=") else a for a in argv]
    values = flags.FlagValues()
    values["verbosity"] = flags.FLAGS["verbosity"]  # absl's own, so it sets the log level
    workdir = flags.DEFINE_string("workdir", "ckpt/", "work directory", flag_values=values)
    # config_flags checks each --config.KEY against the config file right here. It loads the
    # file with importlib's deprecated load_module(): that DeprecationWarning is theirs.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "the load_module", DeprecationWarning)
        config = _define_config(values, [prog, *args], prog)
        try:
            rest = values([prog, *args])
        except (flags.Error, TypeError, ValueError) as e:
            raise _UsageError(f"{e} (all keys: {prog} --help)") from None
    if len(rest) > 1:
        raise _UsageError(f"unexpected arguments: {' '.join(rest[1:])}")
    return config.value, workdir.value, values["verbosity"].present


def explicit_keys(argv: Sequence[str]) -> set[str]:
    """The config keys the command line sets (``--config.KEY=VALUE`` or ``--config.KEY VALUE``),
    read as ``config_flags`` reads its overrides. Weights given by ``init_from`` or evaluated
    by ``eval_only`` bring their own settings for every other key (`jresnet.weights.settle`).
    """
    return {
        arg.lstrip("-").removeprefix("config.").split("=", 1)[0].split(".", 1)[0]
        for arg in argv
        if arg.startswith(("--config.", "-config."))
    }


def _define_config(values: flags.FlagValues, argv: list[str], prog: str) -> flags.FlagHolder:
    """The ``--config`` flag (and its ``--config.KEY`` overrides in ``argv``) on ``values``."""
    try:
        return config_flags.DEFINE_config_file(
            "config",
            DEFAULT_CONFIG,
            "config file",
            flag_values=values,
            lock_config=True,
            sys_argv=argv,
        )
    except (AttributeError, KeyError) as e:
        while e.args and isinstance(e.args[0], BaseException):  # KeyError inside AttributeError
            e = e.args[0]
        key, _, hint = str(e.args[0] if e.args else e).partition("\n")
        hint = f"; {hint}" if hint else ""
        raise _UsageError(f"no such config key {key}{hint} (all keys: {prog} --help)") from None


def help_text(argv: Sequence[str], command: str = "train") -> str:
    """The ``--help`` of ``jresnet COMMAND``: options, then every config key with its value
    (in ``--config=FILE`` where one is given) and its comment from ``default.py``."""
    prog = f"jresnet {command}"
    chosen = [a for a in argv if a.startswith("--config=")][-1:]
    try:
        config, _, _ = parse(chosen, prog)
    except _UsageError as e:
        raise _UsageError(f"{e}; without --config, --help shows the defaults") from None
    config_file = chosen[0].removeprefix("--config=") if chosen else "jresnet/configs/default.py"
    script = "python train.py" + (" --config.eval_only=True" if command == "eval" else "")
    return _USAGE.format(
        prog=prog,
        command=command,
        script=script,
        what=_WHAT[command],
        config_file=config_file,
        keys=describe.describe_default(config),
    )


def main(argv: Sequence[str] | None = None, command: str = "train") -> int:
    """Runs ``jresnet train`` (``command="eval"``: ``jresnet eval``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if any(a in HELP_FLAGS for a in argv):
            print(help_text(argv, command))
            return errors.EXIT_OK
        if command == "eval":
            argv.append("--config.eval_only=True")
        config, workdir, verbosity_given = parse(argv, f"jresnet {command}")
    except _UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return errors.EXIT_USAGE
    logging.use_absl_handler()
    flags.FLAGS.mark_as_parsed()  # absl logs as after app.run, without its "before flag parsing"
    if not verbosity_given:
        logging.set_verbosity(logging.WARNING)  # Orbax and TFDS log every step at INFO
    from jresnet import main as run_main  # JAX, TFDS, Orbax: only once the flags are good

    return run_main.run(config, workdir, explicit_keys(argv))


def eval_main(argv: Sequence[str] | None = None) -> int:
    """``jresnet eval``: `main` with ``--config.eval_only=True``."""
    return main(argv, command="eval")
