"""One-command GPU benchmark: jresnet's fused train step, train.py end to end, and the seed.

Usage::

    python -m benchmarks.gpu --out DIR [--data cifar10_jpeg.tar.gz] [--budget-s 420]
    python -m benchmarks.gpu --out DIR --dry-run          # every configuration, tiny, on CPU
    python -m benchmarks.gpu --render DIR/results.jsonl --repo-table   # the repo's table

Appends one JSON line per measured configuration to ``DIR/results.jsonl`` as soon as it is
measured (a timeout keeps what was done), then renders ``DIR/GPU_RESULTS.md`` (and, with
``--repo-table``, ``benchmarks/GPU_RESULTS.md``; never from a dry run or a CPU run).

What runs, each group in its own process (JAX and PyTorch each take the GPU's memory):

1. ``env``: GPU name, driver and memory (``nvidia-smi``), Python, jax, jaxlib, the CUDA
   plugin and torch versions.
2. ``fused``: `jresnet.steps.make_train_fn` on synthetic uint8 CIFAR-sized batches, for
   float32 and bfloat16, batch 128 (the seed's) and 1024, and the default 10 steps per call
   (an unrolled ``lax.scan``) against a rolled scan over a whole epoch (50,000 images).
   Per configuration: compile seconds, median and min images/s over repeats of at least
   ``min_repeat_s`` each after a warm-up call, ms/step, the projected training time of 200
   epochs, and XLA's cost analysis of one step (FLOPs, bytes accessed) against the card's
   memory bandwidth (the datasheet's, and a copy measured first: ``ceiling`` line).
3. ``torch``: the seed's PyTorch loop (``benchmarks/torch_seed.py``) on the same card,
   eager NCHW and channels_last: the model step alone, and the seed's whole loop with its
   ``DataLoader`` (2 workers, per-sample crop/flip/normalise).
4. ``e2e``: ``python train.py`` for 2 epochs on the JPEG copy of CIFAR-10 (eval and
   checkpoints included), prepared by ``python -m jresnet.prepare_data`` in the background
   while 2. runs.

Configurations run in priority order; one that would not finish within ``--budget-s`` is
recorded as ``skipped`` instead. Timings are wall-clock (``time.perf_counter``) around calls
that block until the result is ready.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from jresnet import errors

REPO = Path(__file__).resolve().parents[1]

RESULTS = "results.jsonl"
TABLE = "GPU_RESULTS.md"
TRAIN_IMAGES = 50_000  # CIFAR-10's training split: an epoch
PROJECTED_EPOCHS = 200  # the seed's recipe
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10_jpeg.tar.gz"

# Datasheet figures (NVIDIA's, dense): memory bandwidth in bytes/s, and peak FLOP/s for
# TF32 (what XLA:GPU's default precision uses for float32 convolutions) and bfloat16.
# Matched against nvidia-smi's name, first match wins.
DATASHEETS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bandwidth": 4.8e12, "float32": 494e12, "bfloat16": 989e12}),
    ("H100 NVL", {"bandwidth": 3.9e12, "float32": 417e12, "bfloat16": 835e12}),
    ("H100 PCIe", {"bandwidth": 2.0e12, "float32": 378e12, "bfloat16": 756e12}),
    ("H100", {"bandwidth": 3.35e12, "float32": 494e12, "bfloat16": 989e12}),
    ("A100", {"bandwidth": 2.0e12, "float32": 156e12, "bfloat16": 312e12}),
)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big and how long: the real run's, or the dry run's tiny ones."""

    model: str
    batches: tuple[int, int]  # the seed's batch, and a large one
    steps_per_call: int  # the default of jresnet/configs/default.py
    epoch_images: int  # images per epoch of the rolled whole-epoch scan
    min_repeat_s: float
    repeats: int
    copy_bytes: int  # array size for the bandwidth probe
    e2e_epochs: int
    e2e_flags: tuple[str, ...]  # extra --config flags of the end-to-end run
    torch_images: int  # synthetic images in the seed's DataLoader


