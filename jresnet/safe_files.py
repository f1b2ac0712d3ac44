"""Writing files at paths the user gives: complete or absent, never through a planted symlink.

Every file jresnet writes (metrics, curves, exported models, converted weights, the work
directory's lock) goes through one of three openers here:

* `atomic_writer` / `write_bytes`: a new file in the target's directory, created with
  ``O_CREAT | O_EXCL | O_NOFOLLOW`` (so it is ours: nothing existed at that name), written,
  fsynced, then renamed onto the target. A reader sees the old file or the new one, never a
  torn one; a failure (disk full, a crash) leaves the target as it was and no temporary file.
* `open_for_append` / `append_bytes`: appends to a file (``metrics.jsonl``) with
  ``O_NOFOLLOW``.
* `open_lock_file`: opens (creating if needed) a lock file with ``O_NOFOLLOW``, never
  truncating it; it must be a regular file with one link.

A target that is a symbolic link is refused (`OutputError`): jresnet creates none, so one
there was planted, and following it would write a file somewhere else (a victim). Directories
above the target may be links (the user chose the path). A missing or read-only directory and
a full disk are `OutputError` s too, one line naming the path and what to do.

New regular files get mode ``0o644`` less the process umask, whatever library writes the
bytes (``safetensors`` alone would give ``0o600``, ``torch.save`` ``0o644``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Iterator
from typing import BinaryIO

from jresnet.errors import OutputError

FILE_MODE = 0o644  # less the umask (os.open applies it)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _describe(path: str, e: OSError) -> str:
    """One line: what went wrong writing ``path`` and what to do about it."""
    directory = os.path.dirname(os.path.abspath(path))
    if e.errno == errno.ENOENT and not os.path.isdir(directory):
        return f"can't write {path}: the directory {directory} does not exist; create it first"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (
            f"can't write {path}: {e.strerror} (is {directory} writable?); fix its "
            "permissions or choose another path"
        )
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"can't write {path}: no space left on the device; free some and rerun"
    if e.errno == errno.ELOOP:
        return _symlink_message(path)
    if e.errno == errno.EISDIR:
        return f"can't write {path}: it is a directory; choose a file path"
    return f"can't write {path}: {e.strerror or e}"


def _symlink_message(path: str) -> str:
    return (
        f"refusing to write {path}: it is a symbolic link, which jresnet never creates "
        "(writing through it would change another file); remove it or choose another path"
    )


def refuse_symlink(path: str | os.PathLike[str]) -> None:
    """Raises `OutputError` if ``path`` is a symbolic link (dangling or not)."""
    if os.path.islink(path):
        raise OutputError(_symlink_message(os.fspath(path)))


def check_target(path: str | os.PathLike[str]) -> None:
    """Raises `OutputError` now if `atomic_writer` would surely fail for ``path`` later.

    For commands that work a while before writing (export, convert): a symbolic link, a
    directory, a missing or unwritable parent directory are refused before the work.
    """
    path = os.fspath(path)
    refuse_symlink(path)
    if os.path.isdir(path):
        raise OutputError(f"can't write {path}: it is a directory; choose a file path")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise OutputError(_describe(path, OSError(errno.ENOENT, os.strerror(errno.ENOENT))))
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputError(_describe(path, OSError(errno.EACCES, os.strerror(errno.EACCES))))


def _temporary_path(path: str) -> str:
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.{secrets.token_hex(4)}.partial")


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory or ".", os.O_RDONLY | _CLOEXEC)
    except OSError:
        return  # durability only; the rename itself happened
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` when the block ends without an exception.

    The file is new (``O_EXCL``), in ``path``'s directory, mode ``0o644`` less the umask;
    on leaving the block it is flushed, fsynced and renamed onto ``path``. On an exception
    (in the block or while writing) it is removed and ``path`` is untouched; an `OSError`
    becomes `OutputError`. ``path`` itself must not be a symbolic link.
    """
    path = os.fspath(path)
    refuse_symlink(path)
    if os.path.isdir(path):
        raise OutputError(f"can't write {path}: it is a directory; choose a file path")
    partial = _temporary_path(path)
    try:
        fd = os.open(
            partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, FILE_MODE
        )
    except OSError as e:
        raise OutputError(_describe(path, e)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        refuse_symlink(path)  # planted while we wrote
        os.replace(partial, path)  # replaces a link planted since: never writes through it
    except OSError as e:
        raise OutputError(_describe(path, e)) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
    _fsync_directory(os.path.dirname(path))


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (see `atomic_writer`)."""
    with atomic_writer(path) as f:
        f.write(data)


def sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of the file at ``path``, as 64 hex digits."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _open_append_fd(path: str) -> int:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC, FILE_MODE)
    except OSError as e:
        raise OutputError(_describe(path, e)) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OutputError(f"refusing to append to {path}: it is not a regular file")
    return fd


def open_for_append(path: str | os.PathLike[str]) -> BinaryIO:
    """``path`` opened for appending (created if missing, mode ``0o644`` less the umask).

    Refuses (`OutputError`) a symbolic link and anything that is not a regular file.
    Write errors on the returned file are `OSError` s: wrap them with `output_error`, or
    use `append_bytes`.
    """
    return os.fdopen(_open_append_fd(os.fspath(path)), "ab")


def append_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Appends ``data`` to ``path`` (see `open_for_append`), all of it or none of it.

    A failed write (disk full) is cut back to the file's previous end, so no torn record
    is left, and raised as `OutputError`.
    """
    path = os.fspath(path)
    fd = _open_append_fd(path)
    try:
        end = os.fstat(fd).st_size
        remaining = memoryview(data)
        try:
            while remaining:
                remaining = remaining[os.write(fd, remaining) :]
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, end)
            raise OutputError(_describe(path, e)) from None
    finally:
        os.close(fd)


def open_lock_file(path: str | os.PathLike[str]) -> int:
    """A read-write descriptor of lock file ``path``, created if missing, never truncated.

    Refuses (`OutputError`) a symbolic link, a file that is not regular, and a file with
    more than one link (a hard link to someone else's file): the caller writes into it.
    """
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, FILE_MODE)
    except OSError as e:
        raise OutputError(_describe(path, e)) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise OutputError(
            f"refusing to use {path} as a lock: it is not a plain file of its own (a "
            "special file or a hard link to another file); remove it and rerun"
        )
    return fd


def output_error(path: str | os.PathLike[str], e: OSError) -> OutputError:
    """The one-line `OutputError` for ``e``, raised while writing ``path``."""
    return OutputError(_describe(os.fspath(path), e))
