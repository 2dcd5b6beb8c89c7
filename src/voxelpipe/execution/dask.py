"""Per-item tasks on a dask.distributed cluster (optional extra ``voxelpipe[dask]``).

``executor="dask"`` connects to a running scheduler (``tcp://HOST:PORT``); ``executor="dask-local"`` starts a
``LocalCluster`` of ``workers`` single-threaded worker processes on this machine, kept for later calls of this
process like the process pool. Tasks are the same module-level functions the process pool runs, so the outputs are
the same; every output still has exactly one writer (the task that owns it, or the calling process for run files).

Results come back in input order. At most ``2 × cluster threads`` tasks are in flight, so a 100,000-series run
does not hold 100,000 futures (or their results) at once.
"""
from __future__ import annotations

import atexit
import functools
import logging
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from voxelpipe.core.errors import InputError
from voxelpipe.core.types import Executor
from voxelpipe.execution.workers import cpu_count, guarded, init_worker

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("voxelpipe")

_local: dict[int, object] = {}  # workers -> (LocalCluster, Client) kept alive in this process


def _distributed():
    try:
        import distributed  # lazy: the optional dask extra
    except ImportError as exc:
        raise InputError("the dask executors need dask.distributed: pip install 'voxelpipe[dask]'") from exc
    return distributed


def _run_with_threads(func: Callable[[T], R], threads: int, item: T) -> R:
    """Run one task on a dask worker thread with ``threads`` numba/Blosc threads (numba's count is per thread)."""
    init_worker(threads)
    return func(item)


def _local_client(workers: int):
    """The LocalCluster client for ``workers`` processes, started on first use."""
    entry = _local.get(workers)
    if entry is None:
        distributed = _distributed()
        if logging.getLogger("distributed").level == logging.NOTSET:  # its INFO lines would drown ours
            logging.getLogger("distributed").setLevel(logging.WARNING)
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=logging.WARNING)
        client = distributed.Client(cluster, set_as_default=False)
        if not _local:
            atexit.register(shutdown)
        _local[workers] = entry = (cluster, client)
        log.info("dask-local: started a LocalCluster of %d worker process(es)", workers)
    return entry[1]


def shutdown() -> None:
    """Close every LocalCluster this process started."""
    atexit.unregister(shutdown)
    for workers in list(_local):
        _discard_local(workers)


@contextmanager
def _client(executor: str, scheduler: str | None, workers: int):
    if executor == Executor.DASK_LOCAL:
        yield _local_client(workers)
        return
    if not scheduler:
        raise InputError("--executor dask needs --scheduler tcp://HOST:PORT (the address of a running "
                         "dask scheduler)")
    distributed = _distributed()
    try:
        client = distributed.Client(scheduler, timeout="30s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(f"dask scheduler {scheduler}: cannot connect ({type(exc).__name__}: {exc})") from exc
    try:
        yield client
    finally:
        client.close()


def _threads_per_task(client) -> tuple[int, int]:
    """(numba threads per task, cluster threads): each host's cores shared by the task threads it runs."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    if not workers:
        raise InputError("the dask cluster has no workers")
    cores = client.run(cpu_count)
    by_host: dict[str, list[int]] = {}
    for address, info in workers.items():
        host = info.get("host", address)
        slots = by_host.setdefault(host, [0, cores.get(address, 1)])
        slots[0] += int(info.get("nthreads", 1))
    per_task = min(max(1, host_cores // max(1, threads)) for threads, host_cores in by_host.values())
    return per_task, sum(int(info.get("nthreads", 1)) for info in workers.values())


def dask_imap(func: Callable[[T], R], items: list[T], executor: str, scheduler: str | None,
              workers: int, on_error: Callable[[T, Exception], R] | None = None) -> Iterator[R]:
    """``map`` over ``items`` on a dask cluster, yielding results in input order (``on_error`` as in
    :func:`voxelpipe.execution.imap`)."""
    if not items:
        return
    with _client(executor, scheduler, workers) as client:
        threads, slots = _threads_per_task(client)
        task = functools.partial(_run_with_threads, func, threads)
        pending: deque = deque()  # (item, future), oldest first
        queue = iter(items)
        for item in queue:
            pending.append((item, client.submit(task, item, pure=False)))
            if len(pending) >= 2 * slots:
                break
        try:
            while pending:
                item, future = pending[0]
                result = guarded(future.result, item, on_error)
                pending.popleft()
                future.release()
                nxt = next(queue, _END)
                if nxt is not _END:
                    pending.append((nxt, client.submit(task, nxt, pure=False)))
                yield result
        except BaseException:
            # stopped early (error, interrupt): drop the tasks not yet collected; a LocalCluster whose tasks may
            # still run is closed, so no orphaned task goes on writing beside a rerun
            for _, future in pending:
                future.cancel()
            if executor == Executor.DASK_LOCAL:
                _discard_local(workers)
            raise


def _discard_local(workers: int) -> None:
    """Close the LocalCluster of ``workers`` processes (after an error or interruption its state is unknown)."""
    entry = _local.pop(workers, None)
    if entry is not None:
        cluster, client = entry
        client.close()
        cluster.close()


_END = object()
