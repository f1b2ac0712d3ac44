"""jresnet.parallel: N devices and N processes give the 1-device update.

Simulated CPU devices (``--xla_force_host_platform_device_count``) must be set
before JAX starts, and ``jax.distributed`` once per process, so these tests run
subprocesses. The coordinator binds to 127.0.0.1 only.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jresnet import checkpoint, parallel
from tests.conftest import REPO, train_command

# 3 epochs of 2 steps. lr 0.02 (not 0.1) keeps the amplification of rounding
# differences (reduction order across processes) small enough to compare params.
TINY = {
    "model": "resnet8",
    "batch_size": 32,
    "eval_batch_size": 20,
    "num_epochs": 3,
    "learning_rate": 0.02,
    "log_every_steps": 1,
    "steps_per_call": 1,
}


@pytest.mark.slow
def test_one_step_on_two_devices_equals_one_device_under_shard_map_and_pmap():
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "multidevice_step.py")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    diffs = json.loads(result.stdout.strip().splitlines()[-1])
    assert diffs["params_changed_by"] > 1e-3  # the step did something
    assert diffs["shard_map_2_vs_1"] < 1e-5, diffs
    assert diffs["pmap_2_vs_1"] < 1e-5, diffs
    assert diffs["pmap_devices_agree"] == 0.0
    assert diffs["loss_2_vs_1"] < 1e-6 and diffs["pmap_loss_vs_1"] < 1e-6
    # The driver training uses, its batches gathered from the split on 1 or 2 devices: the
    # update of the host's batches (the same program but the gather) and the same first loss.
    assert diffs["split_vs_host_batches"] < 1e-6, diffs
    assert diffs["split_first_loss_2_vs_1"] < 1e-6, diffs


def test_batch_not_divisible_by_devices_is_a_clear_error():
    mesh = parallel.create_mesh([jax.devices()[0]] * 1)
    parallel.check_divisible(7, "--config.batch_size", mesh)  # 1 device divides anything
    fake = type("FakeMesh", (), {"size": 4})()
    with pytest.raises(ValueError, match=r"batch_size 10 is not divisible by the 4 devices"):
        parallel.check_divisible(10, "--config.batch_size", fake)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(workdir, data_dir, **distributed):
    return train_command(workdir, **{**TINY, "data_dir": data_dir, **distributed})


def _start_two_processes(workdir, data_dir):
    port = _free_port()
    address = f"127.0.0.1:{port}"
    return [
        subprocess.Popen(
            _command(
                workdir,
                data_dir,
                coordinator_address=address,
                coordinator_bind_address=address,
                num_processes=2,
                process_id=i,
            ),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]


def _wait(processes, timeout=300):
    outputs = [p.communicate(timeout=timeout) for p in processes]
    for p, (_, err) in zip(processes, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return outputs


def _params(workdir):
    _, variables = checkpoint.load_model(workdir)
    return variables


def _max_abs_diff(a, b):
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_after_kill(tmp_path, data_dir):
    single = subprocess.run(
        _command(tmp_path / "single", data_dir), capture_output=True, text=True, timeout=300
    )
    assert single.returncode == 0, single.stderr

    outputs = _wait(_start_two_processes(tmp_path / "two", data_dir))
    assert "2 cpu device(s) in 2 process(es)" in outputs[0][1]
    assert "epoch 3/3 done" in outputs[0][1]
    assert "epoch" not in outputs[1][1]  # only process 0 reports
    two = _params(tmp_path / "two")
    # 6 SGD steps: only the reduction order differs from one process.
    diff = _max_abs_diff(two, _params(tmp_path / "single"))
    print(f"max abs difference, 2 processes vs 1 after 6 steps: {diff:.2e}")
    assert diff < 1e-4

    # Kill both processes after the first checkpoint, rerun both: same result.
    processes = _start_two_processes(tmp_path / "killed", data_dir)
    ckpt_dir = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not (ckpt_dir / "2").is_dir():
        time.sleep(0.01)
    for p in processes:
        p.send_signal(signal.SIGKILL)
        p.communicate()
    assert (ckpt_dir / "2").is_dir()
    outputs = _wait(_start_two_processes(tmp_path / "killed", data_dir))
    assert "Resuming from the checkpoint at step" in outputs[0][1]
    assert _max_abs_diff(_params(tmp_path / "killed"), two) == 0.0
    assert os.path.exists(tmp_path / "killed" / "curves.png")


def test_an_unreachable_coordinator_is_a_message_not_a_hang_or_an_abort(tmp_path, data_dir):
    """Process 1 of 2 with no process 0: it gives up after the timeout, exit code 2."""
    cmd = _command(
        tmp_path / "run",
        data_dir,
        coordinator_address=f"127.0.0.1:{_free_port()}",
        num_processes=2,
        process_id=1,
        coordinator_timeout_s=2,
    )
    start = time.time()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "did not answer within 2 s" in result.stderr
    assert "Start process 0 first" in result.stderr
    assert time.time() - start < 60
