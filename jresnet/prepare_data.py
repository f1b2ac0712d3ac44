"""Prepare CIFAR-10/100 as the standard TFDS dataset from a local copy, offline, without TensorFlow.

Usage::

    python -m jresnet.prepare_data --from PATH --data_dir DIR [--dataset cifar10] [--overwrite]

``PATH`` is one of

- ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``: the pickled batches of the official
  release. They are unpickled with ``pickle.load(f, encoding="bytes")``; unpickling runs code
  chosen by whoever made the file, so only point this at a tarball you trust (the official one).
- ``cifar-10-binary.tar.gz`` / ``cifar-100-binary.tar.gz``: records of label byte(s) followed by
  3072 bytes of CHW pixels.
- an image-folder tree ``train/<class>/*`` and ``test/<class>/*`` (a directory, or a ``.tar`` /
  ``.tar.gz`` of one, possibly under one top-level folder). Every image must be 32x32 RGB; any
  format PIL reads is accepted (JPEGs are decoded once, here, then stored losslessly). Class
  folders named after the official classes get the official labels; otherwise labels follow the
  sorted folder names (for CIFAR-10 the official order is alphabetical, so both agree).

Any of these may also be given as an already extracted directory.

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
  turned off (``try_download_gcs=False``), and the download manager's scratch directory is a
  temporary one, so nothing but the dataset lands in ``DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import os
import pickle
import re
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jresnet.errors import JresnetError

IMAGE_SHAPE = (32, 32, 3)
SPLITS = ("train", "test")

CIFAR10_LABELS = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

# CIFAR-100 superclasses (coarse labels, in official order) and their five classes each.
CIFAR100_SUPERCLASSES: Mapping[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
CIFAR100_COARSE_LABELS = tuple(CIFAR100_SUPERCLASSES)
# The official fine labels are the 100 class names in alphabetical order.
CIFAR100_LABELS = tuple(sorted(n for names in CIFAR100_SUPERCLASSES.values() for n in names))

LABEL_NAMES: Mapping[str, tuple[str, ...]] = {
    "cifar10": CIFAR10_LABELS,
    "cifar100": CIFAR100_LABELS,
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
    """A dataset read from a local source: which dataset, what layout, and its splits."""

    dataset: str
    layout: str
    splits: dict[str, SplitArrays]


def fine_to_coarse() -> np.ndarray:
    """CIFAR-100's superclass of every fine label: int64 ``[100]`` with values in ``0..19``."""
    lookup = {fine: c for c, fines in enumerate(CIFAR100_SUPERCLASSES.values()) for fine in fines}
    return np.array([lookup[name] for name in CIFAR100_LABELS], dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Reading sources.


def _read_files(path: Path) -> dict[str, bytes]:
    """All regular files under a directory or in a tar archive: {posix relative path: bytes}."""
    files: dict[str, bytes] = {}
    if path.is_dir():
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not _is_junk(d))
            for name in names:
                if not _is_junk(name):
                    full = Path(root) / name
                    files[full.relative_to(path).as_posix()] = full.read_bytes()
        return files
    if not tarfile.is_tarfile(path):
        raise PrepareError(
            f"{path} is neither a directory nor a tar archive (.tar, .tar.gz); expected "
            "cifar-10-python.tar.gz, cifar-10-binary.tar.gz or an image-folder tree."
        )
    # Members are read into memory, never extracted, so member paths cannot escape anywhere.
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            name = PurePosixPath(member.name)
            if not member.isfile() or any(_is_junk(part) for part in name.parts):
                continue
            fileobj = tar.extractfile(member)
            assert fileobj is not None  # regular files always have contents
            files[name.as_posix().removeprefix("./")] = fileobj.read()
    return files


def _is_junk(name: str) -> bool:
    """Hidden files and macOS metadata (``.DS_Store``, ``._x.jpg``, ``__MACOSX``)."""
    return (name.startswith(".") and name not in (".", "..")) or name == "__MACOSX"


def _find(files: Mapping[str, bytes], basename: str) -> str | None:
    """The one path whose file name is ``basename``; None if absent; error if ambiguous."""
    hits = [p for p in files if PurePosixPath(p).name == basename]
    if len(hits) > 1:
        raise PrepareError(f"Found {len(hits)} files named {basename!r}: {sorted(hits)[:5]}.")
    return hits[0] if hits else None


def _require(files: Mapping[str, bytes], basename: str, layout: str) -> bytes:
    path = _find(files, basename)
    if path is None:
        raise PrepareError(f"The source looks like {layout} but has no {basename!r}.")
    return files[path]


