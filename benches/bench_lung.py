"""Lung CT preprocessing per patient: voxelpipe's ``lung`` pipeline vs the Kaggle DSB 2017 tutorial's steps.

Input: one CT series (one patient) as DICOM files in a folder.

* timed run (``--benchmark-enable``): the real NSCLC-Radiomics LUNG1-001 CT from the shared test data
  (``../shared/data/nsclc-lung1-001/image``, or ``$VOXELPIPE_TEST_DATA``): 134 slices of 512 x 512 at
  3 x 0.977 x 0.977 mm. The cases skip with the reason when it is absent.
* smoke run (default, pyproject addopts ``--benchmark-disable``): a small synthetic chest written as DICOM
  (``voxelpipe.testing.synthetic.chest_phantom`` 40 x 96 x 96 at 4 x 3 x 3 mm with one nodule, or
  ``synthetic.write_series``' body phantom when chest_phantom is missing), so every case runs once in seconds.

Implementations (ids ``[voxelpipe]``, ``[kaggle]``, ``[kaggle_linear]``), each timed per patient, outputs deleted
before every round (outside the timing; voxelpipe resumes, i.e. skips, a patient whose outputs exist):

* ``voxelpipe``: ``voxelpipe.apps.lung.pipeline.run_lung([folder], out=ROOT, spacing=(2, 2, 2), workers=1,
  progress=False)``: read_series (HU), FOV-preserving linear resample to 2 mm,
  ``voxelpipe.apps.lung.segment.segment_lungs`` (scipy.ndimage labelling and morphology, hole filling, closing),
  crop to the lungs' box + 10 mm, the built-in ``blob_model`` on the crop + ``find_nodules``, the three npz
  stages with their geometry, nodules.csv, patient_features.csv, summary.csv.
* ``kaggle``: the steps of Guido Zuidhof's "Full Preprocessing Tutorial" (Kaggle Data Science Bowl 2017), the
  widely copied recipe, re-written here from its description:
  ``load_scan`` (``pydicom.dcmread`` of every file, sort by ImagePositionPatient[2], slice thickness from the
  first two positions); ``get_pixels_hu`` (stack, -2000 -> 0, per-slice rescale loop, int16);
  ``resample`` (``scipy.ndimage.zoom`` by the rounded ``real_resize_factor``, ``mode="nearest"``, default
  spline order 3, as in the tutorial); ``segment_lung_mask(fill_lung_structures=True)`` (``image > -320`` + 1,
  ``skimage.measure.label``, the label of voxel [0, 0, 0] is the outside air, a per-slice loop that keeps the
  largest air region of every axial slice (``largest_label_volume``), invert, keep the largest 3-D air pocket);
  then what the tutorial leaves to the reader, done with the same tools: the crop (bounding box of the mask +
  10 mm, clipped) and nodule candidates (``skimage.measure.label`` of ``crop > -400 HU`` inside the cropped
  mask, ``skimage.measure.regionprops`` with the HU as intensity image, components of 3-30 mm equivalent
  diameter kept, centroid in mm, volume, HU mean / max, bounding box). The three stages are written with
  ``np.savez`` (array, spacing, origin; the crop also mask and box) to the same folders as voxelpipe's, the
  candidates to ``nodules.csv`` and the per-patient aggregates to ``patient_features.csv`` (``csv`` module).
  The peer is favoured: its nodule step is a bare threshold + label (voxelpipe's blob model also opens the
  candidate map with a 2 mm ball, grows it back and scores every component's size, elongation and density),
  it neither scans the folder first nor writes atomically, and it has no resume, summary or failure handling.
  Both write uncompressed npz.
* ``kaggle_linear``: the same with ``zoom(..., order=1)`` (linear, like voxelpipe's resample) instead of the
  tutorial's default cubic spline, which is most of the tutorial's time: the speed-up from everything else.

Per-step times, both from the last timed round: the peer's from laps inside it; voxelpipe's from run_lung's
summary row of the series (``t_read``, ``t_resample``, ``t_segment``, ``t_crop``, ``t_model``, ``t_write`` and the
series' total ``seconds``; the rest of a round is the folder scan and the CSV tables).

Agreement, outside the timing (``test_lung_masks_agree``): the peer's lung mask is mapped onto voxelpipe's 2 mm
grid (the tutorial's zoom puts the first and last voxel centres on the input's, so its grid differs slightly
from voxelpipe's FOV-preserving one: each voxelpipe voxel centre is sent through voxelpipe's affine to LPS,
through the input's inverse affine to input indices, scaled by (out - 1) / (in - 1) to zoom indices and read
nearest-neighbour); reported: Dice over the whole grid and over the overlap (voxels whose centre lies between
the zoom grid's first and last centres, i.e. the input's, where neither side extrapolates), both lung volumes
(litres), the correlation of the two 2 mm HU volumes over the overlap, the crop shapes and the nodule candidate
counts; on LUNG1-001 also each mask's Dice with the RTSTRUCT's Lung-Left | Lung-Right and the fraction of the
GTV-1 voxels inside each mask (both rasterised by ``read_rtstruct_masks`` on the CT grid and moved to voxelpipe's
2 mm grid by ``resample_to(order="label")``). Reported, not asserted: the two segmentations differ by design
(voxelpipe fills holes and closes gaps so juxtapleural nodules stay inside, the tutorial does not); voxelpipe's
lung mask against the RTSTRUCT is tested in ``tests/test_lung.py``.

Numba compile time (read_series' rescale and the resample kernels) is never timed: a tiny synthetic series is run
through ``run_lung`` first (``first_call_seconds``; the kernels may load from numba's disk cache) and, when
benchmarks are enabled, the same in a fresh interpreter with an empty ``NUMBA_CACHE_DIR``
(``cold_compile_seconds``). Both are reported.

Run:

* smoke test (pyproject addopts ``--benchmark-disable``)::

    python -m pytest benches/bench_lung.py -q -p no:cacheprovider

* timed, with the ratio table in the terminal summary::

    python -m pytest benches/bench_lung.py --benchmark-enable -q -s -p no:cacheprovider

Target (not asserted): voxelpipe >= 5x faster per patient than ``[kaggle]`` (the tutorial as
written).
"""
from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import numba
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from voxelpipe.apps.lung.pipeline import run_lung
from voxelpipe.core.geometry import Geometry, geometry_from_slices
from voxelpipe.core.types import Status
from voxelpipe.core.volume import Volume
from voxelpipe.dicom.rtstruct import read_rtstruct_masks
from voxelpipe.kernels import resample as kresample
from voxelpipe.kernels import rescale as krescale
from voxelpipe.ops.resample import resample_to
from voxelpipe.pipelines.series_read import read_series
from voxelpipe.testing import synthetic

