"""Reads the files of a directory or a tar archive into memory, checked and bounded.

Used by `jresnet.sources` on sources it did not make; problems raise `errors.DataError`.
What it guarantees:

- **Whole archives or an error.** `tarfile` treats a corrupt member header as the end of the
  archive and never reads a compressed archive to its end, so a damaged ``.tar.gz`` would
  silently give fewer files and its gzip CRC would never be checked. Here every archive is
  read to its last byte (which checks gzip's CRC-32 and length, and bzip2's and xz's
  checksums), the block where `tarfile` stopped must be a real end-of-archive marker, and all
  that follows it must be zero padding.
- **Bounded memory.** Each file's size is checked (``TarInfo.size`` or ``stat``) against a
  limit chosen by the caller before it is read, and so is the running total; files the caller
  does not need are listed but not read.
- **Nothing written.** Members are read into memory, never extracted, so their paths cannot
  escape anywhere; links, devices and directories are ignored.
"""

from __future__ import annotations

import dataclasses
import lzma
import os
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from jresnet.errors import DataError

# Read errors of damaged archives: tarfile's own, gzip's (BadGzipFile is an OSError, a stream
# that stops early an EOFError), zlib's, xz's; bz2 raises OSError.
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)
_DRAIN_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Files:
    """The regular files of a source.

    Attributes:
      contents: {posix path relative to the source root: bytes} of the files that were read.
      skipped: posix paths of the files the caller's ``limit`` said it does not need.
    """

    contents: dict[str, bytes]
    skipped: tuple[str, ...]


def read_files(path: Path, limit: Callable[[str], int | None], total_limit: int) -> Files:
    """Reads the regular files under a directory, or in a (compressed) tar archive.

    Hidden files and macOS metadata (``.DS_Store``, ``._x.jpg``, ``__MACOSX``) are ignored.

    Args:
      path: a directory, or a ``.tar`` / ``.tar.gz`` / ``.tar.bz2`` / ``.tar.xz`` file.
      limit: ``limit(relative_path)`` is the largest size in bytes that file may have, or
        None to skip it unread.
      total_limit: the largest number of bytes read in all.

    Raises:
      DataError: ``path`` is not a tar archive, cannot be read to its end (truncated,
        corrupt, bad checksum), or holds a file larger than its limit.
    """
    reader = _Reader(path, limit, total_limit)
    if path.is_dir():
        reader.read_directory()
    else:
        reader.read_tar()
    return Files(reader.contents, tuple(reader.skipped))


def is_junk(name: str) -> bool:
    """Hidden files and macOS metadata (``.DS_Store``, ``._x.jpg``, ``__MACOSX``)."""
    return (name.startswith(".") and name not in (".", "..")) or name == "__MACOSX"


class _Reader:
    """Collects files while enforcing the per-file and total size limits."""

    def __init__(self, path: Path, limit: Callable[[str], int | None], total_limit: int):
        self.path = path
        self.limit = limit
        self.total_limit = total_limit
        self.total = 0
        self.contents: dict[str, bytes] = {}
        self.skipped: list[str] = []

    def admit(self, name: str, size: int) -> bool:
        """Whether to read ``name`` (of ``size`` bytes); raises if it is over a limit."""
        limit = self.limit(name)
        if limit is None:
            self.skipped.append(name)
            return False
        if size > limit:
            raise DataError(
                f"{self.path}: {name} is {size:,} bytes, over the {limit:,}-byte limit for such "
                "a file; this is not the file the layout expects (refusing to read it)."
            )
        self.total += size
        if self.total > self.total_limit:
            raise DataError(
                f"{self.path}: its files add up to more than {self.total_limit:,} bytes, far "
                "more than any CIFAR release; refusing to read further."
            )
        return True

    def read_directory(self) -> None:
        for root, dirs, names in os.walk(self.path):
            dirs[:] = sorted(d for d in dirs if not is_junk(d))
            for name in sorted(names):
                full = Path(root) / name
                if is_junk(name) or not full.is_file():
                    continue
                relative = full.relative_to(self.path).as_posix()
                if self.admit(relative, full.stat().st_size):
                    self.contents[relative] = full.read_bytes()

    def read_tar(self) -> None:
        header_errors: list[tarfile.HeaderError] = []
        try:
            tar = tarfile.open(self.path, "r:*", tarinfo=_recording_tarinfo(header_errors))
        except tarfile.ReadError as e:
            raise DataError(
                f"{self.path} is neither a directory nor a tar archive (.tar, .tar.gz) that can "
                f"be read ({e}); expected cifar-10-python.tar.gz, cifar-10-binary.tar.gz or an "
                "image-folder tree."
            ) from e
        except _READ_ERRORS as e:
            raise self.damaged(e) from e
        with tar:
            try:
                for member in tar:
                    self.read_member(tar, member)
                self.check_end(tar, header_errors)
            except _READ_ERRORS as e:
                raise self.damaged(e) from e

    def read_member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = PurePosixPath(member.name)
        if not member.isfile() or any(is_junk(part) for part in name.parts):
            return
        relative = name.as_posix().removeprefix("./")
        if not self.admit(relative, member.size):
            return
        fileobj = tar.extractfile(member)
        assert fileobj is not None  # regular files always have contents
        data = fileobj.read()
        if len(data) != member.size:
            raise tarfile.ReadError(f"{relative} ends after {len(data)} of {member.size} bytes")
        self.contents[relative] = data

    def check_end(self, tar: tarfile.TarFile, header_errors: list[tarfile.HeaderError]) -> None:
        """Raises unless the archive ended at a zero block followed by zeros only."""
        last = header_errors[-1] if header_errors else None
        if isinstance(last, (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError)):
            raise tarfile.ReadError(f"it stops at byte {tar.offset:,}, before its end marker")
        if last is not None and not isinstance(last, tarfile.EOFHeaderError):
            raise tarfile.ReadError(
                f"corrupt tar header at byte {tar.offset:,} ({last}); the files after it would "
                "be lost"
            )
        # Read to the very end: decompressors check their checksums only there.
        while chunk := tar.fileobj.read(_DRAIN_CHUNK):
            if chunk.count(0) != len(chunk):
                raise tarfile.ReadError(
                    f"data after the end-of-archive marker at byte {tar.offset:,}: a corrupt "
                    "header, or several archives glued together"
                )

    def damaged(self, error: BaseException) -> DataError:
        return DataError(
            f"{self.path} cannot be read to its end: it is truncated or corrupt ({error}). "
            "Download or copy it again."
        )


def _recording_tarinfo(errors: list[tarfile.HeaderError]) -> type[tarfile.TarInfo]:
    """A `tarfile.TarInfo` that appends each header error to ``errors`` before tarfile sees it.

    `tarfile` reads past the first block the same way whether it met the end-of-archive
    marker (`tarfile.EOFHeaderError`) or a damaged header (`tarfile.InvalidHeaderError`): it
    just stops. Its ``tarinfo`` argument is the documented hook to tell the two apart.
    """

    class RecordingTarInfo(tarfile.TarInfo):
        @classmethod
        def fromtarfile(cls, tar):
            try:
                return super().fromtarfile(tar)
            except tarfile.HeaderError as e:
                errors.append(e)
                raise

    return RecordingTarInfo
