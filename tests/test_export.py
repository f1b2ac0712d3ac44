"""jresnet.export: ONNX (run by onnxruntime) and jax.export artifacts give jresnet's logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from jresnet import checkpoint, datasets, export, torch_layouts, weight_files
from jresnet.configs import default
from jresnet.errors import ConfigError
from tests.conftest import model_with_random_statistics

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("jax2onnx")


def run_onnx(proto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": x})[0]


@pytest.mark.parametrize("shortcut", ["A", "B"])
@pytest.mark.parametrize("input_layout", ["NHWC", "NCHW"])
def test_onnxruntime_logits_equal_jresnet(shortcut: str, input_layout: str) -> None:
    model, variables = model_with_random_statistics(shortcut)
    proto = export.to_onnx(model, variables, input_layout)
    onnx.checker.check_model(proto)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"  # dynamic batch
    assert [d.dim_value for d in dims[1:]] == (
        [3, 32, 32] if input_layout == "NCHW" else [32, 32, 3]
    )

    rng = np.random.default_rng(1)
    for batch in (1, 5):
        x = rng.normal(size=(batch, 32, 32, 3)).astype(np.float32)
        ours = np.asarray(model.apply(variables, x, train=False))
        onnx_input = x.transpose(0, 3, 1, 2).copy() if input_layout == "NCHW" else x
        np.testing.assert_allclose(run_onnx(proto, onnx_input), ours, atol=1e-4, rtol=0)


def test_stablehlo_artifact_equals_jresnet() -> None:
    model, variables = model_with_random_statistics("B", num_classes=100)
    exported = jax.export.deserialize(bytearray(export.to_stablehlo(model, variables)))
    assert set(exported.platforms) == {"cpu", "cuda"}
    x = np.random.default_rng(2).normal(size=(3, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(exported.call(x)), np.asarray(model.apply(variables, x, train=False)), atol=1e-5
    )


def workdir_with(tmp_path, model, variables):
    config = default.get_config()
    config.model, config.shortcut, config.normalization = "resnet8", model.shortcut, "cifar"
    checkpoint.save_pretrained(tmp_path / "work", variables, config)
    return tmp_path / "work"


def test_cli_onnx_records_normalization_and_labels(tmp_path, capsys) -> None:
    model, variables = model_with_random_statistics("A")
    workdir = workdir_with(tmp_path, model, variables)
    out = tmp_path / "model.onnx"
    assert export.main([str(workdir), str(out), "--input_layout", "NCHW"]) == 0
    assert "[batch, 3, 32, 32] (NCHW)" in capsys.readouterr().out
    proto = onnx.load(out)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["normalization"] == "cifar"
    assert json.loads(meta["mean"]) == [0.4914, 0.4822, 0.4465]
    assert json.loads(meta["label_names"]) == list(datasets.get("cifar10").label_names)
    x = np.random.default_rng(3).normal(size=(2, 3, 32, 32)).astype(np.float32)
    ours = np.asarray(model.apply(variables, x.transpose(0, 2, 3, 1), train=False))
    np.testing.assert_allclose(run_onnx(proto, x), ours, atol=1e-4, rtol=0)

    before = out.read_bytes()  # an existing file is never overwritten
    assert export.main([str(workdir), str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_cli_stablehlo_runs_without_jresnet(tmp_path) -> None:
    model, variables = model_with_random_statistics("B")
    workdir = workdir_with(tmp_path, model, variables)
    out = tmp_path / "model.jax.bin"
    assert export.main([str(workdir), str(out), "--platforms", "cpu"]) == 0
    x = np.random.default_rng(4).normal(size=(6, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(
        """
        import sys
        sys.modules["jresnet"] = None  # importing jresnet would fail
        import jax, numpy as np
        exported = jax.export.deserialize(bytearray(open("model.jax.bin", "rb").read()))
        np.save("logits.npy", exported.call(np.load("x.npy")))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=env)
    np.testing.assert_allclose(
        np.load(tmp_path / "logits.npy"),
        np.asarray(model.apply(variables, x, train=False)),
        atol=1e-5,
    )


