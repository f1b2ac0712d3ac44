"""Orbax checkpoints of jresnet runs: save, resume, and rebuild trained models.

Layout: ``<workdir>/checkpoints/<step>/`` with two items,

* ``state``: ``{"step", "params", "batch_stats", "opt_state"}`` (``opt_state`` is
  absent from converted PyTorch weights, which are saved at step 0), and
* ``config``: the run's `ml_collections` config as JSON, so a checkpoint
  rebuilds its model with no other input (`load_model`).

Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a run killed at any moment (even during a save) leaves only
complete checkpoints behind; leftovers are removed on the next start.

Retention: the latest ``keep`` checkpoints and the best one by eval accuracy.
(In orbax 0.12.8 ``max_to_keep`` together with ``best_fn`` keeps the N *best*
and deletes the latest, so an explicit preservation policy is used instead.)
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from jresnet import models
from jresnet.errors import JresnetError

CHECKPOINT_DIR = "checkpoints"
BEST_METRIC = "eval_accuracy"
# Config keys that determine the shapes of the saved variables: a checkpoint
# saved with other values can't be resumed or fine-tuned.
ARCHITECTURE_KEYS = ("model", "shortcut", "dataset")

log = logging.getLogger(__name__)

# Orbax warnings about settings jresnet chose on purpose: a manager opened read-only
# (load_model, eval_only, init_from), and the step-0 checkpoint of converted weights,
# which has no eval accuracy to rank by.
_EXPECTED_ORBAX_WARNINGS = (
    "Given directory is read only",
    "Requested `tracked_metric`; did not provide metrics.",
)


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


@contextlib.contextmanager
def _without_expected_orbax_warnings() -> Iterator[None]:
    """Drops `_EXPECTED_ORBAX_WARNINGS` (Orbax logs through absl's "absl" logger)."""
    orbax_logger = logging.getLogger("absl")
    drop = _DropMessages(_EXPECTED_ORBAX_WARNINGS)
    orbax_logger.addFilter(drop)
    try:
        yield
    finally:
        orbax_logger.removeFilter(drop)


class CheckpointError(JresnetError, RuntimeError):
    """A checkpoint that can't be used: unreadable, incompatible, or missing."""


def checkpoint_dir(workdir: str | os.PathLike[str]) -> str:
    """Absolute path of the checkpoint directory (Orbax rejects relative paths)."""
    return os.path.join(os.path.abspath(os.fspath(workdir)), CHECKPOINT_DIR)


def create_manager(
    workdir: str | os.PathLike[str], keep: int = 3, read_only: bool = False
) -> ocp.CheckpointManager:
    """A synchronous `CheckpointManager` keeping the latest ``keep`` and the best checkpoint."""
    policy = ocp.checkpoint_managers.AnyPreservationPolicy(
        [
            ocp.checkpoint_managers.LatestN(n=max(keep, 1)),
            ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=1),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        best_fn=lambda m: m[BEST_METRIC],
        best_mode="max",
        enable_async_checkpointing=False,
        read_only=read_only,
        create=not read_only,
        save_interval_steps=0 if read_only else 1,
    )
    with _without_expected_orbax_warnings():
        return ocp.CheckpointManager(
            checkpoint_dir(workdir),
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler(),
            },
        )


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Mapping[str, Any],
    config: ml_collections.ConfigDict,
    metrics: Mapping[str, float] | None = None,
) -> None:
    """Saves ``state`` (a dict of arrays) and ``config`` at ``step``; blocks until written."""
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(dict(state)),
            config=ocp.args.JsonSave(config.to_dict()),
        ),
        metrics=dict(metrics) if metrics is not None else None,
        force=True,
    )
    manager.wait_until_finished()


def read_config(manager: ocp.CheckpointManager, step: int) -> ml_collections.ConfigDict:
    """The config saved with checkpoint ``step``."""
    restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return ml_collections.ConfigDict(restored.config)


