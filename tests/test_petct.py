"""PET/CT preparation (voxelpipe.apps.petct.pipeline) on synthetic studies written by voxelpipe.testing.synthetic.

What the synthetic knows independently of voxelpipe: the hot spheres' LPS centres and SUVs, the SUV factor
(weight / decayed dose, computed in synthetic.suv_factor_expected), the exact SUV of every PET voxel centre
(``pet_suv``) and the CT voxels of the spheres (HU exactly ``ct_sphere_hu``)."""
from __future__ import annotations

import csv
import zipfile

import numpy as np
import pytest
from scipy import ndimage

from voxelpipe.apps.petct.pipeline import (
    STATUS_COLUMNS,
    load_subject,
    load_zip_subjects,
    prepare_subject,
    run_petct,
    status_path,
)
from voxelpipe.cli.app import main
from voxelpipe.core.errors import InputError
from voxelpipe.core.geometry import Geometry
from voxelpipe.stores.subject_store import open_subject_store
from voxelpipe.testing.synthetic import write_petct_study

INDEX_COLUMNS = ["subject_id", "patient_dir", "study_dir", "study_instance_uid", "ct_series_uid", "pet_series_uid",
                 "mask_kind", "mask_path", "mask_series_uid", "n_ct_files", "n_pet_files"]
SMALL = dict(ct_shape=(24, 40, 40), ct_spacing=(2.5, 1.0, 1.0), pet_shape=(20, 24, 24), pet_spacing=(3.5, 2.0, 2.0),
             sphere_radius_mm=6.0)
SECOND = ((-7.0, 5.0, -12.0), 4.5, 4.0)  # a second, colder lesion: (LPS, radius mm, SUV)


def _row(sid: str, info: dict) -> dict:
    return {"subject_id": sid, "patient_dir": info["folder"], "study_dir": info["folder"],
            "study_instance_uid": info["study_uid"], "ct_series_uid": info["ct_series_uid"],
            "pet_series_uid": info["pet_series_uid"], "mask_kind": info["mask_kind"],
            "mask_path": info["mask_path"], "mask_series_uid": "", "n_ct_files": len(info["ct_files"]),
            "n_pet_files": len(info["pet_files"])}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("petct")
    studies = {
        "a000000001": write_petct_study(root / "a", mask="RTSTRUCT", pet_orientation="flipped",
                                        pet_offset=(4.1, -3.3, 2.2), extra_spheres=[SECOND], patient_id="A", **SMALL),
        "b000000002": write_petct_study(root / "b", mask="SEG", pet_orientation="rotated",
                                        pet_offset=(-2.7, 1.9, -1.4), sphere_lps=(-4.0, 2.0, 6.0),
                                        decay_correction="ADMIN", seed=3, patient_id="B", **SMALL),
        "c000000003": write_petct_study(root / "c", mask="RTSTRUCT", patient_weight=None, patient_id="C", **SMALL),
    }
    index = root / "index.csv"
    with open(index, "w", newline="") as fh:
        writer = csv.DictWriter(fh, INDEX_COLUMNS)
        writer.writeheader()
        for sid, info in studies.items():
            writer.writerow(_row(sid, info))
    return {"root": root, "index": str(index), "studies": studies}


@pytest.fixture(scope="module")
def subjects(project):
    return {sid: load_subject(_row(sid, info)) for sid, info in project["studies"].items() if sid[0] in "ab"}


def _centroid_lps(weights: np.ndarray, geometry: Geometry) -> np.ndarray:
    index = np.argwhere(weights).mean(axis=0)
    return (geometry.affine @ np.append(index, 1.0))[:3]


