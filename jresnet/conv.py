"""`lax.conv_general_dilated` with a cheaper input gradient for ResNet's stride-2 3x3 convolutions.

XLA differentiates a stride-2 convolution with respect to its input as a stride-1
convolution over the output gradient ``dy`` dilated with zeros (``lhs_dilation=2``),
three quarters of whose products are by zeros. On XLA:CPU that input gradient of
ResNet-20's 16->32 stride-2 convolution takes 5.5 ms at batch 128, against 1.1 ms for
its forward pass (``benchmarks/RESULTS.md``, section 4, "lax's own gradients").

`conv_general_dilated` computes it by phases instead (sub-pixel decomposition). Along
one spatial axis, output row ``m`` of a stride-2, padding-1, 3-tap convolution reads
input rows ``2m - 1``, ``2m``, ``2m + 1`` through taps 0, 1, 2. So the gradient of an
even input row ``2m`` comes from ``dy[m]`` through tap 1 alone, and that of an odd row
``2m + 1`` from ``dy[m]`` through tap 2 and ``dy[m + 1]`` through tap 0. Each of the
four (row, column) parities is then a small stride-1 convolution of ``dy`` with a 1x1,
1x2, 2x1 or 2x2 slice of the transposed kernel; interleaving the four gives ``dx``.
Same products and sums as XLA's form without the zeros, so the result differs only by
float rounding (summation order). 2.1 ms on XLA:CPU for that convolution.

Only CPU takes this path (`lax.platform_dependent`): GPUs keep XLA's own gradient. It
applies to NHWC/HWIO convolutions with a 3x3 kernel, stride 2, padding ``((1, 1), (1,
1))``, even height and width, no dilation and no groups; every other call goes to
`lax.conv_general_dilated` unchanged. The forward pass and the kernel gradient are
always XLA's own. Use it as ``nn.Conv(..., conv_general_dilated=conv_general_dilated)``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")
_PAD_1 = ((1, 1), (1, 1))
# Parity of an input row (or column) -> the kernel taps that reach it, for dy[m], dy[m+1].
_TAPS_BY_PARITY = {0: (1,), 1: (2, 0)}


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """Drop-in for `lax.conv_general_dilated` (same arguments and result).

    Stride-2 3x3 NHWC convolutions with padding 1 and even spatial sizes get the
    phase-decomposed input gradient on CPU (see the module docstring).
    """
    if _is_even_stride2_conv3x3(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation,
        rhs_dilation,
        dimension_numbers,
        feature_group_count * batch_group_count,
        preferred_element_type,
    ):
        return _stride2_conv3x3(lhs, rhs, precision)
    return lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


def _is_even_stride2_conv3x3(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Sequence[int] | None,
    rhs_dilation: Sequence[int] | None,
    dimension_numbers: Any,
    group_count: int,
    preferred_element_type: Any,
) -> bool:
    if lhs.ndim != 4 or rhs.shape[:2] != (3, 3) or isinstance(padding, str):
        return False
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    given = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    return (
        given == nhwc
        and tuple(window_strides) == (2, 2)
        and tuple(map(tuple, padding)) == _PAD_1
        and tuple(lhs_dilation or (1, 1)) == (1, 1)
        and tuple(rhs_dilation or (1, 1)) == (1, 1)
        and group_count == 1
        and preferred_element_type is None
        and lhs.shape[1] % 2 == 0
        and lhs.shape[2] % 2 == 0
    )


def _lax_stride2_conv3x3(x: jax.Array, kernel: jax.Array, precision: Any) -> jax.Array:
    return lax.conv_general_dilated(
        x, kernel, (2, 2), _PAD_1, dimension_numbers=_NHWC, precision=precision
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _stride2_conv3x3(x: jax.Array, kernel: jax.Array, precision: Any) -> jax.Array:
    return _lax_stride2_conv3x3(x, kernel, precision)


def _stride2_conv3x3_fwd(
    x: jax.Array, kernel: jax.Array, precision: Any
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _lax_stride2_conv3x3(x, kernel, precision), (x, kernel)


def _stride2_conv3x3_bwd(
    precision: Any, residuals: tuple[jax.Array, jax.Array], dy: jax.Array
) -> tuple[jax.Array, jax.Array]:
    x, kernel = residuals
    _, kernel_vjp = jax.vjp(lambda k: _lax_stride2_conv3x3(x, k, precision), kernel)
    (dkernel,) = kernel_vjp(dy)

    def xla_input_grad(kernel: jax.Array, dy: jax.Array) -> jax.Array:
        _, input_vjp = jax.vjp(lambda x: _lax_stride2_conv3x3(x, kernel, precision), x)
        return input_vjp(dy)[0]

    phases = functools.partial(input_grad_by_phases, precision=precision)
    dx = lax.platform_dependent(kernel, dy, cpu=phases, default=xla_input_grad)
    return dx, dkernel


_stride2_conv3x3.defvjp(_stride2_conv3x3_fwd, _stride2_conv3x3_bwd)


def input_grad_by_phases(kernel: jax.Array, dy: jax.Array, precision: Any = None) -> jax.Array:
    """Input gradient of a stride-2, padding-1 3x3 convolution, by phases.

    Args:
      kernel: HWIO ``[3, 3, C_in, C_out]``.
      dy: gradient of the output, NHWC ``[N, H/2, W/2, C_out]``.
      precision: passed to the convolutions.

    Returns:
      ``dx``, NHWC ``[N, H, W, C_in]`` (H and W even).
    """
    n, rows, cols, _ = dy.shape
    kernel_t = jnp.swapaxes(kernel, 2, 3)  # [3, 3, C_out, C_in]: from dy's channels to x's
    dy_padded = jnp.pad(dy, ((0, 0), (0, 1), (0, 1), (0, 0)))  # dy[m + 1] past the end is 0
    by_row_parity = []
    for row_parity in (0, 1):
        by_col_parity = []
        for col_parity in (0, 1):
            row_taps = _TAPS_BY_PARITY[row_parity]
            col_taps = _TAPS_BY_PARITY[col_parity]
            taps = jnp.stack([jnp.stack([kernel_t[i, j] for j in col_taps]) for i in row_taps])
            window = dy_padded[:, : rows + len(row_taps) - 1, : cols + len(col_taps) - 1]
            by_col_parity.append(
                lax.conv_general_dilated(
                    window, taps, (1, 1), "VALID", dimension_numbers=_NHWC, precision=precision
                )
            )  # [N, H/2, W/2, C_in]: dx[:, 2m + row_parity, 2k + col_parity]
        by_row_parity.append(jnp.stack(by_col_parity, axis=3))  # [N, H/2, W/2, 2, C_in]
    dx = jnp.stack(by_row_parity, axis=2)  # [N, H/2, 2, W/2, 2, C_in]
    return dx.reshape(n, 2 * rows, 2 * cols, kernel.shape[2])
