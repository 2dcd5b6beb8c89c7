"""The loop every training reader shares: a fixed sample index, a reproducible order per epoch, batches.

Epoch ``e`` reads the samples in the order of ``np.random.default_rng((seed, e)).permutation(n)`` (or index
order without shuffling), so every process and DataLoader worker computes the same order from the seed. Batches
are loaded by a background thread (:mod:`voxelpipe.reader.prefetch`) unless ``prefetch`` is 0.

With ``world_size`` W > 1 (distributed training), rank r reads ``order(e)`` padded to a multiple of W by
repeating its first samples, then every W-th sample from position r (as torch's ``DistributedSampler``): the
ranks' parts are disjoint but for those repeats, together cover every sample, and are equally long, so no rank
waits for another at the end of an epoch.

With ``group_by_shape`` (2-D readers whose images differ in size), batches are cut from the epoch's order one
shape at a time (:func:`group_batches`): every batch holds samples of one shape, each sample is in exactly one
batch, and the last, short batch of each shape is kept unless ``drop_last``. The ranks then take every
``world_size``-th batch (the list padded by repeating its first batches), so they read equally many batches.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from voxelpipe.core.errors import InputError
from voxelpipe.reader.dataset import sample_dataset_class, torch_dataset_class
from voxelpipe.reader.grouping import group_batches, shape_groups
from voxelpipe.reader.prefetch import prefetched
from voxelpipe.reader.samples import batch_sample


class BatchReader:
    """Iterate batches over ``epochs`` epochs of a fixed sample index.

    Each batch is a dict:

    - ``image``: (N, rows, cols) or (N, pz, py, px), the sources' common dtype (or ``dtype``);
    - ``mask``: (N, K, ...) uint8, K = ``len(reader.mask_names)``; a mask a sample lacks is zeros, and
    - ``present``: (N, K) bool says which masks the sample has;
    - ``source``: list of N paths; ``index``: (N,) int64 (file number, slice index or patch number);
    - ``epoch``: int; patches also have ``start`` (N, 3) int64 and ``foreground`` (N,) bool;
    - volume readers: ``affine`` (N, 4, 4) float64, index (slice, row, column) of each sample's array -> LPS
      mm (a slice is a one-slice array), and ``spacing`` (N, 3) float64 mm.

    Subclasses set ``samples_per_epoch`` and ``mask_names`` and provide ``_sample`` and ``_load``.

    Args:
        batch_size: Samples per batch (at least 1).
        shuffle: A fresh permutation every epoch (else index order).
        seed: Integer >= 0; None draws one (kept in ``reader.seed``).
        drop_last: Drop each epoch's last, short batch.
        epochs: Epochs one iteration covers (at least 1).
        prefetch: Batches loaded ahead by a background thread (0: load in the consumer's thread).
        dtype: dtype of ``image`` (default: the sources' common dtype).
        rank: This process's rank (0-based) in distributed training.
        world_size: Number of ranks; each reads its own part of every epoch (see the module docstring).
        group_by_shape: Batch samples of one shape together (readers of 2-D images of different sizes; see the
            module docstring) instead of requiring one shape or a ``size``.

    Raises:
        InputError: A value out of range.
    """

    samples_per_epoch: int = 0

    def __init__(self, *, batch_size: int = 16, shuffle: bool = True, seed: int | None = None,
                 drop_last: bool = False, epochs: int = 1, prefetch: int = 2, dtype=None, rank: int = 0,
                 world_size: int = 1, group_by_shape: bool = False):
        if int(batch_size) < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        if int(epochs) < 1:
            raise InputError(f"epochs must be at least 1, got {epochs}")
        if int(prefetch) < 0:
            raise InputError(f"prefetch must be 0 or more, got {prefetch}")
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> np.uint64(1))
        if int(seed) < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed}")
        if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
            raise InputError(f"rank must be in [0, world_size) with world_size >= 1, got rank {rank}, "
                             f"world_size {world_size}")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.epochs = int(epochs)
        self.prefetch = int(prefetch)
        self.dtype = None if dtype is None else np.dtype(dtype)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.group_by_shape = bool(group_by_shape)
        self._groups: dict[int, list[np.ndarray]] = {}
        self._orders: dict[int, np.ndarray] = {}
        self._parts: dict[int, np.ndarray] = {}

    # -- to be provided by subclasses -------------------------------------------------------------------------
    def _sample(self, number: int) -> tuple[int, int]:
        """Sample ``number`` of the index as (source number, index within the source)."""
        raise NotImplementedError

    def _load(self, epoch: int, samples: list[tuple[int, int]]) -> dict:
        raise NotImplementedError

    def sample_shapes(self) -> np.ndarray:
        """(samples_per_epoch,) int64 shape group of every sample number (samples of one group have one
        shape); all 0 for readers of one shape."""
        return np.zeros(self.samples_per_epoch, np.int64)

    # -- the loop ---------------------------------------------------------------------------------------------
    def _check_batches(self) -> None:
        if self.samples_per_epoch == 0:
            raise InputError("no samples to read")
        if self.batches_per_epoch == 0:
            raise InputError(f"drop_last with batch_size {self.batch_size} > {self.samples_per_rank} samples "
                             "per epoch leaves no batch")

    @property
    def samples_per_rank(self) -> int:
        """Samples this rank reads per epoch: ``ceil(samples_per_epoch / world_size)``."""
        return math.ceil(self.samples_per_epoch / self.world_size)

    @property
    def batches_per_epoch(self) -> int:
        """Batches in one epoch (of this rank)."""
        size = self.batch_size
        if self.group_by_shape:
            counts = np.bincount(self.sample_shapes())
            total = int(np.sum(counts // size if self.drop_last else -(-counts // size)))
            return math.ceil(total / self.world_size)
        n = self.samples_per_rank
        return n // size if self.drop_last else math.ceil(n / size)

    def __len__(self) -> int:
        """Batches over all epochs."""
        return self.batches_per_epoch * self.epochs

    def order(self, epoch: int) -> np.ndarray:
        """The sample numbers of ``epoch`` in reading order (the same in every process).

        Args:
            epoch: Epoch number (>= 0).

        Returns:
            (samples_per_epoch,) int64 array of sample numbers.
        """
        order = self._orders.get(epoch)
        if order is None:
            n = self.samples_per_epoch
            order = np.random.default_rng((self.seed, epoch)).permutation(n) if self.shuffle else np.arange(n)
            self._orders = {epoch: order}  # one epoch at a time is all a loop needs
        return order

    def rank_order(self, epoch: int) -> np.ndarray:
        """This rank's part of :meth:`order`: the epoch's order padded to a multiple of ``world_size`` by
        repeating its first samples, then every ``world_size``-th sample from position ``rank``.

        Returns:
            (samples_per_rank,) int64 array of sample numbers; :meth:`order` itself when ``world_size`` is 1.
        """
        if self.world_size == 1:
            return self.order(epoch)
        part = self._parts.get(epoch)
        if part is None:
            order = self.order(epoch)
            padded = np.resize(order, self.samples_per_rank * self.world_size)  # repeats from the start
            part = padded[self.rank::self.world_size]
            self._parts = {epoch: part}
        return part

    def grouped_batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches of ``epoch`` under ``group_by_shape``: sample numbers of one shape each.

        Returns:
            ``batches_per_epoch`` int64 arrays of sample numbers.
        """
        batches = self._groups.get(epoch)
        if batches is None:
            everyone = group_batches(self.order(epoch), self.sample_shapes(), self.batch_size, self.drop_last)
            if self.world_size > 1 and everyone:
                per_rank = math.ceil(len(everyone) / self.world_size)
                padded = [everyone[k % len(everyone)] for k in range(per_rank * self.world_size)]
                everyone = padded[self.rank::self.world_size]
            batches = everyone
            self._groups = {epoch: batches}
        return batches

    def batch(self, epoch: int, number: int) -> dict:
        """Batch ``number`` of ``epoch``, loaded now.

        Raises:
            IndexError: No such batch.
        """
        if not 0 <= number < self.batches_per_epoch or epoch < 0:
            raise IndexError(f"no batch {number} of epoch {epoch} ({self.batches_per_epoch} batches per epoch)")
        if self.group_by_shape:
            picked = self.grouped_batches(epoch)[number]
        else:
            order = self.rank_order(epoch)
            picked = order[number * self.batch_size:(number + 1) * self.batch_size]
        batch = self._load(epoch, [self._sample(int(s)) for s in picked])
        batch["epoch"] = epoch
        return batch

    def _batches(self, first_epoch: int = 0, worker: int = 0, workers: int = 1) -> Iterator[dict]:
        """Batches ``worker``, ``worker + workers``, ... of the reader's sequence (all epochs in a row)."""
        per_epoch = self.batches_per_epoch
        for g in range(worker, per_epoch * self.epochs, workers):
            epoch, number = divmod(g, per_epoch)
            yield self.batch(first_epoch + epoch, number)

    def iterate(self, first_epoch: int = 0, worker: int = 0, workers: int = 1) -> Iterator[dict]:
        """Epochs ``first_epoch`` .. ``first_epoch + epochs - 1``, prefetched when ``prefetch`` > 0.

        Args:
            first_epoch: Number of the first epoch.
            worker: This worker's number (0-based) when ``workers`` > 1.
            workers: With ``workers`` > 1, only this worker's share: global batches ``worker::workers``.
        """
        batches = self._batches(first_epoch, worker, workers)
        return prefetched(batches, self.prefetch) if self.prefetch else batches

    def __iter__(self) -> Iterator[dict]:
        return self.iterate()

    def torch(self, first_epoch: int = 0):
        """This reader as a ``torch.utils.data.IterableDataset`` (see ``voxelpipe.reader.TorchDataset``)."""
        return torch_dataset_class()(self, first_epoch)

    def sample(self, epoch: int, number: int) -> dict:
        """Sample ``number`` of the index (0 .. samples_per_epoch - 1) as drawn in ``epoch``, channel first.

        Returns:
            ``image`` (1, rows, cols) or (1, pz, py, px); ``masks`` (K, ...) uint8 (K = ``len(mask_names)``);
            ``present`` (K,) bool; ``source``; ``index``; ``epoch``; for volumes ``affine`` (4, 4) and
            ``spacing`` (3,); for patches ``start`` and ``foreground``.

        Raises:
            IndexError: No such sample.
        """
        if not 0 <= number < self.samples_per_epoch or epoch < 0:
            raise IndexError(f"no sample {number} in epoch {epoch} ({self.samples_per_epoch} samples per epoch)")
        sample = batch_sample(self._load(epoch, [self._sample(int(number))]))
        sample["epoch"] = epoch
        return sample

    def dataset(self, transform=None, epoch: int = 0):
        """This reader as a map-style ``torch.utils.data.Dataset`` of single samples (see
        :meth:`sample`), for ``DataLoader(dataset, batch_size=..., shuffle=..., num_workers=...)``.

        Index ``i`` is sample ``rank_order(epoch)[i]``: its length is this rank's samples per epoch, and a patch
        drawn for an index depends only on the seed, the epoch and the index. Call ``set_epoch(e)`` on it
        before each epoch so that patch positions (and, with ``world_size`` > 1, the ranks' parts) change.

        Args:
            transform: Callable applied to each sample dict (e.g. a MONAI dictionary transform); its result is
                what the dataset returns.
            epoch: The first epoch.
        """
        return sample_dataset_class()(self, transform, epoch)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_orders"] = {}
        state["_parts"] = {}
        state["_groups"] = {}
        return state

    # -- helpers ----------------------------------------------------------------------------------------------
    def _empty(self, n: int, shape: tuple[int, ...], dtype, geometry: bool = False) -> dict:
        k = len(self.mask_names)
        out = {"image": np.empty((n, *shape), self.dtype or dtype),
               "mask": np.zeros((n, k, *shape), np.uint8),
               "present": np.zeros((n, k), bool),
               "source": [], "index": np.empty(n, np.int64)}
        if geometry:
            out["affine"] = np.empty((n, 4, 4), np.float64)
            out["spacing"] = np.empty((n, 3), np.float64)
        return out


def common_shape(shapes: list[tuple[str, tuple[int, ...]]]) -> tuple[int, ...]:
    """The one shape every source shares.

    Args:
        shapes: (path, shape) of every source, e.g. (rows, cols) of each image.

    Returns:
        The common shape; (0, 0) when ``shapes`` is empty.

    Raises:
        InputError: The shapes differ; the message names a file of each shape.
    """
    groups: dict[tuple[int, ...], list[str]] = {}
    for path, shape in shapes:
        groups.setdefault(tuple(shape), []).append(path)
    if len(groups) > 1:
        listed = "; ".join(f"{shape}: {len(paths)} file(s), e.g. {paths[0]}" for shape, paths in groups.items())
        raise InputError(f"images differ in (rows, cols), so they cannot share a batch: {listed}. "
                         "Pass group_by_shape=True to batch each shape apart, resample first, or (slices) give "
                         "size=(rows, cols) to centre pad/crop every slice.")
    return next(iter(groups), (0, 0))


__all__ = ["BatchReader", "common_shape", "group_batches", "shape_groups"]  # the last two re-exported
