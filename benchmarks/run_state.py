"""A long run's resumable state, packed into the repository to go on on another machine.

The seed recipe's runs (`benchmarks.seed_recipe`) take longer than one sitting at a machine,
and the machine of the next sitting may be another one with an empty disk: the only thing
that travels is the repository. ``pack`` copies a run's resumable state into it, ``unpack``
puts it into a work directory, and the run's own command, rerun there, resumes from it
(both runs resume exactly from their saved state).

Layout under a results directory::

    RESULTS/seed-recipe/NAME/resume/state.json     what was packed, when, on which machine,
                                                   at which commit, the SHA-256 of each file
    RESULTS/seed-recipe/NAME/resume/metrics.jsonl  the run's complete epoch records
    RESULTS/seed-recipe/NAME/resume/checkpoints/STEP/   jresnet: its newest complete Orbax
                                                   checkpoint and its best one (by eval
                                                   accuracy, the one its retention keeps)
    RESULTS/seed-recipe/NAME/resume/checkpoint.pt  benchmarks.torch_seed: its checkpoint
    RESULTS/seed-recipe/NAME/resume/config.json    ... and its config

Command lines::

    python -m benchmarks.run_state pack NAME WORKDIR [--clone CLONE] [--results results]
    python -m benchmarks.run_state unpack NAME WORKDIR [--results results]

``pack`` only reads ``WORKDIR`` and may run while the run goes: jresnet renames each
checkpoint into place once it is complete and torch_seed replaces ``checkpoint.pt`` by a
rename, so what it copies is whole, and each copy is checked against its source afterwards
(a checkpoint deleted or replaced during the copy makes ``pack`` fail: pack again). The new
``resume/`` is written beside the old one and swapped in by two renames; a pack stopped in
between leaves the previous one in ``.resume-old-*/``, which the next pack puts back
before it starts. ``--clone`` records the commit of the clone that runs the code.

``unpack`` checks every file against ``state.json`` and, holding the work directory's lock
(`jresnet.workdir`: never under a live run), puts them in place, each by a rename. A work
directory that already holds a run's state is kept as it is when it is the same run further
along (its records begin with the packed ones, at a later step or epoch), and otherwise moved
aside to ``WORKDIR.before-unpack-TIME`` (kept, never deleted) before unpacking: two runs'
states are never mixed, and no run goes back.

What is not carried: TensorBoard's event files (the resumed run's begin with its first epoch
there), and jresnet's checkpoints other than the newest and the best. On another CPU, XLA
and PyTorch may choose other kernels and round differently, so the rest of the run is the
continuation of the same state on that machine, not bit for bit what the first machine would
have computed; ``seed_recipe snapshot`` records which machine ran which epochs. Once a run
has finished, its ``resume/`` is no longer needed: ``git rm -r`` it (every packed state stays
in the history).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from benchmarks import seed_recipe
from jresnet import safe_files
from jresnet import workdir as workdir_lib
from jresnet.errors import ConfigError, run_cli

RESUME = seed_recipe.RESUME_SUBDIR
STATE_FILE = "state.json"
METRICS_FILE = seed_recipe.METRICS_FILE
JRESNET_CHECKPOINTS = seed_recipe.CHECKPOINT_DIR
# jresnet.checkpoint.BEST_METRIC, Orbax's file of a checkpoint's metrics, and
# benchmarks.torch_seed's CONFIG_FILE and CHECKPOINT_FILE (not imported: they load JAX and
# PyTorch, which copying files does not need).
BEST_METRIC = "eval_accuracy"
ORBAX_METRICS = os.path.join("metrics", "metrics")
TORCH_CONFIG, TORCH_CHECKPOINT = "config.json", "checkpoint.pt"


def _best_step(workdir: str, steps: Sequence[int]) -> int | None:
    """The step of the kept checkpoint with the highest eval accuracy (the newest of equal
    ones); None if none has one (a mid-epoch save has no metrics)."""
    scored = []
    for step in steps:
        path = os.path.join(workdir, JRESNET_CHECKPOINTS, str(step), ORBAX_METRICS)
        try:
            with open(path) as f:
                scored.append((json.load(f)[BEST_METRIC], step))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return max(scored)[1] if scored else None


def state_files(name: str, workdir: str) -> tuple[list[int], list[str]]:
    """``(steps, files)`` of run ``name``'s resumable state in ``workdir``: for jresnet the
    steps packed (the best, then the newest) and every file of their checkpoints; for
    torch_seed no steps, its config and checkpoint. Paths relative to ``workdir``. Raises
    `ConfigError` if ``workdir`` holds no such state."""
    if name == "jresnet":
        steps = seed_recipe.checkpoint_steps(workdir)
        if not steps:
            raise ConfigError(
                f"{workdir} holds no complete jresnet checkpoint (no {JRESNET_CHECKPOINTS}/STEP/):"
                " give the --workdir of a jresnet run, after its first checkpoint"
            )
        best = _best_step(workdir, steps)
        packed = sorted({steps[-1], best if best is not None else steps[-1]})
        files = []
        for step in packed:
            found = [
                os.path.relpath(os.path.join(directory, file), workdir)
                for directory, _, names in os.walk(
                    os.path.join(workdir, JRESNET_CHECKPOINTS, str(step))
                )
                for file in names
            ]
            if not found:  # retention deleted the old best while it was listed
                raise ConfigError(f"{workdir}'s checkpoints changed while listed; pack again")
            files += found
        return packed, sorted(files)
    if name == "pytorch":
        missing = [
            f
            for f in (TORCH_CONFIG, TORCH_CHECKPOINT)
            if not os.path.exists(os.path.join(workdir, f))
        ]
        if missing:
            raise ConfigError(
                f"{workdir} has no {' or '.join(missing)}: give the --workdir of a "
                "benchmarks.torch_seed run, after its first epoch"
            )
        return [], [TORCH_CONFIG, TORCH_CHECKPOINT]
    raise ConfigError(f"unknown run name {name!r}; one of {', '.join(seed_recipe.RUNS)}")


def progress(name: str, workdir: str) -> int:
    """How far the run in ``workdir`` got: jresnet's newest checkpoint step, or the epochs
    of torch_seed's records (its checkpoint is saved just before each record is written)."""
    if name == "jresnet":
        steps = seed_recipe.checkpoint_steps(workdir)
        return steps[-1] if steps else 0
    return len(seed_recipe.read_records(os.path.join(workdir, METRICS_FILE)))


