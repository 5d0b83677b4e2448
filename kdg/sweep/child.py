"""One sweep job: `python -m kdg.sweep.child RECIPE` runs `kdg.training.run`
on the job's recipe (what `kdg train RECIPE --quiet` does) in a process that
does not outlive the launcher that started it.

On Linux the process asks the kernel to SIGKILL it when its parent dies
(`prctl(PR_SET_PDEATHSIG)`), so that a sweep killed with SIGKILL (or a Ray
worker that is cancelled) leaves no orphan training in the background: the
job's checkpoint is written atomically, so the next sweep resumes it. A fresh
process per job also means a fresh Keras backend, and a crash that takes only
this job down.
"""

from __future__ import annotations

import os
import signal
import sys

PARENT_VARIABLE = "KDG_SWEEP_PARENT"
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl
            pass
    parent = os.environ.get(PARENT_VARIABLE)
    if parent and os.getppid() != int(parent):
        # the launcher died before prctl took effect
        sys.exit(f"the sweep launcher (pid {parent}) is gone; not starting")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python -m kdg.sweep.child RECIPE")
    die_with_parent()
    from kdg.cli import _console, _fail, _known_errors
    from kdg.training import run

    try:
        run(argv[0], console=_console(), quiet=True)
    except _known_errors() as error:
        _fail(error)


if __name__ == "__main__":
    main()
