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
from collections.abc import Callable, Collection, Mapping
from typing import Any

import ml_collections
from jax.sharding import Mesh

from jresnet import (
    checkpoint,
    datasets,
    input_pipeline,
    models,
    parallel,
    reporting,
    results,
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
    (``eval_loss``, ``eval_accuracy``, ``eval_count``; with ``--config.test_split``, also
    `results.TEST_FIELDS`: the latest and the best checkpoint, by the eval accuracy recorded
    in training, on the test split). Writes nothing: ``workdir`` is not
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
    if config.test_split:
        final_step, best = _latest_step_and_best(source)
        test = final_and_best_on_test(
            config, model_config.dataset, eval_fn, mesh, variables, final_step, source, best
        )
        metrics.update(test)
        best_part = (
            f", best checkpoint (epoch {test['best_epoch']}, by eval accuracy) "
            f"{100 * test['best_test_accuracy']:.2f}%"
            if best is not None
            else ""
        )
        reporting.info(
            f"{source}: on {model_config.dataset} {config.test_split}: final model "
            f"{100 * test['final_test_accuracy']:.2f}%{best_part} "
            f"({test['test_count']:,} images)"
        )
    print(json.dumps(metrics), file=sys.stdout, flush=True)
    return metrics


def _latest_step_and_best(source: str) -> tuple[int | None, Mapping[str, Any] | None]:
    """The latest checkpoint's step in work directory ``source`` and the epoch record of its
    best checkpoint by eval accuracy (`results.best_record`, from the latest checkpoint's
    history); ``(None, None)`` for a file or published weights, and no best for converted
    weights (no history)."""
    if not os.path.isdir(checkpoint.checkpoint_dir(source)):
        return None, None
    with checkpoint.create_manager(source, read_only=True) as manager:
        kept = manager.all_steps()
        latest = max(kept)
        history = checkpoint.read_meta(manager, latest).get("history") or []
    return latest, results.best_record(history, kept)


def final_and_best_on_test(
    config: ml_collections.ConfigDict,
    dataset: str,
    eval_fn: Callable[..., Any],
    mesh: Mesh,
    final_variables: Mapping[str, Any],
    final_step: int,
    workdir: str,
    best: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Evaluates the final model and the best checkpoint on ``config.test_split`` (once each).

    Args:
      config: gives ``test_split``, ``data_dir`` and ``eval_batch_size``.
      dataset: the dataset whose test split is read (the model's).
      eval_fn: `steps.make_eval_fn` of the model; ``mesh`` its devices.
      final_variables: ``{"params", "batch_stats"}`` of the final model, on ``mesh``.
      final_step: the final model's step.
      workdir: where the best checkpoint is read from (its digests verified).
      best: the epoch record (``step``, ``epoch``) of the best checkpoint by eval accuracy
        (`results.best_record`); None if there is none (converted or given weights).

    Returns:
      `results.test_fields`: accuracies as fractions.
    """
    images, labels = input_pipeline.load_split(dataset, config.test_split, config.data_dir or None)

    def evaluate(variables: Mapping[str, Any]) -> dict[str, float]:
        return steps.evaluate(eval_fn, variables, images, labels, config.eval_batch_size, mesh)

    final = evaluate(final_variables)
    best_metrics = None
    if best is not None:
        if best["step"] == final_step:
            best_metrics = final
        else:
            variables, _ = checkpoint.load_variables(workdir, best["step"])
            best_metrics = evaluate(parallel.replicate(variables, mesh))
    return results.test_fields(final, best_metrics, best["epoch"] if best else None)
