"""jresnet.xla_setup: when the XLA:CPU flag is added, and that it keeps the numbers."""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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


def test_leaves_flags_alone_when_jax_platforms_excludes_the_cpu():
    for env in ({"JAX_PLATFORMS": "cuda"}, {"JAX_PLATFORM_NAME": "gpu"}, {"JAX_PLATFORMS": "tpu"}):
        assert not xla_setup.configure_cpu_flags(env, modules=set()), env
        assert "XLA_FLAGS" not in env
    for env in ({"JAX_PLATFORMS": "cuda,cpu"}, {"JAX_PLATFORMS": "CPU"}, {"JAX_PLATFORMS": ""}):
        assert xla_setup.uses_cpu_backend(env), env


_CONVOLVE = (
    "import jax, jax.numpy as jnp;"
    "x = jnp.ones((2, 8, 8, 3)); w = jnp.ones((3, 3, 3, 4));"
    "dn = ('NHWC', 'HWIO', 'NHWC');"
    "print(float(jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=dn).sum()))"
)


def _start_jax_with(flag):
    env = {**os.environ, "XLA_FLAGS": flag, "JAX_PLATFORMS": "cpu"}
    env.pop(xla_setup.OPT_OUT, None)
    return subprocess.run(
        [sys.executable, "-c", _CONVOLVE], capture_output=True, text=True, timeout=120, env=env
    )


def test_the_installed_jaxlib_accepts_the_flag_if_it_is_known():
    """The flag is added only where this jaxlib starts with it (an unknown flag aborts)."""
    unknown = _start_jax_with("--xla_cpu_no_such_flag_for_jresnet=1")
    assert unknown.returncode != 0  # the probe can fail: jaxlib refuses unknown flags
    known = importlib.metadata.version("jaxlib").startswith(xla_setup.KNOWN_JAXLIB_PREFIXES)
    assert xla_setup.configure_cpu_flags({}, modules=set()) == known
    if known:
        flagged = _start_jax_with(xla_setup.YNN_FUSION_FLAG)
        assert flagged.returncode == 0, flagged.stderr[-2000:]
        plain = _start_jax_with("")
        assert flagged.stdout.split()[-1] == plain.stdout.split()[-1] == "11616.0"


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


@pytest.mark.slow
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
