"""`python -m jresnet.summarize`: rows, statistics over finished runs, JSON, plot, bad input.

The run directories are written by the test (``metrics.jsonl`` and ``results.json`` as a
training run writes them), so no training is needed.
"""

import json

import numpy as np
import pytest

from jresnet import results, summarize
from tests.conftest import fake_run, run_module


@pytest.fixture
def runs(tmp_path):
    """Three finished seeds with random accuracies and one run in progress."""
    rng = np.random.default_rng(0)
    finished = [
        fake_run(tmp_path / f"seed{s}", s, rng.uniform(0.3, 0.9, 3), rng.uniform(0.3, 0.9, 2))
        for s in range(3)
    ]
    running = fake_run(tmp_path / "seed3", 3, [0.99, 0.995], finished=False)
    return finished, running


def test_statistics_equal_numpys_over_the_finished_runs_only(runs, capsys):
    finished, running = runs
    assert summarize.main(["--json", *finished, running]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["accuracy_unit"] == "fraction"
    assert [row["run_dir"] for row in summary["runs"]] == [*finished, running]
    assert [row["status"] for row in summary["runs"]] == ["finished"] * 3 + ["running"]
    saved = [results.read(run) for run in finished]
    for key in summarize.ACCURACIES:
        values = np.array([r[key] for r in saved])
        stat = summary["statistics"][key]
        assert stat["n"] == 3
        assert stat["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert stat["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        assert stat["min"] == np.min(values) and stat["max"] == np.max(values)


def test_a_run_in_progress_is_shown_with_its_epochs_so_far(runs, capsys):
    finished, running = runs
    assert summarize.main([*finished, running]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith(f"| {running} "))
    assert "running (2 done)" in row
    assert "99.50% (2)" in row  # best eval so far, and its epoch
    assert "over the 3 finished runs" in table


def test_a_finished_run_trained_further_counts_as_running_again(tmp_path):
    run = fake_run(tmp_path / "run", 0, [0.5, 0.6], test=(0.55, 0.6))
    with open(f"{run}/metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 3, "step": 12, "eval_accuracy": 0.7, "wall_s": 30.0}) + "\n")
    row = summarize.read_run(run)
    assert row["status"] == "running" and row["epochs"] == 3
    assert row["final_eval_accuracy"] == 0.7 and row["final_test_accuracy"] is None


def test_one_finished_run_has_no_standard_deviation(tmp_path):
    run = fake_run(tmp_path / "run", 0, [0.5, 0.6], test=(0.55, 0.6))
    stat = summarize.summarize([run])["statistics"]["final_test_accuracy"]
    assert stat == {"mean": 0.55, "std": None, "min": 0.55, "max": 0.55, "n": 1}


def test_plot_writes_a_png(runs, tmp_path):
    finished, running = runs
    out = tmp_path / "seeds.png"
    assert summarize.main([*finished, running, "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no run directories given"),
        (["{tmp}"], "is not a jresnet run directory"),
        (["{tmp}/missing"], "is not a jresnet run directory"),
        (["{run}", "--plot", "{tmp}/missing/seeds.png"], "does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, message):
    run = fake_run(tmp_path / "run", 0, [0.5])
    args = [a.format(tmp=tmp_path / "empty", run=run) for a in args]
    (tmp_path / "empty").mkdir()
    assert summarize.main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and message in err


def test_the_module_runs_from_the_command_line(runs):
    finished, running = runs
    result = run_module("jresnet.summarize", *finished, running)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("| finished") == 0 and "running (2 done)" in result.stdout
    assert "--plot FILE.png" in run_module("jresnet.summarize", "--help").stdout


def test_a_damaged_results_file_exits_2_naming_it(tmp_path, capsys):
    run = fake_run(tmp_path / "run", 0, [0.5])
    (tmp_path / "run" / "results.json").write_text("{")
    assert summarize.main([run]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "results.json is unreadable" in err
