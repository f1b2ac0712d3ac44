"""jresnet against a PyTorch reproduction of the seed's training, on this machine, in one run.

Usage (from anywhere; about 15 minutes on 2 cores, ``--quick`` about 3)::

    python benchmarks/run.py [--quick] [--data-dir /work/data/tfds] [--rounds 3] [--output PATH]

Every configuration runs in its own subprocess (so XLA flags, thread settings and the peak
RSS belong to that configuration alone), interleaved ``A B C ... A B C ...`` over
``--rounds`` rounds; tables show the median over rounds, the min-max, and ratios of medians.

Measurements:

1. model step: training images/s at batch 128 on random data already on the device, after
   warm-up (compile time apart), through jresnet's own jitted driver
   (`jresnet.train.make_train_fn`, no augmentation) with default XLA flags, with the YNN
   flag, and with K steps per call (``steps_per_call``, an unrolled scan); against the seed
   in torch, eager NCHW and channels_last. Also as a share of the machine's fp32 matmul peak.
2. end to end: jresnet's real training loop, `jresnet.train.train_and_evaluate` itself (as
   ``train.py`` runs it, XLA flags from `jresnet.xla_setup`), over two short epochs of the
   same steps, the second timed by the loop's own ``images_per_s``; the data comes from
   memory (``input_pipeline.load_split`` is swapped for the arrays this run loaded once, real
   CIFAR-10 when ``--data-dir`` holds it, synthetic otherwise). Against the seed's
   ``DataLoader(num_workers=2)`` loop, eager and channels_last.
3. eval: batch 1000, inference mode.
4. peak RSS of each configuration's process (and of its DataLoader workers).
5. each of ResNet-20's 21 convolutions alone (forward, input gradient, weight gradient),
   XLA (shipped flags, on 1 CPU, default flags) against torch (eager, channels_last), and
   their count-weighted sum per training step: where the model step's time goes.

Plus the fp32 matmul peak (4096 x 4096; numpy, jax and torch), the CPU time other processes
took meanwhile (the run's noise), and, once, where jresnet's training step spends time
beyond the model (augmentation, the sharded driver, host-side work per step).

The full run writes ``benchmarks/RESULTS.md`` and ``benchmarks/RESULTS.json``; ``--quick``
(one round, few steps) prints the report and writes only to ``--output`` if given.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
DEFAULT_DATA_DIR = "/work/data/tfds"

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,+eltwise"
# jaxlib versions whose XLA:CPU is known to accept YNN_FLAG; others are probed first, as an
# unknown xla_cpu_* flag aborts jaxlib.
YNN_KNOWN_JAXLIB = ("0.10.",)

BATCH = 128
EVAL_BATCH = 1000
MATMUL_N = 4096


# --------------------------------------------------------------------------------------------
# Configurations.


@dataclasses.dataclass(frozen=True)
class Config:
    """One benchmarked configuration, run by its own worker process.

    Attributes:
      name: identifier (the worker's ``--worker`` argument).
      measure: "matmul", "step", "e2e", "eval", "diag" or "convs".
      framework: "numpy", "jax" or "torch".
      label: row label in the report (``{k}``: the fused steps per call).
      xla: JAX only: "default" (XLA_FLAGS unset), "ynn" (``XLA_FLAGS=YNN_FLAG``) or
        "shipped" (XLA_FLAGS unset, then `jresnet.xla_setup` as ``train.py`` calls it).
      channels_last: torch memory format.
      driver: JAX model step: jresnet's jitted driver (`make_train_fn`), else a plain
        ``jax.jit(train_step)``.
      fused: JAX: ``Sizes.fused_steps`` training steps per jitted call.
      once: run in the first round only (not part of the interleaved comparison).
      cpus: pin the worker to its first ``cpus`` usable CPUs before anything is imported
        (None: all of them).
      lax_conv: JAX convolutions: ``lax.conv_general_dilated`` itself instead of the
        model's `jresnet.conv.conv_general_dilated` (XLA's own stride-2 input gradient).
    """

    name: str
    measure: str
    framework: str
    label: str
    xla: str = "default"
    channels_last: bool = False
    driver: bool = False
    fused: bool = False
    once: bool = False
    cpus: int | None = None
    lax_conv: bool = False


CONFIGS: tuple[Config, ...] = (
    Config("matmul-numpy", "matmul", "numpy", "numpy"),
    Config("matmul-jax", "matmul", "jax", "jax (default flags)"),
    Config("matmul-torch", "matmul", "torch", "torch"),
    Config("step-jax", "step", "jax", "JAX `jit(train_step)` per step, default XLA flags"),
    Config("step-jax-ynn", "step", "jax", "JAX `jit(train_step)` per step + YNN flag", xla="ynn"),
    Config(
        "step-jax-driver",
        "step",
        "jax",
        "jresnet driver, steps_per_call=1 (train.py's XLA flags)",
        xla="shipped",
        driver=True,
    ),
    Config(
        "step-jax-fused",
        "step",
        "jax",
        "jresnet driver, steps_per_call={k} (unrolled scan, train.py's XLA flags; default)",
        xla="shipped",
        driver=True,
        fused=True,
    ),
    Config("step-torch", "step", "torch", "torch eager NCHW (the seed)"),
    Config("step-torch-cl", "step", "torch", "torch channels_last", channels_last=True),
    Config(
        "e2e-jax",
        "e2e",
        "jax",
        "jresnet train_and_evaluate, --config.steps_per_call=1",
        xla="shipped",
    ),
    Config(
        "e2e-jax-fused",
        "e2e",
        "jax",
        "jresnet train_and_evaluate, steps_per_call={k} (the default config)",
        xla="shipped",
        fused=True,
    ),
    Config("e2e-torch", "e2e", "torch", "seed DataLoader loop, eager NCHW"),
    Config(
        "e2e-torch-cl", "e2e", "torch", "seed DataLoader loop, channels_last", channels_last=True
    ),
    Config("eval-jax", "eval", "jax", "jresnet evaluate, default XLA flags"),
    Config("eval-jax-ynn", "eval", "jax", "jresnet evaluate + YNN flag", xla="ynn"),
    Config("eval-torch", "eval", "torch", "torch eager NCHW, inference_mode"),
    Config(
        "eval-torch-cl", "eval", "torch", "torch channels_last, inference_mode", channels_last=True
    ),
    Config("diag-jax", "diag", "jax", "jresnet step breakdown", xla="shipped", once=True),
    Config("convs-jax", "convs", "jax", "XLA, train.py's flags", xla="shipped"),
    Config(
        "convs-jax-lax", "convs", "jax", "same, lax's own gradients", xla="shipped", lax_conv=True
    ),
    Config("convs-jax-1cpu", "convs", "jax", "XLA, train.py's flags, 1 CPU", xla="shipped", cpus=1),
    Config("convs-jax-default", "convs", "jax", "XLA, default flags"),
    Config("convs-torch", "convs", "torch", "torch eager NCHW"),
    Config("convs-torch-cl", "convs", "torch", "torch channels_last", channels_last=True),
)
CONFIG_BY_NAME = {c.name: c for c in CONFIGS}
TORCH_EAGER = {"step": "step-torch", "e2e": "e2e-torch", "eval": "eval-torch"}
TORCH_CL = {"step": "step-torch-cl", "e2e": "e2e-torch-cl", "eval": "eval-torch-cl"}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How long each measurement runs (warm-up steps/calls are not timed)."""

    step_warmup: int  # model step, 1 step per call: untimed calls, the first included
    step_timed: int
    fused_steps: int  # K, steps per call of the fused configurations
    fused_warmup_calls: int
    fused_timed_calls: int
    e2e_steps: int  # steps per epoch; jresnet: warm-up epoch + timed epoch; torch: timed
    e2e_torch_warmup: int
    eval_batches: int
    diag_steps: int
    matmul_reps: int
    conv_reps: int  # timed calls per convolution and pass (median)
    measure_rolled: bool  # measure drivers that run convolutions in a rolled XLA while loop


