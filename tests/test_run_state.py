"""benchmarks.run_state: a run's state packed into the results, unpacked elsewhere, resumed."""

import json
import os
import shutil

import pytest
import torch

from benchmarks import run_state, seed_recipe, torch_checkpoint, torch_seed
from jresnet import checkpoint, main, reporting, workdir
from jresnet.errors import ConfigError
from tests.conftest import copy_of, run_module, tiny_config
from tests.test_torch_seed import fail_at_step, final_parameters, tiny, without_timing


def packed_dir(results, name="jresnet"):
    return os.path.join(results, "seed-recipe", name, "resume")


def test_a_packed_jresnet_run_resumes_from_its_unpacked_state(one_epoch, data_dir, tmp_path):
    results = str(tmp_path / "results")
    info = run_state.pack("jresnet", str(one_epoch), results)
    newest = max(checkpoint.create_manager(one_epoch, read_only=True).all_steps())
    assert info["steps"] == [newest] and info["epochs_recorded"] == 1

    elsewhere = str(tmp_path / "elsewhere")  # a new machine: nothing but the repository
    assert run_state.unpack("jresnet", elsewhere, results)["outcome"].startswith("unpacked")
    assert reporting.read_metrics(elsewhere) == reporting.read_metrics(one_epoch)
    restored = checkpoint.restore_latest(checkpoint.create_manager(elsewhere, read_only=True))
    original = checkpoint.restore_latest(checkpoint.create_manager(one_epoch, read_only=True))
    assert restored[0] == original[0] == newest  # the step, its state checked by digests
    assert restored[3]["history"] == original[3]["history"]

    # The run's command, rerun there, goes on from it: its first record is the packed one,
    # timings included (a run started afresh would have measured its own).
    assert main.run(tiny_config(data_dir, num_epochs=2), elsewhere) == 0
    records = reporting.read_metrics(elsewhere)
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
    assert torch_checkpoint.load(os.path.join(second, torch_seed.CHECKPOINT_FILE))["epoch"] == 1
    resumed = torch_seed.train(config, second)

    assert resumed[0] == reporting.read_metrics(first)[0]  # carried, timings included
    assert without_timing(resumed) == without_timing(expected)
    wanted, got = final_parameters(uninterrupted), final_parameters(second)
    assert all(torch.equal(wanted[name], got[name]) for name in wanted)


def fake_checkpoint(run, step, accuracy=None):
    """A copy of ``run``'s first checkpoint as ``step`` (files only: pack reads no state),
    with ``accuracy`` as its eval accuracy in Orbax's metrics file."""
    source = seed_recipe.checkpoint_steps(run)[0]
    target = os.path.join(run, "checkpoints", str(step))
    shutil.copytree(os.path.join(run, "checkpoints", str(source)), target)
    if accuracy is not None:
        with open(os.path.join(target, "metrics", "metrics"), "w") as f:
            json.dump({"eval_accuracy": accuracy}, f)
    return target


def test_pack_takes_the_newest_complete_and_the_best_checkpoint(one_epoch, tmp_path):
    run = copy_of(one_epoch, tmp_path)
    (step,) = seed_recipe.checkpoint_steps(run)
    for later, accuracy in ((100, 0.9), (200, 0.5), (300, 0.7)):
        fake_checkpoint(run, step + later, accuracy)
    os.rename(  # a checkpoint Orbax is still writing
        fake_checkpoint(run, step + 400),
        os.path.join(run, "checkpoints", f"{step + 400}.orbax-checkpoint-tmp-1"),
    )
    results = str(tmp_path / "results")
    assert run_state.pack("jresnet", run, results)["steps"] == [step + 100, step + 300]
    assert sorted(os.listdir(os.path.join(packed_dir(results), "checkpoints"))) == [
        str(step + 100),
        str(step + 300),
    ]

    shutil.rmtree(os.path.join(run, "checkpoints", str(step + 100)))
    assert run_state.pack("jresnet", run, results)["steps"] == [step + 300]  # replaced
    assert os.listdir(os.path.join(packed_dir(results), "checkpoints")) == [str(step + 300)]
    assert sorted(os.listdir(os.path.dirname(packed_dir(results)))) == ["resume"]
    seed_recipe.report(results)
    readme = open(os.path.join(results, "README.md")).read()
    assert "packed in `seed-recipe/jresnet/resume/`" in readme


def test_pack_refuses_to_replace_the_same_run_further_along(one_epoch, tmp_path):
    run = copy_of(one_epoch, tmp_path)
    (step,) = seed_recipe.checkpoint_steps(run)
    fake_checkpoint(run, step + 4)
    results = str(tmp_path / "results")
    run_state.pack("jresnet", run, results)
    with pytest.raises(ConfigError, match=f"further along \\(step {step + 4}, this work "):
        run_state.pack("jresnet", str(one_epoch), results)  # a machine left behind
    assert run_state.read_state(results, "jresnet")["steps"] == [step + 4]


