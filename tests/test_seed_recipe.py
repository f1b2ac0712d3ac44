"""benchmarks.seed_recipe: snapshots of runs and the generated report, on synthetic records."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import seed_recipe
from jresnet import checkpoint, summarize, torch_layouts, weight_files
from jresnet.errors import ConfigError
from tests.conftest import REPO, fake_run, model_with_random_statistics, tiny_config


def synthetic_records(epochs, seed):
    """Records shaped like metrics.jsonl's, with random accuracies, losses and timings."""
    rng = np.random.default_rng(seed)
    return [
        {
            "epoch": epoch,
            "step": 391 * epoch,
            "train_loss": float(rng.uniform(0.01, 2)),
            "train_accuracy": float(rng.uniform(0.3, 1)),
            "learning_rate": 0.1,
            "eval_loss": float(rng.uniform(0.2, 2)),
            "eval_accuracy": int(rng.integers(3000, 9500)) / 10000,
            "eval_count": 10000,
            "images_per_s": float(rng.uniform(300, 700)),
            "epoch_time_s": float(rng.uniform(60, 200)),
        }
        for epoch in range(1, epochs + 1)
    ]


def fake_clone(path):
    """A git repository with one commit; returns its commit."""
    path.mkdir()

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(path), *args], check=True, capture_output=True, text=True
        ).stdout.strip()

    git("init", "-q")
    (path / "train.py").write_text("# pinned\n")
    git("add", "train.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "pin")
    return git("rev-parse", "HEAD")


def write_records(path, records, torn_line=False):
    text = "".join(json.dumps(r) + "\n" for r in records)
    if torn_line:
        text += '{"epoch": 99, "step"'  # a live run in the middle of its write
    path.write_text(text)


@pytest.fixture
def snapshots(tmp_path):
    """A results dir with an unfinished jresnet run (5/200 epochs) and a finished PyTorch
    run (4/4), snapshotted from fake work directories; ``(results, records, commit)``."""
    commit = fake_clone(tmp_path / "clone")
    records = {"jresnet": synthetic_records(5, 0), "pytorch": synthetic_records(4, 1)}

    jresnet_dir = tmp_path / "jresnet-workdir"
    (jresnet_dir / "checkpoints" / "1950" / "config").mkdir(parents=True)
    (jresnet_dir / "checkpoints" / "1950" / "config" / "metadata").write_text(
        json.dumps({"model": "resnet20", "num_epochs": 200})
    )
    write_records(jresnet_dir / "metrics.jsonl", records["jresnet"], torn_line=True)

    torch_dir = tmp_path / "torch-workdir"
    torch_dir.mkdir()
    (torch_dir / "config.json").write_text(json.dumps({"depth": 20, "num_epochs": 4}))
    write_records(torch_dir / "metrics.jsonl", records["pytorch"])

    results = tmp_path / "results"
    for name, workdir in (("jresnet", jresnet_dir), ("pytorch", torch_dir)):
        seed_recipe.snapshot(
            name, str(workdir), str(tmp_path / "clone"), sys.prefix, f"run {name}", str(results)
        )
    return results, records, commit


def test_snapshot_copies_complete_records_and_describes_the_run(snapshots):
    results, records, commit = snapshots
    run_dir = results / "seed-recipe" / "jresnet"
    assert seed_recipe.read_records(str(run_dir / "metrics.jsonl")) == records["jresnet"]
    info = json.loads((run_dir / "run-info.json").read_text())
    assert info["implementation"] == "jresnet"
    assert info["config"]["model"] == "resnet20"
    assert info["commit"] == commit
    assert info["clone_modified"] is False
    assert info["versions"]["numpy"] == np.__version__
    assert info["machine"]["cores"] >= 1 and info["machine"]["cpu"]
    assert "JPEG" in info["data"]
    assert info["epochs_done"] == 5 and info["num_epochs"] == 200 and not info["finished"]
    assert info["train_time_s"] == pytest.approx(sum(r["epoch_time_s"] for r in records["jresnet"]))
    assert info["images_per_s_median"] == pytest.approx(
        statistics.median(r["images_per_s"] for r in records["jresnet"])
    )
    assert "weights" not in info  # unfinished: no final weights yet
    torch_info = json.loads((results / "seed-recipe" / "pytorch" / "run-info.json").read_text())
    assert torch_info["implementation"] == "pytorch" and torch_info["finished"]


def test_snapshots_of_a_run_that_moved_say_which_machine_ran_which_epochs(
    snapshots, tmp_path, monkeypatch
):
    results = snapshots[0]
    workdir = tmp_path / "jresnet-workdir"
    first = json.loads((results / "seed-recipe" / "jresnet" / "run-info.json").read_text())
    assert first["machines"] == [{**first["machine"], "epochs": [1, 5]}]

    def snapshot_on(cpu, epochs):
        monkeypatch.setattr(
            seed_recipe.machine, "machine_info", lambda: {"cpu": cpu, "logical_cpus": 2}
        )
        write_records(workdir / "metrics.jsonl", synthetic_records(epochs, 0))
        seed_recipe.snapshot(
            "jresnet", str(workdir), str(tmp_path / "clone"), sys.prefix, "run", str(results)
        )
        return json.loads((results / "seed-recipe" / "jresnet" / "run-info.json").read_text())

    snapshot_on("Other CPU", 8)  # the run was packed and unpacked on another machine
    info = snapshot_on("Other CPU", 9)
    spans = [(m["cpu"], m["cores"], m["epochs"]) for m in info["machines"]]
    first_machine = (first["machine"]["cpu"], first["machine"]["cores"])
    assert spans == [(*first_machine, [1, 5]), ("Other CPU", 2, [6, 9])]
    seed_recipe.report(str(results))
    assert "epochs 1-5 on" in (results / "README.md").read_text()
    assert "epochs 6-9 on Other CPU, 2 cores" in (results / "README.md").read_text()

    # Another run in the same place (other records: restarted from scratch) starts afresh.
    write_records(workdir / "metrics.jsonl", synthetic_records(3, 7))
    seed_recipe.snapshot(
        "jresnet", str(workdir), str(tmp_path / "clone"), sys.prefix, "run", str(results)
    )
    info = json.loads((results / "seed-recipe" / "jresnet" / "run-info.json").read_text())
    assert [(m["cpu"], m["epochs"]) for m in info["machines"]] == [("Other CPU", [1, 3])]


def test_snapshot_refuses_to_go_back_to_fewer_records_of_the_same_run(snapshots, tmp_path):
    results = snapshots[0]
    workdir = tmp_path / "jresnet-workdir"
    kept = (results / "seed-recipe" / "jresnet" / "metrics.jsonl").read_text()
    for records in (synthetic_records(3, 0), []):  # behind, or no records yet (just unpacked)
        write_records(workdir / "metrics.jsonl", records)
        with pytest.raises(ConfigError, match="it is behind that snapshot, which is kept"):
            seed_recipe.snapshot(
                "jresnet", str(workdir), str(tmp_path / "clone"), sys.prefix, "run", str(results)
            )
        assert (results / "seed-recipe" / "jresnet" / "metrics.jsonl").read_text() == kept


def test_a_snapshot_from_before_the_machines_field_is_continued(tmp_path):
    records = synthetic_records(4, 0)
    old = {"commit": "c", "machine": {"cpu": "Old CPU", "cores": 4}}  # no "machines"
    info = {"commit": "c", "machine": {"cpu": "New CPU", "cores": 2}}
    spans = seed_recipe.machines((old, records[:2]), info, records)
    assert spans == [
        {"cpu": "Old CPU", "cores": 4, "epochs": [1, 2]},
        {"cpu": "New CPU", "cores": 2, "epochs": [3, 4]},
    ]
    assert seed_recipe.machines((old, records[:2]), {**info, "commit": "d"}, records) == [
        {"cpu": "New CPU", "cores": 2, "epochs": [1, 4]}
    ]


def table_row(text, label):
    (row,) = [line for line in text.splitlines() if line.startswith(f"| {label} |")]
    return [cell.strip() for cell in row.strip("|").split("|")]


def expected_row(label, records, num_epochs):
    best = max(records, key=lambda r: r["eval_accuracy"])
    done = len(records)
    state = f"finished: {done} epochs" if done == num_epochs else f"running: {done}/{num_epochs}"
    return [
        label,
        state + ("" if done == num_epochs else " epochs"),
        f"{100 * records[-1]['eval_accuracy']:.2f}%",
        f"{100 * best['eval_accuracy']:.2f}% ({best['epoch']})",
        seed_recipe.format_duration(sum(r["epoch_time_s"] for r in records)),
        f"{statistics.median(r['images_per_s'] for r in records):,.0f}",
    ]


def test_report_table_matches_the_records(snapshots):
    results, records, commit = snapshots
    seed_recipe.report(str(results))
    readme = (results / "README.md").read_text()
    for name, num_epochs in (("jresnet", 200), ("pytorch", 4)):
        label = seed_recipe.RUNS[name]
        assert table_row(readme, label) == expected_row(label, records[name], num_epochs)
    assert "The runs are in progress" in readme
    assert commit in readme and "not official CIFAR-10" in readme
    assert (results / "seed-recipe" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_report_compares_the_runs_at_the_latest_epoch_both_reached(snapshots):
    results, records, _ = snapshots  # jresnet 5/200 epochs, pytorch 4/4
    table = seed_recipe.report(str(results))
    jresnet, pytorch = (100 * records[name][3]["eval_accuracy"] for name in ("jresnet", "pytorch"))
    expected = (
        f"Test accuracy at epoch 4, the latest both runs have reached: jresnet {jresnet:.2f}%, "
        f"the seed's PyTorch loop {pytorch:.2f}% ({abs(jresnet - pytorch):.2f} points apart"
    )
    assert expected in table and expected in (results / "README.md").read_text()


@pytest.mark.parametrize(
    "pytorch_accuracy, verdict", [(0.9105, "within"), (0.8990, "**not within**")]
)
def test_finished_runs_agree_within_a_point_or_the_report_says_not(pytorch_accuracy, verdict):
    def run(final_accuracy):
        records = synthetic_records(2, 0)
        records[-1]["eval_accuracy"] = final_accuracy
        return {"num_epochs": 2}, records

    runs = {"jresnet": run(0.9100), "pytorch": run(pytorch_accuracy)}
    points = abs(91.00 - 100 * pytorch_accuracy)
    assert seed_recipe.comparison(runs) == (
        f"\nFinal test accuracy: jresnet 91.00%, the seed's PyTorch loop "
        f"{100 * pytorch_accuracy:.2f}%; {points:.2f} points apart, {verdict} the 1 point "
        "that one seed each allows.\n"
    )
    assert seed_recipe.comparison({"jresnet": run(0.91)}) == ""  # nothing to compare yet


def test_report_marks_a_run_not_started_and_finished_runs_as_such(tmp_path):
    results = tmp_path / "results"
    run_dir = results / "seed-recipe" / "jresnet"
    run_dir.mkdir(parents=True)
    records = synthetic_records(3, 2)
    write_records(run_dir / "metrics.jsonl", records)
    (run_dir / "run-info.json").write_text(
        json.dumps(
            {
                "num_epochs": 3,
                "command": "c",
                "commit": "abc",
                "machine": {"cpu": "a CPU", "cores": 2},
                "versions": {"jax": "0"},
                "data": "d",
                "snapshot_utc": "now",
            }
        )
    )
    seed_recipe.report(str(results))
    readme = (results / "README.md").read_text()
    label = seed_recipe.RUNS["jresnet"]
    assert table_row(readme, label) == expected_row(label, records, 3)
    assert table_row(readme, seed_recipe.RUNS["pytorch"])[1] == "not started"


def test_report_replaces_the_table_between_the_markers(snapshots, tmp_path):
    results, _, _ = snapshots
    readme = tmp_path / "README.md"
    start, end = seed_recipe.TABLE_START, seed_recipe.TABLE_END
    readme.write_text(f"intro\n{start}\nold table\n{end}\nafter\n")
    table = seed_recipe.report(str(results), str(readme))
    assert readme.read_text() == f"intro\n{start}\n{table}{end}\nafter\n"
    readme.write_text("no markers\n")
    with pytest.raises(ConfigError, match="markers"):
        seed_recipe.report(str(results), str(readme))


def test_the_seeds_example_is_summarizes_table_of_the_snapshotted_runs(tmp_path):
    commit = fake_clone(tmp_path / "clone")
    rng = np.random.default_rng(3)
    run_dirs = [
        fake_run(tmp_path / "runs" / f"seed{s}", s, rng.uniform(0.3, 0.9, 3), (0.5, 0.6))
        for s in range(2)
    ] + [fake_run(tmp_path / "runs" / "seed2", 2, [0.4], finished=False)]
    results = tmp_path / "results"
    info = seed_recipe.snapshot_seeds(
        run_dirs, str(tmp_path / "clone"), sys.prefix, "loop", str(results)
    )
    assert info["runs"] == ["seed0", "seed1", "seed2"] and info["commit"] == commit
    copies = [str(results / "seeds-example" / name) for name in info["runs"]]
    for run_dir, copy in zip(run_dirs, copies, strict=True):
        for name in ("metrics.jsonl", "results.json"):
            original = Path(run_dir) / name
            assert (Path(copy) / name).exists() == original.exists()
    readme = tmp_path / "README.md"
    start, end = seed_recipe.SEEDS_START, seed_recipe.SEEDS_END
    readme.write_text(f"{seed_recipe.TABLE_START}\n{seed_recipe.TABLE_END}\n{start}\nold\n{end}\n")
    seed_recipe.report(str(results), str(readme))
    expected = summarize.format_table(summarize.summarize(copies))
    assert readme.read_text().split(start + "\n")[1] == f"{expected}\n{end}\n"
    assert expected in (results / "README.md").read_text()
    assert (results / "seeds-example" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_snapshot_seeds_refuses_a_directory_that_is_no_run(tmp_path):
    with pytest.raises(ConfigError, match=r"no metrics\.jsonl"):
        seed_recipe.snapshot_seeds(
            [str(tmp_path)], str(tmp_path), sys.prefix, "c", str(tmp_path / "r")
        )
    assert not (tmp_path / "r").exists()


def test_snapshot_of_a_workdir_without_config_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="after its first epoch"):
        seed_recipe.read_run_config(str(tmp_path))


@pytest.mark.slow
def test_snapshot_of_a_finished_jresnet_run_exports_and_checks_its_weights(tmp_path, data_dir):
    """A jresnet work directory (ResNet-8 weights at step 0) whose last record claims an
    impossible accuracy: the weights are exported and evaluated, and the mismatch is said."""
    _, variables = model_with_random_statistics()
    config = tiny_config(data_dir, num_epochs=1)
    workdir = tmp_path / "run"
    checkpoint.save_pretrained(str(workdir), variables, config)
    write_records(workdir / "metrics.jsonl", [{**synthetic_records(1, 0)[0], "eval_accuracy": 2}])
    args = ["jresnet", str(workdir), "--clone", str(REPO), "--venv", sys.prefix]
    args += ["--command", "c", "--results", str(tmp_path / "results")]

    assert seed_recipe.main(["snapshot", *args]) == 1  # the mismatch is a finding: exit 1

    info = json.loads((tmp_path / "results/seed-recipe/jresnet/run-info.json").read_text())
    weights = info["weights"]
    assert weights["equals_final_record"] is False
    assert weights["eval_count"] == 40 and 0 <= weights["eval_accuracy"] <= 1
    # The seed's PyTorch ResNet-8 loads the file (strict=True) and agrees with jresnet on
    # the 40 test images, to one image of float rounding.
    assert "--depth=8" in weights["pytorch_eval_command"]
    assert abs(weights["pytorch_eval_accuracy"] - weights["eval_accuracy"]) * 40 <= 1
    exported = tmp_path / "results/seed-recipe/jresnet" / weights["file"]
    exported_state = weight_files.load_state_dict_file(str(exported))
    expected_state = torch_layouts.flax_to_torch(variables)
    assert exported_state.keys() == expected_state.keys()
    for name, value in expected_state.items():
        # ravel: the file holds the 0-d num_batches_tracked counters with shape [1]
        # (np.ascontiguousarray in weight_files.save_state_dict_file), which PyTorch accepts.
        assert np.array_equal(np.ravel(exported_state[name]), np.ravel(value)), name


@pytest.mark.parametrize("pytorch_accuracy, agree", [(0.8999, True), (0.8990, False)])
def test_the_weights_must_give_the_last_records_accuracy_in_both_frameworks(
    pytorch_accuracy, agree, tmp_path, monkeypatch
):
    """jresnet's evaluation of the file gives the last record's 90.00%; PyTorch's one image
    (within rounding) or ten images (a finding) away."""
    out = tmp_path / "resnet20.safetensors"
    out.write_bytes(b"exported")  # kept: no export runs
    evaluations = iter([0.9, pytorch_accuracy])
    commands = []

    def run(command, cwd=None):
        commands.append(command)
        return json.dumps({"eval_accuracy": next(evaluations), "eval_count": 10000})

    monkeypatch.setattr(seed_recipe, "_run", run)
    weights = seed_recipe.export_and_check_weights(
        "workdir", "clone", "venv", str(out), {"model": "resnet20"}, {"eval_accuracy": 0.9}
    )
    assert commands[0][1] == "train.py" and "--config.eval_only=True" in commands[0]
    assert commands[1][1:4] == ["-m", "benchmarks.torch_seed", "evaluate"]
    assert weights["eval_accuracy"] == 0.9 and weights["pytorch_eval_accuracy"] == pytorch_accuracy
    assert weights["equals_final_record"] is agree


def test_the_readmes_seeds_example_is_summarizes_table_of_the_committed_runs(monkeypatch):
    monkeypatch.chdir(REPO)  # the table names the runs by their paths in the repository
    example = os.path.join("results", seed_recipe.SEEDS_SUBDIR)
    with open(os.path.join(example, seed_recipe.RUN_INFO_FILE)) as f:
        names = json.load(f)["runs"]
    table = summarize.format_table(summarize.summarize([os.path.join(example, n) for n in names]))
    start, end = seed_recipe.SEEDS_START, seed_recipe.SEEDS_END
    assert f"{start}\n{table}\n{end}" in (REPO / "README.md").read_text()
    assert "| over the 3 finished runs |" in table
