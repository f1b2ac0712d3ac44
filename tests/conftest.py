"""Shared fixtures: a tiny CIFAR-10 in TFDS format, the tiny run config, and the
`train.py` command line.

Hermetic: JAX's persistent compilation cache lives in a temporary directory for the
session (shared by in-process runs and `train.py` subprocesses, so identical programs
compile once), never in the user's ``~/.cache``. So do every other cache a test or its
subprocesses could fill (`HERMETIC_ENV`: matplotlib's font cache, XDG caches, published
weights, TFDS's data dir): tests write nothing under ``$HOME`` (tests/test_hermetic.py).
"""

import atexit
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Set before anything imports matplotlib or TFDS; subprocesses inherit them. A fresh
# directory per pytest process (each xdist worker too), removed when it exits.
_CACHES = tempfile.mkdtemp(prefix="jresnet-test-caches-")
atexit.register(shutil.rmtree, _CACHES, ignore_errors=True)
HERMETIC_ENV = {
    "MPLCONFIGDIR": os.path.join(_CACHES, "matplotlib"),
    "XDG_CACHE_HOME": os.path.join(_CACHES, "xdg-cache"),
    "XDG_CONFIG_HOME": os.path.join(_CACHES, "xdg-config"),
    "JRESNET_CACHE_DIR": os.path.join(_CACHES, "jresnet-weights"),
    "TFDS_DATA_DIR": os.path.join(_CACHES, "tensorflow_datasets"),
}
os.environ.update(HERMETIC_ENV)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jresnet import main, models, results  # noqa: E402
from jresnet.configs import default  # noqa: E402
from jresnet.testing import tiny_data  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# A run small enough to train in seconds: 64 training images, 4 steps per epoch.
TINY = {
    "model": "resnet8",
    "batch_size": 16,
    "eval_batch_size": 24,
    "num_epochs": 3,
    "log_every_steps": 2,
    "steps_per_call": 1,  # compiles fastest; test_steps covers several steps per call
}


def session_dir(tmp_path_factory) -> Path:
    """The temporary directory of the whole test session, shared by its pytest-xdist
    workers (each worker's own base directory is one level below it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def made_once(tmp_path_factory, name: str, make) -> Path:
    """``SESSION/name``, made by ``make(path)`` once per test session however many xdist
    workers ask for it: the first one makes it under a file lock, the others wait for it
    and reuse it. Costly fixtures (training runs) use it; tests must only read the result
    (or copy it)."""
    path = session_dir(tmp_path_factory) / name
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        done = Path(f"{path}.done")
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)  # a worker that failed half-way
            path.mkdir()
            make(path)
            done.touch()
    return path


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory) -> str:
    """The session's JAX compilation cache directory, shared by the pytest-xdist workers
    and every subprocess (through the environment), holding every program compiled,
    however quick: most of the suite's time is XLA compiling the same small programs
    (ResNet-8 steps, and op by op the random numbers of each initialisation) in each
    process."""
    path = str(session_dir(tmp_path_factory) / "jax-cache")
    os.makedirs(path, exist_ok=True)
    settings = {"jax_compilation_cache_dir": path, "jax_persistent_cache_min_compile_time_secs": 0}
    for name, value in settings.items():
        jax.config.update(name, value)
        os.environ[name.upper()] = str(value)
    os.environ["JRESNET_TEST_COMPILATION_CACHE"] = path
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """A CIFAR-10 in TFDS format with 64 train and 40 test images (learnable: the red
    channel carries the label), one for the session: read it, never write into it."""
    rng = np.random.default_rng(0)

    def split(n):
        labels = rng.integers(0, 10, n).astype(np.int64)
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        images[..., 0] = np.clip(images[..., 0] // 2 + 12 * labels[:, None, None], 0, 255)
        return images, labels

    def write(path):
        tiny_data.write_dataset(str(path), "cifar10", {"train": split(64), "test": split(40)})

    return str(made_once(tmp_path_factory, "tfds", write))


@pytest.fixture(scope="session")
def one_epoch(tmp_path_factory, data_dir) -> Path:
    """The work directory of one finished 1-epoch `main.run` (`tiny_config`), one for the
    session: tests that only read it use it as it is, tests that train on in it or change
    it take a `copy_of` it."""

    def train(path):
        assert main.run(tiny_config(data_dir, num_epochs=1), str(path / "run")) == 0

    return made_once(tmp_path_factory, "one-epoch", train) / "run"


def copy_of(workdir, tmp_path) -> str:
    """A copy of ``workdir`` as ``tmp_path/run`` (a str)."""
    return str(shutil.copytree(workdir, tmp_path / "run"))


def _hermetic(config: dict) -> dict:
    return {"compilation_cache_dir": os.environ["JRESNET_TEST_COMPILATION_CACHE"], **config}


def tiny_config(data_dir, **overrides):
    """The default config with `TINY`, ``data_dir`` and ``overrides``."""
    config = default.get_config()
    config.update(_hermetic({**TINY, "data_dir": data_dir, **overrides}))
    return config


def train_command(workdir, **config) -> list[str]:
    """``python train.py --workdir=W --config.KEY=VALUE ...`` (the session's JAX cache)."""
    return [
        sys.executable,
        str(REPO / "train.py"),
        f"--workdir={workdir}",
        *(f"--config.{k}={v}" for k, v in _hermetic(config).items()),
    ]


def run_module(module: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m module args...`` from the repository root, output captured, not checked."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def random_normal(shape, seed: int = 0, dtype=jnp.float32) -> jax.Array:
    """Standard normal test data of ``shape``, drawn by NumPy: ``jax.random`` would compile
    an XLA program for each new shape, seconds of CPU for a test's data alone."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def model_with_random_statistics(shortcut: str = "B", num_classes: int = 10, seed: int = 0):
    """A ResNet-8 and its variables with BatchNorm statistics that are not the identity
    (like converted ones): ``(model, {"params", "batch_stats"})``."""
    model = models.create_model("resnet8", shortcut=shortcut, num_classes=num_classes)
    variables = model.init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(seed)
    stats = jax.tree_util.tree_map_with_path(
        lambda path, x: (
            rng.uniform(0.5, 1.5, x.shape) if path[-1].key == "var" else rng.normal(0, 0.1, x.shape)
        ).astype(np.float32),
        variables["batch_stats"],
    )
    return model, {"params": variables["params"], "batch_stats": stats}


def _fake_records(accuracies):
    return [
        {"epoch": i + 1, "step": 4 * (i + 1), "eval_accuracy": a, "wall_s": 10.0 * (i + 1)}
        for i, a in enumerate(accuracies)
    ]


def fake_run(path, seed, accuracies, test=None, finished=True) -> str:
    """A work directory with ``metrics.jsonl`` (eval ``accuracies`` per epoch) and, if
    ``finished``, ``results.json`` (with ``test = (final, best)`` test accuracies), as a
    training run writes them; no training. Returns its path."""
    path.mkdir(parents=True)
    records = _fake_records(accuracies)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if finished:
        config = {"seed": seed, "eval_split": "train[45000:]", "test_split": "test"}
        best = results.best_record(records, [r["step"] for r in records])
        fields = None
        if test is not None:
            final, best_test = test
            fields = results.test_fields(
                {"eval_accuracy": final, "eval_loss": 1.0, "eval_count": 40},
                {"eval_accuracy": best_test, "eval_loss": 1.0, "eval_count": 40},
                best["epoch"],
            )
        results.write(str(path), results.build(config, records, best, fields, 30.0, None))
    return str(path)
