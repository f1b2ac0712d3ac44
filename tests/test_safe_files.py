"""jresnet.safe_files: complete-or-absent writes, no writing through planted symlinks."""

import os
import stat

import pytest

from jresnet import safe_files
from jresnet.errors import OutputError


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_write_bytes_replaces_the_file_with_mode_644_less_umask_and_leaves_no_temporary(
    tmp_path,
):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    safe_files.write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert _mode(target) == 0o644 & ~_umask()
    assert os.listdir(tmp_path) == ["out.bin"]


def test_a_failure_inside_the_block_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with safe_files.atomic_writer(target) as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_a_symlinked_target_is_refused_and_its_victim_untouched(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / "out.bin"
    link.symlink_to(victim)
    with pytest.raises(OutputError, match="symbolic link"):
        safe_files.write_bytes(link, b"evil")
    with pytest.raises(OutputError, match="symbolic link"):
        safe_files.open_for_append(link)
    assert victim.read_bytes() == b"precious"
    assert os.path.islink(link)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="symbolic link"):
        safe_files.write_bytes(dangling, b"evil")
    assert not (tmp_path / "nowhere").exists()


def test_a_missing_directory_is_one_line_naming_it(tmp_path):
    with pytest.raises(OutputError, match=r"nodir does not exist; create it") as caught:
        safe_files.write_bytes(tmp_path / "nodir" / "x.onnx", b"x")
    assert "\n" not in str(caught.value)
    with pytest.raises(OutputError, match=r"does not exist"):
        safe_files.open_for_append(tmp_path / "nodir" / "metrics.jsonl")


def test_a_read_only_directory_is_one_line_saying_what_to_do(tmp_path, monkeypatch):
    # The tests may run as root, which writes into 0o555 directories: the OS's answer for a
    # read-only directory is stood in for at os.open.
    directory = tmp_path / "ro"
    directory.mkdir()

    def read_only(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(safe_files.os, "open", read_only)
    with pytest.raises(OutputError, match=r"Permission denied.*choose another path") as caught:
        safe_files.write_bytes(directory / "x.bin", b"x")
    assert "\n" not in str(caught.value)
    monkeypatch.undo()
    assert os.listdir(directory) == []


def test_a_directory_as_target_is_refused(tmp_path):
    with pytest.raises(OutputError, match="is a directory"):
        safe_files.write_bytes(tmp_path, b"x")


def test_open_for_append_appends_and_creates_with_mode_644_less_umask(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for line in (b"a\n", b"b\n"):
        with safe_files.open_for_append(path) as f:
            f.write(line)
    assert path.read_bytes() == b"a\nb\n"
    assert _mode(path) == 0o644 & ~_umask()


def test_open_lock_file_never_truncates_and_refuses_links(tmp_path):
    lock = tmp_path / ".lock"
    lock.write_bytes(b"holder")
    fd = safe_files.open_lock_file(lock)
    os.close(fd)
    assert lock.read_bytes() == b"holder"

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    symlink = tmp_path / "sym.lock"
    symlink.symlink_to(victim)
    with pytest.raises(OutputError, match="symbolic link"):
        safe_files.open_lock_file(symlink)
    hardlink = tmp_path / "hard.lock"
    os.link(victim, hardlink)
    with pytest.raises(OutputError, match="hard link"):
        safe_files.open_lock_file(hardlink)
    assert victim.read_bytes() == b"precious"


def test_output_error_says_disk_full_in_one_line(tmp_path):
    error = safe_files.output_error(tmp_path / "m", OSError(28, "No space left on device"))
    assert isinstance(error, OutputError)
    assert "no space left" in str(error)


def test_append_bytes_appends_and_a_failed_write_leaves_no_torn_record(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    safe_files.append_bytes(path, b'{"epoch": 1}\n')
    safe_files.append_bytes(path, b'{"epoch": 2}\n')
    assert path.read_bytes() == b'{"epoch": 1}\n{"epoch": 2}\n'
    real_write = os.write

    def disk_full_after_3_bytes(fd, data):
        real_write(fd, bytes(data[:3]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safe_files.os, "write", disk_full_after_3_bytes)
    with pytest.raises(OutputError, match="no space left"):
        safe_files.append_bytes(path, b'{"epoch": 3}\n')
    assert path.read_bytes() == b'{"epoch": 1}\n{"epoch": 2}\n'


def test_check_target_refuses_before_any_work(tmp_path):
    safe_files.check_target(tmp_path / "fine.onnx")  # nothing raised, nothing written
    assert os.listdir(tmp_path) == []
    with pytest.raises(OutputError, match="does not exist; create it"):
        safe_files.check_target(tmp_path / "nodir" / "x.onnx")
    with pytest.raises(OutputError, match="is a directory"):
        safe_files.check_target(tmp_path)
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OutputError, match="symbolic link"):
        safe_files.check_target(tmp_path / "link")
