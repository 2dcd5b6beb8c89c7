"""Volume = array + Geometry + metadata (no I/O: ``voxelpipe.stores.volumes`` opens and saves volumes)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from voxelpipe.core.geometry import Geometry


@dataclass
class Volume:
    """An image array (slice, row, column) — or (frame, slice, row, column) for repeated positions — with its
    geometry and metadata. ``array`` may be a lazy zarr/h5py array: index it to read only what you need."""

    array: object
    geometry: Geometry
    attrs: dict = field(default_factory=dict)
    path: str = ""

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    def numpy(self) -> np.ndarray:
        """The whole array in memory."""
        return np.asarray(self.array[...])


def json_default(value):
    """``json.dumps`` default for numpy values in attributes."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