def held_state(workdir: str) -> str | None:
    """What run state ``workdir`` holds, of either run, in words; None if none."""
    steps = seed_recipe.checkpoint_steps(workdir)
    if steps:
        return f"jresnet checkpoints up to step {steps[-1]}"
    if os.path.exists(os.path.join(workdir, TORCH_CHECKPOINT)):
        return f"a torch_seed {TORCH_CHECKPOINT}"
    return None


def resume_dir(results_dir: str, name: str) -> str:
    return os.path.join(results_dir, seed_recipe.SUBDIR, name, RESUME)


def _tidy(parent: str) -> None:
    """Leftovers of packs that were stopped: puts back a previous ``resume/`` that a pack
    stopped between its two renames left in ``.resume-old-*/``, removes the rest."""
    target = os.path.join(parent, RESUME)
    for old in sorted(glob.glob(os.path.join(parent, f".{RESUME}-old-*"))):
        if not os.path.exists(target) and os.path.isdir(os.path.join(old, RESUME)):
            os.replace(os.path.join(old, RESUME), target)
        shutil.rmtree(old)
    for staging in glob.glob(os.path.join(parent, f".{RESUME}-new-*")):
        shutil.rmtree(staging)


def _copy_checked(source: str, copy: str) -> str:
    """Copies ``source`` to ``copy``; returns the copy's SHA-256, which must be the source's
    after the copy (`ConfigError` if the file changed or vanished meanwhile)."""
    os.makedirs(os.path.dirname(copy), exist_ok=True)
    try:
        shutil.copyfile(source, copy)
        digest = safe_files.sha256(copy)
        unchanged = safe_files.sha256(source) == digest
    except FileNotFoundError:
        unchanged = False
    if not unchanged:
        raise ConfigError(f"{source} changed while it was copied (the run saved); pack again")
    return digest


