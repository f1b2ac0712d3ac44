"""jresnet.testing.tiny_data: tiny CIFAR datasets written from arrays, checked."""

from __future__ import annotations

import numpy as np
import pytest

from jresnet.errors import DataError, OutputError
from jresnet.testing.tiny_data import write_dataset
from tests.test_prepare_data import assert_dataset_equals, fake_split


def test_write_dataset_refuses_to_overwrite_unless_asked(tmp_path):
    write_dataset(tmp_path, "cifar10", {"train": fake_split(10, 1, 6)})
    replacement = {"train": fake_split(10, 2, 7)}
    with pytest.raises(OutputError, match="already exists"):
        write_dataset(tmp_path, "cifar10", replacement)
    write_dataset(tmp_path, "cifar10", replacement, overwrite=True)
    assert_dataset_equals(tmp_path, "cifar10", replacement)
    assert [p.name for p in tmp_path.iterdir()] == ["cifar10"]  # no staging left behind


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (np.zeros((2, 32, 32, 3), np.float32), [0, 1], "uint8"),
        (np.zeros((2, 28, 28, 3), np.uint8), [0, 1], r"\[N, 32, 32, 3\]"),
        (np.zeros((2, 32, 32, 3), np.uint8), [0, 10], r"0\.\.9"),
        (np.zeros((2, 32, 32, 3), np.uint8), [0], "labels for 2 images"),
    ],
)
def test_write_dataset_validates_arrays(tmp_path, images, labels, match):
    with pytest.raises(DataError, match=match):
        write_dataset(tmp_path, "cifar10", {"train": (images, np.array(labels))})
