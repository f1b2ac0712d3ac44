"""jresnet.prepare_data against hostile, corrupt and oversized input, and killed runs.

Every archive is built here, in ``tmp_path``; nothing needs the network or the real CIFAR.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

from jresnet import prepare_data, tfds_writer
from jresnet.errors import DataError, OutputError
from jresnet.prepare_data import prepare
from tests.conftest import REPO, run_module
from tests.test_prepare_data import (
    SPLITS10,
    add_file,
    assert_dataset_equals,
    binary_tarball,
    image_tree,
    py2_pickle,
)


def quiet(_: str) -> None:
    pass


def tree_tarball(tmp_path: Path, mode: str = "w:gz") -> Path:
    """A tar (``mode``) of a 40-image PNG folder tree."""
    path = tmp_path / ("cifar10.tar.gz" if mode == "w:gz" else "cifar10.tar")
    with tarfile.open(path, mode) as tar:
        tar.add(image_tree(tmp_path / "tree"), arcname="cifar10")
    return path


# --------------------------------------------------------------------------
# 1. Corrupt archives are errors, never a smaller dataset.


@pytest.mark.parametrize("back", [40, 400, 1500, 3000, 6000, 12000])
def test_random_bytes_near_the_end_of_a_tar_gz_are_an_error(tmp_path, back):
    path = tree_tarball(tmp_path)
    data = bytearray(path.read_bytes())
    start = len(data) - back
    data[start : start + 32] = np.random.default_rng(back).integers(0, 256, 32, np.uint8).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"cifar10\.tar\.gz"):
        prepare(path, tmp_path / "tfds", log=quiet)
    assert not (tmp_path / "tfds").exists()  # nothing is left of the failed run


def test_a_wrong_gzip_checksum_is_an_error(tmp_path):
    path = tree_tarball(tmp_path)
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the CRC-32 of the uncompressed tar, in the gzip trailer
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"cifar10\.tar\.gz.*(CRC|corrupt)"):
        prepare(path, tmp_path / "tfds", log=quiet)


def test_a_corrupt_member_header_in_a_plain_tar_is_an_error(tmp_path):
    path = tree_tarball(tmp_path, "w")
    with tarfile.open(path) as tar:
        last = tar.getmembers()[-1]
    data = bytearray(path.read_bytes())
    data[last.offset : last.offset + 8] = b"garbage!"  # its name; the checksum no longer holds
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"cifar10\.tar.*corrupt"):
        prepare(path, tmp_path / "tfds", log=quiet)


def test_data_after_the_end_of_a_tar_is_an_error(tmp_path):
    path = tree_tarball(tmp_path, "w")
    with open(path, "ab") as f:
        f.write(b"a second archive, or garbage" * 100)
    with pytest.raises(DataError, match=r"cifar10\.tar.*after the end-of-archive marker"):
        prepare(path, tmp_path / "tfds", log=quiet)


def test_an_official_format_archive_must_hold_the_official_counts(tmp_path):
    source = binary_tarball(tmp_path / "cifar-10-binary.tar.gz")  # 20 train, 20 test
    with pytest.raises(DataError, match=r"20 train examples.*50,000"):
        prepare(source, tmp_path / "tfds", log=quiet)


def test_an_image_folder_of_other_counts_is_a_warning(tmp_path):
    lines = []
    prepare(image_tree(tmp_path / "tree"), tmp_path / "tfds", log=lines.append)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert any("20 train images" in w and "50,000" in w for w in warnings), lines
    assert_dataset_equals(tmp_path / "tfds", "cifar10", SPLITS10)


# --------------------------------------------------------------------------
# 3 and 7. Clear messages and exit code 2 instead of tracebacks.


def unwritable_dir(tmp_path: Path) -> Path:
    """A directory this process cannot create anything in."""
    if os.geteuid() != 0:
        path = tmp_path / "read-only"
        path.mkdir()
        path.chmod(0o555)
        return path
    # Permission bits do not stop root; sysfs refuses new entries even to root.
    if not Path("/sys/kernel").is_dir():
        pytest.skip("needs Linux sysfs when run as root")
    return Path("/sys")


@pytest.mark.parametrize(
    "case", ["truncated", "data_dir_is_a_file", "unwritable", "unwritable_parent", "missing"]
)
def test_cli_user_errors_exit_2_with_a_message(tmp_path, case):
    source, data_dir, expected = tree_tarball(tmp_path), tmp_path / "tfds", ""
    if case == "truncated":
        source.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
        expected = "truncated or corrupt"
    elif case == "data_dir_is_a_file":
        data_dir.write_text("not a directory")
        expected = "not a directory"
    elif case == "unwritable":
        data_dir = unwritable_dir(tmp_path)
        expected = "cannot write in the data directory"
    elif case == "unwritable_parent":
        data_dir = unwritable_dir(tmp_path) / "tfds"
        expected = "cannot create the data directory"
    else:
        source = tmp_path / "missing.tar.gz"
        expected = "does not exist"
    result = run_module("jresnet.prepare_data", "--from", str(source), "--data_dir", str(data_dir))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(prepare_data, "prepare", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        prepare_data.main(["--from", str(tmp_path), "--data_dir", str(tmp_path / "tfds")])


# --------------------------------------------------------------------------
# 3. Interrupted runs leave nothing behind after the next one.

KILL_WHILE_WRITING = """
import os, signal, sys
from jresnet import prepare_data, tfds_writer

encode = tfds_writer._encode_png
calls = []

def encode_then_die(image):
    calls.append(1)
    if len(calls) == 5:  # in the middle of writing the train split
        os.kill(os.getpid(), signal.SIGKILL)
    return encode(image)