FULL = Sizes(
    step_warmup=3,
    step_timed=16,
    fused_steps=10,
    fused_warmup_calls=2,
    fused_timed_calls=2,
    e2e_steps=60,
    e2e_torch_warmup=3,
    eval_batches=5,
    diag_steps=10,
    matmul_reps=3,
    conv_reps=15,
    measure_rolled=True,
)
QUICK = Sizes(
    step_warmup=2,
    step_timed=4,
    fused_steps=5,
    fused_warmup_calls=1,
    fused_timed_calls=1,
    e2e_steps=10,
    e2e_torch_warmup=2,
    eval_batches=2,
    diag_steps=5,
    matmul_reps=2,
    conv_reps=3,
    measure_rolled=False,
)


def resnet20_macs() -> int:
    """Multiply-accumulates of one ResNet-20 (option B) forward pass on a 32x32 image."""
    macs = 32 * 32 * 16 * 3 * 9  # conv1
    size, in_planes = 32, 16
    for planes, stride in ((16, 1), (32, 2), (64, 2)):
        for block in range(3):
            s = stride if block == 0 else 1
            size_out = size // s
            macs += size_out * size_out * planes * in_planes * 9  # conv1
            macs += size_out * size_out * planes * planes * 9  # conv2
            if s != 1 or in_planes != planes:
                macs += size_out * size_out * planes * in_planes  # 1x1 shortcut
            size, in_planes = size_out, planes
    return macs + 64 * 10  # linear


TRAIN_FLOP_PER_IMAGE = 3 * 2 * resnet20_macs()  # forward + backward = 3x forward, 2 FLOP/MAC


# --------------------------------------------------------------------------------------------
# Worker side: one configuration per process.


def _rss_mb() -> dict[str, float]:
    """Peak RSS of this process and of its (waited-for) children, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"rss_mb": own, "children_rss_mb": children}


def _load_data(data: str | None, split: str, n_min: int) -> tuple[Any, Any, bool]:
    """(uint8 images, int32 labels, real) from the parent's .npy files, else synthetic."""
    import numpy as np

    if data:
        images = np.load(os.path.join(data, f"{split}_images.npy"))
        labels = np.load(os.path.join(data, f"{split}_labels.npy"))
        return images, labels, True
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n_min, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, (n_min,)).astype(np.int32)
    return images, labels, False


def _time_calls(fn: Callable[[], Any], sync: Callable[[Any], Any], calls: int) -> float:
    """Seconds for ``calls`` back-to-back calls of ``fn`` (dispatched async), synced at the end."""
    start = time.perf_counter()
    out = None
    for _ in range(calls):
        out = fn()
    sync(out)
    return time.perf_counter() - start


class JaxSetup:
    """The seed recipe's model, optimizer, mesh and replicated state, built as jresnet does."""

    def __init__(self) -> None:
        import jax

        from jresnet import checkpoint, input_pipeline, parallel, train
        from jresnet.configs import default

        self.config = default.get_config()
        self.model = checkpoint.model_from_config(self.config)
        steps_per_epoch = input_pipeline.steps_per_epoch(50_000, self.config.batch_size)
        self.lr_fn = train.create_learning_rate_fn(self.config, steps_per_epoch)
        self.tx = train.create_optimizer(self.config, self.lr_fn)
        self.mesh = parallel.create_mesh()
        self.state = train.create_train_state(jax.random.key(0), self.model, self.tx)
        self.mean, self.std = input_pipeline.NORMALIZATIONS[self.config.normalization]

    def train_fn(self, augment: bool, steps_per_call: int = 1) -> Callable[..., Any]:
        """`jresnet.train.make_train_fn` for this recipe."""
        from jresnet import train

        return train.make_train_fn(
            self.model,
            self.tx,
            self.lr_fn,
            self.mean,
            self.std,
            augment,
            self.mesh,
            steps_per_call=steps_per_call,
        )

    def replicated_state(self) -> Any:
        from jresnet import parallel

        return parallel.replicate(self.state, self.mesh)

    def device_batch(self, images: Any, labels: Any) -> list[Any]:
        """``[K, B, ...]`` host arrays as the training loop hands them to the driver."""
        from jresnet import parallel

        return parallel.global_batch([images, labels], self.mesh, batch_axis=1)


def worker_matmul(cfg: Config, sizes: Sizes) -> dict[str, Any]:
    """Best-of-``reps`` fp32 GFLOP/s of an N x N matmul."""
    n = MATMUL_N
    times = []
    if cfg.framework == "numpy":
        import numpy as np

        rng = np.random.default_rng(0)
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)

        def matmul() -> Any:
            return a @ b

    elif cfg.framework == "jax":
        import jax
        import jax.numpy as jnp

        x = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        y = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        jitted = jax.jit(jnp.matmul)

        def matmul() -> Any:
            return jitted(x, y).block_until_ready()

    else:
        import torch

        c = torch.randn(n, n)
        d = torch.randn(n, n)

        def matmul() -> Any:
            return c @ d

    matmul()
    for _ in range(sizes.matmul_reps):
        start = time.perf_counter()
        matmul()
        times.append(time.perf_counter() - start)
    return {"gflops": 2 * n**3 / min(times) / 1e9}


