"""A run's results: the test split at the end, ``results.json``, a finished run rerun.

Tiny runs on the conftest CIFAR-10: 48 training images (3 steps of 16), a validation slice
of 16 training images as the eval split and the 40 test images as the test split.
"""

import contextlib
import io
import json
import subprocess

import numpy as np
import pytest

from jresnet import (
    checkpoint,
    datasets,
    evaluate,
    input_pipeline,
    main,
    parallel,
    predict,
    reporting,
    results,
    steps,
)
from tests.conftest import REPO, copy_of, made_once, tiny_config

HONEST = {"train_split": "train[:48]", "eval_split": "train[48:]", "test_split": "test"}


def _accuracy_of_checkpoint(workdir, step, data_dir):
    """Test accuracy of checkpoint ``step``, evaluated without jresnet's eval step."""
    model, variables = checkpoint.load_model(workdir, step)
    images, labels = input_pipeline.load_split("cifar10", "test", data_dir)
    probabilities = predict.predict(model, variables, images, normalization="cifar")
    return float(np.mean(np.argmax(probabilities, axis=-1) == labels))


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, data_dir):
    """``(workdir, stderr)`` of a finished 3-epoch run with a validation and a test split,
    one for the session (the tests that rerun it work on copies)."""

    def train(path):
        with contextlib.redirect_stderr(io.StringIO()) as err:
            assert main.run(tiny_config(data_dir, **HONEST), str(path / "run")) == 0
        (path / "stderr.txt").write_text(err.getvalue())

    path = made_once(tmp_path_factory, "finished", train)
    return str(path / "run"), (path / "stderr.txt").read_text()


def test_end_of_run_test_accuracy_equals_an_independent_evaluation_of_the_checkpoints(
    finished_run, data_dir
):
    workdir, err = finished_run
    saved = results.read(workdir)
    records = reporting.read_metrics(workdir)
    assert saved["accuracy_unit"] == "fraction" and saved["test_count"] == 40
    assert saved["epochs"] == 3 and saved["steps"] == records[-1]["step"] == 9
    assert saved["final_test_accuracy"] == _accuracy_of_checkpoint(workdir, 9, data_dir)
    assert saved["best_test_accuracy"] == _accuracy_of_checkpoint(
        workdir, saved["best_step"], data_dir
    )
    # The best checkpoint is the best by eval (validation) accuracy.
    assert saved["best_eval_accuracy"] == max(r["eval_accuracy"] for r in records)
    assert records[saved["best_epoch"] - 1]["step"] == saved["best_step"]
    assert saved["final_eval_accuracy"] == records[-1]["eval_accuracy"]
    assert saved["seed"] == 0 and saved["config"]["test_split"] == "test"
    assert saved["wall_s"] == records[-1]["wall_s"] > records[0]["wall_s"] > 0
    # metrics.jsonl and the summary line say the same.
    assert {k: records[-1][k] for k in results.TEST_FIELDS} == {
        k: saved[k] for k in results.TEST_FIELDS
    }
    assert all("final_test_accuracy" not in r for r in records[:-1])
    line = f"test accuracy on test: final {100 * saved['final_test_accuracy']:.2f}%"
    assert line in err
    assert "is also the eval split" not in err


def test_a_finished_run_rerun_trains_nothing_and_keeps_its_results(
    finished_run, data_dir, tmp_path, capsys
):
    workdir = tmp_path / "run"
    copy_of(finished_run[0], tmp_path)
    before = {name: (workdir / name).read_bytes() for name in ("results.json", "metrics.jsonl")}
    with checkpoint.create_manager(str(workdir), read_only=True) as manager:
        steps_before = manager.all_steps()
    assert main.run(tiny_config(data_dir, **HONEST), str(workdir)) == 0
    err = capsys.readouterr().err
    assert "epoch 3/3" not in err and "already holds this run's results: kept" in err
    assert {name: (workdir / name).read_bytes() for name in before} == before
    with checkpoint.create_manager(str(workdir), read_only=True) as manager:
        assert manager.all_steps() == steps_before