from _common import Column, RatioTable, remove_paths, shared_data_root
from numba_timing import Clock, cold_compile_seconds, compile_line, loaded_from_disk_cache

SPACING = (2.0, 2.0, 2.0)
STAGE = "stage1_{:g}x{:g}x{:g}".format(*SPACING)
STAGES = (STAGE, STAGE.replace("stage1_", "stage1_segmented_"), STAGE.replace("stage1_", "stage1_segmented_") + "_crop")
MARGIN_MM = 10.0
NODULE_HU = -400.0  # the candidate threshold (voxelpipe's blob model uses the same)
NODULE_DIAMETER_MM = (3.0, 30.0)
ROUNDS = {"full": {"voxelpipe": 3, "kaggle": 1, "kaggle_linear": 1},
          "smoke": {"voxelpipe": 1, "kaggle": 1, "kaggle_linear": 1}}
TARGET = 5.0
GROUP = "lung-patient"
IMPLS = ("voxelpipe", "kaggle", "kaggle_linear")
ZOOM_ORDER = {"kaggle": 3, "kaggle_linear": 1}
# smoke phantom: (slices, rows, columns) and spacing (mm) of the DICOM series
SMOKE_SHAPE, SMOKE_SPACING = (40, 96, 96), (4.0, 3.0, 3.0)
TINY_SHAPE, TINY_SPACING = (20, 64, 64), (5.0, 4.0, 4.0)

STEPS: dict[str, dict] = {}  # impl -> step -> seconds
COMPILE: dict[str, object] = {}
AGREE: dict[str, object] = {}
INFO: dict[str, object] = {}



# ----------------------------------------------------------------------------------------------------------
# input
# ----------------------------------------------------------------------------------------------------------
def real_ct_folder() -> Path:
    folder = shared_data_root() / "nsclc-lung1-001" / "image"
    if not folder.is_dir() or not any(folder.iterdir()):
        pytest.skip(f"{folder}: NSCLC LUNG1-001 CT not found in the shared test data (set VOXELPIPE_TEST_DATA)")
    return folder


