"""The command lines' error handling: exit codes, and the third-party noise they keep quiet."""

from __future__ import annotations

import subprocess
import sys

from jresnet import errors

_SCRIPT = """
import sys
from jresnet import errors

class RaisesWhenCollected:
    def __init__(self, error):
        self.error = error

    def __del__(self):  # Python reports this through sys.unraisablehook
        raise self.error

def main():
    RaisesWhenCollected(RuntimeError("Event loop is closed"))
    RaisesWhenCollected(ValueError("a real problem"))
    raise errors.DataError("bad data")

sys.exit(errors.run_cli(main))
"""


def test_run_cli_drops_closed_loop_noise_keeps_other_exceptions_and_exits_2():
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == errors.EXIT_USAGE
    assert "Event loop is closed" not in result.stderr
    assert "a real problem" in result.stderr  # other unraisable errors still show
    assert result.stderr.strip().endswith("error: bad data")