def test_a_rerun_with_another_test_split_evaluates_it_and_rewrites_results(
    finished_run, data_dir, tmp_path, capsys
):
    workdir = copy_of(finished_run[0], tmp_path)
    assert main.run(tiny_config(data_dir, **{**HONEST, "test_split": ""}), workdir) == 0
    saved = results.read(workdir)
    assert saved["final_test_accuracy"] is None and saved["best_test_accuracy"] is None
    assert "final_test_accuracy" not in reporting.read_metrics(workdir)[-1]
    assert main.run(tiny_config(data_dir, **{**HONEST, "test_split": "test[:20]"}), workdir) == 0
    saved = results.read(workdir)
    assert saved["test_split"] == "test[:20]" and saved["test_count"] == 20
    assert reporting.read_metrics(workdir)[-1]["test_count"] == 20


def test_a_test_split_that_is_the_eval_split_warns(finished_run, data_dir, tmp_path, capsys):
    workdir = copy_of(finished_run[0], tmp_path)
    assert main.run(tiny_config(data_dir, **{**HONEST, "eval_split": "test"}), workdir) == 0
    assert "is also the eval split" in capsys.readouterr().err


def test_final_and_best_evaluates_the_best_checkpoint_not_the_final_model(finished_run, data_dir):
    workdir = finished_run[0]
    model, final = checkpoint.load_model(workdir, 9)
    mesh = parallel.create_mesh()
    eval_fn = steps.make_eval_fn(model, *datasets.NORMALIZATIONS["cifar"], mesh)
    fields = evaluate.final_and_best_on_test(
        tiny_config(data_dir, **HONEST),
        "cifar10",
        eval_fn,
        mesh,
        parallel.replicate(final, mesh),
        9,
        workdir,
        {"step": 3, "epoch": 1},  # epoch 1's checkpoint as the best one
    )
    assert fields["best_epoch"] == 1
    assert fields["best_test_accuracy"] == _accuracy_of_checkpoint(workdir, 3, data_dir)
    assert fields["final_test_accuracy"] == _accuracy_of_checkpoint(workdir, 9, data_dir)


def test_eval_only_reports_the_test_split_as_the_run_did(finished_run, data_dir, capsys):
    workdir = finished_run[0]
    capsys.readouterr()
    assert main.run(tiny_config(data_dir, **HONEST, eval_only=True), workdir) == 0
    out, err = capsys.readouterr()
    reported = json.loads(out.strip().splitlines()[-1])
    saved = results.read(workdir)
    assert {k: reported[k] for k in results.TEST_FIELDS} == {
        k: saved[k] for k in results.TEST_FIELDS
    }
    assert reported["eval_accuracy"] == saved["final_eval_accuracy"]
    assert f"best checkpoint (epoch {saved['best_epoch']}, by eval accuracy)" in err


def test_a_bad_test_split_is_refused_before_training(tmp_path, data_dir, capsys):
    workdir = str(tmp_path / "run")
    assert main.run(tiny_config(data_dir, **{**HONEST, "test_split": "tset"}), workdir) == 2
    assert "Bad split 'tset'" in capsys.readouterr().err
    assert reporting.read_metrics(workdir) == [] and results.read(workdir) is None


def test_best_record_is_the_earliest_best_among_kept_checkpoints():
    records = [
        {"epoch": 1, "step": 3, "eval_accuracy": 0.5},
        {"epoch": 2, "step": 6, "eval_accuracy": 0.7},
        {"epoch": 3, "step": 9, "eval_accuracy": 0.7},
        {"epoch": 4, "step": 12, "eval_accuracy": 0.9},
    ]
    assert results.best_record(records, [3, 6, 9])["epoch"] == 2
    assert results.best_record(records, [3, 9])["epoch"] == 3
    assert results.best_record(records, []) is None


def test_code_version_is_git_describe_of_the_checkout():
    expected = subprocess.run(
        ["git", "describe", "--always", "--dirty", "--abbrev=40"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert expected and results.code_version() == expected


def test_results_json_is_written_atomically_and_read_back(tmp_path):
    records = [{"epoch": 1, "step": 3, "eval_accuracy": 0.5, "wall_s": 1.5}]
    outcome = results.build({"seed": 1, "eval_split": "e"}, records, records[0], None, 1.5, None)
    path = results.write(str(tmp_path), outcome)
    assert json.loads(open(path).read()) == results.read(str(tmp_path)) == outcome
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left