def restore_state(
    manager: ocp.CheckpointManager, step: int, target: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Restores the ``state`` item of checkpoint ``step``.

    With ``target`` (a pytree of arrays or ``jax.ShapeDtypeStruct``), the result
    has exactly its structure, dtypes and shardings; without it, nested dicts of
    arrays on this process's first device.
    """
    if target is not None:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, dict(target))
    else:  # onto this process's first device, whatever topology saved it
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            manager.item_metadata(step)["state"].tree,
        )
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
    )
    return dict(restored.state)


def saved_state_keys(manager: ocp.CheckpointManager, step: int) -> set[str]:
    """Top-level keys of the ``state`` item of checkpoint ``step`` (without reading arrays)."""
    try:
        return set(manager.item_metadata(step)["state"].tree)
    except Exception:  # unreadable metadata: let the restore report it
        return {"step", "params", "batch_stats", "opt_state"}


def restore_latest(
    manager: ocp.CheckpointManager,
    target: Mapping[str, Any] | None = None,
    config: ml_collections.ConfigDict | None = None,
) -> tuple[int, dict[str, Any], ml_collections.ConfigDict] | None:
    """Restores the newest readable checkpoint: ``(step, state, config)``, or None if none exist.

    With ``config``, the saved config must be compatible with it
    (`check_compatible`): an incompatible checkpoint raises `CheckpointError`
    before any state is read. An unreadable checkpoint is skipped with a
    warning and the previous one is tried; if checkpoints exist but none can be
    read, `CheckpointError` is raised (a run never silently restarts from
    scratch over them).
    """
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        return None
    errors = []
    for step in steps:
        try:
            saved_config = read_config(manager, step)
        except Exception as e:  # any failure means "unreadable"
            errors.append(_unreadable(step, e))
            continue
        if config is not None:
            check_compatible(saved_config, config, os.fspath(manager.directory))
        try:
            state = restore_state(manager, step, target)
        except Exception as e:  # any failure means "unreadable"
            errors.append(_unreadable(step, e))
            continue
        if errors:
            log.warning("Resuming from step %d; newer checkpoints were unreadable.", step)
        return step, state, saved_config
    raise CheckpointError(
        f"None of the checkpoints in {manager.directory} could be read; refusing to start "
        "from scratch over them. Move them away to start afresh. Errors:\n  " + "\n  ".join(errors)
    )


def _unreadable(step: int, error: Exception) -> str:
    message = f"step {step}: {type(error).__name__}: {str(error)[:500]}"
    log.warning("Checkpoint at step %d is unreadable (%s); trying the previous one.", step, message)
    return message


def check_compatible(
    saved: ml_collections.ConfigDict, current: ml_collections.ConfigDict, where: str
) -> None:
    """Raises `CheckpointError` naming every architecture key that differs."""
    diffs = [
        f"{key}: checkpoint has {saved.get(key)!r}, current config has {current.get(key)!r}"
        for key in ARCHITECTURE_KEYS
        if saved.get(key) != current.get(key)
    ]
    if diffs:
        raise CheckpointError(
            f"The checkpoint in {where} is incompatible with the current config:\n  "
            + "\n  ".join(diffs)
            + "\nUse the checkpoint's values, or another --workdir."
        )


def model_from_config(
    config: ml_collections.ConfigDict, axis_name: str | None = None
) -> models.ResNet:
    """Builds the `models.ResNet` a config describes."""
    from jresnet import input_pipeline  # local import: keeps the model importable alone

    return models.create_model(
        config.model,
        num_classes=input_pipeline.num_classes(config.dataset),
        shortcut=config.shortcut,
        weight_init=config.get("weight_init", "pytorch"),
        dtype=jax.numpy.dtype(config.get("dtype", "float32")),
        axis_name=axis_name,
    )


def save_pretrained(
    workdir: str | os.PathLike[str],
    variables: Mapping[str, Any],
    config: ml_collections.ConfigDict,
) -> str:
    """Writes ``{"params", "batch_stats"}`` as a step-0 checkpoint; returns its directory.

    Used for converted PyTorch weights: `load_model`, ``--config.eval_only`` and
    ``--config.init_from`` read it like any trained checkpoint.
    """
    with create_manager(workdir) as manager:
        if manager.all_steps():
            raise CheckpointError(
                f"{manager.directory} already holds checkpoints {manager.all_steps()}; "
                "choose an empty output directory."
            )
        state = {
            "step": 0,
            "params": variables["params"],
            "batch_stats": variables["batch_stats"],
        }
        with _without_expected_orbax_warnings():
            save(manager, 0, state, config)
        return checkpoint_dir(workdir)


def load_variables(
    workdir: str | os.PathLike[str], step: int | None = None
) -> tuple[dict[str, Any], ml_collections.ConfigDict]:
    """``({"params", "batch_stats"}, config)`` of one checkpoint of a work directory.

    Both come from the same checkpoint: ``step``, or the newest readable one
    (see `restore_latest`).
    """
    path = checkpoint_dir(workdir)
    if not os.path.isdir(path):
        raise CheckpointError(f"No checkpoints in {path}: is {workdir!r} a jresnet work directory?")
    with create_manager(workdir, read_only=True) as manager:
        if step is None:
            restored = restore_latest(manager)
            if restored is None:
                raise CheckpointError(f"No checkpoints in {path}.")
            _, state, config = restored
        else:
            if step not in manager.all_steps():
                raise CheckpointError(
                    f"No checkpoint at step {step} in {path}; available: {manager.all_steps()}"
                )
            config = read_config(manager, step)
            state = restore_state(manager, step)
    return {"params": state["params"], "batch_stats": state["batch_stats"]}, config


def load_model(
    workdir: str | os.PathLike[str], step: int | None = None
) -> tuple[models.ResNet, dict[str, Any]]:
    """Rebuilds a trained (or converted) model from its work directory.

    Args:
      workdir: the ``--workdir`` of a training run or of ``jresnet.convert``.
      step: checkpoint step; default the latest.

    Returns:
      ``(model, variables)`` with ``variables = {"params", "batch_stats"}``, so
      ``model.apply(variables, x, train=False)`` gives logits for NHWC images
      normalised as the saved config's ``normalization`` says.
    """
    variables, config = load_variables(workdir, step)
    return model_from_config(config), variables


def load_config(
    workdir: str | os.PathLike[str], step: int | None = None
) -> ml_collections.ConfigDict:
    """The config saved with a checkpoint (default: the latest) of ``workdir``."""
    with create_manager(workdir, read_only=True) as manager:
        steps = manager.all_steps()
        if not steps:
            raise CheckpointError(f"No checkpoints in {checkpoint_dir(workdir)}.")
        return read_config(manager, max(steps) if step is None else step)
