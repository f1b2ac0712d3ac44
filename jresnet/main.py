"""Runs a configured job and turns expected failures into a message and an exit code."""

from __future__ import annotations

import os

import jax
import ml_collections

from jresnet import errors, parallel, train


def enable_compilation_cache(path: str) -> None:
    """Caches compiled XLA programs in ``path`` (e.g. across restarts of a run)."""
    if path:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))


def run(config: ml_collections.ConfigDict, workdir: str) -> int:
    """Trains or evaluates as ``config`` says; returns the process exit code."""

    def job() -> None:
        enable_compilation_cache(config.get("compilation_cache_dir", ""))
        parallel.initialize_distributed(config)
        train.train_and_evaluate(config, workdir)

    return errors.run_cli(job)
