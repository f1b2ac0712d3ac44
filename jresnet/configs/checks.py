"""What a config may hold, and which of its keys a checkpoint cares about.

`validate` rejects unusable values before any data is read, naming every bad key. The key
lists say what a resume may change:

* `ARCHITECTURE_KEYS` fix the shapes of the saved variables: a checkpoint saved with other
  values can't be resumed or fine-tuned (refused).
* `STEP_KEYS` fix what a step *is* (which examples, how many per step): a resume that changes
  them would reinterpret the saved step count (refused).
* `NUMERIC_KEYS` change the numbers but not the meaning of a step: a resume with other values
  trains on, with a warning that it no longer matches an uninterrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from jresnet import datasets, models
from jresnet.errors import ConfigError

SCHEDULES = ("cosine_epoch", "cosine", "multistep", "constant")
DTYPES = ("float32", "bfloat16")

ARCHITECTURE_KEYS = ("model", "shortcut", "dataset")
STEP_KEYS = ("train_split", "batch_size")
NUMERIC_KEYS = (
    "num_epochs",
    "learning_rate",
    "momentum",
    "weight_decay",
    "schedule",
    "lr_boundaries",
    "warmup_steps",
    "warmup_learning_rate",
    "augment",
    "normalization",
    "seed",
    "dtype",
    "steps_per_call",
)

_POSITIVE_INTS = (
    "num_epochs",
    "batch_size",
    "eval_batch_size",
    "log_every_steps",
    "steps_per_call",
    "checkpoints_to_keep",
    "coordinator_timeout_s",
)
_NON_NEGATIVE_INTS = ("seed", "warmup_steps")
# Integers become C int64s (jax.random.key's seed, step counters): larger ones overflow.
MAX_INT = 2**63 - 1
_NON_NEGATIVE_NUMBERS = ("learning_rate", "momentum", "weight_decay", "warmup_learning_rate")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _choice(config: ml_collections.ConfigDict, key: str, choices: Sequence[str]) -> list[str]:
    value = config.get(key)
    if value in choices:
        return []
    return [f"--config.{key} must be one of {sorted(choices)}, got {value!r}"]


def _boundaries(value: Any) -> list[str]:
    if (
        isinstance(value, (list, tuple))
        and all(_is_int(b) and b > 0 for b in value)
        and list(value) == sorted(set(value))
    ):
        return []
    return [
        "--config.lr_boundaries must be increasing positive step numbers, e.g. "
        f"--config.lr_boundaries='(32000, 48000)', got {value!r}"
    ]


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises `ConfigError` naming every unusable value (before any data is read)."""
    problems = []
    try:
        models.create_model(config.model)
    except ValueError as e:
        problems.append(f"--config.model: {e}")
    problems += _choice(config, "shortcut", ("A", "B"))
    problems += _choice(config, "weight_init", tuple(models.KERNEL_INITS))
    problems += _choice(config, "dataset", tuple(datasets.DATASETS))
    problems += _choice(config, "normalization", tuple(datasets.NORMALIZATIONS))
    problems += _choice(config, "dtype", DTYPES)
    problems += _choice(config, "schedule", SCHEDULES)
    for key in _POSITIVE_INTS:
        value = config.get(key)
        if not _is_int(value) or not 0 < value <= MAX_INT:
            problems.append(
                f"--config.{key} must be a positive integer (at most 2**63 - 1), got {value!r}"
            )
    for key in _NON_NEGATIVE_INTS:
        value = config.get(key)
        if not _is_int(value) or not 0 <= value <= MAX_INT:
            problems.append(
                f"--config.{key} must be an integer >= 0 and <= 2**63 - 1, got {value!r}"
            )
    for key in _NON_NEGATIVE_NUMBERS:
        value = config.get(key)
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value < 0
        ):
            problems.append(f"--config.{key} must be a finite number >= 0, got {value!r}")
    if config.schedule == "multistep":
        problems += _boundaries(config.get("lr_boundaries"))
        if config.get("warmup_steps", 0) and not config.get("warmup_learning_rate"):
            problems.append("--config.warmup_learning_rate must be > 0 with warmup_steps")
    if problems:
        if len(problems) == 1:
            raise ConfigError(f"invalid config: {problems[0]}")
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def _as_saved(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value  # JSON has no tuples


def changed_keys(
    saved: Mapping[str, Any], current: ml_collections.ConfigDict, keys: Sequence[str]
) -> list[str]:
    """``"key saved -> current"`` for each of ``keys`` whose value differs."""
    return [
        f"{key} {saved.get(key)!r} -> {current.get(key)!r}"
        for key in keys
        if key in saved and _as_saved(saved.get(key)) != _as_saved(current.get(key))
    ]