def _refuse_going_back(
    out: str, commit: str | None, records: Sequence[dict[str, Any]], progress_now: int
) -> None:
    """Raises `ConfigError` if ``out`` holds a packed state of the same run (same commit,
    its records beginning with ``records``) further along than ``progress_now``: packing
    would replace it with an older one."""
    path = os.path.join(out, STATE_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        packed = json.load(f)
    packed_records = seed_recipe.read_records(os.path.join(out, METRICS_FILE))
    if (
        packed.get("commit") == commit
        and seed_recipe.begins_with(packed_records, records)
        and packed["progress"] > progress_now
    ):
        unit = "step" if packed["steps"] else "epoch"
        raise ConfigError(
            f"{out} holds this run further along ({unit} {packed['progress']}, this work "
            f"directory {unit} {progress_now}): packing would go back. Unpack it there first "
            f"(python -m benchmarks.run_state unpack), or remove {out} to pack anyway"
        )


def pack(name: str, workdir: str, results_dir: str, clone: str | None = None) -> dict[str, Any]:
    """Copies run ``name``'s resumable state and records from ``workdir`` into
    ``results_dir/seed-recipe/NAME/resume/`` (replacing what was there) with its
    ``state.json``; returns that. Only reads ``workdir`` (and ``clone``)."""
    # The records first: a checkpoint saved meanwhile is newer, and its resume rewrites them.
    records = seed_recipe.read_records(os.path.join(workdir, METRICS_FILE))
    steps, files = state_files(name, workdir)
    out = resume_dir(results_dir, name)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    _tidy(parent)
    commit = seed_recipe.clone_commit(clone) if clone else None
    progress_now = steps[-1] if steps else len(records)  # as `progress` measures it
    _refuse_going_back(out, commit, records, progress_now)
    staging = tempfile.mkdtemp(prefix=f".{RESUME}-new-", dir=parent)
    try:
        metrics = "".join(json.dumps(r) + "\n" for r in records).encode()
        safe_files.write_bytes(os.path.join(staging, METRICS_FILE), metrics)
        digests = {METRICS_FILE: hashlib.sha256(metrics).hexdigest()}
        for file in files:
            digests[file] = _copy_checked(os.path.join(workdir, file), os.path.join(staging, file))
        info = {
            "name": name,
            "workdir": os.path.abspath(workdir),
            "commit": commit,
            "epochs_recorded": len(records),
            "progress": progress_now,
            "steps": steps,
            "machine": seed_recipe.this_machine(),
            "packed_utc": seed_recipe.utc_now(),
            "sha256": digests,
        }
        safe_files.write_bytes(
            os.path.join(staging, STATE_FILE), (json.dumps(info, indent=2) + "\n").encode()
        )
        old = tempfile.mkdtemp(prefix=f".{RESUME}-old-", dir=parent)
        if os.path.exists(out):
            os.replace(out, os.path.join(old, RESUME))
        os.replace(staging, out)
        shutil.rmtree(old)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return info


def read_state(results_dir: str, name: str) -> dict[str, Any]:
    """The ``state.json`` of run ``name``'s packed state, its files checked against it.
    Raises `ConfigError` if there is none or a file is missing or differs."""
    packed = resume_dir(results_dir, name)
    path = os.path.join(packed, STATE_FILE)
    if not os.path.exists(path):
        raise ConfigError(
            f"no packed state of {name} in {packed} (no {STATE_FILE}): "
            f"pack one with `python -m benchmarks.run_state pack {name} WORKDIR`"
        )
    with open(path) as f:
        info = json.load(f)
    for file, digest in info["sha256"].items():
        copy = os.path.join(packed, file)
        if not os.path.exists(copy):
            raise ConfigError(f"{copy} is missing: check out {packed} again")
        if safe_files.sha256(copy) != digest:
            raise ConfigError(
                f"{copy} is not what was packed (its SHA-256 differs from {STATE_FILE}'s): "
                f"check out {packed} again"
            )
    return info


def _continues(name: str, workdir: str, info: dict[str, Any], results_dir: str) -> bool:
    """Whether ``workdir``, which holds a run's state, holds the packed run further along
    (or as far): its records beginning with the packed ones, at least at its progress."""
    if progress(name, workdir) < max(info["progress"], 1):
        return False
    packed = seed_recipe.read_records(os.path.join(resume_dir(results_dir, name), METRICS_FILE))
    return seed_recipe.begins_with(
        seed_recipe.read_records(os.path.join(workdir, METRICS_FILE)), packed
    )


def unpack(name: str, workdir: str, results_dir: str) -> dict[str, Any]:
    """Puts run ``name``'s packed state into ``workdir`` (see the module docstring); returns
    its ``state.json`` with ``outcome``: what was done, in words. Rerunning the run's command
    in ``workdir`` then resumes it."""
    packed = resume_dir(results_dir, name)
    if os.path.isdir(os.path.dirname(packed)):
        _tidy(os.path.dirname(packed))  # a pack stopped half-way was committed
    info = read_state(results_dir, name)
    path = workdir_lib.prepare(workdir)
    with workdir_lib.locked(path):  # refuses a workdir that a live run holds
        held = held_state(path)
        if held and _continues(name, path, info, results_dir):
            return {
                **info,
                "outcome": f"kept {path}: it holds the same run, as far along or further",
            }
        aside = None
        if held:
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
            aside = f"{path}.before-unpack-{stamp}"
            os.rename(path, aside)  # the lock file goes with it: the lock is released below
    if aside:
        path = workdir_lib.prepare(workdir)
    with workdir_lib.locked(path):
        staging = tempfile.mkdtemp(prefix=".unpack-", dir=path)
        try:
            for file in info["sha256"]:
                os.makedirs(os.path.dirname(os.path.join(staging, file)), exist_ok=True)
                shutil.copyfile(os.path.join(packed, file), os.path.join(staging, file))
            # One rename per piece, the records first and what makes the state last: the
            # best checkpoint before the newest, torch_seed's config before its checkpoint.
            pieces = [os.path.join(JRESNET_CHECKPOINTS, str(step)) for step in info["steps"]]
            for piece in [METRICS_FILE, *(pieces or [TORCH_CONFIG, TORCH_CHECKPOINT])]:
                os.makedirs(os.path.dirname(os.path.join(path, piece)), exist_ok=True)
                os.replace(os.path.join(staging, piece), os.path.join(path, piece))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    moved = f"moved {held} aside to {aside}, then " if aside else ""
    return {**info, "outcome": f"{moved}unpacked into {path}"}


def describe(info: dict[str, Any]) -> str:
    """``state.json`` in words: how far, when, where."""
    step = f"step {info['steps'][-1]}, " if info["steps"] else ""
    return (
        f"{step}{info['epochs_recorded']} epochs recorded; packed {info['packed_utc']} on "
        f"{info['machine']['cpu']}, {info['machine']['cores']} cores"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run_state", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    pack_parser = commands.add_parser(
        "pack", help="copy a run's resumable state into RESULTS/seed-recipe/NAME/resume/"
    )
    unpack_parser = commands.add_parser(
        "unpack", help="put the packed state into a work directory, to resume the run there"
    )
    for sub in (pack_parser, unpack_parser):
        sub.add_argument("name", choices=list(seed_recipe.RUNS))
        sub.add_argument("workdir")
        sub.add_argument("--results", default="results")
    pack_parser.add_argument("--clone", help="the clone that runs the code (its commit is kept)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def job() -> None:
        if args.command == "pack":
            info = pack(args.name, args.workdir, args.results, args.clone)
            print(
                f"packed {args.name} into {resume_dir(args.results, args.name)}: {describe(info)}"
            )
        else:
            info = unpack(args.name, args.workdir, args.results)
            print(f"{info['outcome']} ({describe(info)}); rerun the run's command to resume")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
