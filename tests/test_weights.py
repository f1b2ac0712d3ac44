"""jresnet.weights: one entry point for every weights source, and the settings weights bring."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from jresnet import checkpoint, convert, errors, export, main, predict, torch_layouts, weights
from jresnet.configs import default
from jresnet.errors import WeightsError
from tests.conftest import REPO, copy_of, model_with_random_statistics, tiny_config
from tests.state_dicts import (
    akamaster_layout,
    assert_trees_equal,
    requires_torch,
    torch,
    torch_state_dict,
)


def _akamaster_file(path, depth: int = 8, num_classes: int = 10) -> dict:
    """An akamaster-style ``.th`` file (``module.`` prefix, option A) of random weights."""
    state_dict = torch_state_dict("A", depth, num_classes)
    torch.save({"state_dict": akamaster_layout(state_dict), "best_prec1": 50.0}, path)
    return state_dict


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    return err.strip().splitlines()[-1]


# --------------------------------------------------------------------------
# One entry point.


# The command line's deliberate exception: JAX (imported by jresnet.main) only once the flags
# are good, so --help and flag errors answer at once.
_LAZY_ON_PURPOSE = ("jresnet/train_command.py: from jresnet import main as run_main",)


def test_no_deferred_imports_between_jresnet_modules() -> None:
    deferred = [
        f"{path.relative_to(REPO)}: {line.strip()}"
        for path in sorted((REPO / "jresnet").rglob("*.py"))
        for line in path.read_text().splitlines()
        if re.match(r"\s+(from jresnet[ .]|import jresnet)", line)
        and not line.strip().startswith("from jresnet.predict import predict")  # a docstring
    ]
    assert [d for d in deferred if not d.startswith(_LAZY_ON_PURPOSE)] == []


def test_an_unknown_source_gets_one_message_from_every_entry_point(tmp_path, capsys) -> None:
    source = "no_such_weights"
    Image.new("RGB", (32, 32)).save(tmp_path / "ok.png")
    lines = []
    assert convert.main([source, str(tmp_path / "out")]) == errors.EXIT_USAGE
    lines.append(_error_line(capsys))
    assert predict.main([source, str(tmp_path / "ok.png")]) == errors.EXIT_USAGE
    lines.append(_error_line(capsys))
    assert export.main([source, str(tmp_path / "m.jax.bin")]) == errors.EXIT_USAGE
    lines.append(_error_line(capsys))
    config = tiny_config(str(tmp_path / "data"), init_from=source)
    assert main.run(config, str(tmp_path / "run")) == errors.EXIT_USAGE
    lines.append(_error_line(capsys))
    config = tiny_config(str(tmp_path / "data"), init_from=source, eval_only=True)
    assert main.run(config, str(tmp_path / "run")) == errors.EXIT_USAGE
    lines.append(_error_line(capsys))
    assert len(set(lines)) == 1, lines
    assert "neither a file, a work directory nor a published weights name" in lines[0]
    with pytest.raises(WeightsError, match="neither a file"):
        weights.load(source)


@requires_torch
def test_a_file_brings_its_inferred_settings(tmp_path) -> None:
    _akamaster_file(tmp_path / "resnet14.th", depth=14)
    settings, variables = weights.load(str(tmp_path / "resnet14.th"))
    assert (settings.model, settings.shortcut, settings.dataset) == ("resnet14", "A", "cifar10")
    assert settings.normalization == "imagenet"  # akamaster's: as convert infers it
    assert sorted(variables) == ["batch_stats", "params"]


def test_load_model_then_predict_needs_no_normalization(tmp_path) -> None:
    _, variables = model_with_random_statistics("A")
    config = default.get_config()
    config.model, config.shortcut, config.normalization = "resnet8", "A", "imagenet"
    checkpoint.save_pretrained(tmp_path / "work", variables, config)
    model, loaded = checkpoint.load_model(tmp_path / "work")
    assert model.normalization == "imagenet"
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        predict.predict(model, loaded, images),
        predict.predict(model, loaded, images, normalization="imagenet"),
    )


# --------------------------------------------------------------------------
# Weights bring their own settings.


def test_settle_takes_the_weights_settings_unless_given() -> None:
    given = default.get_config()
    given.normalization = "cifar100"
    theirs = weights.settings_of(model="resnet56", shortcut="A", normalization="imagenet")
    settled, line = weights.settle(given, theirs, set(), "init_from resnet56")
    assert (settled.model, settled.shortcut, settled.normalization) == ("resnet56", "A", "imagenet")
    assert line == (
        "init_from resnet56: using its architecture resnet56 shortcut A, 10 classes (cifar10), "
        "normalization imagenet"
    )
    settled, line = weights.settle(given, theirs, {"normalization"}, "init_from resnet56")
    assert settled.normalization == "cifar100" and "the weights say imagenet" in line


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model", "resnet20", "--config.model=resnet20 but the weights are model resnet56"),
        ("shortcut", "B", "--config.shortcut=B but the weights are shortcut A"),
        ("dataset", "cifar100", "--config.dataset=cifar100 but the weights are dataset cifar10"),
    ],
)
def test_a_contradicting_explicit_architecture_is_refused(key, value, message) -> None:
    given = default.get_config()
    given[key] = value
    theirs = weights.settings_of(model="resnet56", shortcut="A", normalization="imagenet")
    with pytest.raises(WeightsError, match=re.escape(message)) as info:
        weights.settle(given, theirs, {key}, "init_from F56")
    assert "\n" not in str(info.value)


def test_changed_keys_are_those_that_differ_from_the_defaults() -> None:
    config = default.get_config()
    config.model, config.num_epochs = "resnet8", 3
    assert weights.changed_keys(config) == {"model", "num_epochs"}


@requires_torch
def test_eval_only_evaluates_the_file_s_own_depth_h1(tmp_path, data_dir, capsys) -> None:
    """H1: eval_only with a deeper akamaster file under a shallower config evaluates the
    file's network (or refuses when the user insists on another depth), never a truncated one.
    """
    _akamaster_file(tmp_path / "resnet14.th", depth=14)
    config = tiny_config(data_dir, eval_only=True, init_from=str(tmp_path / "resnet14.th"))
    config.shortcut = "A"
    assert main.run(config, str(tmp_path / "nowhere"), explicit_keys={"shortcut"}) == 0
    out, err = capsys.readouterr()
    assert "using its architecture resnet14 shortcut A, 10 classes (cifar10)" in err
    assert "normalization imagenet" in err
    assert "resnet14 (shortcut A)" in err and json.loads(out.splitlines()[-1])["eval_count"] == 40

    assert main.run(config, str(tmp_path / "nowhere"), explicit_keys={"model"}) == 2
    assert "--config.model=resnet8 but the weights are model resnet14" in _error_line(capsys)


@requires_torch
def test_eval_only_of_a_100_class_file_under_cifar10_is_one_line_m9(
    tmp_path, data_dir, capsys
) -> None:
    _akamaster_file(tmp_path / "c100.th", num_classes=100)
    config = tiny_config(data_dir, eval_only=True, init_from=str(tmp_path / "c100.th"))
    assert main.run(config, str(tmp_path / "x"), explicit_keys={"dataset"}) == 2
    assert "--config.dataset=cifar10 but the weights are dataset cifar100 (100 classes)" in (
        _error_line(capsys)
    )


@requires_torch
def test_init_from_a_file_trains_its_architecture_and_normalization(
    tmp_path, data_dir, capsys
) -> None:
    state_dict = _akamaster_file(tmp_path / "resnet14.th", depth=14)
    config = tiny_config(
        data_dir,
        num_epochs=1,
        learning_rate=0.0,
        weight_decay=0.0,
        init_from=str(tmp_path / "resnet14.th"),
    )
    assert main.run(config, str(tmp_path / "run"), explicit_keys=set()) == 0
    assert "using its architecture resnet14 shortcut A" in capsys.readouterr().err
    saved = checkpoint.load_config(tmp_path / "run")
    assert (saved.model, saved.shortcut, saved.normalization) == ("resnet14", "A", "imagenet")
    _, trained = checkpoint.load_model(tmp_path / "run")
    expected = torch_layouts.torch_to_flax(state_dict)
    assert_trees_equal(trained["params"], expected["params"])  # lr 0


def test_eval_only_reuses_the_recorded_data_dir(tmp_path, data_dir, capsys, one_epoch) -> None:
    workdir = copy_of(one_epoch, tmp_path)
    capsys.readouterr()
    config = tiny_config(str(tmp_path / "not_prepared"), eval_only=True)
    config.data_dir = default.get_config().data_dir  # as if --config.data_dir was not given
    assert main.run(config, workdir, explicit_keys=set()) == 0
    out, err = capsys.readouterr()
    assert f"data_dir {data_dir} (recorded)" in err
    assert json.loads(out.splitlines()[-1])["eval_count"] == 40