def write_phantom_series(folder: str, shape, spacing, seed: int = 0) -> dict:
    """A synthetic chest CT as single-frame DICOM files in ``folder``: ``chest_phantom`` when it exists (one
    12 mm nodule in the right lung), else ``write_series``' body phantom. Returns what was written."""
    origin = (-shape[2] * spacing[2] / 2, -shape[1] * spacing[1] / 2, -shape[0] * spacing[0] / 2)
    spec = synthetic.SeriesSpec(n_slices=shape[0], rows=shape[1], columns=shape[2], spacing=tuple(spacing),
                                origin=origin, patient_id="VP-LUNG-BENCH", seed=seed)
    hu, kind = None, "write_series body phantom"
    if hasattr(synthetic, "chest_phantom"):
        try:
            centre = (shape[0] // 2, shape[1] // 2, int(shape[2] * 0.3))
            volume, _truth = synthetic.chest_phantom(shape=tuple(shape), spacing=tuple(spacing),
                                                     nodules=((centre, 12.0),), seed=seed)
            hu, kind = np.asarray(volume.array), "chest_phantom"
        except Exception as exc:  # phantom still being written: fall back, say so
            kind = f"write_series body phantom (chest_phantom failed: {type(exc).__name__}: {exc})"
    synthetic.write_series(folder, spec, hu=hu)
    return {"kind": kind, "shape": tuple(shape), "spacing": tuple(spacing)}


# ----------------------------------------------------------------------------------------------------------
# the Kaggle DSB 2017 tutorial's steps (re-written from its description)
# ----------------------------------------------------------------------------------------------------------
def load_scan(path: str) -> list:
    slices = [pydicom.dcmread(os.path.join(path, name)) for name in os.listdir(path)]
    slices.sort(key=lambda s: float(s.ImagePositionPatient[2]))
    try:
        thickness = abs(float(slices[0].ImagePositionPatient[2]) - float(slices[1].ImagePositionPatient[2]))
    except Exception:
        thickness = abs(float(slices[0].SliceLocation) - float(slices[1].SliceLocation))
    for s in slices:
        s.SliceThickness = thickness
    return slices


def get_pixels_hu(slices: list) -> np.ndarray:
    image = np.stack([s.pixel_array for s in slices]).astype(np.int16)
    image[image == -2000] = 0  # outside the scanner's circle
    for n, s in enumerate(slices):
        intercept, slope = float(s.RescaleIntercept), float(s.RescaleSlope)
        if slope != 1:
            image[n] = (slope * image[n].astype(np.float64)).astype(np.int16)
        image[n] += np.int16(intercept)
    return image


def resample_zoom(image: np.ndarray, slices: list, new_spacing=SPACING,
                  order: int = 3) -> tuple[np.ndarray, np.ndarray]:
    spacing = np.array([float(slices[0].SliceThickness)] + [float(v) for v in slices[0].PixelSpacing])
    new_shape = np.round(image.shape * spacing / np.asarray(new_spacing, dtype=np.float64))
    real_resize_factor = new_shape / image.shape
    resampled = ndimage.zoom(image, real_resize_factor, order=order, mode="nearest")
    return resampled, spacing / real_resize_factor


def largest_label_volume(labels: np.ndarray, bg: int = -1):
    values, counts = np.unique(labels, return_counts=True)
    counts, values = counts[values != bg], values[values != bg]
    return values[np.argmax(counts)] if len(counts) else None


def segment_lung_mask(image: np.ndarray, fill_lung_structures: bool = True) -> np.ndarray:
    from skimage import measure  # optional peer (scikit-image): only the tutorial's cases use it, they skip without

    binary = np.array(image > -320, dtype=np.int8) + 1  # 1 = air/lung, 2 = tissue
    labels = measure.label(binary)
    binary[labels == labels[0, 0, 0]] = 2  # the outside air becomes "tissue"
    if fill_lung_structures:
        for i, axial in enumerate(binary):  # per slice: keep the largest air region
            axial = axial - 1
            slice_labels = measure.label(axial)
            biggest = largest_label_volume(slice_labels, bg=0)
            if biggest is not None:
                binary[i][slice_labels != biggest] = 1
    binary -= 1
    binary = 1 - binary  # lungs 1
    labels = measure.label(binary, background=0)
    biggest = largest_label_volume(labels, bg=0)
    if biggest is not None:
        binary[labels != biggest] = 0
    return binary


def bounding_box(mask: np.ndarray, spacing, margin_mm: float = MARGIN_MM) -> tuple[slice, ...]:
    box = []
    for axis in range(3):
        hit = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != axis)))
        if hit.size == 0:
            return tuple(slice(0, n) for n in mask.shape)
        m = int(np.ceil(margin_mm / spacing[axis]))
        box.append(slice(max(0, hit[0] - m), min(mask.shape[axis], hit[-1] + 1 + m)))
    return tuple(box)


