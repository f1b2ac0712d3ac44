"""Runs the job a config asks for (train, or evaluate only) and returns the exit code.

The one place that validates a run's config (`configs.checks.validate`, once, before any data
is read or any process is contacted) and the one place that decides to download data: a
dataset that is not prepared is fetched (online) or explained (offline) here, never by the
modules below.
"""

from __future__ import annotations

import functools
import os

import jax
import ml_collections

from jresnet import errors, evaluate, input_pipeline, parallel, prepare_data, train
from jresnet.configs import checks
from jresnet.errors import DataError


def enable_compilation_cache(path: str) -> None:
    """Caches compiled XLA programs in ``path`` (e.g. across restarts of a run)."""
    if path:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))


def prepare_if_missing(dataset: str, data_dir: str | None) -> None:
    """Downloads the official archive of ``dataset`` and prepares it in ``data_dir`` (TFDS's
    default for None or "") unless it is prepared there already.

    Offline, or when the archive is bad, raises `errors.DataError`, which
    says how to prepare the dataset from a local copy; nothing is left in ``data_dir``.
    """
    root = input_pipeline.unprepared_root(dataset, data_dir)
    if root is None:
        return
    try:
        prepare_data.download_and_prepare(dataset, root)
    except (OSError, DataError) as e:
        reason = f"is not prepared and can't be downloaded ({e})"
        raise input_pipeline.not_prepared(dataset, data_dir, reason) from e


def run(config: ml_collections.ConfigDict, workdir: str) -> int:
    """Trains or evaluates as ``config`` says; returns the process exit code (`jresnet.errors`)."""

    def job() -> None:
        checks.validate(config)  # before any data is read or any process is contacted
        enable_compilation_cache(config.get("compilation_cache_dir", ""))
        parallel.initialize_distributed(config)
        prepare = functools.partial(prepare_if_missing, data_dir=config.data_dir or None)
        if config.eval_only:
            evaluate.evaluate_checkpoint(config, workdir, prepare_dataset=prepare)
        else:
            prepare(config.dataset)
            train.train_and_evaluate(config, workdir, input_pipeline.load_splits(config))

    return errors.run_cli(job)
