"""benchmarks/gpu.py: its dry run on CPU runs every configuration the GPU run has.

The GPU run itself needs a GPU; what a CPU can catch (a typo, a wrong argument, a record
the table can't render) is caught here, so the GPU's few minutes are not lost to it. No
timing is asserted: only that each configuration was measured and reported.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from benchmarks import gpu as gpu_benchmark
from tests.conftest import REPO


@pytest.fixture(scope="module")
def gpu():
    return gpu_benchmark


def test_configurations_cover_the_issue(gpu):
    """fp32 and bf16, the seed's batch and a large one, the default steps per call
    (unrolled) and a rolled whole-epoch scan: each combination is in the list."""
    configs = gpu.fused_configs(gpu.REAL)
    names = [c.name(gpu.REAL) for c in configs]
    assert len(set(names)) == len(names)
    for dtype in ("float32", "bfloat16"):
        for batch in (128, 1024):
            assert f"{dtype} b{batch} k10 unrolled" in names
            assert f"{dtype} b{batch} k{50_000 // batch} epoch-rolled" in names
    assert names[0] == "float32 b128 k10 unrolled"  # the target number comes first


@pytest.mark.slow
def test_dry_run_measures_and_reports_every_configuration(gpu, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in records]
    assert "skipped" not in kinds, [r for r in records if r["kind"] == "skipped"]
    assert kinds[0] == "env" and records[0]["dry_run"] and records[0]["jax"]
    assert kinds.count("ceiling") == 1 and records[1]["copy_gb_s"] > 0

    fused = [r for r in records if r["kind"] == "fused"]
    assert [r["name"] for r in fused] == [c.name(gpu.DRY) for c in gpu.fused_configs(gpu.DRY)]
    for r in fused:
        assert r["compile_s"] > 0 and len(r["img_s_repeats"]) == gpu.DRY.repeats
        assert r["img_s_min"] <= r["img_s_median"]
        assert math.isclose(r["ms_per_step"], 1000 * r["batch"] / r["img_s_median"])
        assert math.isfinite(r["last_loss"])
        # Only programs without a loop carry their own cost ...
        assert ("flops_per_step" in r) == (r["unroll"] == r["steps_per_call"])
    # ... which the rolled ones of the same dtype and batch take.
    gpu.complete_costs(records)
    unrolled = {(r["dtype"], r["batch"]): r for r in fused if r["unroll"] == r["steps_per_call"]}
    for r in fused:
        assert r["flops_per_step"] == unrolled[r["dtype"], r["batch"]]["flops_per_step"] > 0
        assert r["achieved_gb_s"] > 0 and "bandwidth_share" not in r  # no datasheet for a CPU

    torch_runs = [r for r in records if r["kind"] == "torch"]
    expected = [gpu.torch_name(*c) for c in gpu.TORCH_CONFIGS]
    assert [r["name"] for r in torch_runs] == expected
    assert all(r["img_s_median"] > 0 for r in torch_runs)

    (e2e,) = [r for r in records if r["kind"] == "e2e"]
    assert e2e["returncode"] == 0
    assert [e["epoch"] for e in e2e["epochs"]] == [1, 2]
    assert e2e["compile_s"] and e2e["epoch_cycle_s"] > 0

    table = (out / "GPU_RESULTS.md").read_text()
    assert "Dry run" in table
    for name in [r["name"] for r in fused] + expected:
        assert f"| {name} |" in table
    assert "x torch eager NCHW, model step" in table
    assert "- epoch 2:" in table and "200 epochs projected" in table
    assert (
        not (REPO / "benchmarks" / "GPU_RESULTS.md").exists()
        or "Dry run" not in (REPO / "benchmarks" / "GPU_RESULTS.md").read_text()
    )


def test_repo_table_refuses_dry_run_results(gpu, tmp_path):
    record = {"kind": "env", "dry_run": True, "gpu": None}  # as a dry run writes it
    (tmp_path / "results.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(gpu.errors.ConfigError, match="needs results measured on a GPU"):
        gpu.write_tables(tmp_path / "results.jsonl", tmp_path, repo_table=True)
    assert "Dry run" in (tmp_path / "GPU_RESULTS.md").read_text()
