"""Process pool for per-item tasks: spawn/forkserver context, numba threads per worker ≤ cores / workers.

``workers=1`` runs in the calling process. Results come back in input order. A pool is kept alive for later calls
with the same worker count in the same process (library use, benchmarks) and shut down at exit. Starting a pool
takes a second or two (the forkserver imports numpy, numba, pydicom, ...): with ``start_here`` the calling process
runs the first items itself meanwhile.
"""
from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.forkserver
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from voxelpipe.execution.workers import guarded, init_worker, threads_per_worker

T = TypeVar("T")
R = TypeVar("R")

# Modules the forkserver imports once, so every worker starts with them loaded.
PRELOAD = ["numpy", "numba", "pydicom", "zarr", "voxelpipe.pipelines.scan", "voxelpipe.pipelines.convert"]


def context() -> multiprocessing.context.BaseContext:
    """forkserver where the platform has it (fast worker start with preloaded modules), else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


def start_forkserver() -> bool:
    """Start the forkserver now, without waiting for it: its preload imports (:data:`PRELOAD`) then run in
    its own process, on another core, while this process goes on importing, and the first pool forks its workers
    from it as soon as that is done. Returns False where the platform has no forkserver (nothing started)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    context()  # sets the preload list
    multiprocessing.forkserver.ensure_running()
    return True


_pools: dict[int, multiprocessing.pool.Pool] = {}
_starting: dict[int, PoolStart] = {}  # pools starting in the background (start_pool), by worker count


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


def pool_imap(func: Callable[[T], R], items: list[T], workers: int, chunksize: int = 1,
              on_error: Callable[[T, Exception], R] | None = None, start_here: bool = False) -> Iterator[R]:
    """``map`` over ``items`` with ``workers`` processes (in-process for 1), yielding results in order;
    ``on_error`` as in :func:`voxelpipe.execution.imap`. ``start_here``: while a new pool starts, run items in
    this process (from the first on); the pool gets the rest once it is up."""
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield guarded(lambda item=item: func(item), item, on_error)
        return
    starting = _starting.pop(workers, None)
    if starting is None and start_here and workers not in _pools:
        starting = PoolStart(workers)
    if starting is not None:
        done = 0
        try:
            while start_here and done < len(items) and not starting.ready.is_set():
                yield guarded(lambda item=items[done]: func(item), items[done], on_error)
                done += 1
        finally:
            starting.wait()
        items = items[done:]
        if not items:
            return
    try:
        results = get_pool(workers).imap(func, items, chunksize=chunksize)
        for item in items:
            yield guarded(lambda: next(results), item, on_error)
    except BaseException:
        discard_pool(workers)
        raise


def start_pool(workers: int) -> None:
    """Start the pool of ``workers`` workers in the background (unless it is up or starting), so that it is ready
    sooner; the next :func:`pool_imap` with ``workers`` waits for it (or runs items here meanwhile)."""
    if workers > 1 and workers not in _pools and workers not in _starting:
        _starting[workers] = PoolStart(workers)


def settle_pool_start(workers: int) -> None:
    """Wait for a background start of the pool of ``workers`` workers, if any (before leaving after an error,
    so that no pool is half made when the process exits); the pool stays for later calls."""
    starting = _starting.pop(workers, None)
    if starting is not None:
        starting.thread.join()


class PoolStart:
    """Start the pool of ``workers`` workers in a background thread (``ready`` is set when it is up or failed);
    :meth:`wait` waits for it and raises what starting it raised."""

    def __init__(self, workers: int):
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._start, args=(workers,), name="voxelpipe-pool-start",
                                       daemon=True)
        self.thread.start()

    def _start(self, workers: int) -> None:
        try:
            get_pool(workers)
        except BaseException as exc:  # handed to the caller by wait()
            self.error = exc
        finally:
            self.ready.set()

    def wait(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error
