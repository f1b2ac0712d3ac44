"""jresnet.conv: lax's convolution, with ResNet's stride-2 input gradient computed by phases."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jresnet import conv
from tests.conftest import random_normal

NHWC = ("NHWC", "HWIO", "NHWC")


def _grads(conv_fn, x, kernel, stride, padding):
    """(y, dx, dkernel) of ``sum(y * cotangent)`` for a fixed random cotangent."""

    def f(x, kernel):
        return conv_fn(x, kernel, (stride, stride), padding, dimension_numbers=NHWC)

    y, vjp = jax.vjp(f, x, kernel)
    return (y, *vjp(random_normal(y.shape, seed=9, dtype=y.dtype)))


@pytest.mark.parametrize("size,c_in,c_out", [(8, 3, 5), (6, 4, 4), (2, 2, 3)])
def test_stride2_gradients_equal_lax_in_float64(size, c_in, c_out):
    with jax.enable_x64():
        x = random_normal((3, size, size, c_in), dtype=jnp.float64)
        kernel = random_normal((3, 3, c_in, c_out), seed=1, dtype=jnp.float64)
        ours = _grads(conv.conv_general_dilated, x, kernel, 2, ((1, 1), (1, 1)))
        reference = _grads(lax.conv_general_dilated, x, kernel, 2, ((1, 1), (1, 1)))
    for a, b in zip(ours, reference, strict=True):
        assert a.dtype == jnp.float64
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_phases_reach_every_input_pixel_from_the_right_taps():
    # One output pixel with gradient 1 and a kernel of distinct tap numbers: each input
    # pixel's gradient names the tap that read it (0 where none did).
    kernel = jnp.arange(1.0, 10.0).reshape(3, 3, 1, 1)
    dy = jnp.zeros((1, 2, 2, 1)).at[0, 1, 1, 0].set(1.0)  # output (1, 1) reads rows/cols 1-3
    dx = conv.input_grad_by_phases(kernel, dy)[0, :, :, 0]
    expected = np.zeros((4, 4))
    expected[1:4, 1:4] = np.arange(1.0, 10.0).reshape(3, 3)
    np.testing.assert_array_equal(dx, expected)


def test_float32_stride2_input_gradient_within_rounding_of_lax():
    x = random_normal((4, 16, 16, 8))
    kernel = random_normal((3, 3, 8, 16), seed=1)
    ours = _grads(conv.conv_general_dilated, x, kernel, 2, ((1, 1), (1, 1)))
    reference = _grads(lax.conv_general_dilated, x, kernel, 2, ((1, 1), (1, 1)))
    np.testing.assert_array_equal(ours[0], reference[0])  # the forward pass is lax's own
    np.testing.assert_array_equal(ours[2], reference[2])  # and so is the kernel gradient
    # Both sum the same 16 x 9 products per input pixel, in orders that depend on the CPU's
    # kernels (AVX-512 or not): equal within a few float32 ulps of the largest gradient.
    ulps = 16 * np.finfo(np.float32).eps * np.abs(reference[1]).max()
    np.testing.assert_allclose(ours[1], reference[1], rtol=0, atol=ulps)


@pytest.mark.parametrize(
    "size,stride,padding",
    [(8, 1, ((1, 1), (1, 1))), (7, 2, ((1, 1), (1, 1))), (8, 2, "SAME"), (8, 2, ((0, 1), (0, 1)))],
)
def test_other_convolutions_are_lax_exactly(size, stride, padding):
    x = random_normal((2, size, size, 3))
    kernel = random_normal((3, 3, 3, 4), seed=1)
    ours = _grads(conv.conv_general_dilated, x, kernel, stride, padding)
    reference = _grads(lax.conv_general_dilated, x, kernel, stride, padding)
    for a, b in zip(ours, reference, strict=True):
        np.testing.assert_array_equal(a, b)


def _convolutions_with_dilated_input(fn, *args) -> int:
    text = jax.jit(fn).lower(*args).as_text()
    return sum("lhs_dilate = [2, 2]" in line for line in text.splitlines())


def test_cpu_input_gradient_has_no_zero_dilated_convolution():
    x = random_normal((2, 8, 8, 3))
    kernel = random_normal((3, 3, 3, 4), seed=1)

    def loss(conv_fn):
        return lambda x: jnp.sum(
            conv_fn(x, kernel, (2, 2), ((1, 1), (1, 1)), dimension_numbers=NHWC)
        )

    assert _convolutions_with_dilated_input(jax.grad(loss(lax.conv_general_dilated)), x) > 0
    assert _convolutions_with_dilated_input(jax.grad(loss(conv.conv_general_dilated)), x) == 0


def test_flax_conv_with_it_keeps_parameters_and_dtype():
    x = random_normal((2, 8, 8, 3))
    plain = nn.Conv(4, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False)
    ours = plain.clone(conv_general_dilated=conv.conv_general_dilated)
    variables = plain.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(
        jnp.shape, variables
    )
    np.testing.assert_array_equal(ours.apply(variables, x), plain.apply(variables, x))
    bf16 = ours.clone(dtype=jnp.bfloat16)
    grad = jax.grad(lambda x: jnp.sum(bf16.apply(variables, x).astype(jnp.float32)))(x)
    assert grad.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(grad)))
