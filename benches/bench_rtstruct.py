"""Rasterise every ROI of a real RTSTRUCT: ``voxelpipe.dicom.rtstruct.read_rtstruct_masks`` vs rt-utils.

Data: NSCLC-Radiomics LUNG1-001 from the shared test data (``../shared/data/nsclc-lung1-001``, or
``$VOXELPIPE_TEST_DATA``): a 134 x 512 x 512 CT (3 mm slices) and its RTSTRUCT (Varian ARIA, 1.5 MB) with
GTV-1, Spinal-Cord, Lung-Left and Lung-Right: 358 contours, 66,372 points. Skipped, with the reason, when the
shared data is absent. When benchmarks are disabled (the default smoke run) only GTV-1 is rasterised, once.

Implementations, timed in the same run (ids ``[voxelpipe]``, ``[rt-utils]``); both start from the files and
end with one full-size mask per ROI in memory:

* ``voxelpipe``: ``read_rtstruct_masks(rtstruct, geometry)``: pydicom read of the RTSTRUCT, the contour text
  parsed in one numpy call, slice assignment by position along the normal, the polygon kernel (scan-line,
  pixel centres, even-odd per slice, numba threads), voxel counts and volumes; uint8 (slice, row, column)
  masks. The geometry is the converted volume's (``open_volume`` on the output of ``voxelpipe.convert``, done
  once outside the timing, as the ``masks`` command does once per volume).
* ``rt-utils``: ``RTStructBuilder.create_from(image_dir, rtstruct)`` (reads the 134 image files and the
  RTSTRUCT with pydicom) then ``get_roi_mask_by_name`` for every ROI (OpenCV ``fillPoly`` per slice); bool
  (row, column, slice) masks. rt-utils needs the image files: voxelpipe reads only the geometry it stored.

Figures (untimed): per ROI, Dice of voxelpipe's mask against rt-utils' (both order slices by position here):
rt-utils also sets the pixels its outline passes through (about one pixel all round, which weighs most for the
thin cord). Agreement with rt-utils and exactness against an independent polygon2mask reference are tested in
``tests/test_rtstruct.py``; here each case only checks the ROIs, shapes and dtype of what it timed.

Numba compile time is never timed: ``extra_info["first_call_seconds"]`` (first call in this process: compile
or load from the on-disk cache) and, when benchmarks are enabled, ``extra_info["cold_compile_seconds"]`` (a
fresh interpreter with an empty ``NUMBA_CACHE_DIR``). voxelpipe is warmed up once before timing.

Run:

* smoke test (pyproject addopts ``--benchmark-disable``)::

    python -m pytest benches/bench_rtstruct.py -q -p no:cacheprovider

* timed, with the ratio table in the terminal summary::

    python -m pytest benches/bench_rtstruct.py --benchmark-enable -q -s -p no:cacheprovider

Target (not asserted): voxelpipe >= 5x faster than rt-utils.
"""
from __future__ import annotations

import time

import numba
import numpy as np
import pydicom
import pytest

import voxelpipe
from voxelpipe.core.types import Status
from voxelpipe.dicom.rtstruct import parse_rtstruct, read_rtstruct_masks
from voxelpipe.kernels.polygon import fill_polygons_3d

from _common import Column, RatioTable
from numba_timing import compile_line
from numba_timing import first_call as measure_first_call

ROUNDS = {"voxelpipe": 7, "rt-utils": 3}
WARMUP = {"voxelpipe": 1, "rt-utils": 0}
TARGET = 5.0
IMPLS = ["voxelpipe", "rt-utils"]
GROUP = "rtstruct-nsclc"
SMOKE_ROIS = ["GTV-1"]

MASKS: dict[str, np.ndarray] = {}  # voxelpipe's masks, for the peer's Dice
COMPILE: dict[str, object] = {}
BREAKDOWN: dict[str, float] = {}
INFO: dict[str, object] = {}

# compiles the polygon kernel in a fresh interpreter with an empty numba cache (imports excluded)
COLD_COMPILE_CODE = (
    "import time, numpy as np\n"
    "from voxelpipe.ops.polygon import fill_polygons_volume\n"
    "p = [np.array([[1.0, 1.0], [5.0, 2.0], [3.0, 6.0]])]\n"
    "t = time.perf_counter(); fill_polygons_volume(p, [0], (2, 8, 8)); print(time.perf_counter() - t)\n"
)


@pytest.fixture(scope="module")
def nsclc(shared_data, tmp_path_factory) -> dict:
    folder = shared_data / "nsclc-lung1-001"
    if not (folder / "mask_rtstruct" / "1-1.dcm").is_file() or not (folder / "image").is_dir():
        pytest.skip(f"{folder}: NSCLC LUNG1-001 shared test data not found (set VOXELPIPE_TEST_DATA)")
    out = tmp_path_factory.mktemp("bench_rtstruct")
    summary = voxelpipe.convert([str(folder / "image")], out=str(out), workers=1, progress=False)
    assert summary[0]["status"] != Status.FAILED, summary
    volume = voxelpipe.open_volume(summary[0]["path"])
    return {"image": str(folder / "image"), "rtstruct": str(folder / "mask_rtstruct" / "1-1.dcm"),
            "geometry": volume.geometry, "shape": volume.shape}


