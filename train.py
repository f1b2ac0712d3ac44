"""Train a CIFAR ResNet: ``python train.py --workdir ckpt/ [--config=FILE] [--config.KEY=VALUE]``.

The same as ``jresnet train`` (`jresnet.train_command`), for a clone that is not installed:
run it from any directory (``python /path/to/jresnet/train.py ...``). ``--help`` lists every
config key with its default. Rerunning the same command resumes from the latest checkpoint
in ``--workdir``. Examples:
  python train.py --workdir ckpt/
  python train.py --workdir ckpt/paper --config=jresnet/configs/paper.py
  python train.py --workdir ckpt/ --config.num_epochs=5 --config.data_dir=/data/tfds
  python train.py --workdir ckpt/ --config.eval_only=True
"""

import sys

from jresnet import train_command  # sets the XLA:CPU flag before anything imports JAX

if __name__ == "__main__":
    raise SystemExit(train_command.main(sys.argv[1:]))
