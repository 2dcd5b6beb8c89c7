"""PET/CT preparation, whole pipeline per subject, and its 2-D projections: voxelpipe vs the seed pipeline.

Input (generated once per session with nibabel, seeded, in a tmp dir): one subject in the zipped NIfTI form,
``project.zip`` holding ``<hash>/<hash>_ct.nii.gz`` (512 x 512 x 300 int16 HU, 0.977 x 0.977 x 3 mm, array axes
toward L, P, S), ``<hash>_petsuv.nii.gz`` (200 x 200 x 300 float32 SUV, 4 x 4 x 3 mm, axes toward L, A, S, offset
by (7, -5, 1.5) mm) and ``<hash>_mask.nii.gz`` (uint8, four spheres of 12-25 mm radius, on the PET grid). The
phantom is a smooth body (elliptic cross-section varying along S, lungs, spine, noise sigma 15 HU; PET:
background SUV ~1, lungs 0.4, liver 2, brain 6, four Gaussian lesions (sigma = radius / 2.5) of peak SUV 5-12,
Gaussian blur, 8 % multiplicative noise). When benchmarks are disabled (the default smoke run) the subject is
128 x 128 x 40 CT / 64 x 64 x 40 PET onto a 4 mm grid so that every case runs once in a few seconds.

Target grid (the same for both): the CT field of view (voxel edges) at 2 mm isotropic, LAS: 250 x 250 x 450.

Implementations (ids ``[voxelpipe]``, ``[nilearn]``), each timed per subject in two cases:

* ``prepare`` (zip -> HDF5 ``[2, X, Y, Z]`` image, mask, mask_iso):
  ``voxelpipe``: ``run_petct(zip, out.h5, spacing=2, workers=1, progress=False)``.
  ``nilearn`` (the seed pipeline): members read from the zip and gunzipped in memory, ``nibabel``
  ``Nifti1Image.from_bytes``; ``nilearn.image.resample_img`` of the CT onto the LAS 2 mm grid (linear, fill
  -1024), ``resample_to_img`` of the PET (linear) and the mask (nearest) onto it; mask_iso by
  ``scipy.ndimage.label`` (26-connectivity) + 0.41 x SUVmax per component, each in its bounding box
  (``ndimage.find_objects``, not whole-volume passes); CT clipped to [-1000, 1000] and PET to [0, 20] SUV and
  scaled to [0, 1]; written with h5py in the documented layout (groups ``image`` / ``mask`` / ``mask_iso``,
  one dataset per subject, attrs on ``image/<s>``) with the same HDF5 filters and chunks as voxelpipe's
  subject store (gzip 1 + shuffle, ~4 MiB slabs, ``_h5_kw``).
* ``project`` (prepared HDF5 -> 2-D HDF5, 8 angles 0:360:45 about S), the same content as voxelpipe's:
  ``voxelpipe``: ``project_2d(out.h5, out_2d.h5, angles, axis="S", workers=1, progress=False)`` (PET and CT
  MIPs ``image/<s>_a<angle>`` [2, H, W], mask and mask_iso MIPs [1, H, W]).
  ``nilearn`` (the seed's choice): per angle ``scipy.ndimage.rotate(volume, -angle, axes=(0, 1), order=1,
  reshape=False)`` of the PET and CT channels then ``max`` along A, the same for mask and mask_iso with
  ``order=0`` (nearest: cheaper than order 1, so the peer is favoured), every projection its own dataset in a
  2-D HDF5 of the same layout.

Outputs are deleted before every round (reruns skip subjects already present), outside the timing.

Numba compile time is never timed: a tiny subject is run through both voxelpipe steps first
(``first_call_seconds``; the kernels may load from numba's disk cache) and, when benchmarks are enabled, the
same in a fresh interpreter with an empty ``NUMBA_CACHE_DIR`` (``cold_compile_seconds``). Both are reported.

Per-step times (load, resample, iso, normalise, write, projections): the peer's are recorded inside its timed
rounds; voxelpipe's come from one extra untimed-by-benchmark run of ``load_zip_subject``, ``prepare_subject``
and ``SubjectStore.write`` (case ``test_petct_steps``).

Agreement figures, outside the timing (``test_petct_outputs_agree``, reported, not asserted): between the two
prepared files, Pearson correlation of the PET and of the CT channel, mask Dice (nearest vs label-aware differ on
the boundary), each mask's Dice with the analytic spheres sampled on the target grid, mask_iso Dice, and per angle
the PET MIP correlation and mask-MIP Dice over voxelpipe's central columns (worst angle). voxelpipe's resampled
mask against analytic spheres is tested in ``tests/test_petct_mask_truth.py``, the prepared values against the
synthetic study's known SUVs and positions in ``tests/test_petct.py``.

Run:

* smoke test (pyproject addopts ``--benchmark-disable``)::

    python -m pytest benches/bench_petct.py -q -p no:cacheprovider

* timed, with the ratio table in the terminal summary::

    python -m pytest benches/bench_petct.py --benchmark-enable -q -s -p no:cacheprovider

Target (not asserted): voxelpipe >= 10x faster per subject.
"""
from __future__ import annotations

