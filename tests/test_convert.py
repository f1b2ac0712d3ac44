"""jresnet.convert: PyTorch <-> Flax conversion, checkpoint files, and the command line."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jresnet import convert, models

try:
    import torch

    from jresnet.testing.torch_reference import randomize_batchnorm, torch_resnet
except ImportError:  # torch is in the test extra; the numpy-only tests still run without it
    torch = None

requires_torch = pytest.mark.skipif(torch is None, reason="needs torch (pip install torch)")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_variables(shortcut: str, depth: int = 8, num_classes: int = 10, seed: int = 0) -> dict:
    """Flax variables of the model's structure, every value random (BN variances positive)."""
    model = models.create_model(f"resnet{depth}", shortcut=shortcut, num_classes=num_classes)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: rng.uniform(0.5, 1.5, x.shape).astype(np.float32), shapes)


def torch_state_dict(shortcut: str, depth: int = 8, num_classes: int = 10) -> dict:
    torch.manual_seed(0)
    reference = torch_resnet(depth, shortcut, num_classes)
    randomize_batchnorm(reference)
    return reference.state_dict()


def akamaster_layout(state_dict: dict) -> dict:
    """As akamaster's files: ``module.`` prefix and no ``num_batches_tracked``."""
    return {
        f"module.{k}": v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")
    }


def assert_trees_equal(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --------------------------------------------------------------------------
# Conversion.


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_flax_torch_flax_round_trip_is_exact(shortcut: str) -> None:
    variables = random_variables(shortcut)
    state_dict = convert.flax_to_torch(variables)
    back = convert.torch_to_flax(state_dict)
    assert_trees_equal(back, variables)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(back))


@pytest.mark.parametrize("shortcut", ["A", "B"])
@requires_torch
def test_torch_flax_torch_round_trip_is_exact(shortcut: str) -> None:
    state_dict = torch_state_dict(shortcut)
    back = convert.flax_to_torch(convert.torch_to_flax(state_dict))
    assert list(back) == list(state_dict)  # same keys, same (registration) order
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            assert back[key].dtype == np.int64 and back[key].shape == ()
        else:
            np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)


@pytest.mark.parametrize("shortcut", ["A", "B"])
@requires_torch
def test_torch_to_flax_matches_model_init_structure(shortcut: str) -> None:
    variables = convert.torch_to_flax(torch_state_dict(shortcut, num_classes=100))
    model = models.create_model("resnet8", shortcut=shortcut, num_classes=100)
    expected = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert jax.tree.structure(variables) == jax.tree.structure(expected)
    assert jax.tree.map(np.shape, variables) == jax.tree.map(np.shape, expected)


@pytest.mark.parametrize("shortcut", ["A", "B"])
@requires_torch
def test_reference_model_loads_flax_to_torch_strictly(shortcut: str) -> None:
    state_dict = convert.flax_to_torch(random_variables(shortcut), as_tensors=True)
    reference = torch_resnet(8, shortcut)
    reference.load_state_dict(state_dict, strict=True)
    assert ("layer2.0.shortcut.0.weight" in state_dict) == (shortcut == "B")