def test_a_pack_that_fails_keeps_the_previous_one(one_epoch, tmp_path, monkeypatch):
    results = str(tmp_path / "results")
    before = run_state.pack("jresnet", str(one_epoch), results)

    def vanished(source, copy):
        raise FileNotFoundError(source)

    monkeypatch.setattr(run_state.shutil, "copyfile", vanished)
    with pytest.raises(ConfigError, match="changed while it was copied"):
        run_state.pack("jresnet", str(one_epoch), results)
    assert run_state.read_state(results, "jresnet") == before
    assert sorted(os.listdir(os.path.dirname(packed_dir(results)))) == ["resume"]

    # A pack stopped between its two renames: the next one puts the previous state back.
    parent = os.path.dirname(packed_dir(results))
    os.makedirs(os.path.join(parent, ".resume-old-x"))
    os.rename(packed_dir(results), os.path.join(parent, ".resume-old-x", "resume"))
    run_state._tidy(parent)
    assert run_state.read_state(results, "jresnet") == before


def test_unpack_keeps_the_same_run_further_along(one_epoch, tmp_path):
    results = str(tmp_path / "results")
    run_state.pack("jresnet", str(one_epoch), results)
    run = copy_of(one_epoch, tmp_path)
    (step,) = seed_recipe.checkpoint_steps(run)
    fake_checkpoint(run, step + 4)  # it went on after the pack
    before = sorted(os.walk(run))
    assert "kept" in run_state.unpack("jresnet", run, results)["outcome"]
    assert sorted(os.walk(run)) == before


def test_unpack_moves_another_run_aside_and_keeps_it(one_epoch, tmp_path):
    results = str(tmp_path / "results")
    run_state.pack("jresnet", str(one_epoch), results)
    other = tmp_path / "other"  # another kind of run in the work directory
    other.mkdir()
    (other / "checkpoint.pt").write_bytes(b"not ours")
    (other / "metrics.jsonl").write_text("")
    outcome = run_state.unpack("jresnet", str(other), results)["outcome"]
    (aside,) = [p for p in os.listdir(tmp_path) if p.startswith("other.before-unpack-")]
    assert f"moved a torch_seed checkpoint.pt aside to {tmp_path / aside}" in outcome
    assert (tmp_path / aside / "checkpoint.pt").read_bytes() == b"not ours"
    assert reporting.read_metrics(other) == reporting.read_metrics(one_epoch)
    assert seed_recipe.checkpoint_steps(str(other)) == seed_recipe.checkpoint_steps(str(one_epoch))


def test_unpack_refuses_a_live_run_and_a_damaged_packed_state(one_epoch, tmp_path):
    results = str(tmp_path / "results")
    info = run_state.pack("jresnet", str(one_epoch), results)
    live = copy_of(one_epoch, tmp_path)
    with workdir.locked(live), pytest.raises(ConfigError, match="in use by another run"):
        run_state.unpack("jresnet", live, results)

    largest = max(
        info["sha256"], key=lambda f: os.path.getsize(os.path.join(packed_dir(results), f))
    )
    with open(os.path.join(packed_dir(results), largest), "r+b") as f:
        byte = f.read(1)
        f.seek(0)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ConfigError, match="not what was packed"):
        run_state.unpack("jresnet", str(tmp_path / "new"), results)
    assert not os.path.exists(tmp_path / "new")


def test_command_line(one_epoch, tmp_path):
    results = str(tmp_path / "results")

    def command(*args):
        return run_module("benchmarks.run_state", *args, "--results", results)

    nothing = command("pack", "pytorch", str(one_epoch))
    assert nothing.returncode == 2 and "has no config.json or checkpoint.pt" in nothing.stderr
    assert "Traceback" not in nothing.stderr
    missing = command("unpack", "jresnet", str(tmp_path / "w"))
    assert missing.returncode == 2 and "no packed state of jresnet" in missing.stderr

    packed = command("pack", "jresnet", str(one_epoch))
    assert packed.returncode == 0, packed.stderr
    assert "packed jresnet" in packed.stdout and "1 epochs recorded" in packed.stdout
    state = json.loads(open(os.path.join(packed_dir(results), "state.json")).read())
    assert state["workdir"] == str(one_epoch) and state["commit"] is None
    unpacked = command("unpack", "jresnet", str(tmp_path / "w"))
    assert unpacked.returncode == 0 and "rerun the run's command" in unpacked.stdout
