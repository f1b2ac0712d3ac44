"""jresnet.convert: PyTorch <-> Flax conversion, checkpoint files, and the command line."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jresnet import convert, models, torch_layouts
from jresnet.errors import WeightsError
from tests.state_dicts import (
    akamaster_layout,
    assert_trees_equal,
    random_variables,
    requires_torch,
    torch,
    torch_state_dict,
)

if torch is not None:
    from jresnet.testing.torch_reference import torch_resnet

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------
# Conversion.


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_flax_torch_flax_round_trip_is_exact(shortcut: str) -> None:
    variables = random_variables(shortcut)
    state_dict = torch_layouts.flax_to_torch(variables)
    back = torch_layouts.torch_to_flax(state_dict)
    assert_trees_equal(back, variables)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(back))


@pytest.mark.parametrize("shortcut", ["A", "B"])
@requires_torch
def test_torch_flax_torch_round_trip_is_exact(shortcut: str) -> None:
    state_dict = torch_state_dict(shortcut)
    back = torch_layouts.flax_to_torch(torch_layouts.torch_to_flax(state_dict))
    assert list(back) == list(state_dict)  # same keys, same (registration) order
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            assert back[key].dtype == np.int64 and back[key].shape == ()
        else:
            np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)


@pytest.mark.parametrize("shortcut", ["A", "B"])
@requires_torch
def test_torch_to_flax_matches_model_init_structure(shortcut: str) -> None:
    variables = torch_layouts.torch_to_flax(torch_state_dict(shortcut, num_classes=100))
    model = models.create_model("resnet8", shortcut=shortcut, num_classes=100)
    expected = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert jax.tree.structure(variables) == jax.tree.structure(expected)
    assert jax.tree.map(np.shape, variables) == jax.tree.map(np.shape, expected)


@pytest.mark.parametrize("shortcut", ["A", "B"])
@requires_torch
def test_reference_model_loads_flax_to_torch_strictly(shortcut: str) -> None:
    state_dict = torch_layouts.flax_to_torch(random_variables(shortcut), as_tensors=True)
    reference = torch_resnet(8, shortcut)
    reference.load_state_dict(state_dict, strict=True)
    assert ("layer2.0.shortcut.0.weight" in state_dict) == (shortcut == "B")


@requires_torch
def test_torch_to_flax_accepts_numpy_and_drops_num_batches_tracked() -> None:
    state_dict = {k: v.numpy() for k, v in torch_state_dict("B").items()}
    variables = torch_layouts.torch_to_flax(state_dict)
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
    assert torch_layouts.infer_architecture(state_dict) == expected
    assert torch_layouts.infer_architecture(akamaster_layout(state_dict)) == expected


@requires_torch
def test_akamaster_layout_converts_like_the_plain_one() -> None:
    state_dict = torch_state_dict("A")
    assert_trees_equal(
        torch_layouts.torch_to_flax(akamaster_layout(state_dict)),
        torch_layouts.torch_to_flax(state_dict),
    )


@requires_torch
def test_mismatches_are_all_named() -> None:
    state_dict = dict(torch_state_dict("B"))
    del state_dict["layer2.0.bn1.running_var"]
    del state_dict["linear.bias"]
    state_dict["layer4.0.conv1.weight"] = torch.zeros(3)
    state_dict["layer1.0.conv1.weight"] = torch.zeros(16, 16, 1, 1)
    with pytest.raises(WeightsError) as info:
        torch_layouts.torch_to_flax(state_dict)
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
    with pytest.raises(WeightsError, match=r"layer3\.0\.shortcut\.1\.running_mean"):
        torch_layouts.torch_to_flax(state_dict)


@pytest.mark.parametrize(("have", "ask"), [("A", "B"), ("B", "A")])
@requires_torch
def test_contradictory_shortcut_is_an_error(have: str, ask: str) -> None:
    with pytest.raises(WeightsError, match=f"shortcut='{ask}'"):
        torch_layouts.torch_to_flax(torch_state_dict(have), shortcut=ask)
    torch_layouts.torch_to_flax(torch_state_dict(have), shortcut=have)  # agreeing is fine


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
    assert torch_layouts.infer_architecture(theirs) == (8, "B", 100)
    assert torch_layouts.describe_layout(theirs) == "chenyaofo"
    assert_trees_equal(torch_layouts.torch_to_flax(theirs), torch_layouts.torch_to_flax(state_dict))
    back = torch_layouts.flax_to_torch(torch_layouts.torch_to_flax(theirs), layout="chenyaofo")
    assert list(back) == list(theirs)


@requires_torch
def test_mixed_layouts_are_refused_naming_the_odd_keys() -> None:
    mixed = chenyaofo_layout(torch_state_dict("B"))
    mixed["layer3.0.shortcut.0.weight"] = mixed.pop("layer3.0.downsample.0.weight")
    with pytest.raises(WeightsError) as info:
        torch_layouts.torch_to_flax(mixed)
    message = str(info.value)
    assert "chenyaofo layout" in message
    assert "missing keys (1): layer3.0.downsample.0.weight" in message
    assert "unexpected keys (1): layer3.0.shortcut.0.weight" in message


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights_are_refused_naming_the_tensors(value: float) -> None:
    state_dict = torch_layouts.flax_to_torch(random_variables("B"))
    state_dict["layer2.0.conv1.weight"][0, 0, 0, :2] = value
    state_dict["bn1.running_var"][3] = value
    with pytest.raises(WeightsError, match="non-finite") as info:
        torch_layouts.torch_to_flax(state_dict)
    kind = "2 NaN" if np.isnan(value) else "0 NaN, 2 inf"
    assert f"layer2.0.conv1.weight ({kind}" in str(info.value)
    assert "bn1.running_var (" in str(info.value)

    variables = random_variables("A")
    variables["params"]["linear"]["bias"][1] = value
    with pytest.raises(WeightsError, match=r"params/linear/bias \("):
        torch_layouts.flax_to_torch(variables)


def test_not_a_resnet_state_dict() -> None:
    with pytest.raises(WeightsError, match="not a CIFAR ResNet"):
        torch_layouts.torch_to_flax({"fc.weight": np.zeros((10, 512), np.float32)})


def test_flax_to_torch_is_strict() -> None:
    variables = random_variables("B")
    del variables["batch_stats"]["layer2_0"]["shortcut_bn"]
    with pytest.raises(WeightsError, match="batch_stats/layer2_0/shortcut_bn/mean"):
        torch_layouts.flax_to_torch(variables)


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
    assert_trees_equal(jax.tree.map(np.asarray, variables), torch_layouts.torch_to_flax(state_dict))
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

    monkeypatch.setattr(convert, "to_workdir", broken)
    (tmp_path / "in.pth").write_bytes(b"x")
    with pytest.raises(RuntimeError, match="a bug"):
        convert.main([str(tmp_path / "in.pth"), str(tmp_path / "out")])


def test_the_mapping_and_file_readers_import_neither_torch_nor_orbax() -> None:
    code = (
        "import sys, jresnet.torch_layouts, jresnet.weight_files, jresnet.pretrained; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'orbax', 'safetensors'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    )
    assert result.stdout.strip() == "[]"


@requires_torch
def test_init_from_a_nan_checkpoint_is_refused(tmp_path) -> None:
    from jresnet import weights

    state_dict = torch_state_dict("B")
    state_dict["linear.bias"][2] = float("inf")
    torch.save({"net": state_dict}, tmp_path / "nan.pth")
    with pytest.raises(WeightsError, match=r"linear\.bias \(0 NaN, 1 inf"):
        weights.load(str(tmp_path / "nan.pth"))


# --------------------------------------------------------------------------
# Outputs (issue 20: M6, M7, L3, L4).


def _seed_file(tmp_path) -> str:
    path = tmp_path / "ckpt.pth"
    torch.save({"net": torch_state_dict("B")}, path)
    return str(path)


@requires_torch
def test_a_conversion_into_a_directory_in_use_is_refused_m6(tmp_path, capsys) -> None:
    source, out = _seed_file(tmp_path), tmp_path / "out"
    out.mkdir()
    hold = "import sys, time\nfrom jresnet import workdir\nwith workdir.locked(sys.argv[1]):\n"
    hold += "    print('locked', flush=True); time.sleep(60)\n"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert convert.main([source, str(out)]) == 2
    finally:
        holder.kill()
        holder.wait()
    assert f"is in use by another run (pid {holder.pid}" in capsys.readouterr().err
    assert not (out / "checkpoints").exists()
    # Once the other conversion is done, the directory is taken: one wins, the other says so.
    assert convert.main([source, str(out)]) == 0
    assert convert.main([source, str(out)]) == 2
    assert "already holds checkpoints (0)" in capsys.readouterr().err


@requires_torch
def test_outputs_that_cant_be_written_are_one_line_errors_m7(tmp_path, capsys) -> None:
    source = _seed_file(tmp_path)
    (tmp_path / "existing.txt").write_text("keep me")
    for out, message in [
        (tmp_path / "nodir" / "x.pth", "the directory"),
        (tmp_path / "nodir" / "x.safetensors", "does not exist"),
        (tmp_path / "existing.txt", "exists and is not a directory"),
    ]:
        assert convert.main([source, str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert (tmp_path / "existing.txt").read_text() == "keep me"
    assert not (tmp_path / "nodir").exists()


@requires_torch
def test_a_checkpoints_file_is_named_l3(tmp_path, capsys) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "checkpoints").write_text("not a directory")
    assert convert.main([_seed_file(tmp_path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "checkpoints exists and is not a directory" in err and "intact" not in err


@requires_torch
def test_an_unfinished_save_is_explained_then_replaced_l4(tmp_path, capsys) -> None:
    from PIL import Image

    from jresnet import checkpoint, predict

    out = tmp_path / "out"
    (out / "checkpoints" / "0.orbax-checkpoint-tmp" / "state").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    assert predict.main([str(out), str(tmp_path / "x.png")]) == 2
    assert "only 0.orbax-checkpoint-tmp, left by a save that was killed" in (
        capsys.readouterr().err
    )
    assert convert.main([_seed_file(tmp_path), str(out)]) == 0  # nobody holds the lock
    assert os.listdir(out / "checkpoints") == ["0"]
    assert checkpoint.load_config(out).model == "resnet8"
