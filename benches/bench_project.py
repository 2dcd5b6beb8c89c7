"""Eight-angle maximum intensity projection of a CT volume: ``voxelpipe.ops.projection.project`` vs peers.

Data: ``voxelpipe.testing.synthetic.phantom_hu(300, 512, 512)`` (body, lungs, spine, noise; HU) cast to float32,
spacing (1.25, 0.7, 0.7) mm, a standard axial stack (rows toward P, columns toward L). Angles 0:360:45 about
the superior-inferior axis. When benchmarks are disabled (the default smoke run) the volume is 20 x 64 x 64 so
that every case, scipy included, runs once in seconds.

Implementations, timed in the same run on the same array (ids ``[impl]``); every one returns
``(n_angles, n_slices, 512)`` float32, the MIP over the 512 x 512 square of each slice rotated about its centre:

* ``voxelpipe``: ``project(volume, angles, fill=-1024)`` (shear-warp kernel, all angles in one pass, 2 numba
  threads); its images are ``width`` = 726 wide (the slice diagonal): the 512 central columns are compared.
* ``cv2``: per slice and angle ``cv2.warpAffine(slice, M, (512, 512), INTER_LINEAR | WARP_INVERSE_MAP,
  BORDER_CONSTANT, -1024)`` into a reused buffer, then ``np.max(axis=0)`` (max along the rays; 3x faster than
  ``cv2.reduce(REDUCE_MAX)`` here) into a preallocated output; OpenCV's own threads (2).
* ``scipy``: ``scipy.ndimage.rotate(volume, -angle, axes=(1, 2), order=1, reshape=False, cval=-1024)`` then
  ``max(axis=1)`` per angle (single-threaded; about 35 s on the full volume, one round).
* ``simpleitk``: ``SimpleITK.Resample`` of the whole volume per angle (``Euler3DTransform`` about the volume
  centre, linear, default -1024; ITK's threads) then ``max`` along the rows (one round); skipped when
  SimpleITK is not installed.

Rotation convention (voxelpipe's, see ``voxelpipe.ops.projection``): at angle θ the rays run along
``cos θ P + sin θ L`` and the columns along ``cos θ L - sin θ P``; for the peers that is the output-to-input
map ``(r, c)_in = [[cos, -sin], [sin, cos]] (r', c')_out`` about the slice centre.

Figures (untimed): each peer's images against voxelpipe's 512 central columns. The methods interpolate
differently (OpenCV quantizes positions to 1/32 pixel; rotate-then-max samples the rays every pixel with
bilinear weights, shear-warp where they cross the voxel lines, up to 1.41 pixels apart at 45°, then interpolates
the max profile), and the phantom has sharp edges (air -1000 -> tissue 40 -> bone 700, where a sub-pixel
difference is hundreds of HU) with noise (sigma 10 HU). So the figures are the median, 99th percentile and
maximum |difference| and the fraction of voxelpipe's pixels outside the range of the peer's values in the same
row at columns j-1 .. j+1, +-10 HU (agreement within one pixel), in ``extra_info`` (``median_abs_diff_hu``,
``p99_abs_diff_hu``, ``max_abs_diff_hu``, ``outside_one_pixel_fraction``) and the table. Agreement with
``scipy.ndimage.rotate`` is tested in ``tests/test_projection.py``; here each case only checks the shape and
dtype of what it timed.

Numba compile time is reported separately and never timed: ``extra_info["first_call_seconds"]`` (the first
call in this process: compile or load from the on-disk cache, ``loaded_from_disk_cache``) and, when benchmarks
are enabled, ``extra_info["cold_compile_seconds"]``: a fresh interpreter with an empty ``NUMBA_CACHE_DIR``
compiling the kernel for float32 (imports excluded). voxelpipe is warmed up on the full volume before timing.

Targets (not asserted): voxelpipe >= 1.5x faster than the cv2 approach, >= 25x faster than scipy.

Run:

* smoke test (pyproject addopts ``--benchmark-disable``: every case runs once on the small volume)::

    python -m pytest benches/bench_project.py -q -p no:cacheprovider

* timed, with the ratio table in the terminal summary::

    python -m pytest benches/bench_project.py --benchmark-enable -q -s -p no:cacheprovider
"""
from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np
import pytest
from scipy import ndimage

from voxelpipe.core.geometry import Geometry
from voxelpipe.core.volume import Volume
from voxelpipe.kernels.project import project_into
from voxelpipe.ops.projection import project
from voxelpipe.testing.synthetic import phantom_hu

from _common import Column, RatioTable
from numba_timing import compile_line, first_call

