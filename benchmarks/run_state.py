"""A long run's resumable state, packed into the repository to go on on another machine.

The seed recipe's runs (`benchmarks.seed_recipe`) take longer than one sitting at a machine,
and the machine of the next sitting may be another one with an empty disk: the only thing
that travels is the repository. ``pack`` copies a run's newest resumable state into it,
``unpack`` puts it into a new work directory, and the run's own command, rerun there,
resumes from it (both runs resume exactly from their saved state).

Layout under a results directory::

    RESULTS/seed-recipe/NAME/resume/state.json       what was packed, when, from which machine,
                                                     and the SHA-256 of every file
    RESULTS/seed-recipe/NAME/resume/checkpoints/STEP/   jresnet: the newest complete Orbax
                                                     checkpoint of the work directory, as is
    RESULTS/seed-recipe/NAME/resume/checkpoint.pt    benchmarks.torch_seed: its checkpoint
    RESULTS/seed-recipe/NAME/resume/config.json      ... and its config

Command lines::

    python -m benchmarks.run_state pack NAME WORKDIR [--results results]
    python -m benchmarks.run_state unpack NAME WORKDIR [--results results]

``pack`` may run while the run goes: jresnet renames each checkpoint into place once it is
complete and torch_seed replaces ``checkpoint.pt`` by a rename, so what it copies is whole;
each copy is checked against its source's SHA-256 afterwards (a checkpoint deleted or
replaced during the copy makes ``pack`` fail: pack again). The new ``resume/`` is written
beside the old one and swapped in, so a failed pack leaves the previous one as it was.
A jresnet checkpoint carries the run's metrics history, and torch_seed's carries its
records, so the resumed run rewrites ``metrics.jsonl`` whole (TensorBoard's event files
are not carried: the resumed run's start there with its first epoch).

``unpack`` checks every file against ``state.json`` and copies them into ``WORKDIR``
(created if needed), each put in place by a rename. It refuses a work directory that
already holds a run's state (a jresnet checkpoint, a ``checkpoint.pt``): mixing two runs'
states would make one of them resume from the other's.

On another CPU, XLA and PyTorch may pick other kernels and round differently, so the rest of
the run is the continuation of the same state on that machine, not bit for bit what the
first machine would have computed; ``seed_recipe snapshot`` records which machine ran which
epochs. Once a run has finished, its ``resume/`` is no longer needed (its results are the
records and the final weights): remove it with ``git rm -r``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from benchmarks import machine, seed_recipe
from jresnet import safe_files
from jresnet.errors import ConfigError, run_cli

RESUME_DIR = seed_recipe.RESUME_SUBDIR
STATE_FILE = "state.json"
# jresnet.checkpoint.CHECKPOINT_DIR, benchmarks.torch_seed.CHECKPOINT_FILE and CONFIG_FILE
# (not imported: they load JAX and PyTorch, which copying files does not need).
JRESNET_CHECKPOINTS = "checkpoints"
TORCH_FILES = ("config.json", "checkpoint.pt")  # the checkpoint last: it makes the state


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _jresnet_steps(workdir: str) -> list[int]:
    """The steps of the complete checkpoints in ``workdir`` (Orbax gives an unfinished
    one a suffix: its name is not a number)."""
    directory = os.path.join(workdir, JRESNET_CHECKPOINTS)
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def state_files(name: str, workdir: str) -> list[str]:
    """The files (relative to ``workdir``) that make run ``name``'s newest resumable state:
    every file of jresnet's newest complete checkpoint, or torch_seed's config and
    checkpoint. Raises `ConfigError` if ``workdir`` holds none."""
    if name == "jresnet":
        steps = _jresnet_steps(workdir)
        if not steps:
            raise ConfigError(
                f"{workdir} holds no complete jresnet checkpoint (no {JRESNET_CHECKPOINTS}/STEP/): "
                "give the --workdir of a jresnet run, after its first checkpoint"
            )
        root = os.path.join(JRESNET_CHECKPOINTS, str(steps[-1]))
        return sorted(
            os.path.relpath(os.path.join(directory, file), workdir)
            for directory, _, files in os.walk(os.path.join(workdir, root))
            for file in files
        )
    if name == "pytorch":
        missing = [f for f in TORCH_FILES if not os.path.exists(os.path.join(workdir, f))]
        if missing:
            raise ConfigError(
                f"{workdir} has no {' or '.join(missing)}: give the --workdir of a "
                "benchmarks.torch_seed run, after its first epoch"
            )
        return list(TORCH_FILES)
    raise ConfigError(f"unknown run name {name!r}; one of {', '.join(seed_recipe.RUNS)}")


def held_state(name: str, workdir: str) -> str | None:
    """What of a run's state ``workdir`` holds, in words, or None if nothing."""
    if name == "jresnet" and _jresnet_steps(workdir):
        return f"jresnet checkpoints up to step {_jresnet_steps(workdir)[-1]}"
    if name == "pytorch" and os.path.exists(os.path.join(workdir, TORCH_FILES[-1])):
        return TORCH_FILES[-1]
    return None


