"""Timing helpers shared by the benchmark workers and `benchmarks.weight_gradient`."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def time_calls(fn: Callable[[], Any], sync: Callable[[Any], Any], calls: int) -> float:
    """Seconds for ``calls`` back-to-back calls of ``fn`` (dispatched async), synced at the end."""
    start = time.perf_counter()
    out = None
    for _ in range(calls):
        out = fn()
    sync(out)
    return time.perf_counter() - start


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
