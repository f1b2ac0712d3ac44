"""benchmarks/: the model facts the report rests on, its scheduling, and its path-free output.

The benchmark's timings are not tested (no timing asserts); what is tested is that the
FLOP count and the inventory of ResNet-20's convolutions it weights its per-step totals
by are ResNet-20's, that the totals add up as the report says, that every configuration
has a worker, and that a run writes only where ``--output`` says, without machine paths.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from benchmarks import configs, report, resnet20, run
from jresnet import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _conv_kernels(model: models.ResNet) -> collections.Counter:
    """(kernel, c_in, c_out) -> how many convolution kernels of that shape the model has."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    kernels = collections.Counter()
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes["params"])[0]:
        if len(leaf.shape) == 4 and path[-1].key == "kernel":
            kh, _, c_in, c_out = leaf.shape
            kernels[(kh, c_in, c_out)] += 1
    return kernels


def test_convolution_inventory_is_resnet20s():
    inventory = collections.Counter()
    for shape in resnet20.RESNET20_CONVS:
        inventory[(shape.kernel, shape.c_in, shape.c_out)] += shape.count
    assert inventory == _conv_kernels(models.ResNet20())
    assert sum(shape.count for shape in resnet20.RESNET20_CONVS) == 21


def test_convolution_flops_add_up_to_the_model_macs():
    convs = resnet20.RESNET20_CONVS
    conv_macs = sum(s.count * s.flop() / 2 / configs.BATCH for s in convs)
    assert conv_macs + 64 * 10 == resnet20.resnet20_macs()
    # 40.81 M MACs per image forward, as the issue and the report state.
    assert round(resnet20.resnet20_macs() / 1e6, 2) == 40.81


def test_conv_totals_weight_each_convolution_by_its_count():
    ms = {
        shape.label: {"fwd": 1.0, "dw": 3.0, **({"dx": 2.0} if shape.has_dx else {})}
        for shape in resnet20.RESNET20_CONVS
    }
    totals = resnet20.conv_totals(ms)
    assert totals["fwd"] == 21.0
    assert totals["dx"] == 2.0 * 20  # the first convolution has no input gradient
    assert totals["dw"] == 63.0
    assert totals["all"] == 21.0 + 40.0 + 63.0


def test_convolution_report_shows_totals_beside_the_whole_step():
    ms = {shape.label: {"fwd": 1.0, "dx": 1.0, "dw": 1.0} for shape in resnet20.RESNET20_CONVS}
    runs = {"convs-jax": [{"ms": ms}, {"ms": ms}], "convs-torch-cl": [{"error": "exit 1"}]}
    img = {"step-jax-fused": {"median": 640.0}}
    text = "\n".join(report.render_convs(runs, img))
    assert "| **per training step: all convolutions** | **63.0** |" in text
    assert "| whole step (section 1), ms | 200.0 |" in text
    assert "torch channels_last" not in text  # a configuration with no result is left out


def test_every_configuration_has_a_worker():
    pytest.importorskip("torch")
    from benchmarks import jax_workers, torch_workers

    measures = {"jax": jax_workers.MEASURES, "torch": torch_workers.MEASURES}
    for cfg in configs.CONFIGS:
        if cfg.framework == "numpy":
            assert cfg.measure == "matmul"
        else:
            assert cfg.measure in measures[cfg.framework], cfg.name


def test_rolled_scan_row_says_it_was_measured_once():
    cfg = configs.CONFIG_BY_NAME["step-jax-rolled"]
    sizes = {"fused_steps": 10, "rolled_steps": 2}
    img = {cfg.name: {"median": 9.0, "min": 9.0, "max": 9.0}}
    results = [{"img_s": 9.0, "rolled_while_loop": True, "timed_steps": 2}]
    row = report.throughput_row(cfg, results, img, sizes, (600.0, 900.0), None)
    assert row.startswith("| jresnet driver, steps_per_call=2, unroll=1 ")
    assert "measured once, over 2 step(s)" in row
    assert "| 9 | 9-9 | 0.01 | 0.01 | n/a% |" in row
    skipped = report.throughput_row(cfg, [{"skipped": True}], {}, sizes, (None, None), None)
    assert "not measured: convolutions in a rolled XLA while loop" in skipped


def test_shown_command_hides_path_values():
    argv = ["--quick", "--data-dir", "/home/me/tfds", "--output=/tmp/r.md", "--rounds", "2"]
    assert run.shown_command(argv) == (
        "python -m benchmarks.run --quick --data-dir DATA_DIR --output=OUTPUT --rounds 2"
    )


def test_quick_run_writes_only_to_output_and_names_no_machine_path(data_dir, tmp_path):
    """A real run of one cheap configuration, on the tiny TFDS CIFAR-10 of conftest.py."""
    output = tmp_path / "out" / "RESULTS.md"
    output.parent.mkdir()
    committed = {}
    for name in ("RESULTS.md", "RESULTS.json"):
        with open(os.path.join(ROOT, "benchmarks", name), "rb") as f:
            committed[f.name] = f.read()
    cmd = [sys.executable, "-m", "benchmarks.run", "--quick", "--only", "matmul-numpy"]
    cmd += ["--data-dir", data_dir, "--output", str(output)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = output.read_text()
    results = json.loads(output.with_suffix(".json").read_text())
    assert results["real_data"] is True
    assert "- Data: real cifar10 from the TFDS data dir given by `--data-dir`: 64 train" in text
    assert "| numpy | " in text  # the configuration's row
    assert results["runs"]["matmul-numpy"][0]["gflops"] > 0
    assert "python -m benchmarks.workers --worker prepare --result OUT.json --data DATA" in text
    assert "--data-dir DATA_DIR --output OUTPUT" in text
    for written in (text, json.dumps(results)):
        for path in (data_dir, str(tmp_path), ROOT, sys.prefix, sys.executable):
            assert path not in written
    for path, content in committed.items():
        with open(path, "rb") as f:
            assert f.read() == content  # the committed results are left alone