import gzip
import json
import os
import time
import zipfile
from dataclasses import dataclass

import h5py
import numba
import numpy as np
import pytest
from scipy import ndimage

from voxelpipe.apps.petct.pipeline import load_zip_subject, prepare_subject, run_petct, zip_subject_ids
from voxelpipe.apps.petct.project2d import project_2d
from voxelpipe.core.types import Status
from voxelpipe.kernels import project as kp
from voxelpipe.kernels import resample as kr
from voxelpipe.stores.subject_store import open_subject_store

from _common import RatioTable, remove_paths
from numba_timing import Clock, cold_compile_seconds, compile_line, loaded_from_disk_cache

ANGLES = np.arange(0.0, 360.0, 45.0)
ISO_FRACTION = 0.41
CT_WINDOW = (-1000.0, 1000.0)
SUV_WINDOW = (0.0, 20.0)
CT_FILL = -1024.0
SUBJECT = "a1b2c3d4e5"  # the <hash> of the zip members
CHUNK_BYTES = 4 << 20  # the peer's HDF5 filters and chunks: the same as voxelpipe's subject store


def _h5_kw(data: np.ndarray) -> dict:
    """gzip level 1 + shuffle, chunks [1, k, ...] of about 4 MiB (voxelpipe.stores.subject_store's choice)."""
    plane = int(np.prod(data.shape[2:], dtype=np.int64)) * data.dtype.itemsize
    k = max(1, min(data.shape[1], CHUNK_BYTES // max(1, plane)))
    return {"compression": "gzip", "compression_opts": 1, "shuffle": True, "chunks": (1, k, *data.shape[2:])}


ROUNDS = {"voxelpipe": 3, "nilearn": 1}
TARGET = 10.0
IMPLS = ("voxelpipe", "nilearn")


@dataclass(frozen=True)
class Case:
    ct_shape: tuple[int, int, int]
    ct_spacing: tuple[float, float, float]
    pet_shape: tuple[int, int, int]
    pet_spacing: tuple[float, float, float]
    spacing: float  # target, mm isotropic
    seed: int = 0


FULL = Case((512, 512, 300), (500 / 512, 500 / 512, 3.0), (200, 200, 300), (4.0, 4.0, 3.0), 2.0)
SMOKE = Case((128, 128, 40), (2.5, 2.5, 5.0), (64, 64, 40), (5.5, 5.5, 5.0), 4.0)
TINY = Case((32, 32, 12), (10.0, 10.0, 16.0), (16, 16, 12), (21.0, 21.0, 16.0), 12.0)
PET_OFFSET = (7.0, -5.0, 1.5)  # RAS mm, PET field-of-view centre relative to the CT's

STEPS: dict[str, dict] = {}  # impl -> step -> seconds
COMPILE: dict[str, object] = {}
AGREE: dict[str, float] = {}
INFO: dict[str, object] = {}


# ----------------------------------------------------------------------------------------------------------
# synthetic subject (nibabel only)
# ----------------------------------------------------------------------------------------------------------
def _ras_affine(shape, spacing, signs, centre) -> np.ndarray:
    """RAS affine of a diagonal grid: array axis a grows along RAS sign signs[a], field of view centred on
    ``centre``."""
    affine = np.eye(4)
    for a in range(3):
        affine[a, a] = signs[a] * spacing[a]
        affine[a, 3] = centre[a] - signs[a] * spacing[a] * (shape[a] - 1) / 2
    return affine


def _axes_mm(shape, affine):
    return [affine[a, 3] + affine[a, a] * np.arange(shape[a]) for a in range(3)]


def _phantom_layout(case: Case) -> dict:
    fov = case.ct_shape[0] * case.ct_spacing[0]
    f = fov / 500.0
    zlen = case.ct_shape[2] * case.ct_spacing[2]
    lesions = [  # RAS centre (mm), radius (mm), peak SUV
        ((-60 * f, 10 * f, 0.15 * zlen), 18 * f, 9.0),
        ((55 * f, -20 * f, 0.05 * zlen), 12 * f, 12.0),
        ((20 * f, 40 * f, -0.15 * zlen), 25 * f, 5.0),
        ((-30 * f, -50 * f, -0.3 * zlen), 14 * f, 7.0),
    ]
    return {"f": f, "zlen": zlen, "lesions": lesions}


def _body(x, y, z, f, zlen):
    """Body, lungs and spine indicator arrays at RAS points (broadcasting)."""
    t = z / zlen  # -0.5 .. 0.5
    a = 170 * f * (1 + 0.08 * np.sin(2 * np.pi * t)) * np.where(t > 0.38, 0.55, 1.0)
    b = 115 * f * (1 + 0.05 * np.cos(3 * np.pi * t)) * np.where(t > 0.38, 0.75, 1.0)
    body = (x / a) ** 2 + ((y + 10 * f) / b) ** 2 <= 1
    thorax = (t > 0.05) & (t < 0.32)
    lungs = thorax & ((((np.abs(x) - 70 * f) / (50 * f)) ** 2 + ((y - 5 * f) / (65 * f)) ** 2) <= 1) & body
    spine = (t < 0.38) & ((x / (15 * f)) ** 2 + ((y + 75 * f) / (15 * f)) ** 2 <= 1)
    return body, lungs, spine


def make_ct(case: Case, rng) -> tuple[np.ndarray, np.ndarray]:
    lay = _phantom_layout(case)
    affine = _ras_affine(case.ct_shape, case.ct_spacing, (-1, -1, 1), (0.0, 0.0, 0.0))  # axes toward L, P, S
    xs, ys, zs = _axes_mm(case.ct_shape, affine)
    x, y = np.meshgrid(xs, ys, indexing="ij")
    out = np.empty(case.ct_shape, np.int16)
    for k, z in enumerate(zs):
        body, lungs, spine = _body(x, y, z, lay["f"], lay["zlen"])
        hu = np.full(x.shape, -1000.0, np.float32)
        hu[body] = 40.0
        hu[lungs] = -820.0
        hu[spine] = 700.0
        hu += rng.standard_normal(x.shape, dtype=np.float32) * 15.0
        out[:, :, k] = np.clip(np.rint(hu), -1024, 3071)
    return out, affine


def make_pet_mask(case: Case, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lay = _phantom_layout(case)
    f, zlen = lay["f"], lay["zlen"]
    affine = _ras_affine(case.pet_shape, case.pet_spacing, (-1, 1, 1), PET_OFFSET)  # axes toward L, A, S
    xs, ys, zs = _axes_mm(case.pet_shape, affine)
    x, y = np.meshgrid(xs, ys, indexing="ij")
    suv = np.empty(case.pet_shape, np.float32)
    for k, z in enumerate(zs):
        body, lungs, spine = _body(x, y, z, f, zlen)
        s = np.zeros(x.shape, np.float32)
        s[body] = 1.0
        s[lungs] = 0.4
        s[spine] = 1.5
        liver = body & (z / zlen > -0.05) & (z / zlen < 0.1) & ((((x + 60 * f) / (70 * f)) ** 2
                                                               + ((y - 10 * f) / (60 * f)) ** 2) <= 1)
        s[liver] = 2.0
        s[body & (z / zlen > 0.4)] = 6.0  # brain
        suv[:, :, k] = s
    X, Y, Z = np.meshgrid(xs, ys, zs, indexing="ij", sparse=True)
    mask = np.zeros(case.pet_shape, np.uint8)
    for (cx, cy, cz), r, peak in lay["lesions"]:
        d2 = (X - cx) ** 2 + (Y - cy) ** 2 + (Z - cz) ** 2
        suv += (peak * np.exp(-d2 / (2 * (r / 2.5) ** 2))).astype(np.float32)
        mask[d2 <= r * r] = 1
    sigma = [max(0.5, 6.0 / s) for s in case.pet_spacing]
    suv = ndimage.gaussian_filter(suv, sigma, mode="constant")
    suv *= 1 + 0.08 * rng.standard_normal(suv.shape, dtype=np.float32)
    np.maximum(suv, 0, out=suv)
    return suv.astype(np.float32), mask, affine


def write_subject_zip(path: str, case: Case) -> str:
    """The zipped NIfTI form of one subject, written with nibabel; returns ``path``."""
    import nibabel as nib  # optional (the "nifti" extra): the input is written as NIfTI

    rng = np.random.default_rng(case.seed)
    ct, ct_affine = make_ct(case, rng)
    suv, mask, pet_affine = make_pet_mask(case, rng)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for suffix, array, affine in (("ct", ct, ct_affine), ("petsuv", suv, pet_affine), ("mask", mask, pet_affine)):
            image = nib.Nifti1Image(array, affine)
            image.header.set_xyzt_units("mm", "sec")
            image.set_qform(affine, 1)
            image.set_sform(affine, 1)
            zf.writestr(f"{SUBJECT}/{SUBJECT}_{suffix}.nii.gz", gzip.compress(image.to_bytes(), compresslevel=1))
    return path


def target_grid(case: Case) -> tuple[np.ndarray, tuple[int, int, int]]:
    """RAS affine and shape of the LAS grid at ``case.spacing`` mm covering the CT field of view (edges)."""
    ct_affine = _ras_affine(case.ct_shape, case.ct_spacing, (-1, -1, 1), (0.0, 0.0, 0.0))
    lo, hi = [], []
    for a in range(3):
        centres = ct_affine[a, 3] + ct_affine[a, a] * np.array([0, case.ct_shape[a] - 1])
        lo.append(centres.min() - case.ct_spacing[a] / 2)
        hi.append(centres.max() + case.ct_spacing[a] / 2)
    s = case.spacing
    shape = tuple(max(1, int(np.floor((hi[a] - lo[a]) / s + 0.5))) for a in range(3))
    affine = np.diag([-s, s, s, 1.0])  # LAS: axis 0 toward L (RAS -x), 1 toward A, 2 toward S
    affine[:3, 3] = [hi[0] - s / 2, lo[1] + s / 2, lo[2] + s / 2]
    return affine, shape


# ----------------------------------------------------------------------------------------------------------
# the seed pipeline: nibabel + nilearn + scipy + h5py
# ----------------------------------------------------------------------------------------------------------

def _import_peers() -> None:
    """Import time is not the pipeline's: nibabel and nilearn.image (optional peers) before timing."""
    import nibabel  # noqa: F401
    import nilearn.image  # noqa: F401


def _nifti_from_zip(zf: zipfile.ZipFile, name: str):
    import nibabel as nib  # optional (the "nifti" extra): the seed pipeline's reader, its cases skip without nilearn

    return nib.Nifti1Image.from_bytes(gzip.decompress(zf.read(name)))


def nilearn_prepare(zip_path: str, out_h5: str, case: Case, clock: Clock | None = None) -> None:
    from nilearn.image import resample_img, resample_to_img  # optional peer (test extra)

    clock = clock or Clock()
    affine, shape = target_grid(case)
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted({n.split("/")[0] for n in zf.namelist() if n.endswith(".nii.gz")})
        for subject in names:
            ct_img = _nifti_from_zip(zf, f"{subject}/{subject}_ct.nii.gz")
            pet_img = _nifti_from_zip(zf, f"{subject}/{subject}_petsuv.nii.gz")
            mask_img = _nifti_from_zip(zf, f"{subject}/{subject}_mask.nii.gz")
            ct_img.dataobj, pet_img.dataobj, mask_img.dataobj  # noqa: B018 (in memory already)
            clock.lap("load")
            ct_res = resample_img(ct_img, target_affine=affine, target_shape=shape, interpolation="linear",
                                  fill_value=CT_FILL, force_resample=True, copy_header=True)
            pet_res = resample_to_img(pet_img, ct_res, interpolation="linear", force_resample=True,
                                      copy_header=True)
            mask_res = resample_to_img(mask_img, ct_res, interpolation="nearest", force_resample=True,
                                       copy_header=True)
            ct = np.asarray(ct_res.dataobj, dtype=np.float32)
            suv = np.asarray(pet_res.dataobj, dtype=np.float32)
            mask = np.asarray(mask_res.dataobj).astype(np.uint8)
            clock.lap("resample")
            labels, n = ndimage.label(mask > 0, structure=np.ones((3, 3, 3), bool))
            mask_iso = np.zeros(shape, np.uint8)
            for i, box in enumerate(ndimage.find_objects(labels), start=1):  # each lesion in its bounding box
                lesion = labels[box] == i
                values = suv[box]
                mask_iso[box][lesion & (values >= ISO_FRACTION * values[lesion].max())] = 1
            clock.lap("iso")
            image = np.empty((2,) + shape, np.float32)
            np.clip(suv, *SUV_WINDOW, out=image[0])
            image[0] -= SUV_WINDOW[0]
            image[0] /= SUV_WINDOW[1] - SUV_WINDOW[0]
            np.clip(ct, *CT_WINDOW, out=image[1])
            image[1] -= CT_WINDOW[0]
            image[1] /= CT_WINDOW[1] - CT_WINDOW[0]
            clock.lap("normalise")
            attrs = {"affine_ras": affine.tolist(), "ct_window": list(CT_WINDOW), "suv_window": list(SUV_WINDOW),
                     "iso": ISO_FRACTION, "n_lesions": int(n)}
            with h5py.File(out_h5, "a") as f:
                ds = f.require_group("image").create_dataset(subject, data=image, **_h5_kw(image))
                f.require_group("mask").create_dataset(subject, data=mask[None], **_h5_kw(mask[None]))
                f.require_group("mask_iso").create_dataset(subject, data=mask_iso[None], **_h5_kw(mask_iso[None]))
                for k, v in attrs.items():
                    ds.attrs[k] = json.dumps(v)
            clock.lap("write")


def nilearn_project(in_h5: str, out_2d: str, clock: Clock | None = None) -> None:
    """The same content as voxelpipe's ``project_2d``: per angle PET and CT MIPs ``[2, Z, X]``, mask and
    mask_iso MIPs ``[1, Z, X]``, each its own dataset ``<group>/<s>_a<angle>``."""
    clock = clock or Clock()
    with h5py.File(in_h5, "r") as src, h5py.File(out_2d, "a") as dst:
        for subject in src["image"]:
            image = src["image"][subject][()]
            mask = src["mask"][subject][0]
            mask_iso = src["mask_iso"][subject][0]
            clock.lap("project_read")
            for angle in ANGLES:
                mips = []
                for volume, order in ((image[0], 1), (image[1], 1), (mask, 0), (mask_iso, 0)):
                    rotated = ndimage.rotate(volume, -angle, axes=(0, 1), order=order, reshape=False)
                    mips.append(rotated.max(axis=1).T)  # (Z, X): rows toward S, columns toward L at 0 degrees
                clock.lap("project_rotate_max")
                key = f"{subject}_a{int(angle):03d}"
                for group, data in (("image", np.stack(mips[:2])), ("mask", mips[2][None]),
                                    ("mask_iso", mips[3][None])):
                    dst.require_group(group).create_dataset(key, data=data, **_h5_kw(data))
                clock.lap("project_write")


# ----------------------------------------------------------------------------------------------------------
# voxelpipe
# ----------------------------------------------------------------------------------------------------------
def voxelpipe_prepare(zip_path: str, out_h5: str, case: Case) -> list[dict]:
    rows = run_petct(zip_path, out_h5, spacing=(case.spacing,) * 3, workers=1, progress=False)
    _check_rows("run_petct", rows)
    return rows


def voxelpipe_project(in_h5: str, out_2d: str) -> list[dict]:
    rows = project_2d(in_h5, out_2d, ANGLES, axis="S", workers=1, progress=False)
    _check_rows("project_2d", rows)
    return rows


def _check_rows(what: str, rows) -> None:
    """Every subject processed in this call (not skipped: outputs are removed before every round)."""
    rows = list(rows or [])
    bad = [r for r in rows if r.get("status") in (Status.FAILED, Status.SKIPPED)]
    assert rows and not bad, f"{what}: {rows}"


COLD_COMPILE_CODE = (
    "import os, sys, tempfile, time\n"
    f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
    "import bench_petct as b\n"
    "d = tempfile.mkdtemp()\n"
    "z = b.write_subject_zip(os.path.join(d, 'tiny.zip'), b.TINY)\n"
    "from voxelpipe.apps.petct.pipeline import run_petct\n"
    "from voxelpipe.apps.petct.project2d import project_2d\n"
    "t = time.perf_counter()\n"
    "b.voxelpipe_prepare(z, os.path.join(d, 'o.h5'), b.TINY)\n"
    "b.voxelpipe_project(os.path.join(d, 'o.h5'), os.path.join(d, 'o2.h5'))\n"
    "print(time.perf_counter() - t)\n"
)


# ----------------------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def case(benchmarks_enabled) -> Case:
    return FULL if benchmarks_enabled else SMOKE


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("petct"))


@pytest.fixture(scope="module")
def subject_zip(case, workdir) -> str:
    t0 = time.perf_counter()
    path = write_subject_zip(os.path.join(workdir, "project.zip"), case)
    INFO["generate_seconds"] = time.perf_counter() - t0
    INFO["zip_mb"] = os.path.getsize(path) / 1e6
    INFO["case"] = case
    INFO["target_shape"] = target_grid(case)[1]
    return path


@pytest.fixture(scope="module")
def voxelpipe_warm(workdir, benchmarks_enabled) -> dict:
    """Both voxelpipe steps on a tiny subject (compile or disk-cache load), untimed, before any other call."""
    tiny = write_subject_zip(os.path.join(workdir, "tiny.zip"), TINY)
    out, out2 = os.path.join(workdir, "tiny.h5"), os.path.join(workdir, "tiny_2d.h5")
    t0 = time.perf_counter()
    voxelpipe_prepare(tiny, out, TINY)
    voxelpipe_project(out, out2)
    COMPILE["first_call_seconds"] = time.perf_counter() - t0
    COMPILE["loaded_from_disk_cache"] = loaded_from_disk_cache(kr, kp)
    COMPILE["cold_compile_seconds"] = cold_compile_seconds(COLD_COMPILE_CODE) if benchmarks_enabled else None
    print("\n" + compile_line(COMPILE, "tiny subject through run_petct + project_2d"))
    return dict(COMPILE)


def _paths(workdir: str, impl: str) -> dict[str, str]:
    return {k: os.path.join(workdir, f"{impl}_{k}.h5") for k in ("run", "run_2d", "keep", "keep_2d")}


# ----------------------------------------------------------------------------------------------------------
# cases
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_petct_prepare(benchmark, request, case, workdir, subject_zip, impl):
    """zip -> HDF5 (load, LAS, resample, mask_iso, normalise, write), one subject."""
    TABLE.begin(benchmark, "petct-prepare", impl)
    p = _paths(workdir, impl)
    if impl == "voxelpipe":
        benchmark.extra_info.update(request.getfixturevalue("voxelpipe_warm"))
        fn = lambda: voxelpipe_prepare(subject_zip, p["run"], case)  # noqa: E731
    else:
        pytest.importorskip("nilearn")
        _import_peers()
        clocks: list[Clock] = []

        def fn():
            clocks.append(Clock())
            nilearn_prepare(subject_zip, p["run"], case, clocks[-1])

    rounds = ROUNDS[impl]
    benchmark.pedantic(fn, setup=lambda: remove_paths(p["run"]), rounds=rounds, iterations=1, warmup_rounds=0)
    assert os.path.exists(p["run"])
    remove_paths(p["keep"])
    os.replace(p["run"], p["keep"])  # kept for the projection case and the agreement check
    TABLE.record(benchmark, rounds)
    if impl == "nilearn":
        STEPS.setdefault("nilearn", {}).update(clocks[-1].steps)
        benchmark.extra_info.update(clocks[-1].steps)


@pytest.mark.parametrize("impl", IMPLS)
def test_petct_project(benchmark, request, case, workdir, subject_zip, impl):
    """prepared HDF5 -> 2-D HDF5, 8 rotated MIPs about S of PET and mask, one subject."""
    TABLE.begin(benchmark, "petct-project", impl)
    p = _paths(workdir, impl)
    if impl == "voxelpipe":
        request.getfixturevalue("voxelpipe_warm")
        if not os.path.exists(p["keep"]):
            voxelpipe_prepare(subject_zip, p["keep"], case)
        fn = lambda: voxelpipe_project(p["keep"], p["run_2d"])  # noqa: E731
    else:
        pytest.importorskip("nilearn")
        if not os.path.exists(p["keep"]):
            nilearn_prepare(subject_zip, p["keep"], case)
        _import_peers()
        clocks: list[Clock] = []

        def fn():
            clocks.append(Clock())
            nilearn_project(p["keep"], p["run_2d"], clocks[-1])

    rounds = ROUNDS[impl]
    benchmark.pedantic(fn, setup=lambda: remove_paths(p["run_2d"]), rounds=rounds, iterations=1, warmup_rounds=0)
    remove_paths(p["keep_2d"])
    os.replace(p["run_2d"], p["keep_2d"])
    TABLE.record(benchmark, rounds)
    if impl == "nilearn":
        STEPS.setdefault("nilearn", {}).update(clocks[-1].steps)
        benchmark.extra_info.update(clocks[-1].steps)


def test_petct_steps(case, workdir, subject_zip, voxelpipe_warm):
    """voxelpipe's per-step times (one run, outside pytest-benchmark): load, prepare, write."""
    out = os.path.join(workdir, "steps.h5")
    remove_paths(out)
    clock = Clock()
    (sid,), _ = zip_subject_ids(subject_zip)
    subject = load_zip_subject(subject_zip, sid)
    clock.lap("load")
    prepared = prepare_subject(subject, shape=None, spacing=(case.spacing,) * 3)
    clock.lap("prepare (LAS, resample, iso, normalise)")
    with open_subject_store(out, mode="a") as store:
        store.write(subject.subject_id, prepared["image"], prepared["mask"], prepared["mask_iso"],
                    prepared["attrs"])
    clock.lap("write")
    STEPS["voxelpipe"] = clock.steps
    assert prepared["image"].shape == (2,) + tuple(INFO["target_shape"]), prepared["image"].shape
    remove_paths(out)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return float(2 * np.sum(a & b) / max(1, a.sum() + b.sum()))


def _first_dataset(group):
    found = []
    group.visititems(lambda name, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return found


def test_petct_outputs_agree(workdir, subject_zip, case):
    """Agreement figures of voxelpipe's and the peer's prepared files (PET and CT correlation, mask Dice), untimed,
    for the table; nothing asserted (see the module docstring)."""
    vp, nl = _paths(workdir, "voxelpipe"), _paths(workdir, "nilearn")
    if not (os.path.exists(vp["keep"]) and os.path.exists(nl["keep"])):
        pytest.skip("both prepared files are needed (a prepare case was skipped or failed)")
    with h5py.File(vp["keep"], "r") as fv, h5py.File(nl["keep"], "r") as fn:
        (sv,) = list(fv["image"])
        (sn,) = list(fn["image"])
        iv, inl = fv["image"][sv][()], fn["image"][sn][()]
        assert iv.shape == inl.shape, (iv.shape, inl.shape)  # the figures compare voxel by voxel
        AGREE["pet_corr"] = _corr(iv[0], inl[0])
        AGREE["ct_corr"] = _corr(iv[1], inl[1])
        AGREE["pet_max_abs_diff"] = float(np.max(np.abs(iv[0] - inl[0])))
        fv_mask, fn_mask = fv["mask"][sv][0], fn["mask"][sn][0]
        AGREE["mask_dice"] = _dice(fv_mask, fn_mask)
        AGREE["mask_iso_dice"] = _dice(fv["mask_iso"][sv][()], fn["mask_iso"][sn][()])
        INFO["voxelpipe_attrs_keys"] = sorted(fv["image"][sv].attrs)
    if os.path.exists(vp["keep_2d"]) and os.path.exists(nl["keep_2d"]):
        with h5py.File(vp["keep_2d"], "r") as fv, h5py.File(nl["keep_2d"], "r") as fn:
            INFO["voxelpipe_2d_datasets"] = len(_first_dataset(fv))
            INFO["nilearn_2d_datasets"] = len(_first_dataset(fn))
            AGREE.update(_mip_agreement(fv, fn, sv, sn))
    truth = _truth_mask(case)
    AGREE["mask_dice_truth_voxelpipe"] = _dice(fv_mask, truth)
    AGREE["mask_dice_truth_nilearn"] = _dice(fn_mask, truth)
    print("\nagreement:", json.dumps(AGREE))


def _truth_mask(case: Case) -> np.ndarray:
    """The lesion spheres sampled at the target grid's voxel centres (voxel centre within the radius)."""
    affine, shape = target_grid(case)
    xs, ys, zs = _axes_mm(shape, affine)
    x, y, z = np.meshgrid(xs, ys, zs, indexing="ij", sparse=True)
    truth = np.zeros(shape, bool)
    for (cx, cy, cz), r, _ in _phantom_layout(case)["lesions"]:
        truth |= (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= r * r
    return truth


def _mip_agreement(fv, fn, subject_v: str, subject_n: str) -> dict:
    """Per angle, the peer's PET MIP and mask MIP ``(Z, X)`` against voxelpipe's central X columns (its images
    are as wide as the slice diagonal): the worst correlation and Dice over the angles, 0 and 45 degrees."""
    out: dict[str, float] = {}
    corrs, dices = [], []
    for angle in ANGLES:
        key_v, key_n = f"{subject_v}_a{int(angle):03d}", f"{subject_n}_a{int(angle):03d}"
        if key_v not in fv["image"]:
            return {}
        iv, inl = fv["image"][key_v][()], fn["image"][key_n][()]
        mv, mn = fv["mask"][key_v][()], fn["mask"][key_n][()]
        if iv.shape[-2] != inl.shape[-2] or iv.shape[-1] < inl.shape[-1]:
            return {"mip_shape_mismatch": 1.0}
        off = (iv.shape[-1] - inl.shape[-1]) // 2
        cols = slice(off, off + inl.shape[-1])
        corrs.append(_corr(iv[0][:, cols], inl[0]))
        dices.append(_dice(mv[0][:, cols], mn[0]))
    out["mip_pet_corr_min"] = min(corrs)
    out["mip_mask_dice_min"] = min(dices)
    out["mip_pet_corr_45"] = corrs[1]
    return out


def _header() -> list[str]:
    c = INFO.get("case")
    if c is None:
        return []
    return [f"one subject: CT {'x'.join(map(str, c.ct_shape))} int16, PET {'x'.join(map(str, c.pet_shape))} "
            f"float32, mask on the PET grid -> LAS {c.spacing:g} mm {'x'.join(map(str, INFO['target_shape']))}; "
            f"8 angles about S; {numba.get_num_threads()} numba threads, workers=1; zip {INFO['zip_mb']:.0f} MB"]


def _footer() -> list[str]:
    lines = []
    totals = {impl: [TABLE.median(f"petct-{stage}", impl) for stage in ("prepare", "project")] for impl in IMPLS}
    ours = totals["voxelpipe"]
    if None not in ours:
        for impl in IMPLS[1:]:
            if None not in totals[impl]:
                lines.append(f"whole subject (prepare + project): voxelpipe {sum(ours):.3f} s, {impl} "
                             f"{sum(totals[impl]):.3f} s, ratio {sum(totals[impl]) / sum(ours):.1f}x "
                             f"(target >= {TARGET:g}x, not asserted)")
    for impl in IMPLS:
        if impl in STEPS:
            lines.append(f"{impl} steps (s): " + ", ".join(f"{k} {v:.2f}" for k, v in STEPS[impl].items()))
    if COMPILE:
        lines.append(compile_line(COMPILE, "tiny subject through run_petct + project_2d"))
    if AGREE:
        lines.append("agreement voxelpipe vs nilearn: " + ", ".join(
            f"{k} {v:.4f}" for k, v in AGREE.items() if not k.endswith("_dataset")))
    return lines


TABLE = RatioTable("petct: whole pipeline per subject, seconds and ratios", order=IMPLS, header=_header,
                   footer=_footer)
