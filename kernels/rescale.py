"""Modality rescale kernel: stored pixel values -> output units (e.g. HU for CT).

Arrays are C-ordered ``(slice, row, column)``; ``slope`` and ``intercept`` hold one value per slice
(DICOM RescaleSlope / RescaleIntercept, which can differ per slice, e.g. PET). Validation is the job of
``voxelpipe.ops.rescale``; this kernel trusts its inputs.
"""
from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import overload

from ._jit import jit


def _plan(stored, out):
    """(integer out, small integer stored, lowest, highest of out as float64); constant at compile time."""
    raise NotImplementedError("only callable from numba-compiled code")


@overload(_plan)
def _plan_impl(stored, out):
    if isinstance(out.dtype, types.Integer):
        info = np.iinfo(np.dtype(str(out.dtype)))
        lo, hi = float(info.min), float(info.max)
        # stored of <= 16 bits times an integral slope fits int32 arithmetic exactly (bounds checked per slice)
        small = isinstance(stored.dtype, types.Integer) and stored.dtype.bitwidth <= 16

        def impl(stored, out):
            return True, small, lo, hi

        return impl

    def impl(stored, out):  # float output: nothing to round or saturate
        return False, False, -np.inf, np.inf

    return impl


# Per-slice bounds for the int32 path: |stored| <= 65535, so |stored * slope + intercept| < 2**31.
_INT32_MAX_SLOPE = 16384.0
_INT32_MAX_INTERCEPT = 536870912.0  # 2**29


@jit
def rescale_into(stored, slope, intercept, out):
    """Write ``out[z, y, x] = stored[z, y, x] * slope[z] + intercept[z]``.

    ``stored``: 3-D C-contiguous ``(slice, row, column)`` integer or float array of stored pixel values.
    ``slope``, ``intercept``: float64 1-D, one value per slice, in output units per stored unit / output units.
    ``out``: preallocated 3-D array of the same shape, int16 or float32 (may be ``stored`` itself when both
    are float32: the rescale is done in place).

    Computed in float64, or exactly in int32 when ``stored`` has at most 16 integer bits, ``out`` is an
    integer and the slice's slope and intercept are integral (same result, about twice as fast).
    An integer ``out`` gets the value rounded to nearest (ties to even) and saturated to its dtype's range;
    NaN is written as 0. Returns the number of values that were not integral or did not fit (0 means the
    integer output is exact); a float ``out`` always returns 0.

    Serial: ``voxelpipe.ops.rescale`` runs it on runs of slices in threads (it releases the GIL), which compiles
    much faster than numba's ``parallel=True``.
    """
    is_int, small, lo, hi = _plan(stored, out)
    nz, ny, nx = stored.shape
    bad = 0
    for i in range(nz * ny):
        z = i // ny
        y = i - z * ny
        s = slope[z]
        b = intercept[z]
        row_bad = 0
        if (
            small
            and s == np.rint(s)
            and b == np.rint(b)
            and abs(s) <= _INT32_MAX_SLOPE
            and abs(b) <= _INT32_MAX_INTERCEPT
        ):
            si = np.int32(s)
            bi = np.int32(b)
            ilo = np.int32(lo)
            ihi = np.int32(hi)
            for x in range(nx):
                v = np.int32(stored[z, y, x]) * si + bi
                c = ilo if v < ilo else v
                c = ihi if c > ihi else c
                row_bad += np.int32(c != v)
                out[z, y, x] = c
        elif is_int:
            for x in range(nx):
                v = np.float64(stored[z, y, x]) * s + b
                c = np.rint(v)
                c = lo if c < lo else c
                c = hi if c > hi else c
                row_bad += np.int32(c != v)  # NaN != NaN, so NaN counts too
                c = 0.0 if c != c else c
                out[z, y, x] = np.int32(c)
        else:
            for x in range(nx):
                out[z, y, x] = np.float64(stored[z, y, x]) * s + b
        bad += row_bad
    return bad
