"""``--config.eval_only``: the eval metrics of a trained or converted model, then exit.

The model is the one its weights were saved with (`jresnet.weights`): a work directory's
checkpoint brings its own architecture, dataset and normalisation; the split, data_dir and
batch size come from the current config.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import ml_collections

from jresnet import (
    checkpoint,
    datasets,
    input_pipeline,
    models,
    parallel,
    reporting,
    steps,
    weights,
)


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    workdir: str,
    prepare_dataset: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluates the latest checkpoint in ``workdir`` (else ``--config.init_from``).

    Prints a summary line and the metrics as one JSON line on stdout; returns the metrics
    (``eval_loss``, ``eval_accuracy``, ``eval_count``). Writes nothing: ``workdir`` is not
    created. ``config`` must be valid (`configs.checks.validate`, which `jresnet.main` runs).
    ``prepare_dataset``, if given, is called with the model's dataset name before its eval
    split is read (`jresnet.main` passes the one that downloads a missing dataset).
    """
    source = workdir
    if not os.path.isdir(checkpoint.checkpoint_dir(workdir)) and config.init_from:
        source = config.init_from
    model_config, variables = weights.load(source, config)
    mesh = parallel.create_mesh()
    mean, std = datasets.NORMALIZATIONS[model_config.normalization]
    eval_fn = steps.make_eval_fn(models.from_config(model_config), mean, std, mesh)
    if prepare_dataset is not None:
        prepare_dataset(model_config.dataset)
    images, labels = input_pipeline.load_split(
        model_config.dataset, config.eval_split, config.data_dir or None
    )
    variables = parallel.replicate(variables, mesh)
    metrics = steps.evaluate(eval_fn, variables, images, labels, config.eval_batch_size, mesh)
    reporting.info(
        f"{source}: {model_config.model} (shortcut {model_config.shortcut}) on "
        f"{model_config.dataset} {config.eval_split}: accuracy "
        f"{100 * metrics['eval_accuracy']:.2f}% ({metrics['eval_count']:,} images), "
        f"loss {metrics['eval_loss']:.4f}"
    )
    print(json.dumps(metrics), file=sys.stdout, flush=True)
    return metrics
