"""The python-format CIFAR releases (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``):
pickled batches, read by a restricted unpickler.

The unpickler admits exactly what the official files hold (dicts, lists, bytes, ints and NumPy
arrays: the globals ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and
``numpy.dtype``); a pickle that names any other global (the way pickles run code) is refused
before anything runs. What a pickle builds is bounded too (`check_bounded`): memoised
references let a few bytes name the same list many times, which costs nothing to unpickle
but explodes when turned into arrays, so an object nested deeper than the official files'
or larger, expanded, than its file is refused before it is used.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from jresnet import datasets
from jresnet.cifar_format import (
    SPLITS,
    SplitArrays,
    check_names,
    chw_rows_to_nhwc,
    label_names,
    require_path,
)
from jresnet.errors import DataError

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


# The official batches nest three levels deep (the dict, its lists, their bytes or ints).
MAX_DEPTH = 4
_CONTAINERS = (dict, list, tuple, set, frozenset)


def check_bounded(obj: Any, budget: int, max_depth: int = MAX_DEPTH) -> None:
    """Raises ``ValueError`` if ``obj``, expanded as a tree, nests deeper than ``max_depth``
    containers or costs more than ``budget``.

    An object costs 1, plus its length for ``bytes``/``str``/``bytearray`` and its bytes for
    a NumPy array, plus the cost of what it holds, counted again at every reference. Without
    memo references (a pickle's ``BINGET``), every object costs its file at least that many
    bytes, so a pickle of ``n`` bytes builds at most ``n``; with them, a few bytes can name the
    same list at every level of a deep tree, which expands (e.g. in ``np.asarray``) to
    ``2 ** depth`` elements. The walk stops as soon as the budget is spent, so it takes at
    most ``budget`` steps and no memory beyond its stack of ``max_depth`` iterators.
    """
    spent = 0
    stack = [iter((obj,))]
    while stack:
        item = next(stack[-1], _DONE)
        if item is _DONE:
            stack.pop()
            continue
        spent += 1
        if isinstance(item, (bytes, str, bytearray)):
            spent += len(item)
        elif isinstance(item, np.ndarray):
            spent += item.nbytes
        elif isinstance(item, _CONTAINERS):
            if len(stack) > max_depth:
                raise ValueError(
                    f"objects nested more than {max_depth} levels deep (the official batches "
                    "nest 3: a dict of lists of bytes or ints)"
                )
            children = item
            if isinstance(item, dict):
                children = (part for pair in item.items() for part in pair)
            stack.append(iter(children))
        if spent > budget:
            raise ValueError(
                f"memoised references expand it beyond {budget:,} (the size of the file), "
                "which no CIFAR batch does"
            )


_DONE = object()


def _unpickle(files: Mapping[str, bytes], basename: str, layout: str) -> dict:
    """The dict pickled in the file ``basename`` (Python 2 ``str`` values come back as bytes)."""
    path = require_path(files, basename, layout)
    try:
        batch = _BatchUnpickler(io.BytesIO(files[path]), encoding="bytes").load()
    except _UNPICKLE_ERRORS as e:
        raise DataError(f"{path}: {e}.") from e
    try:
        check_bounded(batch, budget=len(files[path]))
    except ValueError as e:
        raise DataError(
            f"{path}: refused, {e}: this file was not made by the CIFAR authors."
        ) from e
    if not isinstance(batch, dict):
        raise DataError(f"{path}: a pickled {type(batch).__name__}, not a CIFAR batch dict.")
    return batch


def read_python_cifar10(files: Mapping[str, bytes]) -> dict[str, SplitArrays]:
    layout = "cifar-10-python"
    meta = _unpickle(files, "batches.meta", layout)
    check_names([n.decode() for n in meta[b"label_names"]], label_names("cifar10"), layout)
    batches = {
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
    }
    splits = {}
    for split, names in batches.items():
        parts = [_unpickle(files, name, layout) for name in names]
        images = np.concatenate([chw_rows_to_nhwc(p[b"data"], split) for p in parts])
        labels = np.concatenate([np.asarray(p[b"labels"], dtype=np.int64) for p in parts])
        splits[split] = SplitArrays(images, labels)
    return splits


def read_python_cifar100(files: Mapping[str, bytes]) -> dict[str, SplitArrays]:
    layout = "cifar-100-python"
    meta = _unpickle(files, "meta", layout)
    cifar100 = datasets.get("cifar100")
    check_names([n.decode() for n in meta[b"fine_label_names"]], cifar100.label_names, layout)
    coarse_names = [n.decode() for n in meta[b"coarse_label_names"]]
    check_names(coarse_names, cifar100.coarse_label_names, layout)
    splits = {}
    for split in SPLITS:
        part = _unpickle(files, split, layout)
        splits[split] = SplitArrays(
            chw_rows_to_nhwc(part[b"data"], split),
            np.asarray(part[b"fine_labels"], dtype=np.int64),
            np.asarray(part[b"coarse_labels"], dtype=np.int64),
        )
    return splits
