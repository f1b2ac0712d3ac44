"""``--config.dtype=bfloat16``: bf16 convolutions and activations, everything else float32.

Checked on the train step itself: its state (parameters, optimizer state, BatchNorm
statistics) and its loss stay float32, the logits are float32, and every convolution of
the forward and backward pass is a bf16 convolution in the lowered program (float32 ones in
the float32 model, as a control).
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jresnet import models, steps
from jresnet.configs import default

# `%y = stablehlo.convolution(%x, %w) ... : (tensor<AxBxf32>, tensor<...>) -> tensor<...>`
_CONV_TYPES = re.compile(
    r"stablehlo\.convolution\(.*: \((tensor<[^>]*>), (tensor<[^>]*>)\) -> (tensor<[^>]*>)"
)


def _setup(dtype):
    config = default.get_config()
    lr_fn = steps.create_learning_rate_fn(config, steps_per_epoch=10)
    tx = steps.create_optimizer(config, lr_fn)
    model = models.create_model("resnet8", dtype=dtype)
    state = steps.create_train_state(jax.random.key(0), model, tx)
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.normal(size=(8, 32, 32, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, 8), jnp.int32),
    }
    step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, learning_rate_fn=lr_fn))
    return model, state, batch, step


def _float_dtypes(tree):
    return {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


def _convolution_types(lowered_text):
    """The element types (input, kernel, output) of every convolution in a StableHLO module."""
    found = []
    for line in lowered_text.splitlines():
        match = _CONV_TYPES.search(line)
        if match:
            found.append(tuple(t.rsplit("x", 1)[-1].rstrip(">") for t in match.groups()))
    return found


def test_bfloat16_keeps_state_loss_and_logits_float32():
    model, state, batch, step = _setup(jnp.bfloat16)
    new_state, metrics = step(state, batch)
    for tree in (state, new_state):
        assert _float_dtypes(tree.params) == {jnp.dtype(jnp.float32)}
        assert _float_dtypes(tree.batch_stats) == {jnp.dtype(jnp.float32)}
        assert _float_dtypes(tree.opt_state) == {jnp.dtype(jnp.float32)}
    assert metrics["loss"].dtype == jnp.float32 and np.isfinite(metrics["loss"])
    assert metrics["accuracy"].dtype == jnp.float32
    variables = {"params": new_state.params, "batch_stats": new_state.batch_stats}
    assert model.apply(variables, batch["image"]).dtype == jnp.float32
    # The step changed the running statistics (they are updated, in float32).
    changed = jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)), state.batch_stats, new_state.batch_stats
    )
    assert all(jax.tree.leaves(changed))


@pytest.mark.parametrize("dtype,element", [(jnp.bfloat16, "bf16"), (jnp.float32, "f32")])
def test_every_convolution_of_the_train_step_computes_in_the_model_dtype(dtype, element):
    _, state, batch, step = _setup(dtype)
    convolutions = _convolution_types(step.lower(state, batch).as_text())
    # ResNet-8, option B: 9 convolutions forward; backward, 9 kernel gradients and the
    # input gradients of all but the first.
    assert len(convolutions) >= 9 + 9 + 8, convolutions
    assert set(convolutions) == {(element, element, element)}, set(convolutions)
