"""Prepare CIFAR-10/100 as the standard TFDS dataset from a local copy, offline, without TensorFlow.

Usage::

    python -m jresnet.prepare_data --from PATH --data_dir DIR [--dataset cifar10] [--overwrite]

``PATH`` is one of

- ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``: the pickled batches of the official
  release. They are unpickled by a restricted unpickler that admits exactly what the official
  files hold (dicts, lists, bytes, ints and NumPy arrays: the globals
  ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and ``numpy.dtype``); a pickle that
  names any other global (the way pickles run code) is refused before anything runs.
- ``cifar-10-binary.tar.gz`` / ``cifar-100-binary.tar.gz``: records of label byte(s) followed by
  3072 bytes of CHW pixels.
- an image-folder tree ``train/<class>/*`` and ``test/<class>/*`` (a directory, or a ``.tar`` /
  ``.tar.gz`` of one, possibly under one top-level folder). Every image must be 32x32 RGB; any
  format PIL reads is accepted (JPEGs are decoded once, here, then stored losslessly). Class
  folders named after the official classes get the official labels; otherwise labels follow the
  sorted folder names (for CIFAR-10 the official order is alphabetical, so both agree).

Any of these may also be given as an already extracted directory.

Checks on the source (all before anything is written):

- Archives are read to their end: a truncated or corrupt archive, a bad gzip CRC or a damaged
  tar header is an error, never a silently smaller dataset (see `jresnet.archives`).
- Every file's size is checked before it is read (a CIFAR batch file may be at most 4 KiB per
  example it should hold, a label-name file or an image file 1 MiB, all files together 1 GiB),
  and every image's size and mode are read from its header before its pixels are decoded.
- An official-format archive (python or binary) must hold the official number of examples per
  split (`jresnet.datasets`: 50,000 train, 10,000 test); an image folder may be a subset, and
  a warning says so.

Nothing half-written is left in ``DIR``: the dataset is built in a hidden work directory
``DIR/.jresnet_prepare_*/`` (which also holds TFDS's ``incomplete.*`` directory and its
download scratch) and moved into place when complete. The work directory is locked with
``flock`` (POSIX) while its run lives; the next run removes those of killed runs, with a
message, and names (without removing) leftovers it cannot prove dead: TFDS's own
``DIR/<dataset>/incomplete.*`` and the ``.jresnet_overwrite_*`` of older jresnet versions.

Problems with the source or the destination raise `PrepareError`; the command line prints
``error: <message>`` and exits with status 2 (`jresnet.errors`); a bug keeps its traceback.

The result is ``DIR/<dataset>/3.0.2/`` in ``array_record`` format, with the features, version,
split names (``train``, ``test``), label names, example keys and ``id`` strings
(``train_00000``, ...) of TFDS 4.9.10's own ``cifar10`` / ``cifar100`` builders, so that plain
``tfds.data_source("cifar10", data_dir=DIR)`` and ``tfds.builder("cifar10", data_dir=DIR)`` read
it as the standard dataset.

Findings about TFDS 4.9.10 (checked, not assumed):

- The stock ``Cifar10.download_and_prepare`` cannot run here: it downloads
  ``cifar-10-binary.tar.gz`` from cs.toronto.edu, and its ``_load_data`` reads the batches with
  ``tf.io.gfile.GFile``, which raises ``ModuleNotFoundError: tensorflow`` without TensorFlow.
- ``tfds.features.Image.encode_example`` encodes a NumPy array with ``tf.image.encode_png`` (needs
  TensorFlow), but passes ``bytes`` through unchanged. We therefore encode each image to PNG with
  PIL ourselves (lossless) and hand TFDS the bytes; shapes and dtypes are validated beforehand.
- Writing ``array_record`` shards and ``dataset_info.json`` needs no TensorFlow.
- No network: the builder here subclasses the stock one (registration skipped) and overrides
  ``_split_generators`` so the download manager is never asked for anything; GCS access is also
  turned off (``try_download_gcs=False``). Why no public TFDS API does this: see
  `_builder_class`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import io
import os
import pickle
import re
import shutil
import struct
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jresnet import archives, datasets, errors
from jresnet.errors import JresnetError

IMAGE_SHAPE = (32, 32, 3)
SPLITS = ("train", "test")

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


class PrepareError(JresnetError, ValueError):
    """A problem with the source or the destination, explained for the user."""


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


def fine_to_coarse() -> np.ndarray:
    """CIFAR-100's superclass of every fine label: int64 ``[100]`` with values in ``0..19``."""
    superclasses = datasets.CIFAR100_SUPERCLASSES
    lookup = {fine: c for c, fines in enumerate(superclasses.values()) for fine in fines}
    labels = datasets.get("cifar100").label_names
    return np.array([lookup[name] for name in labels], dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Reading sources.


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


def _find(files: Mapping[str, bytes], basename: str) -> str | None:
    """The one path whose file name is ``basename``; None if absent; error if ambiguous."""
    hits = [p for p in files if PurePosixPath(p).name == basename]
    if len(hits) > 1:
        raise PrepareError(f"Found {len(hits)} files named {basename!r}: {sorted(hits)[:5]}.")
    return hits[0] if hits else None


def _require_path(files: Mapping[str, bytes], basename: str, layout: str) -> str:
    path = _find(files, basename)
    if path is None:
        raise PrepareError(f"The source looks like {layout} but has no {basename!r}.")
    return path


def _require(files: Mapping[str, bytes], basename: str, layout: str) -> bytes:
    return files[_require_path(files, basename, layout)]


def _chw_rows_to_nhwc(rows: np.ndarray, what: str) -> np.ndarray:
    """uint8 ``[N, 3072]`` rows (R plane, G plane, B plane; row-major) -> ``[N, 32, 32, 3]``."""
    rows = np.asarray(rows)
    if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 3072:
        raise PrepareError(
            f"{what}: expected uint8 [N, 3072] pixel rows, got {rows.dtype} {rows.shape}."
        )
    return np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _label_names(dataset: str) -> tuple[str, ...]:
    return datasets.get(dataset).label_names


def _check_names(found: Sequence[str], expected: Sequence[str], layout: str) -> None:
    if tuple(found) != tuple(expected):
        raise PrepareError(
            f"The label names in the {layout} source {list(found)[:12]} are not the official ones "
            f"{list(expected)[:12]}: this does not look like the official release."
        )


_NUMPY_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy.core.multiarray._reconstruct


def _empty_array(subtype: type, shape: tuple, dtype: bytes) -> np.ndarray:
    """``_reconstruct`` as NumPy's pickles call it: an empty array for ``__setstate__`` to fill.

    Any other shape would allocate memory the pickle does not hold, so it is refused.
    """
    if subtype is not np.ndarray or tuple(shape) != (0,):
        raise pickle.UnpicklingError(f"unexpected array reconstruction ({subtype}, {shape})")
    return _NUMPY_RECONSTRUCT(subtype, shape, dtype)


# Every global the official python batches reference (written by Python 2's cPickle at protocol
# 2: NumPy arrays are the only objects in them that are not dicts, lists, str or int); numpy 2
# names the module numpy._core.
_PICKLE_GLOBALS: Mapping[tuple[str, str], Callable] = {
    ("numpy.core.multiarray", "_reconstruct"): _empty_array,
    ("numpy._core.multiarray", "_reconstruct"): _empty_array,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
# What a malformed pickle can raise while loading (C unpickler, NumPy's __setstate__).
_UNPICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    KeyError,
    IndexError,
    OverflowError,
    MemoryError,
    struct.error,
)


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles what the official CIFAR python batches contain, and nothing else.

    A pickle runs code by naming a global (``os.system``, ``builtins.eval``, ...) and calling
    it; `find_class` resolves only the globals in `_PICKLE_GLOBALS`, so any other pickle fails
    at its first other global, before anything is called.
    """

    def find_class(self, module: str, name: str) -> Callable:
        allowed = _PICKLE_GLOBALS.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(
                f"the pickle references the forbidden global {module}.{name}; the official "
                "CIFAR batches reference only NumPy's array reconstruction "
                "(numpy.core.multiarray._reconstruct, numpy.ndarray, numpy.dtype). Not "
                "unpickled, nothing in it ran: this file was not made by the CIFAR authors"
            )
        return allowed


def _unpickle(files: Mapping[str, bytes], basename: str, layout: str) -> dict:
    """The dict pickled in the file ``basename`` (Python 2 ``str`` values come back as bytes)."""
    path = _require_path(files, basename, layout)
    try:
        batch = _BatchUnpickler(io.BytesIO(files[path]), encoding="bytes").load()
    except _UNPICKLE_ERRORS as e:
        raise PrepareError(f"{path}: {e}.") from e
    if not isinstance(batch, dict):
        raise PrepareError(f"{path}: a pickled {type(batch).__name__}, not a CIFAR batch dict.")
    return batch


def _read_python_cifar10(files: Mapping[str, bytes]) -> dict[str, SplitArrays]:
    layout = "cifar-10-python"
    meta = _unpickle(files, "batches.meta", layout)
    _check_names([n.decode() for n in meta[b"label_names"]], _label_names("cifar10"), layout)
    batches = {
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
    }
    splits = {}
    for split, names in batches.items():
        parts = [_unpickle(files, name, layout) for name in names]
        images = np.concatenate([_chw_rows_to_nhwc(p[b"data"], split) for p in parts])
        labels = np.concatenate([np.asarray(p[b"labels"], dtype=np.int64) for p in parts])
        splits[split] = SplitArrays(images, labels)
    return splits


def _read_python_cifar100(files: Mapping[str, bytes]) -> dict[str, SplitArrays]:
    layout = "cifar-100-python"
    meta = _unpickle(files, "meta", layout)
    cifar100 = datasets.get("cifar100")
    _check_names([n.decode() for n in meta[b"fine_label_names"]], cifar100.label_names, layout)
    coarse_names = [n.decode() for n in meta[b"coarse_label_names"]]
    _check_names(coarse_names, cifar100.coarse_label_names, layout)
    splits = {}
    for split in SPLITS:
        part = _unpickle(files, split, layout)
        splits[split] = SplitArrays(
            _chw_rows_to_nhwc(part[b"data"], split),
            np.asarray(part[b"fine_labels"], dtype=np.int64),
            np.asarray(part[b"coarse_labels"], dtype=np.int64),
        )
    return splits


def _parse_binary(data: bytes, num_label_bytes: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Records of ``num_label_bytes`` label bytes + 3072 CHW pixel bytes -> (images, labels)."""
    record = num_label_bytes + 3072
    if len(data) == 0 or len(data) % record:
        raise PrepareError(
            f"{what}: {len(data)} bytes is not a whole number of {record}-byte records."
        )
    table = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    labels = table[:, :num_label_bytes].astype(np.int64)
    return _chw_rows_to_nhwc(table[:, num_label_bytes:], what), labels


def _text_names(data: bytes) -> list[str]:
    return [line.strip() for line in data.decode().splitlines() if line.strip()]


def _read_binary_cifar10(files: Mapping[str, bytes]) -> dict[str, SplitArrays]:
    layout = "cifar-10-binary"
    names = _text_names(_require(files, "batches.meta.txt", layout))
    _check_names(names, _label_names("cifar10"), layout)
    batches = {
        "train": [f"data_batch_{i}.bin" for i in range(1, 6)],
        "test": ["test_batch.bin"],
    }
    splits = {}
    for split, names in batches.items():
        parts = [_parse_binary(_require(files, name, layout), 1, name) for name in names]
        images = np.concatenate([images for images, _ in parts])
        labels = np.concatenate([labels[:, 0] for _, labels in parts])
        splits[split] = SplitArrays(images, labels)
    return splits


def _read_binary_cifar100(files: Mapping[str, bytes]) -> dict[str, SplitArrays]:
    layout = "cifar-100-binary"
    fine_names = _text_names(_require(files, "fine_label_names.txt", layout))
    _check_names(fine_names, datasets.get("cifar100").label_names, layout)
    coarse_names = _text_names(_require(files, "coarse_label_names.txt", layout))
    _check_names(coarse_names, datasets.get("cifar100").coarse_label_names, layout)
    splits = {}
    for split in SPLITS:
        images, labels = _parse_binary(_require(files, f"{split}.bin", layout), 2, f"{split}.bin")
        splits[split] = SplitArrays(images, labels[:, 1], labels[:, 0])  # coarse byte first
    return splits


_IMAGE_FOLDER_HELP = (
    "an image-folder tree train/<class>/<image> and test/<class>/<image> (one folder per class)"
)


def _read_image_folder(
    files: Mapping[str, bytes], all_names: Sequence[str], dataset: str | None
) -> tuple[str, str, dict[str, SplitArrays]]:
    """Decode ``[root/]{train,test}/<class>/<file>``; returns (dataset, layout, splits).

    ``all_names`` lists every file of the source, read or not, for the error messages.
    """
    # (root, split, class, file name) -> bytes, for every path of that shape.
    entries: dict[tuple[tuple[str, ...], str, str, str], bytes] = {}
    for path, data in files.items():
        parts = PurePosixPath(path).parts
        if len(parts) >= 3 and parts[-3] in SPLITS:
            entries[(parts[:-3], parts[-3], parts[-2], parts[-1])] = data
    roots = {key[0] for key in entries}
    if not entries:
        raise PrepareError(
            "Unrecognised layout: found no CIFAR batch files and no train/<class>/<image> or "
            f"test/<class>/<image> paths. First files seen: {sorted(all_names)[:8]}. Supported: "
            f"cifar-10-python.tar.gz, cifar-10-binary.tar.gz (and the cifar-100 ones), or "
            f"{_IMAGE_FOLDER_HELP}."
        )
    if len(roots) > 1:
        shown = sorted("/".join(r) or "." for r in roots)
        raise PrepareError(f"Found image-folder trees under several roots {shown}; give just one.")

    classes = {split: sorted({k[2] for k in entries if k[1] == split}) for split in SPLITS}
    for split in SPLITS:
        if not classes[split]:
            raise PrepareError(f"The image-folder tree has no {split}/<class>/ folders.")
    if classes["train"] != classes["test"]:
        raise PrepareError(
            f"Class folders differ between train {classes['train']} and test {classes['test']}."
        )
    names = classes["train"]
    candidates = [dataset] if dataset else list(datasets.DATASETS)
    expected = {n: datasets.get(n).num_classes for n in candidates}
    matches = [name for name, count in expected.items() if count == len(names)]
    if not matches:
        wanted = " or ".join(f"{count} ({name})" for name, count in expected.items())
        raise PrepareError(f"Found {len(names)} class folders {names[:12]}, expected {wanted}.")
    dataset = matches[0]
    official = {n.lower(): i for i, n in enumerate(_label_names(dataset))}
    if {n.lower() for n in names} == set(official):
        label_of = {n: official[n.lower()] for n in names}
        layout = "image-folder tree, labels from the official class names"
    else:
        label_of = {n: i for i, n in enumerate(names)}
        layout = "image-folder tree, labels in sorted folder-name order (not the official names)"

    splits = {}
    for split in SPLITS:
        keys = sorted((k for k in entries if k[1] == split), key=lambda k: (label_of[k[2]], k[3]))
        images = np.empty((len(keys), *IMAGE_SHAPE), dtype=np.uint8)
        for i, key in enumerate(keys):
            images[i] = _decode_image(entries[key], "/".join((*key[0], *key[1:])))
        labels = np.array([label_of[k[2]] for k in keys], dtype=np.int64)
        coarse = fine_to_coarse()[labels] if dataset == "cifar100" else None
        splits[split] = SplitArrays(images, labels, coarse)
    return dataset, layout, splits


# What PIL raises for damaged image files (its plugins use all of these).
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)