REAL = Sizes(
    model="resnet20",
    batches=(128, 1024),
    steps_per_call=10,
    epoch_images=TRAIN_IMAGES,
    min_repeat_s=2.0,
    repeats=3,
    copy_bytes=1 << 30,
    e2e_epochs=2,
    e2e_flags=(),
    torch_images=TRAIN_IMAGES,
)
DRY = Sizes(
    model="resnet8",
    batches=(8, 16),
    steps_per_call=2,
    epoch_images=64,
    min_repeat_s=0.01,
    repeats=2,
    copy_bytes=1 << 20,
    e2e_epochs=2,
    e2e_flags=(
        "--config.model=resnet8",
        "--config.train_split=train[:64]",
        "--config.batch_size=16",
        "--config.eval_batch_size=50",
        "--config.steps_per_call=2",
    ),
    torch_images=256,
)


@dataclasses.dataclass(frozen=True)
class Fused:
    """A fused-step configuration: ``steps`` steps per call, ``unroll`` of them unrolled."""

    dtype: str
    batch: int
    whole_epoch: bool  # steps = one epoch, rolled (unroll 1); else the default, unrolled
    rolled: bool = False  # the default steps per call, but rolled

    def steps(self, sizes: Sizes) -> int:
        return sizes.epoch_images // self.batch if self.whole_epoch else sizes.steps_per_call

    def unroll(self, sizes: Sizes) -> int:
        return 1 if self.whole_epoch or self.rolled else self.steps(sizes)

    def name(self, sizes: Sizes) -> str:
        kind = "epoch-rolled" if self.whole_epoch else ("rolled" if self.rolled else "unrolled")
        return f"{self.dtype} b{self.batch} k{self.steps(sizes)} {kind}"


def fused_configs(sizes: Sizes) -> list[Fused]:
    """Every fused-step configuration, most important first (the budget cuts the tail)."""
    small, large = sizes.batches
    return [
        Fused("float32", small, whole_epoch=False),
        Fused("float32", small, whole_epoch=True),
        Fused("bfloat16", small, whole_epoch=False),
        Fused("bfloat16", small, whole_epoch=True),
        Fused("float32", large, whole_epoch=True),
        Fused("bfloat16", large, whole_epoch=True),
        Fused("float32", small, whole_epoch=False, rolled=True),
        Fused("float32", large, whole_epoch=False),
        Fused("bfloat16", large, whole_epoch=False),
    ]


TORCH_CONFIGS = (
    ("step", False),
    ("step", True),
    ("loop", False),
    ("loop", True),
)


def torch_name(what: str, channels_last: bool) -> str:
    layout = "channels_last" if channels_last else "eager NCHW"
    part = "model step" if what == "step" else "seed loop with DataLoader"
    return f"torch {layout}, {part}"


# --------------------------------------------------------------------------------------------
# Results file.


