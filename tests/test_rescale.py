"""Rescale kernel and wrapper against pydicom's ``apply_modality_lut`` (an independent reference)."""
from __future__ import annotations

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.pixels import apply_modality_lut

from voxelpipe.core.errors import InputError
from voxelpipe.kernels.rescale import rescale_into
from voxelpipe.ops.rescale import output_dtype, rescale

STORED_DTYPES = ["uint8", "int16", "uint16", "int32", "float32"]


def _ds(slope: str, intercept: str) -> Dataset:
    ds = Dataset()
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    return ds


def _reference(stored: np.ndarray, slope: str, intercept: str) -> np.ndarray:
    """pydicom's float64 result (slice by slice for a 3-D stack with one slope/intercept per slice)."""
    return apply_modality_lut(stored, _ds(slope, intercept))


def _stored(dtype: str, shape: tuple[int, ...], seed: int = 0, integral: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "u":
        hi = min(int(np.iinfo(dt).max), 4095)
        return rng.integers(0, hi, size=shape, endpoint=True).astype(dt)
    if integral:
        return rng.integers(-2000, 3000, size=shape, endpoint=True).astype(dt)
    return rng.uniform(-2000.0, 3000.0, size=shape).astype(dt)


@pytest.mark.parametrize("dtype", STORED_DTYPES)
@pytest.mark.parametrize("slope, intercept", [("1", "-1024"), ("2", "-3000"), ("1", "0"), ("-1", "7")])
def test_integral_rescale_is_exact_int16(dtype, slope, intercept):
    stored = _stored(dtype, (4, 33, 47), seed=1)
    ref = _reference(stored, slope, intercept)
    out = rescale(stored, float(slope), float(intercept))
    assert out.dtype == np.int16
    assert out.shape == stored.shape
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("dtype", STORED_DTYPES)
@pytest.mark.parametrize("slope, intercept", [("0.7312", "-12.5"), ("1", "-0.5"), ("2.5e-3", "0")])
def test_non_integral_rescale_is_float32(dtype, slope, intercept):
    stored = _stored(dtype, (3, 29, 31), seed=2, integral=False)
    ref = _reference(stored, slope, intercept)
    out = rescale(stored, float(slope), float(intercept))
    assert out.dtype == np.float32
    np.testing.assert_array_max_ulp(out, ref.astype(np.float32), maxulp=1)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", STORED_DTYPES)
def test_2d_input(dtype):
    stored = _stored(dtype, (40, 50), seed=3)
    ref = _reference(stored, "1", "-1024")
    out = rescale(stored, 1, -1024)
    assert out.shape == (40, 50) and out.dtype == np.int16
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("dtype", ["uint16", "int16", "float32"])
def test_per_slice_slopes_differ(dtype):
    nz = 6
    stored = _stored(dtype, (nz, 21, 23), seed=4)
    rng = np.random.default_rng(5)
    slopes = [f"{s:.6f}" for s in rng.uniform(0.2, 3.0, nz)]
    intercepts = [f"{b:.3f}" for b in rng.uniform(-1500.0, 100.0, nz)]
    out = rescale(stored, [float(s) for s in slopes], [float(b) for b in intercepts])
    assert out.dtype == np.float32
    for z in range(nz):
        ref = _reference(stored[z], slopes[z], intercepts[z])
        np.testing.assert_array_max_ulp(out[z], ref.astype(np.float32), maxulp=1)


def test_per_slice_integral_slopes_stay_int16():
    stored = _stored("uint16", (3, 16, 16), seed=6)
    slopes, intercepts = ["1", "2", "3"], ["-1024", "0", "-5000"]
    out = rescale(stored, np.array(slopes, float), np.array(intercepts, float))
    assert out.dtype == np.int16
    for z in range(3):
        np.testing.assert_array_equal(out[z], _reference(stored[z], slopes[z], intercepts[z]))


def test_overflow_falls_back_to_float32():
    stored = _stored("uint16", (2, 32, 32), seed=7)
    stored = (stored.astype(np.uint32) * 16).clip(0, 65535).astype(np.uint16)
    stored[0, 0, 0] = 65535
    assert output_dtype(stored.min(), stored.max(), 1.0, -1024.0) == np.float32
    ref = _reference(stored, "1", "-1024")
    out = rescale(stored, 1, -1024)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, ref)
    # int16 requested through dtype falls back too; an explicit int16 out cannot, so it is an error
    assert rescale(stored, 1, -1024, dtype=np.int16).dtype == np.float32
    with pytest.raises(InputError, match="do not fit"):
        rescale(stored, 1, -1024, out=np.empty(stored.shape, np.int16))