def test_load_subject_gives_the_known_suv(project, subjects):
    for sid, subject in subjects.items():
        info = project["studies"][sid]
        assert subject.pet.dtype == np.float32
        # factor computed independently (synthetic) and the audit's factor agree
        assert subject.audit["suv"]["factor"] == pytest.approx(info["suv_factor"], rel=1e-9)
        # SUV per voxel: stored × slope × factor == the synthetic's SUV at each voxel centre (quantisation only)
        np.testing.assert_allclose(subject.pet.numpy(), info["pet_suv"], atol=1e-3 * info["sphere_suv"])
        assert subject.ct.dtype == np.int16 and subject.mask.dtype == np.uint8
        assert subject.audit["mask"]["grid"] == "ct"
        np.testing.assert_array_equal(subject.mask.numpy() != 0, info["ct_sphere_mask"])


@pytest.mark.parametrize("sid", ["a000000001", "b000000002"])
def test_hot_sphere_lands_at_the_same_place(project, subjects, sid):
    """PET on another grid (offset, flipped or rotated in-plane, coarser) resampled onto the LAS CT grid: the
    PET hot spot, the CT sphere and the mask sit on the known LPS centre, within one output voxel."""
    info = project["studies"][sid]
    out = prepare_subject(subjects[sid])  # the CT grid itself, reoriented to LAS
    geometry = Geometry.from_attrs(out["attrs"]["geometry"])
    assert np.allclose(np.abs(np.diag(geometry.direction)), 1)  # LAS: axes along x, y, z
    # LPS x grows toward Left, y toward Posterior: L = +x, A = -y, S = +z
    assert geometry.direction[0, 0] > 0 and geometry.direction[1, 1] < 0 and geometry.direction[2, 2] > 0
    ct_hu = out["image"][1] * 2000.0 - 1000.0
    suv = out["image"][0] * 20.0
    centre, radius, _ = info["spheres"][0]
    lps = np.stack(np.meshgrid(*[np.arange(n) for n in suv.shape], indexing="ij"), -1) @ geometry.affine[:3, :3].T
    lps += geometry.affine[:3, 3]
    near = np.linalg.norm(lps - np.asarray(centre), axis=-1) <= radius + 6  # the first sphere's neighbourhood
    ct_sphere = _centroid_lps((np.abs(ct_hu - 120.0) < 0.05) & near, geometry)
    pet_hot = _centroid_lps((suv > 0.5 * info["sphere_suv"]) & near, geometry)
    mask = _centroid_lps(out["mask"][0].astype(bool) & near, geometry)
    tolerance = geometry.spacing  # one output voxel along each axis (LAS: x, y, z)
    for name, found in (("CT sphere", ct_sphere), ("PET hot spot", pet_hot), ("mask", mask)):
        assert np.all(np.abs(found - np.asarray(centre)) <= tolerance), (name, found, centre)
    assert np.all(np.abs(pet_hot - ct_sphere) <= tolerance)


def test_resampled_grid_and_suv_values(project, subjects):
    sid = "a000000001"
    info = project["studies"][sid]
    out = prepare_subject(subjects[sid], shape=(30, 30, 20), spacing=(1.5, 1.5, 3.0))
    geometry = Geometry.from_attrs(out["attrs"]["geometry"])
    assert out["image"].shape == (2, 30, 30, 20) and out["image"].dtype == np.float32
    assert out["mask"].shape == out["mask_iso"].shape == (1, 30, 30, 20)
    np.testing.assert_allclose(geometry.spacing, (1.5, 1.5, 3.0))
    # the voxel nearest the sphere centre holds the sphere's SUV; a voxel deep in soft tissue the background's
    centre = np.asarray(info["sphere_lps"])
    index = np.round(np.linalg.solve(geometry.affine[:3, :3], centre - geometry.affine[:3, 3])).astype(int)
    assert out["image"][0][tuple(index)] * 20.0 == pytest.approx(info["sphere_suv"], rel=1e-3)
    tissue = np.round(np.linalg.solve(geometry.affine[:3, :3], np.array([-3.0, -10.0, 8.0]) - geometry.affine[:3, 3]))
    assert out["image"][0][tuple(tissue.astype(int))] * 20.0 == pytest.approx(info["background_suv"], rel=1e-3)
    # normalisation bounds and parameters
    assert out["image"].min() >= 0.0 and out["image"].max() <= 1.0
    assert out["attrs"]["normalisation"]["ct_window_hu"] == [-1000.0, 1000.0]
    assert out["attrs"]["suv"]["factor"] == pytest.approx(info["suv_factor"])
    # FOV-preserving variants
    only_shape = prepare_subject(subjects[sid], shape=(20, 20, 12))
    g = Geometry.from_attrs(only_shape["attrs"]["geometry"])
    ct_las = np.array([40 * 1.0, 40 * 1.0, 24 * 2.5])  # x, y, z extents of the CT (voxel edges)
    np.testing.assert_allclose(np.asarray(g.shape) * g.spacing, ct_las)
    only_spacing = prepare_subject(subjects[sid], spacing=(2.0, 2.0, 5.0))
    assert only_spacing["image"].shape == (2, 20, 20, 12)
    narrow = prepare_subject(subjects[sid], ct_window=(-100, 100), suv_window=(0, 5))
    assert narrow["image"].max() == 1.0 and narrow["image"].min() == 0.0


