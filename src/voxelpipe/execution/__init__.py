"""Where per-item tasks run: a process pool on this machine or a dask.distributed cluster, behind one ``imap``."""
from voxelpipe.execution.imap import imap
from voxelpipe.execution.workers import check_executor, cpu_count, default_workers, init_worker, threads_per_worker

__all__ = ["imap", "check_executor", "cpu_count", "default_workers", "init_worker", "threads_per_worker"]
