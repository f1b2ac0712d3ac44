"""Image-folder trees ``[root/]train/<class>/<image>`` and ``[root/]test/<class>/<image>``.

Every image must be 32x32 RGB; any format PIL reads is accepted (JPEGs are decoded once, here).
Class folders named after the official classes get the official labels; otherwise labels
follow the sorted folder names (for CIFAR-10 the official order is alphabetical, so both
agree). An image's size and mode are read from its header before its pixels are decoded.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath

import numpy as np
from PIL import Image

from jresnet import datasets
from jresnet.cifar_format import IMAGE_SHAPE, SPLITS, SplitArrays, fine_to_coarse, label_names
from jresnet.errors import DataError

IMAGE_FOLDER_HELP = (
    "an image-folder tree train/<class>/<image> and test/<class>/<image> (one folder per class)"
)


def read_image_folder(
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
        raise DataError(
            "Unrecognised layout: found no CIFAR batch files and no train/<class>/<image> or "
            f"test/<class>/<image> paths. First files seen: {sorted(all_names)[:8]}. Supported: "
            f"cifar-10-python.tar.gz, cifar-10-binary.tar.gz (and the cifar-100 ones), or "
            f"{IMAGE_FOLDER_HELP}."
        )
    if len(roots) > 1:
        shown = sorted("/".join(r) or "." for r in roots)
        raise DataError(f"Found image-folder trees under several roots {shown}; give just one.")

    classes = {split: sorted({k[2] for k in entries if k[1] == split}) for split in SPLITS}
    for split in SPLITS:
        if not classes[split]:
            raise DataError(f"The image-folder tree has no {split}/<class>/ folders.")
    if classes["train"] != classes["test"]:
        raise DataError(
            f"Class folders differ between train {classes['train']} and test {classes['test']}."
        )
    names = classes["train"]
    candidates = [dataset] if dataset else list(datasets.DATASETS)
    expected = {n: datasets.get(n).num_classes for n in candidates}
    matches = [name for name, count in expected.items() if count == len(names)]
    if not matches:
        wanted = " or ".join(f"{count} ({name})" for name, count in expected.items())
        raise DataError(f"Found {len(names)} class folders {names[:12]}, expected {wanted}.")
    dataset = matches[0]
    official = {n.lower(): i for i, n in enumerate(label_names(dataset))}
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
            images[i] = decode_image(entries[key], "/".join((*key[0], *key[1:])))
        labels = np.array([label_of[k[2]] for k in keys], dtype=np.int64)
        coarse = fine_to_coarse()[labels] if dataset == "cifar100" else None
        splits[split] = SplitArrays(images, labels, coarse)
    return dataset, layout, splits


# What PIL raises for damaged image files (its plugins use all of these).
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)


def decode_image(data: bytes, name: str) -> np.ndarray:
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
        raise DataError(f"{name}: not an image (PIL recognises no image format in it).") from e
    except Image.DecompressionBombError as e:
        raise DataError(f"{name}: refused, its header claims a huge image ({e}).") from e
    except _IMAGE_ERRORS as e:
        raise DataError(f"{name}: not a readable image ({e}).") from e
    with image:
        width, height = image.size
        if image.mode != "RGB" or (height, width) != IMAGE_SHAPE[:2]:
            raise DataError(
                f"{name}: a {width}x{height} {image.mode} image; every image must be 32x32 RGB."
            )
        try:
            image.load()
            return np.asarray(image)
        except _IMAGE_ERRORS as e:
            raise DataError(f"{name}: not a readable image ({e}).") from e
