"""jresnet.checkpoint: save/restore, retention, fallback, compatibility, load_model."""

import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jresnet import checkpoint, models
from jresnet.configs import default


def _config(**overrides):
    config = default.get_config()
    config.model = "resnet8"
    config.update(overrides)
    return config


def _state(seed=0, shortcut="B"):
    model = models.create_model("resnet8", shortcut=shortcut)
    variables = model.init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)))
    return {"step": jnp.int32(0), **variables}


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_and_restore_round_trip_with_config(tmp_path):
    state = _state()
    with checkpoint.create_manager(tmp_path) as manager:
        checkpoint.save(manager, 7, state, _config(), {"eval_accuracy": 0.5})
    with checkpoint.create_manager(tmp_path) as manager:
        step, restored, config = checkpoint.restore_latest(manager, target=state)
    assert step == 7
    assert config.model == "resnet8" and config.batch_size == 128
    _assert_trees_equal(restored, state)


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


def test_unreadable_latest_checkpoint_falls_back_with_a_warning(tmp_path, caplog):
    first, second = _state(0), _state(1)
    with checkpoint.create_manager(tmp_path) as manager:
        checkpoint.save(manager, 1, first, _config(), {"eval_accuracy": 0.1})
        checkpoint.save(manager, 2, second, _config(), {"eval_accuracy": 0.2})
    shutil.rmtree(tmp_path / "checkpoints" / "2" / "state")
    with caplog.at_level(logging.WARNING), checkpoint.create_manager(tmp_path) as manager:
        step, restored, _ = checkpoint.restore_latest(manager, target=first)
    assert step == 1
    _assert_trees_equal(restored, first)
    assert "unreadable" in caplog.text


def test_all_checkpoints_unreadable_is_an_error_not_a_fresh_start(tmp_path):
    with checkpoint.create_manager(tmp_path) as manager:
        checkpoint.save(manager, 1, _state(), _config(), {"eval_accuracy": 0.1})
    shutil.rmtree(tmp_path / "checkpoints" / "1" / "state")
    with (
        checkpoint.create_manager(tmp_path) as manager,
        pytest.raises(checkpoint.CheckpointError, match="refusing to start from scratch"),
    ):
        checkpoint.restore_latest(manager, target=_state())
    assert os.path.isdir(tmp_path / "checkpoints" / "1")


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
    x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
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