def test_float_input_with_integral_bounds_but_fractional_values():
    stored = np.array([[[0.0, 0.5, 10.0], [1.0, 2.0, 3.25]]], np.float32)
    assert output_dtype(stored.min(), stored.max(), 1, 0) == np.int16  # bounds alone cannot tell
    out = rescale(stored, 1, 0)  # the kernel reports the fractional values -> float32
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, _reference(stored, "1", "0"))


@pytest.mark.parametrize("in_place", [False, True])
def test_nan_and_inf_propagate(in_place):
    stored = _stored("float32", (2, 8, 9), seed=8, integral=False)
    stored[0, 1, 2] = np.nan
    stored[1, 3, 4] = np.inf
    stored[1, 5, 6] = -np.inf
    ref = _reference(stored, "0.5", "-3")
    out = rescale(stored, 0.5, -3, out=stored if in_place else None)
    assert out.dtype == np.float32
    if in_place:
        assert out is stored
    assert np.isnan(out[0, 1, 2]) and out[1, 3, 4] == np.inf and out[1, 5, 6] == -np.inf
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_array_max_ulp(out, ref.astype(np.float32), maxulp=1)  # NaN == NaN here


def test_nan_with_integral_slope_chooses_float32():
    stored = np.array([[1.0, np.nan], [np.inf, 4.0]], np.float32)
    out = rescale(stored, 1, 0)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, _reference(stored, "1", "0"))


def test_kernel_counts_inexact_and_saturates():
    stored = np.array([[[0, 1, 33792, 65535]]], np.uint16)
    out = np.empty(stored.shape, np.int16)
    assert rescale_into(stored, np.array([1.0]), np.array([-1024.0]), out) == 2
    np.testing.assert_array_equal(out, [[[-1024, -1023, 32767, 32767]]])
    fl = np.array([[[np.nan, 2.5, 3.0, -1e9]]], np.float32)
    assert rescale_into(fl, np.array([1.0]), np.array([0.0]), out) == 3
    np.testing.assert_array_equal(out, [[[0, 2, 3, -32768]]])
    out32 = np.empty(stored.shape, np.float32)
    assert rescale_into(stored, np.array([0.5]), np.array([-1024.0]), out32) == 0


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "int32", "float32"])
def test_kernel_saturation_count_matches_reference(dtype):
    # int16/uint16/uint8 with integral slopes take the exact int32 path, slope 20000 and the others the
    # float64 path: both must agree with the clipped reference and count exactly the values that do not fit
    info = np.iinfo(np.int16)
    stored = np.random.default_rng(11).integers(0, 40000, size=(4, 9, 10)).astype(dtype)
    slopes, intercepts = ["1", "-1", "3", "20000"], ["0", "-1", "5", "0"]
    out = np.empty(stored.shape, np.int16)
    nbad = rescale_into(stored, np.array(slopes, float), np.array(intercepts, float), out)
    expected_bad = 0
    for z in range(4):
        ref = _reference(stored[z], slopes[z], intercepts[z])
        expected_bad += int(np.count_nonzero((ref < info.min) | (ref > info.max)))
        np.testing.assert_array_equal(out[z], np.clip(ref, info.min, info.max))
    assert nbad == expected_bad


def test_kernel_in_place_float32():
    stored = _stored("float32", (3, 10, 11), seed=9, integral=False)
    ref = _reference(stored, "1.5", "-7.25")
    assert rescale_into(stored, np.full(3, 1.5), np.full(3, -7.25), stored) == 0
    np.testing.assert_array_max_ulp(stored, ref.astype(np.float32), maxulp=1)


