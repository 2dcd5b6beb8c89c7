"""Polygon fill kernel: scan-line fill with a per-row event table, bit-identical to ``skimage.draw.polygon2mask``.

Coordinates are pixel units, vertices ``(row, column)``; pixel ``(r, c)`` has its centre at ``(r, c)``. Images
are C-ordered ``(row, column)`` uint8, volumes ``(slice, row, column)``. Validation is the job of
``voxelpipe.ops.polygon``; these kernels trust their inputs (finite vertices of moderate size, in-range indices).

The rule is skimage's ``point_in_polygon`` (O'Rourke's crossing numbers), evaluated with the same float64
operations. For the pixel centre ``(y, x)`` and every edge from vertex ``b = i - 1`` to ``a = i``, with
``y0 = ya - y``, ``y1 = yb - y``, ``x0 = xa - x``, ``x1 = xb - x`` and ``q = (x0*y1 - x1*y0) / (y1 - y0)``:

- a right crossing when ``(y0 > 0) != (y1 > 0)`` and ``q > 0``;
- a left crossing when ``(y0 < 0) != (y1 < 0)`` and ``q < 0``;
- the pixel is set when the right count is odd, or the left count is odd (a centre exactly on an edge), or a
  vertex lies within 1e-12 of the centre on both axes. Boundaries are therefore closed.

For a fixed row every step of ``q`` is monotone in ``x`` (float rounding is monotone), so each edge's
crossings cover a prefix (right) or a suffix (left) of the row's columns. The kernel finds where each starts,
by evaluating ``q`` exactly as above at the two or three columns next to the intersection, or without
evaluating it when the intersection is clearly between two columns (error bound below), and turns them into
sorted column events per row; a sweep over each row's events then XORs the inside runs into the output.
Cost: edges x rows they span, plus filled pixels.

No fastmath here (``_jit.jit(exact=True)``): ``reassoc`` would let LLVM hoist
``xa * y1`` out of ``(xa - x) * y1`` and ``arcp`` turns ``/`` into a multiply by a reciprocal, either of which
changes the rounding of ``q`` and so the pixels exactly on an edge.
"""
from __future__ import annotations

import numpy as np

from ._jit import jit

VERTEX_EPS = 1e-12  # skimage's tolerance for "the centre is a vertex"
# Shortcut: with M = max(|xa|, |xb|, columns) + 1 and u = 2**-53, the estimate ``xb + (y - yb) * slope`` is
# within ~12 u M of the true intersection, and skimage's q(c) has the sign of (intersection - c) whenever that
# is beyond ~7 u M (y0 and y1 straddle 0, so y1 - y0 does not cancel). When the estimate is farther than
# _CERTAIN * M (~50x the sum) from both neighbouring columns, and |y1 - y0| >= _TINY (so no underflow matters),
# the signs at every column are known and the walk evaluating q is skipped.
_CERTAIN = 2.0**-40
_TINY = 2.0**-900
_INITIAL_EVENTS = 4096


@jit(exact=True)
def first_bad_vertex(vertices: np.ndarray, limit: float) -> int:
    """Index of the first row of ``vertices`` with a value that is NaN or beyond ``+-limit``; -1 if none."""
    flat = vertices.ravel()
    ok = True
    for k in range(flat.shape[0]):  # branch-free first, so that the usual all-good case vectorises
        ok &= abs(flat[k]) <= limit  # NaN compares False
    if ok:
        return -1
    for k in range(flat.shape[0]):
        if not abs(flat[k]) <= limit:
            return k // vertices.shape[1]
    return -1


@jit(exact=True)
def _q(xa: float, xb: float, y0: float, y1: float, x: float) -> float:
    """skimage's crossing value for the edge (b -> a) seen from column ``x`` (> 0: crossing to the right)."""
    x0 = xa - x
    x1 = xb - x
    return (x0 * y1 - x1 * y0) / (y1 - y0)