def append(out: Path, record: Mapping[str, Any]) -> None:
    """Appends one JSON line to ``out/results.jsonl`` and flushes it to disk."""
    with open(out / RESULTS, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    print(json.dumps(record, sort_keys=True), flush=True)


def read_results(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def timed_repeats(
    run_once: Callable[[], Any], images_per_call: int, min_seconds: float, repeats: int
) -> list[float]:
    """Images/s of ``repeats`` back-to-back repeats, each at least ``min_seconds`` of calls.

    ``run_once`` must block until its work is done.
    """
    rates = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            run_once()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        rates.append(calls * images_per_call / elapsed)
    return rates


def rate_summary(rates: Sequence[float], batch: int, steps_per_epoch: int) -> dict[str, float]:
    """Median and min images/s, ms per step and the projected 200-epoch time (minutes)."""
    median = statistics.median(rates)
    ms_per_step = 1000.0 * batch / median
    return {
        "img_s_median": median,
        "img_s_min": min(rates),
        "img_s_repeats": list(rates),
        "ms_per_step": ms_per_step,
        "projected_200_epochs_min": PROJECTED_EPOCHS * steps_per_epoch * ms_per_step / 60e3,
    }


# --------------------------------------------------------------------------------------------
# 1. Environment.


def gpu_info() -> dict[str, Any]:
    """nvidia-smi's name, driver and memory of GPU 0, or None values without nvidia-smi."""
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        line = subprocess.run(query, capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return {"gpu": None, "driver": None, "gpu_memory": None}
    name, driver, memory = (field.strip() for field in line.stdout.splitlines()[0].split(","))
    return {"gpu": name, "driver": driver, "gpu_memory": memory}


def datasheet(gpu: str | None) -> dict[str, float] | None:
    for key, figures in DATASHEETS:
        if gpu and key in gpu:
            return figures
    return None


def versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata (nothing is imported)."""
    names = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax", "torch")
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def env_record(dry_run: bool) -> dict[str, Any]:
    return {
        "kind": "env",
        "dry_run": dry_run,
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        **gpu_info(),
        **versions(),
    }


# --------------------------------------------------------------------------------------------
# 2. The fused train step (worker process).


def cost_of(compiled: Any) -> dict[str, float]:
    """FLOPs and bytes accessed of a compiled program, from XLA's cost analysis."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    return {
        "flops": float(analysis.get("flops", float("nan"))),
        "bytes": float(analysis.get("bytes accessed", float("nan"))),
    }


def measure_copy_bandwidth(sizes: Sizes) -> float:
    """Bytes/s (read plus written) of an on-device copy of a ``copy_bytes`` array."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((sizes.copy_bytes // 4,), jnp.float32)
    copy = jax.jit(lambda a: a * 1.0)
    copy(x).block_until_ready()
    times = []
    for _ in range(10):
        start = time.perf_counter()
        copy(x).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * sizes.copy_bytes / statistics.median(times)


def measure_fused(config: Fused, sizes: Sizes) -> dict[str, Any]:
    """Compiles and times one fused-step configuration on synthetic data.

    A program without a loop records XLA's cost of one step (``flops_per_step``,
    ``bytes_per_step``); XLA's cost analysis counts a while loop's body once, so rolled
    programs get the per-step cost of the same dtype and batch unrolled (`complete_costs`).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jresnet import datasets, models, parallel, steps
    from jresnet.configs import default

    steps_per_call, unroll = config.steps(sizes), config.unroll(sizes)
    steps_per_epoch = sizes.epoch_images // config.batch
    cfg = default.get_config()
    cfg.batch_size = config.batch
    lr_fn = steps.create_learning_rate_fn(cfg, steps_per_epoch)
    tx = steps.create_optimizer(cfg, lr_fn)
    model = models.create_model(sizes.model, dtype=jnp.dtype(config.dtype))
    mean, std = datasets.NORMALIZATIONS["cifar"]
    mesh = parallel.create_mesh()
    fn = steps.make_train_fn(
        model=model,
        tx=tx,
        learning_rate_fn=lr_fn,
        mean=mean,
        std=std,
        augment=True,
        mesh=mesh,
        steps_per_call=steps_per_call,
        unroll=unroll,
    )
    state = parallel.replicate(steps.create_train_state(jax.random.key(0), model, tx), mesh)
    rng = np.random.default_rng(0)
    host = (
        rng.integers(0, 256, (steps_per_call, config.batch, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, 10, (steps_per_call, config.batch)).astype(np.int32),
    )
    images, labels = parallel.global_batch(host, mesh, batch_axis=1)
    key = jax.random.key(1)

    start = time.perf_counter()
    compiled = fn.lower(state, images, labels, key).compile()
    compile_s = time.perf_counter() - start
    cost = cost_of(compiled)

    holder = {"state": state}

    def run_once():
        holder["state"], holder["metrics"] = compiled(holder["state"], images, labels, key)
        jax.block_until_ready(holder)

    start = time.perf_counter()
    run_once()  # warm-up: first execution (autotuning results, allocations)
    warmup_s = time.perf_counter() - start
    rates = timed_repeats(
        run_once, steps_per_call * config.batch, sizes.min_repeat_s, sizes.repeats
    )
    loss = float(np.asarray(holder["metrics"]["loss"])[-1])
    record = {
        "kind": "fused",
        "name": config.name(sizes),
        "dtype": config.dtype,
        "batch": config.batch,
        "steps_per_call": steps_per_call,
        "unroll": unroll,
        "model": sizes.model,
        "device": jax.devices()[0].device_kind,
        "platform": jax.default_backend(),
        "compile_s": compile_s,
        "warmup_s": warmup_s,
        "last_loss": loss,
        **rate_summary(rates, config.batch, TRAIN_IMAGES // config.batch),
    }
    if unroll == steps_per_call:  # no loop: the analysis covers every step
        record["flops_per_step"] = cost["flops"] / steps_per_call
        record["bytes_per_step"] = cost["bytes"] / steps_per_call
    return record


def complete_costs(records: Sequence[dict[str, Any]]) -> None:
    """Adds to each fused record the per-step cost (a rolled one: from the same dtype and
    batch unrolled), the achieved TFLOP/s and GB/s, and their shares of the datasheet's
    peak and bandwidth (where the GPU is in `DATASHEETS`)."""
    sheet = next((r.get("datasheet") for r in records if r["kind"] == "ceiling"), None)
    fused = [r for r in records if r["kind"] == "fused"]
    unrolled = {(r["dtype"], r["batch"]): r for r in fused if "flops_per_step" in r}
    for r in fused:
        source = unrolled.get((r["dtype"], r["batch"]))
        if source is None:
            continue
        r["flops_per_step"], r["bytes_per_step"] = (
            source["flops_per_step"],
            source["bytes_per_step"],
        )
        seconds_per_step = r["ms_per_step"] / 1e3
        r["achieved_tflop_s"] = r["flops_per_step"] / seconds_per_step / 1e12
        r["achieved_gb_s"] = r["bytes_per_step"] / seconds_per_step / 1e9
        if sheet:
            r["bandwidth_share"] = r["achieved_gb_s"] * 1e9 / sheet["bandwidth"]
            r["flop_share"] = r["achieved_tflop_s"] * 1e12 / sheet[r["dtype"]]


def fused_worker(out: Path, sizes: Sizes, deadline: float, gpu: str | None) -> None:
    """Runs `fused_configs` in order until ``deadline`` (time.time()); one line each."""
    import jax

    append(
        out,
        {
            "kind": "ceiling",
            "name": "device copy",
            "device": jax.devices()[0].device_kind,
            "platform": jax.default_backend(),
            "copy_gb_s": measure_copy_bandwidth(sizes) / 1e9,
            "datasheet": datasheet(gpu),
        },
    )
    compile_estimate = {True: 0.0, False: 0.0}  # by whether the program has a loop
    for config in fused_configs(sizes):
        rolled = config.unroll(sizes) < config.steps(sizes)
        needed = compile_estimate[rolled] + 2 + (sizes.repeats + 1) * sizes.min_repeat_s
        if time.time() + needed > deadline:
            append(out, {"kind": "skipped", "name": config.name(sizes), "needed_s": needed})
            continue
        started = time.time()
        record = measure_fused(config, sizes)
        compile_estimate[rolled] = max(compile_estimate[rolled], time.time() - started)
        append(out, record)


# --------------------------------------------------------------------------------------------
# 3. The seed's PyTorch loop (worker process).


def torch_worker(out: Path, sizes: Sizes, deadline: float) -> None:
    """The seed's model step and whole loop, eager NCHW and channels_last, on the GPU."""
    import numpy as np
    import torch

    from benchmarks import torch_seed

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True  # as the seed sets it on CUDA
    batch = torch_seed.BATCH_SIZE
    steps_per_epoch = TRAIN_IMAGES // batch
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (sizes.torch_images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, sizes.torch_images)
    for what, channels_last in TORCH_CONFIGS:
        name = torch_name(what, channels_last)
        needed = 5 + (sizes.repeats + 1) * sizes.min_repeat_s
        if time.time() + needed > deadline:
            append(out, {"kind": "skipped", "name": name, "needed_s": needed})
            continue
        trainer = seed_trainer_on(torch_seed, device, channels_last)
        if what == "step":
            steps = _repeat(lambda: _synthetic_batch(torch, batch, device))
        else:
            steps = _seed_loader_batches(torch_seed, images, labels, device)
        losses = trainer.train_batches(steps)  # the seed's loop: .item() after every step
        next(losses)  # warm-up (cuDNN benchmark picks its kernels here)
        next(losses)
        rates = timed_repeats(
            lambda losses=losses: next(losses), batch, sizes.min_repeat_s, sizes.repeats
        )
        del losses, steps  # ends the DataLoader's worker processes
        record = {
            "kind": "torch",
            "name": name,
            "what": what,
            "channels_last": channels_last,
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "torch": torch.__version__,
            "batch": batch,
        }
        record.update(rate_summary(rates, batch, steps_per_epoch))
        append(out, record)


def seed_trainer_on(torch_seed: Any, device: str, channels_last: bool) -> Any:
    """`torch_seed.SeedTrainer` with its model on ``device`` and the seed's SGD rebuilt there."""
    import torch

    trainer = torch_seed.SeedTrainer(channels_last=channels_last)
    trainer.model.to(device)
    trainer.optimizer = torch.optim.SGD(
        trainer.model.parameters(),
        lr=torch_seed.LEARNING_RATE,
        momentum=torch_seed.MOMENTUM,
        weight_decay=torch_seed.WEIGHT_DECAY,
    )
    return trainer


def _synthetic_batch(torch: Any, batch: int, device: str) -> tuple[Any, Any]:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch, 3, 32, 32, generator=generator).to(device)
    targets = torch.randint(0, 10, (batch,), generator=generator).to(device)
    return inputs, targets


def _repeat(make: Callable[[], Any]) -> Iterator[Any]:
    item = make()
    while True:
        yield item


def _seed_loader_batches(torch_seed: Any, images: Any, labels: Any, device: str) -> Iterator:
    """The seed's DataLoader (2 workers, per-sample transforms), epoch after epoch, each batch
    moved to ``device`` as the seed does (workers restart each epoch, as in the seed)."""
    loader = torch_seed.train_loader(images, labels, num_workers=2)
    while True:
        for inputs, targets in loader:
            yield inputs.to(device), targets.to(device)


# --------------------------------------------------------------------------------------------
# 4. train.py end to end.


def write_image_folder(root: Path, per_class: dict[str, int]) -> Path:
    """A tiny CIFAR-10 image-folder tree (``split/<class>/*.png``) of random images."""
    import numpy as np
    from PIL import Image

    from jresnet import datasets

    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for name in datasets.get("cifar10").label_names:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


def start_prepare(source: Path, data_dir: Path, log: Path) -> subprocess.Popen:
    """``python -m jresnet.prepare_data --from source --data_dir data_dir`` in the background."""
    command = [sys.executable, "-m", "jresnet.prepare_data", "--from", str(source)]
    command += ["--data_dir", str(data_dir)]
    with open(log, "w") as f:
        env = {**_env(), "JAX_PLATFORMS": "cpu"}  # keep off the GPU the benchmark is timing
        return subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)


def run_e2e(out: Path, sizes: Sizes, data_dir: Path, workdir: Path, deadline: float) -> dict:
    """Runs train.py, stamping each output line; returns the ``e2e`` record."""
    command = [sys.executable, str(REPO / "train.py"), f"--workdir={workdir}"]
    command += [f"--config.data_dir={data_dir}", f"--config.num_epochs={sizes.e2e_epochs}"]
    command += ["--config.compilation_cache_dir=", *sizes.e2e_flags]
    start = time.perf_counter()
    stamped = []
    with open(out / "train_e2e.log", "w") as log:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
            env=_env(),
        )
        watchdog = threading.Timer(max(deadline - time.time(), 1), process.kill)
        watchdog.start()
        for line in process.stdout:
            stamped.append((time.perf_counter() - start, line.rstrip()))
            log.write(f"{stamped[-1][0]:8.2f}s {line}")
            log.flush()
        returncode = process.wait()
        watchdog.cancel()
    wall_s = time.perf_counter() - start
    return e2e_record(command, returncode, wall_s, stamped, workdir)


