"""The seed's PyTorch run (benchmarks.torch_seed.train): exact resume, intact checkpoints."""

import json
import os
import random

import numpy as np
import pytest
import torch

from benchmarks import torch_checkpoint, torch_seed
from jresnet import reporting, weight_files
from jresnet.errors import CheckpointError, ConfigError, OutputError, WeightsError

# The fields of jresnet's metrics.jsonl records (jresnet.train.end_epoch), in its order.
JRESNET_RECORD_FIELDS = [
    "epoch",
    "step",
    "train_loss",
    "train_accuracy",
    "learning_rate",
    "eval_loss",
    "eval_accuracy",
    "eval_count",
    "images_per_s",
    "epoch_time_s",
]


def tiny(data_dir, **overrides):
    """ResNet-8 on the 64 + 40 images of the conftest data: 3 epochs of 3 steps (24, 24, 16)."""
    values = {"depth": 8, "batch_size": 24, "num_epochs": 3, "num_workers": 0, "seed": 3}
    return torch_seed.RunConfig(data_dir=data_dir, **{**values, **overrides})


def final_parameters(workdir):
    return torch_checkpoint.load(os.path.join(workdir, torch_seed.CHECKPOINT_FILE))["model"]


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in torch_seed.TIMING_FIELDS} for r in records]


def fail_at_step(monkeypatch, failing_call):
    """Makes the ``failing_call``-th training step (1-based, over the whole run) raise."""
    calls = []
    step = torch_seed.SeedTrainer.step

    def failing_step(self, inputs, targets):
        calls.append(1)
        if len(calls) == failing_call:
            raise RuntimeError("injected failure")
        return step(self, inputs, targets)

    monkeypatch.setattr(torch_seed.SeedTrainer, "step", failing_step)


@pytest.fixture(scope="module")
def uninterrupted_runs(tmp_path_factory, data_dir):
    """``num_workers -> (workdir, records)`` of one uninterrupted tiny run each, made once."""
    runs = {}

    def run(num_workers):
        if num_workers not in runs:
            workdir = str(tmp_path_factory.mktemp(f"uninterrupted{num_workers}"))
            runs[num_workers] = (
                workdir,
                torch_seed.train(tiny(data_dir, num_workers=num_workers), workdir),
            )
        return runs[num_workers]

    return run


@pytest.mark.parametrize(
    ("num_workers", "failing_call"),
    [
        (0, 4),  # the first step of epoch 2: stopped after epoch 1
        (0, 8),  # mid epoch 3
        # The seed's 2 worker processes (forked every epoch): their seeds come from the
        # loader's generator.
        pytest.param(2, 5, marks=pytest.mark.slow),
    ],
)
def test_stopped_then_rerun_ends_like_an_uninterrupted_run(
    tmp_path, data_dir, monkeypatch, uninterrupted_runs, num_workers, failing_call
):
    config = tiny(data_dir, num_workers=num_workers)
    uninterrupted_dir, uninterrupted = uninterrupted_runs(num_workers)

    workdir = str(tmp_path)
    with monkeypatch.context() as patch:
        fail_at_step(patch, failing_call)
        with pytest.raises(RuntimeError, match="injected failure"):
            torch_seed.train(config, workdir)
    epochs_done = (failing_call - 1) // 3
    saved = torch_checkpoint.load(os.path.join(workdir, torch_seed.CHECKPOINT_FILE))
    assert saved["epoch"] == epochs_done
    assert without_timing(saved["history"]) == without_timing(uninterrupted[:epochs_done])
    assert len(reporting.read_metrics(workdir)) == epochs_done

    resumed = torch_seed.train(config, workdir)

    expected, actual = final_parameters(uninterrupted_dir), final_parameters(workdir)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    assert without_timing(resumed) == without_timing(uninterrupted)
    assert without_timing(reporting.read_metrics(workdir)) == without_timing(
        reporting.read_metrics(uninterrupted_dir)
    )


def test_records_have_jresnet_fields_and_count_the_seed_steps(tmp_path, data_dir):
    records = torch_seed.train(tiny(data_dir), str(tmp_path))
    assert [list(r) for r in records] == [JRESNET_RECORD_FIELDS] * 3
    # The seed's DataLoader keeps the last partial batch: 64 images at 24 -> 3 steps.
    assert [r["step"] for r in records] == [3, 6, 9]
    assert [r["eval_count"] for r in records] == [40] * 3
    # CosineAnnealingLR(T_max=3) stepped per epoch: 0.1, 0.075, 0.025.
    assert [r["learning_rate"] for r in records] == pytest.approx([0.1, 0.075, 0.025])
    assert reporting.read_metrics(str(tmp_path)) == records
    with open(tmp_path / torch_seed.CONFIG_FILE) as f:
        assert json.load(f)["depth"] == 8
    # A rerun after the last epoch trains nothing and keeps the records.
    assert torch_seed.train(tiny(data_dir), str(tmp_path)) == records


