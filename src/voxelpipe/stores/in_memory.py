"""The part of a volume writer that collects the whole volume in memory before writing it in one piece (NPZ,
NIfTI), unlike the Zarr and HDF5 writers, which stream slab by slab."""
from __future__ import annotations

import numpy as np


class InMemoryVolume:
    """A preallocated array filled slab by slab, with the volume's attributes.

    Args:
        path: final path of the volume file.
        shape: array shape, (slice, row, column) or (frame, slice, row, column).
        dtype: array dtype.
        attrs: JSON-ready attributes (copied).
    """

    def __init__(self, path: str, shape: tuple[int, ...], dtype: np.dtype, attrs: dict):
        self.path = path
        self.image = np.empty(shape, dtype=dtype)
        self.attrs = dict(attrs)

    def write(self, start: int, slab: np.ndarray) -> None:
        """Write ``slab`` at ``[start : start + len(slab)]`` along axis 0."""
        self.image[start:start + slab.shape[0]] = slab

    def write_at(self, index: tuple, block: np.ndarray) -> None:
        """Write ``block`` at ``index`` = (frame, slice(z0, z1)) of a 4-D volume."""
        self.image[index] = block

    def read(self, index: tuple) -> np.ndarray:
        """Read back written data (verification before publishing)."""
        return np.asarray(self.image[index])

    def set_attrs(self, attrs: dict) -> None:
        """Add or replace attributes."""
        self.attrs.update(attrs)
