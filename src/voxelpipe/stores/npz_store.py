"""Volumes as NPZ: one ``<key>.npz`` per series holding ``image`` and its geometry arrays.

NPZ is written whole: the volume is held in memory, unlike Zarr and HDF5, which stream slab by slab.
"""
from __future__ import annotations

import json
import os

import numpy as np

from voxelpipe.stores.zarr_store import PARTIAL, remove

GEOMETRY_ARRAYS = ("spacing", "origin", "direction", "affine", "affine_ras", "slice_positions")


class NpzVolumeWriter:
    """Collects slabs into one array and writes ``image`` + geometry arrays + ``attrs_json`` at the end."""

    def __init__(self, path: str, shape: tuple[int, ...], dtype: np.dtype, chunks: tuple[int, ...],
                 attrs: dict, clevel: int = 0):
        self.path = path
        self.image = np.empty(shape, dtype=dtype)
        self.attrs = dict(attrs)

    def write(self, start: int, slab: np.ndarray) -> None:
        self.image[start:start + slab.shape[0]] = slab

    def write_at(self, index: tuple, block: np.ndarray) -> None:
        self.image[index] = block

    def read(self, index: tuple) -> np.ndarray:
        """Read back written data (verification before publishing)."""
        return np.asarray(self.image[index])

    def set_attrs(self, attrs: dict) -> None:
        self.attrs.update(attrs)

    def finish(self) -> int:
        partial = self.path + PARTIAL + ".npz"
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        arrays = {name: np.asarray(self.attrs[name], dtype=np.float64) for name in GEOMETRY_ARRAYS
                  if name in self.attrs}
        np.savez(partial, image=self.image, attrs_json=np.array(json.dumps(self.attrs, default=str)), **arrays)
        os.replace(partial, self.path)
        self.image = None
        return os.path.getsize(self.path)

    def abort(self) -> None:
        self.image = None
        remove(self.path + PARTIAL + ".npz")
