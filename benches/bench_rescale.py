"""Rescale kernel vs the plain numpy expression on a 300 x 512 x 512 CT-like stack.

Implementations, timed in the same run (ids ``[voxelpipe]``, ``[numpy]``): ``rescale_into`` (the numba kernel, into a
preallocated, first-touched output) and ``(stored * slope + intercept).astype(dtype)``. Their agreement with an
independent reference (pydicom's ``apply_modality_lut``) is tested in ``tests/test_rescale.py``; here each case
only checks the dtype and shape of what it timed.

Run timed with ``python -m pytest benches/bench_rescale.py --benchmark-enable -q``, ratio table in the terminal
summary; by default (pyproject addopts ``--benchmark-disable``) every case runs once, untimed.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from voxelpipe.kernels.rescale import rescale_into

from _common import RatioTable

SHAPE = (300, 512, 512)
IMPLS = ["voxelpipe", "numpy"]

# name -> (stored dtype, slope, intercept, out dtype)
CASES = {
    "int16": (np.uint16, 1.0, -1024.0, np.int16),
    "float32": (np.int16, 0.5, -1024.0, np.float32),
}

TABLE = RatioTable("rescale: stored values to HU, seconds and ratios", order=IMPLS,
                   header=lambda: [f"{'x'.join(map(str, SHAPE))} stack, median of 5 rounds"])


@pytest.fixture(scope="module")
def ct_stack() -> np.ndarray:
    """Seeded 12-bit stored values (0..4095), uint16."""
    rng = np.random.default_rng(20240601)
    return rng.integers(0, 4095, size=SHAPE, dtype=np.uint16, endpoint=True)


def _numpy(stored: np.ndarray, slope: float, intercept: float, dtype) -> np.ndarray:
    return (stored * np.float64(slope) + np.float64(intercept)).astype(dtype)


def _run(benchmark, ct_stack: np.ndarray, case: str, impl: str) -> None:
    stored_dtype, slope, intercept, out_dtype = CASES[case]
    stored = ct_stack.astype(stored_dtype, copy=False)
    nz = stored.shape[0]
    TABLE.begin(benchmark, f"rescale-{stored.dtype}-to-{np.dtype(out_dtype)}", impl)
    if impl == "voxelpipe":
        slopes = np.full(nz, slope)
        intercepts = np.full(nz, intercept)
        out = np.zeros(stored.shape, out_dtype)  # preallocated and first-touched, as in the convert worker
        compiled_before = len(rescale_into.signatures)
        t0 = time.perf_counter()  # first call on one slice: compile (or load from cache) + a trivial run
        rescale_into(stored[:1], slopes[:1], intercepts[:1], out[:1])
        benchmark.extra_info["compile_seconds"] = time.perf_counter() - t0
        benchmark.extra_info["already_compiled_in_process"] = len(rescale_into.signatures) == compiled_before
        benchmark.extra_info["loaded_from_disk_cache"] = sum(rescale_into.stats.cache_hits.values()) > 0
        nbad = benchmark.pedantic(
            rescale_into, args=(stored, slopes, intercepts, out), rounds=5, warmup_rounds=1, iterations=1
        )
        assert nbad == 0
        result = out
    else:
        result = benchmark.pedantic(
            _numpy, args=(stored, slope, intercept, out_dtype), rounds=5, warmup_rounds=1, iterations=1
        )
    assert result.dtype == np.dtype(out_dtype) and result.shape == stored.shape  # sanity of the timed call
    TABLE.record(benchmark)


@pytest.mark.parametrize("impl", IMPLS)
def test_rescale_ct_int16(benchmark, ct_stack, impl):
    """uint16 stored, slope 1, intercept -1024 -> int16 HU."""
    _run(benchmark, ct_stack, "int16", impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_rescale_ct_float32(benchmark, ct_stack, impl):
    """int16 stored, slope 0.5, intercept -1024 -> float32."""
    _run(benchmark, ct_stack, "float32", impl)
