"""Orbax checkpoints of jresnet runs: save, resume, and rebuild trained models.

Layout: ``<workdir>/checkpoints/<step>/`` with three items,

* ``state``: ``{"step", "params", "batch_stats", "opt_state"}`` (``opt_state`` is
  absent from converted PyTorch weights, which are saved at step 0);
* ``config``: the run's `ml_collections` config as JSON, so a checkpoint
  rebuilds its model with no other input (`load_model`);
* ``meta`` (JSON): the step, SHA-256 `digests` of the state, and what the
  training loop keeps with it (the metrics history, so ``metrics.jsonl`` can be
  rebuilt after a kill between the save and the metrics write).

Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a run killed at any moment (even during a save) leaves only
complete checkpoints behind; leftovers are removed on the next start. Only
finite states are saved. On restore, the digest and the step are checked: a
checkpoint whose bytes changed (or whose directory was renamed) is unreadable,
like a truncated one. A resuming run resumes from the newest readable checkpoint and
moves the newer unreadable ones aside into ``<workdir>/checkpoints-unreadable/`` (kept,
never deleted); when none is readable it refuses and moves nothing.

Retention: the latest ``keep`` checkpoints and the best one by eval accuracy.
(In orbax 0.12.8 ``max_to_keep`` together with ``best_fn`` keeps the N *best*
and deletes the latest, so an explicit preservation policy is used instead.)
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jresnet import models, parallel, reporting
from jresnet.configs.checks import ARCHITECTURE_KEYS
from jresnet.errors import CheckpointError, TrainingDivergedError

CHECKPOINT_DIR = "checkpoints"
UNREADABLE_DIR = "checkpoints-unreadable"
BEST_METRIC = "eval_accuracy"
# What Orbax appends to a checkpoint's directory name while it is being written.
_UNFINISHED_SUFFIX = ".orbax-checkpoint-tmp"

# Orbax warnings about settings jresnet chose on purpose: a manager opened read-only
# (load_model, eval_only, init_from), and checkpoints with no eval accuracy to rank by (the
# step-0 checkpoint of converted weights, a mid-epoch save after a stop request).
_EXPECTED_ORBAX_WARNINGS = (
    "Given directory is read only",
    "Requested `tracked_metric`; did not provide metrics.",
)
# A failed save (a full disk) makes each of Orbax's writer threads log the error with its
# traceback; `save` raises it once, as one line, instead.
_FAILED_SAVE_LOG_LINES = ("_SignalingThread.run() raised an exception",)


def _without_expected_orbax_warnings() -> contextlib.AbstractContextManager[None]:
    return reporting.without_log_lines(*_EXPECTED_ORBAX_WARNINGS)


class UnreadableCheckpointError(CheckpointError):
    """One checkpoint's files are damaged: truncated, missing, or not what was saved."""


def _host_leaves(tree: Any) -> list[tuple[str, np.ndarray]]:
    """``(path, host array)`` of every leaf, in a fixed (sorted path) order."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return sorted(
        (jax.tree_util.keystr(path), parallel.to_host(jax.numpy.asarray(leaf)))
        for path, leaf in leaves
    )


def digests(state: Mapping[str, Any]) -> dict[str, str]:
    """SHA-256 of each part of ``state`` but ``step`` (whose value `_verify` checks):
    over every leaf's path, dtype, shape and bytes (a few MB: milliseconds)."""
    out = {}
    for key in sorted(set(state) - {"step"}):
        h = hashlib.sha256()
        for path, value in _host_leaves(state[key]):
            h.update(f"{path}:{value.dtype.str}:{value.shape};".encode())
            h.update(np.ascontiguousarray(value).tobytes())
        out[key] = h.hexdigest()
    return out


def nonfinite_leaves(state: Mapping[str, Any]) -> list[str]:
    """Paths of the floating-point leaves that hold a NaN or an infinity."""
    return [
        path
        for path, value in _host_leaves(dict(state))
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value))
    ]


def _variables(state: Mapping[str, Any]) -> dict[str, Any]:
    return {"params": state["params"], "batch_stats": state["batch_stats"]}


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return error


def checkpoint_dir(workdir: str | os.PathLike[str]) -> str:
    """Absolute path of the checkpoint directory (Orbax rejects relative paths)."""
    return os.path.join(os.path.abspath(os.fspath(workdir)), CHECKPOINT_DIR)


