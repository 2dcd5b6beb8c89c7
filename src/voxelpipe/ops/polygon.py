"""Polygon fill (masks from contours), validated; bit-identical to ``skimage.draw.polygon2mask``.

Vertices are ``(row, column)`` in pixel units, the same order as ``polygon2mask``: pixel ``(r, c)`` has its
centre at ``(r, c)``. A pixel is set when its centre is inside by the even-odd rule taken across all the
polygons of the image (so a polygon inside another makes a hole: the result is the XOR of each polygon's
``polygon2mask``). Like skimage, boundaries are closed: centres exactly on an edge or within 1e-12 of a vertex
are inside, so a 1- or 2-vertex "polygon" sets the pixels its vertices sit on exactly (and nothing else).
Polygons are closed implicitly (last vertex to first); vertices outside the image are clipped.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from voxelpipe.core.errors import InputError
from voxelpipe.kernels.polygon import fill_polygons_2d, fill_polygons_3d, first_bad_vertex
from voxelpipe.ops.threads import run_ranges

__all__ = ["fill_polygon", "fill_polygons", "fill_polygons_volume", "MAX_COORDINATE"]

MAX_COORDINATE = 1e12  # |vertex coordinate| limit in pixels (keeps every product in the crossing test finite)

Vertices = np.ndarray | Sequence[Sequence[float]]


def _shape(shape: Sequence[int], ndim: int, what: str) -> tuple[int, ...]:
    try:
        dims = tuple(shape)
    except TypeError as exc:
        raise InputError(f"{what} must be a tuple of {ndim} positive ints, got {shape!r}") from exc
    if len(dims) != ndim or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0
                                    for d in dims):
        raise InputError(f"{what} must be a tuple of {ndim} positive ints, got {shape!r}")
    return tuple(int(d) for d in dims)


def _pack(polygons: Sequence[Vertices]) -> tuple[np.ndarray, np.ndarray]:
    """``(vertices float64 (V, 2), offsets int64 (P + 1))``: polygon p is ``vertices[offsets[p]:offsets[p+1]]``."""
    if isinstance(polygons, np.ndarray) and polygons.ndim == 2:
        raise InputError("polygons must be a sequence of (K, 2) vertex arrays; for a single polygon use "
                         "fill_polygon or pass [vertices]")
    arrays = []
    ends = [0]
    for p, poly in enumerate(polygons):
        try:
            arr = np.asarray(poly, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"polygon {p}: vertices must be numbers, got {poly!r}") from exc
        if arr.size == 0:
            arr = arr.reshape(0, 2)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise InputError(f"polygon {p}: vertices must have shape (K, 2) as (row, column), got {arr.shape}")
        arrays.append(arr)
        ends.append(ends[-1] + arr.shape[0])
    offsets = np.array(ends, dtype=np.int64)
    vertices = np.concatenate(arrays) if arrays else np.zeros((0, 2), dtype=np.float64)
    k = first_bad_vertex(vertices, MAX_COORDINATE)
    if k >= 0:
        p = int(np.searchsorted(offsets, k, side="right")) - 1
        value = vertices[k].tolist()
        why = "is not finite" if not np.isfinite(vertices[k]).all() else f"is beyond +-{MAX_COORDINATE:g} pixels"
        raise InputError(f"polygon {p}: vertex {k - int(offsets[p])} {value} {why}")
    return vertices, offsets


def _check_out(out: np.ndarray, shape: tuple[int, ...]) -> None:
    if not isinstance(out, np.ndarray):
        raise InputError(f"out must be a numpy array, got {type(out).__name__}")
    if out.dtype != np.uint8 or out.shape != shape:
        raise InputError(f"out must be uint8 of shape {shape}, got {out.dtype} {out.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise InputError("out must be C-contiguous and writeable")


def fill_polygons(polygons: Sequence[Vertices], shape: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
    """Mask of the pixels whose centre is inside an odd number of ``polygons``.

    ``polygons``: sequence of ``(K, 2)`` float arrays of vertices ``(row, column)`` in pixels.
    ``shape``: ``(rows, columns)``. ``out``: optional C-contiguous uint8 array of ``shape``, overwritten.
    Returns uint8 ``(rows, columns)`` of 0/1, equal to the XOR of ``skimage.draw.polygon2mask(shape, p)``.
    """
    shape2 = _shape(shape, 2, "shape")
    vertices, offsets = _pack(polygons)
    if out is None:
        out = np.empty(shape2, dtype=np.uint8)
    else:
        _check_out(out, shape2)
    fill_polygons_2d(vertices, offsets, out)
    return out


def fill_polygon(vertices: Vertices, shape: Sequence[int]) -> np.ndarray:
    """Mask (uint8 ``(rows, columns)``) of one polygon: vertices ``(K, 2)`` as ``(row, column)`` in pixels."""
    return fill_polygons([vertices], shape)


def fill_polygons_volume(polygons: Sequence[Vertices], slice_index: Sequence[int] | np.ndarray,
                         shape: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
    """Masks of a whole volume: polygon ``i`` (``(K, 2)`` vertices ``(row, column)`` in pixels) is drawn in slice
    ``slice_index[i]`` of a ``(slices, rows, columns)`` uint8 volume, even-odd across the polygons of a slice.

    ``out``: optional C-contiguous uint8 array of ``shape``, overwritten. Slices run in parallel (numba's thread count).
    """
    shape3 = _shape(shape, 3, "shape")
    vertices, offsets = _pack(polygons)
    n = offsets.shape[0] - 1
    try:
        index = np.asarray(slice_index)
    except (TypeError, ValueError) as exc:
        raise InputError(f"slice_index must be a sequence of ints, got {slice_index!r}") from exc
    if index.size == 0:
        index = index.reshape(0).astype(np.int64)
    if index.ndim != 1 or index.shape[0] != n:
        raise InputError(f"slice_index must have one entry per polygon ({n}), got shape {index.shape}")
    if index.dtype.kind not in "iu":
        if index.dtype.kind == "f" and np.all(index == np.round(index)):
            index = index.astype(np.int64)
        else:
            raise InputError(f"slice_index must hold integers, got dtype {index.dtype}")
    bad = (index < 0) | (index >= shape3[0])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"slice_index[{i}] = {int(index[i])} is outside 0..{shape3[0] - 1}")
    index = index.astype(np.int64)
    order = np.argsort(index, kind="stable").astype(np.int64)
    slice_starts = np.zeros(shape3[0] + 1, dtype=np.int64)
    slice_starts[1:] = np.cumsum(np.bincount(index, minlength=shape3[0]))
    if out is None:
        out = np.empty(shape3, dtype=np.uint8)
    else:
        _check_out(out, shape3)
    run_ranges(lambda start, stop: fill_polygons_3d(vertices, offsets, order, slice_starts[start:stop + 1],
                                                    out[start:stop]), shape3[0], runs_per_thread=4)
    return out
