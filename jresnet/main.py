"""Runs a configured job and turns expected failures into a message and an exit code."""

from __future__ import annotations

import os
import sys

import jax
import ml_collections

from jresnet import checkpoint, convert, input_pipeline, parallel, train

# Failures caused by the user's input or environment: a message, no traceback.
EXPECTED_ERRORS = (
    train.ConfigError,
    checkpoint.CheckpointError,
    input_pipeline.DatasetNotFoundError,
    input_pipeline.DataError,
    convert.ConversionError,
)
EXIT_USAGE = 2
EXIT_DIVERGED = 3


def enable_compilation_cache(path: str) -> None:
    """Caches compiled XLA programs in ``path`` (e.g. across restarts of a run)."""
    if path:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))


def run(config: ml_collections.ConfigDict, workdir: str) -> int:
    """Trains or evaluates as ``config`` says; returns the process exit code."""
    try:
        enable_compilation_cache(config.get("compilation_cache_dir", ""))
        parallel.initialize_distributed(config)
        train.train_and_evaluate(config, workdir)
    except train.TrainingDivergedError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except EXPECTED_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return 0
