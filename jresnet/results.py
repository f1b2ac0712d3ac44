"""A finished run's results: ``<workdir>/results.json``, and reading them back.

`train.train_and_evaluate` writes ``results.json`` once a run has trained its last epoch
(and again, identically, when a finished run is rerun). One JSON object:

* ``accuracy_unit``: ``"fraction"``: every accuracy is a fraction in [0, 1], as in
  ``metrics.jsonl`` (0.9207 means 92.07%);
* ``final_eval_accuracy``: the last epoch's accuracy on ``eval_split``;
* ``best_eval_accuracy``, ``best_epoch``, ``best_step``: the epoch with the highest
  ``eval_split`` accuracy whose checkpoint is kept (the earliest of equal ones);
* ``test_split``, ``final_test_accuracy``, ``final_test_loss``, ``best_test_accuracy``,
  ``best_test_loss``, ``test_count``: the final model and the best checkpoint evaluated once
  on ``test_split`` at the end (null where ``--config.test_split`` is empty);
* ``eval_split``, ``epochs``, ``steps``, ``seed``;
* ``wall_s``: seconds of wall time the run took up to its last checkpoint, summed over the
  sessions of a resumed run (time after a session's last checkpoint is not counted);
* ``config``: the whole config of the run;
* ``commit``: ``git describe --always --dirty --abbrev=40`` of the repository jresnet was
  imported from (``-dirty``: with uncommitted changes), or null when jresnet does not run
  from a git checkout (an installed wheel).

`jresnet.summarize` reads ``results.json`` and ``metrics.jsonl`` (files only), so it works on
runs still in progress and on runs copied from other machines.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from jresnet import reporting, safe_files
from jresnet.errors import CheckpointError

RESULTS_FILE = "results.json"
ACCURACY_UNIT = "fraction"

# Config keys that decide what the test numbers mean: a rerun with other values evaluates
# the test split again instead of keeping results.json.
TEST_KEYS = ("dataset", "data_dir", "eval_split", "test_split")


def code_version(package: str | None = None, abbrev: int = 40) -> str | None:
    """``git describe --always --dirty --abbrev=ABBREV`` of the git checkout that holds the
    jresnet package folder ``package`` (default: the one running).

    None when jresnet's files are not tracked by git there (an installed package) or git is
    missing.
    """
    package = package or os.path.dirname(os.path.abspath(__file__))
    try:
        subprocess.run(
            ["git", "ls-files", "--error-unmatch", "__init__.py"],
            cwd=package,
            capture_output=True,
            check=True,
            timeout=30,
        )
        describe = subprocess.run(
            ["git", "describe", "--always", "--dirty", f"--abbrev={abbrev}"],
            cwd=package,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return describe.stdout.strip() or None


def best_record(
    records: Sequence[Mapping[str, Any]], kept_steps: Sequence[int]
) -> Mapping[str, Any] | None:
    """The epoch record with the highest ``eval_accuracy`` among those whose checkpoint
    (``step``) is in ``kept_steps``; the earliest of equal ones. None if there is none."""
    kept = set(kept_steps)
    candidates = [r for r in records if r["step"] in kept]
    if not candidates:
        return None
    return max(candidates, key=lambda r: (r["eval_accuracy"], -r["epoch"]))


def build(
    config: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    best: Mapping[str, Any],
    test: Mapping[str, Any] | None,
    wall_s: float,
    commit: str | None,
) -> dict[str, Any]:
    """The ``results.json`` object (see the module docstring).

    ``records``: the run's epoch records (``metrics.jsonl``); ``best``: the best one
    (`best_record`); ``test``: `test_fields` of the test evaluation, None without a test split.
    """
    last = records[-1]
    test = test or {}
    return {
        "accuracy_unit": ACCURACY_UNIT,
        "final_eval_accuracy": last["eval_accuracy"],
        "best_eval_accuracy": best["eval_accuracy"],
        "best_epoch": best["epoch"],
        "best_step": best["step"],
        "eval_split": config["eval_split"],
        "test_split": config.get("test_split", ""),
        "final_test_accuracy": test.get("final_test_accuracy"),
        "final_test_loss": test.get("final_test_loss"),
        "best_test_accuracy": test.get("best_test_accuracy"),
        "best_test_loss": test.get("best_test_loss"),
        "test_count": test.get("test_count"),
        "epochs": last["epoch"],
        "steps": last["step"],
        "seed": config["seed"],
        "wall_s": wall_s,
        "config": json.loads(json.dumps(dict(config))),  # tuples -> lists, as read back
        "commit": commit,
    }


# What the end-of-run test evaluation adds to results.json and to the last metrics.jsonl record.
TEST_FIELDS = (
    "final_test_accuracy",
    "final_test_loss",
    "best_test_accuracy",
    "best_test_loss",
    "best_epoch",
    "test_count",
)


def test_fields(
    final: Mapping[str, float], best: Mapping[str, float] | None, best_epoch: int | None
) -> dict[str, Any]:
    """`TEST_FIELDS` from `jresnet.steps.evaluate`'s metrics of the final model and of the
    best checkpoint (None: there is no best checkpoint, e.g. converted weights)."""
    return {
        "final_test_accuracy": final["eval_accuracy"],
        "final_test_loss": final["eval_loss"],
        "best_test_accuracy": best["eval_accuracy"] if best else None,
        "best_test_loss": best["eval_loss"] if best else None,
        "best_epoch": best_epoch,
        "test_count": final["eval_count"],
    }


def protocol_warning(config: Mapping[str, Any]) -> str | None:
    """A warning if the best checkpoint is chosen on the test split itself, else None."""
    test_split = config.get("test_split", "")
    if test_split and test_split == config.get("eval_split"):
        return (
            f"--config.test_split={test_split} is also the eval split, on which the best "
            "checkpoint is chosen: its test accuracy is picked on the test set (flattering). "
            "Choose on a validation split: --config.train_split='train[:45000]' "
            "--config.eval_split='train[45000:]'"
        )
    return None


def format_test(results: Mapping[str, Any]) -> str:
    """The test part of the final summary line (empty without a test split)."""
    if results.get("final_test_accuracy") is None:
        return ""
    return (
        f"; test accuracy on {results['test_split']}: final "
        f"{100 * results['final_test_accuracy']:.2f}%, best checkpoint (epoch "
        f"{results['best_epoch']}) {100 * results['best_test_accuracy']:.2f}%"
    )


def still_valid(results: Mapping[str, Any] | None, config: Mapping[str, Any], steps: int) -> bool:
    """Whether ``results`` (a read ``results.json``) describe the run ``config`` ended at
    ``steps``: same step count and same dataset, data_dir, eval and test splits."""
    if not results or results.get("steps") != steps:
        return False
    saved = results.get("config", {})
    return all(saved.get(key) == config.get(key) for key in TEST_KEYS)


def write(workdir: str, results: Mapping[str, Any]) -> str:
    """Writes ``results`` to ``<workdir>/results.json`` atomically; returns the path."""
    path = os.path.join(workdir, RESULTS_FILE)
    safe_files.write_bytes(path, (json.dumps(dict(results), indent=2) + "\n").encode())
    return path


def read(workdir: str) -> dict[str, Any] | None:
    """``<workdir>/results.json``, or None if the run has not finished (no file).

    Raises `CheckpointError` if the file is not a JSON object.
    """
    path = os.path.join(workdir, RESULTS_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is unreadable ({e}); rerun the run to rewrite it") from e
    if not isinstance(results, dict):
        raise CheckpointError(f"{path} is not a JSON object; rerun the run to rewrite it")
    return results


def is_run_dir(path: str) -> bool:
    """Whether ``path`` holds a jresnet run's ``metrics.jsonl`` or ``results.json``."""
    return any(
        os.path.isfile(os.path.join(path, name)) for name in (reporting.METRICS_FILE, RESULTS_FILE)
    )
