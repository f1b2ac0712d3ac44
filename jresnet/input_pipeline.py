"""CIFAR input pipeline: whole splits read into memory, shuffling and augmentation on device.

Conventions: images are NHWC; on the host they stay uint8 ``[N, 32, 32, 3]`` (RGB, 0..255) and
labels int32 ``[N]``. Training puts the whole uint8 split on the device(s) once per run
(`parallel.shard_rows`); each epoch's order (`epoch_permutation`), the gathering of each
step's batch, augmentation and normalisation run batched inside the jitted step
(`steps.make_train_fn` with a `steps.DeviceSplit`), from explicit PRNG keys, and produce
float32 ``[B, 32, 32, 3]``.

Data is read with ``tfds.data_source`` (array_record, no TensorFlow). This module never
downloads: a dataset that is not prepared raises `errors.DataError`, which says how
to prepare it offline with ``python -m jresnet.prepare_data``. Downloading is the entry
point's decision (`jresnet.main`, with `unprepared_root` and `not_prepared`).
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from google.protobuf.message import DecodeError
from PIL import Image
from tensorflow_datasets.proto import tf_example_pb2

from jresnet import datasets, reporting
from jresnet.errors import ConfigError, DataError

PADDING = 4  # pixels of zero padding around each side before the random 32x32 crop


@dataclasses.dataclass(frozen=True)
class Splits:
    """A run's data in host memory: uint8 NHWC ``[N, 32, 32, 3]`` images, int32 ``[N]`` labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    eval_images: np.ndarray
    eval_labels: np.ndarray


# --------------------------------------------------------------------------------------------
# Loading.


def _not_found(dataset: str, builder: tfds.core.DatasetBuilder, reason: str) -> DataError:
    """The error for a dataset that can't be read, ``reason`` saying why, and how to prepare
    it offline."""
    root = builder.data_dir_root
    flag = "" if dataset == "cifar10" else f" --dataset {dataset}"
    return DataError(
        f"{dataset} {builder.version} {reason} in data_dir {root} (looked in {builder.data_dir}). "
        "Prepare it offline from a local copy with\n"
        f"  python -m jresnet.prepare_data --from PATH --data_dir {root}{flag}\n"
        f"where PATH is {', '.join(datasets.get(dataset).archives)}, or an image-folder tree "
        "train/<class>/*, test/<class>/* (a directory or its .tar.gz)."
    )


def _builder(dataset: str, data_dir: str | os.PathLike | None) -> tfds.core.DatasetBuilder:
    datasets.get(dataset)  # an unknown name is an error that lists the known ones
    return tfds.builder(dataset, data_dir=os.fspath(data_dir) if data_dir else None)


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    """``builder.is_prepared()``, without TFDS's warning that the folder it looks for has no
    ``dataset_info.json`` (an unprepared dataset is a state jresnet handles: it prepares it
    or says how)."""
    with reporting.without_log_lines("Variant folder "):
        return builder.is_prepared()


def unprepared_root(dataset: str, data_dir: str | os.PathLike | None) -> str | None:
    """The TFDS data directory root to prepare ``dataset`` in, or None if it is prepared there.

    ``data_dir`` None or "" means TFDS's default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
    """
    builder = _builder(dataset, data_dir)
    return None if _is_prepared(builder) else os.fspath(builder.data_dir_root)


def not_prepared(dataset: str, data_dir: str | os.PathLike | None, reason: str) -> DataError:
    """`DataError` for ``dataset`` in ``data_dir``: it ``reason`` (e.g. "is not
    prepared and can't be downloaded (...)"), and how to prepare it offline."""
    return _not_found(dataset, _builder(dataset, data_dir), reason)


