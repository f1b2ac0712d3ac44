"""Train a CIFAR ResNet: ``python train.py --workdir ckpt/ [--config=CONFIG] [--config.KEY=VALUE]``.

Parses flags only; the work is done by `jresnet.main.run`. Rerunning the same
command resumes from the latest checkpoint in ``--workdir``.
Examples:
  python train.py --workdir ckpt/
  python train.py --workdir ckpt/paper --config=jresnet/configs/paper.py
  python train.py --workdir ckpt/ --config.num_epochs=5 --config.data_dir=/data/tfds
  python train.py --workdir ckpt/ --config.eval_only=True
"""

import os

from jresnet import xla_setup

xla_setup.configure_cpu_flags()  # XLA:CPU speed flag; must precede the first JAX import

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "jresnet", "configs", "default.py")

_WORKDIR = flags.DEFINE_string("workdir", "ckpt/", "Directory for checkpoints, metrics and plots.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Training configuration file.", lock_config=True
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax and TFDS log every step at INFO
    from jresnet import main as jresnet_main

    raise SystemExit(jresnet_main.run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
    app.run(main)
