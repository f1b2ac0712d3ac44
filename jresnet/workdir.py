"""The work directory of a run: created with clear errors, and locked while a run uses it.

Two runs writing one work directory would mix their checkpoints and metrics, so a run holds
an exclusive `fcntl.flock` on ``<workdir>/.lock`` for its whole life. The OS releases the
lock when the process dies (even by ``kill -9``), so there is never a stale lock to clean
up. The file holds a line describing the holder (pid, host, start time, command), which the
refusal quotes. In a multi-process run only process 0 takes the lock: its other processes
are the same run.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
import sys
from collections.abc import Iterator

from jresnet.errors import ConfigError

LOCK_FILE = ".lock"


def prepare(workdir: str, create: bool = True) -> str:
    """The absolute path of ``workdir``, created if ``create``; clear errors otherwise."""
    path = os.path.abspath(os.path.expanduser(workdir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"--workdir {workdir!r} exists and is not a directory")
    if not create:
        if not os.path.isdir(path):
            raise ConfigError(f"--workdir {workdir!r} does not exist")
        return path
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--workdir {workdir!r} can't be created: {e.strerror}") from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir {workdir!r} is not writable")
    return path


def _holder_line() -> str:
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    command = " ".join(sys.argv) or sys.executable
    return f"pid {os.getpid()} on {socket.gethostname()}, started {started}: {command}\n"


@contextlib.contextmanager
def locked(path: str, take: bool = True) -> Iterator[None]:
    """Holds the exclusive lock of work directory ``path`` (if ``take``) inside the block.

    Raises `ConfigError` naming the holder if another process holds it.
    """
    if not take:
        yield
        return
    lock_path = os.path.join(path, LOCK_FILE)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with open(lock_path, errors="replace") as f:
                holder = f.read().strip() or "an unknown process"
            raise ConfigError(
                f"--workdir {path} is in use by another run ({holder}). Wait for it to "
                "finish, stop it, or choose another --workdir."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, _holder_line().encode())
        yield
    finally:
        os.close(fd)  # closing releases the lock