def worker_step(cfg: Config, sizes: Sizes) -> dict[str, Any]:
    """Model-step training throughput on random data (batch 128)."""
    if cfg.framework == "torch":
        import torch
        import torch_seed

        trainer = torch_seed.SeedTrainer(channels_last=cfg.channels_last)
        inputs = torch.randn(BATCH, 3, 32, 32)
        targets = torch.randint(0, 10, (BATCH,))
        start = time.perf_counter()
        loss, _ = trainer.step(inputs, targets)
        loss.item()
        first = time.perf_counter() - start
        for _ in range(sizes.step_warmup - 1):
            trainer.step(inputs, targets)
        start = time.perf_counter()
        for _ in range(sizes.step_timed):
            loss, _ = trainer.step(inputs, targets)
        loss.item()
        elapsed = time.perf_counter() - start
        return {
            "img_s": sizes.step_timed * BATCH / elapsed,
            "first_call_s": first,
            "torch_threads": torch.get_num_threads(),
        }

    import jax
    import numpy as np

    from jresnet import train

    setup = JaxSetup()
    k = sizes.fused_steps if cfg.fused else 1
    rng = np.random.default_rng(1)
    key = jax.random.key(2)
    host_images = rng.integers(0, 256, (k, BATCH, 32, 32, 3), dtype=np.uint8)
    host_labels = rng.integers(0, 10, (k, BATCH)).astype(np.int32)
    if cfg.driver:
        state = setup.replicated_state()
        images, labels = setup.device_batch(host_images, host_labels)
        jitted = setup.train_fn(augment=False, steps_per_call=k)
        args: tuple[Any, ...] = (images, labels, key)
    else:
        import jax.numpy as jnp

        from jresnet import input_pipeline

        state = setup.state
        batch = {
            "image": input_pipeline.normalize(jnp.asarray(host_images[0]), setup.mean, setup.std),
            "label": jnp.asarray(host_labels[0]),
        }
        jitted = jax.jit(
            functools.partial(
                train.train_step, model=setup.model, tx=setup.tx, learning_rate_fn=setup.lr_fn
            ),
            donate_argnums=0,
        )
        args = (batch,)
    lowered = jitted.lower(state, *args)
    rolled = has_while_loop(lowered)
    if rolled and not sizes.measure_rolled:
        return {"rolled_while_loop": True, "skipped": True}
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start

    def call() -> Any:
        nonlocal state
        state, metrics = compiled(state, *args)
        return metrics

    start = time.perf_counter()
    jax.block_until_ready(call())
    first = time.perf_counter() - start
    warmup_calls = sizes.fused_warmup_calls if k > 1 else sizes.step_warmup
    timed_calls = sizes.fused_timed_calls if k > 1 else sizes.step_timed
    if rolled:  # ~20x slower: time one call after the first
        warmup_calls, timed_calls = 1, 1
    _time_calls(call, jax.block_until_ready, warmup_calls - 1)
    elapsed = _time_calls(call, jax.block_until_ready, timed_calls)
    return {
        "img_s": timed_calls * k * BATCH / elapsed,
        "compile_s": compile_s,
        "first_call_s": first,
        "steps_per_call": k,
        "timed_steps": timed_calls * k,
        "rolled_while_loop": rolled,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def has_while_loop(lowered: Any) -> bool:
    """Whether a lowered JAX computation runs convolutions inside a (rolled) while loop.

    Such loops are about 20x slower on XLA:CPU (jax-ml/jax#12868). While loops without
    convolutions (e.g. threefry's rolled rounds on CPU) are harmless and not counted.
    """
    from jresnet.testing import stablehlo_loops

    return stablehlo_loops.convolutions_in_while_loops(lowered.as_text()) > 0


def worker_e2e(cfg: Config, sizes: Sizes, data: str | None) -> dict[str, Any]:
    """End-to-end training throughput including the input pipeline and augmentation."""
    steps = sizes.e2e_steps
    if cfg.framework == "torch":
        import torch
        import torch_seed

        total = sizes.e2e_torch_warmup + steps
        images, labels, real = _load_data(data, "train", total * BATCH)
        trainer = torch_seed.SeedTrainer(channels_last=cfg.channels_last)
        loader = torch_seed.train_loader(images, labels, num_workers=2)
        train_loss = 0.0
        correct = seen = 0
        start = first = time.perf_counter()
        batches = iter(loader)
        for i, (loss, right, count) in enumerate(trainer.train_batches(batches), start=1):
            train_loss += loss
            correct += right
            seen += count
            if i == 1:
                first = time.perf_counter() - first
            if i == sizes.e2e_torch_warmup:
                start = time.perf_counter()
            if i == total:
                break
        elapsed = time.perf_counter() - start
        del batches  # shuts the worker processes down, so their peak RSS is counted
        return {
            "img_s": steps * BATCH / elapsed,
            "first_call_s": first,
            "real_data": real,
            "train_loss": train_loss / total,
            "torch_threads": torch.get_num_threads(),
        }

    # jresnet: its own loop, train_and_evaluate, for 2 epochs of `steps` steps each.
    from jresnet import input_pipeline, reporting, train
    from jresnet.configs import default

    train_images, train_labels, real = _load_data(data, "train", steps * BATCH)
    test_images, test_labels, _ = _load_data(data, "test", EVAL_BATCH)
    splits = {
        "train": (train_images[: steps * BATCH], train_labels[: steps * BATCH]),
        "test": (test_images[:EVAL_BATCH], test_labels[:EVAL_BATCH]),
    }

    def load_split(dataset: str, split: str, data_dir: Any = None) -> tuple[Any, Any]:
        """The arrays this run loaded once, in place of TFDS (``steps`` batches of train)."""
        return splits[split.split("[")[0]]

    config = default.get_config()
    config.num_epochs = 2
    config.steps_per_call = sizes.fused_steps if cfg.fused else 1
    k = config.steps_per_call
    rolled = _driver_has_while_loop(k)
    if rolled and not sizes.measure_rolled:
        return {"rolled_while_loop": True, "skipped": True}
    if rolled:  # ~20x slower: one step per epoch
        steps = 1
        splits["train"] = tuple(a[:BATCH] for a in splits["train"])
    input_pipeline.load_split = load_split  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="jresnet-bench-workdir-") as workdir:
        train.train_and_evaluate(config, workdir)
        records = reporting.read_metrics(workdir)
    warm, timed = records[0], records[1]
    return {
        "img_s": timed["images_per_s"],
        "first_call_s": warm["epoch_time_s"],
        "compile_s": warm["epoch_time_s"] - timed["epoch_time_s"],
        "real_data": real,
        "train_loss": timed["train_loss"],
        "steps_per_call": k,
        "timed_steps": steps,
        "rolled_while_loop": rolled,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _driver_has_while_loop(steps_per_call: int) -> bool:
    """Whether jresnet's training driver at ``steps_per_call`` lowers to a while loop."""
    import jax
    import numpy as np

    setup = JaxSetup()
    shape = (steps_per_call, BATCH)
    images, labels = setup.device_batch(
        np.zeros((*shape, 32, 32, 3), np.uint8), np.zeros(shape, np.int32)
    )
    fn = setup.train_fn(augment=True, steps_per_call=steps_per_call)
    return has_while_loop(fn.lower(setup.replicated_state(), images, labels, jax.random.key(0)))


def worker_eval(cfg: Config, sizes: Sizes, data: str | None) -> dict[str, Any]:
    """Eval throughput at batch 1000 in inference mode."""
    n = sizes.eval_batches * EVAL_BATCH
    images, labels, real = _load_data(data, "test", n)
    images, labels = images[:n], labels[:n]
    if cfg.framework == "torch":
        import torch
        import torch_seed

        trainer = torch_seed.SeedTrainer(channels_last=cfg.channels_last)
        mean = torch.tensor(torch_seed.SEED_MEAN)[:, None, None]
        std = torch.tensor(torch_seed.SEED_STD)[:, None, None]
        inputs = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
        inputs = inputs.contiguous()
        targets = torch.from_numpy(labels.astype("int64"))

        def run_all() -> int:
            correct = 0
            for s in range(0, n, EVAL_BATCH):
                outputs = trainer.predict(inputs[s : s + EVAL_BATCH])
                correct += int(outputs.argmax(1).eq(targets[s : s + EVAL_BATCH]).sum().item())
            return correct

        start = time.perf_counter()
        trainer.predict(inputs[:EVAL_BATCH])
        first = time.perf_counter() - start
        start = time.perf_counter()
        run_all()
        elapsed = time.perf_counter() - start
        return {"img_s": n / elapsed, "first_call_s": first, "real_data": real}

    from jresnet import train

    setup = JaxSetup()
    eval_fn = train.make_eval_fn(setup.model, setup.mean, setup.std, setup.mesh)
    state = setup.replicated_state()
    variables = {"params": state.params, "batch_stats": state.batch_stats}

    def evaluate(x: Any, y: Any) -> dict[str, float]:
        return train.evaluate(eval_fn, variables, x, y, EVAL_BATCH, setup.mesh)

    start = time.perf_counter()
    evaluate(images[:EVAL_BATCH], labels[:EVAL_BATCH])
    first = time.perf_counter() - start
    start = time.perf_counter()
    evaluate(images, labels)
    elapsed = time.perf_counter() - start
    return {"img_s": n / elapsed, "first_call_s": first, "real_data": real}


def worker_diag(cfg: Config, sizes: Sizes, data: str | None) -> dict[str, Any]:
    """Where jresnet's training step spends time beyond the model (one process, one pass).

    Throughput (img/s over ``diag_steps`` steps after warm-up, batches already on the device)
    of `train_step` jitted alone on a float batch, then of jresnet's driver
    (`make_train_fn`: normalisation or augmentation, shard_map over the mesh) without and with
    augmentation, 1 and K steps per call; then the host-side pieces of the loop per call.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jresnet import input_pipeline, parallel, train

    steps, warm = sizes.diag_steps, 2
    k = sizes.fused_steps
    images, labels, real = _load_data(data, "train", k * BATCH)
    setup = JaxSetup()
    out: dict[str, Any] = {"real_data": real, "steps": steps, "k": k}

    def throughput(call: Callable[[], Any], steps_per_call: int = 1) -> float:
        calls = max(steps // steps_per_call, 1)
        _time_calls(call, jax.block_until_ready, max(warm // steps_per_call, 1))
        return calls * steps_per_call * BATCH / _time_calls(call, jax.block_until_ready, calls)

    host_images, host_labels = images[:BATCH], labels[:BATCH]
    float_images = input_pipeline.normalize(jnp.asarray(host_images), setup.mean, setup.std)
    float_labels = jnp.asarray(host_labels)
    bare_step = jax.jit(
        functools.partial(
            train.train_step, model=setup.model, tx=setup.tx, learning_rate_fn=setup.lr_fn
        ),
        donate_argnums=0,
    )
    holder = {"state": setup.state}

    def bare() -> Any:
        holder["state"], metrics = bare_step(
            holder["state"], {"image": float_images, "label": float_labels}
        )
        return metrics

    out["bare_step_img_s"] = throughput(bare)
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
            out[name] = None  # a rolled XLA while loop: ~20x slower, measured elsewhere
            continue

        def driver(fn: Callable[..., Any] = fn, x: Any = x, y: Any = y) -> Any:
            holder["state"], metrics = fn(holder["state"], x, y, key)
            return metrics

        out[name] = throughput(driver, per_call)

    # Host-side pieces of one loop iteration (1 step per call), each repeated, synced at end.
    reps = 200

    def per_call_us(fn: Callable[[], Any]) -> float:
        jax.block_until_ready(fn())
        start = time.perf_counter()
        result = None
        for _ in range(reps):
            result = fn()
        jax.block_until_ready(result)
        return (time.perf_counter() - start) / reps * 1e6

    idx = input_pipeline.epoch_permutation(0, 0, len(images))[:BATCH]
    out["host_gather_us"] = per_call_us(lambda: (images[idx], labels[idx]))
    chunk = [(images[idx], labels[idx])]
    out["stack_and_to_device_us"] = per_call_us(
        lambda: parallel.global_batch(
            [np.stack(a) for a in zip(*chunk, strict=True)], setup.mesh, batch_axis=1
        )
    )
    metrics = {
        "loss": jnp.ones((1,), jnp.float32),
        "accuracy": jnp.ones((1,), jnp.float32),
        "learning_rate": jnp.ones((1,), jnp.float32),
    }
    sums = {"loss": jnp.float32(0), "accuracy": jnp.float32(0)}

    def metric_bookkeeping() -> Any:
        nonlocal sums
        m = dict(metrics)
        lr = m.pop("learning_rate")[-1]
        m = {name: v.sum() for name, v in m.items()}
        sums = jax.tree.map(jnp.add, sums, m)
        return sums, lr

    out["metric_bookkeeping_us"] = per_call_us(metric_bookkeeping)
    out["metrics_readback_us"] = per_call_us(
        lambda: {name: float(parallel.to_host(v)) for name, v in sums.items()}
    )
    augment_fn = jax.jit(lambda kk, x: input_pipeline.augment(kk, x, setup.mean, setup.std))
    normalize_fn = jax.jit(lambda x: input_pipeline.normalize(x, setup.mean, setup.std))
    device_u8 = jnp.asarray(host_images)
    out["augment_alone_us"] = per_call_us(lambda: augment_fn(key, device_u8))
    out["normalize_alone_us"] = per_call_us(lambda: normalize_fn(device_u8))
    out["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    return out


@dataclasses.dataclass(frozen=True)
class ConvShape:
    """One distinct convolution of ResNet-20 (option B) at batch 128; ``count``: how many."""

    label: str
    size: int  # input height = width
    c_in: int
    c_out: int
    kernel: int  # 3 (padding 1) or 1 (no padding)
    stride: int
    count: int
    has_dx: bool = True  # the first convolution's input gradient is never computed

    def flop(self) -> float:
        """FLOP of one pass (forward, input gradient or weight gradient): 2 per MAC."""
        out = self.size // self.stride
        return 2.0 * BATCH * out * out * self.c_out * self.c_in * self.kernel**2


RESNET20_CONVS = (
    ConvShape("conv1 3x3 3->16, 32x32", 32, 3, 16, 3, 1, 1, has_dx=False),
    ConvShape("3x3 16->16, 32x32", 32, 16, 16, 3, 1, 6),
    ConvShape("3x3 16->32 stride 2, 32x32", 32, 16, 32, 3, 2, 1),
    ConvShape("1x1 16->32 stride 2 (shortcut)", 32, 16, 32, 1, 2, 1),
    ConvShape("3x3 32->32, 16x16", 16, 32, 32, 3, 1, 5),
    ConvShape("3x3 32->64 stride 2, 16x16", 16, 32, 64, 3, 2, 1),
    ConvShape("1x1 32->64 stride 2 (shortcut)", 16, 32, 64, 1, 2, 1),
    ConvShape("3x3 64->64, 8x8", 8, 64, 64, 3, 1, 5),
)
CONV_PASSES = ("fwd", "dx", "dw")


def median_ms(fn: Callable[[], Any], sync: Callable[[Any], Any], reps: int) -> float:
    """Median milliseconds of ``reps`` synced calls of ``fn`` after two warm-up calls."""
    for _ in range(2):
        sync(fn())
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def worker_convs(cfg: Config, sizes: Sizes) -> dict[str, Any]:
    """Milliseconds of each of ResNet-20's convolutions alone: forward, input and weight gradient.

    Random float32 data at batch 128. JAX: the model's own convolution
    (`jresnet.conv.conv_general_dilated`: lax's, with the stride-2 input gradient by
    phases on CPU; NHWC/HWIO, explicit padding) and its `jax.vjp` with respect to the
    input or the kernel, each jitted alone (``lax_conv``: `lax.conv_general_dilated`).
    torch: ``F.conv2d`` and ``torch.nn.grad.conv2d_input`` / ``conv2d_weight``
    (autograd's own kernels).
    """
    out: dict[str, Any] = {"ms": {}}
    if cfg.framework == "torch":
        import torch
        import torch.nn.functional as F
        from torch.nn import grad

        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        for shape in RESNET20_CONVS:
            pad = shape.kernel // 2
            x = torch.randn(BATCH, shape.c_in, shape.size, shape.size).to(memory_format=fmt)
            w = torch.randn(shape.c_out, shape.c_in, shape.kernel, shape.kernel)
            w = w.to(memory_format=fmt)
            y = F.conv2d(x, w, stride=shape.stride, padding=pad)
            dy = torch.randn_like(y)
            calls = {
                "fwd": lambda x=x, w=w, s=shape, p=pad: F.conv2d(x, w, stride=s.stride, padding=p),
                "dx": lambda x=x, w=w, dy=dy, s=shape, p=pad: grad.conv2d_input(
                    x.shape, w, dy, stride=s.stride, padding=p
                ),
                "dw": lambda x=x, w=w, dy=dy, s=shape, p=pad: grad.conv2d_weight(
                    x, w.shape, dy, stride=s.stride, padding=p
                ),
            }
            with torch.no_grad():
                out["ms"][shape.label] = {
                    name: median_ms(call, lambda r: r, sizes.conv_reps)
                    for name, call in calls.items()
                    if name != "dx" or shape.has_dx
                }
        out["torch_threads"] = torch.get_num_threads()
        return out

    import jax
    import numpy as np
    from jax import lax

    from jresnet import conv as jresnet_conv

    if cfg.lax_conv:
        conv_general_dilated = lax.conv_general_dilated
    else:
        conv_general_dilated = jresnet_conv.conv_general_dilated
    rng = np.random.default_rng(0)
    for shape in RESNET20_CONVS:
        pad = ((1, 1), (1, 1)) if shape.kernel == 3 else ((0, 0), (0, 0))

        def conv(x: Any, w: Any, shape: ConvShape = shape, pad: Any = pad) -> Any:
            return conv_general_dilated(
                x, w, (shape.stride,) * 2, pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
            )

        def draw(*dims: int) -> Any:
            return jax.numpy.asarray(rng.standard_normal(dims, np.float32))

        x = draw(BATCH, shape.size, shape.size, shape.c_in)
        w = draw(shape.kernel, shape.kernel, shape.c_in, shape.c_out)
        dy = draw(*jax.eval_shape(conv, x, w).shape)
        fwd = jax.jit(conv)
        dx = jax.jit(lambda x, w, dy, conv=conv: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0])
        dw = jax.jit(lambda x, w, dy, conv=conv: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
        calls = {
            "fwd": lambda fwd=fwd, x=x, w=w: fwd(x, w),
            "dx": lambda dx=dx, x=x, w=w, dy=dy: dx(x, w, dy),
            "dw": lambda dw=dw, x=x, w=w, dy=dy: dw(x, w, dy),
        }
        out["ms"][shape.label] = {
            name: median_ms(call, jax.block_until_ready, sizes.conv_reps)
            for name, call in calls.items()
            if name != "dx" or shape.has_dx
        }
    out["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    out["cpus"] = len(os.sched_getaffinity(0))
    return out


def conv_totals(ms: dict[str, dict[str, float]]) -> dict[str, float]:
    """Count-weighted sums over ResNet-20's convolutions: ms per training step, per pass."""
    totals = {
        name: sum(shape.count * ms[shape.label].get(name, 0.0) for shape in RESNET20_CONVS)
        for name in CONV_PASSES
    }
    totals["all"] = sum(totals.values())
    return totals


def worker_prepare(data_dir: str, out_dir: str) -> dict[str, Any]:
    """Loads the TFDS CIFAR-10 splits once and stores them as .npy for the workers."""
    import numpy as np

    from jresnet import input_pipeline

    info: dict[str, Any] = {}
    for split in ("train", "test"):
        start = time.perf_counter()
        images, labels = input_pipeline.load_split("cifar10", split, data_dir)
        info[f"{split}_load_s"] = time.perf_counter() - start
        info[f"{split}_count"] = len(labels)
        np.save(os.path.join(out_dir, f"{split}_images.npy"), images)
        np.save(os.path.join(out_dir, f"{split}_labels.npy"), labels)
    return info


def run_worker(args: argparse.Namespace) -> None:
    """Entry point of a worker process: runs one configuration, writes its JSON result."""
    sys.path[:0] = [ROOT, BENCH_DIR]
    sizes = QUICK if args.quick else FULL
    if args.worker == "prepare":
        result = worker_prepare(args.data_dir, args.data)
    else:
        cfg = CONFIG_BY_NAME[args.worker]
        if cfg.cpus is not None:  # before any import starts a thread pool
            os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: cfg.cpus])
        if cfg.xla == "shipped":  # as train.py does, before the first JAX import
            try:
                from jresnet import xla_setup
            except ImportError:
                pass
            else:
                xla_setup.configure_cpu_flags()
        fn = {
            "matmul": lambda: worker_matmul(cfg, sizes),
            "step": lambda: worker_step(cfg, sizes),
            "e2e": lambda: worker_e2e(cfg, sizes, args.data),
            "eval": lambda: worker_eval(cfg, sizes, args.data),
            "diag": lambda: worker_diag(cfg, sizes, args.data),
            "convs": lambda: worker_convs(cfg, sizes),
        }[cfg.measure]
        result = fn()
    result.update(_rss_mb())
    with open(args.result, "w") as f:
        json.dump(result, f)