def test_mask_iso_is_inside_the_mask_and_keeps_each_lesion_peak(subjects):
    out = prepare_subject(subjects["a000000001"], shape=(32, 32, 20), spacing=(1.25, 1.25, 3.0))
    mask, iso = out["mask"][0], out["mask_iso"][0]
    suv = out["image"][0] * 20.0
    assert not np.any(iso & (mask == 0))
    labels, n = ndimage.label(mask != 0, structure=np.ones((3, 3, 3)))
    assert n == 2 == out["attrs"]["stats"]["lesions"]
    for lesion in range(1, n + 1):
        inside = labels == lesion
        peak = np.unravel_index(np.argmax(np.where(inside, suv, -np.inf)), suv.shape)
        assert iso[peak] == 1
        assert np.all(suv[inside & (iso == 1)] >= 0.41 * suv[peak] - 1e-6)
    absolute = prepare_subject(subjects["a000000001"], iso_suv=5.0, shape=(32, 32, 20), spacing=(1.25, 1.25, 3.0))
    np.testing.assert_array_equal(absolute["mask_iso"][0], ((mask != 0) & (suv >= 5.0)).astype(np.uint8))
    assert absolute["attrs"]["mask_iso"]["absolute_suv"] == 5.0


@pytest.mark.parametrize("suffix, executor", [(".h5", "pool"), (".zarr", "pool"), (".h5", "dask-local")])
def test_run_writes_skips_on_rerun_and_reports_the_broken_subject(project, subjects, tmp_path, suffix, executor):
    if executor != "pool":
        pytest.importorskip("distributed", reason="the dask executor needs dask.distributed (the dask extra)")
    out = tmp_path / f"out{suffix}"
    rows = run_petct(project["index"], out, shape=(24, 24, 16), spacing=(2.0, 2.0, 4.0),
                     workers=1 if suffix == ".zarr" else 2, progress=False, executor=executor)
    status = {r["subject_id"]: r for r in rows}
    assert status["a000000001"]["status"] == status["b000000002"]["status"] == "done"
    assert status["c000000003"]["status"] == "failed"
    assert "PatientWeight" in status["c000000003"]["reason"]
    with open_subject_store(out) as store:
        assert sorted(store.subjects()) == ["a000000001", "b000000002"]
        got = store.read("a000000001")
        expected = prepare_subject(subjects["a000000001"], shape=(24, 24, 16), spacing=(2.0, 2.0, 4.0))
        np.testing.assert_array_equal(got["image"], expected["image"])
        np.testing.assert_array_equal(got["mask_iso"], expected["mask_iso"])
        assert got["attrs"]["geometry"] == expected["attrs"]["geometry"]
        assert got["attrs"]["suv"]["units"] == "BQML"
    rerun = {r["subject_id"]: r["status"] for r in run_petct(project["index"], out, shape=(24, 24, 16),
                                                             spacing=(2.0, 2.0, 4.0), workers=1, progress=False)}
    assert rerun == {"a000000001": "skipped", "b000000002": "skipped", "c000000003": "failed"}
    with open(status_path(out)) as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == STATUS_COLUMNS and len(table) == 3


