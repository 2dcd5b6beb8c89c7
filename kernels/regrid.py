"""Regridding kernel for slice stacks: uneven slice spacing and gantry tilt.

``src`` is a stack of parallel image planes ``(slice, row, column)``; the planes may be unevenly spaced and
shifted in-plane against each other (a gantry-tilted, sheared stack). Output slice ``k`` is a plane parallel to
them; it blends input slices ``lower[k]`` and ``lower[k] + 1`` with weights ``1 - weight[k]`` and ``weight[k]``
(linear along the normal; ``weight[k] == 0`` reads ``lower[k]`` only). Input slice ``m`` is read at the in-plane
index ``(j + shift_rows[m], i + shift_columns[m])`` for output voxel ``(k, j, i)``, bilinearly (first along
rows, then along columns, float32). A read whose index lies outside the slice's first-to-last pixel centres
(beyond ``EDGE_TOLERANCE`` pixel) makes the output voxel ``fill``.

Validation is the job of ``voxelpipe.ops.regrid``: ``src`` float32 3-D C-contiguous, ``out`` float32 3-D,
``lower`` int64 in ``[0, n - 1]`` (``lower + 1 <= n - 1`` wherever ``weight > 0``), ``weight`` float64 in
``[0, 1]``, shifts float64 per input slice.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import jit

EDGE_TOLERANCE = 1e-6  # pixels: reads this close beyond the first/last pixel centre are clamped onto it


@jit
def _axis(position, n):
    """(lower index, upper index, upper weight, inside) of a continuous index on an axis of ``n`` centres."""
    last = np.float64(n - 1)
    if position < -EDGE_TOLERANCE or position > last + EDGE_TOLERANCE:
        return 0, 0, np.float32(0.0), False
    if position < 0.0:
        position = 0.0
    if position > last:
        position = last
    lo = int(np.floor(position))
    hi = lo + 1 if lo + 1 < n else lo
    return lo, hi, np.float32(position - lo), True


@jit
def _blend_row(plane, shift_row, shift_column, j, row_out, weight, first):
    """Add ``weight`` × (plane read along output row ``j``) into ``row_out`` (or set it when ``first``);
    returns False when the row lies outside the plane (nothing written)."""
    ny, nx = plane.shape
    lo, hi, wy, inside = _axis(j + shift_row, ny)
    if not inside:
        return False
    a_row = plane[lo]
    b_row = plane[hi]
    for i in range(row_out.shape[0]):
        c0, c1, wx, ok = _axis(i + shift_column, nx)
        if not ok:
            row_out[i] = np.nan
            continue
        a = a_row[c0] + wy * (b_row[c0] - a_row[c0])
        b = a_row[c1] + wy * (b_row[c1] - a_row[c1])
        value = np.float32(weight) * (a + wx * (b - a))
        if first:
            row_out[i] = value
        else:
            row_out[i] += value
    return True


@jit(parallel=True)
def regrid_slices(src, lower, weight, shift_rows, shift_columns, out, fill):
    """Fill ``out`` from ``src`` as the module docstring says (linear along the normal, bilinear in-plane)."""
    oz, oy, ox = out.shape
    fill32 = np.float32(fill)
    for k in prange(oz):
        m0 = lower[k]
        w = weight[k]
        for j in range(oy):
            row_out = out[k, j]
            inside = _blend_row(src[m0], shift_rows[m0], shift_columns[m0], j, row_out, 1.0 - w, True)
            if inside and w > 0.0:
                inside = _blend_row(src[m0 + 1], shift_rows[m0 + 1], shift_columns[m0 + 1], j, row_out, w, False)
            if not inside:
                for i in range(ox):
                    row_out[i] = fill32
                continue
            for i in range(ox):
                if np.isnan(row_out[i]):
                    row_out[i] = fill32