@jit(exact=True)
def _thresholds(xa: float, xb: float, y0: float, y1: float, ncols: int, guess: int) -> tuple:
    """``(first column with q <= 0, first column with q < 0)``, each clamped to ``[0, ncols]``.

    ``q`` is non-increasing in the column, so a walk from ``guess`` finds both; with a good guess (the
    intersection rounded up) that takes two evaluations of ``q``.
    """
    c = guess
    while c > 0 and _q(xa, xb, y0, y1, float(c - 1)) <= 0.0:
        c -= 1
    qc = _q(xa, xb, y0, y1, float(c)) if c < ncols else -1.0
    while c < ncols and qc > 0.0:
        c += 1
        qc = _q(xa, xb, y0, y1, float(c)) if c < ncols else -1.0
    first_at_most = c
    while c < ncols and not (qc < 0.0):
        c += 1
        qc = _q(xa, xb, y0, y1, float(c)) if c < ncols else -1.0
    return first_at_most, c


@jit(exact=True)
def _clamp_index(value: float, lo: int, hi: int) -> int:
    """``value`` (a float holding an integer) clamped to ``[lo, hi]`` before the int conversion; NaN -> ``lo``."""
    if not value >= lo:
        return lo
    if value > hi:
        return hi
    return int(value)


@jit(exact=True)
def _vertex_pixel(ya: float, xa: float, nrows: int, ncols: int) -> tuple:
    """``(row, column)`` of the pixel centre within 1e-12 of vertex ``(ya, xa)`` (skimage's test), else (-1, -1)."""
    ry = np.floor(ya + 0.5)
    rx = np.floor(xa + 0.5)
    if 0.0 <= ry < nrows and 0.0 <= rx < ncols:
        dy = ya - ry
        dx = xa - rx
        if -VERTEX_EPS < dx < VERTEX_EPS and -VERTEX_EPS < dy < VERTEX_EPS:
            return int(ry), int(rx)
    return -1, -1


@jit(exact=True)
def _sift_down(heap: np.ndarray, root: int, end: int) -> None:
    """Move ``heap[root]`` down the max-heap ``heap[:end]`` to its place."""
    while True:
        child = 2 * root + 1
        if child >= end:
            return
        if child + 1 < end and heap[child] < heap[child + 1]:
            child += 1
        if heap[root] >= heap[child]:
            return
        heap[root], heap[child] = heap[child], heap[root]
        root = child