# --------------------------------------------------------------------------------------------
# Parent side: scheduling, machine description, report.

AMD_FAMILIES = {23: "Zen 1/2", 25: "Zen 3/4", 26: "Zen 5"}


def machine_info() -> dict[str, Any]:
    """CPU model, core counts and RAM of this machine."""
    cpu: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                cpu[key.strip()] = value.strip()
    except OSError:
        pass
    model = cpu.get("model name", platform.processor() or "unknown")
    family = cpu.get("cpu family", "?")
    if cpu.get("vendor_id") == "AuthenticAMD" and family.isdigit():
        model += f" (family {family}: {AMD_FAMILIES.get(int(family), 'unknown')})"
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    mem_gib = int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return {
        "cpu": model,
        "cpu_family_model_stepping": [cpu.get(k) for k in ("cpu family", "model", "stepping")],
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "avx512f": "avx512f" in cpu.get("flags", "").split(),
        "ram_gib": mem_gib,
        "os": platform.platform(),
        "load_average_at_start": os.getloadavg(),
    }


def versions() -> dict[str, str]:
    """Versions of Python and the packages benchmarked."""
    out = {"python": platform.python_version()}
    for package in ("jax", "jaxlib", "flax", "optax", "torch", "numpy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def ynn_flag_usable() -> bool:
    """Whether this jaxlib accepts YNN_FLAG (known versions, else a probe process)."""
    if versions()["jaxlib"].startswith(YNN_KNOWN_JAXLIB):
        return True
    env = dict(os.environ, XLA_FLAGS=YNN_FLAG)
    probe = "import jax.numpy as jnp; jnp.zeros(2).block_until_ready()"
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True)
    return result.returncode == 0


