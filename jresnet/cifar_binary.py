"""The binary-format CIFAR releases (``cifar-10-binary.tar.gz``, ``cifar-100-binary.tar.gz``):
fixed-size records of label byte(s) followed by 3072 bytes of CHW pixels, and label names as
text files.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from jresnet import datasets
from jresnet.cifar_format import (
    SPLITS,
    SplitArrays,
    check_names,
    chw_rows_to_nhwc,
    label_names,
    require,
)
from jresnet.errors import DataError


def _parse_binary(data: bytes, num_label_bytes: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Records of ``num_label_bytes`` label bytes + 3072 CHW pixel bytes -> (images, labels)."""
    record = num_label_bytes + 3072
    if len(data) == 0 or len(data) % record:
        raise DataError(
            f"{what}: {len(data)} bytes is not a whole number of {record}-byte records."
        )
    table = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    labels = table[:, :num_label_bytes].astype(np.int64)
    return chw_rows_to_nhwc(table[:, num_label_bytes:], what), labels


def _text_names(data: bytes) -> list[str]:
    return [line.strip() for line in data.decode().splitlines() if line.strip()]


def read_binary_cifar10(files: Mapping[str, bytes]) -> dict[str, SplitArrays]:
    layout = "cifar-10-binary"
    names = _text_names(require(files, "batches.meta.txt", layout))
    check_names(names, label_names("cifar10"), layout)
    batches = {
        "train": [f"data_batch_{i}.bin" for i in range(1, 6)],
        "test": ["test_batch.bin"],
    }
    splits = {}
    for split, names in batches.items():
        parts = [_parse_binary(require(files, name, layout), 1, name) for name in names]
        images = np.concatenate([images for images, _ in parts])
        labels = np.concatenate([labels[:, 0] for _, labels in parts])
        splits[split] = SplitArrays(images, labels)
    return splits


def read_binary_cifar100(files: Mapping[str, bytes]) -> dict[str, SplitArrays]:
    layout = "cifar-100-binary"
    fine_names = _text_names(require(files, "fine_label_names.txt", layout))
    check_names(fine_names, datasets.get("cifar100").label_names, layout)
    coarse_names = _text_names(require(files, "coarse_label_names.txt", layout))
    check_names(coarse_names, datasets.get("cifar100").coarse_label_names, layout)
    splits = {}
    for split in SPLITS:
        images, labels = _parse_binary(require(files, f"{split}.bin", layout), 2, f"{split}.bin")
        splits[split] = SplitArrays(images, labels[:, 1], labels[:, 0])  # coarse byte first
    return splits
