"""Small PyTorch CIFAR ResNet state dicts and Flax variables that the weights tests share."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jresnet import models

try:
    import torch

    from jresnet.testing.torch_reference import randomize_batchnorm, torch_resnet
except ImportError:  # torch is in the test extra; the numpy-only tests still run without it
    torch = None

requires_torch = pytest.mark.skipif(torch is None, reason="needs torch (pip install torch)")


def random_variables(shortcut: str, depth: int = 8, num_classes: int = 10, seed: int = 0) -> dict:
    """Flax variables of the model's structure, every value random (BN variances positive)."""
    model = models.create_model(f"resnet{depth}", shortcut=shortcut, num_classes=num_classes)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: rng.uniform(0.5, 1.5, x.shape).astype(np.float32), shapes)


def torch_state_dict(shortcut: str, depth: int = 8, num_classes: int = 10) -> dict:
    torch.manual_seed(0)
    reference = torch_resnet(depth, shortcut, num_classes)
    randomize_batchnorm(reference)
    return reference.state_dict()


def akamaster_layout(state_dict: dict) -> dict:
    """As akamaster's files: ``module.`` prefix and no ``num_batches_tracked``."""
    return {
        f"module.{k}": v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")
    }


def assert_trees_equal(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
