"""Tests write nothing under $HOME: what they run, with an empty HOME, leaves it empty."""

import os
import subprocess
import sys

from tests.conftest import HERMETIC_ENV, REPO

# What fills a HOME when the caches are not redirected: matplotlib's font cache (curves),
# TFDS and the published-weights cache (their default directories).
SNIPPET = """
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import tensorflow_datasets
from jresnet import cli
plt.plot([0, 1]); plt.savefig(__import__("sys").argv[1])
assert cli.main(["pretrained"]) == 0
"""


def test_a_subprocess_with_the_tests_environment_leaves_home_empty(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    assert all(env[k] == v for k, v in HERMETIC_ENV.items())
    result = subprocess.run(
        [sys.executable, "-c", SNIPPET, str(tmp_path / "plot.png")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "plot.png").exists()
    assert list(home.rglob("*")) == []