def unfinished_saves(workdir: str | os.PathLike[str]) -> list[str]:
    """The temporary directories of Orbax saves that never finished (a killed process)."""
    path = checkpoint_dir(workdir)
    if not os.path.isdir(path):
        return []
    return sorted(n for n in os.listdir(path) if _UNFINISHED_SUFFIX in n)


def remove_unfinished(workdir: str | os.PathLike[str]) -> None:
    """Deletes `unfinished_saves`. Only for the holder of the work directory's lock: an
    unfinished save of a live process is its own."""
    for name in unfinished_saves(workdir):
        shutil.rmtree(os.path.join(checkpoint_dir(workdir), name), ignore_errors=True)


def _no_checkpoints(workdir: str | os.PathLike[str]) -> CheckpointError:
    path = checkpoint_dir(workdir)
    unfinished = unfinished_saves(workdir)
    if unfinished:
        return CheckpointError(
            f"No finished checkpoints in {path}: only {', '.join(unfinished)}, left by a save "
            "that was killed before it completed. Run the training or conversion into it again "
            "(which removes it), or delete it."
        )
    return CheckpointError(f"No checkpoints in {path}.")


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
                "meta": ocp.JsonCheckpointHandler(),
            },
        )


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Mapping[str, Any],
    config: ml_collections.ConfigDict,
    metrics: Mapping[str, float] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> None:
    """Saves ``state`` (a dict of arrays), ``config`` and ``meta`` at ``step``; blocks.

    ``metrics`` (``eval_accuracy``) ranks the checkpoint for retention. A state with a
    NaN or an infinity is never saved: `TrainingDivergedError` names its leaves, and the
    checkpoints already saved stay as they are. A failed write (a full disk, say) raises
    `CheckpointError` with the cause; the earlier checkpoints are intact.
    """
    bad = nonfinite_leaves(state)
    if bad:
        raise TrainingDivergedError(
            f"the state at step {step} holds NaN or infinite values ({len(bad)} arrays, e.g. "
            f"{', '.join(bad[:3])}): training diverged. It was not saved; the checkpoints in "
            f"{manager.directory} are intact and finite. Lower --config.learning_rate or check "
            "the data, then rerun to resume from the last checkpoint."
        )
    meta = {**(meta or {}), "step": step, "digests": digests(state)}
    try:
        # A mid-epoch save (a stop request) has no eval accuracy: Orbax's "tracked_metric"
        # warning is expected there (issue 20 L10).
        with (
            _without_expected_orbax_warnings(),
            reporting.without_log_lines(*_FAILED_SAVE_LOG_LINES),
        ):
            manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(dict(state)),
                    config=ocp.args.JsonSave(config.to_dict()),
                    meta=ocp.args.JsonSave(meta),
                ),
                metrics=dict(metrics) if metrics is not None else None,
                force=True,
            )
            manager.wait_until_finished()
    except Exception as e:  # Orbax and TensorStore wrap OS errors in their own types
        raise CheckpointError(
            f"could not write the checkpoint at step {step} in {manager.directory}: "
            f"{_reason(e)}. The earlier checkpoints are intact; fix the "
            "cause (e.g. free disk space) and rerun the same command to resume."
        ) from e


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    """The ``meta`` item of checkpoint ``step``.

    Raises `UnreadableCheckpointError` if it is missing: without its digests a
    checkpoint's state can't be checked, so no reader uses it.
    """
    if not os.path.isdir(os.path.join(os.fspath(manager.directory), str(step), "meta")):
        raise UnreadableCheckpointError(
            "its 'meta' item (the digests of its state) is missing, so its state can't be checked"
        )
    restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored.meta)


