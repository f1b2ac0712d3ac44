"""The resumable state of a PyTorch run in one file: RNG states as tensors, atomic writes.

A checkpoint is a dict that ``torch.load(weights_only=True)`` reads back, so nothing in it is
ever unpickled as an arbitrary Python object: tensors, and dicts, lists, tuples, strings,
numbers, booleans and None. Python's and numpy's global RNG states are stored as int64
tensors for that reason (`rng_states`, `restore_rng_states`).

`save_atomic` writes the file through `jresnet.safe_files.atomic_writer` (a temporary file
in the same directory, fsynced, renamed over the old one with `os.replace`): a run killed at
any moment, even inside a save, leaves either the previous checkpoint or the new one,
complete. `remove_leftovers` removes the temporary file a killed save leaves.
"""

from __future__ import annotations

import glob
import os
import pickle
import random
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from jresnet import safe_files
from jresnet.errors import CheckpointError


def rng_states(loader_generator: torch.Generator) -> dict[str, Any]:
    """Every RNG a seed run draws from: torch's global CPU generator (initial weights, the
    transforms when the DataLoader has no workers, each DataLoader iterator's base seed when it
    has no generator of its own), numpy's and Python's global ones, and the training
    DataLoader's generator (its shuffling and its workers' seeds)."""
    # numpy's legacy global RNG on purpose: it is the state the seed's code (and libraries
    # it calls) would draw from; a Generator of our own would not capture it.
    numpy_state = np.random.get_state(legacy=False)  # noqa: NPY002
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "python": {
            "version": version,
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "loader": loader_generator.get_state(),
    }


def restore_rng_states(states: Mapping[str, Any], loader_generator: torch.Generator) -> None:
    """Sets every RNG `rng_states` captured back to its saved state."""
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state(  # noqa: NPY002 (the global state, see rng_states)
        {
            "bit_generator": numpy_state["bit_generator"],
            "state": {
                "key": numpy_state["key"].numpy().astype(np.uint32),
                "pos": numpy_state["pos"],
            },
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    python_state = states["python"]
    internal = tuple(int(x) for x in python_state["internal"].tolist())
    random.setstate((python_state["version"], internal, python_state["gauss_next"]))
    loader_generator.set_state(states["loader"])


def save_atomic(checkpoint: Mapping[str, Any], path: str) -> None:
    """Writes ``checkpoint`` to ``path`` with ``torch.save`` so that ``path`` always holds a
    complete checkpoint (`jresnet.safe_files.atomic_writer`: a new file, fsync, `os.replace`,
    fsync of the directory).

    Raises `OutputError` if it can't be written (the previous checkpoint stays).
    """
    with safe_files.atomic_writer(path) as f:
        torch.save(dict(checkpoint), f)


def remove_leftovers(path: str) -> list[str]:
    """Removes the temporary files a killed `save_atomic` left next to ``path``; returns them."""
    directory, name = os.path.split(path)
    leftovers = glob.glob(os.path.join(glob.escape(directory), f".{glob.escape(name)}.*.partial"))
    for leftover in leftovers:
        os.remove(leftover)
    return leftovers


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else "no message"


def load(path: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` read with ``torch.load(weights_only=True)``, or None if there
    is none. Raises `CheckpointError` if it is unreadable (it is left in place)."""
    if not os.path.exists(path):
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise CheckpointError(
            f"the checkpoint {path} is unreadable ({type(e).__name__}: {_first_line(e)}); "
            "move it away to start the run over"
        ) from e
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} is not a checkpoint of this run (a {type(checkpoint)})")
    return checkpoint
