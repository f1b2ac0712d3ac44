"""The PyTorch side of the benchmark: the seed's training (`benchmarks.torch_seed`) measured.

Each function measures one configuration in this worker process and returns its result
(throughputs in images/s, times in s or ms as the key says). NCHW tensors; with
``cfg.channels_last`` the model and inputs are in ``torch.channels_last``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn import grad

from benchmarks import data as bench_data
from benchmarks import timing, torch_seed
from benchmarks.configs import BATCH, EVAL_BATCH, MATMUL_N, Config, Sizes
from benchmarks.resnet20 import RESNET20_CONVS, ConvShape
from benchmarks.timing import median_ms


def matmul(cfg: Config, sizes: Sizes, data: str) -> dict[str, Any]:
    """Best-of-``matmul_reps`` fp32 GFLOP/s of an N x N matmul."""
    a = torch.randn(MATMUL_N, MATMUL_N)
    b = torch.randn(MATMUL_N, MATMUL_N)
    seconds = timing.best_s(lambda: a @ b, sizes.matmul_reps)
    return {"gflops": timing.matmul_gflops(seconds, MATMUL_N)}


def device_of(cfg: Config) -> str:
    """ "cuda" for the gpu profile where torch sees a GPU, else "cpu"."""
    if cfg.platform == "gpu" and torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # as the seed sets it on CUDA
        return "cuda"
    return "cpu"


def _train_rates(
    cfg: Config, sizes: Sizes, batches: Iterator[Any], batch: int = BATCH
) -> dict[str, Any]:
    """The seed's loop (``loss.item()`` and the accuracy read back after every step) over
    ``batches`` of ``batch`` images, timed per step after the warm-up (`benchmarks.timing`)."""
    trainer = torch_seed.SeedTrainer(channels_last=cfg.channels_last, device=device_of(cfg))
    losses = trainer.train_batches(batches)
    first = timing.warm_up(lambda: next(losses), sizes.warmup_calls)
    rates = timing.rates(lambda: next(losses), batch, sizes.min_timed_s, sizes.repeats)
    losses.close()  # ends a DataLoader's worker processes, so their peak RSS is counted
    return {
        **timing.rate_summary(rates, batch),
        "batch": batch,
        "first_call_s": first,
        "device": torch.cuda.get_device_name() if trainer.device == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
    }


def step(cfg: Config, sizes: Sizes, data: str) -> dict[str, Any]:
    """Model-step training throughput on one random batch (`Config.batch`), again and again."""
    batch = cfg.batch(sizes)
    inputs = (torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,)))
    return _train_rates(cfg, sizes, itertools.repeat(inputs), batch)


def e2e(cfg: Config, sizes: Sizes, data: str) -> dict[str, Any]:
    """The seed's DataLoader loop end to end over ``e2e_steps`` batches an epoch (its worker
    processes restart each epoch, as in the seed)."""
    images, labels = bench_data.load(data, "train", sizes.e2e_steps * BATCH)
    n = sizes.e2e_steps * BATCH
    loader = torch_seed.train_loader(images[:n], labels[:n], num_workers=2)
    return _train_rates(cfg, sizes, itertools.chain.from_iterable(itertools.repeat(loader)))


def eval_(cfg: Config, sizes: Sizes, data: str) -> dict[str, Any]:
    """Eval throughput at batch 1000 in ``inference_mode`` on pre-normalised tensors."""
    n = sizes.eval_batches * EVAL_BATCH
    images, labels = bench_data.load(data, "test", n)
    trainer = torch_seed.SeedTrainer(channels_last=cfg.channels_last, device=device_of(cfg))
    mean = torch.tensor(torch_seed.SEED_MEAN)[:, None, None]
    std = torch.tensor(torch_seed.SEED_STD)[:, None, None]
    nchw = torch.from_numpy(images[:n]).permute(0, 3, 1, 2).float()
    inputs = ((nchw / 255 - mean) / std).contiguous()
    targets = torch.from_numpy(labels[:n].astype(np.int64)).to(trainer.device)

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
    return {"img_s": n / elapsed, "first_call_s": first}


def _conv_calls(shape: ConvShape, memory_format: torch.memory_format) -> dict[str, Callable]:
    """The forward pass, input gradient and weight gradient of one convolution, as calls."""
    pad, stride = shape.kernel // 2, shape.stride
    x = torch.randn(BATCH, shape.c_in, shape.size, shape.size).to(memory_format=memory_format)
    w = torch.randn(shape.c_out, shape.c_in, shape.kernel, shape.kernel)
    w = w.to(memory_format=memory_format)
    dy = torch.randn_like(F.conv2d(x, w, stride=stride, padding=pad))
    calls = {
        "fwd": lambda: F.conv2d(x, w, stride=stride, padding=pad),
        "dx": lambda: grad.conv2d_input(x.shape, w, dy, stride=stride, padding=pad),
        "dw": lambda: grad.conv2d_weight(x, w.shape, dy, stride=stride, padding=pad),
    }
    if not shape.has_dx:
        del calls["dx"]
    return calls


def convs(cfg: Config, sizes: Sizes, data: str) -> dict[str, Any]:
    """Median ms of each of ResNet-20's convolutions alone: forward, input and weight gradient.

    Random float32 data at batch 128: ``F.conv2d`` and ``torch.nn.grad.conv2d_input`` /
    ``conv2d_weight`` (autograd's own kernels).
    """
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    out: dict[str, Any] = {"ms": {}}
    with torch.no_grad():
        for shape in RESNET20_CONVS:
            calls = _conv_calls(shape, memory_format)
            out["ms"][shape.label] = {
                name: median_ms(call, lambda r: r, sizes.conv_reps) for name, call in calls.items()
            }
    out["torch_threads"] = torch.get_num_threads()
    return out


MEASURES: dict[str, Callable[[Config, Sizes, str], dict[str, Any]]] = {
    "matmul": matmul,
    "step": step,
    "e2e": e2e,
    "eval": eval_,
    "convs": convs,
}
