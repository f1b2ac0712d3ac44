"""jresnet.predict: probabilities of uint8 images, and the command line's top-5 output."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from jresnet import checkpoint, datasets, models, predict, torch_layouts, weight_files
from jresnet.configs import default
from jresnet.datasets import NORMALIZATIONS
from jresnet.errors import ImageError
from tests.conftest import model_with_random_statistics

try:
    import torch

    from jresnet.testing.torch_reference import randomize_batchnorm, torch_resnet
except ImportError:
    torch = None

requires_torch = pytest.mark.skipif(torch is None, reason="needs torch (pip install torch)")


def workdir_with(tmp_path, variables, dataset: str = "cifar10", normalization: str = "cifar"):
    config = default.get_config()
    config.model, config.shortcut = "resnet8", "B"
    config.dataset, config.normalization = dataset, normalization
    checkpoint.save_pretrained(tmp_path / "work", variables, config)
    return tmp_path / "work"


@pytest.mark.parametrize("normalization", ["cifar", "imagenet"])
@requires_torch
def test_probabilities_equal_torch_softmax(normalization: str) -> None:
    from jresnet import torch_layouts

    torch.manual_seed(0)
    reference = torch_resnet(8, "B")
    randomize_batchnorm(reference)
    reference.eval()
    variables = torch_layouts.torch_to_flax(reference.state_dict())
    model = models.create_model("resnet8")
    images = np.random.default_rng(0).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)

    ours = predict.predict(model, variables, images, normalization, batch_size=3)  # 3 batches

    mean, std = (np.asarray(v, np.float32) for v in NORMALIZATIONS[normalization])
    nchw = ((images / np.float32(255) - mean) / std).astype(np.float32).transpose(0, 3, 1, 2)
    with torch.no_grad():
        theirs = torch.softmax(reference(torch.from_numpy(nchw.copy())), dim=-1).numpy()
    assert ours.shape == (7, 10) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours.sum(axis=1), 1.0, atol=1e-5)


def test_normalization_defaults_to_the_model_s() -> None:
    variables = model_with_random_statistics("A")[1]
    model = models.ResNet(blocks_per_stage=1, shortcut="A", normalization="imagenet")
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        predict.predict(model, variables, images),
        predict.predict(
            models.create_model("resnet8", shortcut="A"), variables, images, "imagenet"
        ),
    )
    assert not np.allclose(
        predict.predict(model, variables, images, "cifar"),
        predict.predict(model, variables, images),
    )


@pytest.mark.parametrize(
    ("images", "normalization", "message"),
    [
        (np.zeros((2, 32, 32, 3), np.float32), "cifar", "expected uint8"),
        (np.zeros((32, 32, 3), np.uint8), "cifar", r"\[N, 32, 32, 3\]"),
        (np.zeros((1, 3, 32, 32), np.uint8), "cifar", r"got \(1, 3, 32, 32\)"),
        (np.zeros((1, 32, 32, 3), np.uint8), None, "pass normalization="),
        (np.zeros((1, 32, 32, 3), np.uint8), "nope", "unknown normalization"),
    ],
)
def test_bad_inputs_are_explained(images, normalization, message: str) -> None:
    from jresnet.errors import JresnetError

    with pytest.raises(JresnetError, match=message):
        predict.predict(
            models.create_model("resnet8"), model_with_random_statistics()[1], images, normalization
        )


def test_cli_prints_top5_with_class_names_and_resize_notes(tmp_path, capsys) -> None:
    variables = model_with_random_statistics()[1]
    workdir = workdir_with(tmp_path, variables)
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(small).save(tmp_path / "small.png")
    Image.fromarray(rng.integers(0, 256, (48, 64), dtype=np.uint8), "L").save(tmp_path / "big.png")

    assert predict.main([str(workdir), str(tmp_path / "small.png"), str(tmp_path / "big.png")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    names = datasets.get("cifar10").label_names
    entries = re.findall(r"(\w+) ([\d.]+)%", lines[0].split(": ", 1)[1])
    assert len(entries) == 5 and all(name in names for name, _ in entries)
    percents = [float(p) for _, p in entries]
    assert percents == sorted(percents, reverse=True)
    expected = predict.predict(models.create_model("resnet8"), variables, small[None], "cifar")[0]
    assert entries[0][0] == names[int(expected.argmax())]
    assert "(" not in lines[0]  # 32x32 RGB: nothing changed
    assert "converted from L to RGB" in lines[1]
    assert "center-cropped to 48x48, resized from 64x48 to 32x32" in lines[1]


def test_cli_reads_a_seed_layout_weights_file_as_its_work_directory(tmp_path, capsys) -> None:
    """A .safetensors file in the seed's PyTorch names (what `jresnet.convert` writes and
    results/seed-recipe commits) predicts what the work directory of the same weights does."""
    variables = model_with_random_statistics()[1]
    workdir = workdir_with(tmp_path, variables)
    weights = tmp_path / "resnet8.safetensors"
    weight_files.save_state_dict_file(torch_layouts.flax_to_torch(variables), weights)
    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
        image
    )
    outputs = []
    for source in (workdir, weights):
        assert predict.main([str(source), str(image), "--top", "10"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert len(re.findall(r"\w+ [\d.]+%", outputs[1])) == 10


def test_cli_uses_cifar100_names(tmp_path, capsys) -> None:
    workdir = workdir_with(
        tmp_path, model_with_random_statistics(num_classes=100)[1], "cifar100", "cifar100"
    )
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    assert predict.main([str(workdir), str(tmp_path / "red.png"), "--top", "3"]) == 0
    entries = re.findall(r"(\w+) [\d.]+%", capsys.readouterr().out)
    assert len(entries) == 3
    assert all(name in datasets.get("cifar100").label_names for name in entries)


def test_cli_errors_exit_2(tmp_path, capsys) -> None:
    workdir = workdir_with(tmp_path, model_with_random_statistics()[1])
    (tmp_path / "notes.png").write_text("not an image")
    assert predict.main([str(workdir), str(tmp_path / "notes.png")]) == 2
    assert "can't be read as an image" in capsys.readouterr().err
    assert predict.main([str(workdir), str(tmp_path / "missing.png")]) == 2
    assert "no such image file" in capsys.readouterr().err
    Image.new("RGB", (32, 32)).save(tmp_path / "ok.png")
    assert predict.main([str(tmp_path / "nowhere"), str(tmp_path / "ok.png")]) == 2
    assert "neither a file, a work directory nor a published weights name" in (
        capsys.readouterr().err
    )


def _gray(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (32, 32), dtype=np.uint8)


def test_16_bit_int_and_float_images_read_like_their_8_bit_copy(tmp_path) -> None:
    gray = _gray()
    Image.fromarray(gray, "L").save(tmp_path / "8.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "16.png")  # mode I;16
    Image.fromarray(gray.astype(np.int32) * 257).save(tmp_path / "i16.tiff")  # mode I
    Image.fromarray(gray.astype(np.int32)).save(tmp_path / "i8.tiff")  # mode I, 8-bit values
    Image.fromarray(gray.astype(np.float32) * 257).save(tmp_path / "f16.tiff")  # mode F
    Image.fromarray(gray.astype(np.float32) / 255).save(tmp_path / "f1.tiff")  # F in [0, 1]
    expected, _ = predict.read_image(str(tmp_path / "8.png"))
    assert Image.open(tmp_path / "16.png").mode == "I;16"
    for name in ("16.png", "i16.tiff", "i8.tiff", "f16.tiff", "f1.tiff"):
        image, notes = predict.read_image(str(tmp_path / name))
        np.testing.assert_array_equal(image, expected, err_msg=name)
        assert any("to RGB" in note for note in notes), notes


def test_a_16_bit_copy_predicts_what_the_8_bit_image_predicts(tmp_path, capsys) -> None:
    workdir = workdir_with(tmp_path, model_with_random_statistics()[1])
    gray = _gray(1)
    Image.fromarray(gray, "L").save(tmp_path / "8.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "16.png")
    assert predict.main([str(workdir), str(tmp_path / "8.png"), str(tmp_path / "16.png")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    top = [line.split(": ", 1)[1].split(" (")[0] for line in lines]
    assert top[0] == top[1]


def test_values_beyond_16_bits_are_an_image_error(tmp_path) -> None:
    Image.fromarray(np.full((32, 32), 70000, np.int32)).save(tmp_path / "big.tiff")
    with pytest.raises(ImageError, match=r"0\.\.65535"):
        predict.read_image(str(tmp_path / "big.tiff"))


def test_exif_orientation_is_applied(tmp_path) -> None:
    upright = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 3  # Orientation: stored rotated by 180 degrees
    Image.fromarray(upright[::-1, ::-1].copy()).save(tmp_path / "rotated.png", exif=exif)
    image, notes = predict.read_image(str(tmp_path / "rotated.png"))
    np.testing.assert_array_equal(image, upright)
    assert any("EXIF orientation" in note for note in notes), notes


def _huge_png(path, side: int) -> None:
    """A valid 1-bit grayscale PNG of ``side`` x ``side`` black pixels (a few hundred KB)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + (side + 7) // 8)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