def e2e_record(
    command: Sequence[str],
    returncode: int,
    wall_s: float,
    stamped: Sequence[tuple[float, str]],
    workdir: Path,
) -> dict[str, Any]:
    """train.py's per-epoch metrics and the time between its "epoch N/M done" lines."""
    done = [t for t, line in stamped if re.match(r"epoch \d+/\d+ done", line)]
    compiled = [
        float(found.group(1))
        for _, line in stamped
        if (found := re.search(r"compiled .* in ([\d.]+)s", line))
    ]
    metrics_file = workdir / "metrics.jsonl"
    epochs = read_results(metrics_file) if metrics_file.exists() else []
    record = {
        "kind": "e2e",
        "name": "train.py end to end",
        "command": " ".join(command[1:]),
        "returncode": returncode,
        "wall_s": wall_s,
        "compile_s": compiled,
        "epochs": [
            {k: e.get(k) for k in ("epoch", "images_per_s", "epoch_time_s", "eval_accuracy")}
            for e in epochs
        ],
    }
    if len(done) >= 2:  # one whole epoch cycle: train, eval, checkpoint
        cycle_s = done[-1] - done[-2]
        record["epoch_cycle_s"] = cycle_s
        record["projected_200_epochs_min"] = PROJECTED_EPOCHS * cycle_s / 60
    return record