def nodule_candidates(crop: np.ndarray, crop_mask: np.ndarray, spacing, origin) -> list[dict]:
    from skimage import measure  # optional peer

    labels = measure.label((crop > NODULE_HU) & (crop_mask > 0), connectivity=3)
    voxel_mm3 = float(np.prod(spacing))
    rows = []
    for region in measure.regionprops(labels, intensity_image=crop):
        volume = region.area * voxel_mm3
        diameter = (6.0 * volume / np.pi) ** (1.0 / 3.0)
        if not NODULE_DIAMETER_MM[0] <= diameter <= NODULE_DIAMETER_MM[1]:
            continue
        centre = np.asarray(origin) + np.asarray(region.centroid) * np.asarray(spacing)
        rows.append({"nodule": len(rows) + 1, "centroid_0_mm": centre[0], "centroid_1_mm": centre[1],
                     "centroid_2_mm": centre[2], "volume_mm3": volume, "diameter_mm": diameter,
                     "hu_mean": float(region.intensity_mean), "hu_max": float(region.intensity_max),
                     **{f"bbox_{k}": int(v) for k, v in enumerate(region.bbox)}, "n_voxels": int(region.area)})
    return rows


def _write_csv(path: str, rows: list[dict], fields: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def kaggle_patient(folder: str, root: str, clock: Clock | None = None, order: int = 3) -> dict:
    """One patient through the tutorial's steps; the same three npz stages and two CSVs as voxelpipe.
    ``order``: the zoom's spline order (3, scipy's default, in the tutorial; 1 for the ``kaggle_linear`` id)."""
    clock = clock or Clock()
    pid = os.path.basename(os.path.normpath(folder))
    slices = load_scan(folder)
    origin = np.array([float(v) for v in slices[0].ImagePositionPatient])[::-1]  # (z, y, x) like the array
    clock.lap("load_scan")
    image = get_pixels_hu(slices)
    clock.lap("get_pixels_hu")
    image, spacing = resample_zoom(image, slices, order=order)
    clock.lap("resample (zoom)")
    paths = [os.path.join(root, stage, f"{pid}.npz") for stage in STAGES]
    for p in paths:
        os.makedirs(os.path.dirname(p), exist_ok=True)
    np.savez(paths[0], array=image, spacing=spacing, origin=origin)
    clock.lap("write")
    mask = segment_lung_mask(image, fill_lung_structures=True)
    clock.lap("segment_lung_mask")
    np.savez(paths[1], array=mask, spacing=spacing, origin=origin)
    clock.lap("write")
    box = bounding_box(mask, spacing)
    crop, crop_mask = image[box], mask[box]
    crop_origin = origin + np.array([b.start for b in box]) * spacing
    np.savez(paths[2], array=crop, mask=crop_mask, box=np.array([[b.start, b.stop] for b in box]),
             spacing=spacing, origin=crop_origin)
    clock.lap("crop + write")
    rows = nodule_candidates(crop, crop_mask, spacing, crop_origin)
    clock.lap("nodules (label + regionprops)")
    fields = ["patient", "nodule", "centroid_0_mm", "centroid_1_mm", "centroid_2_mm", "volume_mm3", "diameter_mm",
              "hu_mean", "hu_max", *[f"bbox_{k}" for k in range(6)], "n_voxels"]
    _write_csv(os.path.join(root, "nodules.csv"), [{"patient": pid, **r} for r in rows], fields)
    features = {"patient": pid, "n_nodules": len(rows),
                "largest_diameter_mm": max((r["diameter_mm"] for r in rows), default=0.0),
                "total_volume_mm3": sum(r["volume_mm3"] for r in rows)}
    _write_csv(os.path.join(root, "patient_features.csv"), [features], list(features))
    clock.lap("write")
    return {"patient": pid, "shape": image.shape, "crop_shape": crop.shape, "n_nodules": len(rows)}


# ----------------------------------------------------------------------------------------------------------
# voxelpipe
# ----------------------------------------------------------------------------------------------------------
def voxelpipe_patient(folder: str, root: str) -> list[dict]:
    rows = list(run_lung([folder], out=root, spacing=SPACING, workers=1, progress=False) or [])
    # outputs are removed before every round: nothing may be skipped
    bad = [r for r in rows if r.get("status") in (Status.FAILED, Status.SKIPPED)]
    assert rows and not bad, f"run_lung: {rows}"
    return rows


COLD_COMPILE_CODE = (
    "import os, sys, tempfile, time\n"
    f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
    "import bench_lung as b\n"
    "d = tempfile.mkdtemp()\n"
    "src = os.path.join(d, 'tiny')\n"
    "b.write_phantom_series(src, b.TINY_SHAPE, b.TINY_SPACING)\n"
    "from voxelpipe.apps.lung.pipeline import run_lung\n"
    "t = time.perf_counter()\n"
    "run_lung([src], out=os.path.join(d, 'out'), spacing=b.SPACING, workers=1, progress=False)\n"
    "print(time.perf_counter() - t)\n"
)


# ----------------------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kind(benchmarks_enabled) -> str:
    return "full" if benchmarks_enabled else "smoke"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("lung"))


