"""Volumes as NPZ: one ``<key>.npz`` per series holding ``image`` and its geometry arrays.

NPZ is written whole: the volume is held in memory, unlike Zarr and HDF5, which stream slab by slab.
"""
from __future__ import annotations

import json
import os

import numpy as np

from voxelpipe.stores.in_memory import InMemoryVolume
from voxelpipe.stores.registry import NPZ_SUFFIX
from voxelpipe.stores.tables import atomic_path
from voxelpipe.stores.zarr_store import PARTIAL, remove

GEOMETRY_ARRAYS = ("spacing", "origin", "direction", "affine", "affine_ras", "slice_positions")


class NpzVolumeWriter(InMemoryVolume):
    """Collects slabs into one array and writes ``image`` + geometry arrays + ``attrs_json`` at the end (a
    :class:`~voxelpipe.stores.writer.VolumeWriter`).

    Args:
        path: final path (``<key>.npz``).
        shape: array shape, (slice, row, column) or (frame, slice, row, column).
        dtype: array dtype.
        chunks: unused (NPZ has no chunks); accepted so every writer is opened alike.
        attrs: JSON-ready attributes; the geometry entries (spacing, origin, direction in LPS mm, ...) are also
            stored as float64 arrays of their own.
        clevel: unused (NPZ is stored uncompressed).
    """

    def __init__(self, path: str, shape: tuple[int, ...], dtype: np.dtype, chunks: tuple[int, ...],
                 attrs: dict, clevel: int = 0):
        super().__init__(path, shape, dtype, attrs)

    def finish(self) -> int:
        """Write the file under a temporary name and rename it; returns its size in bytes."""
        partial = self.path + PARTIAL + NPZ_SUFFIX
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        arrays = {name: np.asarray(self.attrs[name], dtype=np.float64) for name in GEOMETRY_ARRAYS
                  if name in self.attrs}
        np.savez(partial, image=self.image, attrs_json=np.array(json.dumps(self.attrs, default=str)), **arrays)
        os.replace(partial, self.path)
        self.image = None
        return os.path.getsize(self.path)

    def abort(self) -> None:
        """Drop the collected array and any partial file."""
        self.image = None
        remove(self.path + PARTIAL + NPZ_SUFFIX)


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], compress: bool = True) -> None:
    """Write ``arrays`` (name -> array) as one ``.npz`` file (zip-deflated with ``compress``), atomically."""
    save = np.savez_compressed if compress else np.savez
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        save(fh, **arrays)
