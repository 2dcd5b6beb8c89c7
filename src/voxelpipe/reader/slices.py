"""Batches of the 2-D slices (axis 0) of Zarr volumes: every slice of every volume once per epoch."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from voxelpipe.core.errors import InputError
from voxelpipe.reader.base import common_shape, shape_groups
from voxelpipe.reader.samples import centre_window, offset_affine, volume_geometries
from voxelpipe.reader.volumes import VolumeReader, read_many


class SliceReader(VolumeReader):
    """Batches of 2-D slices (axis 0) of Zarr volumes, every slice of every volume once per epoch.

    Batches hold ``image`` (N, rows, cols), ``mask`` (N, K, rows, cols) uint8 and ``index``: the slice index
    (axis 0) of each sample, ``affine`` (N, 4, 4) of each slice (index (0, row, col) -> LPS mm) and ``spacing``
    (N, 3), with the other keys of :class:`~voxelpipe.reader.base.BatchReader`.

    With ``size``, every slice is centre cropped or padded to (rows, cols): an axis longer than the size keeps
    the voxels from ``(length - size) // 2``; a shorter one gets ``(size - length) // 2`` pad voxels before it
    and the rest after, ``pad_value`` (default: the volume's minimum) in ``image`` and 0 in ``mask``; the
    affine accounts for the shift.

    Args:
        volumes: Volume paths or folders (see :func:`~voxelpipe.reader.volumes.volume_paths`).
        masks: Mask names (NGFF ``labels/<name>``, or ``masks/<name>`` of older volumes) to return, in this order;
            None takes every name found in any volume, sorted.
        size: (rows, cols) of every sample; None: the volumes' own, which must then be the same unless
            ``group_by_shape=True`` (each batch then holds slices of one (rows, cols)).
        pad_value: Image value of padding (default: the minimum of the sample's volume).
        open_volumes: Volumes kept open per process.
        **options: Passed to :class:`~voxelpipe.reader.base.BatchReader`.

    Raises:
        InputError: Volumes of different (rows, cols) without ``size`` or ``group_by_shape`` (the message names
            a file of each shape), a bad ``size``, or no slices.
    """

    def __init__(self, volumes, masks: Sequence[str] | None = None, *, size: Sequence[int] | None = None,
                 pad_value: float | None = None, open_volumes: int = 32, **options):
        super().__init__(volumes, masks, open_volumes, **options)
        self.shape: tuple[int, ...] | None
        if size is None and self.group_by_shape:
            self.shape = None  # each batch's own
        elif size is None:
            self.shape = common_shape([(p, s[1:]) for p, s in zip(self.paths, self.shapes)])
        else:
            self.shape = tuple(int(n) for n in size)
            if len(self.shape) != 2 or min(self.shape) < 1:
                raise InputError(f"size must be 2 positive integers (rows, cols), got {size}")
        self.pad_value = pad_value
        self.affines, self.spacings = volume_geometries(self.paths)
        self._minimums: dict[int, float] = {}
        counts = np.array([s[0] for s in self.shapes], dtype=np.int64)
        self._ends = np.cumsum(counts)
        self.samples_per_epoch = int(self._ends[-1]) if len(counts) else 0
        self._groups_of_samples = np.repeat(
            shape_groups([s[1:] for s in self.shapes]) if self.shape is None else np.zeros(len(counts), np.int64),
            counts)
        self._check_batches()

    def sample_shapes(self) -> np.ndarray:
        return self._groups_of_samples

    def _sample(self, number: int) -> tuple[int, int]:
        v = int(np.searchsorted(self._ends, number, side="right"))
        return v, number - (int(self._ends[v - 1]) if v else 0)

    def _minimum(self, v: int) -> float:
        """Smallest image value of volume ``v`` (read slab by slab once per process)."""
        if v not in self._minimums:
            image, _ = self._arrays(v)
            step = int(image.chunks[0])
            self._minimums[v] = min(float(np.min(image[z:z + step])) for z in range(0, image.shape[0], step))
        return self._minimums[v]

    def _load(self, epoch: int, samples: list[tuple[int, int]]) -> dict:
        shape = self.shape or self.shapes[samples[0][0]][1:]  # group_by_shape: one shape per batch
        out = self._empty(len(samples), shape, self.image_dtype, geometry=True)
        reads, targets = [], []
        for i, (v, z) in enumerate(samples):
            image, masks = self._arrays(v)
            windows = [centre_window(n, s) for n, s in zip(self.shapes[v][1:], shape)]
            region = (z, *(w.source for w in windows))
            place = tuple(w.target for w in windows)
            if any(w.padded for w in windows):
                out["image"][i] = self._minimum(v) if self.pad_value is None else self.pad_value
            reads.append((image, region))
            targets.append(out["image"][i][place])
            for k, name in enumerate(self.mask_names):
                if name in masks:
                    reads.append((masks[name], region))
                    targets.append(out["mask"][i, k][place])
                    out["present"][i, k] = True
            out["source"].append(self.paths[v])
            out["index"][i] = z
            out["affine"][i] = offset_affine(self.affines[v], (z, *(w.offset for w in windows)))
            out["spacing"][i] = self.spacings[v]
        read_many(reads, targets)
        return out


__all__ = ["SliceReader"]
