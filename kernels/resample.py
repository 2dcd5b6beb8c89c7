"""Resampling kernels: a 3-D array onto another grid through an index-to-index affine.

Arrays are C-ordered ``(slice, row, column)`` = axes 0, 1, 2. For every output voxel ``(k, j, i)`` the input
continuous index is ``p = matrix[:3, :3] @ (k, j, i) + matrix[:3, 3]``, evaluated per axis ``a`` as
``(matrix[a, 0] * k + matrix[a, 1] * j + matrix[a, 3]) + matrix[a, 2] * i`` in float64 (the same convention as
``scipy.ndimage.affine_transform(src, matrix)``: output index -> input index).

Edges, as ``scipy.ndimage`` ``mode="constant"`` (order 0 and 1): a point is inside when
``0 <= p[a] <= n[a] - 1`` on every axis (between the first and last voxel centre, no half-voxel margin); outside
points get ``fill``. One difference: a point less than ``EDGE_TOLERANCE`` (1e-9 voxel) beyond the first or last
centre counts as on it (it is clamped there). Matrices built from geometries carry float noise, e.g. the first
output centre of a 3 mm -> 1 mm resample lands on the first input centre at ``-5.6e-17``, which scipy would fill.

Orders (``ORDER_*``):

* ``ORDER_NEAREST``: ``src[floor(p + 0.5)]`` (ties round up, as scipy's order 0).
* ``ORDER_LINEAR``: trilinear from the 8 neighbours, computed in float32 as nested lerps
  ``a + w * (b - a)``: first along axis 1, then axis 2, then axis 0. The upper neighbour is clamped at the last
  index (its weight is 0 there).
* ``ORDER_LABEL`` (general path only): for label maps. Every non-zero label value gets the sum of the
  trilinear weights (float64) of the neighbours that carry it; the label with the largest sum wins if that sum
  is >= 0.5 (ties: the smaller label value), else 0. For a 0/1 mask that is "linear, then >= 0.5".

Two entry points, same results: :func:`resample_affine` (any matrix) and :func:`resample_separable` (diagonal
3×3 part: axis-aligned scaling, flip and shift), which builds per-axis index/weight tables, interpolates each
needed input slice in-plane once (along axis 1, then axis 2) into per-thread scratch buffers, and blends two of
those per output slice along axis 0. Both write the same float operations in the same order; with the
project's fastmath flags (``nsz`` + ``reassoc``, see ``_jit.py``) LLVM may re-associate them differently once a
loop is vectorised, so linear results agree to a few float32 ulp (bit for bit with fastmath off); nearest
results are identical. Inner loops run over zero-based views with unsigned index tables so that they vectorise
(numba's negative-index wraparound on signed indices otherwise blocks it: 4× slower).

Validation is the job of ``voxelpipe.ops.resample``; these kernels trust their inputs: ``src`` 3-D C-contiguous
(float32, int16, uint8), ``out`` 3-D C-contiguous (float32 for linear, ``src``'s dtype otherwise), ``matrix``
float64 (4, 4), ``fill`` a float64 representable in ``out``'s dtype.
"""
from __future__ import annotations

import numpy as np

from ._jit import jit

ORDER_NEAREST = 0
ORDER_LINEAR = 1
ORDER_LABEL = 2
EDGE_TOLERANCE = 1e-9  # voxels: coordinates this close beyond the first/last centre are clamped onto it


@jit
def _lerp(a, b, w):
    return a + w * (b - a)


