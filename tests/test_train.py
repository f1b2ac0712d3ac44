"""jresnet.train: how an epoch is split into calls, and where a stop request takes effect."""

import os
import signal
import time
import types

import jax
import pytest

from jresnet import errors, main, train
from tests.conftest import tiny_config


@pytest.mark.parametrize(
    ("num_steps", "steps_per_call", "calls"),
    [
        (16, 10, [8, 8]),  # the README's quick example: one program, not 10 and 6
        (390, 10, [10] * 39),  # the seed's epoch
        (351, 10, [9] * 39),  # train[:45000]
        (4, 3, [2, 2]),
        (4, 1, [1, 1, 1, 1]),
        (3, 10, [3]),
        (17, 10, [9, 8]),  # prime: as few calls as allowed, sizes one apart
        (0, 10, []),
    ],
)
def test_epoch_calls(num_steps, steps_per_call, calls):
    assert train.epoch_calls(num_steps, steps_per_call) == calls


def test_calls_from_continue_the_uninterrupted_split():
    run = types.SimpleNamespace(steps_per_epoch=17, recipe=types.SimpleNamespace(steps_per_call=10))
    assert train.Run.calls_from(run, 0) == [9, 8]
    assert train.Run.calls_from(run, 9) == [8]  # stopped between the two calls
    assert train.Run.calls_from(run, 3) == [7, 7]  # steps_per_call was 3 before the resume


def test_a_signal_while_the_device_runs_a_call_stops_after_that_call(
    tmp_path, data_dir, monkeypatch, capsys
):
    """SIGTERM arrives while the device runs the first call of epoch 2, after Python has
    dispatched it: the run stops after that call (step 6), not after the rest of the epoch
    (which ran when the loop dispatched calls without waiting for them)."""

    def sigterm_soon():
        time.sleep(0.3)  # the loop has dispatched the call and gone on by now
        os.kill(os.getpid(), signal.SIGTERM)

    @jax.jit
    def then_sigterm(outputs):
        jax.debug.callback(sigterm_soon)  # runs when the device gets here
        return outputs

    compile_ = train.Run.compile
    calls = 0

    def compile_and_wrap(self, state, steps_per_call):
        seconds = compile_(self, state, steps_per_call)
        compiled = self.train_fns[steps_per_call]

        def call(*args):
            nonlocal calls
            calls += 1
            state, metrics = compiled(*args)
            return state, then_sigterm(metrics) if calls == 3 else metrics

        self.train_fns[steps_per_call] = call
        return seconds

    monkeypatch.setattr(train.Run, "compile", compile_and_wrap)
    config = tiny_config(data_dir, steps_per_call=3)  # 4 steps per epoch: calls of 2 + 2
    assert main.run(config, str(tmp_path / "run")) == errors.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "stopped: SIGTERM at step 6 (epoch 2, step 2/4)" in err
    assert "epoch 2/3 done" not in err and "error:" not in err
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["4", "6"]
    assert (tmp_path / "run" / "curves.png").exists()  # epoch 1's
