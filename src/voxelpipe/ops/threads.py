"""Kernels over runs of slices on threads: parallel without numba's ``parallel=True``.

The kernels release the GIL (``nogil``), so a plain thread pool runs them in parallel as well as numba's own
threads do, while a serial kernel compiles several times faster than a ``parallel=True`` one (which matters
on the first run, when nothing is in the compiled-kernel cache yet). The thread count is numba's
(``numba.get_num_threads()``, which the execution layer sizes per worker).
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numba

R = TypeVar("R")

_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def thread_count() -> int:
    """Threads a kernel call may use in this thread: numba's thread count."""
    return max(1, numba.get_num_threads())


def thread_pool(threads: int) -> ThreadPoolExecutor:
    """A pool of ``threads`` threads, created on first use and kept for later calls."""
    with _pools_lock:
        pool = _pools.get(threads)
        if pool is None:
            pool = _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="voxelpipe-kernel")
        return pool


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous runs ``(start, stop)`` covering ``0..n`` (at least one run, at most ``n``)."""
    parts = max(1, min(n, parts))
    return [(p * n // parts, (p + 1) * n // parts) for p in range(parts)]


def run_ranges(task: Callable[[int, int], R], n: int, runs_per_thread: int = 1) -> list[R]:
    """``task(start, stop)`` for contiguous runs covering ``0..n``, on :func:`thread_count` threads (in this
    thread when that is 1 or there is one run); results in run order. ``runs_per_thread`` > 1 balances uneven
    work (threads take the next run when they finish one)."""
    threads = thread_count()
    runs = split(n, threads * max(1, runs_per_thread) if threads > 1 else 1)
    if len(runs) == 1:
        return [task(*runs[0])]
    return list(thread_pool(min(threads, len(runs))).map(lambda run: task(*run), runs))
