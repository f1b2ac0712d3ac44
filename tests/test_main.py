"""End to end: `train.py` and `jresnet.main.run` on a tiny CIFAR-10 written by the test.

Covers the outputs a user sees, exact resume after ``kill -9``, evaluation of a
checkpoint, and the error cases (clear message, non-zero exit, nothing lost).
"""

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jresnet import checkpoint, errors, main
from jresnet.configs import default
from tests.conftest import REPO, train_command

TINY = {
    "model": "resnet8",
    "batch_size": 16,
    "eval_batch_size": 24,
    "num_epochs": 3,
    "log_every_steps": 2,
    "steps_per_call": 1,  # compiles fastest; test_train covers several steps per call
}


def _config(data_dir, **overrides):
    config = default.get_config()
    config.update({**TINY, "data_dir": data_dir, **overrides})
    return config


def _cli(workdir, data_dir, **overrides):
    return train_command(workdir, **{**TINY, "data_dir": data_dir, **overrides})


def _variables(workdir):
    _, variables = checkpoint.load_model(workdir)
    return variables


def _assert_equal_trees(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_train_cli_outputs_progress_metrics_curves_and_checkpoints(tmp_path, data_dir):
    # 4 steps per epoch run as calls of 3 + 1 fused steps.
    cmd = _cli(tmp_path / "run", data_dir, steps_per_call=3)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "compiled 3 train step(s) per call" in result.stderr
    for text in ("epoch 1/3 step 3/4", "epoch 3/3 done", "eval acc", "img/s", "ETA", "Finished"):
        assert text in result.stderr
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert [r["step"] for r in records] == [4, 8, 12]
    assert all(r["eval_count"] == 40 for r in records)  # every test image, none twice
    assert records[0]["learning_rate"] == pytest.approx(0.1)
    assert records[1]["learning_rate"] == pytest.approx(0.075)  # cosine stepped per epoch
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["12", "4", "8"]


def _start_and_kill_during_second_save(cmd):
    """Starts training and kill -9s it while (or just after) it writes its second checkpoint."""
    process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt_dir = Path(cmd[2].split("=", 1)[1]) / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        names = os.listdir(ckpt_dir) if ckpt_dir.is_dir() else []
        if any(n.startswith("8") for n in names):  # "8.orbax-checkpoint-tmp-..." or "8"
            break
        time.sleep(0.002)
    assert process.poll() is None, "training finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()


def test_kill_9_and_rerun_ends_with_exactly_the_uninterrupted_parameters(tmp_path, data_dir):
    uninterrupted = subprocess.run(
        _cli(tmp_path / "a", data_dir), capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    cmd = _cli(tmp_path / "b", data_dir)
    _start_and_kill_during_second_save(cmd)
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from the checkpoint at step" in resumed.stderr

    _assert_equal_trees(_variables(tmp_path / "b"), _variables(tmp_path / "a"))
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "b" / "metrics.jsonl").open()]
    assert epochs == [1, 2, 3]


def test_resume_in_process_equals_uninterrupted(tmp_path, data_dir, capsys):
    assert main.run(_config(data_dir), str(tmp_path / "a")) == 0
    assert main.run(_config(data_dir, num_epochs=1), str(tmp_path / "b")) == 0
    capsys.readouterr()
    assert main.run(_config(data_dir), str(tmp_path / "b")) == 0
    assert "recipe differs from the checkpoint's" in capsys.readouterr().err
    # The 1-epoch run used the 1-epoch schedule for its epoch, which has the
    # same lr (0.1) in epoch 1 as the 3-epoch one, so the runs must agree.
    _assert_equal_trees(_variables(tmp_path / "b"), _variables(tmp_path / "a"))


def test_eval_only_reports_the_checkpoint_metrics(tmp_path, data_dir, capsys):
    workdir = str(tmp_path / "run")
    assert main.run(_config(data_dir, num_epochs=1), workdir) == 0
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    capsys.readouterr()
    assert main.run(_config(data_dir, eval_only=True), workdir) == 0
    out, err = capsys.readouterr()
    metrics = json.loads(out.strip().splitlines()[-1])
    assert metrics["eval_accuracy"] == pytest.approx(last["eval_accuracy"])
    assert metrics["eval_count"] == 40
    assert "accuracy" in err


def test_init_from_a_workdir_starts_from_its_weights(tmp_path, data_dir):
    source = str(tmp_path / "source")
    assert main.run(_config(data_dir, num_epochs=1), source) == 0
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


def test_workdir_that_is_a_file_is_refused_and_kept(tmp_path, data_dir, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    assert main.run(_config(data_dir), str(path)) == errors.EXIT_USAGE
    assert "not a directory" in capsys.readouterr().err
    assert path.read_text() == "keep me"


def test_incompatible_checkpoint_is_refused_and_kept(tmp_path, data_dir, capsys):
    workdir = str(tmp_path / "run")
    assert main.run(_config(data_dir, num_epochs=1), workdir) == 0
    before = sorted(os.listdir(tmp_path / "run" / "checkpoints"))
    assert main.run(_config(data_dir, shortcut="A", model="resnet14"), workdir) == errors.EXIT_USAGE
    err = capsys.readouterr().err
    assert "shortcut: checkpoint has 'B', current config has 'A'" in err
    assert "model: checkpoint has 'resnet8', current config has 'resnet14'" in err
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == before


def test_diverging_loss_stops_with_a_message_and_keeps_good_checkpoints(tmp_path, data_dir, capsys):
    workdir = str(tmp_path / "run")
    assert main.run(_config(data_dir, num_epochs=1), workdir) == 0
    good = _variables(workdir)
    assert main.run(_config(data_dir, learning_rate=1e30), workdir) == errors.EXIT_DIVERGED
    assert "training diverged" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["4"]
    _assert_equal_trees(_variables(workdir), good)


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

    from jresnet import input_pipeline, models

    saved = _config(data_dir, shortcut="A", normalization="imagenet")
    model = models.create_model("resnet8", shortcut="A")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    checkpoint.save_pretrained(tmp_path / "converted", variables, saved)
    assert main.run(_config(data_dir, eval_only=True), str(tmp_path / "converted")) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    images, labels = input_pipeline.load_split("cifar10", "test", data_dir)
    mean, std = input_pipeline.NORMALIZATIONS["imagenet"]
    logits = model.apply(variables, input_pipeline.normalize(images, mean, std))
    expected = float(np.mean(np.argmax(logits, axis=-1) == labels))
    assert metrics["eval_accuracy"] == pytest.approx(expected)
    assert metrics["eval_count"] == 40


def test_init_from_a_pytorch_checkpoint_file(tmp_path, data_dir):
    torch = pytest.importorskip("torch")
    from jresnet import convert
    from jresnet.testing import torch_reference

    torch.manual_seed(0)
    source = tmp_path / "ckpt.pth"
    torch.save({"net": torch_reference.torch_resnet(8, "B").state_dict(), "acc": 0.0}, source)
    config = _config(data_dir, num_epochs=1, learning_rate=0.0, weight_decay=0.0)
    config.init_from = str(source)
    assert main.run(config, str(tmp_path / "finetune")) == 0
    expected = convert.torch_to_flax(convert.load_torch_checkpoint(str(source)))
    _assert_equal_trees(_variables(tmp_path / "finetune")["params"], expected["params"])
