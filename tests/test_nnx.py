"""Flax NNX programs use jresnet's (linen) models and pretrained variables via flax.nnx.bridge.

What the README's NNX example does, checked against linen: eval mode with the
running statistics, train mode with batch statistics that update the NNX
module's ``BatchStat`` variables as linen's ``mutable=["batch_stats"]`` does,
an ``nnx.jit`` SGD step equal to the same step in linen, and the way back to
linen variables (and so to PyTorch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.nnx.bridge import variables as bridge_variables

from jresnet import torch_layouts
from tests.conftest import model_with_random_statistics


def to_nnx(model, variables, sample):
    """The README's recipe: wrap, create the variables' shapes, then load the given values."""
    module = nnx.bridge.ToNNX(model, rngs=nnx.Rngs(0))
    nnx.bridge.lazy_init(module, sample)
    nnx.update(module, bridge_variables.linen_vars_to_nnx_attrs(variables))
    return module


def batch(seed: int = 1, n: int = 8):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, 32, 32, 3)), jnp.float32)
    return x, jnp.asarray(rng.integers(0, 10, n))


def test_eval_and_train_mode_match_linen() -> None:
    model, variables = model_with_random_statistics()
    x, _ = batch()
    module = to_nnx(model, variables, x[:1])

    np.testing.assert_array_equal(module(x, train=False), model.apply(variables, x, train=False))
    stats_before = nnx.to_pure_dict(nnx.state(module, nnx.BatchStat))
    np.testing.assert_array_equal(
        stats_before["bn1"]["var"], variables["batch_stats"]["bn1"]["var"]
    )

    expected, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_array_equal(module(x, train=True, mutable=["batch_stats"]), expected)
    stats_after = nnx.to_pure_dict(nnx.state(module, nnx.BatchStat))
    jax.tree.map(np.testing.assert_array_equal, stats_after, updates["batch_stats"])
    # Eval mode reads, never writes, the statistics.
    module(x, train=False)
    jax.tree.map(
        np.testing.assert_array_equal,
        nnx.to_pure_dict(nnx.state(module, nnx.BatchStat)),
        updates["batch_stats"],
    )


@pytest.mark.slow
def test_nnx_sgd_step_equals_linen_and_converts_back() -> None:
    model, variables = model_with_random_statistics()
    x, y = batch()
    module = to_nnx(model, variables, x[:1])
    optimizer = nnx.Optimizer(module, optax.sgd(0.1), wrt=nnx.Param)

    @nnx.jit
    def nnx_step(module, optimizer, x, y):
        def loss_fn(module):
            logits = module(x, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(module)
        optimizer.update(module, grads)
        return loss

    def linen_loss(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates

    (loss, updates), grads = jax.value_and_grad(linen_loss, has_aux=True)(variables["params"])
    params = jax.tree.map(lambda p, g: p - 0.1 * g, variables["params"], grads)

    np.testing.assert_allclose(nnx_step(module, optimizer, x, y), loss, rtol=1e-6)
    trained = {
        "params": nnx.to_pure_dict(nnx.state(module, nnx.Param)),
        "batch_stats": nnx.to_pure_dict(nnx.state(module, nnx.BatchStat)),
    }
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), trained["params"], params
    )
    jax.tree.map(  # jitted (NNX) against eager (linen) rounding
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
        trained["batch_stats"],
        updates["batch_stats"],
    )
    # The NNX state is linen's variables again: it goes to PyTorch like any jresnet model.
    state_dict = torch_layouts.flax_to_torch(trained)
    np.testing.assert_allclose(
        state_dict["linear.weight"], np.asarray(params["linear"]["kernel"]).T, atol=1e-6
    )