def e2e(out, sizes, source, scratch, prepare, deadline) -> None:
    """Waits for the data, runs train.py and appends its record (or a skipped one)."""
    name = "train.py end to end"
    data_dir = scratch / "tfds"
    try:
        returncode = prepare.wait(timeout=max(deadline - time.time(), 1))
    except subprocess.TimeoutExpired:
        prepare.kill()
        returncode = "timeout"
    if returncode != 0:
        log = (scratch / "prepare.log").read_text()[-2000:]
        append(out, {"kind": "skipped", "name": name, "reason": f"prepare_data failed: {log}"})
        return
    if time.time() + 30 > deadline:
        append(out, {"kind": "skipped", "name": name, "needed_s": 30})
        return
    record = run_e2e(out, sizes, data_dir, scratch / "workdir", deadline)
    record["data"] = str(source)
    append(out, record)


# --------------------------------------------------------------------------------------------
# The table.


def _fmt(value: Any, spec: str = ",.0f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return format(value, spec)


def render(records: Sequence[Mapping[str, Any]]) -> str:
    """GPU_RESULTS.md from the records of results.jsonl."""
    records = [dict(r) for r in records]
    complete_costs(records)
    by_kind: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        by_kind.setdefault(record["kind"], []).append(record)
    env = (by_kind.get("env") or [{}])[0]
    lines = ["# jresnet on a GPU", ""]
    lines.append(
        "Generated by `python -m benchmarks.gpu` from its `results.jsonl`; do not edit. "
        "Images/s are medians (and minima) over repeats of at least 2 s after a warm-up; "
        "projections are 200 epochs of 50,000 images."
    )
    lines += ["", f"- GPU: {env.get('gpu')} (driver {env.get('driver')}, {env.get('gpu_memory')})"]
    lines.append(
        f"- Python {env.get('python')}, jax {env.get('jax')}, jaxlib {env.get('jaxlib')}, "
        f"jax-cuda13-plugin {env.get('jax-cuda13-plugin')}, flax {env.get('flax')}, "
        f"torch {env.get('torch')}; {env.get('cpu_count')} CPUs; {env.get('date')}"
    )
    if env.get("dry_run"):
        lines.append("- **Dry run**: tiny sizes on CPU; these numbers mean nothing.")
    for ceiling in by_kind.get("ceiling", []):
        sheet = ceiling.get("datasheet") or {}
        lines.append(
            f"- Memory bandwidth: {_fmt(ceiling['copy_gb_s'])} GB/s measured (a device copy, "
            f"read + written); datasheet {_fmt(sheet.get('bandwidth', float('nan')) / 1e9)} "
            "GB/s, the ceiling the shares below use"
        )
    lines += ["", "## The fused train step (synthetic data, augmentation included)", ""]
    lines.append(
        "| configuration | compile s | img/s median | min | ms/step | 200 epochs, min "
        "| GFLOP/step | MB/step | GB/s | share of bandwidth |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in by_kind.get("fused", []):
        lines.append(
            f"| {r['name']} | {_fmt(r['compile_s'], '.1f')} | {_fmt(r['img_s_median'])} "
            f"| {_fmt(r['img_s_min'])} | {_fmt(r['ms_per_step'], '.2f')} "
            f"| {_fmt(r['projected_200_epochs_min'], '.1f')} "
            f"| {_fmt(r.get('flops_per_step', float('nan')) / 1e9, '.1f')} "
            f"| {_fmt(r.get('bytes_per_step', float('nan')) / 1e6, ',.0f')} "
            f"| {_fmt(r.get('achieved_gb_s'))} | {_fmt(r.get('bandwidth_share'), '.0%')} |"
        )
    lines += ["", "## The seed's PyTorch loop on the same card (batch 128)", ""]
    lines.append("| configuration | img/s median | min | ms/step | 200 epochs, min |")
    lines.append("|---|---:|---:|---:|---:|")
    for r in by_kind.get("torch", []):
        lines.append(
            f"| {r['name']} | {_fmt(r.get('img_s_median'))} | {_fmt(r.get('img_s_min'))} "
            f"| {_fmt(r.get('ms_per_step'), '.2f')} "
            f"| {_fmt(r.get('projected_200_epochs_min'), '.1f')} |"
        )
    lines += _ratio_lines(by_kind)
    lines += _e2e_lines(by_kind.get("e2e", []))
    skipped = [
        f"{r['name']} ({r.get('reason', 'out of time')})" for r in by_kind.get("skipped", [])
    ]
    if skipped:
        lines += ["", "Not measured: " + "; ".join(skipped)]
    return "\n".join(lines) + "\n"


def _ratio_lines(by_kind: Mapping[str, list[Mapping[str, Any]]]) -> list[str]:
    """jresnet's fused float32 step at the seed's batch over the seed's model step."""
    fused = [r for r in by_kind.get("fused", []) if r["dtype"] == "float32" and r["unroll"] > 1]
    torch_steps = {r["channels_last"]: r for r in by_kind.get("torch", []) if r["what"] == "step"}
    if not fused or not torch_steps:
        return []
    ours = min(fused, key=lambda r: r["batch"])
    lines = [""]
    for _, r in sorted(torch_steps.items()):
        if r.get("img_s_median"):
            lines.append(
                f"- {ours['name']}: {ours['img_s_median'] / r['img_s_median']:.2f}x "
                f"{r['name']} (medians, same card, same run)"
            )
    return lines


def _e2e_lines(records: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = []
    for r in records:
        lines += ["", "## train.py end to end (eval and checkpoints included)", ""]
        lines.append(f"`python {r['command']}`: exit code {r['returncode']}, ")
        lines[-1] += f"wall time {_fmt(r['wall_s'], '.1f')} s, compiles {r['compile_s']} s"
        for e in r["epochs"]:
            lines.append(
                f"- epoch {e['epoch']}: {_fmt(e['images_per_s'])} img/s training, "
                f"{_fmt(e['epoch_time_s'], '.1f')} s, eval accuracy "
                f"{_fmt(e['eval_accuracy'], '.2%')}"
            )
        if "epoch_cycle_s" in r:
            lines.append(
                f"- one epoch cycle (train, eval, checkpoint): {r['epoch_cycle_s']:.1f} s; "
                f"200 epochs projected: {r['projected_200_epochs_min']:.1f} min"
            )
    return lines


def write_tables(results: Path, out: Path | None, repo_table: bool) -> str:
    """Renders ``results`` (a results.jsonl) to out/GPU_RESULTS.md and, with ``repo_table``,
    to benchmarks/GPU_RESULTS.md (only from results measured on a GPU)."""
    records = read_results(results)
    text = render(records)
    if out is not None:
        (out / TABLE).write_text(text)
    if repo_table:
        env = next((r for r in records if r["kind"] == "env"), {})
        on_gpu = any(r.get("platform") == "gpu" for r in records)
        if env.get("dry_run") or not on_gpu:
            raise errors.ConfigError("--repo-table needs results measured on a GPU, not a dry run")
        (REPO / "benchmarks" / TABLE).write_text(text)
    return text


# --------------------------------------------------------------------------------------------
# Driver.


def _env() -> dict[str, str]:
    """The environment for child processes: the repository importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_worker(args: argparse.Namespace, worker: str, deadline: float, gpu: str | None) -> int:
    """Runs ``--worker`` in a child process, so each framework has the GPU to itself."""
    command = [sys.executable, "-m", "benchmarks.gpu", "--worker", worker, "--out", str(args.out)]
    command += ["--deadline", str(deadline), "--gpu-name", gpu or ""]
    command += ["--dry-run"] if args.dry_run else []
    timeout = max(deadline - time.time(), 1) + 60
    try:
        return subprocess.run(command, cwd=REPO, env=_env(), timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        return -1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="folder for results.jsonl and GPU_RESULTS.md")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CIFAR-10 JPEG tarball")
    parser.add_argument(
        "--budget-s", type=float, help="wall-time budget in seconds (default 420; none dry)"
    )
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, on CPU")
    parser.add_argument("--repo-table", action="store_true", help="also benchmarks/" + TABLE)
    parser.add_argument("--render", type=Path, help="only render this results.jsonl")
    parser.add_argument("--scratch", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--worker", choices=("fused", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--gpu-name", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = DRY if args.dry_run else REAL
    if args.budget_s is None:
        args.budget_s = 1e6 if args.dry_run else 420.0
    if args.render:
        print(write_tables(args.render, args.out, args.repo_table))
        return 0
    if args.out is None:
        parser.error("--out is required")
    if args.worker == "fused":
        fused_worker(args.out, sizes, args.deadline, args.gpu_name or None)
        return 0
    if args.worker == "torch":
        torch_worker(args.out, sizes, args.deadline)
        return 0
    return run_all(args, sizes)


def run_all(args: argparse.Namespace, sizes: Sizes) -> int:
    start = time.time()
    deadline = start + args.budget_s
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / RESULTS).unlink(missing_ok=True)
    env = env_record(args.dry_run)
    if not args.dry_run and env["gpu"] is None:
        raise errors.ConfigError("no NVIDIA GPU (nvidia-smi failed); use --dry-run on a CPU")
    append(args.out, env)
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="jresnet-gpu-"))
    scratch.mkdir(parents=True, exist_ok=True)
    source = args.data
    if args.dry_run:
        source = write_image_folder(scratch / "images", {"train": 8, "test": 5})
    elif not source.exists():
        raise errors.ConfigError(f"--data {source} does not exist: give the CIFAR-10 JPEG tarball")
    shutil.rmtree(scratch / "tfds", ignore_errors=True)
    shutil.rmtree(scratch / "workdir", ignore_errors=True)
    prepare = start_prepare(source, scratch / "tfds", scratch / "prepare.log")
    # The fused step first, then the seed, then train.py; each keeps the later ones' share
    # of the budget, and time one leaves over goes to the next.
    run_worker(args, "fused", deadline - 0.45 * args.budget_s, env["gpu"])
    run_worker(args, "torch", deadline - 0.3 * args.budget_s, None)
    e2e(args.out, sizes, source, scratch, prepare, deadline)
    print(write_tables(args.out / RESULTS, args.out, args.repo_table))
    if args.scratch is None:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(errors.run_cli(main))
