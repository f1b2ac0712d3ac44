"""``python tests/interrupt.py HOW train.py ARGS...``: runs ``train.py`` and interrupts it
at a chosen moment, deterministically (no polling from outside):

* ``kill-inside-save=STEP``: ``kill -9`` inside the save of the checkpoint at ``STEP``, after
  Orbax has written all its files into the temporary directory and before the rename that
  commits it (the last moment a crash can hit a save);
* ``sigterm-at-first-progress``: SIGTERM to itself while the first progress line inside an
  epoch is printed, as a cluster would send it before preemption.
"""

import os
import runpy
import signal
import sys

from jresnet import xla_setup

xla_setup.configure_cpu_flags()  # as train.py does, before JAX is imported

from orbax.checkpoint._src.path import atomicity  # noqa: E402

from jresnet import reporting  # noqa: E402


def kill_inside_save(step: str) -> None:
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize_or_die(self):
        if self._final_path.name == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return await finalize(self)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize_or_die


def sigterm_at_first_progress() -> None:
    update = reporting.Progress.update

    def update_then_sigterm(self, *args, **kwargs):
        update(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        reporting.Progress.update = update

    reporting.Progress.update = update_then_sigterm


how, _, value = sys.argv.pop(1).partition("=")
{
    "kill-inside-save": lambda: kill_inside_save(value),
    "sigterm-at-first-progress": sigterm_at_first_progress,
}[how]()
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
