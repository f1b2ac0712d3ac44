"""Tiny CIFAR datasets on disk for tests: `write_dataset` from in-memory arrays."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import numpy as np

from jresnet import datasets, tfds_writer
from jresnet.cifar_format import SplitArrays, check_split, fine_to_coarse
from jresnet.errors import ConfigError, DataError

_SPLIT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def write_dataset(
    data_dir: str | os.PathLike,
    dataset: str,
    splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    overwrite: bool = False,
) -> None:
    """Writes a (small) standard TFDS CIFAR dataset from in-memory arrays.

    Meant for tests that need a tiny CIFAR on disk: ``data_dir/<dataset>/3.0.2/`` is written in
    ``array_record`` format exactly as `jresnet.prepare_data.prepare` would, readable with
    ``tfds.data_source(dataset, data_dir=data_dir)``. Label names are the official ones; for
    cifar100 the ``coarse_label`` is derived from the fine label.

    Args:
      data_dir: TFDS data directory (created if missing).
      dataset: "cifar10" or "cifar100".
      splits: {split name: (images uint8 ``[N, 32, 32, 3]`` RGB NHWC, labels int ``[N]``)}, e.g.
        ``{"train": ..., "test": ...}``.
      overwrite: replace an existing dataset of the same name and version in ``data_dir``.

    Raises:
      ConfigError: an unknown dataset, no splits or a bad split name.
      DataError: bad shapes, dtypes or labels.
      OutputError: the dataset already exists (and ``overwrite`` is False), or ``data_dir``
        can't be written.
    """
    if dataset not in datasets.DATASETS:
        raise ConfigError(f"Unknown dataset {dataset!r}; known: {sorted(datasets.DATASETS)}.")
    if not splits:
        raise ConfigError("No splits given.")
    arrays = {}
    for split, (images, labels) in splits.items():
        if not _SPLIT_NAME.match(split):
            raise ConfigError(f"Bad split name {split!r}: use lowercase letters, digits and _.")
        images = np.asarray(images)
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iu":
            raise DataError(f"{split}: labels must be integers, got {labels.dtype}.")
        labels = labels.astype(np.int64)
        check_split(images, labels, datasets.get(dataset).num_classes, split)
        coarse = fine_to_coarse()[labels] if dataset == "cifar100" else None
        arrays[split] = SplitArrays(images, labels, coarse)
    tfds_writer.write(data_dir, dataset, arrays, overwrite, log=lambda _: None)
