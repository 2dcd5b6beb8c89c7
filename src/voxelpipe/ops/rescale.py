"""Modality rescale (RescaleSlope / RescaleIntercept) of stored pixel values, validated.

Arrays are ``(row, column)`` or ``(slice, row, column)``; slope and intercept are per slice. The output is
int16 when every value is integral and fits, else float32.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from voxelpipe.core.errors import BadTagValueError, InputError, ValuesDoNotFitError
from voxelpipe.kernels.rescale import rescale_into
from voxelpipe.ops.threads import run_ranges

__all__ = ["rescale", "output_dtype", "check_rescale"]

INT16 = np.dtype(np.int16)
FLOAT32 = np.dtype(np.float32)
OUTPUT_DTYPES = (INT16, FLOAT32)

PerSlice = float | Sequence[float] | np.ndarray


def output_dtype(
    stored_min: float, stored_max: float, slopes: PerSlice, intercepts: PerSlice
) -> np.dtype:
    """int16 if ``stored * slope + intercept`` is integral and fits int16 for the stored range, else float32.

    ``stored_min``/``stored_max`` bound the stored values (from the data, or from BitsStored and
    PixelRepresentation); ``slopes``/``intercepts`` are scalars or one value per slice. The check is on the
    bounds only: for float stored data the values in between may still be non-integral.
    """
    slopes = np.atleast_1d(np.asarray(slopes, dtype=np.float64))
    intercepts = np.atleast_1d(np.asarray(intercepts, dtype=np.float64))
    bounds = np.array([stored_min, stored_max], dtype=np.float64)
    values = np.concatenate([slopes, intercepts, bounds])
    if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
        return FLOAT32
    # Linear in the stored value, so the extremes over all slices come from the two bounds.
    ends = np.concatenate([bounds[0] * slopes + intercepts, bounds[1] * slopes + intercepts])
    info = np.iinfo(np.int16)
    if ends.size and (ends.min() < info.min or ends.max() > info.max):
        return FLOAT32
    return INT16


FLOAT32_MAX = float(np.finfo(np.float32).max)
SLOPE_TAG = "RescaleSlope (0028,1053)"
INTERCEPT_TAG = "RescaleIntercept (0028,1052)"


def check_rescale(stored_range: tuple[float, float], pairs: Sequence[tuple[float, float]],
                  paths: Sequence[str]) -> None:
    """Refuse rescale values no float32 volume can hold: a slope or intercept that is not finite, or a pair
    whose ``stored * slope + intercept`` exceeds float32's range for the stored values ``stored_range``
    (min, max, from BitsStored and PixelRepresentation). ``pairs[i]`` (slope, intercept) comes from ``paths[i]``.

    Raises:
        BadTagValueError: Naming the first offending file, the tag and its value.
    """
    values = np.asarray(pairs, dtype=np.float64).reshape(-1, 2)
    slopes, intercepts = values[:, 0], values[:, 1]
    for column, tag in ((slopes, SLOPE_TAG), (intercepts, INTERCEPT_TAG)):
        bad = ~np.isfinite(column)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise BadTagValueError(paths[i], tag, f"{column[i]:g}", "not a finite number")
    lo, hi = float(stored_range[0]), float(stored_range[1])
    with np.errstate(over="ignore", invalid="ignore"):
        ends = np.abs(np.stack([lo * slopes + intercepts, hi * slopes + intercepts]))
    bad = ~np.all(np.isfinite(ends) & (ends <= FLOAT32_MAX), axis=0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise BadTagValueError(paths[i], f"{SLOPE_TAG} / {INTERCEPT_TAG}", f"{slopes[i]:g} / {intercepts[i]:g}",
                               f"stored values {lo:g}..{hi:g} rescale beyond float32's range ({FLOAT32_MAX:.4g})")


def _per_slice(name: str, value: PerSlice, nz: int) -> np.ndarray:
    """``value`` as a float64 array of length ``nz`` (a scalar is repeated); checks length and finiteness."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a number or a sequence of numbers, got {value!r}") from exc
    if arr.ndim == 0:
        arr = np.full(nz, float(arr))
    elif arr.ndim != 1 or arr.shape[0] != nz:
        raise InputError(
            f"{name} must be a scalar or have one value per slice ({nz}), got shape {arr.shape}: {value!r}"
        )
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"{name} must be finite, got {float(arr[i])!r} at slice {i}")
    return np.ascontiguousarray(arr)


