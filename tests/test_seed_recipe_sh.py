"""tools/seed_recipe.sh: what it tells of the runs, and what it refuses, without training."""

import json
import os
import subprocess
import sys
import time

import pytest

from jresnet import workdir
from tests.conftest import REPO


def script(command, tmp_path, **settings):
    """``bash tools/seed_recipe.sh COMMAND`` with its runs and results under ``tmp_path``."""
    env = {**os.environ, "RUNS": str(tmp_path / "runs"), "RESULTS": str(tmp_path / "results")}
    env.update(settings)
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
    records = [{"epoch": e, "eval_accuracy": a} for e, a in ((1, 0.5), (2, 0.625), (3, 0.6))]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"ep')
    progress = "jresnet: 3/200 epochs, test accuracy 60.00% (best 62.50% at epoch 2)"
    assert script("status", tmp_path).stdout.splitlines() == [
        progress,
        "pytorch: no work directory",
    ]
    with workdir.locked(str(run)):  # as a live run holds it
        status = script("status", tmp_path).stdout
    assert f"{progress}, running (pid {os.getpid()})" in status


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
        and "usage: bash tools/seed_recipe.sh start|save|stop|status" in wrong.stderr
    )


# A stand-in for the runs' venv python. As either run's command (its arguments name a
# --workdir) it writes 200 epoch records there while it holds the work directory's lock for
# FAKE_HOLD_S seconds, as a run that trains in no time; anything else (the import check,
# pack, snapshot, report) succeeds and does nothing.
FAKE_PYTHON = """\
#!/usr/bin/env bash
workdir=""
while [ $# -gt 0 ]; do [ "$1" = --workdir ] && workdir=$2; shift; done
[ -n "$workdir" ] || exit 0
mkdir -p "$workdir"
exec flock "$workdir/.lock" bash -c 'for e in $(seq 200); do
  echo "{\\"epoch\\": $e, \\"eval_accuracy\\": 0.5}"; done > "$1/metrics.jsonl"
  sleep "${FAKE_HOLD_S:-4}"' _ "$workdir"
"""


@pytest.fixture
def fake_venv(tmp_path):
    """A venv whose python is `FAKE_PYTHON`, and the data dir made as if prepared. Whatever
    the test leaves running under ``tmp_path`` (a failed test's runs) is killed after it."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(FAKE_PYTHON)
    (venv / "bin" / "python").chmod(0o755)
    (tmp_path / "runs" / "tfds" / "cifar10").mkdir(parents=True)
    yield str(venv)
    subprocess.run(["pkill", "-f", str(tmp_path)], check=False)


def wait_for(condition, seconds=60):
    """Polls ``condition`` until it holds or ``seconds`` pass; returns its last value."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)
    return condition()


def test_when_jresnets_run_finishes_the_pytorch_run_starts(tmp_path, fake_venv):
    started = script("start", tmp_path, VENV=fake_venv)
    assert started.returncode == 0, started.stderr
    assert "started jresnet" in started.stdout
    log = tmp_path / "runs" / "jresnet.log"  # what the background run and its start print
    torch_records = tmp_path / "runs" / "pytorch-seed" / "metrics.jsonl"

    def torch_epochs():
        return len(torch_records.read_text().splitlines()) if torch_records.exists() else 0

    assert wait_for(lambda: "started pytorch" in log.read_text() and torch_epochs() == 200)
    assert "=== jresnet has finished" in log.read_text()  # by itself, nobody called start
    assert (tmp_path / "runs" / "code-torch" / "benchmarks" / "torch_seed.py").exists()
    assert wait_for(lambda: "running" not in script("status", tmp_path).stdout)  # none left


def test_stop_keeps_the_next_run_from_starting_by_itself(tmp_path, fake_venv):
    started = script("start", tmp_path, VENV=fake_venv, FAKE_HOLD_S="8")
    assert started.returncode == 0, started.stderr
    # jresnet has written its 200 records and holds its lock for a few seconds more: stop
    # waits for it, and when it ends the next run does not start.
    stopped = script("stop", tmp_path, VENV=fake_venv)
    assert stopped.returncode == 0, stopped.stderr
    assert "paused jresnet" in stopped.stdout
    log = tmp_path / "runs" / "jresnet.log"
    assert wait_for(lambda: "the next run waits for start" in log.read_text())
    assert not (tmp_path / "runs" / "pytorch-seed").exists()
    assert not (tmp_path / "runs" / "code-torch").exists()


def test_save_packs_a_live_run_and_stop_pauses_it_first(tmp_path):
    """With a venv python that only notes its arguments: what save and stop call, and
    whether the run (a process holding its work directory's lock) goes on."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    calls = tmp_path / "calls"
    (venv / "bin" / "python").write_text(f'#!/bin/sh\necho "$2 $3" >> {calls}\n')
    (venv / "bin" / "python").chmod(0o755)
    run = tmp_path / "runs" / "jresnet-seed"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"epoch": 1, "eval_accuracy": 0.5}\n')
    hold = f"from jresnet import workdir; import time\nwith workdir.locked({str(run)!r}):\n"
    hold += "    print('locked', flush=True); time.sleep(60)"
    live = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline() == "locked\n"
        saved = script("save", tmp_path, VENV=str(venv))
        assert saved.returncode == 0, saved.stderr
        steps = ["run_state pack", "seed_recipe snapshot", "seed_recipe report"]
        steps = [f"benchmarks.{step}" for step in steps]
        assert calls.read_text().splitlines() == steps
        assert live.poll() is None  # the run goes on
        stopped = script("stop", tmp_path, VENV=str(venv))
        assert stopped.returncode == 0, stopped.stderr
        assert "paused jresnet" in stopped.stdout and live.wait(timeout=10) != 0
        assert calls.read_text().splitlines()[3:] == steps
    finally:
        live.kill()