def worker_env(cfg: Config | None) -> dict[str, str]:
    """A worker's environment: XLA_FLAGS only for "ynn" configurations."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env.pop("JRESNET_XLA_CPU_FLAGS", None)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if cfg is not None and cfg.xla == "ynn":
        env["XLA_FLAGS"] = YNN_FLAG
    return env


def worker_command(name: str, quick: bool, data: str | None, result: str) -> list[str]:
    """The command line of a worker process."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--result", result]
    if data:
        cmd += ["--data", data]
    if quick:
        cmd.append("--quick")
    return cmd


def _busy_cpu_s() -> float:
    """Non-idle CPU seconds of the whole machine since boot (``/proc/stat``)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    """User + system CPU seconds of this process's waited-for descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def spawn(
    name: str, cfg: Config | None, quick: bool, data: str | None, tmp: str, extra: Sequence[str]
) -> dict[str, Any]:
    """Runs one worker; returns its result (or the error), wall time and background load."""
    result_path = os.path.join(tmp, f"{name}.json")
    if os.path.exists(result_path):
        os.remove(result_path)
    cmd = worker_command(name, quick, data, result_path) + list(extra)
    busy_before, cpu_before = _busy_cpu_s(), _children_cpu_s()
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=worker_env(cfg), capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    # CPU time that processes other than this worker (and its children) used meanwhile.
    other = (_busy_cpu_s() - busy_before) - (_children_cpu_s() - cpu_before)
    if proc.returncode != 0 or not os.path.exists(result_path):
        tail = (proc.stderr or proc.stdout)[-2000:]
        return {"error": f"exit {proc.returncode}: {tail}", "wall_s": wall}
    with open(result_path) as f:
        result = json.load(f)
    result["wall_s"] = wall
    result["other_load"] = max(other, 0.0) / wall
    return result


