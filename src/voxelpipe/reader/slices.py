"""Batches of the 2-D slices (axis 0) of Zarr volumes: every slice of every volume once per epoch."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from voxelpipe.reader.base import common_shape
from voxelpipe.reader.volumes import VolumeReader, read_many


class SliceReader(VolumeReader):
    """Batches of 2-D slices (axis 0) of Zarr volumes, every slice of every volume once per epoch.

    Batches hold ``image`` (N, rows, cols), ``mask`` (N, K, rows, cols) uint8 and ``index``: the slice index
    (axis 0) of each sample, with the other keys of :class:`~voxelpipe.reader.base.BatchReader`.

    Args:
        volumes: Volume paths or folders (see :func:`~voxelpipe.reader.volumes.volume_paths`).
        masks: Mask names (NGFF ``labels/<name>``, or ``masks/<name>`` of older volumes) to return, in this order;
            None takes every name found in any volume, sorted.
        open_volumes: Volumes kept open per process.
        **options: Passed to :class:`~voxelpipe.reader.base.BatchReader`.

    Raises:
        InputError: Volumes of different (rows, cols) (build one reader per shape otherwise), or no slices.
    """

    def __init__(self, volumes, masks: Sequence[str] | None = None, *, open_volumes: int = 32, **options):
        super().__init__(volumes, masks, open_volumes, **options)
        self.shape = common_shape([(p, s[1:]) for p, s in zip(self.paths, self.shapes)])
        counts = np.array([s[0] for s in self.shapes], dtype=np.int64)
        self._ends = np.cumsum(counts)
        self.samples_per_epoch = int(self._ends[-1]) if len(counts) else 0
        self._check_batches()

    def _sample(self, number: int) -> tuple[int, int]:
        v = int(np.searchsorted(self._ends, number, side="right"))
        return v, number - (int(self._ends[v - 1]) if v else 0)

    def _load(self, epoch: int, samples: list[tuple[int, int]]) -> dict:
        out = self._empty(len(samples), self.shape, self.image_dtype)
        reads, targets = [], []
        for i, (v, z) in enumerate(samples):
            image, masks = self._arrays(v)
            reads.append((image, (z,)))
            targets.append(out["image"][i])
            for k, name in enumerate(self.mask_names):
                if name in masks:
                    reads.append((masks[name], (z,)))
                    targets.append(out["mask"][i, k])
                    out["present"][i, k] = True
            out["source"].append(self.paths[v])
            out["index"][i] = z
        read_many(reads, targets)
        return out


__all__ = ["SliceReader"]
