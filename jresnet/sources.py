"""Reads a local CIFAR source of any supported layout into memory, checked and bounded.

A source is one of

- ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` (`jresnet.cifar_pickles`);
- ``cifar-10-binary.tar.gz`` / ``cifar-100-binary.tar.gz`` (`jresnet.cifar_binary`);
- an image-folder tree ``train/<class>/*`` and ``test/<class>/*`` (`jresnet.image_folders`),

as a directory or a ``.tar`` / ``.tar.gz`` of one (possibly under one top-level folder), read
whole or refused by `jresnet.archives`. Checks, all before anything is written:

- Every file's size is checked before it is read (a CIFAR batch file may be at most 4 KiB per
  example it should hold, a label-name file or an image file 1 MiB, all files together 1 GiB).
- An official-format archive (python or binary) must hold the official number of examples per
  split (`jresnet.datasets`: 50,000 train, 10,000 test); an image folder may be a subset.

Problems raise `errors.DataError` (a name not in `jresnet.datasets`: `errors.ConfigError`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath

from jresnet import archives, datasets
from jresnet.cifar_binary import read_binary_cifar10, read_binary_cifar100
from jresnet.cifar_format import SPLITS, SplitArrays, check_split, find
from jresnet.cifar_pickles import read_python_cifar10, read_python_cifar100
from jresnet.errors import ConfigError, DataError
from jresnet.image_folders import read_image_folder

# Size limits, checked before a file is read. A CIFAR example takes 3,072 pixel bytes, one or two
# label bytes and, in the python batches, a file name of about 30 bytes: 4 KiB per example is a
# third more than the official files need.
_BYTES_PER_EXAMPLE = 4096
_META_FILE_LIMIT = 1 << 20  # label names: under 1 KB in the official files
_IMAGE_FILE_LIMIT = 1 << 20  # one 32x32 image: a few KB as PNG or JPEG
_TOTAL_LIMIT = 1 << 30  # all files read: ~5x the largest release (CIFAR-100 python, 186 MB)
_META_FILES = frozenset(
    ["batches.meta", "batches.meta.txt", "meta", "fine_label_names.txt", "coarse_label_names.txt"]
)
# The official batch files: {file name: (split, number of files the split is spread over)}.
_BATCH_FILES: Mapping[str, tuple[str, int]] = {
    **{f"data_batch_{i}{ext}": ("train", 5) for i in range(1, 6) for ext in ("", ".bin")},
    **{f"test_batch{ext}": ("test", 1) for ext in ("", ".bin")},
    **{f"{split}{ext}": (split, 1) for split in SPLITS for ext in ("", ".bin")},
}


@dataclasses.dataclass(frozen=True)
class Source:
    """A dataset read from a local source.

    Attributes:
      dataset: "cifar10" or "cifar100".
      layout: a description of the source's layout, for messages.
      splits: {"train": ..., "test": ...}.
      official: read from an official-format archive (python or binary), which holds the
        official split sizes; False for an image folder, which may be a subset.
    """

    dataset: str
    layout: str
    splits: dict[str, SplitArrays]
    official: bool = False


def _file_limit(path: str) -> int | None:
    """The largest size a source file may have, in bytes; None for a file no layout reads."""
    parts = PurePosixPath(path).parts
    if parts[-1] in _META_FILES:
        return _META_FILE_LIMIT
    if parts[-1] in _BATCH_FILES:
        split, num_files = _BATCH_FILES[parts[-1]]
        examples = max(d.split_sizes[split] for d in datasets.DATASETS.values()) // num_files
        return examples * _BYTES_PER_EXAMPLE
    if len(parts) >= 3 and parts[-3] in SPLITS:  # [root/]split/class/image
        return _IMAGE_FILE_LIMIT
    return None


def read_source(path: str | os.PathLike, dataset: str | None = None) -> Source:
    """Reads a local CIFAR source (see the module docstring) into memory.

    Args:
      path: tarball, tar of an image-folder tree, or a directory holding either layout.
      dataset: "cifar10" or "cifar100"; None infers it from the source.

    Returns:
      The dataset name, a description of the layout, and uint8 NHWC ``train``/``test`` splits.

    Raises:
      ConfigError: ``dataset`` is not a name in `jresnet.datasets`.
      DataError: missing path, unrecognised layout, wrong class folders, images that are
        not 32x32 RGB, a source of another dataset than ``dataset``, an archive that is
        truncated or corrupt or holds an oversized file, a pickle naming a forbidden global,
        or an official-format archive without the official number of examples.
    """
    check_dataset_name(dataset)
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist.")
    source_files = archives.read_files(path, _file_limit, _TOTAL_LIMIT)
    files = source_files.contents
    if not files and not source_files.skipped:
        raise DataError(f"{path} contains no files.")

    readers: list[tuple[str, str, str, Callable[[Mapping[str, bytes]], dict]]] = [
        ("data_batch_1", "cifar10", "cifar-10-python", read_python_cifar10),
        ("data_batch_1.bin", "cifar10", "cifar-10-binary", read_binary_cifar10),
        ("fine_label_names.txt", "cifar100", "cifar-100-binary", read_binary_cifar100),
    ]
    if find(files, "meta") is not None and find(files, "train") is not None:
        readers.append(("meta", "cifar100", "cifar-100-python", read_python_cifar100))
    for marker, source_dataset, layout, reader in readers:
        if find(files, marker) is None:
            continue
        if dataset is not None and dataset != source_dataset:
            raise DataError(f"{path} is {layout}, which holds {source_dataset}, not {dataset}.")
        try:
            splits = reader(files)
        except (KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
            raise DataError(f"{path} looks like {layout} but is malformed: {e!r}.") from e
        for split, arrays in splits.items():
            official = datasets.get(source_dataset).split_sizes[split]
            if len(arrays.images) != official:
                raise DataError(
                    f"{path} ({layout}) holds {len(arrays.images):,} {split} examples; the "
                    f"official release has {official:,}. It is incomplete or altered: download "
                    "the official archive again."
                )
        official_format = True
        break
    else:
        all_names = [*files, *source_files.skipped]
        source_dataset, layout, splits = read_image_folder(files, all_names, dataset)
        official_format = False
    for split, arrays in splits.items():
        check_split(arrays.images, arrays.labels, datasets.get(source_dataset).num_classes, split)
    return Source(source_dataset, layout, splits, official_format)


def check_dataset_name(dataset: str | None) -> None:
    """`ConfigError` unless ``dataset`` is None or a name in `jresnet.datasets`."""
    if dataset is not None and dataset not in datasets.DATASETS:
        raise ConfigError(f"Unknown dataset {dataset!r}; known: {sorted(datasets.DATASETS)}.")