def summarize(runs: dict[str, list[dict[str, Any]]], key: str) -> dict[str, dict[str, Any]]:
    """Median, min and max of ``key`` over each configuration's successful runs."""
    out = {}
    for name, results in runs.items():
        values = [r[key] for r in results if key in r]
        if values:
            out[name] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
            }
    return out


def _fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if not a or not b else f"{a / b:.2f}"


def render_report(report: dict[str, Any]) -> str:
    """RESULTS.md from the collected runs."""
    runs: dict[str, list[dict[str, Any]]] = report["runs"]
    sizes = report["sizes"]
    img = summarize(runs, "img_s")

    def label(cfg: Config) -> str:
        return cfg.label.format(k=sizes["fused_steps"])

    lines = [
        "# jresnet vs the seed's PyTorch training: CPU benchmark",
        "",
        f"Generated by `{report['command']}` on {report['date']} "
        f"({report['rounds']} interleaved round(s), {report['wall_min']:.1f} min). "
        "Do not edit by hand: rerun the command.",
        "",
        "Each configuration ran in its own process, interleaved A B C ... over rounds; "
        "img/s is the median over rounds (min-max beside it), ratios are of medians. "
        "Compare only numbers from one run: the machine's speed drifts between runs, and "
        "other work on it shows in the background-load column below.",
        "",
    ]
    machine, vers = report["machine"], report["versions"]
    lines += [
        "## Machine and versions",
        "",
        f"- CPU: {machine['cpu']}, {machine['logical_cpus']} logical CPUs "
        f"({machine['usable_cpus']} usable), AVX-512: {machine['avx512f']}, "
        f"RAM {machine['ram_gib']:.1f} GiB; {machine['os']}",
        "- Load average at start: "
        + ", ".join(f"{x:.2f}" for x in machine["load_average_at_start"]),
        "- " + ", ".join(f"{k} {v}" for k, v in vers.items()),
        f"- Data: {report['data']}",
        f"- YNN flag: `{YNN_FLAG}`"
        + ("" if report["ynn_usable"] else " (not accepted by this jaxlib: skipped)"),
        f"- XLA_FLAGS that `jresnet.xla_setup` (train.py) set in the 'shipped' workers: "
        f"`{report['shipped_flags'] or '(none)'}`",
        "",
    ]

    peak = summarize(runs, "gflops")
    peak_ref = max((s["median"] for s in peak.values()), default=None)
    lines += [
        f"## fp32 matmul peak ({MATMUL_N}x{MATMUL_N}, best of {sizes['matmul_reps']} per process)",
        "",
        "| library | median GFLOP/s | min-max |",
        "|---|---:|---:|",
    ]
    for cfg in CONFIGS:
        if cfg.measure == "matmul" and cfg.name in peak:
            s = peak[cfg.name]
            spread = f"{_fmt(s['min'], 1)}-{_fmt(s['max'], 1)}"
            lines.append(f"| {label(cfg)} | {_fmt(s['median'], 1)} | {spread} |")
    lines.append("")

    titles = {
        "step": (
            "## 1. Model step: training throughput, batch 128, random data",
            "After warm-up; compile apart; batches already on the device. `jit(train_step)`: "
            "`jresnet.train.train_step` jitted alone on a float batch. jresnet driver: "
            "`make_train_fn(augment=False, steps_per_call=K)` (normalise + `train_step` under "
            "`shard_map` on a 1-device mesh, K steps in a `lax.scan` unrolled K times) on a "
            "uint8 batch, with the XLA flags `train.py` sets. "
            f"ResNet-20 training = {TRAIN_FLOP_PER_IMAGE / 1e6:.1f} MFLOP/image "
            f"({resnet20_macs() / 1e6:.2f} M MACs forward x 2 FLOP x 3 for forward + "
            f"backward); '% of peak' is against the best fp32 matmul above "
            f"({_fmt(peak_ref, 1)} GFLOP/s).",
        ),
        "e2e": (
            "## 2. End to end: training loop with input pipeline and augmentation",
            f"jresnet: `train.train_and_evaluate` itself, 2 epochs of {sizes['e2e_steps']} "
            "steps of 128 (the first compiles and warms up); the number is the second epoch's "
            "`images_per_s` from the loop's own metrics.jsonl (host gather of each shuffled "
            "batch, transfer, on-device augmentation, metric sums, read-backs; eval and "
            "checkpointing fall outside the epoch time). XLA flags as `train.py` sets them. "
            f"Seed: {sizes['e2e_steps']} steps after {sizes['e2e_torch_warmup']} warm-up "
            "steps of `DataLoader(batch_size=128, shuffle=True, num_workers=2)` with "
            "per-sample transforms, `loss.item()` and the accuracy read back every step.",
        ),
        "eval": (
            "## 3. Eval: batch 1000, inference mode",
            f"{sizes['eval_batches']} batches of 1000 test images after one warm-up batch. "
            "jresnet: `train.evaluate(make_eval_fn(...))` from uint8 (normalisation in the "
            "jitted step); torch: `inference_mode`, pre-normalised float tensors, accuracy "
            "read back per batch.",
        ),
    }
    for measure, (title, note) in titles.items():
        eager = img.get(TORCH_EAGER[measure], {}).get("median")
        cl = img.get(TORCH_CL[measure], {}).get("median")
        header = "| config | median img/s | min-max | vs torch eager | vs torch channels_last |"
        sep = "|---|---:|---:|---:|---:|"
        if measure == "step":
            header += " % of fp32 peak |"
            sep += "---:|"
        lines += [title, "", note, "", header, sep]
        for cfg in CONFIGS:
            if cfg.measure != measure or cfg.name not in runs:
                continue
            s = img.get(cfg.name)
            if s is None and any(r.get("skipped") for r in runs[cfg.name]):
                lines.append(
                    f"| {label(cfg)} | not measured: convolutions in a rolled XLA while loop "
                    "(~20x slower; full runs time 1 step) | | | |"
                )
                continue
            if s is None:
                error = next((r["error"] for r in runs[cfg.name] if "error" in r), "")
                lines.append(f"| {label(cfg)} | failed: {error[-80:]!r} | | | |")
                continue
            name = label(cfg)
            if any(r.get("rolled_while_loop") for r in runs[cfg.name]):
                steps = next(r["timed_steps"] for r in runs[cfg.name] if "timed_steps" in r)
                name += f" **(rolled XLA while loop: measured once, over {steps} step(s))**"
            row = (
                f"| {name} | {_fmt(s['median'])} | {_fmt(s['min'])}-{_fmt(s['max'])} | "
                f"{_ratio(s['median'], eager)} | {_ratio(s['median'], cl)} |"
            )
            if measure == "step":
                share = s["median"] * TRAIN_FLOP_PER_IMAGE / (peak_ref * 1e9) if peak_ref else None
                row += f" {_fmt(None if share is None else 100 * share)}% |"
            lines.append(row)
        lines.append("")

    compile_s = summarize(runs, "compile_s")
    first = summarize(runs, "first_call_s")
    lines += [
        "## Compile and first-call times (median s)",
        "",
        "JAX model step: `lower().compile()`, then the first call. jresnet end to end: "
        "compile = first epoch minus second (same steps), first = the whole first epoch. "
        "Other rows: the first step or batch (torch end to end: with DataLoader worker "
        "start-up).",
        "",
        "| config | compile | first call / epoch |",
        "|---|---:|---:|",
    ]
    for cfg in CONFIGS:
        if cfg.name in first:
            c = compile_s.get(cfg.name, {}).get("median")
            lines.append(f"| {label(cfg)} | {_fmt(c, 1)} | {_fmt(first[cfg.name]['median'], 2)} |")
    lines.append("")

    rss = summarize(runs, "rss_mb")
    child = summarize(runs, "children_rss_mb")
    other = summarize(runs, "other_load")
    lines += [
        "## Peak RSS and background load per configuration",
        "",
        "Peak RSS: `ru_maxrss` of the configuration's process, median over rounds (MiB); "
        "'workers': the largest of its DataLoader worker processes (0 where it has none). "
        "End-to-end and eval processes hold the dataset arrays (train: 147 MiB of uint8). "
        "Background load: CPU cores that other processes on the machine kept busy while the "
        "configuration ran (from /proc/stat, minus the configuration's own CPU time), median "
        "and max over rounds; anything well above 0 on this 2-core machine slows that "
        "configuration (torch's OpenMP threads more than XLA's).",
        "",
        "| config | peak RSS | workers | background load (cores) |",
        "|---|---:|---:|---:|",
    ]
    for cfg in CONFIGS:
        if cfg.name in rss:
            load = other.get(cfg.name, {})
            lines.append(
                f"| {cfg.name} | {_fmt(rss[cfg.name]['median'])} | "
                f"{_fmt(child.get(cfg.name, {}).get('median'))} | "
                f"{_fmt(load.get('median'), 2)} (max {_fmt(load.get('max'), 2)}) |"
            )
    lines.append("")

    diag = next((r for r in runs.get("diag-jax", []) if "error" not in r), None)
    if diag:
        lines += render_diag(diag)
    lines += render_convs(runs, img)

    lines += [
        "## Commands",
        "",
        "The run, then each worker process as the run started it (DATA: the temporary "
        "folder where the `prepare` worker left the dataset as .npy; OUT.json: the worker's "
        "result). XLA_FLAGS is unset unless shown; `--worker e2e-jax*` and `diag-jax` call "
        "`jresnet.xla_setup.configure_cpu_flags()` first, as `train.py` does.",
        "",
        "```",
        report["command"],
    ]
    lines += [env + cmd for env, cmd in report["worker_commands"].values()]
    lines += ["```", ""]
    errors = {n: r["error"] for n, rs in runs.items() for r in rs if "error" in r}
    if errors:
        lines += ["## Failures", ""]
        lines += [f"- {n}: `{e[-300:]}`" for n, e in errors.items()]
        lines.append("")
    return "\n".join(lines)


