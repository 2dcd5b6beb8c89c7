"""What a sample carries besides its pixels: the geometry of its array, a centred window, one sample of a batch.

A sample's ``affine`` maps an index of the sample's own array, (slice, row, column), to LPS mm: the volume's
affine composed with the translation by the sample's offset in the volume (a slice ``z`` of a full plane has
offset ``(z, 0, 0)``; a patch its start). ``spacing`` is the volume's (slice, row, column) spacing in mm.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from voxelpipe.core.geometry import Geometry
from voxelpipe.stores.remote import open_group

GEOMETRY_ATTRS = ("spacing", "origin", "direction")


def volume_geometry(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """The affine and spacing stored in the attributes of the Zarr volume at ``path``.

    Returns:
        (4x4 float64 affine index -> LPS mm, (3,) float64 spacing in mm along (slice, row, column)); the
        identity and ones for a volume without geometry attributes. A volume with unevenly spaced slices has
        NaN in affine column 0 and spacing[0], as in its attributes.
    """
    group = open_group(path)
    try:
        attrs = dict(group.attrs)
    finally:
        group.store.close()
    if any(attrs.get(name) is None for name in GEOMETRY_ATTRS):
        return np.eye(4), np.ones(3)
    geometry = Geometry.from_attrs({"shape": [1, 1, 1], **attrs})
    return geometry.affine.copy(), geometry.spacing.copy()


def volume_geometries(paths: Sequence[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """:func:`volume_geometry` of every path: (affines, spacings)."""
    found = [volume_geometry(path) for path in paths]
    return [a for a, _ in found], [s for _, s in found]


def offset_affine(affine: np.ndarray, offset: Sequence[int]) -> np.ndarray:
    """``affine`` composed with the translation by ``offset`` voxels (slice, row, column): the affine of the
    array whose index 0 is voxel ``offset`` of the volume. Axes with offset 0 leave a NaN column unused."""
    out = np.array(affine, dtype=np.float64)
    for axis, step in enumerate(offset):
        if step:
            out[:3, 3] += affine[:3, axis] * float(step)
    return out


class Window(NamedTuple):
    """A centred window of ``size`` voxels on an axis of ``length`` voxels.

    ``source``: the slice of the volume axis read; ``target``: where it lands in the window; ``offset``: the
    volume index of window index 0 (negative when padded); ``padded``: the window is larger than the axis.
    """

    source: slice
    target: slice
    offset: int
    padded: bool


def centre_window(length: int, size: int) -> Window:
    """Centre crop (``size`` < ``length``: start ``(length - size) // 2``) or centre pad (``size`` > ``length``:
    ``(size - length) // 2`` before, the rest after) of an axis of ``length`` voxels to ``size``."""
    if size >= length:
        before = (size - length) // 2
        return Window(slice(0, length), slice(before, before + length), -before, size > length)
    start = (length - size) // 2
    return Window(slice(start, start + size), slice(0, size), start, False)


def batch_sample(batch: dict, i: int = 0) -> dict:
    """Sample ``i`` of ``batch``, channel first: ``image`` (1, ...), ``masks`` (K, ...) (the batch's ``mask``),
    every other per-sample key (``present``, ``affine``, ``spacing``, ``source``, ``index``, ...) its ``i``-th
    item, and batch-wide values (``epoch``) as they are."""
    sample = {}
    for key, value in batch.items():
        if key == "image":
            sample["image"] = value[i][None]
        elif key == "mask":
            sample["masks"] = value[i]
        elif isinstance(value, np.ndarray) and value.ndim or isinstance(value, list):
            sample[key] = value[i]
        else:
            sample[key] = value
    return sample


__all__ = ["GEOMETRY_ATTRS", "Window", "batch_sample", "centre_window", "offset_affine", "volume_geometries",
           "volume_geometry"]