def _check_dtype(what: str, dtype: object) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise InputError(f"{what} must be int16 or float32, got {dtype!r}") from exc
    if dt not in OUTPUT_DTYPES:
        raise InputError(f"{what} must be int16 or float32, got {dt}")
    return dt


def rescale(
    stored: np.ndarray,
    slope: PerSlice,
    intercept: PerSlice,
    out: np.ndarray | None = None,
    dtype: np.dtype | type | str | None = None,
) -> np.ndarray:
    """Return ``stored * slope + intercept`` (per slice along axis 0), as int16 or float32.

    ``stored``: C-contiguous integer or float array, ``(row, column)`` or ``(slice, row, column)``.
    ``slope``, ``intercept``: scalars or one value per slice (finite).
    ``out``: optional preallocated C-contiguous int16/float32 array of the same shape (may be ``stored``
    itself when that is float32). ``dtype``: int16 or float32; without ``out``/``dtype`` the dtype is chosen
    by :func:`output_dtype` from the data's min/max.

    int16 that was chosen automatically or requested with ``dtype`` falls back to float32 when some value is
    not integral or does not fit; with an explicit int16 ``out`` that raises :class:`InputError` instead.
    """
    if not isinstance(stored, np.ndarray):
        raise InputError(f"stored must be a numpy array, got {type(stored).__name__}")
    if stored.ndim not in (2, 3):
        raise InputError(
            f"stored must be 2-D (row, column) or 3-D (slice, row, column), got {stored.ndim}-D shape {stored.shape}"
        )
    if stored.dtype.kind not in "iuf":
        raise InputError(f"stored must have an integer or float dtype, got {stored.dtype}")
    if not stored.flags.c_contiguous:
        raise InputError(f"stored must be C-contiguous (use np.ascontiguousarray), got strides {stored.strides}")
    shape = stored.shape
    stored3 = stored.reshape((1,) + shape) if stored.ndim == 2 else stored
    nz = stored3.shape[0]
    slopes = _per_slice("slope", slope, nz)
    intercepts = _per_slice("intercept", intercept, nz)

    want = None if dtype is None else _check_dtype("dtype", dtype)
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise InputError(f"out must be a numpy array, got {type(out).__name__}")
        _check_dtype("out dtype", out.dtype)
        if want is not None and want != out.dtype:
            raise InputError(f"dtype {want} does not match out dtype {out.dtype}")
        if out.shape != shape:
            raise InputError(f"out shape {out.shape} does not match stored shape {shape}")
        if not out.flags.c_contiguous:
            raise InputError(f"out must be C-contiguous, got strides {out.strides}")
        if not out.flags.writeable:
            raise InputError("out must be writeable")
        out3 = out.reshape(stored3.shape)
        nbad = rescale_slices(stored3, slopes, intercepts, out3)
        if nbad:
            raise ValuesDoNotFitError(
                f"{nbad} rescaled value(s) are not integral or do not fit int16 (slope {slope!r}, "
                f"intercept {intercept!r}); pass a float32 out"
            )
        return out

    if want is None:
        if stored.size:
            lo, hi = stored.min(), stored.max()
        else:
            lo = hi = 0
        want = output_dtype(lo, hi, slopes, intercepts)
    result = np.empty(stored3.shape, dtype=want)
    nbad = rescale_slices(stored3, slopes, intercepts, result)
    if nbad:  # int16 only: redo exactly as float32
        result = np.empty(stored3.shape, dtype=FLOAT32)
        rescale_slices(stored3, slopes, intercepts, result)
    return result.reshape(shape)


def rescale_slices(stored3: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray, out3: np.ndarray) -> int:
    """The rescale kernel on runs of slices in threads (3-D C-contiguous arrays, float64 per-slice slope and
    intercept, validated); returns the kernel's count of values that were not integral or did not fit."""
    return sum(run_ranges(lambda start, stop: rescale_into(stored3[start:stop], slopes[start:stop],
                                                           intercepts[start:stop], out3[start:stop]),
                          stored3.shape[0]))
