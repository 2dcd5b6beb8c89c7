"""A reader as a torch dataset (torch is imported only here, on first use).

``TorchDataset`` (``reader.torch()``) is an ``IterableDataset`` of the reader's batches; ``SampleDataset``
(``reader.dataset()``) a map-style ``Dataset`` of single samples for the usual
``DataLoader(dataset, batch_size=..., shuffle=..., num_workers=...)``.

Use the iterable one with ``DataLoader(dataset, batch_size=None, num_workers=W)``: every worker computes the same sample
order from the seed and loads batches ``w, w + W, ...``, so each sample appears exactly once per epoch, and the
DataLoader, which takes batches from its workers in turn, yields the same sequence as the reader itself.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from voxelpipe.reader.chunks import configure
from voxelpipe.reader.grouping import group_batches

if TYPE_CHECKING:
    from voxelpipe.reader.base import BatchReader

_TORCH_CLASS = None
_SAMPLE_CLASS = None
_SIZED_PID: int | None = None


def size_worker_threads(info) -> None:
    """In a DataLoader worker (``info`` from ``get_worker_info()``, None in the main process), size this process's
    decode threads once for ``info.num_workers`` readers, so that workers × threads ≤ cores."""
    global _SIZED_PID
    if info is not None and _SIZED_PID != os.getpid():
        configure(workers=info.num_workers)
        _SIZED_PID = os.getpid()


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
                size_worker_threads(info)
                worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
                for batch in self.reader.iterate(self.first_epoch, worker, workers):
                    yield {key: torch.from_numpy(value) if isinstance(value, np.ndarray) else value
                           for key, value in batch.items()}

        TorchDataset.__module__ = __name__
        TorchDataset.__qualname__ = "TorchDataset"
        _TORCH_CLASS = TorchDataset
    return _TORCH_CLASS


def sample_dataset_class() -> type:
    """The ``SampleDataset`` class, built (and torch imported) on the first call.

    Returns:
        A ``torch.utils.data.Dataset`` subclass taking ``(reader, transform=None, epoch=0)``.

    Raises:
        ImportError: torch is not installed.
    """
    global _SAMPLE_CLASS
    if _SAMPLE_CLASS is None:
        # torch is an optional extra and slow to import: only a caller of the torch adapter pays for it
        from torch.utils.data import Dataset, get_worker_info

        class SampleDataset(Dataset):
            """A reader's samples as a map-style ``torch.utils.data.Dataset``: index ``i`` is sample
            ``reader.rank_order(epoch)[i]`` as :meth:`~voxelpipe.reader.base.BatchReader.sample` returns it
            (numpy arrays, channel first), passed through ``transform`` when given.

            Pickled to DataLoader workers with the reader, which reopens its volumes in each process. Call
            ``set_epoch(e)`` before each epoch (as with ``DistributedSampler``; not with ``persistent_workers``,
            which keep the old value) so that random patches and the ranks' parts change.
            """

            def __init__(self, reader: BatchReader, transform=None, epoch: int = 0):
                self.reader = reader
                self.transform = transform
                self.epoch = int(epoch)

            def set_epoch(self, epoch: int) -> None:
                self.epoch = int(epoch)

            def __len__(self) -> int:
                return self.reader.samples_per_rank

            def shape_batches(self, batch_size: int, drop_last: bool = False) -> list[list[int]]:
                """Dataset indices in batches of one image shape each, for
                ``DataLoader(dataset, batch_sampler=dataset.shape_batches(b))`` when samples differ in shape
                (the reader's ``group_by_shape``). The epoch's order is already shuffled; call again after
                ``set_epoch``.

                Args:
                    batch_size: Samples per batch (at least 1).
                    drop_last: Leave out each shape's last, short batch.
                """
                if int(batch_size) < 1:
                    raise ValueError(f"batch_size must be at least 1, got {batch_size}")
                groups = self.reader.sample_shapes()[self.reader.rank_order(self.epoch)]
                return [b.tolist() for b in group_batches(np.arange(len(self)), groups, int(batch_size), drop_last)]

            def __getitem__(self, i: int) -> dict:
                size_worker_threads(get_worker_info())
                n = len(self)
                if not -n <= i < n:
                    raise IndexError(f"sample {i} out of range for {n} samples")
                number = int(self.reader.rank_order(self.epoch)[i])
                sample = self.reader.sample(self.epoch, number)
                return sample if self.transform is None else self.transform(sample)

        SampleDataset.__module__ = __name__
        SampleDataset.__qualname__ = "SampleDataset"
        _SAMPLE_CLASS = SampleDataset
    return _SAMPLE_CLASS


def __getattr__(name: str):
    # the dataset classes are built on first use so that torch stays optional; being reachable as module
    # attributes also lets pickle find them in spawned DataLoader workers.
    if name == "TorchDataset":
        return torch_dataset_class()
    if name == "SampleDataset":
        return sample_dataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["sample_dataset_class", "size_worker_threads", "torch_dataset_class"]
