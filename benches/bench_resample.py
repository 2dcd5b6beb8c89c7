"""Resample a CT volume to 1 mm isotropic, linear: ``voxelpipe.ops.resample`` vs SimpleITK vs scipy.

Input: 300 x 512 x 512 float32 HU (``voxelpipe.testing.synthetic.phantom_hu`` cast to float32), spacing
(1.25, 0.7, 0.7) mm along axes (slice, row, column), axial orientation; output 375 x 358 x 358 at 1 mm, the same
field of view (voxel edges), fill -1024. When benchmarks are disabled (the default smoke run) the volume is
30 x 64 x 64 so the cases stay quick.

Implementations, timed in the same run (ids ``[voxelpipe]``, ``[simpleitk]``, ``[scipy]``):

* ``voxelpipe``: ``resample(volume, spacing=1.0, fill=-1024)``: validation, output allocation, the separable
  kernel (the grid is axis-aligned), numba threads as configured (2 on these machines).
* ``simpleitk``: ``sitk.Resample(image, size, Transform(), sitkLinear, origin, spacing, direction, -1024,
  sitkFloat32)`` onto voxelpipe's output grid, ``SetGlobalDefaultNumberOfThreads(2)``; the input image is built
  once outside the timing.
* ``scipy``: ``ndimage.affine_transform(array, diagonal, offset, output_shape, order=1, mode="constant",
  cval=-1024, output=float32)``: the same index mapping (a 1-D ``matrix`` takes scipy's diagonal path). Single
  threaded and slow (~2.4 s here): one round.

Figures, outside the timing: each peer's max |difference| from voxelpipe's output in HU (SimpleITK's over the
output voxels between the first and last input centres: it extends the edge voxel over the outer half input
voxel, where voxelpipe and scipy write the fill value). Agreement with scipy and SimpleITK is tested in
``tests/test_resample.py``; here each case only checks the shape and dtype of what it timed.

Numba compile time is never timed: ``extra_info["first_call_seconds"]`` (first call in this process: compile or
load from the on-disk cache) and, when benchmarks are enabled, ``extra_info["cold_compile_seconds"]`` (a fresh
interpreter with an empty ``NUMBA_CACHE_DIR``). Both are printed and in the ratio table.

Run:

* smoke test (pyproject addopts ``--benchmark-disable``)::

    python -m pytest benches/bench_resample.py -q

* timed, with the ratio table in the terminal summary::

    python -m pytest benches/bench_resample.py --benchmark-enable -q -s

Targets (not asserted): >= 2.5x SimpleITK, >= 8x scipy.
"""
from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np
import pytest
from scipy import ndimage

from voxelpipe.core.geometry import Geometry
from voxelpipe.core.volume import Volume
from voxelpipe.kernels.resample import resample_separable
from voxelpipe.ops.resample import index_matrix, resample
from voxelpipe.testing.synthetic import phantom_hu

from _common import Column, RatioTable
from numba_timing import compile_line
from numba_timing import first_call as measure_first_call

FULL_SHAPE = (300, 512, 512)
SMALL_SHAPE = (30, 64, 64)
SPACING = (1.25, 0.7, 0.7)
NEW_SPACING = 1.0
FILL = -1024.0
AXIAL = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # columns: axis 0 -> S, 1 -> P, 2 -> L
ORIGIN = (-179.65, -179.65, -187.0)
ROUNDS = {"voxelpipe": 5, "simpleitk": 3, "scipy": 1}
WARMUP = {"voxelpipe": 1, "simpleitk": 1, "scipy": 0}
TARGETS = {"simpleitk": 2.5, "scipy": 8.0}
IMPLS = ["voxelpipe", "simpleitk", "scipy"]
GROUP = "resample-ct-to-1mm"

COMPILE: dict[str, object] = {}
SHAPES: dict[str, tuple[int, ...]] = {}


@pytest.fixture(scope="module")
def ct(benchmarks_enabled) -> Volume:
    shape = FULL_SHAPE if benchmarks_enabled else SMALL_SHAPE
    array = phantom_hu(*shape).astype(np.float32)
    return Volume(array, Geometry(shape, SPACING, ORIGIN, AXIAL))


@pytest.fixture(scope="module")
def first_call(ct, benchmarks_enabled) -> dict:
    """Numba compile (or on-disk cache load) of the kernel, measured before anything else calls it."""
    tiny = Volume(np.ascontiguousarray(ct.array[:3, :16, :16]), Geometry((3, 16, 16), SPACING, ORIGIN, AXIAL))
    measure_first_call(lambda: resample(tiny, spacing=NEW_SPACING, fill=FILL), resample_separable, COMPILE,
                       COLD_COMPILE_CODE if benchmarks_enabled else None)
    print("\n" + compile_line(COMPILE))
    return dict(COMPILE)


@pytest.fixture(scope="module")
def reference(ct, first_call) -> Volume:
    """voxelpipe's output (every peer's difference from it is measured, outside the timing)."""
    return resample(ct, spacing=NEW_SPACING, fill=FILL)


def _voxelpipe(ct: Volume, out_geometry: Geometry) -> np.ndarray:
    return resample(ct, spacing=NEW_SPACING, fill=FILL).array


def _sitk_image(ct: Volume):
    import SimpleITK as sitk  # optional peer: imported only by its cases (they skip without it)

    g = ct.geometry
    image = sitk.GetImageFromArray(np.asarray(ct.array))  # ITK index (x, y, z) = our (column, row, slice)
    image.SetOrigin(tuple(float(v) for v in g.origin))
    image.SetSpacing(tuple(float(v) for v in g.spacing[::-1]))
    image.SetDirection(tuple(float(v) for v in g.direction[:, ::-1].ravel()))
    return image


