"""benchmarks.run_state: a run's state packed into the results, unpacked elsewhere, resumed."""

import json
import os

import pytest
import torch

from benchmarks import run_state, seed_recipe, torch_checkpoint, torch_seed
from jresnet import checkpoint, main, reporting
from jresnet.errors import ConfigError
from tests.conftest import copy_of, run_module, tiny_config
from tests.test_torch_seed import fail_at_step, final_parameters, tiny, without_timing


def test_a_packed_jresnet_run_resumes_from_its_unpacked_state(one_epoch, data_dir, tmp_path):
    results = str(tmp_path / "results")
    info = run_state.pack("jresnet", str(one_epoch), results)
    newest = max(checkpoint.create_manager(one_epoch, read_only=True).all_steps())
    assert info["step"] == newest and info["epochs_recorded"] == 1

    workdir = str(tmp_path / "elsewhere")  # a new machine: nothing but the repository
    assert run_state.unpack("jresnet", workdir, results)["step"] == newest
    restored = checkpoint.restore_latest(checkpoint.create_manager(workdir, read_only=True))
    original = checkpoint.restore_latest(checkpoint.create_manager(one_epoch, read_only=True))
    assert restored[0] == original[0] == newest  # the step, its state checked by digests
    assert restored[3]["history"] == original[3]["history"] == reporting.read_metrics(one_epoch)

    # The run's command, rerun there, goes on from it (and rewrites metrics.jsonl whole).
    assert main.run(tiny_config(data_dir, num_epochs=2), workdir) == 0
    records = reporting.read_metrics(workdir)
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[0] == reporting.read_metrics(one_epoch)[0]


def test_a_packed_pytorch_run_ends_like_an_uninterrupted_one(data_dir, tmp_path, monkeypatch):
    config = tiny(data_dir)
    uninterrupted = str(tmp_path / "uninterrupted")
    expected = torch_seed.train(config, uninterrupted)
    first = str(tmp_path / "first-machine")
    with monkeypatch.context() as patch:
        fail_at_step(patch, 4)  # stopped after epoch 1
        with pytest.raises(RuntimeError, match="injected failure"):
            torch_seed.train(config, first)
    results = str(tmp_path / "results")
    assert run_state.pack("pytorch", first, results)["epochs_recorded"] == 1

    second = str(tmp_path / "second-machine")
    run_state.unpack("pytorch", second, results)
    resumed = torch_seed.train(config, second)

    assert without_timing(resumed) == without_timing(expected)
    wanted, got = final_parameters(uninterrupted), final_parameters(second)
    assert all(torch.equal(wanted[name], got[name]) for name in wanted)
    assert torch_checkpoint.load(os.path.join(second, torch_seed.CHECKPOINT_FILE))["epoch"] == 3


def test_pack_replaces_the_previous_state_with_the_newest_checkpoint(one_epoch, tmp_path):
    workdir = copy_of(one_epoch, tmp_path)
    results = str(tmp_path / "results")
    run_state.pack("jresnet", workdir, results)
    newest = max(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))
    os.rename(
        os.path.join(workdir, "checkpoints", str(newest)),
        os.path.join(workdir, "checkpoints", str(newest + 1)),
    )
    assert run_state.pack("jresnet", workdir, results)["step"] == newest + 1
    packed = os.path.join(results, "seed-recipe", "jresnet", "resume")
    assert os.listdir(os.path.join(packed, "checkpoints")) == [str(newest + 1)]
    assert sorted(os.listdir(os.path.dirname(packed))) == ["resume"]  # nothing left over
    seed_recipe.report(results)
    readme = open(os.path.join(results, "README.md")).read()
    assert "packed in `seed-recipe/jresnet/resume/`" in readme


def test_unpack_refuses_a_workdir_that_holds_a_run_and_changes_nothing(one_epoch, tmp_path):
    results = str(tmp_path / "results")
    run_state.pack("jresnet", str(one_epoch), results)
    workdir = copy_of(one_epoch, tmp_path)
    before = sorted(os.walk(workdir))
    with pytest.raises(ConfigError, match=r"already holds a run's state .*checkpoints up to step"):
        run_state.unpack("jresnet", workdir, results)
    assert sorted(os.walk(workdir)) == before


def test_unpack_refuses_a_damaged_packed_state(one_epoch, tmp_path):
    results = str(tmp_path / "results")
    info = run_state.pack("jresnet", str(one_epoch), results)
    packed = os.path.join(results, "seed-recipe", "jresnet", "resume")
    damaged = max(info["sha256"], key=lambda f: os.path.getsize(os.path.join(packed, f)))
    with open(os.path.join(packed, damaged), "r+b") as f:
        f.write(b"\0")
    with pytest.raises(ConfigError, match="not what was packed"):
        run_state.unpack("jresnet", str(tmp_path / "new"), results)
    assert not os.path.exists(tmp_path / "new")


def test_command_line(one_epoch, tmp_path):
    results = str(tmp_path / "results")
    nothing = run_module(
        "benchmarks.run_state", "pack", "pytorch", str(one_epoch), "--results", results
    )
    assert nothing.returncode == 2 and "has no config.json or checkpoint.pt" in nothing.stderr
    assert "Traceback" not in nothing.stderr
    missing = run_module(
        "benchmarks.run_state", "unpack", "jresnet", str(tmp_path / "w"), "--results", results
    )
    assert missing.returncode == 2 and "no packed state of jresnet" in missing.stderr

    packed = run_module(
        "benchmarks.run_state", "pack", "jresnet", str(one_epoch), "--results", results
    )
    assert packed.returncode == 0, packed.stderr
    assert "packed jresnet" in packed.stdout and "1 epochs recorded" in packed.stdout
    state = json.loads(
        open(os.path.join(results, "seed-recipe", "jresnet", "resume", "state.json")).read()
    )
    assert state["workdir"] == str(one_epoch)
    unpacked = run_module(
        "benchmarks.run_state", "unpack", "jresnet", str(tmp_path / "w"), "--results", results
    )
    assert unpacked.returncode == 0 and "rerun its command there" in unpacked.stdout