@jit
def resample_affine(src, matrix, out, order, fill, k_start, k_stop):
    """``out[k, j, i] = src(matrix @ (k, j, i, 1))`` for the output slices ``k_start <= k < k_stop``; ``fill``
    outside. See module doc. Serial: ``voxelpipe.ops.resample`` runs it on runs of output slices in threads."""
    nz, ny, nx = src.shape
    oz, oy, ox = out.shape
    lz = np.float64(nz - 1)
    ly = np.float64(ny - 1)
    lx = np.float64(nx - 1)
    m = matrix
    flat = src.reshape(nz * ny * nx)
    # strides in elements, unsigned: numba adds no negative-index wraparound to unsigned indices
    sz = np.uint64(ny * nx)
    sy = np.uint64(nx)
    zero = np.uint64(0)
    one = np.uint64(1)
    corner_label = np.empty(8, dtype=src.dtype)
    corner_weight = np.empty(8, dtype=np.float64)
    for k in range(k_start, k_stop):
        for j in range(oy):
            line = out[k, j]
            rz = m[0, 0] * k + m[0, 1] * j + m[0, 3]
            ry = m[1, 0] * k + m[1, 1] * j + m[1, 3]
            rx = m[2, 0] * k + m[2, 1] * j + m[2, 3]
            for i in range(ox):
                z = rz + m[0, 2] * i
                y = ry + m[1, 2] * i
                x = rx + m[2, 2] * i
                # written so that NaN coordinates count as outside
                if not (z >= -EDGE_TOLERANCE and z <= lz + EDGE_TOLERANCE and y >= -EDGE_TOLERANCE
                        and y <= ly + EDGE_TOLERANCE and x >= -EDGE_TOLERANCE and x <= lx + EDGE_TOLERANCE):
                    line[i] = fill
                    continue
                z = min(max(z, 0.0), lz)
                y = min(max(y, 0.0), ly)
                x = min(max(x, 0.0), lx)
                if order == ORDER_NEAREST:
                    line[i] = flat[np.uint64(np.floor(z + 0.5)) * sz + np.uint64(np.floor(y + 0.5)) * sy
                                   + np.uint64(np.floor(x + 0.5))]
                    continue
                fz = np.floor(z)  # z >= 0
                fy = np.floor(y)
                fx = np.floor(x)
                base = np.uint64(fz) * sz + np.uint64(fy) * sy + np.uint64(fx)
                # offsets to the upper neighbours, 0 on the last index (weight 0 there), as scipy's clamp
                dz = sz if fz < lz else zero
                dy = sy if fy < ly else zero
                dx = one if fx < lx else zero
                if order == ORDER_LINEAR:
                    wz = np.float32(z - fz)
                    wy = np.float32(y - fy)
                    wx = np.float32(x - fx)
                    b0 = base
                    b1 = base + dz
                    # along axis 1, then axis 2, then axis 0 (the order of the separable path)
                    a0 = _lerp(np.float32(flat[b0]), np.float32(flat[b0 + dy]), wy)
                    c0 = _lerp(np.float32(flat[b0 + dx]), np.float32(flat[b0 + dy + dx]), wy)
                    a1 = _lerp(np.float32(flat[b1]), np.float32(flat[b1 + dy]), wy)
                    c1 = _lerp(np.float32(flat[b1 + dx]), np.float32(flat[b1 + dy + dx]), wy)
                    line[i] = _lerp(_lerp(a0, c0, wx), _lerp(a1, c1, wx), wz)
                    continue
                # ORDER_LABEL
                tz = z - fz
                ty = y - fy
                tx = x - fx
                first = flat[base]
                same = True
                n = 0
                for c in range(8):
                    offset = (dz if c & 4 else zero) + (dy if c & 2 else zero) + (dx if c & 1 else zero)
                    lab = flat[base + offset]
                    same = same and lab == first
                    w = (tz if c & 4 else 1.0 - tz) * (ty if c & 2 else 1.0 - ty) * (tx if c & 1 else 1.0 - tx)
                    if w > 0.0 and lab != 0:
                        corner_label[n] = lab
                        corner_weight[n] = w
                        n += 1
                if same:  # one label around the point (the usual case): its weight is 1
                    line[i] = first
                    continue
                best = first * 0
                best_w = 0.0
                for a in range(n):
                    lab = corner_label[a]
                    seen = False
                    for b in range(a):
                        if corner_label[b] == lab:
                            seen = True
                            break
                    if seen:
                        continue
                    total = 0.0
                    for b in range(a, n):
                        if corner_label[b] == lab:
                            total += corner_weight[b]
                    if total > best_w or (total == best_w and lab < best):
                        best = lab
                        best_w = total
                line[i] = best if best_w >= 0.5 else 0


@jit
def _axis_table(n_out, n_in, scale, offset, lo_index, hi_index, weight, nearest):
    """Per-axis tables for output indices ``o``: input coordinate ``c = scale * o + offset``.

    Fills ``lo_index[o]`` (floor, or the nearest index), ``hi_index[o]`` (lo + 1 clamped), ``weight[o]``
    (float32 fraction), with the same edge rule as the general path. Returns ``(first, stop)``: the output
    indices whose coordinate is inside the input form the range ``first <= o < stop`` (``c`` is monotonic in
    ``o``).
    """
    last = np.float64(n_in - 1)
    first = n_out
    stop = 0
    for o in range(n_out):
        c = scale * o + offset
        if c >= -EDGE_TOLERANCE and c <= last + EDGE_TOLERANCE:
            c = min(max(c, 0.0), last)
            i0 = int(np.floor(c + 0.5)) if nearest else int(c)
            lo_index[o] = i0
            hi_index[o] = min(i0 + 1, n_in - 1)
            weight[o] = np.float32(c - i0)
            if o < first:
                first = o
            stop = o + 1
        else:
            lo_index[o] = 0
            hi_index[o] = 0
            weight[o] = np.float32(0.0)
    if stop <= first:
        return 0, 0
    return first, stop


