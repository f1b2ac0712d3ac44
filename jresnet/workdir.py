"""The work directory of a run: created with clear errors, and locked while a run uses it.

Two runs writing one work directory would mix their checkpoints and metrics, so a run holds
an exclusive `fcntl.flock` on ``<workdir>/.lock`` for its whole life. The OS releases the
lock when the process dies (even by ``kill -9``), so there is never a stale lock to clean
up. The file holds a line describing the holder (pid, host, start time, command), which the
refusal quotes; it is removed when the run ends. A ``.lock`` that is a symbolic or hard
link was planted, and is refused rather than written through (`jresnet.safe_files`).
In a multi-process run only process 0 takes the lock: its other processes are the same run.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
import sys
from collections.abc import Iterator

from jresnet import safe_files
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


def _read_holder(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode(errors="replace").strip() or "an unknown process"


def _is_current(fd: int, lock_path: str) -> bool:
    """Whether ``fd`` is still the file at ``lock_path`` (a holder removes it on leaving)."""
    try:
        at_path = os.lstat(lock_path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (at_path.st_dev, at_path.st_ino) == (held.st_dev, held.st_ino)


@contextlib.contextmanager
def locked(path: str, take: bool = True) -> Iterator[None]:
    """Holds the exclusive lock of work directory ``path`` (if ``take``) inside the block.

    Raises `ConfigError` naming the holder if another process holds it, and `OutputError`
    if ``<path>/.lock`` is a symbolic link or a hard link (planted: never written through).
    The lock file is removed when the block ends; a process that opened it before the
    removal sees it is gone once it gets the lock, and takes the new one instead.
    """
    if not take:
        yield
        return
    lock_path = os.path.join(path, LOCK_FILE)
    while True:
        fd = safe_files.open_lock_file(lock_path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise ConfigError(
                f"--workdir {path} is in use by another run ({holder}). Wait for it to "
                "finish, stop it, or choose another --workdir."
            ) from None
        if _is_current(fd, lock_path):
            break
        os.close(fd)  # the holder removed it as we opened it: take the new one
    try:
        os.ftruncate(fd, 0)  # ours: a regular file with one link, and we hold its lock
        os.write(fd, _holder_line().encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock_path)  # still ours: removed before the lock is released
        os.close(fd)  # closing releases the lock
