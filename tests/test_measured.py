"""``voxelpipe.testing.measured``: a command's own peak memory, not the memory of the process that started it."""
from __future__ import annotations

import sys

import numpy as np

from voxelpipe.testing.measured import run_measured

MB = 2 ** 20


def test_peak_is_the_commands_own_not_the_callers():
    held = np.ones(600 * MB, np.uint8)  # this process holds 600 MB while the child runs
    small = run_measured([sys.executable, "-c", "pass"])
    big = run_measured([sys.executable, "-c", "b = bytearray(300 * 2 ** 20); b[::4096] = b'x' * len(b[::4096])"])
    assert held.sum() == 600 * MB
    assert small.returncode == 0 and big.returncode == 0, (small.stderr, big.stderr)
    # a bare interpreter needs tens of MB; one that touched 300 MB peaks above that
    assert 0 < small.peak_bytes < 100 * MB, small.peak_bytes
    assert 300 * MB <= big.peak_bytes < 500 * MB, big.peak_bytes


def test_exit_code_and_output_pass_through():
    done = run_measured([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"])
    assert done.returncode == 3
    assert done.stdout.strip() == "out" and done.stderr.strip() == "err"
    assert done.seconds > 0