@jit
def resample_separable(src, scale, offset, out, order, fill, k_start, k_stop):
    """Same as :func:`resample_affine` with ``matrix = diag(scale) + offset`` (order nearest or linear).

    ``scale``, ``offset``: float64 (3,), input index = ``scale[a] * o + offset[a]`` along axis ``a``.
    ``k_start``, ``k_stop``: only output slices ``k_start <= k < k_stop`` are written, with scratch buffers of this
    call (one input row and two output planes, float32). Serial: ``voxelpipe.ops.resample`` runs it on
    contiguous runs of output slices in threads (it releases the GIL), which compiles much faster than numba's
    ``parallel=True``.
    """
    nz, ny, nx = src.shape
    oz, oy, ox = out.shape
    nearest = order == ORDER_NEAREST
    # unsigned index tables: numba adds no negative-index wraparound to unsigned indices, and inner loops
    # run over zero-based views, so LLVM can vectorise them
    z0 = np.empty(oz, np.uint32)
    z1 = np.empty(oz, np.uint32)
    wz = np.empty(oz, np.float32)
    y0 = np.empty(oy, np.uint32)
    y1 = np.empty(oy, np.uint32)
    wy = np.empty(oy, np.float32)
    x0 = np.empty(ox, np.uint32)
    x1 = np.empty(ox, np.uint32)
    wx = np.empty(ox, np.float32)
    # same coordinates as the general path, (m[a,0]*k + m[a,1]*j + m[a,3]) + m[a,2]*i, whose off-diagonal
    # terms are exact zeros here
    kz0, kz1 = _axis_table(oz, nz, scale[0], offset[0], z0, z1, wz, nearest)
    jy0, jy1 = _axis_table(oy, ny, scale[1], offset[1], y0, y1, wy, nearest)
    ix0, ix1 = _axis_table(ox, nx, scale[2], offset[2], x0, x1, wx, nearest)
    empty_plane = jy1 <= jy0 or ix1 <= ix0
    n_inside = ix1 - ix0  # output columns inside the input: ix0 <= i < ix1

    if nearest:
        columns = x0[ix0:ix1]
        for k in range(k_start, k_stop):
            if empty_plane or k < kz0 or k >= kz1:
                out[k, :, :] = fill
                continue
            for j in range(oy):
                if j < jy0 or j >= jy1:
                    out[k, j, :] = fill
                    continue
                line = out[k, j, ix0:ix1]
                source = src[z0[k], y0[j]]
                for i in range(n_inside):
                    line[i] = source[columns[i]]
                out[k, j, :ix0] = fill
                out[k, j, ix1:] = fill
        return

    # Linear. The call's run of output slices keeps two "planes": input slices already interpolated in-plane
    # onto the output rows and columns (along axis 1 into one padded row, then along axis 2), so every input
    # slice the run needs is interpolated in-plane once; an output slice is then one contiguous blend of two
    # planes along axis 0.
    col_lo = 0
    col_hi = 0
    if not empty_plane:
        col_lo = min(x0[ix0], x0[ix1 - 1])
        col_hi = max(x1[ix0], x1[ix1 - 1])
    n_cols = col_hi + 1 - col_lo  # input columns read
    rel = np.empty(max(n_inside, 0), np.uint32)  # x0 - col_lo of the inside output columns
    rel_w = np.empty(max(n_inside, 0), np.float32)
    for i in range(n_inside):
        rel[i] = x0[ix0 + i] - col_lo
        rel_w[i] = wx[ix0 + i]
    row = np.empty(n_cols + 1, np.float32)  # one output row of one input slice before axis 2, one pad value
    row_next = row[1:]
    planes = np.empty((2, oy, ox), np.float32)
    held0 = -1  # input slice held by plane 0 / plane 1
    held1 = -1
    for k in range(k_start, k_stop):
        if empty_plane or k < kz0 or k >= kz1:
            out[k, :, :] = fill
            continue
        need_a = np.int64(z0[k])
        need_b = np.int64(z1[k])
        for need in (need_a, need_b):
            if need == held0 or need == held1:
                continue
            other = need_b if need == need_a else need_a
            slot = 1 if held0 == other else 0  # overwrite the plane not holding the other needed slice
            for j in range(jy0, jy1):
                w = wy[j]
                line_a = src[need, y0[j], col_lo:col_hi + 1]
                line_b = src[need, y1[j], col_lo:col_hi + 1]
                for c in range(n_cols):
                    row[c] = _lerp(np.float32(line_a[c]), np.float32(line_b[c]), w)
                row[n_cols] = row[n_cols - 1]  # so x1 = x0 + 1 everywhere, clamped like the general path
                plane = planes[slot, j, ix0:ix1]
                for i in range(n_inside):
                    c = rel[i]
                    plane[i] = _lerp(row[c], row_next[c], rel_w[i])
            if slot == 0:
                held0 = need
            else:
                held1 = need
        plane_a = planes[0] if held0 == need_a else planes[1]
        plane_b = planes[0] if held0 == need_b else planes[1]
        w = wz[k]
        for j in range(oy):
            if j < jy0 or j >= jy1:
                out[k, j, :] = fill
                continue
            line = out[k, j, ix0:ix1]
            a = plane_a[j, ix0:ix1]
            b = plane_b[j, ix0:ix1]
            for i in range(n_inside):
                line[i] = _lerp(a[i], b[i], w)
            out[k, j, :ix0] = fill
            out[k, j, ix1:] = fill
