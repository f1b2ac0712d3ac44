"""Shared fixtures: a tiny CIFAR-10 in TFDS format and the `train.py` command line."""

import sys
from pathlib import Path

import numpy as np
import pytest

from jresnet import prepare_data

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """A CIFAR-10 in TFDS format with 64 train and 40 test images (learnable: the red
    channel carries the label)."""
    path = tmp_path_factory.mktemp("tfds")
    rng = np.random.default_rng(0)

    def split(n):
        labels = rng.integers(0, 10, n).astype(np.int64)
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        images[..., 0] = np.clip(images[..., 0] // 2 + 12 * labels[:, None, None], 0, 255)
        return images, labels

    prepare_data.write_dataset(str(path), "cifar10", {"train": split(64), "test": split(40)})
    return str(path)


def train_command(workdir, **config) -> list[str]:
    """``python train.py --workdir=W --config.KEY=VALUE ...``."""
    return [
        sys.executable,
        str(REPO / "train.py"),
        f"--workdir={workdir}",
        *(f"--config.{k}={v}" for k, v in config.items()),
    ]