@jit(exact=True)
def _sort(keys: np.ndarray, start: int, stop: int) -> None:
    """Sort ``keys[start:stop]`` in place: insertion sort for the usual handful of events per row, heapsort
    beyond 32 (numba's ``ndarray.sort`` would add seconds of compilation to the first run)."""
    n = stop - start
    if n > 32:
        heap = keys[start:stop]
        for root in range(n // 2 - 1, -1, -1):
            _sift_down(heap, root, n)
        top = np.int64(0)  # not a literal 0, so both calls share one compiled _sift_down
        for end in range(n - 1, 0, -1):
            heap[0], heap[end] = heap[end], heap[0]
            _sift_down(heap, top, end)
        return
    for i in range(start + 1, stop):
        k = keys[i]
        j = i - 1
        while j >= start and keys[j] > k:
            keys[j + 1] = keys[j]
            j -= 1
        keys[j + 1] = k


@jit(exact=True)
def fill_polygon_into(vertices: np.ndarray, start: int, stop: int, out: np.ndarray, rowstart: np.ndarray,
                      rowend: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """XOR the pixels inside polygon ``vertices[start:stop]`` into ``out``.

    ``vertices``: float64 ``(V, 2)``, ``(row, column)`` in pixels; the polygon is closed (last to first vertex).
    ``out``: 2-D uint8 ``(rows, columns)``, values 0/1. ``rowstart``, ``rowend``: int64 scratch of at least
    ``rows + 1``. ``keys``: int64 scratch for the events; returns it, or a larger replacement when it was too
    small. An event key is ``column << 3 | kind``: kind bit 0 toggles the right-crossing parity, bit 1 the
    left one (3 = both, the usual case), 4 / 5 start / end a vertex pixel.
    """
    n = stop - start
    nrows, ncols = out.shape
    if n == 0:
        return keys
    ymin = vertices[start, 0]
    ymax = ymin
    for i in range(start + 1, stop):
        y = vertices[i, 0]
        ymin = min(ymin, y)
        ymax = max(ymax, y)
    if np.ceil(ymax) < 0.0 or np.floor(ymin) > nrows - 1:
        return keys
    zero = np.int64(0)  # not a literal 0, so every call shares one compiled _clamp_index
    r_lo = _clamp_index(np.floor(ymin), zero, nrows - 1)
    r_hi = _clamp_index(np.ceil(ymax), zero, nrows - 1)
    m = r_hi - r_lo + 1

    # room per row: 2 events per vertex pixel and per edge spanning the row (difference array, then prefix sum)
    rowstart[: m + 1] = 0
    vertex_pixels = 0
    for i in range(start, stop):
        ry, rx = _vertex_pixel(vertices[i, 0], vertices[i, 1], nrows, ncols)
        if ry >= 0:  # then r_lo <= ry <= r_hi
            rowstart[ry - r_lo] += 2
            rowstart[ry - r_lo + 1] -= 2
            vertex_pixels += 1
    for i in range(n):
        a = start + i
        b = start + i - 1 if i > 0 else stop - 1
        ya = vertices[a, 0]
        yb = vertices[b, 0]
        if ya != yb:
            first = _clamp_index(np.ceil(min(ya, yb)), r_lo, r_hi + 1)
            last = _clamp_index(np.floor(max(ya, yb)), r_lo - 1, r_hi)
            if first <= last:
                rowstart[first - r_lo] += 2
                rowstart[last - r_lo + 1] -= 2
    total = 0
    run = 0
    for slot in range(m):
        run += rowstart[slot]
        rowstart[slot] = total
        rowend[slot] = total
        total += run
    if keys.shape[0] < total:
        keys = np.empty(max(total, 2 * keys.shape[0]), np.int64)

    # events: where each edge's crossings start (right: columns < t_right, left: columns >= t_left)
    for i in range(n):
        a = start + i
        b = start + i - 1 if i > 0 else stop - 1
        ya = vertices[a, 0]
        xa = vertices[a, 1]
        yb = vertices[b, 0]
        xb = vertices[b, 1]
        if ya == yb:
            continue
        first = _clamp_index(np.ceil(min(ya, yb)), r_lo, r_hi + 1)
        last = _clamp_index(np.floor(max(ya, yb)), r_lo - 1, r_hi)
        slope = (xa - xb) / (ya - yb)
        margin = _CERTAIN * (max(abs(xa), abs(xb), float(ncols)) + 1.0)
        for y in range(first, last + 1):
            fy = float(y)
            y0 = ya - fy
            y1 = yb - fy
            right = (y0 > 0.0) != (y1 > 0.0)
            left = (y0 < 0.0) != (y1 < 0.0)
            if not (right or left):
                continue
            x_cross = xb + (fy - yb) * slope
            above = np.ceil(x_cross)
            if above - x_cross > margin and x_cross - (above - 1.0) > margin and abs(y1 - y0) >= _TINY:
                t_right = t_left = _clamp_index(above, zero, ncols)  # q's sign is certain at every column
            else:
                t_right, t_left = _thresholds(xa, xb, y0, y1, ncols, _clamp_index(above, zero, ncols))
            slot = y - r_lo
            if right and left and t_right == t_left:
                if t_right < ncols:
                    keys[rowend[slot]] = (t_right << 3) | 3
                    rowend[slot] += 1
            else:
                if right and t_right < ncols:
                    keys[rowend[slot]] = (t_right << 3) | 1
                    rowend[slot] += 1
                if left and t_left < ncols:
                    keys[rowend[slot]] = (t_left << 3) | 2
                    rowend[slot] += 1
    for i in range(start, stop if vertex_pixels > 0 else start):
        ry, rx = _vertex_pixel(vertices[i, 0], vertices[i, 1], nrows, ncols)
        if ry >= 0:
            slot = ry - r_lo
            keys[rowend[slot]] = (rx << 3) | 4
            keys[rowend[slot] + 1] = ((rx + 1) << 3) | 5
            rowend[slot] += 2

    # each row: the inside runs from its events
    for slot in range(m):
        begin = rowstart[slot]
        end = rowend[slot]
        if end == begin:
            continue
        row = out[r_lo + slot]
        simple = True
        for e in range(begin, end):
            simple &= (keys[e] & 7) == 3
        if simple:
            # only events toggling both parities (the usual row): the row is the XOR of the suffixes [t, ncols)
            # of its events, which is the XOR of [min, max) of the events taken in pairs, in any order
            for e in range(begin, end, 2):
                lo = keys[e] >> 3
                hi = (keys[e + 1] >> 3) if e + 1 < end else ncols
                span = row[min(lo, hi):max(lo, hi)]
                for c in range(span.shape[0]):
                    span[c] ^= 1
            continue
        _sort(keys, begin, end)  # general row: sweep the sorted events, the state holds up to the next column
        r_odd = 0
        l_odd = 0
        n_vertex = 0
        e = begin
        while e < end:
            col = keys[e] >> 3
            while e < end and (keys[e] >> 3) == col:
                kind = keys[e] & 7
                if kind < 4:
                    r_odd ^= kind & 1
                    l_odd ^= kind >> 1
                elif kind == 4:
                    n_vertex += 1
                else:
                    n_vertex -= 1
                e += 1
            if r_odd or l_odd or n_vertex > 0:
                nxt = (keys[e] >> 3) if e < end else ncols
                span = row[col:nxt]
                for c in range(span.shape[0]):  # indices from 0 up: no wraparound checks, so it vectorises
                    span[c] ^= 1
    return keys


@jit(exact=True)
def fill_polygons_2d(vertices: np.ndarray, offsets: np.ndarray, out: np.ndarray) -> None:
    """Zero ``out`` (uint8 ``(rows, columns)``) and fill polygons ``p`` = ``vertices[offsets[p]:offsets[p + 1]]``
    with the even-odd rule across all of them (XOR of each polygon's pixels)."""
    out[:] = 0
    rowstart = np.empty(out.shape[0] + 1, np.int64)
    rowend = np.empty(out.shape[0] + 1, np.int64)
    keys = np.empty(_INITIAL_EVENTS, np.int64)
    for p in range(offsets.shape[0] - 1):
        keys = fill_polygon_into(vertices, offsets[p], offsets[p + 1], out, rowstart, rowend, keys)


@jit(exact=True)
def fill_polygons_3d(vertices: np.ndarray, offsets: np.ndarray, order: np.ndarray, slice_starts: np.ndarray,
                     out: np.ndarray) -> None:
    """Zero ``out`` (uint8 ``(slices, rows, columns)``) and fill each slice ``z`` with polygons
    ``order[slice_starts[z]:slice_starts[z + 1]]`` (indices into ``offsets``), even-odd across them.
    Serial: ``voxelpipe.ops.polygon`` runs it on runs of slices in threads (``slice_starts`` and ``out``
    sliced alike; it releases the GIL), which compiles much faster than numba's ``parallel=True``."""
    nz, nrows, ncols = out.shape
    for z in range(nz):
        out[z] = 0
        if slice_starts[z + 1] == slice_starts[z]:
            continue
        rowstart = np.empty(nrows + 1, np.int64)
        rowend = np.empty(nrows + 1, np.int64)
        keys = np.empty(_INITIAL_EVENTS, np.int64)
        for j in range(slice_starts[z], slice_starts[z + 1]):
            p = order[j]
            keys = fill_polygon_into(vertices, offsets[p], offsets[p + 1], out[z], rowstart, rowend, keys)