def test_a_runs_final_weights_in_a_file_give_its_last_eval(uninterrupted_runs, data_dir, tmp_path):
    workdir, records = uninterrupted_runs(0)
    path = str(tmp_path / "final.safetensors")
    weight_files.save_state_dict_file(
        {k: v.numpy() for k, v in final_parameters(workdir).items()}, path
    )
    metrics = torch_seed.evaluate_weights(path, data_dir, depth=8)
    last = records[-1]
    assert metrics == {k: last[k] for k in ("eval_loss", "eval_accuracy", "eval_count")}
    with pytest.raises(WeightsError, match=r"not a seed-layout ResNet-20 \(option B\)") as error:
        torch_seed.evaluate_weights(path, data_dir)  # a ResNet-8's weights, not ResNet-20's
    assert '"layer1.1.conv1.weight"' in str(error.value)  # torch names what is missing


def test_eval_matches_the_per_image_test_transform(data_dir):
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    batched = torch_seed.normalized_nchw(images)
    per_image = torch.stack([torch_seed.test_transform()(image) for image in images])
    assert torch.equal(batched, per_image)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pt")
    torch_checkpoint.save_atomic({"epoch": 1, "w": torch.ones(3)}, path)
    before = (tmp_path / "checkpoint.pt").read_bytes()

    def torn_save(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch_checkpoint.torch, "save", torn_save)
    with pytest.raises(OutputError, match="no space left"):
        torch_checkpoint.save_atomic({"epoch": 2, "w": torch.zeros(3)}, path)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert os.listdir(tmp_path) == ["checkpoint.pt"]
    assert torch_checkpoint.load(path)["epoch"] == 1


def test_leftovers_of_a_killed_save_are_removed(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    (tmp_path / ".checkpoint.pt.0a1b2c3d.partial").write_bytes(b"torn")
    (tmp_path / ".other.pt.0a1b2c3d.partial").write_bytes(b"someone else's")
    assert torch_checkpoint.remove_leftovers(path) == [
        str(tmp_path / ".checkpoint.pt.0a1b2c3d.partial")
    ]
    assert os.listdir(tmp_path) == [".other.pt.0a1b2c3d.partial"]


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    generator = torch.Generator().manual_seed(5)
    torch.manual_seed(1)
    np.random.seed(2)  # noqa: NPY002 (the global state is what is saved)
    random.seed(3)
    path = str(tmp_path / "rng.pt")
    torch_checkpoint.save_atomic({"rng": torch_checkpoint.rng_states(generator)}, path)

    def draws():
        return (
            torch.rand(4).tolist(),
            np.random.rand(4).tolist(),  # noqa: NPY002
            [random.random() for _ in range(4)],
            torch.randperm(10, generator=generator).tolist(),
        )

    first = draws()
    torch_checkpoint.restore_rng_states(torch_checkpoint.load(path)["rng"], generator)
    assert draws() == first


def test_resume_with_another_config_is_refused(tmp_path, data_dir):
    torch_seed.train(tiny(data_dir, num_epochs=1), str(tmp_path))
    before = (tmp_path / torch_seed.CHECKPOINT_FILE).read_bytes()
    with pytest.raises(ConfigError, match="batch_size: checkpoint has 24, this run has 16"):
        torch_seed.train(tiny(data_dir, num_epochs=1, batch_size=16), str(tmp_path))
    assert (tmp_path / torch_seed.CHECKPOINT_FILE).read_bytes() == before


def test_unreadable_checkpoint_is_reported_and_left_in_place(tmp_path, data_dir):
    (tmp_path / torch_seed.CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        torch_seed.train(tiny(data_dir), str(tmp_path))
    assert (tmp_path / torch_seed.CHECKPOINT_FILE).read_bytes() == b"not a checkpoint"


def test_command_line_reports_bad_values(tmp_path, capsys):
    assert torch_seed.main(["train", "--workdir", str(tmp_path), "--depth", "9"]) == 2
    assert "--depth must be 6n + 2" in capsys.readouterr().err