@pytest.fixture(scope="module")
def ct_folder(kind, workdir) -> str:
    if kind == "full":
        folder = str(real_ct_folder())
        INFO["input"] = "NSCLC LUNG1-001 CT"
    else:
        folder = os.path.join(workdir, "smoke", "phantom")
        written = write_phantom_series(folder, SMOKE_SHAPE, SMOKE_SPACING)
        INFO["input"] = f"synthetic {written['kind']}"
    files = os.listdir(folder)
    INFO["n_files"] = len(files)
    INFO["mb"] = sum(os.path.getsize(os.path.join(folder, f)) for f in files) / 1e6
    return folder


@pytest.fixture(scope="module")
def voxelpipe_warm(workdir, benchmarks_enabled) -> dict:
    """run_lung on a tiny synthetic series (kernel compile or disk-cache load), untimed, before any other call."""
    src = os.path.join(workdir, "tiny", "tiny")
    write_phantom_series(src, TINY_SHAPE, TINY_SPACING)
    t0 = time.perf_counter()
    voxelpipe_patient(src, os.path.join(workdir, "tiny_out"))
    COMPILE["first_call_seconds"] = time.perf_counter() - t0
    COMPILE["loaded_from_disk_cache"] = loaded_from_disk_cache(krescale, kresample)
    COMPILE["cold_compile_seconds"] = cold_compile_seconds(COLD_COMPILE_CODE) if benchmarks_enabled else None
    print("\n" + compile_line(COMPILE, "tiny series through run_lung"))
    return dict(COMPILE)


def _root(workdir: str, impl: str, which: str = "run") -> str:
    return os.path.join(workdir, f"{impl}_{which}")


# ----------------------------------------------------------------------------------------------------------
# cases
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_lung_patient(benchmark, request, kind, workdir, ct_folder, impl):
    """One patient: DICOM folder -> 2 mm HU, lung mask, crop (npz) and nodule candidates (CSV)."""
    TABLE.begin(benchmark, GROUP, impl)
    root = _root(workdir, impl)
    if impl == "voxelpipe":
        benchmark.extra_info.update(request.getfixturevalue("voxelpipe_warm"))
        last: list[list[dict]] = []

        def fn():
            last.append(voxelpipe_patient(ct_folder, root))
    else:
        pytest.importorskip("skimage")
        clocks: list[Clock] = []

        def fn():
            clocks.append(Clock())
            INFO[impl] = kaggle_patient(ct_folder, root, clocks[-1], order=ZOOM_ORDER[impl])

    rounds = ROUNDS[kind][impl]
    benchmark.pedantic(fn, setup=lambda: remove_paths(root), rounds=rounds, iterations=1, warmup_rounds=0)
    for stage in STAGES:
        assert os.listdir(os.path.join(root, stage)), (impl, stage)
    keep = _root(workdir, impl, "keep")
    remove_paths(keep)
    os.replace(root, keep)  # kept for the agreement check
    TABLE.record(benchmark, rounds)
    if impl != "voxelpipe":
        STEPS[impl] = clocks[-1].steps
    else:  # run_lung's own per-step times (summary row of the series, last round) + its scan and tables
        (row,) = last[-1]
        STEPS["voxelpipe"] = {k: float(v) for k, v in row.items() if k.startswith("t_")}
        STEPS["voxelpipe"]["series total"] = float(row["seconds"])
        INFO["voxelpipe_row"] = {k: row.get(k) for k in ("shape", "crop_shape", "lung_volume_ml", "n_nodules")}
    benchmark.extra_info.update(STEPS[impl])