def _chw_rows_to_nhwc(rows: np.ndarray, what: str) -> np.ndarray:
    """uint8 ``[N, 3072]`` rows (R plane, G plane, B plane; row-major) -> ``[N, 32, 32, 3]``."""
    rows = np.asarray(rows)
    if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 3072:
        raise PrepareError(
            f"{what}: expected uint8 [N, 3072] pixel rows, got {rows.dtype} {rows.shape}."
        )
    return np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _check_names(found: Sequence[str], expected: Sequence[str], layout: str) -> None:
    if tuple(found) != tuple(expected):
        raise PrepareError(
            f"The label names in the {layout} source {list(found)[:12]} are not the official ones "
            f"{list(expected)[:12]}: this does not look like the official release."
        )


def _unpickle(data: bytes) -> dict:
    # The CIFAR python release is a set of pickled dicts of NumPy arrays, bytes and lists; see
    # the module docstring on trusting the tarball.
    return pickle.loads(data, encoding="bytes")


def _read_python_cifar10(files: Mapping[str, bytes]) -> dict[str, SplitArrays]:
    layout = "cifar-10-python"
    meta = _unpickle(_require(files, "batches.meta", layout))
    _check_names([n.decode() for n in meta[b"label_names"]], CIFAR10_LABELS, layout)
    batches = {
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
    }
    splits = {}
    for split, names in batches.items():
        parts = [_unpickle(_require(files, name, layout)) for name in names]
        images = np.concatenate([_chw_rows_to_nhwc(p[b"data"], split) for p in parts])
        labels = np.concatenate([np.asarray(p[b"labels"], dtype=np.int64) for p in parts])
        splits[split] = SplitArrays(images, labels)
    return splits


def _read_python_cifar100(files: Mapping[str, bytes]) -> dict[str, SplitArrays]:
    layout = "cifar-100-python"
    meta = _unpickle(_require(files, "meta", layout))
    _check_names([n.decode() for n in meta[b"fine_label_names"]], CIFAR100_LABELS, layout)
    _check_names([n.decode() for n in meta[b"coarse_label_names"]], CIFAR100_COARSE_LABELS, layout)
    splits = {}
    for split in SPLITS:
        part = _unpickle(_require(files, split, layout))
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
    _check_names(_text_names(_require(files, "batches.meta.txt", layout)), CIFAR10_LABELS, layout)
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
    _check_names(fine_names, CIFAR100_LABELS, layout)
    coarse_names = _text_names(_require(files, "coarse_label_names.txt", layout))
    _check_names(coarse_names, CIFAR100_COARSE_LABELS, layout)
    splits = {}
    for split in SPLITS:
        images, labels = _parse_binary(_require(files, f"{split}.bin", layout), 2, f"{split}.bin")
        splits[split] = SplitArrays(images, labels[:, 1], labels[:, 0])  # coarse byte first
    return splits


_IMAGE_FOLDER_HELP = (
    "an image-folder tree train/<class>/<image> and test/<class>/<image> (one folder per class)"
)


def _read_image_folder(
    files: Mapping[str, bytes], dataset: str | None
) -> tuple[str, str, dict[str, SplitArrays]]:
    """Decode ``[root/]{train,test}/<class>/<file>``; returns (dataset, layout, splits)."""
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
            f"test/<class>/<image> paths. First files seen: {sorted(files)[:8]}. Supported: "
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
    expected = {n: len(LABEL_NAMES[n]) for n in ([dataset] if dataset else list(LABEL_NAMES))}
    matches = [name for name, count in expected.items() if count == len(names)]
    if not matches:
        wanted = " or ".join(f"{count} ({name})" for name, count in expected.items())
        raise PrepareError(f"Found {len(names)} class folders {names[:12]}, expected {wanted}.")
    dataset = matches[0]
    official = {n.lower(): i for i, n in enumerate(LABEL_NAMES[dataset])}
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


def _decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode one image file to uint8 ``[32, 32, 3]``; it must already be 32x32 RGB."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode, size = image.mode, image.size
            pixels = np.asarray(image)
    except Exception as e:  # PIL raises several types for unreadable files.
        raise PrepareError(f"{name}: not a readable image ({e}).") from e
    if mode != "RGB" or size != IMAGE_SHAPE[1::-1]:
        raise PrepareError(
            f"{name}: a {size[0]}x{size[1]} {mode} image; every image must be 32x32 RGB."
        )
    return pixels


