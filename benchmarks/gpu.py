"""What only a GPU has: its name, driver and memory (``nvidia-smi``), and its datasheet.

The report (`benchmarks.report`) sets the gpu profile's achieved FLOP/s and bytes/s
against the datasheet's peak and memory bandwidth.
"""

from __future__ import annotations

import subprocess
from typing import Any

# NVIDIA's datasheet figures (dense): memory bandwidth in bytes/s, and peak FLOP/s for
# TF32 (what XLA:GPU's default precision uses for float32 convolutions) and bfloat16.
# Matched against nvidia-smi's name, first match wins.
DATASHEETS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bandwidth": 4.8e12, "float32": 494e12, "bfloat16": 989e12}),
    ("H100 NVL", {"bandwidth": 3.9e12, "float32": 417e12, "bfloat16": 835e12}),
    ("H100 PCIe", {"bandwidth": 2.0e12, "float32": 378e12, "bfloat16": 756e12}),
    ("H100", {"bandwidth": 3.35e12, "float32": 494e12, "bfloat16": 989e12}),
    ("A100", {"bandwidth": 2.0e12, "float32": 156e12, "bfloat16": 312e12}),
)


def gpu_info() -> dict[str, Any] | None:
    """nvidia-smi's name, driver and memory of GPU 0; None without nvidia-smi or a GPU."""
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        result = subprocess.run(query, capture_output=True, text=True, timeout=60, check=True)
        name, driver, memory = (x.strip() for x in result.stdout.splitlines()[0].split(","))
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None
    return {"name": name, "driver": driver, "memory": memory, "datasheet": datasheet(name)}


def datasheet(name: str) -> dict[str, float] | None:
    """The datasheet figures of the GPU called ``name``, or None for one not listed."""
    return next((figures for key, figures in DATASHEETS if key in name), None)
