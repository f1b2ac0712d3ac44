"""tools/seed_recipe.sh: what it tells of the runs, and what it refuses, without training."""

import json
import os
import subprocess

from jresnet import workdir
from tests.conftest import REPO


def script(command, tmp_path):
    """``bash tools/seed_recipe.sh COMMAND`` with its runs and results under ``tmp_path``."""
    env = {**os.environ, "RUNS": str(tmp_path / "runs"), "RESULTS": str(tmp_path / "results")}
    return subprocess.run(
        ["bash", str(REPO / "tools" / "seed_recipe.sh"), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_status_tells_how_far_each_run_got_and_whether_it_runs(tmp_path):
    run = tmp_path / "runs" / "jresnet-seed"
    run.mkdir(parents=True)
    records = [{"epoch": e, "eval_accuracy": 0.5} for e in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"ep')
    assert script("status", tmp_path).stdout.splitlines() == [
        "jresnet: 3/200 epochs",
        "pytorch: no work directory",
    ]
    with workdir.locked(str(run)):  # as a live run holds it
        status = script("status", tmp_path).stdout
    assert f"jresnet: 3/200 epochs, running (pid {os.getpid()})" in status


def test_start_refuses_to_begin_afresh_a_run_that_results_hold_unfinished(tmp_path):
    (tmp_path / "results" / "seed-recipe" / "jresnet").mkdir(parents=True)
    info = {"finished": False, "epochs_done": 63, "commit": "abc"}
    (tmp_path / "results" / "seed-recipe" / "jresnet" / "run-info.json").write_text(
        json.dumps(info)
    )
    started = script("start", tmp_path)
    assert started.returncode == 1
    assert "holds an unfinished run but no packed state" in started.stderr
    assert "FRESH=1" in started.stderr
    assert not (tmp_path / "runs" / "code").exists()  # nothing set up


def test_start_leaves_runs_that_results_hold_finished_alone(tmp_path):
    for name in ("jresnet", "pytorch"):
        (tmp_path / "results" / "seed-recipe" / name).mkdir(parents=True)
        (tmp_path / "results" / "seed-recipe" / name / "run-info.json").write_text(
            json.dumps({"finished": True, "epochs_done": 200})
        )
    started = script("start", tmp_path)
    assert started.returncode == 0, started.stderr
    assert started.stdout == "pytorch has finished\n"  # jresnet's finished: pytorch's turn
    assert not (tmp_path / "runs" / "code-torch").exists()


def test_unknown_commands_get_the_usage(tmp_path):
    wrong = script("restart", tmp_path)
    assert (
        wrong.returncode == 2
        and "usage: bash tools/seed_recipe.sh start|stop|status" in wrong.stderr
    )
