"""The machine a benchmark runs on: CPU, RAM, GPU, package versions, other processes' load."""

from __future__ import annotations

import os
import platform
import resource
from importlib import metadata
from typing import Any

from benchmarks import gpu

AMD_FAMILIES = {23: "Zen 1/2", 25: "Zen 3/4", 26: "Zen 5"}
PACKAGES = ("jax", "jaxlib", "flax", "optax", "torch", "numpy")
CUDA_PLUGINS = ("jax-cuda13-plugin", "jax-cuda12-plugin")  # listed where installed


def _first_cpu() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
    cpu: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                cpu[key.strip()] = value.strip()
    except OSError:
        pass
    return cpu


def _ram_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, RAM and GPU (`benchmarks.gpu.gpu_info`) of this machine."""
    cpu = _first_cpu()
    model = cpu.get("model name", platform.processor() or "unknown")
    family = cpu.get("cpu family", "?")
    if cpu.get("vendor_id") == "AuthenticAMD" and family.isdigit():
        model += f" (family {family}: {AMD_FAMILIES.get(int(family), 'unknown')})"
    return {
        "cpu": model,
        "cpu_family_model_stepping": [cpu.get(k) for k in ("cpu family", "model", "stepping")],
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "avx512f": "avx512f" in cpu.get("flags", "").split(),
        "ram_gib": _ram_gib(),
        "os": platform.platform(),
        "load_average_at_start": os.getloadavg(),
        "gpu": gpu.gpu_info(),
    }


def versions() -> dict[str, str]:
    """Versions of Python and the packages benchmarked."""
    out = {"python": platform.python_version()}
    for package in PACKAGES + CUDA_PLUGINS:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            if package not in CUDA_PLUGINS:
                out[package] = "not installed"
    return out


def busy_cpu_s() -> float:
    """Non-idle CPU seconds of the whole machine since boot (``/proc/stat``)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """User + system CPU seconds of this process's waited-for descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