def test_cli_exports_a_seed_layout_weights_file(tmp_path) -> None:
    """A .safetensors file in the seed's PyTorch names (what `jresnet.convert` writes and
    results/seed-recipe commits) exports without a work directory around it."""
    model, variables = model_with_random_statistics("B")
    weights = tmp_path / "resnet8.safetensors"
    weight_files.save_state_dict_file(torch_layouts.flax_to_torch(variables), weights)
    out = tmp_path / "model.jax.bin"
    assert export.main([str(weights), str(out), "--platforms", "cpu"]) == 0
    exported = jax.export.deserialize(bytearray(out.read_bytes()))
    x = np.random.default_rng(5).normal(size=(3, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(exported.call(x)),
        np.asarray(model.apply(variables, x, train=False)),
        atol=1e-5,
    )


def test_missing_exporter_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "jax2onnx", None)
    model, variables = model_with_random_statistics("A")
    with pytest.raises(ConfigError, match=r"pip install onnx jax2onnx .*'\.\[export\]'"):
        export.to_onnx(model, variables)


def test_an_opset_below_18_is_refused_naming_the_minimum(tmp_path, capsys) -> None:
    model, variables = model_with_random_statistics("A")
    with pytest.raises(ConfigError, match=r"--opset 17.*at least 18"):
        export.to_onnx(model, variables, opset=17)
    newest = onnx.defs.onnx_opset_version()
    with pytest.raises(ConfigError, match=rf"at most {newest}"):
        export.to_onnx(model, variables, opset=newest + 1)
    workdir = workdir_with(tmp_path, model, variables)
    for opset in ("13", "1"):
        assert export.main([str(workdir), str(tmp_path / "m.onnx"), "--opset", opset]) == 2
        assert "at least 18" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_the_lowest_accepted_opset_passes_the_checker_and_runs() -> None:
    model, variables = model_with_random_statistics("A")
    proto = export.to_onnx(model, variables, opset=export.MIN_OPSET)
    onnx.checker.check_model(proto)
    x = np.random.default_rng(5).normal(size=(2, 32, 32, 3)).astype(np.float32)
    ours = np.asarray(model.apply(variables, x, train=False))
    np.testing.assert_allclose(run_onnx(proto, x), ours, atol=1e-4, rtol=0)


def test_an_unknown_platform_is_refused(tmp_path, capsys) -> None:
    model, variables = model_with_random_statistics("B")
    with pytest.raises(ConfigError, match=r"'foo'.*cpu, cuda, rocm, tpu"):
        export.to_stablehlo(model, variables, platforms=["cpu", "foo"])
    workdir = workdir_with(tmp_path, model, variables)
    assert export.main([str(workdir), str(tmp_path / "m.jax.bin"), "--platforms", "foo"]) == 2
    assert "'foo'" in capsys.readouterr().err
    assert export.main([str(workdir), str(tmp_path / "m.jax.bin"), "--platforms", ","]) == 2
    assert "at least one" in capsys.readouterr().err
    assert not (tmp_path / "m.jax.bin").exists()


def test_an_output_in_a_missing_directory_is_one_line(tmp_path) -> None:
    model, variables = model_with_random_statistics("B")
    workdir = workdir_with(tmp_path, model, variables)
    for name in ("x.onnx", "x.jax.bin"):
        result = subprocess.run(
            [sys.executable, "-m", "jresnet.export", str(workdir), str(tmp_path / "nodir" / name)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 2, result.stderr
        assert "does not exist; create it" in result.stderr
        assert "Traceback" not in result.stderr


def test_planted_symlinks_at_the_output_are_never_written_through(tmp_path, capsys) -> None:
    model, variables = model_with_random_statistics("B")
    workdir = workdir_with(tmp_path, model, variables)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    out = tmp_path / "m.jax.bin"
    (tmp_path / "m.jax.bin.partial").symlink_to(victim)  # the old temporary name
    assert export.main([str(workdir), str(out), "--platforms", "cpu"]) == 0
    assert victim.read_text() == "precious"
    assert jax.export.deserialize(bytearray(out.read_bytes())).platforms == ("cpu",)
    dangling = tmp_path / "d.jax.bin"
    dangling.symlink_to(tmp_path / "created-elsewhere")
    assert export.main([str(workdir), str(dangling), "--platforms", "cpu"]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert not (tmp_path / "created-elsewhere").exists()
