"""A benchmark worker process: measures one configuration once and writes its result as JSON.

Started by `benchmarks.run`, from the repository root, as::

    python -m benchmarks.workers --worker NAME --result OUT.json --data DATA [--dry-run]
    python -m benchmarks.workers --worker prepare --result OUT.json --data DATA --data-dir DIR

Each configuration gets its own process, so that XLA flags, thread settings and the peak
RSS belong to it alone. Nothing that starts a thread pool (numpy, JAX, torch) is imported
before the CPU affinity and XLA flags are set.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
from collections.abc import Sequence
from typing import Any

from benchmarks.configs import CONFIG_BY_NAME, MATMUL_N, SIZES, Config, Sizes
from jresnet import errors


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--worker", required=True, help="configuration name, or 'prepare'")
    parser.add_argument("--result", required=True, help="where to write the JSON result")
    parser.add_argument(
        "--data", required=True, help="folder of .npy splits ('prepare': where to write them)"
    )
    parser.add_argument("--data-dir", help="'prepare': the TFDS data dir to load")
    parser.add_argument("--dry-run", action="store_true", help="the profile's dry-run sizes")
    return parser.parse_args(argv)


def peak_rss_mb() -> dict[str, float]:
    """Peak RSS of this process and of its (waited-for) children, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"rss_mb": own, "children_rss_mb": children}


def configure_process(cfg: Config) -> None:
    """CPU affinity and XLA flags of ``cfg``: before numpy, JAX or torch is imported."""
    if cfg.cpus is not None:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: cfg.cpus])
    if cfg.xla == "shipped":  # as train.py does, before the first JAX import
        from jresnet import xla_setup

        xla_setup.configure_cpu_flags()


def numpy_matmul(sizes: Sizes) -> dict[str, Any]:
    """Best-of-``matmul_reps`` fp32 GFLOP/s of an N x N matmul in numpy."""
    import numpy as np

    from benchmarks import timing

    rng = np.random.default_rng(0)
    a = rng.standard_normal((MATMUL_N, MATMUL_N), dtype=np.float32)
    b = rng.standard_normal((MATMUL_N, MATMUL_N), dtype=np.float32)
    seconds = timing.best_s(lambda: a @ b, sizes.matmul_reps)
    return {"gflops": timing.matmul_gflops(seconds, MATMUL_N)}


def measure(cfg: Config, sizes: Sizes, data: str) -> dict[str, Any]:
    """Runs ``cfg``'s measurement in this process (configured by `configure_process`)."""
    if cfg.framework == "numpy":
        return numpy_matmul(sizes)
    if cfg.framework == "jax":
        from benchmarks import jax_workers as framework
    else:
        from benchmarks import torch_workers as framework
    return framework.MEASURES[cfg.measure](cfg, sizes, data)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker == "prepare":
        from benchmarks import data

        result = data.prepare(args.data_dir, args.data)
    else:
        cfg = CONFIG_BY_NAME[args.worker]
        configure_process(cfg)
        result = measure(cfg, SIZES[cfg.platform, args.dry_run], args.data)
    result.update(peak_rss_mb())
    with open(args.result, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    raise SystemExit(errors.run_cli(main))