def _decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode one image file to uint8 ``[32, 32, 3]``; it must already be 32x32 RGB.

    Size and mode come from the file's header (``Image.open`` is lazy); the pixels are decoded
    only for a 32x32 RGB image, so no file can make this allocate more than 3 KB of pixels.
    """
    try:
        with warnings.catch_warnings():
            # Huge images are refused below from their header, before any pixel is decoded.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError as e:
        raise PrepareError(f"{name}: not an image (PIL recognises no image format in it).") from e
    except Image.DecompressionBombError as e:
        raise PrepareError(f"{name}: refused, its header claims a huge image ({e}).") from e
    except _IMAGE_ERRORS as e:
        raise PrepareError(f"{name}: not a readable image ({e}).") from e
    with image:
        width, height = image.size
        if image.mode != "RGB" or (height, width) != IMAGE_SHAPE[:2]:
            raise PrepareError(
                f"{name}: a {width}x{height} {image.mode} image; every image must be 32x32 RGB."
            )
        try:
            image.load()
            return np.asarray(image)
        except _IMAGE_ERRORS as e:
            raise PrepareError(f"{name}: not a readable image ({e}).") from e


def read_source(path: str | os.PathLike, dataset: str | None = None) -> Source:
    """Reads a local CIFAR source (see the module docstring) into memory.

    Args:
      path: tarball, tar of an image-folder tree, or a directory holding either layout.
      dataset: "cifar10" or "cifar100"; None infers it from the source.

    Returns:
      The dataset name, a description of the layout, and uint8 NHWC ``train``/``test`` splits.

    Raises:
      PrepareError: missing path, unrecognised layout, wrong class folders, images that are
        not 32x32 RGB, a source of another dataset than ``dataset``, an archive that is
        truncated or corrupt or holds an oversized file, a pickle naming a forbidden global,
        or an official-format archive without the official number of examples.
    """
    _check_dataset_name(dataset)
    path = Path(path)
    if not path.exists():
        raise PrepareError(f"{path} does not exist.")
    try:
        source_files = archives.read_files(path, _file_limit, _TOTAL_LIMIT)
    except archives.ArchiveError as e:
        raise PrepareError(str(e)) from e
    files = source_files.contents
    if not files and not source_files.skipped:
        raise PrepareError(f"{path} contains no files.")

    readers: list[tuple[str, str, str, Callable[[Mapping[str, bytes]], dict]]] = [
        ("data_batch_1", "cifar10", "cifar-10-python", _read_python_cifar10),
        ("data_batch_1.bin", "cifar10", "cifar-10-binary", _read_binary_cifar10),
        ("fine_label_names.txt", "cifar100", "cifar-100-binary", _read_binary_cifar100),
    ]
    if _find(files, "meta") is not None and _find(files, "train") is not None:
        readers.append(("meta", "cifar100", "cifar-100-python", _read_python_cifar100))
    for marker, source_dataset, layout, reader in readers:
        if _find(files, marker) is None:
            continue
        if dataset is not None and dataset != source_dataset:
            raise PrepareError(f"{path} is {layout}, which holds {source_dataset}, not {dataset}.")
        try:
            splits = reader(files)
        except (KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
            raise PrepareError(f"{path} looks like {layout} but is malformed: {e!r}.") from e
        for split, arrays in splits.items():
            official = datasets.get(source_dataset).split_sizes[split]
            if len(arrays.images) != official:
                raise PrepareError(
                    f"{path} ({layout}) holds {len(arrays.images):,} {split} examples; the "
                    f"official release has {official:,}. It is incomplete or altered: download "
                    "the official archive again."
                )
        official_format = True
        break
    else:
        all_names = [*files, *source_files.skipped]
        source_dataset, layout, splits = _read_image_folder(files, all_names, dataset)
        official_format = False
    for split, arrays in splits.items():
        _validate(arrays.images, arrays.labels, datasets.get(source_dataset).num_classes, split)
    return Source(source_dataset, layout, splits, official_format)


def _check_dataset_name(dataset: str | None) -> None:
    if dataset is not None and dataset not in datasets.DATASETS:
        raise PrepareError(f"Unknown dataset {dataset!r}; known: {sorted(datasets.DATASETS)}.")


# --------------------------------------------------------------------------------------------
# Writing the TFDS dataset.


def _validate(images: np.ndarray, labels: np.ndarray, num_classes: int, split: str) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
        raise PrepareError(
            f"{split}: images must be uint8 [N, 32, 32, 3], got {images.dtype} {images.shape}."
        )
    if labels.shape != (len(images),):
        raise PrepareError(f"{split}: {labels.shape} labels for {len(images)} images.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise PrepareError(f"{split}: labels must lie in 0..{num_classes - 1}.")


def _encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _builder_class(dataset: str) -> type:
    """The stock TFDS builder of ``dataset`` with its data read from memory instead of the web.

    Overriding ``_split_generators`` is TFDS's extension point for builder authors (every TFDS
    dataset implements it), though not public API for users. The public alternatives in TFDS
    4.9.10 were tried and do not give the stock dataset:

    - ``tfds.dataset_builders.store_as_tfds_dataset`` / ``AdhocBuilder``: its
      ``_split_generators`` tests ``isinstance(data, tf.data.Dataset)``, which imports
      TensorFlow (``ModuleNotFoundError`` without it), and its ``_info`` sets no
      ``supervised_keys`` (the stock ``("image", "label")`` would be lost), nor the stock
      description, citation and homepage.
    - ``tfds.core.SequentialWriter`` writes TFRecord only, with ``tf.io.TFRecordWriter``
      (TensorFlow again), and in the given order rather than the stock builder's shuffle by
      example key.
    - ``tfds.folder_dataset.write_metadata`` only describes shards that already exist; writing
      array_record shards in the stock order ourselves would re-implement TFDS's writer.
    """
    stock = tfds.builder_cls(dataset)

    class LocalCifar(stock, skip_registration=True):
        name = dataset  # same name, version, features and splits as the stock builder

        def __init__(self, *, splits: Mapping[str, SplitArrays], **kwargs):
            self._local_splits = splits
            super().__init__(**kwargs)

        def _split_generators(self, dl_manager):
            del dl_manager  # never download anything
            facts = datasets.get(dataset)
            self.info.features["label"].names = list(facts.label_names)
            if facts.coarse_label_names is not None:
                self.info.features["coarse_label"].names = list(facts.coarse_label_names)
            return {
                split: self._generate_local(split, arrays)
                for split, arrays in self._local_splits.items()
            }

        def _generate_local(self, split: str, arrays: SplitArrays) -> Iterator[tuple[int, dict]]:
            # Keys and ids as the stock generator: the running index within the split.
            for index in range(len(arrays.images)):
                record = {
                    "id": f"{split}_{index:05d}",
                    "image": _encode_png(arrays.images[index]),
                    "label": int(arrays.labels[index]),
                }
                if arrays.coarse_labels is not None:
                    record["coarse_label"] = int(arrays.coarse_labels[index])
                yield index, record

    return LocalCifar


_STAGING_PREFIX = ".jresnet_prepare_"
_LOCK_FILE = "lock"
# A live run locks its work directory microseconds after creating it; one without a lock file
# this old was left by a run killed in between.
_UNLOCKED_GRACE_S = 60.0


@contextlib.contextmanager
def _data_dir(data_dir: Path) -> Iterator[None]:
    """Creates ``data_dir`` if needed; removes it again if it stays empty after a failure."""
    created = not data_dir.exists()
    _create_data_dir(data_dir)
    try:
        yield
    except BaseException:
        if created:
            with contextlib.suppress(OSError):  # not empty: a concurrent run wrote there
                data_dir.rmdir()
        raise


def _create_data_dir(data_dir: Path) -> None:
    """Creates ``data_dir`` (and its parents) or explains why it cannot be used."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        file = next(p for p in (data_dir, *data_dir.parents) if p.exists() and not p.is_dir())
        raise PrepareError(
            f"The data directory {data_dir} cannot be created: {file} is not a directory but "
            "a file. Choose another --data_dir."
        ) from e
    except OSError as e:
        raise PrepareError(
            f"cannot create the data directory {data_dir} ({e.strerror}). Choose another "
            "--data_dir or fix its permissions."
        ) from e