def read_source(path: str | os.PathLike, dataset: str | None = None) -> Source:
    """Reads a local CIFAR source (see the module docstring) into memory.

    Args:
      path: tarball, tar of an image-folder tree, or a directory holding either layout.
      dataset: "cifar10" or "cifar100"; None infers it from the source.

    Returns:
      The dataset name, a description of the layout, and uint8 NHWC ``train``/``test`` splits.

    Raises:
      PrepareError: missing path, unrecognised layout, wrong class folders, images that are
        not 32x32 RGB, or a source of another dataset than ``dataset``.
    """
    if dataset is not None and dataset not in LABEL_NAMES:
        raise PrepareError(f"Unknown dataset {dataset!r}; known: {sorted(LABEL_NAMES)}.")
    path = Path(path)
    if not path.exists():
        raise PrepareError(f"{path} does not exist.")
    files = _read_files(path)
    if not files:
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
        except (KeyError, TypeError, AttributeError, EOFError, pickle.UnpicklingError) as e:
            raise PrepareError(f"{path} looks like {layout} but is malformed: {e!r}.") from e
        break
    else:
        source_dataset, layout, splits = _read_image_folder(files, dataset)
    for split, arrays in splits.items():
        _validate(arrays.images, arrays.labels, len(LABEL_NAMES[source_dataset]), split)
    return Source(source_dataset, layout, splits)


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
    """The stock TFDS builder of ``dataset`` with its data read from memory instead of the web."""
    stock = tfds.builder_cls(dataset)

    class LocalCifar(stock, skip_registration=True):
        name = dataset  # same name, version, features and splits as the stock builder

        def __init__(self, *, splits: Mapping[str, SplitArrays], **kwargs):
            self._local_splits = splits
            super().__init__(**kwargs)

        def _split_generators(self, dl_manager):
            del dl_manager  # never download anything
            self.info.features["label"].names = list(LABEL_NAMES[dataset])
            if dataset == "cifar100":
                self.info.features["coarse_label"].names = list(CIFAR100_COARSE_LABELS)
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


def _generate(builder: tfds.core.DatasetBuilder) -> None:
    """Runs the builder's generation, offline, with a throwaway download directory."""
    with tempfile.TemporaryDirectory(prefix="jresnet_prepare_") as scratch:
        builder.download_and_prepare(
            download_dir=scratch,
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(try_download_gcs=False),
        )


def _write(
    data_dir: str | os.PathLike, dataset: str, splits: Mapping[str, SplitArrays], overwrite: bool
) -> Path:
    """Writes ``splits`` as the TFDS dataset ``dataset`` in ``data_dir``; returns its directory."""
    builder_cls = _builder_class(dataset)
    data_dir = Path(data_dir)
    builder = builder_cls(splits=splits, data_dir=os.fspath(data_dir))
    target = Path(builder.data_dir)
    if not builder.is_prepared():
        _generate(builder)  # TFDS writes to an incomplete.* directory, then renames it
        return target
    if not overwrite:
        raise PrepareError(
            f"{dataset} {builder.version} already exists at {target}; "
            "pass --overwrite (overwrite=True) to replace it."
        )
    # Build the replacement beside the old one, then swap the two directories.
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".jresnet_overwrite_") as staging:
        fresh = builder_cls(splits=splits, data_dir=staging)
        _generate(fresh)
        target.rename(Path(staging) / "old")
        Path(fresh.data_dir).rename(target)
    return target


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
    if dataset not in LABEL_NAMES:
        raise PrepareError(f"Unknown dataset {dataset!r}; known: {sorted(LABEL_NAMES)}.")
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
        _validate(images, labels, len(LABEL_NAMES[dataset]), split)
        coarse = fine_to_coarse()[labels] if dataset == "cifar100" else None
        arrays[split] = SplitArrays(images, labels, coarse)
    _write(data_dir, dataset, arrays, overwrite)


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
    log(f"Reading {source} ...")
    read = read_source(source, dataset)
    counts = ", ".join(f"{s}: {len(a.images)}" for s, a in read.splits.items())
    log(f"Read {read.dataset} ({read.layout}) in {time.perf_counter() - start:.1f}s: {counts}.")
    written = _write(data_dir, read.dataset, read.splits, overwrite)
    log(f"Wrote {read.dataset} in array_record format to {written} ({counts}).")
    log(f"Done in {time.perf_counter() - start:.1f}s.")
    return written


# The official python-format archives and their MD5 sums (from the CIFAR page).
DOWNLOADS = {
    "cifar10": (
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
    ),
    "cifar100": (
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
    ),
}


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
    url, md5 = DOWNLOADS[dataset]
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
        "--dataset", choices=sorted(LABEL_NAMES), default=None, help="default: from the source"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    args = parser.parse_args(argv)
    try:
        prepare(args.source, args.data_dir, args.dataset, overwrite=args.overwrite)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
