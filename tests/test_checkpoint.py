"""jresnet.checkpoint: save/restore, retention, fallback, compatibility, load_model."""

import logging
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jresnet import checkpoint, models
from jresnet.configs import default
from jresnet.errors import TrainingDivergedError
from tests.conftest import random_normal


def _config(**overrides):
    config = default.get_config()
    config.model = "resnet8"
    config.update(overrides)
    return config


def _state(seed=0, shortcut="B"):
    model = models.create_model("resnet8", shortcut=shortcut)
    variables = model.init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)))
    return {"step": jnp.int32(0), **variables}


def test_save_and_restore_round_trip_with_config(tmp_path):
    state = _state()
    with checkpoint.create_manager(tmp_path) as manager:
        checkpoint.save(manager, 7, state, _config(), {"eval_accuracy": 0.5})
    with checkpoint.create_manager(tmp_path) as manager:
        step, restored, config, meta = checkpoint.restore_latest(manager, target=state)
    assert step == 7 and meta["step"] == 7
    assert sorted(meta["digests"]) == ["batch_stats", "params"]
    assert config.model == "resnet8" and config.batch_size == 128
    chex.assert_trees_all_equal(restored, state)


def test_restore_latest_of_empty_directory_is_none(tmp_path):
    with checkpoint.create_manager(tmp_path) as manager:
        assert checkpoint.restore_latest(manager) is None


def test_keeps_latest_and_best(tmp_path):
    state = _state()
    accuracies = {1: 0.2, 2: 0.9, 3: 0.3, 4: 0.4, 5: 0.5}
    with checkpoint.create_manager(tmp_path, keep=2) as manager:
        for step, accuracy in accuracies.items():
            checkpoint.save(manager, step, state, _config(), {"eval_accuracy": accuracy})
        assert sorted(manager.all_steps()) == [2, 4, 5]
        assert manager.best_step() == 2


def _two_checkpoints(tmp_path):
    first, second = _state(0), _state(1)
    with checkpoint.create_manager(tmp_path) as manager:
        checkpoint.save(manager, 1, first, _config(), {"eval_accuracy": 0.1})
        checkpoint.save(manager, 2, second, _config(), {"eval_accuracy": 0.2})
    return first, second


def test_unreadable_latest_checkpoint_falls_back_with_a_warning(tmp_path, capsys):
    first, _ = _two_checkpoints(tmp_path)
    shutil.rmtree(tmp_path / "checkpoints" / "2" / "state")
    with checkpoint.create_manager(tmp_path) as manager:
        step, restored, _, _ = checkpoint.restore_latest(manager, target=first)
    assert step == 1
    chex.assert_trees_all_equal(restored, first)
    assert "warning: the checkpoint at step 2 is unreadable" in capsys.readouterr().err
    assert os.path.isdir(tmp_path / "checkpoints" / "2")  # without move_unreadable: untouched


def _largest_file(directory):
    files = [p for p in directory.rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def _flip_one_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        "truncate_data",
        "flip_a_byte",
        "remove_config",
        "garbage_config",
        "empty_step",
        "renamed_step",
    ],
)
def test_a_damaged_latest_checkpoint_is_moved_aside_and_the_step_can_be_saved_again(
    tmp_path, capsys, damage
):
    first, second = _two_checkpoints(tmp_path)
    step_dir = tmp_path / "checkpoints" / "2"
    if damage == "truncate_data":
        data = _largest_file(step_dir / "state")
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    elif damage == "flip_a_byte":  # silent corruption: only the digest notices
        _flip_one_byte(_largest_file(step_dir / "state"))
    elif damage == "remove_config":
        shutil.rmtree(step_dir / "config")
    elif damage == "garbage_config":
        (step_dir / "config" / "metadata").write_text("{not json")
    elif damage == "empty_step":
        for child in step_dir.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    elif damage == "renamed_step":  # step 1's files under the name "1000", instead of step 2
        shutil.rmtree(step_dir)
        shutil.copytree(tmp_path / "checkpoints" / "1", tmp_path / "checkpoints" / "1000")
        step_dir = tmp_path / "checkpoints" / "1000"
    with checkpoint.create_manager(tmp_path) as manager:
        step, _, _, _ = checkpoint.restore_latest(manager, target=first, move_unreadable=True)
        assert step == 1
        # The run can go on and save the same step again (Orbax refused this before).
        checkpoint.save(manager, 2, second, _config(), {"eval_accuracy": 0.2})
    err = capsys.readouterr().err
    assert "unreadable" in err and "kept, not deleted" in err
    moved = list((tmp_path / "checkpoints-unreadable").iterdir())
    assert [p.name.split("-")[0] for p in moved] == [step_dir.name]
    assert damage == "empty_step" or any(moved[0].iterdir())  # kept with its files


