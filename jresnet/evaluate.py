"""``--config.eval_only``: the eval metrics of a trained or converted model, then exit.

The model is the one its weights bring (`jresnet.weights.settle`): a work directory's
checkpoint, a file or a published name gives the architecture, dataset, normalisation and
(for a trained work directory) the data_dir, unless the user set them explicitly; the split
and batch size come from the current config.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Collection
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
    prepare_dataset: Callable[[str, str | None], None] | None = None,
    explicit: Collection[str] | None = None,
) -> dict[str, Any]:
    """Evaluates the latest checkpoint in ``workdir`` (else ``--config.init_from``).

    ``explicit``: the config keys the user set (`jresnet.weights.settle`); None means those
    that differ from ``configs/default.py``. Prints the settings taken from the weights, a
    summary line and the metrics as one JSON line on stdout; returns the metrics
    (``eval_loss``, ``eval_accuracy``, ``eval_count``). Writes nothing: ``workdir`` is not
    created. ``config`` must be valid (`configs.checks.validate`, which `jresnet.main` runs).
    ``prepare_dataset``, if given, is called with the model's dataset name and the data_dir
    before its eval split is read (`jresnet.main` passes the one that downloads a missing
    dataset).
    """
    source, role = workdir, "eval_only"
    if not os.path.isdir(checkpoint.checkpoint_dir(workdir)) and config.init_from:
        source, role = config.init_from, "eval_only init_from"
    settings, variables = weights.load(source)
    if explicit is None:
        explicit = weights.changed_keys(config)
    config, line = weights.settle(config, settings, explicit, f"{role} {source}", weights.EVAL_KEYS)
    reporting.info(line)
    model_config = config.copy_and_resolve_references()
    model_config.weight_init, model_config.dtype = settings.weight_init, settings.dtype
    if "dtype" in explicit:
        model_config.dtype = config.dtype
    mesh = parallel.create_mesh()
    mean, std = datasets.NORMALIZATIONS[model_config.normalization]
    eval_fn = steps.make_eval_fn(models.from_config(model_config), mean, std, mesh)
    if prepare_dataset is not None:
        prepare_dataset(model_config.dataset, config.data_dir or None)
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
