"""Train a CIFAR ResNet: ``python train.py --workdir ckpt/ [--config=CONFIG] [--config.KEY=VALUE]``.

Parses flags only; the work is done by `jresnet.main.run`. Rerunning the same
command resumes from the latest checkpoint in ``--workdir``. Exit codes are
listed in `jresnet.errors` (0 done, 2 bad input, 3 diverged, 130 interrupted).
Examples:
  python train.py --workdir ckpt/
  python train.py --workdir ckpt/paper --config=jresnet/configs/paper.py
  python train.py --workdir ckpt/ --config.num_epochs=5 --config.data_dir=/data/tfds
  python train.py --workdir ckpt/ --config.eval_only=True
"""

import os
import sys

from jresnet import xla_setup

xla_setup.configure_cpu_flags()  # XLA:CPU speed flag; must precede the first JAX import

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jresnet import errors  # noqa: E402

_REPO = os.path.dirname(os.path.abspath(__file__))
_DEFAULT_CONFIG = os.path.join(_REPO, "jresnet", "configs", "default.py")


def _config_file_argument(argv: list[str]) -> list[str]:
    """``--config=PATH`` made absolute: PATH as given, else relative to this repository
    (so the README's ``--config=jresnet/configs/paper.py`` works from any directory)."""
    out = []
    for arg in argv:
        if arg.startswith("--config="):
            path, colon, rest = arg.removeprefix("--config=").partition(":")
            found = next((p for p in (path, os.path.join(_REPO, path)) if os.path.isfile(p)), None)
            if found is None:
                sys.exit(_usage(f"--config file {path!r} not found (nor in {_REPO})"))
            arg = f"--config={os.path.abspath(found)}{colon}{rest}"
        out.append(arg)
    return out


def _usage(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return errors.EXIT_USAGE


sys.argv = _config_file_argument(sys.argv)
_WORKDIR = flags.DEFINE_string("workdir", "ckpt/", "Directory for checkpoints, metrics and plots.")
try:  # config_flags checks each --config.KEY against the config file right here
    _CONFIG = config_flags.DEFINE_config_file(
        "config", _DEFAULT_CONFIG, "Training configuration file.", lock_config=True
    )
except (AttributeError, KeyError) as e:
    while e.args and isinstance(e.args[0], BaseException):  # KeyError inside AttributeError
        e = e.args[0]
    key, _, hint = str(e.args[0] if e.args else e).partition("\n")
    hint = f"; {hint}" if hint else ""
    sys.exit(_usage(f"no such config key {key}{hint} (all keys: jresnet/configs/default.py)"))


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with bad values reported in one line and exit code 2."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, TypeError, ValueError) as e:
        sys.exit(_usage(f"{e} (all keys: jresnet/configs/default.py)"))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        sys.exit(_usage(f"unexpected arguments: {' '.join(argv[1:])}"))
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax and TFDS log every step at INFO
    from jresnet import main as jresnet_main  # imports JAX: after the flags are checked

    raise SystemExit(jresnet_main.run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
