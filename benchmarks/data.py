"""The benchmark's data: CIFAR-10 loaded once from TFDS and handed to workers as .npy.

The ``prepare`` worker loads both splits with `jresnet.input_pipeline.load_split` and
saves ``{split}_images.npy`` (uint8 NHWC ``[N, 32, 32, 3]``) and ``{split}_labels.npy``
(int32 ``[N]``) into a temporary folder; the other workers read them back with
`load`. The model-step and convolution measurements use random data instead.
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


def load(data: str, split: str, n_min: int) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 images, int32 labels)`` of `prepare`'s folder, repeated to ``n_min`` images
    where the split holds fewer."""
    images = np.load(os.path.join(data, f"{split}_images.npy"))
    labels = np.load(os.path.join(data, f"{split}_labels.npy"))
    if len(labels) < n_min:
        images = np.resize(images, (n_min, *images.shape[1:]))
        labels = np.resize(labels, n_min)
    return images, labels


def describe(info: dict[str, Any]) -> str:
    """The report's line on the data, with its sizes; never a machine path."""
    seconds = sum(info[f"{split}_load_s"] for split in SPLITS)
    return (
        f"{DATASET} from the TFDS data dir given by `--data-dir`: "
        f"{info['train_count']:,} train / {info['test_count']:,} test images "
        f"(loaded once in {seconds:.1f} s, passed to the workers as .npy; a split with "
        "fewer images than a measurement needs is repeated)"
    )