FULL_SHAPE = (300, 512, 512)
SMOKE_SHAPE = (20, 64, 64)
SPACING = (1.25, 0.7, 0.7)
ANGLES = np.arange(0.0, 360.0, 45.0)
FILL = -1024.0
AXIAL = np.eye(3)[:, [2, 1, 0]]  # direction columns: slices -> S, rows -> P, columns -> L
GROUP = "project-8-angle-mip"
ROUNDS = {"voxelpipe": 5, "cv2": 3, "scipy": 1, "simpleitk": 1}
TARGETS = {"cv2": 1.5, "scipy": 25.0}
NOISE_HU = 10.0

COMPILE: dict[str, object] = {}
SHAPES: dict[str, tuple[int, ...]] = {}


@pytest.fixture(scope="module")
def ct(benchmarks_enabled) -> Volume:
    shape = FULL_SHAPE if benchmarks_enabled else SMOKE_SHAPE
    array = phantom_hu(*shape).astype(np.float32)
    return Volume(array, Geometry(shape, SPACING, (0.0, 0.0, 0.0), AXIAL))


def _voxelpipe_images(volume: Volume) -> np.ndarray:
    return project(volume, ANGLES, fill=FILL).images


def _central(images: np.ndarray, n: int) -> np.ndarray:
    off = (images.shape[-1] - n) // 2
    return images[..., off:off + n]


@pytest.fixture(scope="module")
def numba_first_call(ct, benchmarks_enabled) -> dict:
    """The first call in this process (compile, or load from the on-disk cache) on a tiny volume, before any
    other; and, when benchmarks are enabled, a cold compile in a fresh interpreter with an empty cache."""
    tiny = Volume(ct.array[:2, :16, :16].copy(), Geometry((2, 16, 16), SPACING, (0, 0, 0), AXIAL))
    return first_call(lambda: project(tiny, ANGLES, fill=FILL), project_into, COMPILE,
                      COLD_COMPILE_CODE if benchmarks_enabled else None)


@pytest.fixture(scope="module")
def reference(ct, numba_first_call) -> np.ndarray:
    """voxelpipe's images (512 central columns), computed once, untimed, for the peers' checks."""
    return np.ascontiguousarray(_central(_voxelpipe_images(ct), ct.shape[2]))


def _inverse_map(theta_deg: float, shape: tuple[int, int]) -> np.ndarray:
    """2x3 output (x=column, y=row) -> input map of the rotation about the slice centre (WARP_INVERSE_MAP)."""
    t = np.deg2rad(theta_deg)
    c, s = np.cos(t), np.sin(t)
    cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    # (r, c)_in = [[c, -s], [s, c]] (r', c')  <=>  x_in = c x' + s y', y_in = -s x' + c y'
    return np.array([[c, s, cx - c * cx - s * cy], [-s, c, cy + s * cx - c * cy]])


def _cv2(volume: Volume) -> np.ndarray:
    import cv2  # optional peer: imported only by its cases (they skip without it)

    array = volume.array
    nz, nr, nc = array.shape
    out = np.empty((len(ANGLES), nz, nc), np.float32)
    maps = [_inverse_map(theta, (nr, nc)) for theta in ANGLES]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = np.empty((nr, nc), np.float32)
    for z in range(nz):
        image = array[z]
        for a, m in enumerate(maps):
            cv2.warpAffine(image, m, (nc, nr), dst=warped, flags=flags, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=FILL)
            np.max(warped, axis=0, out=out[a, z])  # 3x faster than cv2.reduce(REDUCE_MAX) here
    return out


def _scipy(volume: Volume) -> np.ndarray:
    array = volume.array
    out = np.empty((len(ANGLES), array.shape[0], array.shape[2]), np.float32)
    for a, theta in enumerate(ANGLES):
        rotated = ndimage.rotate(array, -theta, axes=(1, 2), order=1, reshape=False, mode="constant", cval=FILL)
        out[a] = rotated.max(axis=1)
    return out


def _simpleitk(volume: Volume) -> np.ndarray:
    import SimpleITK as sitk  # optional peer

    array = volume.array
    nz, nr, nc = array.shape
    image = sitk.GetImageFromArray(array)  # x = column, y = row, z = slice
    image.SetSpacing((SPACING[2], SPACING[1], SPACING[0]))
    centre = image.TransformContinuousIndexToPhysicalPoint([(nc - 1) / 2, (nr - 1) / 2, (nz - 1) / 2])
    out = np.empty((len(ANGLES), nz, nc), np.float32)
    for a, theta in enumerate(ANGLES):
        transform = sitk.Euler3DTransform()
        transform.SetCenter(centre)
        # output -> input: x_in = cos x + sin y, y_in = -sin x + cos y: a rotation by -theta about z
        transform.SetRotation(0.0, 0.0, float(np.deg2rad(-theta)))
        rotated = sitk.Resample(image, image, transform, sitk.sitkLinear, FILL, sitk.sitkFloat32)
        out[a] = sitk.GetArrayViewFromImage(rotated).max(axis=1)
    return out


