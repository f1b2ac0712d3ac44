"""The benchmark's data: CIFAR-10 loaded once from TFDS and handed to workers as .npy.

The ``prepare`` worker loads both splits with `jresnet.input_pipeline.load_split` and
saves ``{split}_images.npy`` (uint8 NHWC ``[N, 32, 32, 3]``) and ``{split}_labels.npy``
(int32 ``[N]``) into a temporary folder; the other workers read them back with
`load`, or draw synthetic images when there is no such folder.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

SPLITS = ("train", "test")
DATASET = "cifar10"


def prepare(data_dir: str, out_dir: str) -> dict[str, Any]:
    """Loads the TFDS splits once into ``out_dir`` as .npy; returns counts and load seconds."""
    from jresnet import input_pipeline

    info: dict[str, Any] = {}
    for split in SPLITS:
        start = time.perf_counter()
        images, labels = input_pipeline.load_split(DATASET, split, data_dir)
        info[f"{split}_load_s"] = time.perf_counter() - start
        info[f"{split}_count"] = len(labels)
        np.save(os.path.join(out_dir, f"{split}_images.npy"), images)
        np.save(os.path.join(out_dir, f"{split}_labels.npy"), labels)
    return info


def load(data: str | None, split: str, n_min: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(uint8 images, int32 labels, real)`` from `prepare`'s folder, else synthetic.

    Synthetic data: ``n_min`` uniform random uint8 images and labels in 0..9 (seed 1).
    """
    if data:
        images = np.load(os.path.join(data, f"{split}_images.npy"))
        labels = np.load(os.path.join(data, f"{split}_labels.npy"))
        return images, labels, True
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n_min, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, (n_min,)).astype(np.int32)
    return images, labels, False


def describe(info: dict[str, Any] | None) -> str:
    """The report's line on the data: real (with sizes) or synthetic; never a machine path."""
    if info is None:
        return f"synthetic uniform uint8 images (no loadable TFDS {DATASET} in `--data-dir`)"
    seconds = sum(info[f"{split}_load_s"] for split in SPLITS)
    return (
        f"real {DATASET} from the TFDS data dir given by `--data-dir`: "
        f"{info['train_count']:,} train / {info['test_count']:,} test images "
        f"(loaded once in {seconds:.1f} s, passed to the workers as .npy)"
    )
