"""Class probabilities for images, in Python and on the command line.

    from jresnet.predict import predict
    model, variables = jresnet.pretrained.load("cifar10_resnet20")
    probabilities = predict(model, variables, images)  # uint8 [N, 32, 32, 3] -> [N, 10]

Command line (prints the top 5 classes of each image with CIFAR-10/100 names)::

    python -m jresnet.predict WORKDIR_OR_NAME img1.png img2.jpg ... [--top 5]

``WORKDIR_OR_NAME`` is any weights source `jresnet.weights.load` resolves: a jresnet
work directory (trained or converted; its saved config says the dataset and
normalisation), a published weights name (`jresnet.pretrained`) or a PyTorch or
safetensors file. Images that are not 32x32 RGB are converted to RGB,
center-cropped to a square and resized to 32x32 (bicubic, antialiased), and the
output says so for each one. CIFAR models only know 32x32 thumbnails of their
classes, so expect little from photos.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jresnet import datasets, errors, models, weights
from jresnet.errors import ConfigError, ImageError

IMAGE_SIZE = 32
# Larger images are refused before decoding (PIL's own bomb limit is twice its default
# MAX_IMAGE_PIXELS, about 179 million pixels, and raises a traceback-shaped error).
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
_TOO_LARGE = (
    f"predict reads images of at most {MAX_IMAGE_PIXELS:,} pixels (the model sees 32x32): "
    "shrink it first"
)
_EXIF_ORIENTATION = 0x0112


def _mean_std(normalization: str | Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(normalization, str):
        table = datasets.NORMALIZATIONS
        if normalization not in table:
            raise ConfigError(f"unknown normalization {normalization!r}; known: {sorted(table)}")
        mean, std = table[normalization]
    else:
        mean, std = normalization
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    if mean.shape != (3,) or std.shape != (3,):
        raise ConfigError(f"normalization must be a name or (mean[3], std[3]), got {mean}, {std}")
    return mean, std


@functools.partial(jax.jit, static_argnums=0)
def _probabilities(
    model: models.ResNet, variables: Any, images: jax.Array, mean: jax.Array, std: jax.Array
) -> jax.Array:
    """Softmax of the eval-mode logits of uint8 NHWC images: ToTensor, Normalize, model."""
    x = (images.astype(jnp.float32) / 255.0 - mean) / std
    return jax.nn.softmax(model.apply(variables, x, train=False), axis=-1)


def predict(
    model: models.ResNet,
    variables: Mapping[str, Any],
    images: np.ndarray,
    normalization: str | Sequence[Sequence[float]] | None = None,
    batch_size: int = 500,
) -> np.ndarray:
    """Class probabilities of uint8 images, in eval mode (BatchNorm running statistics).

    Args:
      model: a `models.ResNet` (as `jresnet.pretrained.load` and
        `jresnet.checkpoint.load_model` return it, with its ``normalization``).
      variables: its ``{"params", "batch_stats"}``.
      images: uint8 ``[N, 32, 32, 3]``, RGB, NHWC, 0..255.
      normalization: how the model's inputs were normalised: a name ("cifar",
        "imagenet", "cifar100") or ``(mean, std)`` per channel for pixels in [0, 1];
        default: ``model.normalization`` (set by `jresnet.pretrained.load`,
        `jresnet.checkpoint.load_model` and `models.from_config`).
      batch_size: images per forward pass (bounds memory).

    Returns:
      float32 ``[N, num_classes]``, each row summing to 1.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ImageError(
            f"expected uint8 images (0..255), got {images.dtype}; for already normalised "
            "float inputs call model.apply(variables, x, train=False) directly"
        )
    if images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ImageError(f"expected images of shape [N, 32, 32, 3] (NHWC), got {images.shape}")
    if normalization is None:
        normalization = getattr(model, "normalization", None)
        if normalization is None:
            raise ImageError(
                "pass normalization= ('cifar', 'imagenet', ...): this model does not say how "
                "its inputs were normalised"
            )
    mean, std = _mean_std(normalization)

    out = [
        np.asarray(_probabilities(model, variables, images[start : start + batch_size], mean, std))
        for start in range(0, len(images), batch_size)
    ]
    if not out:
        return np.zeros((0, model.num_classes), np.float32)
    return np.concatenate(out)