def test_cli_and_roi_selection(project, tmp_path, capsys):
    out = tmp_path / "cli.h5"
    code = main(["petct", project["index"], "--out", str(out), "--shape", "16,16,10", "--workers", "1",
                 "--roi", "GTV", "--suv-window", "0,10"])
    printed = capsys.readouterr().out
    assert code == 1 and "petct: 2 done, 0 skipped, 1 failed" in printed and "c000000003" in printed
    rows = run_petct(project["index"], tmp_path / "roi.h5", rois=["NOPE"], workers=1, progress=False)
    assert {r["subject_id"]: r["status"] for r in rows}["a000000001"] == "failed"
    with pytest.raises(InputError):
        run_petct(project["index"], tmp_path / "bad.h5", orientation="XYZ")


def test_zip_form_gives_the_same_output(project, subjects, tmp_path):
    pytest.importorskip("nibabel")
    from voxelpipe.stores.nifti import nifti_bytes

    archive = tmp_path / "project.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for sid, s in subjects.items():
            zf.writestr(f"{sid}/{sid}_ct.nii.gz", nifti_bytes(s.ct))
            zf.writestr(f"{sid}/{sid}_petsuv.nii.gz", nifti_bytes(s.pet))
            zf.writestr(f"{sid}/{sid}_mask.nii.gz", nifti_bytes(s.mask))
        zf.writestr("d000000004/d000000004_ct.nii.gz", nifti_bytes(subjects["a000000001"].ct))
    loaded = {s.subject_id: s for s in load_zip_subjects(archive)}
    assert sorted(loaded) == sorted(subjects)
    for sid, s in subjects.items():
        a = prepare_subject(s, shape=(20, 20, 12))
        b = prepare_subject(loaded[sid], shape=(20, 20, 12))
        np.testing.assert_allclose(b["image"], a["image"], atol=1e-5)
        np.testing.assert_array_equal(b["mask"], a["mask"])
        np.testing.assert_allclose(b["attrs"]["geometry"]["affine"], a["attrs"]["geometry"]["affine"], atol=1e-4)
    rows = {r["subject_id"]: r for r in run_petct(archive, tmp_path / "zip.h5", workers=1, progress=False)}
    assert rows["a000000001"]["status"] == rows["b000000002"]["status"] == "done"
    assert rows["d000000004"]["status"] == "failed" and "missing" in rows["d000000004"]["reason"]


def test_label_series_mask(project, tmp_path):
    """A label volume stored as its own DICOM series (on the CT grid) serves as the mask."""
    from voxelpipe.testing.synthetic import SeriesSpec, write_series

    info = write_petct_study(tmp_path / "label", mask="none", patient_id="L", **SMALL)
    n, rows, cols = info["ct_shape"]
    spec = SeriesSpec(n_slices=n, rows=rows, columns=cols, spacing=info["ct_spacing"], origin=tuple(info["ct_ipp0"]),
                      intercept=0.0, modality="OT", series_description="label", series_number=7,
                      patient_id="L", study_uid=info["study_uid"])
    write_series(tmp_path / "label" / "LABEL", spec, hu=info["ct_sphere_mask"].astype(np.int16) * 2)
    row = dict(_row("e000000005", info), mask_kind="LABEL", mask_path="", mask_series_uid=spec.series_uid)
    subject = load_subject(row)
    assert subject.audit["mask"]["labels"] == [0, 2]
    np.testing.assert_array_equal(subject.mask.numpy() == 2, info["ct_sphere_mask"])
    out = prepare_subject(subject)
    assert set(np.unique(out["mask"])) == {0, 2} and out["mask_iso"].max() == 1