def _verify(step: int, state: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    """Raises `UnreadableCheckpointError` if ``state`` is not what was saved at ``step``."""
    if "step" in meta and meta["step"] != step:
        raise UnreadableCheckpointError(
            f"its directory says step {step} but it was saved at step {meta['step']}"
        )
    saved = meta.get("digests")
    if not isinstance(saved, dict) or not {"params", "batch_stats"} <= set(saved):
        raise UnreadableCheckpointError("its 'meta' item holds no digests of its state")
    for key, value in digests({k: v for k, v in state.items() if k in saved}).items():
        if value != saved[key]:
            raise UnreadableCheckpointError(
                f"its {key} differ from what was saved (digest mismatch)"
            )


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
    move_unreadable: bool = False,
) -> tuple[int, dict[str, Any], ml_collections.ConfigDict, dict[str, Any]] | None:
    """The newest readable checkpoint: ``(step, state, config, meta)``, or None if none exist.

    With ``config``, the saved config must be compatible with it (`check_compatible`):
    an incompatible checkpoint raises `CheckpointError` before any state is read. An
    unreadable checkpoint (damaged files, wrong digest or step) is skipped with a warning
    and the previous one is tried. ``move_unreadable`` is for a run about to write new
    checkpoints: once a readable checkpoint is found, the newer unreadable ones are moved
    into ``<workdir>/checkpoints-unreadable/`` (kept), so the run can save those steps
    again. If checkpoints exist but none can be read, `CheckpointError` is raised and
    nothing is moved: every later run refuses the same way, never starting from scratch
    over them (which would rewrite ``metrics.jsonl``).
    """
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        return None
    unreadable: list[tuple[int, str]] = []
    for step in steps:
        try:
            saved_config = read_config(manager, step)
            meta = read_meta(manager, step)
        except Exception as e:  # any failure to read means "unreadable"
            unreadable.append((step, _unreadable(step, e)))
            continue
        if config is not None:
            check_compatible(saved_config, config, os.fspath(manager.directory))
        try:
            state = restore_state(manager, step, target)
            # Without a target, Orbax rebuilds optimizer states as plain containers (other
            # paths), so only the variables are compared.
            _verify(step, state if target is not None else _variables(state), meta)
        except Exception as e:  # any failure to read means "unreadable"
            unreadable.append((step, _unreadable(step, e)))
            continue
        if unreadable:
            if move_unreadable:
                _move_aside(manager, [s for s, _ in unreadable])
            reporting.warn(f"resuming from step {step}; newer checkpoints were unreadable")
        return step, state, saved_config, meta
    reasons = "; ".join(reason for _, reason in unreadable[:2])
    if move_unreadable:  # a training run
        raise CheckpointError(
            f"none of the {len(steps)} checkpoints in {manager.directory} can be read "
            f"({reasons}); refusing to start from scratch over them, and they are left in "
            "place. To start afresh, move that directory away or choose another --workdir."
        )
    raise CheckpointError(
        f"none of the {len(steps)} checkpoints in {manager.directory} can be read ({reasons})"
    )


def _reason(error: BaseException) -> str:
    """One line on why a checkpoint could not be read (the innermost error's first line:
    Orbax's outer errors print whole TensorStore specs)."""
    cause = _root_cause(error)
    line = (str(cause).strip().splitlines() or [""])[0]
    if len(line) > 400:  # the middle goes: the start says what, the end why (the OS error)
        line = f"{line[:150]} ... {line[-250:]}"
    return f"{type(cause).__name__}: {line}"


def _unreadable(step: int, error: Exception) -> str:
    message = f"step {step}: {_reason(error)}"
    reporting.warn(f"the checkpoint at step {step} is unreadable ({_reason(error)})")
    return message


def _move_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
    """Moves checkpoints ``steps`` into ``<workdir>/checkpoints-unreadable/`` (kept)."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for step in steps:
        source = os.path.join(os.fspath(manager.directory), str(step))
        target = os.path.join(os.path.dirname(source) + "-unreadable", f"{step}-{stamp}")
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(source, target)
        reporting.warn(f"step {step} is unreadable: Moved it to {target} (kept, not deleted)")
    if jax.process_count() > 1:  # every process sees the moves before it reloads
        multihost_utils.sync_global_devices(f"jresnet-moved-unreadable-{steps[0]}")
    manager.reload()


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
                raise _no_checkpoints(workdir)
            _, state, config, _ = restored
        else:
            if step not in manager.all_steps():
                raise CheckpointError(
                    f"No checkpoint at step {step} in {path}; available: {manager.all_steps()}"
                )
            config = read_config(manager, step)
            state = _variables(restore_state(manager, step))
            _verify(step, state, read_meta(manager, step))
    return _variables(state), config


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
    return models.from_config(config), variables


def load_config(
    workdir: str | os.PathLike[str], step: int | None = None
) -> ml_collections.ConfigDict:
    """The config saved with a checkpoint (default: the latest) of ``workdir``."""
    with create_manager(workdir, read_only=True) as manager:
        steps = manager.all_steps()
        if not steps:
            raise _no_checkpoints(workdir)
        return read_config(manager, max(steps) if step is None else step)
