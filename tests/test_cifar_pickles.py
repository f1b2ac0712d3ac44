"""jresnet.cifar_pickles: the restricted unpickler runs no code and builds nothing big.

Every pickle is built here, in ``tmp_path``; nothing needs the network or the real CIFAR.
"""

from __future__ import annotations

import os
import pickle
import tarfile
import tracemalloc

import numpy as np
import pytest

from jresnet import cifar_pickles, sources
from jresnet.errors import DataError
from jresnet.prepare_data import prepare
from tests.test_prepare_data import CIFAR10_LABELS, add_file, py2_pickle


def quiet(_: str) -> None:
    pass


# --------------------------------------------------------------------------
# Pickles run no code.


class RunsCommand:
    """Unpickles as ``os.system(command)``."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_pickle_with_a_forbidden_global_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        payload = py2_pickle({"label_names": [RunsCommand(f"touch {marker}")]})
        add_file(tar, "cifar-10-batches-py/batches.meta", payload)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            add_file(tar, f"cifar-10-batches-py/{name}", py2_pickle({"labels": []}))
    with pytest.raises(DataError, match=r"batches\.meta.*forbidden global (posix|nt)\.system"):
        prepare(tmp_path / "cifar-10-python.tar.gz", tmp_path / "tfds", log=quiet)
    assert not marker.exists()
    assert not (tmp_path / "tfds").exists()


class HugeArray:
    """Unpickles as NumPy's ``_reconstruct(ndarray, (2**20, 2**20), "b")``: a 1 TiB array."""

    def __reduce__(self):
        return (np.empty(0).__reduce__()[0], (np.ndarray, (1 << 20, 1 << 20), b"b"))


def test_only_the_empty_array_reconstruction_of_numpy_pickles_is_admitted(tmp_path):
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        meta = py2_pickle({"label_names": list(CIFAR10_LABELS)})
        add_file(tar, "cifar-10-batches-py/batches.meta", meta)
        add_file(tar, "cifar-10-batches-py/data_batch_1", py2_pickle({"data": HugeArray()}))
    with pytest.raises(DataError, match=r"data_batch_1: unexpected array reconstruction"):
        sources.read_source(tmp_path / "cifar-10-python.tar.gz")


# --------------------------------------------------------------------------
# What memoised references build is bounded (issue 20, M3).


def nested_labels(depth: int) -> list:
    """A list nested ``depth`` levels deep whose two items are the same list: pickled with
    memo references it takes a few bytes per level, expanded it holds ``2 ** depth`` ints."""
    labels: list = [0, 1]
    for _ in range(depth):
        labels = [labels, labels]
    return labels


def python_tarball_with(tmp_path, labels) -> str:
    """A cifar-10-python.tar.gz whose batches have ``labels`` as their labels."""
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        meta = py2_pickle({"label_names": list(CIFAR10_LABELS)})
        add_file(tar, "cifar-10-batches-py/batches.meta", meta)
        batch = py2_pickle({"labels": labels, "data": np.zeros((1, 3072), np.uint8)})
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            add_file(tar, f"cifar-10-batches-py/{name}", batch)
    return str(path)


@pytest.mark.parametrize("depth", [26, 40])
def test_labels_nested_deep_through_memo_references_are_refused_in_little_memory(tmp_path, depth):
    source = python_tarball_with(tmp_path, nested_labels(depth))
    assert len(py2_pickle({"labels": nested_labels(depth)})) < 4000  # a few KB per file
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"data_batch_1: refused, objects nested more than"):
            sources.read_source(source)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20  # the expanded labels would take gigabytes


def test_memo_references_that_expand_beyond_the_file_are_refused(tmp_path):
    """Shallow but wide: 2,000 references to one list of 2,000 ints (4 million labels)."""
    row = list(range(2000))
    source = python_tarball_with(tmp_path, [row] * 2000)
    with pytest.raises(DataError, match=r"data_batch_1: refused, memoised references expand"):
        sources.read_source(source)


def test_the_bound_admits_what_a_pickle_holds_without_memo_references():
    batch = {b"labels": list(range(1000)), b"data": np.zeros((10, 3072), np.uint8)}
    data = pickle.dumps(batch, protocol=2)
    cifar_pickles.check_bounded(pickle.loads(data), budget=len(data))
    with pytest.raises(ValueError, match="nested more than 4 levels"):
        cifar_pickles.check_bounded([[[[[0]]]]], budget=100)
