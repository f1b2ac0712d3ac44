"""The benchmarked configurations of each profile, and how long each measurement runs.

Two profiles: ``cpu`` (jresnet against the seed's PyTorch training on this machine's
CPU) and ``gpu`` (the fused train step in float32 and bfloat16 at two batch sizes,
unrolled against rolled scans, the seed's PyTorch loop and jresnet's loop end to end, on
one GPU). Each has real sizes and dry-run sizes (tiny; a dry run of the ``gpu`` profile
runs on a CPU).

Imports nothing heavy: worker processes read their configuration before they set CPU
affinity and XLA flags, which must come before numpy, JAX or torch start thread pools.
"""

from __future__ import annotations

import dataclasses

BATCH = 128  # the seed's training batch, images
EVAL_BATCH = 1000  # eval batch, images
MATMUL_N = 4096  # the fp32 peak's square matmul size
TRAIN_IMAGES = 50_000  # CIFAR-10's training split: an epoch, for 200-epoch projections
PROJECTED_EPOCHS = 200  # the seed's recipe
PROFILES = ("cpu", "gpu")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big and how long each measurement of a profile runs.

    Throughputs (`benchmarks.timing.rates`) come from ``repeats`` blocks of calls of at
    least ``min_timed_s`` each, after the first call (compile and warm-up) and
    ``warmup_calls`` more untimed calls.
    """

    model: str  # "resnet20"; the gpu dry run: a smaller one
    batches: tuple[int, int]  # the seed's batch, and the "large" one
    fused_steps: int  # K, steps per call of the "K" configurations
    epoch_images: int  # the "epoch" configurations: one epoch of these per call
    warmup_calls: int
    min_timed_s: float
    repeats: int
    e2e_steps: int  # steps per epoch; jresnet: warm-up epoch + timed epoch
    eval_batches: int
    diag_steps: int
    matmul_reps: int
    conv_reps: int  # timed calls per convolution and pass (median)
    copy_bytes: int  # array size of the device-copy bandwidth probe
    measure_rolled: bool  # measure drivers that run convolutions in a rolled XLA while loop


_CPU = Sizes(
    model="resnet20",
    batches=(BATCH, 1024),
    fused_steps=10,
    epoch_images=TRAIN_IMAGES,
    warmup_calls=2,
    min_timed_s=4.0,
    repeats=1,
    e2e_steps=60,
    eval_batches=5,
    diag_steps=10,
    matmul_reps=3,
    conv_reps=15,
    copy_bytes=1 << 28,
    measure_rolled=True,
)
_GPU = dataclasses.replace(
    _CPU,
    warmup_calls=1,
    min_timed_s=2.0,
    repeats=3,
    e2e_steps=TRAIN_IMAGES // BATCH,
    copy_bytes=1 << 30,
)
_TINY = dict(
    warmup_calls=0, eval_batches=1, diag_steps=2, matmul_reps=1, conv_reps=1, copy_bytes=1 << 20
)
SIZES = {  # (profile, dry run) -> sizes
    ("cpu", False): _CPU,
    ("cpu", True): dataclasses.replace(
        _CPU, **_TINY, fused_steps=5, min_timed_s=0.5, e2e_steps=10, measure_rolled=False
    ),
    ("gpu", False): _GPU,
    ("gpu", True): dataclasses.replace(
        _GPU,
        **_TINY,
        model="resnet8",
        batches=(8, 16),
        fused_steps=2,
        epoch_images=32,
        min_timed_s=0.01,
        repeats=2,
        e2e_steps=4,
    ),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """One benchmarked configuration, run by its own worker process.

    Attributes:
      name: identifier (the worker's ``--worker`` argument).
      measure: "matmul", "copy", "step", "e2e", "eval", "diag" or "convs".
      framework: "numpy", "jax" or "torch".
      label: row label in the report; ``{batch}`` and ``{k}`` are filled in from `Sizes`.
      platform: the profile it belongs to, "cpu" or "gpu" (torch runs on CUDA there when
        it can; "cpu" workers get ``JAX_PLATFORMS=cpu``).
      xla: JAX on CPU: "default" (XLA_FLAGS unset), "ynn" (``XLA_FLAGS`` is
        `jresnet.xla_setup.YNN_FUSION_FLAG`) or "shipped" (XLA_FLAGS unset, then
        `jresnet.xla_setup.configure_cpu_flags` as ``train.py`` calls it).
      dtype: JAX's computation dtype, "float32" or "bfloat16".
      large_batch: the second of `Sizes.batches` instead of the seed's.
      steps_per_call: JAX: "1", "K" (`Sizes.fused_steps`) or "epoch" (one epoch of
        `Sizes.epoch_images` per call).
      rolled: JAX driver: the steps of a call in a rolled scan (``unroll=1``: an XLA
        while loop), else unrolled.
      augment: JAX driver: crop, flip and normalise each batch (as training does), else
        only normalise.
      channels_last: torch memory format.
      driver: JAX model step: jresnet's jitted driver (`make_train_fn`), else a plain
        ``jax.jit(train_step)``.
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
    platform: str = "cpu"
    xla: str = "default"
    dtype: str = "float32"
    large_batch: bool = False
    steps_per_call: str = "1"
    rolled: bool = False
    augment: bool = False
    channels_last: bool = False
    driver: bool = False
    once: bool = False
    cpus: int | None = None
    lax_conv: bool = False

    def batch(self, sizes: Sizes) -> int:
        """Training batch in images."""
        return sizes.batches[1] if self.large_batch else sizes.batches[0]

    def steps(self, sizes: Sizes) -> int:
        """Training steps per jitted call."""
        if self.steps_per_call == "epoch":
            return sizes.epoch_images // self.batch(sizes)
        return sizes.fused_steps if self.steps_per_call == "K" else 1

    def unroll(self, sizes: Sizes) -> int:
        """Steps unrolled in the call's scan (all of them, or 1 when rolled)."""
        return 1 if self.rolled else self.steps(sizes)

    def title(self, sizes: Sizes) -> str:
        """The row label with this run's batch and steps per call."""
        return self.label.format(batch=self.batch(sizes), k=self.steps(sizes))


def _gpu_step(dtype: str, large_batch: bool, steps_per_call: str, rolled: bool) -> Config:
    """A fused-step configuration of the gpu profile."""
    short = {"float32": "f32", "bfloat16": "bf16"}[dtype]
    name = f"gpu-step-{short}" + "-large" * large_batch
    name += {"K": "", "epoch": "-epoch"}[steps_per_call] + "-rolled" * rolled
    scan = "rolled (unroll=1)" if rolled else "unrolled"
    label = f"jresnet driver, {dtype}, batch {{batch}}, steps_per_call={{k}} {scan}"
    return Config(
        name,
        "step",
        "jax",
        label,
        platform="gpu",
        dtype=dtype,
        large_batch=large_batch,
        steps_per_call=steps_per_call,
        rolled=rolled,
        augment=True,
        driver=True,
    )


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
        steps_per_call="K",
    ),
    Config(
        "step-jax-rolled",
        "step",
        "jax",
        "jresnet driver, steps_per_call={k}, unroll=1 (a rolled scan: an XLA while loop)",
        xla="shipped",
        driver=True,
        steps_per_call="K",
        rolled=True,
        once=True,
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
        steps_per_call="K",
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
    # The gpu profile, most important first (a --budget-s cuts the tail).
    Config("gpu-copy", "copy", "jax", "device copy (read + write)", platform="gpu"),
    _gpu_step("float32", False, "K", False),
    _gpu_step("float32", False, "epoch", True),
    _gpu_step("bfloat16", False, "K", False),
    _gpu_step("bfloat16", False, "epoch", True),
    _gpu_step("float32", True, "epoch", True),
    _gpu_step("bfloat16", True, "epoch", True),
    _gpu_step("float32", False, "K", True),
    _gpu_step("float32", True, "K", False),
    _gpu_step("bfloat16", True, "K", False),
    Config("gpu-step-torch", "step", "torch", "torch eager NCHW (the seed)", platform="gpu"),
    Config(
        "gpu-step-torch-cl",
        "step",
        "torch",
        "torch channels_last",
        platform="gpu",
        channels_last=True,
    ),
    Config("gpu-e2e-torch", "e2e", "torch", "seed DataLoader loop, eager NCHW", platform="gpu"),
    Config(
        "gpu-e2e-torch-cl",
        "e2e",
        "torch",
        "seed DataLoader loop, channels_last",
        platform="gpu",
        channels_last=True,
    ),
    Config(
        "gpu-e2e-jax",
        "e2e",
        "jax",
        "jresnet train_and_evaluate, float32, steps_per_call={k}",
        platform="gpu",
        steps_per_call="K",
    ),
)
CONFIG_BY_NAME = {c.name: c for c in CONFIGS}


def profile_configs(profile: str) -> list[Config]:
    """The configurations of ``profile`` ("cpu" or "gpu"), in running order."""
    return [c for c in CONFIGS if c.platform == profile]


def torch_reference(cfg: Config, channels_last: bool) -> str | None:
    """The torch configuration a JAX throughput row is compared with (same profile and
    measure), or None."""
    for other in CONFIGS:
        if (other.platform, other.measure, other.framework) == (cfg.platform, cfg.measure, "torch"):
            if other.channels_last == channels_last:
                return other.name
    return None
