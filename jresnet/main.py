"""Runs the job a config asks for (train, or evaluate only) and returns the exit code.

The one place that decides to download data: a dataset that is not prepared is fetched
(online) or explained (offline) here, never by the modules below.
"""

from __future__ import annotations

import os

import jax
import ml_collections

from jresnet import errors, evaluate, input_pipeline, parallel, train
from jresnet.configs import checks


def enable_compilation_cache(path: str) -> None:
    """Caches compiled XLA programs in ``path`` (e.g. across restarts of a run)."""
    if path:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))


def run(config: ml_collections.ConfigDict, workdir: str) -> int:
    """Trains or evaluates as ``config`` says; returns the process exit code (`jresnet.errors`)."""

    def job() -> None:
        checks.validate(config)  # before any data is read or any process is contacted
        enable_compilation_cache(config.get("compilation_cache_dir", ""))
        parallel.initialize_distributed(config)
        if config.eval_only:
            evaluate.evaluate_checkpoint(config, workdir, download=True)
        else:
            data = input_pipeline.load_splits(config, download=True)
            train.train_and_evaluate(config, workdir, data)

    return errors.run_cli(job)