_READ_AND_MEASURE = """
import resource, sys
from jresnet import predict
from jresnet.errors import ImageError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    predict.read_image(sys.argv[1])
except ImageError as e:
    print(e)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_a_decompression_bomb_is_one_image_error_in_bounded_memory(tmp_path, capsys) -> None:
    import subprocess
    import sys

    _huge_png(tmp_path / "bomb.png", 30000)
    assert (tmp_path / "bomb.png").stat().st_size < 2_000_000
    result = subprocess.run(
        [sys.executable, "-c", _READ_AND_MEASURE, str(tmp_path / "bomb.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    message, grown_mb = result.stdout.strip().splitlines()
    assert "900000000 pixels" in message and "at most" in message
    assert int(grown_mb) < 100  # decoding it would take 900 MB
    workdir = workdir_with(tmp_path, model_with_random_statistics()[1])
    assert predict.main([str(workdir), str(tmp_path / "bomb.png")]) == 2
    assert "900000000 pixels" in capsys.readouterr().err
    _huge_png(tmp_path / "large.png", 9000)  # above predict's limit, below PIL's
    with pytest.raises(ImageError, match="is 9000x9000 pixels; predict reads images of at most"):
        predict.read_image(str(tmp_path / "large.png"))


@pytest.mark.parametrize("top", ["0", "-3"])
def test_top_below_1_is_a_usage_error(tmp_path, capsys, top: str) -> None:
    Image.new("RGB", (32, 32)).save(tmp_path / "ok.png")
    with pytest.raises(SystemExit) as caught:
        predict.main([str(tmp_path), str(tmp_path / "ok.png"), "--top", top])
    assert caught.value.code == 2
    assert "--top must be a positive integer" in capsys.readouterr().err


def test_top_above_the_class_count_prints_every_class_and_says_so(tmp_path, capsys) -> None:
    workdir = workdir_with(tmp_path, model_with_random_statistics()[1])
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    assert predict.main([str(workdir), str(tmp_path / "red.png"), "--top", "20"]) == 0
    captured = capsys.readouterr()
    assert len(re.findall(r"(\w+) [\d.]+%", captured.out)) == 10
    assert "--top 20 is more than the model's 10 classes" in captured.err
