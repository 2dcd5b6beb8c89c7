"""Background prefetching: items of an iterator produced by one daemon thread into a bounded queue."""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

PREFETCH_THREAD_NAME = "voxelpipe-reader-prefetch"

T = TypeVar("T")


def prefetched(items: Iterator[T], depth: int) -> Iterator[T]:
    """Yield ``items`` as produced by a background thread, at most ``depth`` items ahead.

    The thread (named ``PREFETCH_THREAD_NAME``) is stopped and joined when this generator finishes, fails or
    is closed; an exception raised while producing is re-raised in the consumer.

    Args:
        items: The iterator to drain; it runs in the background thread.
        depth: Largest number of items produced but not yet consumed (at least 1).

    Yields:
        The items of ``items``, in order.
    """
    box: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        box.put((True, item), timeout=0.05)
                        break
                    except queue.Full:
                        pass
                if stop.is_set():
                    return
            result = (True, done)
        except BaseException as exc:  # handed to the consumer
            result = (False, exc)
        while not stop.is_set():
            try:
                box.put(result, timeout=0.05)
                return
            except queue.Full:
                pass

    thread = threading.Thread(target=produce, name=PREFETCH_THREAD_NAME, daemon=True)
    thread.start()
    try:
        while True:
            ok, item = box.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()


__all__ = ["PREFETCH_THREAD_NAME", "prefetched"]
