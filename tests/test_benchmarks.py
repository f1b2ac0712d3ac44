"""benchmarks/: the model facts the report rests on, its configurations, its scheduling,
and its path-free output.

The benchmark's timings are not tested (no timing asserts); what is tested is that the
FLOP count and the inventory of ResNet-20's convolutions it weights its per-step totals
by are ResNet-20's, that the totals add up as the report says, that every configuration
has a worker, that the gpu profile has the configurations it is for and its dry run on a
CPU measures and reports every one of them (so a GPU's few minutes are not lost to a typo),
and that a run writes only where ``--output`` says, without machine paths.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from benchmarks import configs, gpu, report, resnet20, run
from jresnet import errors, models

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
    sizes = dataclasses.asdict(configs.SIZES["cpu", False])
    img = {cfg.name: {"median": 9.0, "min": 9.0, "max": 9.0}}
    img |= {"step-torch": {"median": 600.0}, "step-torch-cl": {"median": 900.0}}
    results = [{"img_s": 9.0, "rolled_while_loop": True}]
    row = report.throughput_row(cfg, results, img, sizes, {})
    assert row.startswith("| jresnet driver, steps_per_call=10, unroll=1 ")
    assert "measured once" in row
    assert "| 9 | 9-9 | 0.01 | 0.01 | n/a% |" in row
    skipped = [{"skipped": "convolutions in a rolled XLA while loop"}]
    row = report.throughput_row(cfg, skipped, {}, sizes, {})
    assert "not measured: convolutions in a rolled XLA while loop" in row


def test_gpu_configurations_cover_the_issue():
    """fp32 and bf16, the seed's batch and a large one, the default steps per call
    (unrolled) and a rolled whole-epoch scan: each combination is in the gpu profile."""
    sizes = configs.SIZES["gpu", False]
    steps = [c for c in configs.profile_configs("gpu") if c.measure == "step" and c.driver]
    titles = [c.title(sizes) for c in steps]
    assert len(set(titles)) == len(titles)
    for dtype in ("float32", "bfloat16"):
        for batch in (128, 1024):
            prefix = f"jresnet driver, {dtype}, batch {batch}, steps_per_call="
            assert prefix + "10 unrolled" in titles
            assert prefix + f"{50_000 // batch} rolled (unroll=1)" in titles
    assert titles[0] == "jresnet driver, float32, batch 128, steps_per_call=10 unrolled"
    assert {c.platform for c in configs.CONFIGS} == set(configs.PROFILES)


def test_datasheet_matches_the_most_specific_name():
    assert gpu.datasheet("NVIDIA H100 NVL")["bandwidth"] == 3.9e12
    assert gpu.datasheet("NVIDIA H100 80GB HBM3")["bandwidth"] == 3.35e12
    assert gpu.datasheet("NVIDIA GeForce RTX 4090") is None


def test_shown_command_hides_path_values():
    argv = ["--dry-run", "--data-dir", "/home/me/tfds", "--output=/tmp/r.md", "--rounds", "2"]
    assert run.shown_command(argv) == (
        "python -m benchmarks.run --dry-run --data-dir DATA_DIR --output=OUTPUT --rounds 2"
    )


def test_data_dir_is_required_and_must_hold_cifar10(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        run.parse_args(["--dry-run"])
    assert exit_info.value.code == errors.EXIT_USAGE
    with pytest.raises(errors.DataError, match="holds no cifar10"):
        run.main(["--dry-run", "--only", "matmul-numpy", "--data-dir", str(tmp_path)])


def test_dry_run_results_are_not_written_into_benchmarks(tmp_path):
    dry = {"dry_run": True, "runs": {}}
    with pytest.raises(errors.ConfigError, match="dry run's results are not written"):
        report.write_json(dry, os.path.join(run.BENCH_DIR, "GPU_RESULTS.md"), run.BENCH_DIR)
    report.write_json(dry, str(tmp_path / "GPU_RESULTS.md"), run.BENCH_DIR)
    assert json.loads((tmp_path / "GPU_RESULTS.json").read_text()) == dry


def test_the_readmes_speed_table_is_written_from_the_committed_results(tmp_path):
    with open(os.path.join(ROOT, "benchmarks", "RESULTS.json")) as f:
        committed = json.load(f)
    table = report.speed_table(committed)
    with open(os.path.join(ROOT, "README.md")) as f:
        assert f"{report.SPEED_START}\n{table}{report.SPEED_END}" in f.read()
    for _, *names in report.SPEED_ROWS:  # every row measured, none "n/a"
        assert all(report.summarize(committed["runs"], "img_s").get(n) for n in names)

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.SPEED_START}\nold\n{report.SPEED_END}\nafter\n")
    run.main(
        [
            "--render",
            os.path.join(ROOT, "benchmarks", "RESULTS.json"),
            "--output",
            str(tmp_path / "R.md"),
            "--readme",
            str(readme),
        ]
    )
    assert readme.read_text() == f"intro\n{report.SPEED_START}\n{table}{report.SPEED_END}\nafter\n"
    readme.write_text("no markers\n")
    with pytest.raises(errors.ConfigError, match="markers"):
        report.write_speed_table(committed, str(readme))
    with pytest.raises(SystemExit):  # a dry run's numbers mean nothing
        run.parse_args(["--dry-run", "--data-dir", str(tmp_path), "--readme", str(readme)])


def _committed_results() -> dict[str, bytes]:
    committed = {}
    for name in ("RESULTS.md", "RESULTS.json"):
        with open(os.path.join(ROOT, "benchmarks", name), "rb") as f:
            committed[f.name] = f.read()
    return committed


def _assert_unchanged(committed: dict[str, bytes]) -> None:
    for path, content in committed.items():
        with open(path, "rb") as f:
            assert f.read() == content  # the committed results are left alone


def _benchmark(*args: str, timeout: float) -> None:
    cmd = [sys.executable, "-m", "benchmarks.run", "--dry-run", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_dry_run_writes_only_to_output_and_names_no_machine_path(data_dir, tmp_path):
    """A real run of one cheap configuration, on the tiny TFDS CIFAR-10 of conftest.py."""
    output = tmp_path / "out" / "RESULTS.md"
    output.parent.mkdir()
    committed = _committed_results()
    _benchmark(
        "--only", "matmul-numpy", "--data-dir", data_dir, "--output", str(output), timeout=300
    )
    text = output.read_text()
    results = json.loads(output.with_suffix(".json").read_text())
    assert "- Data: cifar10 from the TFDS data dir given by `--data-dir`: 64 train" in text
    assert "| numpy | " in text  # the configuration's row
    assert results["runs"]["matmul-numpy"][0]["gflops"] > 0
    assert "python -m benchmarks.workers --worker prepare --result OUT.json --data DATA" in text
    assert "--data-dir DATA_DIR --output OUTPUT" in text
    _assert_no_machine_path([text, json.dumps(results)], [data_dir, str(tmp_path)])
    _assert_unchanged(committed)


def _assert_no_machine_path(written: list[str], paths: list[str]) -> None:
    for text in written:
        for path in (*paths, ROOT, sys.prefix, sys.executable):
            assert path not in text


def _git(tree, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=tree, check=True, capture_output=True, text=True
    ).stdout.strip()


def test_dry_run_against_a_baseline_tree_runs_each_worker_from_both(data_dir, tmp_path):
    """--baseline-tree: each configuration's worker runs from this checkout and from the
    baseline (here a commit of a copy whose worker marks its results), and the report
    shows both rows, labelled by commit, with the ratio of their medians."""
    base = tmp_path / "base"
    ignore = shutil.ignore_patterns("__pycache__")
    for package in ("benchmarks", "jresnet"):
        shutil.copytree(os.path.join(ROOT, package), base / package, ignore=ignore)
    workers = base / "benchmarks" / "workers.py"
    marked = workers.read_text().replace(
        "result.update(peak_rss_mb())", "result.update(peak_rss_mb(), from_baseline=True)"
    )
    assert marked != workers.read_text()
    workers.write_text(marked)
    _git(base, "init", "-q")
    _git(base, "add", ".")
    _git(base, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline")
    output = tmp_path / "out" / "RESULTS.md"
    output.parent.mkdir()
    committed = _committed_results()
    _benchmark(
        "--only",
        "matmul-numpy",
        "--data-dir",
        data_dir,
        "--baseline-tree",
        str(base),
        "--output",
        str(output),
        timeout=300,
    )
    text = output.read_text()
    results = json.loads(output.with_suffix(".json").read_text())
    describe = ("describe", "--always", "--dirty", "--abbrev=7")
    this, baseline = (_git(tree, *describe) for tree in (ROOT, base))
    assert results["commits"] == {"this": this, "baseline": baseline}
    (own,) = results["runs"]["matmul-numpy"]
    (other,) = results["baseline_runs"]["matmul-numpy"]
    assert "from_baseline" not in own and other["from_baseline"] is True
    assert f"## This checkout ({this}) against the baseline tree ({baseline})" in text
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()]
    this_row, baseline_row = [row for row in cells if len(row) == 6 and row[0] == "numpy"]
    assert (this_row[1], baseline_row[1]) == (this, baseline)
    assert float(this_row[5]) == pytest.approx(own["gflops"] / other["gflops"], abs=0.01)
    assert "cd BASELINE_TREE && PYTHONPATH=BASELINE_TREE python -m benchmarks.workers" in text
    assert "--baseline-tree BASELINE_TREE" in text
    _assert_no_machine_path([text, json.dumps(results)], [data_dir, str(tmp_path)])
    _assert_unchanged(committed)


@pytest.mark.slow
def test_gpu_dry_run_measures_and_reports_every_configuration(data_dir, tmp_path):
    output = tmp_path / "GPU_RESULTS.md"
    committed = _committed_results()
    args = ["--profile", "gpu", "--data-dir", data_dir, "--output", str(output)]
    _benchmark(*args, "--budget-s", "3000", timeout=3600)  # the budget stops the workers
    results = json.loads(output.with_suffix(".json").read_text())
    sizes = configs.SIZES["gpu", True]
    gpu_configs = configs.profile_configs("gpu")
    assert list(results["runs"]) == [c.name for c in gpu_configs]
    for cfg in gpu_configs:
        (r,) = results["runs"][cfg.name]
        assert "error" not in r and "skipped" not in r, (cfg.name, r)
        if cfg.measure == "copy":
            assert r["copy_gb_s"] > 0
            continue
        # Steps and the seed's PyTorch loop are timed in `repeats` blocks; jresnet's end to
        # end (train_and_evaluate) and eval once.
        repeated = cfg.measure == "step" or (cfg.measure, cfg.framework) == ("e2e", "torch")
        assert len(r["img_s_repeats"]) == (sizes.repeats if repeated else 1)
        assert min(r["img_s_repeats"]) <= r["img_s"] <= max(r["img_s_repeats"])
        assert math.isclose(r["ms_per_step"], 1000 * r["batch"] / r["img_s"])
        if cfg.framework == "jax" and cfg.measure == "step":
            assert r["compile_s"] > 0 and math.isfinite(r["last_loss"])
            assert (r["steps_per_call"], r["unroll"]) == (cfg.steps(sizes), cfg.unroll(sizes))
            # Only programs without a loop carry their own cost (the report lends it to
            # the rolled ones of the same dtype and batch).
            assert ("flops_per_step" in r) == (r["unroll"] == r["steps_per_call"])
    text = output.read_text()
    assert "**Dry run**" in text
    for cfg in gpu_configs:
        if cfg.measure != "copy":
            assert f"| {cfg.title(sizes)} | " in text
    first_step = gpu_configs[1].title(sizes)
    row = next(line for line in text.splitlines() if line.startswith(f"| {first_step} | "))
    assert float(row.split("|")[4]) > 0  # the ratio to the seed's model step
    assert "## Per step: time, 200 epochs projected, XLA's cost" in text
    assert not os.path.exists(os.path.join(run.BENCH_DIR, "GPU_RESULTS.json"))
    _assert_unchanged(committed)
