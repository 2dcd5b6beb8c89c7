"""One ``imap`` for every executor: the process pool of this machine, or a dask.distributed cluster."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from voxelpipe.core.types import Executor
from voxelpipe.execution.pool import pool_imap
from voxelpipe.execution.workers import check_executor

T = TypeVar("T")
R = TypeVar("R")


def imap(func: Callable[[T], R], items: Iterable[T], workers: int, chunksize: int = 1,
         executor: str = Executor.POOL, scheduler: str | None = None,
         on_error: Callable[[T, Exception], R] | None = None, start_here: bool = False) -> Iterator[R]:
    """``map`` over ``items`` with ``workers`` processes (in-process for 1) or on a dask cluster, yielding
    results in order. ``func`` must be a module-level function (it is pickled by reference).

    ``on_error(item, exc)``: the result to yield for an item whose task raised instead of returning (on dask
    also a worker that died under it, ``KilledWorker``), so one lost task never stops the batch; without it the
    exception propagates. ``start_here``: while a new process pool starts, this process runs the first items
    (:func:`voxelpipe.execution.pool.pool_imap`)."""
    items = list(items)
    check_executor(executor, scheduler)
    if executor != Executor.POOL:
        from voxelpipe.execution.dask import dask_imap  # needs the optional dask extra

        yield from dask_imap(func, items, executor, scheduler, max(1, workers), on_error)
        return
    yield from pool_imap(func, items, workers, chunksize, on_error, start_here)
