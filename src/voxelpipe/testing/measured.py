"""A command run to its end with its wall time and its own peak memory, for tests and benchmarks.

A child's peak resident memory (``ru_maxrss``) includes what it held before it replaced itself with the command:
a child forked from a large process (a test session holding arrays, a benchmark) starts with the parent's
resident pages, and ``wait4`` then reports at least the parent's size. So the command is started by a small
Python trampoline: the trampoline forks the command from its own few megabytes and reports that grandchild's
``wait4`` figures.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

MARK = "VOXELPIPE_MEASURED "
TRAMPOLINE = f"""
import os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
sys.stderr.write("\\n{MARK}%d %.6f\\n" % (usage.ru_maxrss, time.perf_counter() - t0))
sys.exit(os.waitstatus_to_exitcode(status))
"""


@dataclass
class Measured:
    """``seconds``: wall time of the command from its start to its exit (the trampoline's own start-up is not
    counted); ``peak_bytes``: the command's peak resident memory (its own,
    and that of the children it waited for); ``returncode``, ``stdout``, ``stderr`` as in :mod:`subprocess`."""

    seconds: float
    peak_bytes: int
    returncode: int
    stdout: str
    stderr: str


def run_measured(cmd: list[str], env: dict | None = None, cwd: str | None = None) -> Measured:
    """Run ``cmd`` to its end through the trampoline (see the module docstring).

    Args:
        cmd: The program and its arguments (looked up on PATH like ``execvp``).
        env, cwd: As for :class:`subprocess.Popen`.

    Returns:
        The run's figures and output; ``peak_bytes`` is 0 if the trampoline could not report.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        returncode = subprocess.call([sys.executable, "-c", TRAMPOLINE, *cmd], stdout=out, stderr=err, env=env,
                                     cwd=cwd)
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    peak = 0
    head, found, tail = stderr.rpartition("\n" + MARK)
    if found:
        figures = tail.split()
        peak, seconds = int(figures[0]) * 1024, float(figures[1])
        stderr = head
    return Measured(seconds, peak, returncode, stdout, stderr)


__all__ = ["Measured", "run_measured"]