def resume_dir(results_dir: str, name: str) -> str:
    return os.path.join(results_dir, seed_recipe.SUBDIR, name, RESUME_DIR)


def pack(name: str, workdir: str, results_dir: str) -> dict[str, Any]:
    """Copies run ``name``'s newest resumable state from ``workdir`` into
    ``results_dir/seed-recipe/NAME/resume/`` (replacing what was there) with its
    ``state.json``; returns that. Only reads ``workdir``."""
    files = state_files(name, workdir)
    out = resume_dir(results_dir, name)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{RESUME_DIR}-", dir=os.path.dirname(out))
    try:
        digests = {}
        for file in files:
            source, copy = os.path.join(workdir, file), os.path.join(staging, file)
            os.makedirs(os.path.dirname(copy), exist_ok=True)
            try:
                shutil.copyfile(source, copy)
                same = _sha256(source) == _sha256(copy)
            except FileNotFoundError:
                same = False
            if not same:
                raise ConfigError(
                    f"{source} changed while it was copied (the run saved meanwhile); pack again"
                )
            digests[file] = _sha256(copy)
        records = seed_recipe.read_records(os.path.join(workdir, seed_recipe.METRICS_FILE))
        cpu = machine.machine_info()
        info = {
            "name": name,
            "workdir": os.path.abspath(workdir),
            "epochs_recorded": records[-1]["epoch"] if records else 0,
            "machine": {"cpu": cpu["cpu"], "cores": cpu["logical_cpus"]},
            "packed_utc": datetime.datetime.now(datetime.timezone.utc).strftime(
                "%Y-%m-%d %H:%M UTC"
            ),
            "sha256": digests,
        }
        if name == "jresnet":
            info["step"] = int(files[0].split(os.sep)[1])
        safe_files.write_bytes(
            os.path.join(staging, STATE_FILE), (json.dumps(info, indent=2) + "\n").encode()
        )
        old = None
        if os.path.exists(out):
            old = tempfile.mkdtemp(prefix=f".{RESUME_DIR}-old-", dir=os.path.dirname(out))
            os.replace(out, os.path.join(old, RESUME_DIR))
        os.replace(staging, out)
        if old:
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
        if not os.path.exists(copy) or _sha256(copy) != digest:
            raise ConfigError(
                f"{copy} is {'missing' if not os.path.exists(copy) else 'not what was packed'} "
                "(SHA-256 differs from state.json): check out the results directory again"
            )
    return info


def unpack(name: str, workdir: str, results_dir: str) -> dict[str, Any]:
    """Copies run ``name``'s packed state into ``workdir``, which must hold no run state;
    returns its ``state.json``. Rerunning the run's command in ``workdir`` resumes from it."""
    info = read_state(results_dir, name)
    held = held_state(name, workdir)
    if held:
        raise ConfigError(
            f"{workdir} already holds a run's state ({held}); unpacking would mix two runs' "
            "states. Resume that run with its own command, or unpack into another work "
            "directory (or move this one aside first)"
        )
    os.makedirs(workdir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".unpack-", dir=workdir)
    try:
        for file in info["sha256"]:
            os.makedirs(os.path.dirname(os.path.join(staging, file)), exist_ok=True)
            shutil.copyfile(
                os.path.join(resume_dir(results_dir, name), file), os.path.join(staging, file)
            )
        # One rename puts the state in place: jresnet's checkpoint directory, or torch_seed's
        # config and then its checkpoint (`TORCH_FILES` order).
        tops = [os.path.join(JRESNET_CHECKPOINTS, str(info["step"]))] if "step" in info else []
        for top in tops or list(TORCH_FILES):
            os.makedirs(os.path.dirname(os.path.join(workdir, top)), exist_ok=True)
            os.replace(os.path.join(staging, top), os.path.join(workdir, top))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return info


def _where(info: dict[str, Any]) -> str:
    step = f"step {info['step']}, " if "step" in info else ""
    return (
        f"{step}{info['epochs_recorded']} epochs recorded; packed {info['packed_utc']} on "
        f"{info['machine']['cpu']}, {info['machine']['cores']} cores"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run_state", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for command, text in (
        ("pack", "copy a run's newest resumable state into RESULTS/seed-recipe/NAME/resume/"),
        ("unpack", "copy the packed state into a work directory, to resume the run there"),
    ):
        sub = commands.add_parser(command, help=text)
        sub.add_argument("name", choices=list(seed_recipe.RUNS))
        sub.add_argument("workdir")
        sub.add_argument("--results", default="results")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def job() -> None:
        if args.command == "pack":
            info = pack(args.name, args.workdir, args.results)
            print(f"packed {args.name} into {resume_dir(args.results, args.name)}: {_where(info)}")
        else:
            info = unpack(args.name, args.workdir, args.results)
            print(
                f"unpacked {args.name} into {args.workdir} ({_where(info)}); rerun its command "
                "there to resume"
            )

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