def _parse_record(record: bytes, where: str) -> tuple[bytes, int]:
    """(encoded image, label) of one serialised TFDS example (a ``tf.train.Example`` proto);
    `DataError` naming ``where`` (the file it was read from) if it is not one."""
    try:
        features = tf_example_pb2.Example.FromString(record).features.feature
    except DecodeError as e:
        raise DataError(f"{where}: a damaged record, not a TFDS example ({e}).") from e
    try:
        return features["image"].bytes_list.value[0], features["label"].int64_list.value[0]
    except (KeyError, IndexError) as e:
        raise DataError(
            f"{where}: Record without an image and a label: features {sorted(features)}. The "
            "file is damaged: prepare the dataset again (python -m jresnet.prepare_data "
            "--overwrite)."
        ) from e


# What reading damaged array_record files and decoding damaged images raise: array_record's
# RuntimeError ("Corrupted Riegeli/records file"), PIL's errors, and a wrong image shape.
_DAMAGED_ERRORS = (RuntimeError, OSError, ValueError, SyntaxError, EOFError)


def _damaged(files: str, dataset: str, error: BaseException) -> DataError:
    return DataError(
        f"{files}: damaged {dataset} data ({error}). Prepare the dataset again "
        "(python -m jresnet.prepare_data --from PATH --data_dir DIR --overwrite)."
    )


