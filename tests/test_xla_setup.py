"""jresnet.xla_setup: when the XLA:CPU flag is added, and that it keeps the numbers."""

import subprocess
import sys
from pathlib import Path

import numpy as np

from jresnet import xla_setup

REPO = Path(__file__).resolve().parents[1]


def test_adds_the_flag_before_jax_is_imported():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert xla_setup.configure_cpu_flags(env, modules=set())
    assert env["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=2",
        xla_setup.YNN_FUSION_FLAG,
    ]


def test_leaves_flags_alone_when_too_late_opted_out_or_already_set():
    env = {}
    assert not xla_setup.configure_cpu_flags(env, modules={"jax"})
    env = {xla_setup.OPT_OUT: "0"}
    assert not xla_setup.configure_cpu_flags(env, modules=set())
    assert "XLA_FLAGS" not in env
    own = "--xla_cpu_experimental_ynn_fusion_type=+eltwise"
    env = {"XLA_FLAGS": own}
    assert not xla_setup.configure_cpu_flags(env, modules=set())
    assert env["XLA_FLAGS"] == own


def _update_of_1_step(tmp_path, *flags):
    out = tmp_path / f"update{len(flags)}.npz"
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "train_step_to_file.py"), str(out), *flags],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(out) as data:
        return np.concatenate([data[k].ravel() for k in sorted(data.files)])


def test_the_flag_changes_only_rounding(tmp_path):
    """The update of one step (augmentation on) agrees to float32 rounding.

    Float32 gradients of ResNet-20 are within about 3e-3 (relative L2) of float64
    whatever the XLA flags, so two builds differ by up to about 6e-3; a wrong
    computation would differ by order 1. (Over more steps at lr 0.1 rounding
    differences grow, as between any two XLA builds of the same step.)
    """
    plain = _update_of_1_step(tmp_path)
    flagged = _update_of_1_step(tmp_path, "--with-cpu-flags")
    assert np.linalg.norm(plain) > 0.1
    relative = np.linalg.norm(flagged - plain) / np.linalg.norm(plain)
    assert relative < 1e-2, relative
