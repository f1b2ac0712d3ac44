"""jresnet.configs.checks: every unusable value is named before any data is read."""

import subprocess

import pytest

from jresnet.configs import checks, default
from jresnet.errors import ConfigError
from tests.conftest import train_command


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model", "resnet21", r"6n \+ 2"),
        ("model", "vgg16", "unknown model"),
        ("dataset", "mnist", "--config.dataset"),
        ("num_epochs", 0, "--config.num_epochs must be a positive integer"),
        ("batch_size", -1, "--config.batch_size must be a positive integer"),
        ("schedule", "linear", "--config.schedule"),
        ("shortcut", "C", "--config.shortcut"),
        ("learning_rate", float("nan"), "--config.learning_rate"),
        ("seed", -1, "--config.seed must be an integer >= 0"),
        ("seed", 2**63, r"--config.seed must be an integer >= 0 and <= 2\*\*63 - 1"),
        ("batch_size", 2**64, r"--config.batch_size must be a positive integer \(at most"),
        ("checkpoints_to_keep", -5, "--config.checkpoints_to_keep must be a positive integer"),
        ("dtype", "float16", "--config.dtype"),
        ("coordinator_timeout_s", 0, "--config.coordinator_timeout_s"),
    ],
)
def test_validate_names_the_bad_key(key, value, message):
    config = default.get_config()
    config.unlock()
    config[key] = value
    with pytest.raises(ConfigError, match=message):
        checks.validate(config)


@pytest.mark.parametrize("boundaries", [("abc",), (48000, 32000), (0, 100), (100, 100)])
def test_multistep_boundaries_must_be_increasing_step_numbers(boundaries):
    config = default.get_config()
    config.unlock()
    config.schedule = "multistep"
    config.lr_boundaries = boundaries
    with pytest.raises(ConfigError, match=r"--config.lr_boundaries must be increasing"):
        checks.validate(config)


def test_one_problem_is_one_line_and_a_huge_seed_exits_2_without_a_traceback(tmp_path):
    config = default.get_config()
    config.seed = 2**63
    with pytest.raises(ConfigError) as caught:
        checks.validate(config)
    assert "\n" not in str(caught.value)
    result = subprocess.run(
        train_command(tmp_path / "w", seed=2**63),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "--config.seed must be an integer >= 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_shipped_configs_are_valid():
    from jresnet.configs import paper

    checks.validate(default.get_config())
    checks.validate(paper.get_config())


def test_changed_keys_compares_with_the_saved_json_values():
    config = default.get_config()
    saved = {**config.to_dict(), "lr_boundaries": [32000, 48000], "batch_size": 64}
    assert checks.changed_keys(saved, config, checks.STEP_KEYS) == ["batch_size 64 -> 128"]
    assert checks.changed_keys(saved, config, checks.NUMERIC_KEYS) == []  # tuple == list


def test_a_changed_dtype_or_steps_per_call_is_a_numeric_change():
    config = default.get_config()
    saved = {**config.to_dict(), "dtype": "bfloat16", "steps_per_call": 1}
    assert checks.changed_keys(saved, config, checks.NUMERIC_KEYS) == [
        "dtype 'bfloat16' -> 'float32'",
        "steps_per_call 1 -> 10",
    ]
