"""The benchmarked configurations and how long each measurement runs (FULL and QUICK).

Imports nothing heavy: worker processes read their configuration before they set CPU
affinity and XLA flags, which must come before numpy, JAX or torch start thread pools.
"""

from __future__ import annotations

import dataclasses

BATCH = 128  # training batch, images
EVAL_BATCH = 1000  # eval batch, images
MATMUL_N = 4096  # the fp32 peak's square matmul size


@dataclasses.dataclass(frozen=True)
class Config:
    """One benchmarked configuration, run by its own worker process.

    Attributes:
      name: identifier (the worker's ``--worker`` argument).
      measure: "matmul", "step", "e2e", "eval", "diag" or "convs".
      framework: "numpy", "jax" or "torch".
      label: row label in the report (``{k}``: the fused steps per call; ``{rolled}``: the
        steps of the rolled scan).
      xla: JAX only: "default" (XLA_FLAGS unset), "ynn" (``XLA_FLAGS`` is
        `jresnet.xla_setup.YNN_FUSION_FLAG`) or "shipped" (XLA_FLAGS unset, then
        `jresnet.xla_setup.configure_cpu_flags` as ``train.py`` calls it).
      channels_last: torch memory format.
      driver: JAX model step: jresnet's jitted driver (`make_train_fn`), else a plain
        ``jax.jit(train_step)``.
      fused: JAX: ``Sizes.fused_steps`` training steps per jitted call (an unrolled scan).
      rolled: JAX driver: ``Sizes.rolled_steps`` steps per call in a rolled scan
        (``unroll=1``: an XLA while loop), to measure what such loops cost on XLA:CPU.
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
    rolled: bool = False
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
    Config(
        "step-jax-rolled",
        "step",
        "jax",
        "jresnet driver, steps_per_call={rolled}, unroll=1 (a rolled scan: an XLA while loop)",
        xla="shipped",
        driver=True,
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
# The torch configurations every jresnet throughput is compared with, per measure.
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
    rolled_steps: int  # steps per call of the rolled-scan configuration
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
    rolled_steps=2,
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
    rolled_steps=2,
    e2e_steps=10,
    e2e_torch_warmup=2,
    eval_batches=2,
    diag_steps=5,
    matmul_reps=2,
    conv_reps=3,
    measure_rolled=False,
)


def sizes_for(quick: bool) -> Sizes:
    """QUICK for a smoke run, FULL otherwise."""
    return QUICK if quick else FULL