@requires_torch
def test_torch_to_flax_accepts_numpy_and_drops_num_batches_tracked() -> None:
    state_dict = {k: v.numpy() for k, v in torch_state_dict("B").items()}
    variables = convert.torch_to_flax(state_dict)
    np.testing.assert_array_equal(
        variables["params"]["layer2_0"]["shortcut_conv"]["kernel"],
        state_dict["layer2.0.shortcut.0.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        variables["params"]["linear"]["kernel"], state_dict["linear.weight"].T
    )
    np.testing.assert_array_equal(
        variables["batch_stats"]["layer1_0"]["bn2"]["var"], state_dict["layer1.0.bn2.running_var"]
    )


@pytest.mark.parametrize(
    ("depth", "shortcut", "num_classes"), [(8, "A", 10), (14, "B", 100), (20, "A", 7)]
)
@requires_torch
def test_infer_architecture(depth: int, shortcut: str, num_classes: int) -> None:
    state_dict = torch_state_dict(shortcut, depth, num_classes)
    expected = (depth, shortcut, num_classes)
    assert convert.infer_architecture(state_dict) == expected
    assert convert.infer_architecture(akamaster_layout(state_dict)) == expected


@requires_torch
def test_akamaster_layout_converts_like_the_plain_one() -> None:
    state_dict = torch_state_dict("A")
    assert_trees_equal(
        convert.torch_to_flax(akamaster_layout(state_dict)), convert.torch_to_flax(state_dict)
    )


@requires_torch
def test_mismatches_are_all_named() -> None:
    state_dict = dict(torch_state_dict("B"))
    del state_dict["layer2.0.bn1.running_var"]
    del state_dict["linear.bias"]
    state_dict["layer4.0.conv1.weight"] = torch.zeros(3)
    state_dict["layer1.0.conv1.weight"] = torch.zeros(16, 16, 1, 1)
    with pytest.raises(convert.ConversionError) as info:
        convert.torch_to_flax(state_dict)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    for name in (
        "layer2.0.bn1.running_var",
        "linear.bias",
        "layer4.0.conv1.weight",
        "layer1.0.conv1.weight: expected (16, 16, 3, 3), got (16, 16, 1, 1)",
    ):
        assert name in message
    assert "missing keys (2)" in message and "unexpected keys (1)" in message


@requires_torch
def test_missing_shortcut_bn_is_named() -> None:
    state_dict = {
        k: v for k, v in torch_state_dict("B").items() if not k.startswith("layer3.0.shortcut.1")
    }
    with pytest.raises(convert.ConversionError, match=r"layer3\.0\.shortcut\.1\.running_mean"):
        convert.torch_to_flax(state_dict)


@pytest.mark.parametrize(("have", "ask"), [("A", "B"), ("B", "A")])
@requires_torch
def test_contradictory_shortcut_is_an_error(have: str, ask: str) -> None:
    with pytest.raises(convert.ConversionError, match=f"shortcut='{ask}'"):
        convert.torch_to_flax(torch_state_dict(have), shortcut=ask)
    convert.torch_to_flax(torch_state_dict(have), shortcut=have)  # agreeing is fine


def chenyaofo_layout(state_dict: dict) -> dict:
    """As chenyaofo's files: torchvision's ``downsample`` and ``fc`` names."""
    return {
        k.replace(".shortcut.", ".downsample.").replace("linear.", "fc.", 1): v
        for k, v in state_dict.items()
    }


@requires_torch
def test_chenyaofo_layout_converts_like_the_seed_one() -> None:
    state_dict = torch_state_dict("B", num_classes=100)
    theirs = chenyaofo_layout(state_dict)
    assert "layer2.0.downsample.0.weight" in theirs and "fc.weight" in theirs
    assert convert.infer_architecture(theirs) == (8, "B", 100)
    assert convert.describe_layout(theirs) == "chenyaofo"
    assert_trees_equal(convert.torch_to_flax(theirs), convert.torch_to_flax(state_dict))
    back = convert.flax_to_torch(convert.torch_to_flax(theirs), layout="chenyaofo")
    assert list(back) == list(theirs)


@requires_torch
def test_mixed_layouts_are_refused_naming_the_odd_keys() -> None:
    mixed = chenyaofo_layout(torch_state_dict("B"))
    mixed["layer3.0.shortcut.0.weight"] = mixed.pop("layer3.0.downsample.0.weight")
    with pytest.raises(convert.ConversionError) as info:
        convert.torch_to_flax(mixed)
    message = str(info.value)
    assert "chenyaofo layout" in message
    assert "missing keys (1): layer3.0.downsample.0.weight" in message
    assert "unexpected keys (1): layer3.0.shortcut.0.weight" in message


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights_are_refused_naming_the_tensors(value: float) -> None:
    state_dict = convert.flax_to_torch(random_variables("B"))
    state_dict["layer2.0.conv1.weight"][0, 0, 0, :2] = value
    state_dict["bn1.running_var"][3] = value
    with pytest.raises(convert.ConversionError, match="non-finite") as info:
        convert.torch_to_flax(state_dict)
    kind = "2 NaN" if np.isnan(value) else "0 NaN, 2 inf"
    assert f"layer2.0.conv1.weight ({kind}" in str(info.value)
    assert "bn1.running_var (" in str(info.value)

    variables = random_variables("A")
    variables["params"]["linear"]["bias"][1] = value
    with pytest.raises(convert.ConversionError, match=r"params/linear/bias \("):
        convert.flax_to_torch(variables)


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_safetensors_round_trip_is_exact(tmp_path, shortcut: str) -> None:
    pytest.importorskip("safetensors")
    variables = random_variables(shortcut)
    path = tmp_path / "w.safetensors"
    convert.save_state_dict_file(convert.flax_to_torch(variables), path)
    assert path.read_bytes()[8:9] == b"{"  # u64 header length, then a JSON header
    loaded = convert.load_state_dict_file(path)
    assert sorted(loaded) == sorted(convert.flax_to_torch(variables))  # safetensors sorts keys
    assert_trees_equal(convert.torch_to_flax(loaded), variables)


@requires_torch
def test_safetensors_file_loads_into_torch(tmp_path) -> None:
    from safetensors.torch import load_file

    variables = random_variables("B")
    path = tmp_path / "w.safetensors"
    convert.save_state_dict_file(convert.flax_to_torch(variables), path)
    torch_resnet(8, "B").load_state_dict(load_file(path), strict=True)


def test_unknown_output_format_is_refused(tmp_path) -> None:
    with pytest.raises(convert.ConversionError, match=r"unknown weights format '\.npz'"):
        convert.save_state_dict_file(
            convert.flax_to_torch(random_variables("A")), tmp_path / "w.npz"
        )
    assert list(tmp_path.iterdir()) == []


def test_not_a_resnet_state_dict() -> None:
    with pytest.raises(convert.ConversionError, match="not a CIFAR ResNet"):
        convert.torch_to_flax({"fc.weight": np.zeros((10, 512), np.float32)})


def test_flax_to_torch_is_strict() -> None:
    variables = random_variables("B")
    del variables["batch_stats"]["layer2_0"]["shortcut_bn"]
    with pytest.raises(convert.ConversionError, match="batch_stats/layer2_0/shortcut_bn/mean"):
        convert.flax_to_torch(variables)


# --------------------------------------------------------------------------
# Checkpoint files.


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": akamaster_layout(sd), "best_prec1": 91.73},  # akamaster
        lambda sd: {"net": sd, "acc": 95.1, "epoch": 199},  # the seed's ckpt.pth
        lambda sd: sd,  # bare state dict
    ],
    ids=["akamaster", "seed", "bare"],
)
@requires_torch
def test_load_torch_checkpoint_formats(tmp_path, wrap) -> None:
    state_dict = torch_state_dict("A")
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(state_dict), path)
    loaded = convert.load_torch_checkpoint(path)
    assert all(isinstance(v, torch.Tensor) for v in loaded.values())
    assert_trees_equal(convert.torch_to_flax(loaded), convert.torch_to_flax(state_dict))


