"""End to end: `train.py` and `jresnet.main.run` on a tiny CIFAR-10 written by the test.

Covers the outputs a user sees, exact resume after ``kill -9``, evaluation of a
checkpoint, and the error cases (clear message, non-zero exit, nothing lost).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from jresnet import checkpoint, errors, input_pipeline, main
from tests.conftest import REPO, TINY, copy_of, made_once, tiny_config, train_command
from tests.test_input_pipeline import damage

_config = tiny_config


def _cli(workdir, data_dir, **overrides):
    return train_command(workdir, **{**TINY, "data_dir": data_dir, **overrides})


def _variables(workdir):
    _, variables = checkpoint.load_model(workdir)
    return variables


def _run(cmd, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, **kwargs)


def _interrupted(cmd, how):
    """``cmd`` (a train.py command) run through tests/interrupt.py."""
    return [cmd[0], str(REPO / "tests" / "interrupt.py"), how, *cmd[1:]]


# The CLI tests run 4 steps per epoch as calls of 2 + 2 fused steps (at most 3 per call:
# the largest divisor of 4 up to 3, so one compiled program).
CLI = {"steps_per_call": 3}


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory, data_dir):
    """``(workdir, stderr)`` of one uninterrupted ``train.py`` run, which the kill and signal
    tests must end equal to (a subprocess too: train.py's XLA flags change rounding). One
    run for the session (all xdist workers): tests read it or copy it."""

    def train(path):
        result = _run(_cli(path / "run", data_dir, **CLI))
        assert result.returncode == 0, result.stderr
        (path / "stderr.txt").write_text(result.stderr)

    path = made_once(tmp_path_factory, "uninterrupted", train)
    return path / "run", (path / "stderr.txt").read_text()


@pytest.fixture(scope="session")
def three_epochs(tmp_path_factory, data_dir):
    """The work directory of one finished 3-epoch `main.run` (the tiny config), one for the
    session: tests read it or take a `copy_of` it."""

    def train(path):
        assert main.run(_config(data_dir), str(path / "run")) == 0

    return made_once(tmp_path_factory, "three-epochs", train) / "run"


def test_train_cli_outputs_progress_metrics_curves_and_checkpoints(uninterrupted):
    workdir, stderr = uninterrupted
    compiling = stderr.index("compiling the train step, 2 steps per call (resnet8")
    assert "a rerun loads it from the compilation cache in" in stderr[compiling:]
    assert stderr.count("compiling the train step") == 1  # one program: 2 + 2
    assert "compiled 2 train step(s) per call in" in stderr  # before training
    assert stderr.index("compiled 2") < stderr.index("epoch 1/3 step")
    assert "Finished 3 epochs (12 steps)" in stderr
    for noise in ("tracked_metric", "Variant folder", "Unknown size", "error:"):
        assert noise not in stderr  # a quiet console
    for text in ("epoch 1/3 step 2/4", "epoch 3/3 done", "eval acc", "img/s", "ETA", "Finished"):
        assert text in stderr
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert [r["step"] for r in records] == [4, 8, 12]
    assert all(r["eval_count"] == 40 for r in records)  # every test image, none twice
    assert records[0]["learning_rate"] == pytest.approx(0.1)
    assert records[1]["learning_rate"] == pytest.approx(0.075)  # cosine stepped per epoch
    assert (workdir / "curves.png").stat().st_size > 0
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["12", "4", "8"]


def test_kill_9_inside_a_save_and_rerun_ends_with_exactly_the_uninterrupted_parameters(
    tmp_path, data_dir, uninterrupted
):
    cmd = _cli(tmp_path / "b", data_dir, **CLI)
    killed = _run(_interrupted(cmd, "kill-inside-save=8"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    leftovers = os.listdir(tmp_path / "b" / "checkpoints")
    assert "4" in leftovers and "8" not in leftovers  # step 8 was being written, not committed
    resumed = _run(cmd)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from the checkpoint at step 4" in resumed.stderr

    chex.assert_trees_all_equal(_variables(tmp_path / "b"), _variables(uninterrupted[0]))
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "b" / "metrics.jsonl").open()]
    assert epochs == [1, 2, 3]


def test_sigterm_stops_inside_an_epoch_saves_and_resumes_exactly(tmp_path, data_dir, uninterrupted):
    cmd = _cli(tmp_path / "b", data_dir, **CLI)
    stopped = _run(_interrupted(cmd, "sigterm-at-first-progress"))  # after the first call
    assert stopped.returncode == errors.EXIT_INTERRUPTED, stopped.stderr
    assert "stopped: SIGTERM at step 2 (epoch 1, step 2/4)" in stopped.stderr
    assert "rerun the same command" in stopped.stderr and "error:" not in stopped.stderr
    assert os.listdir(tmp_path / "b" / "checkpoints") == ["2"]
    resumed = _run(cmd)  # the rest of epoch 1 is the second call of 2 steps
    assert resumed.returncode == 0, resumed.stderr
    chex.assert_trees_all_equal(_variables(tmp_path / "b"), _variables(uninterrupted[0]))
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").open()]
    assert [r["epoch"] for r in records] == [1, 2, 3]


@pytest.mark.slow
def test_resume_in_process_equals_uninterrupted(tmp_path, data_dir, capsys, three_epochs):
    assert main.run(_config(data_dir, num_epochs=1), str(tmp_path / "b")) == 0
    capsys.readouterr()
    assert main.run(_config(data_dir), str(tmp_path / "b")) == 0
    assert "recipe differs from the checkpoint's" in capsys.readouterr().err
    # The 1-epoch run used the 1-epoch schedule for its epoch, which has the
    # same lr (0.1) in epoch 1 as the 3-epoch one, so the runs must agree.
    chex.assert_trees_all_equal(_variables(tmp_path / "b"), _variables(three_epochs))


def test_eval_only_reports_the_checkpoint_metrics(tmp_path, data_dir, capsys, one_epoch):
    workdir = copy_of(one_epoch, tmp_path)
    last = json.loads((one_epoch / "metrics.jsonl").read_text().splitlines()[-1])
    assert main.run(_config(data_dir, eval_only=True), workdir) == 0
    out, err = capsys.readouterr()
    metrics = json.loads(out.strip().splitlines()[-1])
    assert metrics["eval_accuracy"] == pytest.approx(last["eval_accuracy"])
    assert metrics["eval_count"] == 40
    assert "accuracy" in err


def test_init_from_a_workdir_starts_from_its_weights(tmp_path, data_dir, one_epoch):
    source = str(one_epoch)
    finetune = _config(data_dir, num_epochs=1, learning_rate=0.0, weight_decay=0.0)
    finetune.init_from = source
    assert main.run(finetune, str(tmp_path / "finetune")) == 0
    # lr 0: the parameters are the source's (BN statistics keep moving in train mode).
    np.testing.assert_array_equal(
        jax.tree.leaves(_variables(tmp_path / "finetune")["params"])[0],
        jax.tree.leaves(_variables(source)["params"])[0],
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": "resnet9"}, "6n + 2"),
        ({"dataset": "imagenet"}, "--config.dataset"),
        ({"num_epochs": 0}, "--config.num_epochs must be a positive integer"),
        ({"batch_size": 0}, "--config.batch_size must be a positive integer"),
        ({"train_split": "tran"}, "tran"),
        ({"eval_split": "test[:abc]"}, "test[:abc]"),
        ({"batch_size": 128}, "batch"),  # more than the 64 training images
        ({"seed": -1}, "--config.seed must be an integer >= 0"),
        ({"distributed": True}, "can't start the multi-process run"),  # no cluster here
    ],
)
def test_bad_input_exits_2_with_a_clear_message(tmp_path, data_dir, capsys, overrides, message):
    assert main.run(_config(data_dir, **overrides), str(tmp_path / "run")) == errors.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_missing_dataset_offline_says_how_to_prepare_it(tmp_path, capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    config = _config(str(tmp_path / "empty"))
    assert main.run(config, str(tmp_path / "run")) == errors.EXIT_USAGE
    assert "python -m jresnet.prepare_data" in capsys.readouterr().err


def test_missing_dataset_offline_fails_fast_and_says_how_to_prepare(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(socket.socket, "connect", offline)
    monkeypatch.setattr(socket, "getaddrinfo", offline)
    start = time.perf_counter()
    with pytest.raises(errors.DataError) as info:
        main.prepare_if_missing("cifar10", str(tmp_path))
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "can't be downloaded" in message and "Name or service not known" in message
    assert f"python -m jresnet.prepare_data --from PATH --data_dir {tmp_path}" in message
    assert "cifar-10-python.tar.gz" in message and "cifar-10-binary.tar.gz" in message
    assert not any(tmp_path.iterdir())  # nothing was created


def test_a_damaged_dataset_exits_2_naming_the_file(tmp_path, data_dir, capsys):
    copy = tmp_path / "tfds"
    shutil.copytree(data_dir, copy)
    path = damage(copy, "test", "flipped")
    assert main.run(_config(str(copy)), str(tmp_path / "run")) == errors.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("error: ") and path in err and "Traceback" not in err


def test_workdir_that_is_a_file_is_refused_and_kept(tmp_path, data_dir, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    assert main.run(_config(data_dir), str(path)) == errors.EXIT_USAGE
    assert "not a directory" in capsys.readouterr().err
    assert path.read_text() == "keep me"


def test_incompatible_checkpoint_is_refused_and_kept(tmp_path, data_dir, capsys, one_epoch):
    workdir = copy_of(one_epoch, tmp_path)
    before = sorted(os.listdir(tmp_path / "run" / "checkpoints"))
    assert main.run(_config(data_dir, shortcut="A", model="resnet14"), workdir) == errors.EXIT_USAGE
    err = capsys.readouterr().err
    assert "shortcut: checkpoint has 'B', current config has 'A'" in err
    assert "model: checkpoint has 'resnet8', current config has 'resnet14'" in err
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == before


def test_diverging_loss_stops_with_a_message_and_keeps_good_checkpoints(
    tmp_path, data_dir, capsys, one_epoch
):
    workdir = copy_of(one_epoch, tmp_path)
    good = _variables(workdir)
    assert main.run(_config(data_dir, learning_rate=1e30), workdir) == errors.EXIT_DIVERGED
    assert "training diverged" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["4"]
    chex.assert_trees_all_equal(_variables(workdir), good)


def test_training_in_a_workdir_of_converted_weights_points_to_init_from(tmp_path, data_dir, capsys):
    import jax.numpy as jnp

    from jresnet import models

    config = _config(data_dir)
    variables = models.create_model("resnet8").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    checkpoint.save_pretrained(tmp_path / "converted", variables, config)
    assert main.run(config, str(tmp_path / "converted")) == errors.EXIT_USAGE
    assert "--config.init_from=" in capsys.readouterr().err
    assert os.listdir(tmp_path / "converted" / "checkpoints") == ["0"]


def test_eval_only_uses_the_checkpoints_own_architecture_and_normalization(
    tmp_path, data_dir, capsys
):
    """A converted akamaster-style model (option A, ImageNet statistics) evaluates with the
    default config (option B, CIFAR statistics) on the command line."""
    import jax.numpy as jnp

    from jresnet import datasets, models

    saved = _config(data_dir, shortcut="A", normalization="imagenet")
    model = models.create_model("resnet8", shortcut="A")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    checkpoint.save_pretrained(tmp_path / "converted", variables, saved)
    assert main.run(_config(data_dir, eval_only=True), str(tmp_path / "converted")) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    images, labels = input_pipeline.load_split("cifar10", "test", data_dir)
    mean, std = datasets.NORMALIZATIONS["imagenet"]
    logits = model.apply(variables, input_pipeline.normalize(images, mean, std))
    expected = float(np.mean(np.argmax(logits, axis=-1) == labels))
    assert metrics["eval_accuracy"] == pytest.approx(expected)
    assert metrics["eval_count"] == 40


def test_init_from_a_pytorch_checkpoint_file(tmp_path, data_dir):
    torch = pytest.importorskip("torch")
    from jresnet import torch_layouts, weight_files
    from jresnet.testing import torch_reference

    torch.manual_seed(0)
    source = tmp_path / "ckpt.pth"
    torch.save({"net": torch_reference.torch_resnet(8, "B").state_dict(), "acc": 0.0}, source)
    config = _config(data_dir, num_epochs=1, learning_rate=0.0, weight_decay=0.0)
    config.init_from = str(source)
    assert main.run(config, str(tmp_path / "finetune")) == 0
    expected = torch_layouts.torch_to_flax(weight_files.load_torch_checkpoint(str(source)))
    chex.assert_trees_all_equal(_variables(tmp_path / "finetune")["params"], expected["params"])


def test_a_second_run_in_a_busy_workdir_is_refused_and_writes_nothing(tmp_path, data_dir, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    hold = "import sys, time\nfrom jresnet import workdir\nwith workdir.locked(sys.argv[1]):\n"
    hold += "    print('locked', flush=True); time.sleep(60)\n"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(workdir)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main.run(_config(data_dir), str(workdir)) == errors.EXIT_USAGE
    finally:
        holder.kill()
        holder.wait()
    assert f"is in use by another run (pid {holder.pid}" in capsys.readouterr().err
    assert sorted(os.listdir(workdir)) == [".lock"]


def test_an_unreadable_latest_checkpoint_is_moved_aside_and_the_run_completes(
    tmp_path, data_dir, capsys, three_epochs
):
    workdir = tmp_path / "run"
    copy_of(three_epochs, tmp_path)
    finished = _variables(workdir)
    data = max(
        (workdir / "checkpoints" / "12" / "state").rglob("*"), key=lambda p: p.stat().st_size
    )
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    (workdir / "metrics.jsonl").write_text("\n".join(lines[:1]) + "\n")  # lost records too
    capsys.readouterr()

    assert main.run(_config(data_dir), str(workdir)) == 0  # retrains epoch 3 from step 8
    err = capsys.readouterr().err
    assert "Moved it to" in err and "Resuming from the checkpoint at step 8" in err
    assert [p.name.split("-")[0] for p in (workdir / "checkpoints-unreadable").iterdir()] == ["12"]
    chex.assert_trees_all_equal(_variables(workdir), finished)
    # metrics.jsonl is rebuilt from the history saved in the checkpoints; epoch 3 is new.
    rebuilt = (workdir / "metrics.jsonl").read_text().splitlines()
    assert rebuilt[:2] == lines[:2]
    timing = ("images_per_s", "epoch_time_s", "wall_s")
    retrained, before = json.loads(rebuilt[2]), json.loads(lines[2])
    assert {k: v for k, v in retrained.items() if k not in timing} == {
        k: v for k, v in before.items() if k not in timing
    }


def test_when_every_checkpoint_is_unreadable_every_run_refuses_and_nothing_moves(
    tmp_path, data_dir, uninterrupted
):
    source, _ = uninterrupted
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    for state in (workdir / "checkpoints").glob("*/state"):
        data = max(state.rglob("*"), key=lambda p: p.stat().st_size)
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    metrics = (workdir / "metrics.jsonl").read_bytes()
    steps = sorted(os.listdir(workdir / "checkpoints"))
    for attempt in range(2):  # the second run must not train from step 0 either
        result = _run(_cli(workdir, data_dir, **CLI))
        assert result.returncode == 2, (attempt, result.stderr)
        assert "refusing to start from scratch" in result.stderr
        assert "left in place" in result.stderr
        for noise in ("Traceback", "Event loop is closed", "TensorStore details"):
            assert noise not in result.stderr, (attempt, result.stderr)
        assert (workdir / "metrics.jsonl").read_bytes() == metrics
        assert sorted(os.listdir(workdir / "checkpoints")) == steps
        assert not (workdir / "checkpoints-unreadable").exists()


def test_a_resume_that_changes_what_a_step_means_is_refused(tmp_path, data_dir, capsys, one_epoch):
    workdir = tmp_path / "run"
    copy_of(one_epoch, tmp_path)
    metrics = (workdir / "metrics.jsonl").read_text()
    assert main.run(_config(data_dir, batch_size=8), str(workdir)) == errors.EXIT_USAGE
    assert "batch_size 16 -> 8" in capsys.readouterr().err
    assert (workdir / "metrics.jsonl").read_text() == metrics
    assert os.listdir(workdir / "checkpoints") == ["4"]


@pytest.mark.parametrize("learning_rate", [1e30, 1e5])
def test_divergence_saves_nothing_non_finite(tmp_path, data_dir, capsys, learning_rate):
    workdir = tmp_path / "run"
    assert main.run(_config(data_dir, learning_rate=learning_rate), str(workdir)) == 3
    assert "diverged" in capsys.readouterr().err
    for step in os.listdir(workdir / "checkpoints") if (workdir / "checkpoints").exists() else []:
        _, variables = checkpoint.load_model(workdir, step=int(step))
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(variables))


def test_eval_only_creates_no_workdir_and_bounds_the_batch(tmp_path, data_dir, capsys, one_epoch):
    config = _config(data_dir, eval_only=True, eval_batch_size=10_000_000)
    config.init_from = str(one_epoch)
    assert main.run(config, str(tmp_path / "nowhere")) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["eval_count"] == 40
    assert not (tmp_path / "nowhere").exists()


def test_init_from_weights_with_nan_is_refused(tmp_path, data_dir, capsys):
    torch = pytest.importorskip("torch")
    from jresnet.testing import torch_reference

    state_dict = torch_reference.torch_resnet(8, "B").state_dict()
    state_dict["linear.bias"][0] = float("nan")
    torch.save({"net": state_dict}, tmp_path / "ckpt.pth")
    config = _config(data_dir, init_from=str(tmp_path / "ckpt.pth"))
    assert main.run(config, str(tmp_path / "run")) == errors.EXIT_USAGE
    assert "NaN or infinity: linear.bias" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before the work directory is made


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config.nonexistent_key=1"], "no such config key 'nonexistent_key'"),
        (["--config.batchsize=3"], 'Did you mean "batch_size"'),
        (["--config=missing.py"], "--config file 'missing.py' not found"),
        (["--config.learning_rate=x"], "could not convert string to float: 'x'"),
        (["stray"], "unexpected arguments: stray"),
    ],
)
def test_bad_command_lines_exit_2_with_one_line(tmp_path, args, message):
    result = _run([sys.executable, str(REPO / "train.py"), f"--workdir={tmp_path / 'w'}", *args])
    assert result.returncode == errors.EXIT_USAGE, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "w").exists()


def test_the_readmes_relative_config_path_works_from_any_directory(tmp_path):
    """``--config=jresnet/configs/paper.py`` outside the repository: found in the repository
    (here a bad override then stops the run before any work, with the paper's config)."""
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--config=jresnet/configs/paper.py", "--x"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == errors.EXIT_USAGE, result.stderr
    assert "not found" not in result.stderr
