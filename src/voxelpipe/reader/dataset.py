"""A reader as a ``torch.utils.data.IterableDataset`` (torch is imported only here, on first use).

Use it with ``DataLoader(dataset, batch_size=None, num_workers=W)``: every worker computes the same sample
order from the seed and loads batches ``w, w + W, ...``, so each sample appears exactly once per epoch, and the
DataLoader, which takes batches from its workers in turn, yields the same sequence as the reader itself.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from voxelpipe.reader.base import BatchReader

_TORCH_CLASS = None


def torch_dataset_class() -> type:
    """The ``TorchDataset`` class, built (and torch imported) on the first call.

    Returns:
        A ``torch.utils.data.IterableDataset`` subclass taking ``(reader, first_epoch=0)``.

    Raises:
        ImportError: torch is not installed.
    """
    global _TORCH_CLASS
    if _TORCH_CLASS is None:
        # torch is an optional extra and slow to import: only a caller of the torch adapter pays for it
        import torch
        from torch.utils.data import IterableDataset, get_worker_info

        class TorchDataset(IterableDataset):
            """A reader as a ``torch.utils.data.IterableDataset`` yielding one dict per batch, arrays as
            tensors. Use ``DataLoader(dataset, batch_size=None, num_workers=W)``: worker ``w`` loads the
            reader's batches ``w, w + W, ...`` (all workers compute the same order from the seed), so every
            sample appears once per epoch and the loader yields the reader's own sequence.

            One pass covers the reader's ``epochs``, starting at epoch ``first_epoch``; for a loop of one-epoch
            passes call ``set_epoch(e)`` before each (without ``persistent_workers``, which keep the old value).
            """

            def __init__(self, reader: BatchReader, first_epoch: int = 0):
                self.reader = reader
                self.first_epoch = int(first_epoch)

            def set_epoch(self, epoch: int) -> None:
                self.first_epoch = int(epoch)

            def __len__(self) -> int:
                return len(self.reader)

            def __iter__(self):
                info = get_worker_info()
                worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
                for batch in self.reader.iterate(self.first_epoch, worker, workers):
                    yield {key: torch.from_numpy(value) if isinstance(value, np.ndarray) else value
                           for key, value in batch.items()}

        TorchDataset.__module__ = __name__
        TorchDataset.__qualname__ = "TorchDataset"
        _TORCH_CLASS = TorchDataset
    return _TORCH_CLASS


def __getattr__(name: str):
    # ``TorchDataset`` is built on first use so that torch stays optional; being reachable as a module
    # attribute also lets pickle find it in spawned DataLoader workers.
    if name == "TorchDataset":
        return torch_dataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["torch_dataset_class"]