class Payload:
    """Would create ``marker`` when unpickled, if unpickling were allowed."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@requires_torch
def test_arbitrary_objects_are_refused_not_executed(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": torch_state_dict("A"), "payload": Payload(str(marker))}, path)
    with pytest.raises(convert.ConversionError, match="refusing to load"):
        convert.load_torch_checkpoint(path)
    assert not marker.exists()


@requires_torch
def test_pickled_module_is_refused(tmp_path) -> None:
    path = tmp_path / "model.pth"
    torch.save(torch_resnet(8, "B"), path)  # option A holds a lambda: unpicklable
    with pytest.raises(convert.ConversionError, match=r"model\.state_dict\(\)"):
        convert.load_torch_checkpoint(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello", "is not a PyTorch checkpoint"),
        (b"\x00" + np.random.default_rng(0).bytes(4096), "is not a PyTorch checkpoint"),
        (b"\x80\x02" + np.random.default_rng(1).bytes(4096), "can't be read as a PyTorch"),
        (b"", "is not a PyTorch checkpoint"),
    ],
    ids=["text", "random", "random_pickle_header", "empty"],
)
@requires_torch
def test_not_a_torch_file(tmp_path, content: bytes, message: str) -> None:
    path = tmp_path / "notes.pth"
    path.write_bytes(content)
    with pytest.raises(convert.ConversionError, match=message) as info:
        convert.load_torch_checkpoint(path)
    assert "Python objects" not in str(info.value)  # it is garbage, not a pickled object


@requires_torch
def test_truncated_checkpoint_is_reported_as_corrupt(tmp_path) -> None:
    path = tmp_path / "cut.pth"
    torch.save(torch_state_dict("A"), path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(convert.ConversionError, match="corrupt or truncated"):
        convert.load_torch_checkpoint(path)


@requires_torch
def test_missing_file_and_directory_are_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        convert.load_torch_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "x.pth").mkdir()
    with pytest.raises(convert.ConversionError, match="is a directory"):
        convert.load_torch_checkpoint(tmp_path / "x.pth")


@requires_torch
def test_no_state_dict_lists_top_level_keys(tmp_path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"weights": [torch.zeros(2)], "epoch": 3}, path)
    with pytest.raises(convert.ConversionError, match="top-level keys: 'weights', 'epoch'"):
        convert.load_torch_checkpoint(path)


def test_missing_torch_gives_install_hint(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(convert.ConversionError, match="pip install torch"):
        convert.load_torch_checkpoint(tmp_path / "x.pth")


# --------------------------------------------------------------------------
# Command line.


@requires_torch
def test_cli_writes_a_checkpoint_load_model_reads(tmp_path) -> None:
    pytest.importorskip("jresnet.input_pipeline")
    from jresnet import checkpoint

    state_dict = torch_state_dict("A")
    source = tmp_path / "resnet8.th"
    torch.save({"state_dict": akamaster_layout(state_dict), "best_prec1": 50.0}, source)
    out = tmp_path / "converted"
    result = subprocess.run(
        [sys.executable, "-m", "jresnet.convert", str(source), str(out)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "ResNet-8" in result.stdout and "75,290 parameters" in result.stdout

    model, variables = checkpoint.load_model(out)
    assert_trees_equal(jax.tree.map(np.asarray, variables), convert.torch_to_flax(state_dict))
    assert (model.blocks_per_stage, model.shortcut, model.num_classes) == (1, "A", 10)
    config = checkpoint.load_config(out)
    assert config.model == "resnet8" and config.dataset == "cifar10"
    assert config.normalization == "imagenet"  # akamaster's layout
    assert config.init_from == str(source)

    # A second conversion into the same directory is refused, leaving it intact.
    assert convert.main([str(source), str(out)]) == 2
    assert checkpoint.load_config(out).model == "resnet8"


@requires_torch
def test_cli_seed_layout_defaults_and_overrides(tmp_path, capsys) -> None:
    pytest.importorskip("jresnet.input_pipeline")
    from jresnet import checkpoint

    source = tmp_path / "ckpt.pth"
    torch.save({"net": torch_state_dict("B", num_classes=100), "acc": 70.0}, source)
    assert convert.main([str(source), str(tmp_path / "a")]) == 0
    config = checkpoint.load_config(tmp_path / "a")
    assert (config.shortcut, config.dataset, config.normalization) == ("B", "cifar100", "cifar")

    assert convert.main([str(source), str(tmp_path / "b"), "--normalization", "imagenet"]) == 0
    assert checkpoint.load_config(tmp_path / "b").normalization == "imagenet"

    capsys.readouterr()
    assert convert.main([str(source), str(tmp_path / "c"), "--dataset", "cifar10"]) == 2
    assert "100" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("problem", ["not_torch", "contradiction", "missing_file"])
@requires_torch
def test_cli_errors_exit_2_and_write_nothing(tmp_path, capsys, problem: str) -> None:
    source = tmp_path / "in.pth"
    args = [str(source), str(tmp_path / "out")]
    if problem == "not_torch":
        source.write_bytes(b"\x00garbage")
    elif problem == "contradiction":
        torch.save(torch_state_dict("A"), source)
        args += ["--shortcut", "B"]
    assert convert.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@requires_torch
def test_cli_workdir_to_file_gives_the_same_logits_in_torch(tmp_path, suffix: str) -> None:
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    from jresnet import checkpoint

    source = tmp_path / "ckpt.pth"
    torch.save({"net": torch_state_dict("B")}, source)
    workdir = tmp_path / "work"
    assert convert.main([str(source), str(workdir)]) == 0
    out = tmp_path / f"exported{suffix}"
    assert convert.main([str(workdir), str(out)]) == 0
    state_dict = load_file(out) if suffix == ".safetensors" else torch.load(out, weights_only=True)

    reference = torch_resnet(8, "B")
    reference.load_state_dict(state_dict, strict=True)
    reference.eval()
    model, variables = checkpoint.load_model(workdir)
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    ours = np.asarray(model.apply(variables, x, train=False))
    with torch.no_grad():
        theirs = reference(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)

    # An existing output is never overwritten.
    before = out.read_bytes()
    assert convert.main([str(workdir), str(out)]) == 2
    assert out.read_bytes() == before

    # And back: the exported file converts into the same variables.
    assert convert.main([str(out), str(tmp_path / "again")]) == 0
    _, again = checkpoint.load_model(tmp_path / "again")
    assert_trees_equal(again, variables)
    assert checkpoint.load_config(tmp_path / "again").normalization == "cifar"


def test_cli_directory_source_needs_a_file_output(tmp_path, capsys) -> None:
    (tmp_path / "x.pth").mkdir()
    assert convert.main([str(tmp_path / "x.pth"), str(tmp_path / "out")]) == 2
    assert "is a directory, not a weights file" in capsys.readouterr().err


@requires_torch
def test_cli_refuses_nan_weights(tmp_path, capsys) -> None:
    state_dict = torch_state_dict("B")
    state_dict["layer1.0.bn2.weight"][0] = float("nan")
    source = tmp_path / "nan.pth"
    torch.save(state_dict, source)
    assert convert.main([str(source), str(tmp_path / "out")]) == 2
    assert "layer1.0.bn2.weight (1 NaN" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_bugs_keep_their_traceback(tmp_path, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(convert, "convert_file", broken)
    (tmp_path / "in.pth").write_bytes(b"x")
    with pytest.raises(RuntimeError, match="a bug"):
        convert.main([str(tmp_path / "in.pth"), str(tmp_path / "out")])


def test_the_mapping_imports_neither_torch_nor_orbax() -> None:
    code = (
        "import sys, jresnet.torch_layouts, jresnet.convert; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'orbax', 'safetensors'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    )
    assert result.stdout.strip() == "[]"


@requires_torch
def test_init_from_a_nan_checkpoint_is_refused(tmp_path) -> None:
    from jresnet import weights
    from jresnet.configs import default

    state_dict = torch_state_dict("B")
    state_dict["linear.bias"][2] = float("inf")
    torch.save({"net": state_dict}, tmp_path / "nan.pth")
    config = default.get_config()
    config.model = "resnet8"
    with pytest.raises(convert.ConversionError, match=r"linear\.bias \(0 NaN, 1 inf"):
        weights.load(str(tmp_path / "nan.pth"), config)


@requires_torch
def test_safetensors_and_pth_outputs_get_the_same_mode_644_less_umask(tmp_path) -> None:
    pytest.importorskip("safetensors")
    umask = os.umask(0)
    os.umask(umask)
    state_dict = convert.flax_to_torch(random_variables("A"))
    for name in ("w.safetensors", "w.pth"):
        convert.save_state_dict_file(state_dict, tmp_path / name)
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644 & ~umask, name
    assert sorted(os.listdir(tmp_path)) == ["w.pth", "w.safetensors"]
