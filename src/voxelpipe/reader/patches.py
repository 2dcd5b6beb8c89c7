"""Batches of random 3-D patches of Zarr volumes, optionally centred on mask foreground.

Patch ``k`` of volume ``v`` in epoch ``e`` draws its start from ``np.random.default_rng((seed, e, v, k))``, so
a sample's content does not depend on which thread or DataLoader worker loads it. Foreground sampling scans each
volume's masks once per process, slab by slab, keeping one foreground count per chunk; a foreground voxel is then
drawn uniformly by picking a chunk in proportion to its count and reading that chunk.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from voxelpipe.core.errors import InputError
from voxelpipe.reader.samples import offset_affine, volume_geometries
from voxelpipe.reader.volumes import VolumeReader, read_many


class PatchReader(VolumeReader):
    """Batches of random 3-D patches of Zarr volumes: ``patches_per_volume`` samples per volume and epoch.

    A patch's start is uniform over the starts that keep it inside the volume; with probability
    ``foreground`` it is instead centred on a foreground voxel (drawn uniformly) of the ``foreground_masks``
    and moved inside the volume, so it still contains that voxel (``foreground`` is True in the batch). A
    volume without foreground gets a uniform patch. Along an axis where the volume is smaller than the patch,
    the patch starts at 0 and holds the whole axis at its low end; the rest is ``fill`` in ``image`` and 0 in
    ``mask``.

    Batches hold ``image`` (N, pz, py, px), ``mask`` (N, K, pz, py, px) uint8, ``index`` (patch number within
    its volume), ``start`` (N, 3) int64 voxel indices (slice, row, column), ``foreground`` (N,) bool,
    ``affine`` (N, 4, 4) of each patch (index -> LPS mm, the volume's shifted by ``start``) and ``spacing``
    (N, 3), with the other keys of :class:`~voxelpipe.reader.base.BatchReader`.

    Args:
        volumes: Volume paths or folders (see :func:`~voxelpipe.reader.volumes.volume_paths`).
        patch_size: (pz, py, px) in voxels.
        masks: Mask names to return, in this order; None takes every name found in any volume, sorted.
        patches_per_volume: Samples per volume and epoch.
        foreground: Probability in [0, 1] that a patch is centred on foreground.
        foreground_masks: Masks whose union is the foreground (default: the returned masks).
        fill: Image value outside the volume.
        open_volumes: Volumes kept open per process.
        **options: Passed to :class:`~voxelpipe.reader.base.BatchReader`.

    Raises:
        InputError: A value out of range.
    """

    def __init__(self, volumes, patch_size: Sequence[int], masks: Sequence[str] | None = None, *,
                 patches_per_volume: int = 1, foreground: float = 0.0,
                 foreground_masks: Sequence[str] | None = None, fill: float = 0, open_volumes: int = 32,
                 **options):
        super().__init__(volumes, masks, open_volumes, **options)
        size = tuple(int(p) for p in patch_size)
        if len(size) != 3 or min(size) < 1:
            raise InputError(f"patch_size must be 3 positive integers, got {patch_size}")
        if not 0.0 <= foreground <= 1.0:
            raise InputError(f"foreground must be a probability in [0, 1], got {foreground}")
        if int(patches_per_volume) < 1:
            raise InputError(f"patches_per_volume must be at least 1, got {patches_per_volume}")
        self.patch_size = size
        self.patches_per_volume = int(patches_per_volume)
        self.foreground = float(foreground)
        self.foreground_masks = list(self.mask_names if foreground_masks is None else foreground_masks)
        if self.foreground > 0 and not self.foreground_masks:
            raise InputError("foreground sampling needs foreground_masks (or masks)")
        self.fill = fill
        self.samples_per_epoch = len(self.paths) * self.patches_per_volume
        self._check_batches()
        self._counts: dict[int, tuple | None] = {}
        self.affines, self.spacings = volume_geometries(self.paths)

    def __getstate__(self):
        state = super().__getstate__()
        state["_counts"] = {}
        return state

    def _sample(self, number: int) -> tuple[int, int]:
        return divmod(number, self.patches_per_volume)

    def patch_start(self, epoch: int, v: int, k: int) -> tuple[tuple[int, int, int], bool]:
        """Start of patch ``k`` of volume ``v`` in ``epoch``.

        Returns:
            ((slice, row, column) start in voxels, whether the patch is centred on foreground).
        """
        rng = np.random.default_rng((self.seed, epoch, v, k))
        shape = self.shapes[v]
        highest = [max(0, s - p) for s, p in zip(shape, self.patch_size)]
        if self.foreground > 0 and rng.random() < self.foreground:
            centre = self._foreground_voxel(v, rng)
            if centre is not None:
                start = tuple(min(max(c - p // 2, 0), h) for c, p, h in zip(centre, self.patch_size, highest))
                return start, True
        return tuple(int(rng.integers(0, h + 1)) for h in highest), False

    def _foreground_masks(self, v: int) -> list:
        _, masks = self._arrays(v)
        return [masks[name] for name in self.foreground_masks if name in masks]

    def _union(self, arrays: list, region: tuple) -> np.ndarray:
        union = np.asarray(arrays[0][region]) != 0
        for array in arrays[1:]:
            union |= np.asarray(array[region]) != 0
        return union

    def _foreground_counts(self, v: int):
        """(chunk shape, grid shape, cumulative foreground count per chunk) of volume ``v``, or None."""
        if v not in self._counts:
            arrays = self._foreground_masks(v)
            result = None
            if arrays:
                shape, chunks = self.shapes[v], tuple(arrays[0].chunks)
                grid = tuple(math.ceil(s / c) for s, c in zip(shape, chunks))
                counts = np.zeros(grid, np.int64)
                cz, cy, cx = chunks
                for iz in range(grid[0]):
                    slab = self._union(arrays, (slice(iz * cz, (iz + 1) * cz),))
                    padded = np.zeros((slab.shape[0], grid[1] * cy, grid[2] * cx), bool)
                    padded[:, :shape[1], :shape[2]] = slab
                    counts[iz] = padded.reshape(-1, grid[1], cy, grid[2], cx).sum(axis=(0, 2, 4))
                if counts.any():
                    result = (chunks, grid, np.cumsum(counts.ravel()))
            self._counts[v] = result
        return self._counts[v]

    def _foreground_voxel(self, v: int, rng: np.random.Generator) -> tuple[int, int, int] | None:
        found = self._foreground_counts(v)
        if found is None:
            return None
        chunks, grid, cumulative = found
        r = int(rng.integers(0, cumulative[-1]))
        chunk = int(np.searchsorted(cumulative, r, side="right"))
        offset = r - (int(cumulative[chunk - 1]) if chunk else 0)
        origin = [i * c for i, c in zip(np.unravel_index(chunk, grid), chunks)]
        region = tuple(slice(o, o + c) for o, c in zip(origin, chunks))
        union = self._union(self._foreground_masks(v), region)
        voxel = np.unravel_index(np.flatnonzero(union)[offset], union.shape)
        return tuple(int(o + i) for o, i in zip(origin, voxel))

    def _load(self, epoch: int, samples: list[tuple[int, int]]) -> dict:
        out = self._empty(len(samples), self.patch_size, self.image_dtype, geometry=True)
        out["start"] = np.empty((len(samples), 3), np.int64)
        out["foreground"] = np.empty(len(samples), bool)
        reads, targets = [], []
        for i, (v, k) in enumerate(samples):
            start, centred = self.patch_start(epoch, v, k)
            image, masks = self._arrays(v)
            region = tuple(slice(s, s + p) for s, p in zip(start, self.patch_size))
            inside = tuple(slice(0, min(p, n - s)) for s, p, n in zip(start, self.patch_size, self.shapes[v]))
            if any(sl.stop < p for sl, p in zip(inside, self.patch_size)):
                out["image"][i] = self.fill
            reads.append((image, region))
            targets.append(out["image"][i][inside])
            for k_mask, name in enumerate(self.mask_names):
                if name in masks:
                    reads.append((masks[name], region))
                    targets.append(out["mask"][i, k_mask][inside])
                    out["present"][i, k_mask] = True
            out["source"].append(self.paths[v])
            out["index"][i] = k
            out["start"][i] = start
            out["foreground"][i] = centred
            out["affine"][i] = offset_affine(self.affines[v], start)
            out["spacing"][i] = self.spacings[v]
        read_many(reads, targets)
        return out


__all__ = ["PatchReader"]