@contextlib.contextmanager
def _staging_dir(data_dir: Path, log: Callable[[str], None]) -> Iterator[Path]:
    """A new hidden work directory in ``data_dir`` for one run; removed when the run ends.

    The run holds an ``flock`` on the directory's ``lock`` file for as long as it lives; the
    kernel drops the lock when the process dies, even by SIGKILL. So the work directories of
    killed runs, which are removed here first (with a message), are told apart from those of
    runs still going, which are left alone. The lock is taken under a temporary name and then
    renamed into place, so no run ever sees a live run's ``lock`` unlocked.
    """
    _remove_stale_staging(data_dir, log)
    try:
        staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=data_dir))
    except OSError as e:
        raise PrepareError(
            f"cannot write in the data directory {data_dir} ({e.strerror}). Choose another "
            "--data_dir or fix its permissions."
        ) from e
    with open(staging / f"{_LOCK_FILE}.new", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.rename(staging / f"{_LOCK_FILE}.new", staging / _LOCK_FILE)
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _remove_stale_staging(data_dir: Path, log: Callable[[str], None]) -> None:
    """Removes the work directories that killed runs left in ``data_dir``; see `_staging_dir`."""
    for candidate in sorted(data_dir.glob(f"{_STAGING_PREFIX}*")):
        if not candidate.is_dir():
            continue
        try:
            lock = open(candidate / _LOCK_FILE)
        except FileNotFoundError:
            if time.time() - candidate.stat().st_mtime > _UNLOCKED_GRACE_S:
                _remove_leftover(candidate, log)
            continue
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # another prepare is writing there right now
            _remove_leftover(candidate, log)


def _remove_leftover(path: Path, log: Callable[[str], None]) -> None:
    try:
        shutil.rmtree(path)
    except OSError as e:
        log(f"warning: could not remove {path}, left by an interrupted run: {e}")
    else:
        log(f"Removed {path}, the unfinished work of an interrupted run.")


def _warn_foreign_leftovers(data_dir: Path, dataset: str, log: Callable[[str], None]) -> None:
    """Names leftovers of runs that had no lock: TFDS's own, or jresnet's before it had one."""
    found = [
        *sorted(data_dir.glob(".jresnet_overwrite_*")),
        *sorted((data_dir / dataset).glob("incomplete.*")),
    ]
    for path in found:
        log(
            f"warning: {path} looks left over by an interrupted dataset preparation; delete it "
            "unless another program is preparing a dataset in this directory right now."
        )


def _target(data_dir: Path, dataset: str) -> Path:
    """Where the dataset's files go: ``data_dir/<dataset>/<version>``."""
    return data_dir / dataset / str(tfds.builder_cls(dataset).VERSION)


def _refuse_existing(target: Path, dataset: str, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise PrepareError(
            f"{dataset} {target.name} already exists at {target}; "
            "pass --overwrite (overwrite=True) to replace it."
        )


def _write_staged(
    staging: Path,
    data_dir: Path,
    dataset: str,
    splits: Mapping[str, SplitArrays],
    overwrite: bool,
) -> Path:
    """Generates the dataset in ``staging``, then moves it into ``data_dir``; returns its path."""
    target = _target(data_dir, dataset)
    _refuse_existing(target, dataset, overwrite)
    builder = _builder_class(dataset)(splits=splits, data_dir=os.fspath(staging))
    try:
        builder.download_and_prepare(
            download_dir=os.fspath(staging / "downloads"),  # never used: nothing is downloaded
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(try_download_gcs=False),
        )
        _refuse_existing(target, dataset, overwrite)  # another run may have finished meanwhile
        target.parent.mkdir(exist_ok=True)
        if target.exists():
            target.rename(staging / "replaced")  # removed with the work directory
        Path(builder.data_dir).rename(target)
    except OSError as e:  # the directory was writable: a full disk, a quota, an I/O error
        raise PrepareError(f"writing {dataset} to {data_dir} failed: {e}") from e
    return target


def _write(
    data_dir: str | os.PathLike,
    dataset: str,
    splits: Mapping[str, SplitArrays],
    overwrite: bool,
    log: Callable[[str], None],
) -> Path:
    """Writes ``splits`` as the TFDS dataset ``dataset`` in ``data_dir``; returns its directory."""
    data_dir = Path(data_dir)
    with _data_dir(data_dir), _staging_dir(data_dir, log) as staging:
        return _write_staged(staging, data_dir, dataset, splits, overwrite)


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
    ``array_record`` format exactly as :func:`prepare` would, readable with
    ``tfds.data_source(dataset, data_dir=data_dir)``. Label names are the official ones; for
    cifar100 the ``coarse_label`` is derived from the fine label.

    Args:
      data_dir: TFDS data directory (created if missing).
      dataset: "cifar10" or "cifar100".
      splits: {split name: (images uint8 ``[N, 32, 32, 3]`` RGB NHWC, labels int ``[N]``)}, e.g.
        ``{"train": ..., "test": ...}``.
      overwrite: replace an existing dataset of the same name and version in ``data_dir``.

    Raises:
      PrepareError: bad shapes, dtypes, labels or split names, or the dataset already exists.
    """
    if dataset not in datasets.DATASETS:
        raise PrepareError(f"Unknown dataset {dataset!r}; known: {sorted(datasets.DATASETS)}.")
    if not splits:
        raise PrepareError("No splits given.")
    arrays = {}
    for split, (images, labels) in splits.items():
        if not _SPLIT_NAME.match(split):
            raise PrepareError(f"Bad split name {split!r}: use lowercase letters, digits and _.")
        images = np.asarray(images)
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iu":
            raise PrepareError(f"{split}: labels must be integers, got {labels.dtype}.")
        labels = labels.astype(np.int64)
        _validate(images, labels, datasets.get(dataset).num_classes, split)
        coarse = fine_to_coarse()[labels] if dataset == "cifar100" else None
        arrays[split] = SplitArrays(images, labels, coarse)
    _write(data_dir, dataset, arrays, overwrite, log=lambda _: None)


def prepare(
    source: str | os.PathLike,
    data_dir: str | os.PathLike,
    dataset: str | None = None,
    *,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Reads a local CIFAR source and writes it as the standard TFDS dataset.

    Args:
      source: see the module docstring for the accepted layouts.
      data_dir: TFDS data directory to write into (created if missing).
      dataset: "cifar10" or "cifar100"; None infers it from the source.
      overwrite: replace an existing dataset of the same name and version.
      log: receives one line of progress at a time.

    Returns:
      The dataset's version directory, ``data_dir/<dataset>/<version>``.
    """
    start = time.perf_counter()
    _check_dataset_name(dataset)
    data_dir = Path(data_dir)
    # An unusable destination fails before the source is read.
    with _data_dir(data_dir), _staging_dir(data_dir, log) as staging:
        if dataset is not None:
            _refuse_existing(_target(data_dir, dataset), dataset, overwrite)
        log(f"Reading {source} ...")
        read = read_source(source, dataset)
        counts = ", ".join(f"{s}: {len(a.images)}" for s, a in read.splits.items())
        seconds = time.perf_counter() - start
        log(f"Read {read.dataset} ({read.layout}) in {seconds:.1f}s: {counts}.")
        if not read.official:
            _warn_other_sizes(read, log)
        _warn_foreign_leftovers(data_dir, read.dataset, log)
        written = _write_staged(staging, data_dir, read.dataset, read.splits, overwrite)
    log(f"Wrote {read.dataset} in array_record format to {written} ({counts}).")
    log(f"Done in {time.perf_counter() - start:.1f}s.")
    return written


def _warn_other_sizes(read: Source, log: Callable[[str], None]) -> None:
    for split, arrays in read.splits.items():
        official = datasets.get(read.dataset).split_sizes[split]
        if len(arrays.images) != official:
            log(
                f"warning: {len(arrays.images):,} {split} images; the official {read.dataset} "
                f"{split} split has {official:,}. Fine for a subset, but this is not the "
                "official dataset."
            )


def download_and_prepare(
    dataset: str,
    data_dir: str | os.PathLike,
    *,
    timeout_s: float = 30.0,
    log: Callable[[str], None] = print,
) -> Path:
    """Downloads the official python-format archive and `prepare`s it, without TensorFlow.

    TFDS's own cifar10 builder needs TensorFlow to prepare (see the module
    docstring); this is the TF-free equivalent for machines with internet.
    Network failures raise ``OSError`` (``urllib.error.URLError``) within
    ``timeout_s`` per blocking operation; a corrupt download raises `PrepareError`.
    """
    url, md5 = datasets.get(dataset).url, datasets.get(dataset).md5
    with tempfile.TemporaryDirectory(prefix="jresnet-download-") as tmp:
        path = Path(tmp) / url.rsplit("/", 1)[1]
        log(f"Downloading {url} ...")
        digest = hashlib.md5()
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(path, "wb") as f:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                f.write(chunk)
        if digest.hexdigest() != md5:
            raise PrepareError(f"{url} downloaded with MD5 {digest.hexdigest()}, expected {md5}")
        return prepare(path, data_dir, dataset, log=log)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m jresnet.prepare_data",
        description=(
            "Write CIFAR-10/100 as the standard TFDS dataset (array_record) from a local copy, "
            "without TensorFlow or network access."
        ),
    )
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="PATH",
        help="cifar-10-python.tar.gz, cifar-10-binary.tar.gz (or the cifar-100 ones), or an "
        "image-folder tree train/<class>/*, test/<class>/* (a directory or a .tar.gz of one).",
    )
    parser.add_argument("--data_dir", required=True, help="TFDS data directory to write into.")
    parser.add_argument(
        "--dataset",
        choices=sorted(datasets.DATASETS),
        default=None,
        help="default: from the source",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    args = parser.parse_args(argv)  # bad flags exit with argparse's status 2

    def job() -> None:
        prepare(args.source, args.data_dir, args.dataset, overwrite=args.overwrite)

    # PrepareError -> "error: ..." and errors.EXIT_USAGE (2); a bug keeps its traceback.
    return errors.run_cli(job)


if __name__ == "__main__":
    raise SystemExit(main())
