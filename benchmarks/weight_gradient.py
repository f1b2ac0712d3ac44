"""Other ways to write a 3x3 convolution's weight gradient in JAX, timed on XLA:CPU.

Usage (from the repository root; about 20 seconds)::

    python -m benchmarks.weight_gradient [--reps 15] [--output benchmarks/WEIGHT_GRADIENT.md]

The weight gradients are the largest gap between XLA:CPU and PyTorch's oneDNN in
``RESULTS.md`` (section 4). This script times, for ResNet-20's three stride-1 3x3
convolutions at batch 128, the weight gradient ``dW[i, j, c, d] = sum_{n,h,w}
x_pad[n, h+i, w+j, c] * dy[n, h, w, d]`` written four ways, each jitted alone, with
the XLA flags ``train.py`` sets:

* ``vjp``: `jax.vjp` of the model's convolution (what jresnet's training runs);
* ``per-tap matmuls``: nine ``einsum("nhwc,nhwd->cd")`` of shifted slices of ``x``;
* ``im2col``: the nine shifted slices concatenated on the channel axis, one matmul;
* ``batch split in k``: the ``vjp`` of k slices of the batch, summed (more, smaller
  convolutions that the two cores might share);
* ``grouped over k batch slices``: one convolution with ``feature_group_count=k``
  whose k groups are slices of the batch (k times the output columns, the same FLOPs),
  summed over the groups.

Each result is checked against ``vjp`` (relative error printed). Medians of ``--reps``
calls after warm-up, in one process; ratios are against ``vjp``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Callable

from jresnet import errors, xla_setup

xla_setup.configure_cpu_flags()  # before JAX is imported

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

try:
    from benchmarks.timing import median_ms  # the suite's timing helper
except ModuleNotFoundError as e:  # run as a file: benchmarks/ is not importable as a package
    if e.name != "benchmarks":
        raise
    usage = "error: run from the repository root: python -m benchmarks.weight_gradient"
    print(usage, file=sys.stderr)
    raise SystemExit(errors.EXIT_USAGE) from None

BATCH = 128
SHAPES = ((32, 16), (16, 32), (8, 64))  # (height = width, channels in = out)
PAD = ((1, 1), (1, 1))


def conv(x: jax.Array, w: jax.Array) -> jax.Array:
    """The model's 3x3 stride-1 convolution: NHWC input, HWIO kernel, padding 1."""
    return lax.conv_general_dilated(x, w, (1, 1), PAD, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def dw_vjp(x: jax.Array, dy: jax.Array) -> jax.Array:
    c, d = x.shape[-1], dy.shape[-1]
    return jax.vjp(lambda w: conv(x, w), jnp.zeros((3, 3, c, d), x.dtype))[1](dy)[0]


def _shifted(x: jax.Array) -> list[jax.Array]:
    """The nine windows ``x_pad[:, i:i+H, j:j+W]``, tap order (i, j)."""
    h, w = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), *PAD, (0, 0)))
    return [xp[:, i : i + h, j : j + w] for i in range(3) for j in range(3)]


def dw_per_tap(x: jax.Array, dy: jax.Array) -> jax.Array:
    taps = [jnp.einsum("nhwc,nhwd->cd", window, dy) for window in _shifted(x)]
    return jnp.stack(taps).reshape(3, 3, x.shape[-1], dy.shape[-1])


def dw_im2col(x: jax.Array, dy: jax.Array) -> jax.Array:
    patches = jnp.concatenate(_shifted(x), axis=-1)  # [N, H, W, 9 * C], tap-major
    return jnp.einsum("nhwk,nhwd->kd", patches, dy).reshape(3, 3, x.shape[-1], dy.shape[-1])


def dw_batch_split(parts: int) -> Callable[[jax.Array, jax.Array], jax.Array]:
    def dw(x: jax.Array, dy: jax.Array) -> jax.Array:
        size = x.shape[0] // parts
        chunks = (slice(k * size, (k + 1) * size) for k in range(parts))
        return sum(dw_vjp(x[s], dy[s]) for s in chunks)

    return dw


def dw_grouped(groups: int) -> Callable[[jax.Array, jax.Array], jax.Array]:
    def dw(x: jax.Array, dy: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        d = dy.shape[-1]
        lhs = x.transpose(3, 1, 2, 0)  # batch c, spatial (h, w), features n
        # rhs[h, w, m, g * d + e] = dy[g * n / groups + m, h, w, e]: group g sees batch slice g
        rhs = dy.reshape(groups, n // groups, h, w, d).transpose(2, 3, 1, 0, 4)
        rhs = rhs.reshape(h, w, n // groups, groups * d)
        out = lax.conv_general_dilated(
            lhs,
            rhs,
            (1, 1),
            PAD,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=groups,
        )  # [c, 3, 3, groups * d]
        return out.reshape(c, 3, 3, groups, d).sum(3).transpose(1, 2, 0, 3)

    return dw


FORMULATIONS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "vjp (the model's)": dw_vjp,
    "per-tap matmuls": dw_per_tap,
    "im2col + one matmul": dw_im2col,
    "batch split in 2": dw_batch_split(2),
    "batch split in 4": dw_batch_split(4),
    "grouped over 2 batch slices": dw_grouped(2),
    "grouped over 8 batch slices": dw_grouped(8),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=15, help="timed calls per measurement")
    parser.add_argument("--output", help="also write the table to this Markdown file")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    header = "| formulation | " + " | ".join(f"{c}->{c}, {h}x{h}" for h, c in SHAPES) + " |"
    rows = {name: [] for name in FORMULATIONS}
    for h, c in SHAPES:
        x = jnp.asarray(rng.standard_normal((BATCH, h, h, c), np.float32))
        dy = jnp.asarray(rng.standard_normal((BATCH, h, h, c), np.float32))
        reference = jax.jit(dw_vjp)(x, dy)
        base = None
        for name, formulation in FORMULATIONS.items():
            jitted = jax.jit(formulation)
            result = jitted(x, dy)
            error = float(jnp.max(jnp.abs(result - reference)) / jnp.max(jnp.abs(reference)))
            ms = median_ms(lambda f=jitted, x=x, dy=dy: f(x, dy), jax.block_until_ready, args.reps)
            base = base or ms
            rows[name].append(f"{ms:.2f} ms ({base / ms:.2f}x, err {error:.0e})")
            print(f"{c}->{c} {h}x{h} {name}: {ms:.2f} ms, rel. error {error:.1e}", file=sys.stderr)
    lines = [
        "# Weight gradient of a 3x3 convolution: formulations on XLA:CPU",
        "",
        f"Generated by `python -m benchmarks.weight_gradient` on "
        f"{datetime.datetime.now().astimezone().isoformat(timespec='seconds')}, "
        f"jax {jax.__version__}, {os.cpu_count()} CPUs, "
        f"XLA_FLAGS `{os.environ.get('XLA_FLAGS', '')}`. Batch {BATCH}; median ms of "
        f"{args.reps} calls; speed-up against the model's `vjp` (above 1 is faster); "
        "err: max relative difference from it.",
        "",
        header,
        "|---|" + "---:|" * len(SHAPES),
    ]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    raise SystemExit(errors.run_cli(main))