def _load_npz(path: str) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _input_geometry(folder: str):
    """The DICOM series' index -> LPS affine, slices sorted by ImagePositionPatient[2] like the tutorial."""
    heads = [pydicom.dcmread(os.path.join(folder, n), stop_before_pixels=True) for n in os.listdir(folder)]
    heads.sort(key=lambda s: float(s.ImagePositionPatient[2]))
    ipps = np.array([[float(v) for v in h.ImagePositionPatient] for h in heads])
    return geometry_from_slices(ipps, [float(v) for v in heads[0].ImageOrientationPatient],
                                [float(v) for v in heads[0].PixelSpacing],
                                (len(heads), int(heads[0].Rows), int(heads[0].Columns)))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return float(2 * np.sum(a & b) / max(1, a.sum() + b.sum()))


def _geometry_of(npz: dict):
    if "geometry_json" in npz:
        return Geometry.from_attrs(json.loads(str(npz["geometry_json"])))
    return Geometry(npz["array"].shape, npz["spacing"], npz["origin"], np.asarray(npz["direction"]))


def _against_rtstruct(ct_folder: str, geometry, v_mask: np.ndarray, k_mask: np.ndarray) -> dict:
    """Both masks (on voxelpipe's grid) against the RTSTRUCT's Lung-Left | Lung-Right (Dice) and GTV-1 (fraction
    inside), when the series has one beside it (NSCLC LUNG1-001's ``mask_rtstruct/1-1.dcm``)."""
    path = Path(ct_folder).parent / "mask_rtstruct" / "1-1.dcm"
    if not path.is_file():
        return {}
    ct_geometry = read_series(ct_folder).geometry
    masks, _ = read_rtstruct_masks(path, ct_geometry, rois=["Lung-Left", "Lung-Right", "GTV-1"])
    on_grid = {m.attrs["roi_name"].lower(): np.asarray(resample_to(
        Volume(np.asarray(m.array, dtype=np.uint8), ct_geometry), geometry, order="label").array) > 0 for m in masks}
    lungs = on_grid["lung-left"] | on_grid["lung-right"]
    gtv = on_grid["gtv-1"]
    return {"dice_rtstruct_voxelpipe": _dice(v_mask, lungs), "dice_rtstruct_kaggle": _dice(k_mask, lungs),
            "gtv_inside_voxelpipe": float((gtv & v_mask).sum() / max(1, gtv.sum())),
            "gtv_inside_kaggle": float((gtv & k_mask).sum() / max(1, gtv.sum()))}