def _to_8_bit(image: Any, path: str) -> tuple[Any, str]:
    """A mode ``I;16*``, ``I`` or ``F`` image as mode ``L``, and a note on the scale assumed.

    ``I;16`` images are 16-bit (0..65535, divided by 257). ``I`` and ``F`` say nothing of
    their range, so it is read from the values: at most 1.0 (``F`` only) means 0..1, at most
    255 means 8-bit, at most 65535 means 16-bit; anything else is refused. (PIL's own
    conversion clips these modes at 255, so a 16-bit image became all white.)
    """
    from PIL import Image

    values = np.asarray(image, dtype=np.float32)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode.startswith("I;16"):
        scale, what = 65535.0, "16-bit"
    elif not (math.isfinite(low) and math.isfinite(high)) or low < 0 or high > 65535:
        raise ImageError(
            f"{path}: a mode-{image.mode} image with values from {low:g} to {high:g}, outside "
            "0..65535 (16 bits): save it as an 8- or 16-bit image"
        )
    elif image.mode == "F" and high <= 1.0:
        scale, what = 1.0, "0..1"
    elif high <= 255:
        scale, what = 255.0, "8-bit"
    else:
        scale, what = 65535.0, "16-bit"
    gray = np.round(values * (255.0 / scale)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(gray, "L"), f"read mode {image.mode} as {what} values"


def read_image(path: str) -> tuple[np.ndarray, list[str]]:
    """``(uint8 [32, 32, 3], notes)``: the image as the model sees it, and what was changed.

    Turned upright per its EXIF orientation; 16-bit and float grayscale scaled to 8 bits
    (`_to_8_bit`); images above `MAX_IMAGE_PIXELS` pixels are refused before they are
    decoded, which bounds memory (a few bytes per pixel, times a few copies).
    Raises `ImageError` for a file that can't be read as an image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            width, height = opened.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageError(f"{path} is {width}x{height} pixels; {_TOO_LARGE}")
            opened.load()
            image = opened
    except Image.DecompressionBombError as e:  # so large that PIL refuses to open it
        raise ImageError(f"{path}: {str(e).split(',')[0]}; {_TOO_LARGE}") from None
    except FileNotFoundError as e:
        raise ImageError(f"no such image file: {path}") from e
    except (UnidentifiedImageError, OSError) as e:
        raise ImageError(f"{path} can't be read as an image: {e}") from e
    notes = []
    upright = ImageOps.exif_transpose(image)
    if upright is not image:
        orientation = image.getexif().get(_EXIF_ORIENTATION)
        if orientation not in (None, 1):
            notes.append(f"turned upright per its EXIF orientation ({orientation})")
        image = upright
    if image.mode.startswith("I") or image.mode == "F":
        image, note = _to_8_bit(image, path)
        notes.append(note)
    if image.mode != "RGB":
        notes.append(f"converted from {image.mode} to RGB")
        image = image.convert("RGB")
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        w, h = image.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
        crop = "" if w == h else f"center-cropped to {side}x{side}, "
        notes.append(f"{crop}resized from {w}x{h} to 32x32")
    return np.asarray(image, dtype=np.uint8), notes


def format_top(probabilities: np.ndarray, label_names: Sequence[str], k: int) -> str:
    """``"cat 81.2%, dog 9.1%, ..."``: the ``k`` most probable classes, most probable first."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return ", ".join(f"{label_names[i]} {100 * probabilities[i]:.1f}%" for i in order)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--top must be a positive integer, got {text!r}")
    return value


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jresnet.predict",
        description="Print the most probable CIFAR classes of images.",
    )
    parser.add_argument(
        "source", metavar="WORKDIR_OR_NAME", help="work directory, weights name or weights file"
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    parser.add_argument(
        "--top", type=_positive_int, default=5, help="classes to print per image (at least 1)"
    )
    parser.add_argument("--cache_dir", help="where published weights are cached")
    args = parser.parse_args(argv)

    read = [read_image(path) for path in args.images]  # every file checked before the model
    settings, variables = weights.load(args.source, args.cache_dir)
    label_names = datasets.get(settings.dataset).label_names
    if args.top > len(label_names):
        print(
            f"note: --top {args.top} is more than the model's {len(label_names)} classes; "
            "printing all of them",
            file=sys.stderr,
        )
    model = models.from_config(settings)
    probabilities = predict(model, variables, np.stack([image for image, _ in read]))
    for path, (_, notes), p in zip(args.images, read, probabilities, strict=True):
        note = f" ({'; '.join(notes)})" if notes else ""
        print(f"{path}: {format_top(p, label_names, args.top)}{note}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns its exit code (`jresnet.errors`)."""
    return errors.run_cli(lambda: _main(argv))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
