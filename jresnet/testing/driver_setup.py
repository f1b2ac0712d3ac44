"""The setup the checks of the fused training drivers share (the tests, ``tools/gpu_smoke.py``).

`resnet8` gives the keyword arguments of `jresnet.steps.make_train_fn` that do not depend on
where the batches come from, for a small network with the seed's recipe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jresnet import datasets, models, parallel, steps
from jresnet.configs import default


def resnet8(
    steps_per_epoch: int,
    *,
    dtype: str = "float32",
    devices: Sequence[jax.Device] | None = None,
) -> dict[str, Any]:
    """`steps.make_train_fn`'s ``model``, ``tx``, ``learning_rate_fn``, ``mean``, ``std``,
    ``augment`` and ``mesh``.

    ResNet-8 computing in ``dtype``; the default config's optimizer and learning-rate
    schedule (`steps.create_optimizer`, `steps.create_learning_rate_fn`) over epochs of
    ``steps_per_epoch`` steps; CIFAR normalisation; augmentation on; a mesh of ``devices``
    (default: every device). A fresh state: ``steps.create_train_state(key, model, tx)``.
    """
    config = default.get_config()
    learning_rate_fn = steps.create_learning_rate_fn(config, steps_per_epoch)
    mean, std = datasets.NORMALIZATIONS["cifar"]
    return {
        "model": models.create_model("resnet8", dtype=jnp.dtype(dtype)),
        "tx": steps.create_optimizer(config, learning_rate_fn),
        "learning_rate_fn": learning_rate_fn,
        "mean": mean,
        "std": std,
        "augment": True,
        "mesh": parallel.create_mesh(devices),
    }
