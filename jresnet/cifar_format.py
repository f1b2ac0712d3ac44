"""What every CIFAR source reader shares: the split arrays and the official files' conventions.

Images are uint8 NHWC ``[N, 32, 32, 3]`` (RGB); labels int64 ``[N]``. The official batches store
each image as a row of 3072 bytes, the red plane, then green, then blue (each 32x32,
row-major): `chw_rows_to_nhwc` turns those rows into images. A source's files are a mapping of
posix paths to bytes (`jresnet.archives.Files.contents`), looked up by file name (`find`).
Problems raise `errors.DataError` naming the file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath

import numpy as np

from jresnet import datasets
from jresnet.errors import DataError

IMAGE_SHAPE = (32, 32, 3)
SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class SplitArrays:
    """One split in memory.

    Attributes:
      images: uint8 ``[N, 32, 32, 3]``, RGB, NHWC.
      labels: int64 ``[N]``, the (fine) label in ``0..num_classes-1``.
      coarse_labels: int64 ``[N]`` CIFAR-100 superclass in ``0..19``; ``None`` for CIFAR-10.
    """

    images: np.ndarray
    labels: np.ndarray
    coarse_labels: np.ndarray | None = None


def fine_to_coarse() -> np.ndarray:
    """CIFAR-100's superclass of every fine label: int64 ``[100]`` with values in ``0..19``."""
    superclasses = datasets.CIFAR100_SUPERCLASSES
    lookup = {fine: c for c, fines in enumerate(superclasses.values()) for fine in fines}
    labels = datasets.get("cifar100").label_names
    return np.array([lookup[name] for name in labels], dtype=np.int64)


def find(files: Mapping[str, bytes], basename: str) -> str | None:
    """The one path whose file name is ``basename``; None if absent; error if ambiguous."""
    hits = [p for p in files if PurePosixPath(p).name == basename]
    if len(hits) > 1:
        raise DataError(f"Found {len(hits)} files named {basename!r}: {sorted(hits)[:5]}.")
    return hits[0] if hits else None


def require_path(files: Mapping[str, bytes], basename: str, layout: str) -> str:
    path = find(files, basename)
    if path is None:
        raise DataError(f"The source looks like {layout} but has no {basename!r}.")
    return path


def require(files: Mapping[str, bytes], basename: str, layout: str) -> bytes:
    return files[require_path(files, basename, layout)]


def chw_rows_to_nhwc(rows: np.ndarray, what: str) -> np.ndarray:
    """uint8 ``[N, 3072]`` rows (R plane, G plane, B plane; row-major) -> ``[N, 32, 32, 3]``."""
    rows = np.asarray(rows)
    if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 3072:
        raise DataError(
            f"{what}: expected uint8 [N, 3072] pixel rows, got {rows.dtype} {rows.shape}."
        )
    return np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def label_names(dataset: str) -> tuple[str, ...]:
    return datasets.get(dataset).label_names


def check_names(found: Sequence[str], expected: Sequence[str], layout: str) -> None:
    if tuple(found) != tuple(expected):
        raise DataError(
            f"The label names in the {layout} source {list(found)[:12]} are not the official ones "
            f"{list(expected)[:12]}: this does not look like the official release."
        )


def check_split(images: np.ndarray, labels: np.ndarray, num_classes: int, split: str) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
        raise DataError(
            f"{split}: images must be uint8 [N, 32, 32, 3], got {images.dtype} {images.shape}."
        )
    if labels.shape != (len(images),):
        raise DataError(f"{split}: {labels.shape} labels for {len(images)} images.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{split}: labels must lie in 0..{num_classes - 1}.")