def _read_examples(source, files: str, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """Every example of a ``tfds.data_source`` of raw records: uint8 images, int32 labels."""
    n = len(source)
    images = np.empty((n, 32, 32, 3), dtype=np.uint8)
    labels = np.empty((n,), dtype=np.int32)
    try:
        # Raw records, parsed and PNG-decoded here: 3.3 s for the 50k train split against
        # 4.9 s through TFDS's per-example deserialise-and-decode (measured on 2 CPU cores).
        records = source.__getitems__(list(range(n))) if n else []
        for i, record in enumerate(records):
            image_bytes, labels[i] = _parse_record(record, files)
            images[i] = np.asarray(Image.open(io.BytesIO(image_bytes)))
    except DataError:
        raise
    except _DAMAGED_ERRORS as e:
        raise _damaged(files, dataset, e) from e
    return images, labels


def load_split(
    dataset: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reads a whole split of a prepared TFDS dataset into host memory.

    Args:
      dataset: "cifar10" or "cifar100".
      split: any TFDS split string: "train", "test", "train[:45000]", "train[90%:]", ...
      data_dir: TFDS data directory; None or "" means TFDS's default (``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``). Never touches the network.

    Returns:
      (images, labels): uint8 ``[N, 32, 32, 3]`` RGB NHWC and int32 ``[N]`` (the fine label for
      cifar100), in the split's stored order.

    Raises:
      ConfigError: unknown dataset, or a split string TFDS rejects (the message names the split
        and the available splits).
      DataError: the dataset is not prepared in array_record format in ``data_dir``, or its
        files are damaged (the message names them).
    """
    builder, source = _data_source(dataset, split, data_dir)
    return _read_examples(source, _split_files(builder, split), dataset)


def split_size(dataset: str, split: str, data_dir: str | os.PathLike | None = None) -> int:
    """The number of examples in ``split``, reading none of them (a split checked at the
    start of a run and read at its end: ``--config.test_split``). Raises like `load_split`."""
    return len(_data_source(dataset, split, data_dir)[1])


def _data_source(
    dataset: str, split: str, data_dir: str | os.PathLike | None
) -> tuple[tfds.core.DatasetBuilder, Any]:
    """The builder and the random-access ``tfds.data_source`` of raw records of ``split``
    (nothing read yet). Raises like `load_split`."""
    builder = _builder(dataset, data_dir)
    if not _is_prepared(builder):
        raise _not_found(dataset, builder, "is not prepared")
    try:
        # download=False: never call download_and_prepare, which would try the network.
        source = tfds.data_source(
            dataset,
            split=split,
            data_dir=os.fspath(data_dir) if data_dir else None,
            download=False,
            deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES,
        )
        len(source)  # a slice TFDS can't resolve, e.g. "train[5:3]", fails here
    except NotImplementedError as e:  # prepared, but not in a random-access format
        raise _not_found(dataset, builder, "is not in array_record format") from e
    except ValueError as e:
        available = ", ".join(
            f"{name} ({info.num_examples} examples)" for name, info in builder.info.splits.items()
        )
        raise ConfigError(
            f"Bad split {split!r} for {dataset}: {e} Available splits: {available}. Slices look "
            "like 'train[:45000]' or 'train[90%:]'."
        ) from e
    except RuntimeError as e:  # array_record refuses a damaged file when it opens it
        raise _damaged(_split_files(builder, split), dataset, e) from e
    return builder, source


def _split_files(builder: tfds.core.DatasetBuilder, split: str) -> str:
    """The paths of the files ``split`` is read from, comma-separated (for messages)."""
    paths = dict.fromkeys(
        os.fspath(f.filename) for f in builder.info.splits[split].file_instructions
    )
    return ", ".join(paths)


def load_splits(config: ml_collections.ConfigDict) -> Splits:
    """``config.train_split`` and ``config.eval_split`` of ``config.dataset`` (`load_split`)."""
    data_dir = config.data_dir or None
    train = load_split(config.dataset, config.train_split, data_dir)
    evaluation = load_split(config.dataset, config.eval_split, data_dir)
    return Splits(*train, *evaluation)


# --------------------------------------------------------------------------------------------
# Augmentation and normalisation (on device, inside jit).


def normalize(
    images: jax.Array, mean: Sequence[float] | jax.Array, std: Sequence[float] | jax.Array
) -> jax.Array:
    """ToTensor + Normalize: uint8 ``[..., 3]`` -> float32 ``(x / 255 - mean) / std``.

    Args:
      images: uint8 ``[..., H, W, 3]`` in 0..255 (NHWC).
      mean, std: per-channel RGB values for pixels in [0, 1], shape ``[3]``.

    Returns:
      float32 array of the same shape.
    """
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def random_crop_and_flip(
    key: jax.Array, images: jax.Array, padding: int = PADDING
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """RandomCrop(size, padding) with zero fill + RandomHorizontalFlip(0.5), per image, uint8.

    Each image is zero-padded by ``padding`` pixels on every side, cropped back to its size at a
    uniformly random offset (independently per image), then mirrored left-right with
    probability 1/2.

    Args:
      key: PRNG key.
      images: ``[B, H, W, C]`` (any dtype; uint8 for CIFAR).

    Returns:
      (crops, offsets, flips): crops ``[B, H, W, C]`` of the input dtype; offsets int32
      ``[B, 2]`` = (top, left) of each crop in the padded image, each in ``0..2*padding``
      inclusive, i.e. ``crop = padded[top:top + H, left:left + W]``; flips bool ``[B]``, True
      where the crop was then mirrored (``crop[:, ::-1]``).
    """
    batch, height, width, channels = images.shape
    offset_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(offset_key, (batch, 2), 0, 2 * padding + 1, dtype=jnp.int32)
    flips = jax.random.bernoulli(flip_key, 0.5, (batch,))
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

    def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
        start = (offset[0], offset[1], jnp.zeros((), offset.dtype))
        return jax.lax.dynamic_slice(image, start, (height, width, channels))

    crops = jax.vmap(crop)(padded, offsets)
    crops = jnp.where(flips[:, None, None, None], crops[:, :, ::-1, :], crops)
    return crops, offsets, flips


def augment(
    key: jax.Array,
    images: jax.Array,
    mean: Sequence[float] | jax.Array,
    std: Sequence[float] | jax.Array,
) -> jax.Array:
    """The seed's training transform, batched: torchvision's RandomCrop(32, padding=4),
    RandomHorizontalFlip(), ToTensor(), Normalize(mean, std), but NHWC.

    Args:
      key: PRNG key; the same key and images give the same output.
      images: uint8 ``[B, 32, 32, 3]``.
      mean, std: per-channel RGB normalisation for pixels in [0, 1], shape ``[3]``.

    Returns:
      float32 ``[B, 32, 32, 3]``; padded pixels normalise to ``(0 - mean) / std``.
    """
    crops, _, _ = random_crop_and_flip(key, images)
    return normalize(crops, mean, std)


# --------------------------------------------------------------------------------------------
# Shuffling and batching.

# Folded into ``jax.random.key(seed)`` for the data order; the run's initialisation and
# augmentation keys come from ``jax.random.split(jax.random.key(seed))`` instead.
DATA_ORDER_STREAM = 0xDA7A


def data_order_key(seed: int) -> jax.Array:
    """The run's key of its training order: ``fold_in(key(seed), DATA_ORDER_STREAM)``.
    ``seed`` must be non-negative."""
    return jax.random.fold_in(jax.random.key(seed), DATA_ORDER_STREAM)


def epoch_permutation(order_key: jax.Array, epoch: int | jax.Array, n: int) -> jax.Array:
    """The order of the ``n`` training examples in ``epoch``: int32 ``[n]``.

    ``jax.random.permutation(fold_in(order_key, epoch), n)`` with ``order_key =
    data_order_key(seed)``: a function of (seed, epoch, n) only, so a resumed run replays
    the same order, on any number of devices or processes. Traceable in ``order_key`` and
    ``epoch``: the training driver computes it inside the jitted call from its arguments
    (`steps.make_train_fn`), so one compiled program serves every seed; called eagerly, it
    gives the same order on the host. ``epoch`` must be non-negative.
    """
    return jax.random.permutation(jax.random.fold_in(order_key, epoch), n)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches per epoch, ``n // batch_size`` (the remainder is dropped each epoch)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if n < batch_size:
        raise DataError(
            f"The training split has {n} examples, fewer than one batch of {batch_size}: "
            "use a smaller batch_size or a larger split."
        )
    return n // batch_size


def train_batches(
    images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, epoch: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of shuffled full batches: ``steps_per_epoch`` pairs of uint8
    ``[batch_size, 32, 32, 3]`` images and int32 ``[batch_size]`` labels, in the order of
    :func:`epoch_permutation` of ``data_order_key(seed)``; the last ``n % batch_size``
    examples of that order are dropped.

    The batches the training driver gathers on the device (`steps.make_train_fn` with a
    `steps.DeviceSplit`), made on the host: for feeding `steps.make_train_fn` without one,
    and for checking the driver.
    """
    steps = steps_per_epoch(len(images), batch_size)
    order = np.asarray(epoch_permutation(data_order_key(seed), epoch, len(images)))
    for step in range(steps):
        index = order[step * batch_size : (step + 1) * batch_size]
        yield images[index], labels[index]


def eval_batches(
    images: np.ndarray, labels: np.ndarray, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Fixed-shape batches covering every example exactly once, in order.

    Yields ``ceil(N / batch_size)`` triples (images ``[batch_size, ...]``, labels
    ``[batch_size]``, mask bool ``[batch_size]``). The last batch is padded with zero images
    and label 0 up to ``batch_size`` (so a jitted eval step compiles once); ``mask`` is True
    for real examples and False for the padding.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"{n} images but {len(labels)} labels.")
    for start in range(0, n, batch_size):
        batch_images = images[start : start + batch_size]
        batch_labels = labels[start : start + batch_size]
        real = len(batch_images)
        mask = np.arange(batch_size) < real
        if real < batch_size:
            pad = batch_size - real
            batch_images = np.concatenate(
                [batch_images, np.zeros((pad, *images.shape[1:]), images.dtype)]
            )
            batch_labels = np.concatenate([batch_labels, np.zeros((pad,), labels.dtype)])
        yield batch_images, batch_labels, mask
