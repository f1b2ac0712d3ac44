"""jresnet.workdir: clear errors, and one run per work directory."""

import os
import subprocess
import sys

import pytest

from jresnet import workdir
from jresnet.errors import ConfigError, OutputError
from tests.conftest import REPO, TINY, train_command


def test_prepare_rejects_a_file_and_keeps_it(tmp_path):
    path = tmp_path / "file"
    path.write_text("precious")
    with pytest.raises(ConfigError, match="not a directory"):
        workdir.prepare(str(path))
    with pytest.raises(ConfigError, match="can't be created"):
        workdir.prepare(str(path / "sub"))
    assert path.read_text() == "precious"


def test_prepare_without_create_does_not_create(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        workdir.prepare(str(tmp_path / "missing"), create=False)
    assert not (tmp_path / "missing").exists()


_HOLD = """
import sys, time
from jresnet import workdir
with workdir.locked(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_run_is_refused_with_the_holder_named_and_the_lock_dies_with_it(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=rf"in use by another run \(pid {holder.pid} on"):
            with workdir.locked(str(tmp_path)):
                pass
    finally:
        holder.kill()  # like kill -9: the OS releases the lock
        holder.wait()
    with workdir.locked(str(tmp_path)):  # no stale lock
        pass


def test_the_lock_file_is_removed_when_the_run_ends(tmp_path):
    with workdir.locked(str(tmp_path)):
        assert (tmp_path / workdir.LOCK_FILE).read_text().startswith(f"pid {os.getpid()} ")
    assert not (tmp_path / workdir.LOCK_FILE).exists()


def test_a_planted_lock_symlink_is_refused_and_its_victim_untouched(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / workdir.LOCK_FILE).symlink_to(victim)
    with pytest.raises(OutputError, match="symbolic link"):
        with workdir.locked(str(tmp_path / "w")):
            pass
    assert victim.read_text() == "precious"


def test_train_py_with_a_planted_lock_symlink_exits_2_and_leaves_the_victim(tmp_path, data_dir):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    run = tmp_path / "w"
    run.mkdir()
    (run / workdir.LOCK_FILE).symlink_to(victim)
    command = train_command(run, **TINY, data_dir=data_dir)
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 2, result.stderr
    assert "symbolic link" in result.stderr
    assert "Traceback" not in result.stderr
    assert victim.read_text() == "precious"