def test_lung_masks_agree(workdir, ct_folder):
    """Agreement figures of voxelpipe's and the tutorial's lung masks (and 2 mm HU volumes) on voxelpipe's grid,
    untimed, for the table; nothing asserted (see the module docstring)."""
    vp, kg = _root(workdir, "voxelpipe", "keep"), _root(workdir, "kaggle", "keep")
    if not (os.path.isdir(vp) and os.path.isdir(kg)):
        pytest.skip("both pipelines' outputs are needed (a patient case was skipped or failed)")
    pid = os.path.basename(os.path.normpath(ct_folder))
    k_pid = INFO.get("kaggle", {}).get("patient", pid)

    def one(root, stage, p):
        found = [f for f in os.listdir(os.path.join(root, stage)) if f.endswith(".npz")]
        name = f"{p}.npz" if f"{p}.npz" in found else found[0]
        return _load_npz(os.path.join(root, stage, name))

    vp_img, vp_seg, vp_crop = (one(vp, s, pid) for s in STAGES)
    kg_img, kg_seg, kg_crop = (one(kg, s, k_pid) for s in STAGES)
    geometry = _geometry_of(vp_seg)
    in_geometry = _input_geometry(ct_folder)
    in_shape = np.asarray(in_geometry.shape, dtype=np.float64)
    out_shape = np.asarray(kg_seg["array"].shape, dtype=np.float64)
    # voxelpipe voxel index -> LPS -> input index -> zoom index (corner-aligned: j = i * (out - 1) / (in - 1))
    matrix = np.linalg.inv(in_geometry.affine) @ geometry.affine
    scale = (out_shape - 1) / np.maximum(in_shape - 1, 1)
    matrix = np.diag(np.r_[scale, 1.0]) @ matrix
    idx = np.indices(geometry.shape, dtype=np.float64).reshape(3, -1)
    coords = matrix[:3, :3] @ idx + matrix[:3, 3:4]
    # the overlap: voxel centres between the zoom grid's first and last centres (= the input's), where neither
    # pipeline extrapolates (outside them each has its own edge rule)
    inside = np.all((coords >= -1e-6) & (coords <= out_shape[:, None] - 1 + 1e-6), axis=0).reshape(geometry.shape)
    k_mask = ndimage.map_coordinates(kg_seg["array"].astype(np.uint8), coords, order=0, mode="constant",
                                     cval=0).reshape(geometry.shape)
    k_img = ndimage.map_coordinates(kg_img["array"].astype(np.float32), coords, order=1, mode="nearest"
                                    ).reshape(geometry.shape)
    v_mask = vp_seg["array"] > 0
    voxel_l = float(np.prod(geometry.spacing)) / 1e6
    AGREE["dice_mask"] = _dice(v_mask, k_mask)
    AGREE["dice_mask_overlap"] = _dice(v_mask[inside], k_mask[inside])
    AGREE["overlap_fraction"] = float(inside.mean())
    AGREE["lung_l_voxelpipe"] = float(v_mask.sum() * voxel_l)
    AGREE["lung_l_kaggle"] = float(np.sum(kg_seg["array"] > 0) * np.prod(kg_seg["spacing"]) / 1e6)
    AGREE["hu_corr_overlap"] = float(np.corrcoef(np.asarray(vp_img["array"], np.float64)[inside],
                                                 k_img[inside].astype(np.float64))[0, 1])
    AGREE.update(_against_rtstruct(ct_folder, geometry, v_mask, k_mask > 0))
    INFO["grid_voxelpipe"] = tuple(geometry.shape)
    INFO["grid_kaggle"] = tuple(kg_seg["array"].shape)
    INFO["crop_voxelpipe"] = tuple(vp_crop["array"].shape)
    INFO["crop_kaggle"] = tuple(kg_crop["array"].shape)
    with open(os.path.join(kg, "nodules.csv")) as f:
        INFO["nodules_kaggle"] = sum(1 for _ in csv.DictReader(f))
    nod = os.path.join(vp, "nodules.csv")
    if os.path.exists(nod):
        with open(nod) as f:
            INFO["nodules_voxelpipe"] = sum(1 for _ in csv.DictReader(f))
    print("\nagreement:", json.dumps(AGREE), json.dumps({k: INFO[k] for k in INFO if k.startswith(("grid", "crop",
                                                                                                  "nodules"))}))


def _header() -> list[str]:
    grid = "x".join(map(str, INFO["kaggle"]["shape"])) if "kaggle" in INFO else ""
    return [f"one patient: {INFO.get('input', '?')}, {INFO.get('n_files', '?')} files ({INFO.get('mb', 0):.0f} MB) -> "
            f"{SPACING[0]:g} mm grid {grid}; {numba.get_num_threads()} numba threads, workers=1"]


def _footer() -> list[str]:
    lines = [f"{impl} steps (s): " + ", ".join(f"{k} {v:.2f}" for k, v in STEPS[impl].items())
             for impl in IMPLS if impl in STEPS]
    if COMPILE:
        lines.append(compile_line(COMPILE, "tiny series through run_lung"))
    if AGREE:
        lines.append("agreement voxelpipe vs kaggle: " + ", ".join(f"{k} {v:.4f}" for k, v in AGREE.items()))
    extra = {k: INFO[k] for k in INFO if k.startswith(("grid", "crop", "nodules"))}
    if extra:
        lines.append("shapes / counts: " + ", ".join(f"{k} {v}" for k, v in extra.items()))
    return lines


TABLE = RatioTable("lung: whole pipeline per patient, seconds and ratios", order=IMPLS, header=_header,
                   footer=_footer,
                   columns=[Column("target", lambda r: TARGET if r.label == "kaggle" else None, lambda v: f">={v:g}x")])
