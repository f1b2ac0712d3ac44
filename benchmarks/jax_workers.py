"""The JAX side of the benchmark: jresnet's own training and eval code, measured.

Each function measures one configuration in this worker process and returns its result
(throughputs in images/s, compile and first-call times in s, host-side pieces in us,
convolutions in ms). Images are NHWC. `benchmarks.workers` imports this module only
after it has set the CPU affinity and XLA flags, which JAX reads once, at import.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks import data as bench_data
from benchmarks import timing
from benchmarks.configs import BATCH, EVAL_BATCH, MATMUL_N, TRAIN_IMAGES, Config, Sizes
from benchmarks.resnet20 import RESNET20_CONVS, ConvShape
from jresnet import conv as jresnet_conv
from jresnet import datasets, input_pipeline, models, parallel, reporting, steps, train
from jresnet.configs import default
from jresnet.testing import stablehlo_loops

# Convolutions in a rolled XLA:CPU while loop are far slower (the rolled-scan row of
# RESULTS.md, section 1): such drivers are measured once, and not in the cpu dry run.
SKIPPED_ROLLED = {
    "rolled_while_loop": True,
    "skipped": "convolutions in a rolled XLA while loop (far slower; full runs time it once)",
}


class JaxSetup:
    """A model, optimizer, mesh and replicated state built as jresnet builds them: the seed's
    recipe (`jresnet.configs.default`) with ``model``, ``dtype`` and ``batch`` as given."""

    def __init__(self, model: str = "resnet20", dtype: str = "float32", batch: int = BATCH):
        self.config = default.get_config()
        self.config.model, self.config.dtype, self.config.batch_size = model, dtype, batch
        self.model = models.from_config(self.config)
        steps_per_epoch = input_pipeline.steps_per_epoch(TRAIN_IMAGES, batch)
        self.lr_fn = steps.create_learning_rate_fn(self.config, steps_per_epoch)
        self.tx = steps.create_optimizer(self.config, self.lr_fn)
        self.mesh = parallel.create_mesh()
        self.state = steps.create_train_state(jax.random.key(0), self.model, self.tx)
        self.mean, self.std = datasets.NORMALIZATIONS[self.config.normalization]

    def train_fn(
        self, augment: bool, steps_per_call: int = 1, unroll: int | None = None
    ) -> Callable[..., Any]:
        """`jresnet.steps.make_train_fn` for this recipe."""
        return steps.make_train_fn(
            model=self.model,
            tx=self.tx,
            learning_rate_fn=self.lr_fn,
            mean=self.mean,
            std=self.std,
            augment=augment,
            mesh=self.mesh,
            steps_per_call=steps_per_call,
            unroll=unroll,
        )

    def plain_step(self) -> Callable[..., Any]:
        """``jax.jit(train_step)`` alone (no mesh): ``(state, float batch) -> (state, metrics)``."""
        step = functools.partial(
            steps.train_step, model=self.model, tx=self.tx, learning_rate_fn=self.lr_fn
        )
        return jax.jit(step, donate_argnums=0)

    def replicated_state(self) -> Any:
        return parallel.replicate(self.state, self.mesh)

    def device_batch(self, images: Any, labels: Any) -> list[Any]:
        """``[K, B, ...]`` host arrays as the training loop hands them to the driver."""
        return parallel.global_batch([images, labels], self.mesh, batch_axis=1)

    def random_batches(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """K random uint8 batches ``[K, B, 32, 32, 3]`` and labels ``[K, B]`` (host)."""
        rng = np.random.default_rng(1)
        batch = self.config.batch_size
        images = rng.integers(0, 256, (k, batch, 32, 32, 3), dtype=np.uint8)
        return images, rng.integers(0, 10, (k, batch)).astype(np.int32)

    def float_batch(self, images: np.ndarray, labels: np.ndarray) -> dict[str, jax.Array]:
        """A normalised float32 ``{"image": [B, 32, 32, 3], "label": [B]}`` batch."""
        x = input_pipeline.normalize(jnp.asarray(images), self.mean, self.std)
        return {"image": x, "label": jnp.asarray(labels)}


def has_while_loop(lowered: Any) -> bool:
    """Whether a lowered JAX computation runs convolutions inside a (rolled) while loop.

    While loops without convolutions (e.g. threefry's rolled rounds on CPU) are harmless
    and not counted.
    """
    return stablehlo_loops.convolutions_in_while_loops(lowered.as_text()) > 0


def matmul(cfg: Config, sizes: Sizes, data: str) -> dict[str, Any]:
    """Best-of-``matmul_reps`` fp32 GFLOP/s of an N x N matmul, jitted."""
    x = jax.random.normal(jax.random.key(0), (MATMUL_N, MATMUL_N), jnp.float32)
    y = jax.random.normal(jax.random.key(1), (MATMUL_N, MATMUL_N), jnp.float32)
    jitted = jax.jit(jnp.matmul)
    seconds = timing.best_s(lambda: jitted(x, y).block_until_ready(), sizes.matmul_reps)
    return {"gflops": timing.matmul_gflops(seconds, MATMUL_N)}


def _lower_step(setup: JaxSetup, cfg: Config, k: int, unroll: int) -> tuple[Any, ...]:
    """``(lowered, state, args)``: the model step on K random uint8 batches."""
    host_images, host_labels = setup.random_batches(k)
    if cfg.driver:
        state = setup.replicated_state()
        images, labels = setup.device_batch(host_images, host_labels)
        args: tuple[Any, ...] = (images, labels, jax.random.key(2))
        jitted = setup.train_fn(augment=cfg.augment, steps_per_call=k, unroll=unroll)
    else:
        state, args = setup.state, (setup.float_batch(host_images[0], host_labels[0]),)
        jitted = setup.plain_step()
    return jitted.lower(state, *args), state, args


def cost_per_step(compiled: Any, k: int) -> dict[str, float]:
    """XLA's cost analysis of a compiled call of K steps: FLOPs and bytes accessed per step."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    return {
        "flops_per_step": float(analysis.get("flops", float("nan"))) / k,
        "bytes_per_step": float(analysis.get("bytes accessed", float("nan"))) / k,
    }


