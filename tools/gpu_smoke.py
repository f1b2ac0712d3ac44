"""Smoke test for a GPU session: jresnet imports, and a few fused train steps run on the GPU.

Usage: ``python tools/gpu_smoke.py [--allow-cpu]``. Runs two calls of 2 fused steps of
ResNet-8 at batch 16 with the driver training uses (batches gathered from the split on the
device), in float32 and in bfloat16, and fails (exit 1) unless JAX's default backend is the
GPU (``--allow-cpu`` lifts that, to try the script on a CPU), the losses are finite and the
parameters, BatchNorm statistics and optimizer state stay float32 (the step counters are
int32).
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

from jresnet import input_pipeline, parallel, steps
from jresnet.testing import driver_setup


def fused_losses(dtype: str) -> list[float]:
    """Losses of 2 calls of 2 fused steps of ResNet-8 in ``dtype``, with the driver training
    uses (`steps.make_train_fn` with a `steps.DeviceSplit`: batches gathered from a split on
    the device), on a random split of 64 images (one epoch of 4 steps of 16)."""
    args = driver_setup.resnet8(steps_per_epoch=4, dtype=dtype)
    model, tx, mesh = args["model"], args["tx"], args["mesh"]
    split = steps.DeviceSplit(num_examples=64, batch_size=16)
    step = steps.make_train_fn(**args, steps_per_call=2, split=split)
    state = parallel.replicate(steps.create_train_state(jax.random.key(0), model, tx), mesh)
    rng = np.random.default_rng(0)
    images = parallel.shard_rows(rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8), mesh)
    labels = parallel.shard_rows(rng.integers(0, 10, 64).astype(np.int32), mesh)
    order_key = input_pipeline.data_order_key(0)
    losses = []
    for _ in range(2):
        state, metrics = step(state, images, labels, jax.random.key(1), order_key)
        losses += [float(x) for x in np.asarray(metrics["loss"])]
    leaves = jax.tree.leaves((state.params, state.opt_state, state.batch_stats))
    dtypes = {x.dtype for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)}
    if dtypes != {jnp.dtype("float32")}:
        raise SystemExit(f"FAIL: {dtype} state holds {dtypes}, expected float32 only")
    return losses


def main() -> int:
    backend = jax.default_backend()
    print(f"jax {jax.__version__}, backend {backend}, devices {jax.devices()}", flush=True)
    if backend != "gpu" and "--allow-cpu" not in sys.argv:
        print("FAIL: JAX does not see the GPU", flush=True)
        return 1
    for dtype in ("float32", "bfloat16"):
        losses = fused_losses(dtype)
        print(f"{dtype}: losses of 4 steps {losses}", flush=True)
        if not all(np.isfinite(losses)):
            print(f"FAIL: {dtype} loss is not finite", flush=True)
            return 1
    print("smoke OK", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