IMPLS: dict[str, Callable[[Volume], np.ndarray]] = {
    "voxelpipe": _voxelpipe_images,
    "cv2": _cv2,
    "scipy": _scipy,
    "simpleitk": _simpleitk,
}


# compiles the kernel for float32 in a fresh interpreter with an empty numba cache (imports excluded)
COLD_COMPILE_CODE = (
    "import time, numpy as np\n"
    "from voxelpipe.core.geometry import Geometry\n"
    "from voxelpipe.ops.projection import project\n"
    "from voxelpipe.core.volume import Volume\n"
    "a = np.zeros((2, 8, 8), np.float32)\n"
    "v = Volume(a, Geometry(a.shape, (1, 1, 1), (0, 0, 0), np.eye(3)[:, [2, 1, 0]]))\n"
    "t = time.perf_counter(); project(v, [0, 45, 90]); print(time.perf_counter() - t)\n"
)


def _figures(images: np.ndarray, reference: np.ndarray) -> dict:
    """Peer ``images`` vs voxelpipe's ``reference`` (see the module docstring)."""
    diff = np.abs(images.astype(np.float64) - reference)
    padded = np.pad(images, [(0, 0), (0, 0), (1, 1)], mode="edge")
    lo = np.minimum(np.minimum(padded[..., :-2], padded[..., 1:-1]), padded[..., 2:]) - NOISE_HU
    hi = np.maximum(np.maximum(padded[..., :-2], padded[..., 1:-1]), padded[..., 2:]) + NOISE_HU
    return {
        "median_abs_diff_hu": float(np.median(diff)),
        "p99_abs_diff_hu": float(np.quantile(diff, 0.99)),
        "max_abs_diff_hu": float(diff.max()),
        "outside_one_pixel_fraction": float(np.mean((reference < lo) | (reference > hi))),
    }


def _header() -> list[str]:
    shape = SHAPES["in"]
    return [f"{len(ANGLES)}-angle MIP (0:360:45) of {shape[0]}x{shape[1]}x{shape[2]} float32 HU, spacing "
            f"{SPACING} mm, {numba.get_num_threads()} numba threads"]


def _footer() -> list[str]:
    lines = [compile_line(COMPILE)] if COMPILE else []
    lines.append("|d|: peer vs voxelpipe (central 512 columns); >1px: voxelpipe pixels outside the peer's range over "
                 "columns j-1..j+1 (+-10 HU)")
    lines.append("targets (not asserted): >= 1.5x the cv2 approach, >= 25x scipy")
    return lines


TABLE = RatioTable(
    "project: 8-angle MIP, seconds and ratios", order=list(IMPLS), header=_header, footer=_footer,
    columns=[Column("target", lambda r: TARGETS.get(r.label), lambda v: f">={v:g}x"),
             Column("median|d| HU", "median_abs_diff_hu", ".2f", missing="ref"),
             Column("p99|d| HU", "p99_abs_diff_hu", ".1f", missing="ref"),
             Column(">1px", "outside_one_pixel_fraction", lambda v: f"{100 * v:.3f}%", missing="ref")])


@pytest.mark.parametrize("impl", list(IMPLS))
def test_project_eight_angle_mip(benchmark, ct, reference, impl):
    """Eight-angle MIP; each peer's difference from voxelpipe's images measured outside the timing."""
    if impl == "cv2":
        pytest.importorskip("cv2")
    if impl == "simpleitk":
        pytest.importorskip("SimpleITK")
    fn = IMPLS[impl]
    TABLE.begin(benchmark, GROUP, impl)
    SHAPES["in"] = ct.shape

    if impl == "voxelpipe":
        benchmark.extra_info.update(COMPILE)  # measured by the numba_first_call fixture, before any other call
        print("\n" + compile_line(COMPILE))
        fn(ct)  # warm-up on the full volume (first touch of the output buffers, thread pool start)

    rounds = ROUNDS[impl]
    images = benchmark.pedantic(fn, args=(ct,), rounds=rounds, iterations=1, warmup_rounds=0)

    if impl == "voxelpipe":
        images = _central(images, ct.shape[2])
    assert images.shape == reference.shape and images.dtype == np.float32, (impl, images.shape, images.dtype)
    figures = {} if impl == "voxelpipe" else _figures(images, reference)
    benchmark.extra_info.update(figures)
    TABLE.record(benchmark, rounds, **figures)