def _simpleitk(image, out_geometry: Geometry):
    import SimpleITK as sitk  # optional peer

    g = out_geometry
    return sitk.Resample(image, [int(n) for n in g.shape[::-1]], sitk.Transform(), sitk.sitkLinear,
                         tuple(float(v) for v in g.origin), tuple(float(v) for v in g.spacing[::-1]),
                         tuple(float(v) for v in g.direction[:, ::-1].ravel()), FILL, sitk.sitkFloat32)


def _scipy(array: np.ndarray, matrix: np.ndarray, out_shape) -> np.ndarray:
    return ndimage.affine_transform(array, np.diag(matrix[:3, :3]).copy(), offset=matrix[:3, 3], output_shape=out_shape,
                                    order=1, mode="constant", cval=FILL, output=np.float32)


# compiles the float32 separable kernel in a fresh interpreter with an empty numba cache (imports excluded)
COLD_COMPILE_CODE = (
    "import time, numpy as np\n"
    "from voxelpipe.core.geometry import Geometry\n"
    "from voxelpipe.ops.resample import resample\n"
    "from voxelpipe.core.volume import Volume\n"
    "a = np.zeros((3, 8, 8), np.float32)\n"
    "v = Volume(a, Geometry(a.shape, (1.25, 0.7, 0.7), (0, 0, 0), np.eye(3)))\n"
    "t = time.perf_counter(); resample(v, spacing=1.0); print(time.perf_counter() - t)\n"
)


def _inside(ct: Volume, out_geometry: Geometry) -> np.ndarray:
    """Output voxels whose input index lies between the first and last input centre on every axis."""
    matrix = index_matrix(ct.geometry, out_geometry)
    masks = [(c >= -1e-9) & (c <= n - 1 + 1e-9)
             for c, n in ((np.diag(matrix)[a] * np.arange(m) + matrix[a, 3], ct.shape[a])
                          for a, m in enumerate(out_geometry.shape))]
    return masks[0][:, None, None] & masks[1][None, :, None] & masks[2][None, None, :]


def _figures(impl: str, result: np.ndarray, ct: Volume, reference: Volume) -> dict:
    """The peer's max |difference| from voxelpipe's output, in HU (see the module docstring)."""
    if impl == "simpleitk":
        inside = _inside(ct, reference.geometry)
        diff = np.abs(result[inside].astype(np.float64) - reference.array[inside])
        band = float(np.mean(~inside))
    else:
        diff = np.abs(result.astype(np.float64) - reference.array)
        band = 0.0
    return {"max_abs_diff_hu": float(diff.max()), "edge_band_fraction": band}


def _header() -> list[str]:
    shape, out_shape = SHAPES["in"], SHAPES["out"]
    return [f"linear resample of {'x'.join(map(str, shape))} float32 HU, spacing {SPACING} mm -> "
            f"{NEW_SPACING:g} mm ({'x'.join(map(str, out_shape))}), {numba.get_num_threads()} numba threads, "
            "SimpleITK 2 threads"]


def _footer() -> list[str]:
    lines = [compile_line(COMPILE)] if COMPILE else []
    lines.append("max|d|: peer vs voxelpipe (SimpleITK: voxels between the first and last input centres; it extends "
                 "the edge voxel over the outer half voxel where voxelpipe and scipy write the fill)")
    lines.append("targets (not asserted): >= 2.5x SimpleITK, >= 8x scipy")
    return lines


TABLE = RatioTable(
    "resample: CT to 1 mm linear, seconds and ratios", order=IMPLS, header=_header, footer=_footer,
    columns=[Column("Mvox/s", lambda r: float(np.prod(SHAPES["out"])) / r.median / 1e6, ".1f"),
             Column("target", lambda r: TARGETS.get(r.label), lambda v: f">={v:g}x"),
             Column("max|d| HU", "max_abs_diff_hu", ".2g", missing="ref")])


@pytest.mark.parametrize("impl", IMPLS)
def test_resample_ct_to_1mm(benchmark, ct, first_call, reference, impl):
    """CT to 1 mm isotropic, linear; each peer's difference from voxelpipe measured outside the timing."""
    if impl == "simpleitk":
        sitk = pytest.importorskip("SimpleITK")
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    TABLE.begin(benchmark, GROUP, impl)
    SHAPES.update({"in": ct.shape, "out": reference.shape})
    out_geometry = reference.geometry
    matrix = index_matrix(ct.geometry, out_geometry)

    if impl == "voxelpipe":
        benchmark.extra_info.update(first_call)
        fn: Callable[[], np.ndarray] = lambda: _voxelpipe(ct, out_geometry)  # noqa: E731
    elif impl == "simpleitk":
        image = _sitk_image(ct)  # built once, outside the timing
        fn = lambda: _simpleitk(image, out_geometry)  # noqa: E731
    else:
        fn = lambda: _scipy(np.asarray(ct.array), matrix, out_geometry.shape)  # noqa: E731

    rounds = ROUNDS[impl]
    result = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=WARMUP[impl])

    if impl == "simpleitk":
        result = sitk.GetArrayFromImage(result)
    assert result.shape == reference.shape and result.dtype == np.float32, (impl, result.shape, result.dtype)
    figures = {} if impl == "voxelpipe" else _figures(impl, result, ct, reference)
    benchmark.extra_info.update(figures)
    TABLE.record(benchmark, rounds, **figures)