def render_convs(runs: dict[str, list[dict[str, Any]]], img: dict[str, Any]) -> list[str]:
    """The per-convolution section: where the model step's time goes, XLA against oneDNN."""
    configs = [c for c in CONFIGS if c.measure == "convs" and c.name in runs]
    medians: dict[str, dict[str, dict[str, float]]] = {}
    for cfg in configs:
        results = [r["ms"] for r in runs[cfg.name] if "ms" in r]
        if results:
            medians[cfg.name] = {
                shape.label: {
                    name: statistics.median(r[shape.label][name] for r in results)
                    for name in results[0][shape.label]
                }
                for shape in RESNET20_CONVS
            }
    if not medians:
        return []
    shown = [c for c in configs if c.name in medians]

    def cell(ms: dict[str, float]) -> str:
        return " / ".join(_fmt(ms[name], 2) if name in ms else "-" for name in CONV_PASSES)

    lines = [
        "## 4. Convolutions alone: where the model step's time goes",
        "",
        "Each of ResNet-20's convolutions at batch 128, jitted (JAX) or called (torch) alone "
        "on random float32 data: median ms of the forward pass / the input gradient (dx) / "
        "the weight gradient (dw), each its own call, over rounds. XLA: the model's "
        "convolution (`jresnet.conv`); 'lax's own gradients': `lax.conv_general_dilated` "
        "itself, whose stride-2 input gradient `jresnet.conv` replaces on CPU. '1 CPU': the "
        "same process pinned to one CPU; a pass that takes as long there as with 2 CPUs runs "
        "single-threaded. The totals weight each convolution by how often ResNet-20 has it "
        "(21 in all), i.e. the convolution time of one training step, beside the whole "
        "step measured in section 1 (ms per batch of 128).",
        "",
        "| convolution (count) | " + " | ".join(c.label for c in shown) + " |",
        "|---|" + "---:|" * len(shown),
    ]
    for shape in RESNET20_CONVS:
        cells = [cell(medians[c.name][shape.label]) for c in shown]
        lines.append(f"| {shape.label} (x{shape.count}) | " + " | ".join(cells) + " |")
    totals = {c.name: conv_totals(medians[c.name]) for c in shown}
    lines.append(
        "| **per training step: fwd / dx / dw** | "
        + " | ".join(f"**{cell(totals[c.name])}**" for c in shown)
        + " |"
    )
    lines.append(
        "| **per training step: all convolutions** | "
        + " | ".join(f"**{_fmt(totals[c.name]['all'], 1)}**" for c in shown)
        + " |"
    )
    steps = {
        "convs-jax": "step-jax-fused",
        "convs-torch": "step-torch",
        "convs-torch-cl": "step-torch-cl",
    }
    whole = [
        _fmt(BATCH / img[steps[c.name]]["median"] * 1e3, 1)
        if c.name in steps and steps[c.name] in img
        else ""
        for c in shown
    ]
    lines += ["| whole step (section 1), ms | " + " | ".join(whole) + " |", ""]
    return lines