def test_explicit_out_and_dtype():
    stored = _stored("int16", (2, 5, 6), seed=10)
    out = np.empty(stored.shape, np.float32)
    assert rescale(stored, 1, -1024, out=out) is out
    np.testing.assert_array_equal(out, _reference(stored, "1", "-1024"))
    res = rescale(stored, 1, -1024, dtype="float32")
    assert res.dtype == np.float32
    np.testing.assert_array_equal(res, out)


@pytest.mark.parametrize(
    "stored, kwargs, match",
    [
        (np.zeros((3, 4, 4), np.int16), dict(slope=[1.0, 2.0], intercept=0), "slope .*3"),
        (np.zeros((3, 4, 4), np.int16), dict(slope=1, intercept=[0.0] * 4), "intercept .*3"),
        (np.zeros((4, 4), np.int16), dict(slope=[1.0, 1.0], intercept=0), "slope"),
        (np.zeros((2, 3, 4, 4), np.int16), dict(slope=1, intercept=0), "4-D"),
        (np.zeros(5, np.int16), dict(slope=1, intercept=0), "1-D"),
        (np.zeros((2, 4, 4), np.int16), dict(slope=np.nan, intercept=0), "slope must be finite, got nan"),
        (np.zeros((2, 4, 4), np.int16), dict(slope=[1.0, np.inf], intercept=0), "slope .*inf.* slice 1"),
        (np.zeros((2, 4, 4), np.int16), dict(slope=1, intercept=-np.inf), "intercept must be finite"),
        (np.zeros((2, 4, 4), np.int16), dict(slope="abc", intercept=0), "slope"),
        (np.zeros((2, 4, 4), np.int16), dict(slope=1, intercept=0, out=np.zeros((2, 4, 4), np.float64)), "float64"),
        (np.zeros((2, 4, 4), np.int16), dict(slope=1, intercept=0, out=np.zeros((2, 4, 4), np.int32)), "int32"),
        (np.zeros((2, 4, 4), np.int16), dict(slope=1, intercept=0, out=np.zeros((2, 4, 5), np.int16)), "shape"),
        (np.zeros((2, 4, 4), np.int16), dict(slope=1, intercept=0, out=np.zeros((2, 4, 8), np.int16)[:, :, ::2]),
         "C-contiguous"),
        (np.zeros((2, 4, 4), np.int16), dict(slope=1, intercept=0, dtype=np.float64), "float64"),
        (np.zeros((2, 4, 4), np.int16),
         dict(slope=1, intercept=0, dtype=np.int16, out=np.zeros((2, 4, 4), np.float32)), "does not match"),
        (np.zeros((2, 4, 4), bool), dict(slope=1, intercept=0), "bool"),
        (np.zeros((2, 4, 8), np.int16)[:, :, ::2], dict(slope=1, intercept=0), "C-contiguous"),
    ],
)
def test_wrapper_errors(stored, kwargs, match):
    with pytest.raises(InputError, match=match):
        rescale(stored, **kwargs)


def test_input_error_is_value_error():
    with pytest.raises(ValueError):
        rescale(np.zeros((2, 3, 4, 5), np.int16), 1, 0)


@pytest.mark.parametrize(
    "lo, hi, slopes, intercepts, expected",
    [
        (0, 4095, 1, -1024, np.int16),
        (0, 65535, 1, -1024, np.float32),
        (-32768, 32767, 1, 0, np.int16),
        (-32768, 32767, 1, -1, np.float32),
        (0, 4095, 0.5, -1024, np.float32),
        (0, 4095, 1, -1024.5, np.float32),
        (0, 4095, [1, 2, 9], [-1024, 0, 0], np.float32),
        (0, 4095, [1, 2, 8], [-1024, 0, 0], np.int16),
        (0.0, np.nan, 1, 0, np.float32),
    ],
)
def test_output_dtype(lo, hi, slopes, intercepts, expected):
    assert output_dtype(lo, hi, slopes, intercepts) == np.dtype(expected)
