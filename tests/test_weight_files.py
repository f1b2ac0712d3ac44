"""jresnet.weight_files: reading PyTorch and safetensors files safely, writing them atomically."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from jresnet import torch_layouts, weight_files
from jresnet.errors import OutputError, WeightsError
from tests.conftest import REPO
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
    loaded = weight_files.load_torch_checkpoint(path)
    assert all(isinstance(v, torch.Tensor) for v in loaded.values())
    assert_trees_equal(torch_layouts.torch_to_flax(loaded), torch_layouts.torch_to_flax(state_dict))


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
    with pytest.raises(WeightsError, match="refusing to load"):
        weight_files.load_torch_checkpoint(path)
    assert not marker.exists()


@requires_torch
def test_pickled_module_is_refused(tmp_path) -> None:
    path = tmp_path / "model.pth"
    torch.save(torch_resnet(8, "B"), path)  # option A holds a lambda: unpicklable
    with pytest.raises(WeightsError, match=r"model\.state_dict\(\)"):
        weight_files.load_torch_checkpoint(path)


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
    with pytest.raises(WeightsError, match=message) as info:
        weight_files.load_torch_checkpoint(path)
    assert "Python objects" not in str(info.value)  # it is garbage, not a pickled object


@requires_torch
def test_truncated_checkpoint_is_reported_as_corrupt(tmp_path) -> None:
    path = tmp_path / "cut.pth"
    torch.save(torch_state_dict("A"), path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(WeightsError, match="corrupt or truncated"):
        weight_files.load_torch_checkpoint(path)


@requires_torch
def test_missing_file_and_directory_are_named(tmp_path) -> None:
    with pytest.raises(WeightsError, match="no such weights file"):
        weight_files.load_torch_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "x.pth").mkdir()
    with pytest.raises(WeightsError, match="is a directory"):
        weight_files.load_torch_checkpoint(tmp_path / "x.pth")


@requires_torch
def test_no_state_dict_lists_top_level_keys(tmp_path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"weights": [torch.zeros(2)], "epoch": 3}, path)
    with pytest.raises(WeightsError, match="top-level keys: 'weights', 'epoch'"):
        weight_files.load_torch_checkpoint(path)


def test_missing_torch_gives_install_hint(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(WeightsError, match="pip install torch"):
        weight_files.load_torch_checkpoint(tmp_path / "x.pth")


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_safetensors_round_trip_is_exact(tmp_path, shortcut: str) -> None:
    pytest.importorskip("safetensors")
    variables = random_variables(shortcut)
    path = tmp_path / "w.safetensors"
    weight_files.save_state_dict_file(torch_layouts.flax_to_torch(variables), path)
    assert path.read_bytes()[8:9] == b"{"  # u64 header length, then a JSON header
    loaded = weight_files.load_state_dict_file(path)
    assert sorted(loaded) == sorted(
        torch_layouts.flax_to_torch(variables)
    )  # safetensors sorts keys
    assert_trees_equal(torch_layouts.torch_to_flax(loaded), variables)


@requires_torch
def test_safetensors_file_loads_into_torch(tmp_path) -> None:
    from safetensors.torch import load_file

    variables = random_variables("B")
    path = tmp_path / "w.safetensors"
    weight_files.save_state_dict_file(torch_layouts.flax_to_torch(variables), path)
    torch_resnet(8, "B").load_state_dict(load_file(path), strict=True)


def test_unknown_output_format_is_refused(tmp_path) -> None:
    with pytest.raises(OutputError, match=r"unknown weights format '\.npz'"):
        weight_files.save_state_dict_file(
            torch_layouts.flax_to_torch(random_variables("A")), tmp_path / "w.npz"
        )
    assert list(tmp_path.iterdir()) == []


@requires_torch
def test_safetensors_and_pth_outputs_get_the_same_mode_644_less_umask(tmp_path) -> None:
    pytest.importorskip("safetensors")
    umask = os.umask(0)
    os.umask(umask)
    state_dict = torch_layouts.flax_to_torch(random_variables("A"))
    for name in ("w.safetensors", "w.pth"):
        weight_files.save_state_dict_file(state_dict, tmp_path / name)
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644 & ~umask, name
    assert sorted(os.listdir(tmp_path)) == ["w.pth", "w.safetensors"]


# --------------------------------------------------------------------------
# Hostile files (issue 20: M1, M2, L1).


def _declare_size(path, record_suffix: str, size: int) -> None:
    """Rewrites the uncompressed size that ``path``'s zip directory declares for the record
    ending in ``record_suffix`` (local header and central directory), leaving its data."""
    data = bytearray(path.read_bytes())
    name = next(n for n in zipfile.ZipFile(path).namelist() if n.endswith(record_suffix))
    encoded = name.encode()
    for signature, size_offset, name_offset in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        start = 0
        while (start := data.find(signature, start)) != -1:
            if data[start + name_offset : start + name_offset + len(encoded)] == encoded:
                struct.pack_into("<I", data, start + size_offset, size)
            start += 4
    path.write_bytes(bytes(data))


@requires_torch
def test_a_zip_declaring_gigabytes_is_refused_before_anything_is_read_m1(tmp_path) -> None:
    path = tmp_path / "bomb.pth"
    torch.save(torch_state_dict("A"), path)
    _declare_size(path, "data/0", 0xF000_0000)  # 3.75 GiB
    code = (  # peak RSS (KiB on Linux) once everything is imported, and after the refusal
        "import resource, sys, torch\n"
        "from jresnet import errors, weight_files\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    weight_files.load_state_dict_file(sys.argv[1])\n"
        "except errors.WeightsError as e:\n"
        "    print(e)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    message, growth_kib = result.stdout.strip().splitlines()
    assert "declares 3,840 MiB, more than any CIFAR ResNet needs" in message
    assert int(growth_kib) < 64 * 1024  # not the record's 3.75 GiB


@requires_torch
def test_too_many_records_are_refused(tmp_path, monkeypatch) -> None:
    path = tmp_path / "many.pth"
    torch.save(torch_state_dict("A"), path)
    monkeypatch.setattr(weight_files, "MAX_RECORDS", 10)
    with pytest.raises(WeightsError, match=r"holds \d+ records, more than any CIFAR ResNet"):
        weight_files.load_torch_checkpoint(path)


@requires_torch
def test_an_absurd_block_number_is_refused_early_and_briefly_m2() -> None:
    state_dict = akamaster_layout(torch_state_dict("A"))
    state_dict["module.layer1.999999.conv1.weight"] = torch.zeros(16, 16, 3, 3)
    with pytest.raises(WeightsError) as info:
        torch_layouts.torch_to_flax(state_dict)
    message = str(info.value)
    assert "blocks of layer1 are not numbered 0, 1, ..., n-1" in message and "999999" in message
    assert len(message) < 300
    with pytest.raises(WeightsError, match="999999"):
        torch_layouts.infer_architecture(state_dict)


def test_junk_keys_give_a_bounded_message_naming_a_few_m2() -> None:
    state_dict = torch_layouts.flax_to_torch(random_variables("B"))
    state_dict.update({f"junk.{i}": np.zeros(1, np.float32) for i in range(200_000)})
    with pytest.raises(WeightsError) as info:
        torch_layouts.torch_to_flax(state_dict)
    message = str(info.value)
    assert "unexpected keys (200,000): junk.0, junk.1" in message
    assert "and 199,995 more" in message and len(message) < 500 and "\n" not in message


class _System:
    """Would run a shell command when unpickled, if unpickling were allowed."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@requires_torch
def test_a_code_execution_pickle_is_reported_as_refused_l1(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": torch_state_dict("A"), "x": _System(f"touch {marker}")}, path)
    with pytest.raises(WeightsError) as info:
        weight_files.load_torch_checkpoint(path)
    message = str(info.value)
    assert "refused" in message and "posix.system" in message
    assert "corrupt" not in message and "weights_only=False" not in message
    assert "\n" not in message
    assert not marker.exists()