def render_diag(diag: dict[str, Any]) -> list[str]:
    """The step breakdown section."""
    bare = diag["bare_step_img_s"]
    k = diag["k"]
    lines = [
        "## Where jresnet's training step spends time (one process, round 1 only)",
        "",
        f"XLA flags as train.py sets them (`{diag['xla_flags'] or 'none'}`). Each row: "
        f"{diag['steps']} steps after warm-up, batch already on the device, one after the "
        "other in one process (not interleaved).",
        "",
        "| stage | img/s | ms/step | vs bare train_step |",
        "|---|---:|---:|---:|",
    ]
    for key, name in (
        ("bare_step_img_s", "`jit(train_step)` (no mesh), float batch"),
        ("driver_normalize_k1_img_s", "`make_train_fn(augment=False)`, uint8 batch"),
        ("driver_augment_k1_img_s", "`make_train_fn(augment=True)`, uint8 batch"),
        (f"driver_normalize_k{k}_img_s", f"`make_train_fn(augment=False, steps_per_call={k})`"),
        (f"driver_augment_k{k}_img_s", f"`make_train_fn(augment=True, steps_per_call={k})`"),
    ):
        value = diag.get(key)
        if value is None:
            lines.append(f"| {name} | skipped: rolled XLA while loop (see above) | | |")
            continue
        lines.append(
            f"| {name} | {_fmt(value)} | {_fmt(BATCH / value * 1e3, 1)} | {_ratio(value, bare)} |"
        )
    lines += [
        "",
        "Host-side pieces of one loop iteration at 1 step per call (microseconds per call, "
        "repeated and synced at the end):",
        "",
        f"- gather 128 shuffled rows `images[idx], labels[idx]`: {diag['host_gather_us']:.0f}",
        f"- `np.stack` + `parallel.global_batch(batch_axis=1)` (to device): "
        f"{diag['stack_and_to_device_us']:.0f}",
        "- metric bookkeeping (`pop('learning_rate')[-1]`, `.sum()` per metric, "
        f"`tree.map(jnp.add)`): {diag['metric_bookkeeping_us']:.0f}",
        f"- reading the metric sums back (every `log_every_steps`): "
        f"{diag['metrics_readback_us']:.0f}",
        f"- for scale: augmentation alone, jitted (crop + flip + normalise, batch 128): "
        f"{diag['augment_alone_us']:.0f}; normalisation alone: {diag['normalize_alone_us']:.0f}",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round, few steps (~2 min)")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="TFDS data dir")
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (quick: 1)")
    parser.add_argument("--output", help="report path (default RESULTS.md; quick: stdout)")
    parser.add_argument("--only", help="comma-separated config names (for development)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return

    started = time.perf_counter()
    rounds = args.rounds or (1 if args.quick else 3)
    sizes = QUICK if args.quick else FULL
    command = shlex.join(["python", os.path.relpath(__file__, os.getcwd()), *sys.argv[1:]])
    configs = list(CONFIGS)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - set(CONFIG_BY_NAME)
        if unknown:
            parser.error(f"unknown configs {sorted(unknown)}; known: {sorted(CONFIG_BY_NAME)}")
        configs = [c for c in configs if c.name in wanted]
    elif args.quick:
        configs = [c for c in configs if not c.once]
    ynn_usable = ynn_flag_usable()
    if not ynn_usable:
        configs = [c for c in configs if c.xla != "ynn"]
    machine = machine_info()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] {message}", file=sys.stderr, flush=True)

    worker_commands: dict[str, tuple[str, str]] = {}
    runs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in configs}
    with tempfile.TemporaryDirectory(prefix="jresnet-bench-") as tmp:
        data: str | None = None
        data_desc = "synthetic uniform uint8 images (no TFDS CIFAR-10 found)"
        if os.path.isdir(os.path.join(args.data_dir, "cifar10")):
            prepare = worker_command("prepare", args.quick, "DATA", "OUT.json")
            worker_commands["prepare"] = ("", shlex.join([*prepare, "--data-dir", args.data_dir]))
            info = spawn("prepare", None, args.quick, tmp, tmp, ["--data-dir", args.data_dir])
            if "error" in info:
                log(f"could not load {args.data_dir}: {info['error'][-500:]}; using synthetic")
            else:
                data = tmp
                data_desc = (
                    f"real CIFAR-10 (JPEG copy) from TFDS {args.data_dir}: "
                    f"{info['train_count']:,} train / {info['test_count']:,} test images "
                    f"(loaded once in {info['train_load_s'] + info['test_load_s']:.1f} s, "
                    "passed to the workers as .npy)"
                )
        log(f"data: {data_desc}")

        measure_once = {c.name for c in configs if c.once}
        for r in range(rounds):
            for cfg in configs:
                if cfg.name in measure_once and r > 0:
                    continue
                result = spawn(cfg.name, cfg, args.quick, data, tmp, [])
                runs[cfg.name].append(result)
                env = f"XLA_FLAGS={shlex.quote(YNN_FLAG)} " if cfg.xla == "ynn" else ""
                cmd = shlex.join(worker_command(cfg.name, args.quick, data and "DATA", "OUT.json"))
                worker_commands[cfg.name] = (env, cmd)
                if "error" in result:
                    log(f"round {r + 1}/{rounds} {cfg.name}: error")
                    log(result["error"][-1500:])
                    continue
                if result.get("rolled_while_loop"):
                    measure_once.add(cfg.name)
                    log(f"{cfg.name}: rolled XLA while loop (very slow), so measured only once")
                if "ms" in result:
                    result["total_ms"] = conv_totals(result["ms"])["all"]
                shown = result.get("img_s", result.get("gflops", result.get("total_ms")))
                if result.get("skipped"):
                    log(f"round {r + 1}/{rounds} {cfg.name}: not measured (rolled while loop)")
                    continue
                log(
                    f"round {r + 1}/{rounds} {cfg.name}: {_fmt(shown, 1)} "
                    f"({result['wall_s']:.1f} s, background load "
                    f"{result.get('other_load', 0.0):.2f} cores)"
                )

    shipped = [r for c in configs if c.xla == "shipped" for r in runs[c.name]]
    shipped_flags = next((r["xla_flags"] for r in shipped if "xla_flags" in r), "")
    report = {
        "command": command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "rounds": rounds,
        "wall_min": (time.perf_counter() - started) / 60,
        "machine": machine,
        "versions": versions(),
        "data": data_desc,
        "ynn_usable": ynn_usable,
        "shipped_flags": shipped_flags,
        "sizes": dataclasses.asdict(sizes),
        "worker_commands": worker_commands,
        "runs": runs,
    }
    text = render_report(report)
    output = args.output or (None if args.quick else os.path.join(BENCH_DIR, "RESULTS.md"))
    if output:
        with open(output, "w") as f:
            f.write(text)
        with open(os.path.splitext(output)[0] + ".json", "w") as f:
            json.dump(report, f, indent=1)
        log(f"wrote {output}")
    print(text)


if __name__ == "__main__":
    main()