def step(cfg: Config, sizes: Sizes, data: str) -> dict[str, Any]:
    """Model-step training throughput on random data, compile time apart.

    The driver runs K steps per call (`Config.steps`), unrolled or rolled, with or
    without augmentation (`Config.augment`). A program without a loop records
    XLA's cost of one step (a while loop's body counts once: rolled ones get none).
    """
    batch, k, unroll = cfg.batch(sizes), cfg.steps(sizes), cfg.unroll(sizes)
    setup = JaxSetup(sizes.model, cfg.dtype, batch)
    lowered, state, args = _lower_step(setup, cfg, k, unroll)
    rolled = has_while_loop(lowered)
    if rolled and not sizes.measure_rolled:
        return dict(SKIPPED_ROLLED)
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def call() -> None:
        holder["state"], holder["metrics"] = compiled(holder["state"], *args)
        jax.block_until_ready(holder)

    first = timing.warm_up(call, sizes.warmup_calls)
    rates = timing.rates(call, k * batch, sizes.min_timed_s, sizes.repeats)
    return {
        **timing.rate_summary(rates, batch),
        **(cost_per_step(compiled, k) if unroll == k else {}),
        "compile_s": compile_s,
        "first_call_s": first,
        "batch": batch,
        "steps_per_call": k,
        "unroll": unroll,
        "dtype": cfg.dtype,
        "last_loss": float(np.asarray(holder["metrics"]["loss"]).reshape(-1)[-1]),
        "device": jax.devices()[0].device_kind,
        "rolled_while_loop": rolled,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def copy(cfg: Config, sizes: Sizes, data: str) -> dict[str, Any]:
    """Bytes/s (read plus written) of an on-device copy of a ``copy_bytes`` float32 array."""
    x = jnp.ones((sizes.copy_bytes // 4,), jnp.float32)
    double = jax.jit(lambda a: a * 2.0)
    seconds = timing.median_ms(lambda: double(x), jax.block_until_ready, 10) / 1e3
    device = jax.devices()[0].device_kind
    return {"copy_gb_s": 2 * sizes.copy_bytes / seconds / 1e9, "device": device}


def e2e(cfg: Config, sizes: Sizes, data: str) -> dict[str, Any]:
    """jresnet's own training loop (`train.train_and_evaluate`) over two epochs of
    ``e2e_steps`` steps, data in memory, eval and checkpoints included.

    The first epoch warms up; the second is timed by the loop's own ``images_per_s`` in
    ``metrics.jsonl``; ``train_and_evaluate_s`` is the whole call's.
    """
    batch, n = cfg.batch(sizes), sizes.e2e_steps * cfg.batch(sizes)
    config = default.get_config()
    config.model, config.dtype, config.batch_size = sizes.model, cfg.dtype, batch
    config.num_epochs, config.steps_per_call = 2, cfg.steps(sizes)
    train_images, train_labels = bench_data.load(data, "train", n)
    test_images, test_labels = bench_data.load(data, "test", EVAL_BATCH)
    splits = input_pipeline.Splits(
        train_images[:n], train_labels[:n], test_images[:EVAL_BATCH], test_labels[:EVAL_BATCH]
    )
    with tempfile.TemporaryDirectory(prefix="jresnet-bench-workdir-") as workdir:
        start = time.perf_counter()
        train.train_and_evaluate(config, workdir, data=splits)
        wall_s = time.perf_counter() - start
        warm, timed = reporting.read_metrics(workdir)
    return {
        **timing.rate_summary([timed["images_per_s"]], batch),
        "first_call_s": warm["epoch_time_s"],
        "compile_s": warm["epoch_time_s"] - timed["epoch_time_s"],
        "train_and_evaluate_s": wall_s,
        "train_loss": timed["train_loss"],
        "batch": batch,
        "steps_per_call": config.steps_per_call,
        "timed_steps": sizes.e2e_steps,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def eval_(cfg: Config, sizes: Sizes, data: str) -> dict[str, Any]:
    """Eval throughput at batch 1000 (`steps.evaluate`, uint8 in, normalised in the step)."""
    n = sizes.eval_batches * EVAL_BATCH
    images, labels = bench_data.load(data, "test", n)
    images, labels = images[:n], labels[:n]
    setup = JaxSetup(sizes.model, cfg.dtype)
    eval_fn = steps.make_eval_fn(setup.model, setup.mean, setup.std, setup.mesh)
    state = setup.replicated_state()
    variables = {"params": state.params, "batch_stats": state.batch_stats}

    def evaluate(x: Any, y: Any) -> dict[str, float]:
        return steps.evaluate(eval_fn, variables, x, y, EVAL_BATCH, setup.mesh)

    start = time.perf_counter()
    evaluate(images[:EVAL_BATCH], labels[:EVAL_BATCH])
    first = time.perf_counter() - start
    start = time.perf_counter()
    evaluate(images, labels)
    return {"img_s": n / (time.perf_counter() - start), "first_call_s": first}


def _diag_throughputs(
    setup: JaxSetup, images: np.ndarray, labels: np.ndarray, steps: int, k: int
) -> dict[str, float | None]:
    """img/s of `train_step` alone, then of the driver without/with augmentation, 1 and K."""
    warm = 2

    def throughput(call: Callable[[], Any], steps_per_call: int = 1) -> float:
        calls = max(steps // steps_per_call, 1)
        timing.time_calls(call, jax.block_until_ready, max(warm // steps_per_call, 1))
        seconds = timing.time_calls(call, jax.block_until_ready, calls)
        return calls * steps_per_call * BATCH / seconds

    bare_step, batch = setup.plain_step(), setup.float_batch(images[:BATCH], labels[:BATCH])
    holder = {"state": setup.state}

    def bare() -> Any:
        holder["state"], metrics = bare_step(holder["state"], batch)
        return metrics

    out: dict[str, float | None] = {"bare_step_img_s": throughput(bare)}
    holder["state"] = parallel.replicate(holder["state"], setup.mesh)
    key = jax.random.key(3)
    for augment, per_call in ((False, 1), (True, 1), (False, k), (True, k)):
        x, y = setup.device_batch(
            images[: per_call * BATCH].reshape(per_call, BATCH, 32, 32, 3),
            labels[: per_call * BATCH].reshape(per_call, BATCH),
        )
        fn = setup.train_fn(augment, per_call)
        name = f"driver_{'augment' if augment else 'normalize'}_k{per_call}_img_s"
        if has_while_loop(fn.lower(holder["state"], x, y, key)):
            out[name] = None  # a rolled XLA while loop: far slower, measured in section 1
            continue

        def driver(fn: Callable[..., Any] = fn, x: Any = x, y: Any = y) -> Any:
            holder["state"], metrics = fn(holder["state"], x, y, key)
            return metrics

        out[name] = throughput(driver, per_call)
    return out


def _diag_host_pieces(setup: JaxSetup, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Microseconds per call of the host-side pieces of one loop iteration (1 step per call)."""

    def us(fn: Callable[[], Any]) -> float:
        return timing.per_call_us(fn, jax.block_until_ready, reps=200)

    idx = np.asarray(
        input_pipeline.epoch_permutation(input_pipeline.data_order_key(0), 0, len(images))
    )[:BATCH]
    chunk = [(images[idx], labels[idx])]
    out = {
        "host_gather_us": us(lambda: (images[idx], labels[idx])),
        "stack_and_to_device_us": us(
            lambda: parallel.global_batch(
                [np.stack(a) for a in zip(*chunk, strict=True)], setup.mesh, batch_axis=1
            )
        ),
    }
    metrics = {name: jnp.ones((1,), jnp.float32) for name in ("loss", "accuracy", "learning_rate")}
    sums = {"loss": jnp.float32(0), "accuracy": jnp.float32(0)}

    def metric_bookkeeping() -> Any:
        nonlocal sums
        m = dict(metrics)
        lr = m.pop("learning_rate")[-1]
        sums = jax.tree.map(jnp.add, sums, {name: v.sum() for name, v in m.items()})
        return sums, lr

    out["metric_bookkeeping_us"] = us(metric_bookkeeping)
    out["metrics_readback_us"] = us(
        lambda: {name: float(parallel.to_host(v)) for name, v in sums.items()}
    )
    key, device_u8 = jax.random.key(3), jnp.asarray(images[:BATCH])
    augment_fn = jax.jit(lambda kk, x: input_pipeline.augment(kk, x, setup.mean, setup.std))
    normalize_fn = jax.jit(lambda x: input_pipeline.normalize(x, setup.mean, setup.std))
    out["augment_alone_us"] = us(lambda: augment_fn(key, device_u8))
    out["normalize_alone_us"] = us(lambda: normalize_fn(device_u8))
    return out


def diag(cfg: Config, sizes: Sizes, data: str) -> dict[str, Any]:
    """Where jresnet's training step spends time beyond the model (one process, one pass).

    Throughput (img/s over ``diag_steps`` steps after warm-up, batches already on the
    device) of `train_step` jitted alone on a float batch, then of jresnet's driver
    (`make_train_fn`: normalisation or augmentation, shard_map over the mesh) without and
    with augmentation, 1 and K steps per call; then the host-side pieces of the loop.
    """
    k = sizes.fused_steps
    images, labels = bench_data.load(data, "train", k * BATCH)
    setup = JaxSetup(sizes.model)
    return {
        "steps": sizes.diag_steps,
        "k": k,
        **_diag_throughputs(setup, images, labels, sizes.diag_steps, k),
        **_diag_host_pieces(setup, images, labels),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _conv_calls(
    shape: ConvShape, conv_general_dilated: Callable[..., Any], rng: np.random.Generator
) -> dict[str, Callable[[], Any]]:
    """The jitted forward pass, input gradient and weight gradient of one convolution."""
    pad = ((1, 1), (1, 1)) if shape.kernel == 3 else ((0, 0), (0, 0))

    def conv(x: Any, w: Any) -> Any:
        return conv_general_dilated(
            x, w, (shape.stride,) * 2, pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def draw(*dims: int) -> jax.Array:
        return jnp.asarray(rng.standard_normal(dims, np.float32))

    x = draw(BATCH, shape.size, shape.size, shape.c_in)
    w = draw(shape.kernel, shape.kernel, shape.c_in, shape.c_out)
    dy = draw(*jax.eval_shape(conv, x, w).shape)
    fwd = jax.jit(conv)
    dx = jax.jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0])
    dw = jax.jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
    calls = {"fwd": lambda: fwd(x, w), "dx": lambda: dx(x, w, dy), "dw": lambda: dw(x, w, dy)}
    if not shape.has_dx:
        del calls["dx"]
    return calls


def convs(cfg: Config, sizes: Sizes, data: str) -> dict[str, Any]:
    """Median ms of each of ResNet-20's convolutions alone: forward, input and weight gradient.

    Random float32 data at batch 128, NHWC/HWIO, explicit padding: the model's own
    convolution (`jresnet.conv.conv_general_dilated`: lax's, with the stride-2 input
    gradient by phases on CPU; ``cfg.lax_conv``: `lax.conv_general_dilated` itself) and
    its `jax.vjp` with respect to the input or the kernel, each jitted alone.
    """
    conv_fn = lax.conv_general_dilated if cfg.lax_conv else jresnet_conv.conv_general_dilated
    rng = np.random.default_rng(0)
    ms = {}
    for shape in RESNET20_CONVS:
        calls = _conv_calls(shape, conv_fn, rng)
        ms[shape.label] = {
            name: timing.median_ms(call, jax.block_until_ready, sizes.conv_reps)
            for name, call in calls.items()
        }
    return {
        "ms": ms,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "cpus": len(os.sched_getaffinity(0)),
    }


MEASURES: dict[str, Callable[[Config, Sizes, str], dict[str, Any]]] = {
    "matmul": matmul,
    "copy": copy,
    "step": step,
    "e2e": e2e,
    "eval": eval_,
    "diag": diag,
    "convs": convs,
}
