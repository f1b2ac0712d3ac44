"""Timing helpers shared by the benchmark workers and `benchmarks.weight_gradient`.

Wall-clock (``time.perf_counter``) around calls that end synchronised with the device.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks.configs import PROJECTED_EPOCHS, TRAIN_IMAGES


def time_calls(fn: Callable[[], Any], sync: Callable[[Any], Any], calls: int) -> float:
    """Seconds for ``calls`` back-to-back calls of ``fn`` (dispatched async), synced at the end."""
    start = time.perf_counter()
    out = None
    for _ in range(calls):
        out = fn()
    sync(out)
    return time.perf_counter() - start


def warm_up(call: Callable[[], Any], calls: int) -> float:
    """Seconds of ``call``'s first call (which blocks), then ``calls`` more, untimed."""
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    for _ in range(calls):
        call()
    return first


def rates(
    call: Callable[[], Any], images_per_call: int, min_seconds: float, repeats: int
) -> list[float]:
    """Images/s of ``repeats`` back-to-back blocks of calls, each block at least
    ``min_seconds`` long (and one call). ``call`` must block until its work is done."""
    out = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while calls == 0 or time.perf_counter() - start < min_seconds:
            call()
            calls += 1
        out.append(calls * images_per_call / (time.perf_counter() - start))
    return out


def rate_summary(rates: list[float], batch: int) -> dict[str, Any]:
    """The median of ``rates`` (images/s) and all of them, ms per step of ``batch`` images,
    and the projected minutes of `PROJECTED_EPOCHS` epochs of `TRAIN_IMAGES`."""
    img_s = statistics.median(rates)
    ms_per_step = 1e3 * batch / img_s
    projected_min = PROJECTED_EPOCHS * (TRAIN_IMAGES // batch) * ms_per_step / 60e3
    return {
        "img_s": img_s,
        "img_s_repeats": rates,
        "ms_per_step": ms_per_step,
        "projected_min": projected_min,
    }


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


def per_call_us(fn: Callable[[], Any], sync: Callable[[Any], Any], reps: int) -> float:
    """Mean microseconds per call of ``reps`` back-to-back calls after one synced warm-up."""
    sync(fn())
    return time_calls(fn, sync, reps) / reps * 1e6


def best_s(fn: Callable[[], Any], reps: int) -> float:
    """Fastest of ``reps`` calls of ``fn`` (which syncs itself), after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_gflops(seconds: float, n: int) -> float:
    """GFLOP/s of an ``n x n`` by ``n x n`` matmul (2 n^3 FLOP) that took ``seconds``."""
    return 2 * n**3 / seconds / 1e9
