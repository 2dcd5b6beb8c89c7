"""Worker sizing and set-up shared by every executor: cores, threads per worker, the executor check."""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import TypeVar

from voxelpipe.core.errors import InputError
from voxelpipe.core.types import Executor, member_of

T = TypeVar("T")
R = TypeVar("R")


def cpu_count() -> int:
    """Cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """Worker processes when the caller names none: one per core."""
    return cpu_count()


def threads_per_worker(workers: int) -> int:
    """Numba threads for each worker so that workers × threads ≤ cores."""
    return max(1, cpu_count() // max(1, workers))


def set_blosc_threads(threads: int) -> None:
    """Blosc threads for this process (``import zarr`` switches numcodecs' Blosc threading off)."""
    import numcodecs.blosc  # lazy: keeps voxelpipe.execution (the executor check) light to import

    numcodecs.blosc.set_nthreads(max(1, threads))
    numcodecs.blosc.use_threads = threads > 1


def init_worker(threads: int) -> None:
    """Pool initialiser (also used for in-process runs): numba and Blosc threads of this process."""
    import numba  # lazy: keeps voxelpipe.execution (the executor check) light to import

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    set_blosc_threads(threads)


# a dask scheduler address: optional comm scheme, host (or [IPv6]) and port
_SCHEDULER = re.compile(r"^(?:(?:tcp|tls|ucx|ws|wss)://)?(?:\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):\d{1,5}$")


def check_executor(executor: str, scheduler: str | None) -> Executor:
    """``executor`` as an :class:`~voxelpipe.core.types.Executor`; raises InputError for an unknown executor, a
    scheduler address without ``executor="dask"`` or ``dask`` without a valid scheduler address."""
    executor = member_of(Executor, executor, "executor")
    if scheduler and executor != Executor.DASK:
        raise InputError(f"--scheduler {scheduler} needs --executor dask (got {executor})")
    if executor == Executor.DASK and not scheduler:
        raise InputError("--executor dask needs --scheduler tcp://HOST:PORT (the address of a running dask "
                         "scheduler)")
    if scheduler and not _SCHEDULER.match(scheduler):
        raise InputError(f"--scheduler {scheduler}: not a dask scheduler address; give tcp://HOST:PORT (or tls://, "
                         "ws://, ucx://), e.g. tcp://10.0.0.5:8786, not the dashboard's http:// address")
    return executor


def guarded(get: Callable[[], R], item: T, on_error: Callable[[T, Exception], R] | None) -> R:
    """``get()`` (the result of ``item``'s task), or ``on_error(item, exc)`` when it raises ``exc``."""
    try:
        return get()
    except Exception as exc:
        if on_error is None:
            raise
        return on_error(item, exc)
