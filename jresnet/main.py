"""Runs the job a config asks for (train, or evaluate only) and returns the exit code.

The one place that validates a run's config (`configs.checks.validate`, once, before any data
is read or any process is contacted) and the one place that decides to download data: a
dataset that is not prepared is fetched (online) or explained (offline) here, never by the
modules below.
"""

from __future__ import annotations

import os
from collections.abc import Collection

import jax
import ml_collections

from jresnet import (
    errors,
    evaluate,
    input_pipeline,
    parallel,
    prepare_data,
    reporting,
    train,
    weights,
)
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


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    explicit_keys: Collection[str] | None = None,
) -> int:
    """Trains or evaluates as ``config`` says; returns the process exit code (`jresnet.errors`).

    ``explicit_keys``: the config keys the user set (``train.py`` passes those given as
    ``--config.KEY=VALUE``); weights given by ``init_from`` or evaluated by ``eval_only``
    bring their own architecture, dataset and normalisation for every other key
    (`jresnet.weights.settle`). None: the keys whose values differ from ``configs/default.py``.
    """
    explicit = weights.changed_keys(config) if explicit_keys is None else set(explicit_keys)

    def job() -> None:
        checks.validate(config)  # before any data is read or any process is contacted
        enable_compilation_cache(config.get("compilation_cache_dir", ""))
        parallel.initialize_distributed(config)
        if config.eval_only:
            evaluate.evaluate_checkpoint(
                config, workdir, prepare_dataset=prepare_if_missing, explicit=explicit
            )
            return
        run_config, init_variables = config, None
        if config.init_from:
            settings, init_variables = weights.load(config.init_from)
            run_config, line = weights.settle(
                config, settings, explicit, f"init_from {config.init_from}"
            )
            reporting.info(line)
        prepare_if_missing(run_config.dataset, run_config.data_dir or None)
        data = input_pipeline.load_splits(run_config)
        train.train_and_evaluate(run_config, workdir, data, init_variables)

    return errors.run_cli(job)