tfds_writer._encode_png = encode_then_die
prepare_data.prepare(sys.argv[1], sys.argv[2], overwrite=sys.argv[3] == "1")
"""


def kill_while_writing(source: Path, data_dir: Path, overwrite: bool) -> None:
    result = subprocess.run(
        [sys.executable, "-c", KILL_WHILE_WRITING, str(source), str(data_dir), str(int(overwrite))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr


def all_paths(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_a_killed_prepare_is_cleaned_up_by_the_next_run(tmp_path):
    tree, data_dir = image_tree(tmp_path / "tree"), tmp_path / "tfds"
    kill_while_writing(tree, data_dir, overwrite=False)
    assert all_paths(data_dir)  # something was left
    lines = []
    prepare(tree, data_dir, log=lines.append)
    assert any("interrupted" in line for line in lines), lines
    assert sorted(p.name for p in data_dir.iterdir()) == ["cifar10"]
    assert sorted(p.name for p in (data_dir / "cifar10").iterdir()) == ["3.0.2"]
    assert_dataset_equals(data_dir, "cifar10", SPLITS10)


def test_a_killed_overwrite_keeps_the_old_dataset_and_is_cleaned_up(tmp_path):
    tree, data_dir = image_tree(tmp_path / "tree"), tmp_path / "tfds"
    prepare(tree, data_dir, log=quiet)
    before = all_paths(data_dir)
    kill_while_writing(tree, data_dir, overwrite=True)
    assert all_paths(data_dir) != before  # the interrupted run left its work behind
    with pytest.raises(OutputError, match="already exists"):
        prepare(tree, data_dir, log=quiet)
    assert all_paths(data_dir) == before
    assert_dataset_equals(data_dir, "cifar10", SPLITS10)


def test_the_work_of_a_running_prepare_is_left_alone(tmp_path):
    data_dir = tmp_path / "tfds"
    data_dir.mkdir()
    with tfds_writer._staging_dir(data_dir, quiet) as running:
        (running / "work").write_text("in progress")
        prepare(image_tree(tmp_path / "tree"), data_dir, log=quiet)
        assert (running / "work").read_text() == "in progress"
    assert sorted(p.name for p in data_dir.iterdir()) == ["cifar10"]


def test_leftovers_of_runs_without_a_lock_are_named_not_removed(tmp_path):
    data_dir = tmp_path / "tfds"
    leftovers = [data_dir / ".jresnet_overwrite_x1", data_dir / "cifar10" / "incomplete.ABC_3.0.2"]
    for path in leftovers:
        path.mkdir(parents=True)
    lines = []
    prepare(image_tree(tmp_path / "tree"), data_dir, log=lines.append)
    for path in leftovers:
        assert path.is_dir()
        assert any(line.startswith(f"warning: {path}") for line in lines), lines
    assert_dataset_equals(data_dir, "cifar10", SPLITS10)


# --------------------------------------------------------------------------
# 4. Sizes are checked before anything big is read or decoded.


def test_an_oversized_member_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        add_file(tar, "cifar-10-batches-py/batches.meta", py2_pickle({"label_names": []}))
        add_file(tar, "cifar-10-batches-py/data_batch_1", bytes(64 << 20))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"data_batch_1.*67,108,864 bytes.*limit"):
            prepare(path, tmp_path / "tfds", log=quiet)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"peak Python allocations {peak / 2**20:.0f} MiB"


def png_of_zeros(width: int, height: int) -> bytes:
    """A valid all-black 8-bit RGB PNG, built without ever holding its pixels.

    The zlib stream of ``height`` rows of zeros (filter byte + ``3 * width`` bytes) repeats
    one full-flushed deflate block of 1 MiB of zeros; the Adler-32 of ``n`` zero bytes is
    ``(n % 65521) << 16 | 1``.
    """
    total = height * (1 + 3 * width)
    chunk = 1 << 20
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflate.compress(bytes(chunk))
    deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(bytes(chunk)) + deflate.flush(zlib.Z_FULL_FLUSH)
    tail = deflate.compress(bytes(total % chunk)) + deflate.flush()
    adler32 = ((total % 65521) << 16 | 1).to_bytes(4, "big")
    idat = b"\x78\xda" + block * (total // chunk) + tail + adler32

    def chunk_of(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk_of(b"IHDR", header)
        + chunk_of(b"IDAT", idat)
        + chunk_of(b"IEND", b"")
    )


def test_a_huge_image_is_refused_from_its_header(tmp_path):
    tree = image_tree(tmp_path / "tree")
    (tree / "train" / "cat" / "huge.png").write_bytes(png_of_zeros(12000, 12000))
    child = textwrap.dedent(
        """
        import resource, sys
        from jresnet import errors, sources
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            sources.read_source(sys.argv[1])
        except errors.DataError as e:
            print(e)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", child, str(tree)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    message, growth_kib = result.stdout.strip().splitlines()
    assert "train/cat/huge.png: a 12000x12000 RGB image" in message
    scale = 1024 if sys.platform == "darwin" else 1  # ru_maxrss: bytes on macOS, KiB on Linux
    assert int(growth_kib) // scale < 64 << 10, f"peak RSS grew by {growth_kib} KiB"


# --------------------------------------------------------------------------
# 5. Messages name the file.


def test_a_file_that_is_no_image_is_named(tmp_path):
    tree = image_tree(tmp_path / "tree")
    (tree / "train" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"train/cat/notes\.txt") as error:
        prepare(tree, tmp_path / "tfds", log=quiet)
    assert "BytesIO" not in str(error.value) and "0x" not in str(error.value)