@pytest.fixture(scope="module")
def rois(nsclc, benchmarks_enabled) -> list[str] | None:
    """Every ROI (None) when timing, GTV-1 only in the smoke run."""
    return None if benchmarks_enabled else SMOKE_ROIS


@pytest.fixture(scope="module")
def first_call(nsclc, rois, benchmarks_enabled) -> dict:
    """Numba compile (or disk-cache load) of the polygon kernel, then a split of voxelpipe's time."""
    measure_first_call(lambda: read_rtstruct_masks(nsclc["rtstruct"], nsclc["geometry"], rois), fill_polygons_3d,
                       COMPILE, COLD_COMPILE_CODE if benchmarks_enabled else None)
    print("\n" + compile_line(COMPILE))
    if benchmarks_enabled:  # where voxelpipe's time goes (median of 5, untimed by pytest-benchmark)
        for label, fn in (("pydicom dcmread", lambda: pydicom.dcmread(nsclc["rtstruct"])),
                          ("parse_rtstruct (dcmread + contours)", lambda: parse_rtstruct(nsclc["rtstruct"]))):
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            BREAKDOWN[label] = float(np.median(times))
    return dict(COMPILE)


def _voxelpipe(nsclc, rois):
    masks, _ = read_rtstruct_masks(nsclc["rtstruct"], nsclc["geometry"], rois)
    return {m.attrs["roi_name"]: m.array for m in masks}


def _rt_utils(nsclc, rois):
    from rt_utils import RTStructBuilder  # optional peer: imported only by its case (it skips without it)

    builder = RTStructBuilder.create_from(nsclc["image"], nsclc["rtstruct"])
    names = rois or builder.get_roi_names()
    return {name: builder.get_roi_mask_by_name(name) for name in names}


def _header() -> list[str]:
    return [f"rasterise {INFO['n_rois']} ROIs of the NSCLC LUNG1-001 RTSTRUCT onto "
            f"{'x'.join(map(str, INFO['shape']))} ({INFO['points']} contour points), "
            f"{numba.get_num_threads()} numba threads"]


def _footer() -> list[str]:
    lines = [f"voxelpipe breakdown: {label} {seconds:.3f} s (median of 5)" for label, seconds in BREAKDOWN.items()]
    if COMPILE:
        lines.append(compile_line(COMPILE))
    lines.append("rt-utils fills every pixel its outline touches (OpenCV fillPoly, rounded vertices); voxelpipe "
                 "the pixel centres inside: the Dice gap is that one-pixel band")
    lines.append(f"target (not asserted): >= {TARGET:g}x rt-utils")
    return lines


TABLE = RatioTable(
    "rtstruct: NSCLC LUNG1-001 ROIs to masks, seconds and ratios", order=IMPLS, header=_header, footer=_footer,
    columns=[Column("min s", "min", ".3f"),
             Column("target", lambda r: TARGET if r.label != "voxelpipe" else None, lambda v: f">={v:g}x"),
             Column("Dice vs voxelpipe", "dice", lambda d: ", ".join(f"{k} {v:.4f}" for k, v in d.items()),
                    missing="ref")])


@pytest.mark.parametrize("impl", IMPLS)
def test_rasterise_nsclc_rtstruct(benchmark, nsclc, rois, first_call, impl):
    """Every ROI of the NSCLC RTSTRUCT to full-size masks; Dice against rt-utils measured outside the timing."""
    if impl == "rt-utils":
        pytest.importorskip("rt_utils")
    TABLE.begin(benchmark, GROUP, impl)
    fn = (lambda: _voxelpipe(nsclc, rois)) if impl == "voxelpipe" else (lambda: _rt_utils(nsclc, rois))
    if impl == "voxelpipe":
        benchmark.extra_info.update(first_call)
    result = benchmark.pedantic(fn, rounds=ROUNDS[impl], iterations=1, warmup_rounds=WARMUP[impl])

    structure = parse_rtstruct(nsclc["rtstruct"], rois)
    INFO.update(shape=nsclc["shape"], n_rois=len(result), points=int(sum(len(r.points) for r in structure.rois)))
    figures = {"min": benchmark.stats.stats.min if benchmark.stats is not None else None}
    if impl == "voxelpipe":
        assert set(result) == {r.name for r in structure.rois}, sorted(result)
        assert all(a.dtype == np.uint8 and a.shape == nsclc["shape"] for a in result.values())
        MASKS.update(result)
    else:
        ours = MASKS or _voxelpipe(nsclc, rois)
        dice = {}
        for name, theirs in result.items():
            theirs = np.moveaxis(theirs, 2, 0)  # (rows, cols, slices) -> (slices, rows, cols), both by position
            mine = ours[name].astype(bool)
            dice[name] = float(2 * np.sum(mine & theirs) / (mine.sum() + theirs.sum()))
        benchmark.extra_info["dice"] = figures["dice"] = dice
    TABLE.record(benchmark, ROUNDS[impl], **figures)