def test_load_model_refuses_a_silently_corrupted_checkpoint(tmp_path):
    checkpoint.save_pretrained(tmp_path, _state(), _config())
    _flip_one_byte(_largest_file(tmp_path / "checkpoints" / "0" / "state"))
    with pytest.raises(checkpoint.CheckpointError, match="digest mismatch"):
        checkpoint.load_model(tmp_path)


def test_a_non_finite_state_is_never_saved(tmp_path):
    good, bad = _state(0), _state(1)
    bad["params"]["conv1"]["kernel"] = bad["params"]["conv1"]["kernel"].at[0, 0, 0, 0].set(np.nan)
    with checkpoint.create_manager(tmp_path, keep=1) as manager:
        checkpoint.save(manager, 1, good, _config(), {"eval_accuracy": 0.1})
        with pytest.raises(TrainingDivergedError, match=r"conv1.*kernel.*intact and finite"):
            checkpoint.save(manager, 2, bad, _config(), {"eval_accuracy": 0.9})
        assert manager.all_steps() == [1]  # the good one was not evicted


def test_a_failed_write_says_why_and_keeps_the_earlier_checkpoints(tmp_path, monkeypatch):
    with checkpoint.create_manager(tmp_path) as manager:
        checkpoint.save(manager, 1, _state(), _config(), {"eval_accuracy": 0.1})

        def full_disk(*args, **kwargs):
            try:
                raise OSError(28, "No space left on device")
            except OSError as e:
                raise ValueError("tensorstore write failed") from e

        monkeypatch.setattr(manager, "save", full_disk)
        with pytest.raises(checkpoint.CheckpointError, match=r"No space left on device.*intact"):
            checkpoint.save(manager, 2, _state(), _config(), {"eval_accuracy": 0.2})
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]


def test_a_failed_write_is_one_line_without_orbax_s_thread_tracebacks(
    tmp_path, monkeypatch, caplog
):
    with checkpoint.create_manager(tmp_path) as manager:

        def full_disk(*args, **kwargs):  # what Orbax's writer threads do on a full disk
            logging.getLogger("absl").error(
                "[process=0][thread=array_type_handler][operation_id=1] "
                "_SignalingThread.run() raised an exception: RESOURCE_EXHAUSTED"
            )
            raise ValueError(f"RESOURCE_EXHAUSTED: {'x' * 1000}: No space left on device")

        monkeypatch.setattr(manager, "save", full_disk)
        with caplog.at_level(logging.INFO):
            with pytest.raises(checkpoint.CheckpointError) as caught:
                checkpoint.save(manager, 2, _state(), _config(), {"eval_accuracy": 0.2})
    assert "_SignalingThread" not in caplog.text
    message = str(caught.value)
    assert "\n" not in message and len(message) < 700
    assert "RESOURCE_EXHAUSTED" in message and "No space left on device" in message


def test_all_checkpoints_unreadable_is_an_error_not_a_fresh_start(tmp_path):
    with checkpoint.create_manager(tmp_path) as manager:
        checkpoint.save(manager, 1, _state(), _config(), {"eval_accuracy": 0.1})
    shutil.rmtree(tmp_path / "checkpoints" / "1" / "state")
    for attempt in range(2):  # a second run refuses the same way: nothing was moved
        with (
            checkpoint.create_manager(tmp_path) as manager,
            pytest.raises(checkpoint.CheckpointError, match="refusing to start from scratch"),
        ):
            checkpoint.restore_latest(manager, target=_state(), move_unreadable=True)
        assert os.path.isdir(tmp_path / "checkpoints" / "1"), attempt
        assert not os.path.exists(tmp_path / "checkpoints-unreadable"), attempt


def test_every_checkpoint_truncated_is_one_short_error_naming_the_cause(tmp_path, capsys):
    _two_checkpoints(tmp_path)
    for step in ("1", "2"):
        data = _largest_file(tmp_path / "checkpoints" / step / "state")
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    capsys.readouterr()
    with pytest.raises(checkpoint.CheckpointError) as caught:
        checkpoint.load_model(tmp_path)  # predict, export and eval_only read this way
    message = str(caught.value)
    assert "none of the 2 checkpoints" in message and "step 2: ValueError" in message
    assert "start from scratch" not in message  # that is a training run's concern
    assert "\n" not in message
    err = capsys.readouterr().err
    for text in (message, err):
        assert "TensorStore details" not in text and "'driver'" not in text
    assert len(err.strip().splitlines()) == 2  # one warning per checkpoint
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]


