"""Process pool for per-item tasks: spawn/forkserver context, numba threads per worker ≤ cores / workers.

``imap`` also runs the same tasks on a dask.distributed cluster (``executor="dask"`` or ``"dask-local"``, see
:mod:`voxelpipe.dask_executor`). ``--workers 1`` with the pool runs in the calling process. Results come back in input order. A pool is kept alive for
later calls with the same worker count in the same process (library use, benchmarks) and shut down at exit.
"""
from __future__ import annotations

import atexit
import multiprocessing
import os
import re
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from .errors import InputError

T = TypeVar("T")
R = TypeVar("R")

# Modules the forkserver imports once, so every worker starts with them loaded.
PRELOAD = ["numpy", "numba", "pydicom", "zarr", "voxelpipe.pipelines.scan", "voxelpipe.pipelines.convert"]


def cpu_count() -> int:
    """Cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    return cpu_count()


def threads_per_worker(workers: int) -> int:
    """Numba threads for each worker so that workers × threads ≤ cores."""
    return max(1, cpu_count() // max(1, workers))


def init_worker(threads: int) -> None:
    """Pool initialiser (also used for in-process runs): numba and Blosc threads of this process."""
    import numba

    from .stores.zarr_store import set_blosc_threads

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    set_blosc_threads(threads)


def context() -> multiprocessing.context.BaseContext:
    """forkserver where the platform has it (fast worker start with preloaded modules), else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


_pools: dict[int, multiprocessing.pool.Pool] = {}


def get_pool(workers: int) -> multiprocessing.pool.Pool:
    """The process pool of ``workers`` workers, created on first use and reused afterwards."""
    pool = _pools.get(workers)
    if pool is None:
        pool = context().Pool(workers, initializer=init_worker, initargs=(threads_per_worker(workers),))
        if not _pools:
            # registered after multiprocessing's own exit hook, so it runs first (atexit is last-in first-out)
            atexit.register(shutdown)
        _pools[workers] = pool
    return pool


def discard_pool(workers: int) -> None:
    """Stop the pool of ``workers`` workers (after an error or interruption its state is unknown)."""
    pool = _pools.pop(workers, None)
    if pool is not None:
        pool.terminate()
        pool.join()


def shutdown() -> None:
    """Stop every pool of this process."""
    atexit.unregister(shutdown)
    for workers in list(_pools):
        pool = _pools.pop(workers)
        pool.close()
        pool.join()


EXECUTORS = ("pool", "dask", "dask-local")
# a dask scheduler address: optional comm scheme, host (or [IPv6]) and port
_SCHEDULER = re.compile(r"^(?:(?:tcp|tls|ucx|ws|wss)://)?(?:\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):\d{1,5}$")


def check_executor(executor: str, scheduler: str | None) -> None:
    """Raise InputError for an unknown executor or a scheduler address without ``executor="dask"``."""
    if executor not in EXECUTORS:
        raise InputError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if scheduler and executor != "dask":
        raise InputError(f"--scheduler {scheduler} needs --executor dask (got {executor})")
    if executor == "dask" and not scheduler:
        raise InputError("--executor dask needs --scheduler tcp://HOST:PORT (the address of a running dask "
                         "scheduler)")
    if scheduler and not _SCHEDULER.match(scheduler):
        raise InputError(f"--scheduler {scheduler}: not a dask scheduler address; give tcp://HOST:PORT (or tls://, "
                         "ws://, ucx://), e.g. tcp://10.0.0.5:8786, not the dashboard's http:// address")


def imap(func: Callable[[T], R], items: Iterable[T], workers: int, chunksize: int = 1, executor: str = "pool",
         scheduler: str | None = None, on_error: Callable[[T, Exception], R] | None = None) -> Iterator[R]:
    """``map`` over ``items`` with ``workers`` processes (in-process for 1) or on a dask cluster, yielding
    results in order. ``func`` must be a module-level function (it is pickled by reference).

    ``on_error(item, exc)``: the result to yield for an item whose task raised instead of returning (on dask
    also a worker that died under it, ``KilledWorker``), so one lost task never stops the batch; without it the
    exception propagates."""
    items = list(items)
    check_executor(executor, scheduler)
    if executor != "pool":
        from .dask_executor import dask_imap

        yield from dask_imap(func, items, executor, scheduler, max(1, workers), on_error)
        return
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield guarded(lambda: func(item), item, on_error)
        return
    try:
        results = get_pool(workers).imap(func, items, chunksize=chunksize)
        for item in items:
            yield guarded(lambda: next(results), item, on_error)
    except BaseException:
        discard_pool(workers)
        raise


def guarded(get: Callable[[], R], item: T, on_error: Callable[[T, Exception], R] | None) -> R:
    """``get()`` (the result of ``item``'s task), or ``on_error(item, exc)`` when it raises ``exc``."""
    try:
        return get()
    except Exception as exc:
        if on_error is None:
            raise
        return on_error(item, exc)