# ---------------------------------------------------------------------------------------------------------
# geometry-only helpers: the same grids as the array operations, without the arrays
# ---------------------------------------------------------------------------------------------------------
def _geometry_cases():
    rng = np.random.default_rng(3)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    oblique = np.eye(3) + np.sin(0.3) * k + (1 - np.cos(0.3)) * k @ k
    spl = np.column_stack([[0, 0, 1.0], [0, 1.0, 0], [1.0, 0, 0]])  # axial DICOM: slices S, rows P, columns L
    out = []
    for direction in (np.eye(3), spl, oblique):
        out.append(Geometry((7, 9, 11), (2.5, 0.8, 0.6), (-10.0, 20.0, -30.0), direction))
    tilted = out[1].affine.copy()
    tilted[:3, 0] += 0.3 * tilted[:3, 1]  # gantry tilt: sheared slice axis
    out.append(Geometry((7, 9, 11), (2.5, 0.8, 0.6), tilted[:3, 3], out[1].direction, None, tilted))
    return out


def _same_geometry(a: Geometry, b: Geometry) -> None:
    assert a.to_attrs() == b.to_attrs()


@pytest.mark.parametrize("code", ["LAS", "RAS", "LPS", "SPL", "ASR", "IPL"])
def test_reoriented_geometry_equals_reorient(code):
    from voxelpipe.core.volume import Volume
    from voxelpipe.ops.reorient import reorient, reoriented_geometry

    for g in _geometry_cases():
        volume = Volume(np.zeros(g.shape, np.int16), g)
        _same_geometry(reoriented_geometry(g, code), reorient(volume, code).geometry)
    with pytest.raises(InputError):
        reoriented_geometry(g, "LLS")


@pytest.mark.parametrize("kw", [{"spacing": 1.7}, {"spacing": (3.0, 0.5, 1.1)}, {"shape": (4, 13, 5)}])
def test_resampled_geometry_and_output_grid_equal_resample(kw):
    from voxelpipe.apps.petct.pipeline import output_grid
    from voxelpipe.core.volume import Volume
    from voxelpipe.ops.resample import resample, resampled_geometry

    for g in _geometry_cases():
        volume = Volume(np.zeros(g.shape, np.uint8), g)
        expected = resample(volume, order="nearest", **kw).geometry
        _same_geometry(resampled_geometry(g, **kw), expected)
        if "spacing" not in kw or not np.isscalar(kw["spacing"]):
            _same_geometry(output_grid(volume, **kw), expected)
    with pytest.raises(InputError, match="exactly one"):
        resampled_geometry(g, spacing=1.0, shape=(2, 2, 2))
    with pytest.raises(InputError, match="spacing"):
        resampled_geometry(g, spacing=(1.0, -1.0, 1.0))
    with pytest.raises(InputError, match="Geometry"):
        resampled_geometry(volume, spacing=1.0)


@pytest.mark.parametrize("orientation", ["LAS", "SPL", "RAS"])
@pytest.mark.parametrize("kw", [{"spacing": (1.5, 1.7, 2.9)}, {"shape": (17, 23, 9)},
                                {"shape": (17, 23, 9), "spacing": (1.5, 1.7, 2.9)}])
def test_ct_sampled_straight_onto_the_grid_equals_reorient_then_resample(subjects, orientation, kw):
    """prepare_subject samples the CT from its own array onto the reoriented grid: the same values as the
    reoriented copy resampled (to float32 rounding: the same points, interpolated from the other side)."""
    from voxelpipe.apps.petct.pipeline import CT_FILL_HU, output_grid
    from voxelpipe.ops.reorient import reorient
    from voxelpipe.ops.resample import resample_to

    subject = subjects["a000000001"]
    out = prepare_subject(subject, orientation=orientation, **kw)
    ct = reorient(subject.ct, orientation)
    grid = output_grid(ct, kw.get("shape"), kw.get("spacing"))
    _same_geometry(Geometry.from_attrs(out["attrs"]["geometry"]), grid)
    hu = resample_to(ct, grid, order="linear", fill=CT_FILL_HU).numpy()
    expected = np.clip(hu, -1000.0, 1000.0) / 2000.0 + 0.5
    np.testing.assert_allclose(out["image"][1], expected, rtol=0, atol=2e-6)