def test_incompatible_config_names_every_differing_key():
    saved = _config(shortcut="A", dataset="cifar100")
    with pytest.raises(checkpoint.CheckpointError) as excinfo:
        checkpoint.check_compatible(saved, _config(), "ckpt/")
    message = str(excinfo.value)
    assert "shortcut: checkpoint has 'A', current config has 'B'" in message
    assert "dataset: checkpoint has 'cifar100'" in message
    assert "model" not in message.split("\n", 1)[1]
    checkpoint.check_compatible(_config(batch_size=64), _config(), "ckpt/")  # not architecture


def test_load_model_rebuilds_the_saved_architecture(tmp_path):
    state = _state(shortcut="A")
    checkpoint.save_pretrained(tmp_path, state, _config(shortcut="A"))
    model, variables = checkpoint.load_model(tmp_path)
    assert model.shortcut == "A" and models.depth_of(model) == 8 and model.num_classes == 10
    x = random_normal((2, 32, 32, 3), seed=2)
    expected = model.apply({"params": state["params"], "batch_stats": state["batch_stats"]}, x)
    np.testing.assert_array_equal(model.apply(variables, x), expected)


def test_converting_and_loading_log_no_warnings(tmp_path, caplog):
    # Orbax warns about a read-only manager and a checkpoint without metrics; both are
    # deliberate here, so users of load_model should not see them.
    with caplog.at_level(logging.WARNING):
        checkpoint.save_pretrained(tmp_path, _state(), _config())
        checkpoint.load_model(tmp_path)
        checkpoint.load_config(tmp_path)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_expected_orbax_warnings_are_dropped_only_while_opening(caplog):
    absl_logger = logging.getLogger("absl")
    with caplog.at_level(logging.WARNING):
        with checkpoint._without_expected_orbax_warnings():
            absl_logger.warning("Given directory is read only=/x")
            absl_logger.warning("something else")
        absl_logger.warning("Given directory is read only=/y")
    assert [r.getMessage() for r in caplog.records] == [
        "something else",
        "Given directory is read only=/y",
    ]


def test_a_save_without_metrics_logs_no_warning(tmp_path, caplog):
    """A stop request saves mid-epoch, with no eval accuracy (issue 20 L10)."""
    with caplog.at_level(logging.WARNING), checkpoint.create_manager(tmp_path) as manager:
        checkpoint.save(manager, 3, _state(), _config(), metrics=None)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert os.listdir(tmp_path / "checkpoints") == ["3"]


def test_save_pretrained_refuses_a_directory_with_checkpoints(tmp_path):
    checkpoint.save_pretrained(tmp_path, _state(), _config())
    with pytest.raises(checkpoint.CheckpointError, match="already holds checkpoints"):
        checkpoint.save_pretrained(tmp_path, _state(1), _config())


def test_load_model_errors(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="No checkpoints"):
        checkpoint.load_model(tmp_path / "nowhere")
    checkpoint.save_pretrained(tmp_path, _state(), _config())
    with pytest.raises(checkpoint.CheckpointError, match=r"available: \[0\]"):
        checkpoint.load_model(tmp_path, step=5)


@pytest.mark.parametrize("damage", ["remove_meta", "remove_meta_and_flip_bytes"])
def test_a_checkpoint_without_its_digests_is_refused_by_every_reader_m5(tmp_path, capsys, damage):
    from PIL import Image

    from jresnet import predict, weights
    from jresnet.errors import CheckpointError

    checkpoint.save_pretrained(tmp_path / "w", _state(), _config())
    shutil.rmtree(tmp_path / "w" / "checkpoints" / "0" / "meta")
    if damage == "remove_meta_and_flip_bytes":
        data = max(
            (tmp_path / "w" / "checkpoints" / "0" / "state").rglob("*"),
            key=lambda p: p.stat().st_size,
        )
        raw = bytearray(data.read_bytes())
        raw[-1] ^= 0xFF
        data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="digests"):
        checkpoint.load_model(tmp_path / "w")
    with pytest.raises(CheckpointError, match="digests"):
        weights.load(str(tmp_path / "w"))
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    assert predict.main([str(tmp_path / "w"), str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "digests" in err and "Traceback" not in err
