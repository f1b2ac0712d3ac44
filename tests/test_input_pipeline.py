"""jresnet.input_pipeline: loading, augmentation, normalisation, shuffling and batching."""

from __future__ import annotations

import logging
import socket

import jax
import numpy as np
import pytest

from jresnet import datasets
from jresnet import input_pipeline as ip
from jresnet.errors import DataError
from jresnet.testing.tiny_data import write_dataset

MEAN, STD = datasets.NORMALIZATIONS["cifar"]


def random_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def as_multiset(images: np.ndarray, labels: np.ndarray) -> list[tuple[bytes, int]]:
    """Order-free view of a split (TFDS stores examples in a shuffled order)."""
    return sorted(
        (image.tobytes(), int(label)) for image, label in zip(images, labels, strict=True)
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny CIFAR-10 in TFDS format: 64 train and 40 test images."""
    data_dir = tmp_path_factory.mktemp("tfds")
    splits = {
        "train": (random_images(64, 0), np.arange(64) % 10),
        "test": (random_images(40, 1), np.arange(40) % 10),
    }
    write_dataset(data_dir, "cifar10", splits)
    return data_dir, splits


# --------------------------------------------------------------------------
# Loading.


def test_num_classes_come_from_the_dataset_table():
    assert datasets.get("cifar10").num_classes == 10
    assert datasets.get("cifar100").num_classes == 100
    with pytest.raises(ValueError, match="cifar10"):
        datasets.get("mnist")
    with pytest.raises(ValueError, match="cifar10"):
        ip.load_split("mnist", "train")


@pytest.mark.parametrize("split", ["train", "test"])
def test_load_split_round_trip(tiny, split):
    data_dir, splits = tiny
    images, labels = ip.load_split("cifar10", split, str(data_dir))
    assert images.dtype == np.uint8 and images.shape == (len(splits[split][0]), 32, 32, 3)
    assert labels.dtype == np.int32 and labels.shape == (len(images),)
    assert as_multiset(images, labels) == as_multiset(*splits[split])


def test_load_split_slicing(tiny):
    data_dir, _ = tiny
    images, labels = ip.load_split("cifar10", "train", data_dir)
    head_images, head_labels = ip.load_split("cifar10", "train[:10]", data_dir)
    np.testing.assert_array_equal(head_images, images[:10])
    np.testing.assert_array_equal(head_labels, labels[:10])
    assert len(ip.load_split("cifar10", "train[75%:]", data_dir)[0]) == 16


@pytest.mark.parametrize("split", ["tran", "train[:abc]", "train[5:3]"])
def test_load_split_bad_split(tiny, split):
    data_dir, _ = tiny
    with pytest.raises(ValueError, match="Available splits: train") as info:
        ip.load_split("cifar10", split, data_dir)
    assert repr(split) in str(info.value)


def test_load_split_never_downloads(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("load_split went to the network")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    with pytest.raises(DataError, match="is not prepared"):
        ip.load_split("cifar10", "train", tmp_path)


def damage(data_dir, split: str, how: str) -> str:
    """Damages the array_record file of ``split`` in ``data_dir``; returns its path.

    ``how``: "flipped" inverts 40 bytes at its start (array_record's checksums catch it);
    "truncated" keeps its first half (what is left parses as records without images).
    """
    (path,) = (data_dir / "cifar10" / "3.0.2").glob(f"cifar10-{split}.array_record-*")
    data = bytearray(path.read_bytes())
    if how == "flipped":
        data[200:240] = bytes(255 - b for b in data[200:240])
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    return str(path)


@pytest.mark.parametrize("how", ["flipped", "truncated"])
def test_a_damaged_split_is_a_data_error_naming_the_file(tmp_path, how):
    write_dataset(tmp_path, "cifar10", {"train": (random_images(16, 0), np.arange(16) % 10)})
    path = damage(tmp_path, "train", how)
    with pytest.raises(DataError, match="damaged") as info:
        ip.load_split("cifar10", "train", tmp_path)
    assert path in str(info.value)


def test_load_split_without_download_never_touches_the_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    with pytest.raises(DataError, match="is not prepared in data_dir"):
        ip.load_split("cifar10", "train", tmp_path)


def test_an_unprepared_dataset_logs_no_tfds_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING), pytest.raises(DataError):
        ip.load_split("cifar10", "train", tmp_path)
    assert ip.unprepared_root("cifar10", tmp_path) == str(tmp_path)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


# --------------------------------------------------------------------------
# Augmentation.


def reference_augment(images, offsets, flips, mean, std):
    """torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize,
    in NumPy (NHWC), for given crop offsets and flips."""
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    out = []
    for image, (top, left), flip in zip(padded, offsets, flips, strict=True):
        crop = image[top : top + 32, left : left + 32]
        if flip:
            crop = crop[:, ::-1]
        x = crop.astype(np.float32) / np.float32(255)
        out.append((x - np.float32(mean)) / np.float32(std))
    return np.stack(out)


@pytest.fixture(scope="module")
def batch():
    return random_images(256, 2)


def test_random_crop_and_flip_matches_padded_slices(batch):
    crops, offsets, flips = ip.random_crop_and_flip(jax.random.key(0), batch)
    crops, offsets, flips = np.asarray(crops), np.asarray(offsets), np.asarray(flips)
    assert crops.dtype == np.uint8 and crops.shape == batch.shape
    assert offsets.shape == (len(batch), 2) and flips.shape == (len(batch),)
    assert offsets.min() >= 0 and offsets.max() <= 8
    padded = np.pad(batch, ((0, 0), (4, 4), (4, 4), (0, 0)))
    for crop, image, (top, left), flip in zip(crops, padded, offsets, flips, strict=True):
        expected = image[top : top + 32, left : left + 32]
        np.testing.assert_array_equal(crop, expected[:, ::-1] if flip else expected)


def test_random_crop_and_flip_covers_all_offsets_and_both_flips():
    images = np.zeros((2048, 32, 32, 3), np.uint8)
    _, offsets, flips = ip.random_crop_and_flip(jax.random.key(1), images)
    offsets, flips = np.asarray(offsets), np.asarray(flips)
    for axis in range(2):
        assert set(offsets[:, axis].tolist()) == set(range(9))
    assert 0.45 < flips.mean() < 0.55
    assert len({tuple(o) for o in offsets}) > 70  # offsets are independent per axis and image


def test_augment_matches_numpy_reference(batch):
    key = jax.random.key(3)
    out = np.asarray(jax.jit(ip.augment)(key, batch, MEAN, STD))
    _, offsets, flips = ip.random_crop_and_flip(key, batch)
    expected = reference_augment(batch, np.asarray(offsets), np.asarray(flips), MEAN, STD)
    assert out.dtype == np.float32 and out.shape == batch.shape
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


def test_augment_pads_with_zeros_before_normalising():
    white = np.full((512, 32, 32, 3), 255, np.uint8)
    key = jax.random.key(4)
    out = np.asarray(ip.augment(key, white, MEAN, STD))
    offsets = np.asarray(ip.random_crop_and_flip(key, white)[1])
    tops = np.flatnonzero(offsets[:, 0] == 0)
    assert len(tops) > 0
    black = (0 - np.float32(MEAN)) / np.float32(STD)
    white_value = (1 - np.float32(MEAN)) / np.float32(STD)
    for i in tops:  # a crop at top offset 0 starts with 4 rows of padding
        np.testing.assert_allclose(out[i, :4], np.broadcast_to(black, (4, 32, 3)), atol=1e-6)
        np.testing.assert_allclose(out[i, 4 + 14, 4 + 14], white_value, atol=1e-6)


def test_augment_is_deterministic_per_key(batch):
    first = np.asarray(ip.augment(jax.random.key(5), batch, MEAN, STD))
    again = np.asarray(ip.augment(jax.random.key(5), batch, MEAN, STD))
    other = np.asarray(ip.augment(jax.random.key(6), batch, MEAN, STD))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_normalize_values():
    pixels = np.array([[[[0, 128, 255]]]], np.uint8)  # one RGB pixel
    out = np.asarray(ip.normalize(pixels, MEAN, STD))
    expected = (np.array([0, 128, 255], np.float32) / 255 - np.float32(MEAN)) / np.float32(STD)
    assert out.dtype == np.float32 and out.shape == pixels.shape
    np.testing.assert_allclose(out[0, 0, 0], expected, rtol=1e-6)
    mean, std = datasets.NORMALIZATIONS["imagenet"]
    np.testing.assert_allclose(
        np.asarray(ip.normalize(np.full((1, 1, 3), 255, np.uint8), mean, std))[0, 0],
        (1 - np.array(mean)) / np.array(std),
        rtol=1e-6,
    )


# --------------------------------------------------------------------------
# Shuffling and batching.


def test_epoch_permutation():
    key = ip.data_order_key
    first = ip.epoch_permutation(key(0), 0, 1000)
    np.testing.assert_array_equal(np.sort(first), np.arange(1000))
    np.testing.assert_array_equal(first, ip.epoch_permutation(key(0), 0, 1000))
    assert not np.array_equal(first, ip.epoch_permutation(key(0), 1, 1000))
    assert not np.array_equal(first, ip.epoch_permutation(key(1), 0, 1000))
    # Inside jit (the training driver), key and epoch traced: one program, the same orders.
    traced = jax.jit(ip.epoch_permutation, static_argnums=2)
    for seed in (0, 1):
        np.testing.assert_array_equal(
            traced(key(seed), np.int32(1), 1000), ip.epoch_permutation(key(seed), 1, 1000)
        )
    assert traced._cache_size() == 1


def test_train_batches_follow_the_epoch_permutation():
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1) * np.ones((1, 32, 32, 3), np.uint8)
    labels = np.arange(10, dtype=np.int32)
    batches = list(ip.train_batches(images, labels, 4, seed=7, epoch=2))
    assert len(batches) == 2
    order = ip.epoch_permutation(ip.data_order_key(7), 2, 10)
    for step, (batch_images, batch_labels) in enumerate(batches):
        np.testing.assert_array_equal(batch_labels, order[step * 4 : step * 4 + 4])
        np.testing.assert_array_equal(batch_images[:, 0, 0, 0], batch_labels)


@pytest.mark.parametrize(("n", "batch_size"), [(10, 4), (8, 4), (3, 5), (0, 4)])
def test_eval_batches_count_every_example_once(n, batch_size):
    images = random_images(n, 8)
    labels = np.arange(n, dtype=np.int32)
    batches = list(ip.eval_batches(images, labels, batch_size))
    assert len(batches) == -(-n // batch_size)
    for batch_images, batch_labels, mask in batches:
        assert batch_images.shape == (batch_size, 32, 32, 3) and batch_images.dtype == np.uint8
        assert batch_labels.shape == (batch_size,) and mask.shape == (batch_size,)
        assert mask.dtype == bool
    if batches:
        masks = np.concatenate([m for _, _, m in batches])
        assert masks.sum() == n
        np.testing.assert_array_equal(np.concatenate([b[1] for b in batches])[masks], labels)
        np.testing.assert_array_equal(np.concatenate([b[0] for b in batches])[masks], images)
