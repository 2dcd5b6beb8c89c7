"""Uneven slice spacing and gantry tilt, end to end: synthetic CT series (pixel values = a known smooth field of
the patient position) through `convert`, checked against the field itself, against the dcm2niix binary's
``_Tilt_1`` / ``_Eq_1`` outputs (run here), and against every slice's ImagePositionPatient."""
from __future__ import annotations

import glob
import json
import os
import subprocess

import numpy as np
import pydicom
import pytest
from scipy.ndimage import map_coordinates

from voxelpipe.apps.report.checks import is_flagged, regrid_flagged, series_checks
from voxelpipe.core.types import Status
from voxelpipe.ops.projection import aligned_for_projection, project
from voxelpipe.ops.regrid import is_sheared
from voxelpipe.pipelines.convert import convert
from voxelpipe.pipelines.scan import scan
from voxelpipe.pipelines.transform import project_volumes, resample_volumes
from voxelpipe.stores.nifti import write_nifti
from voxelpipe.stores.volumes import open_volume
from voxelpipe.testing.scanner_series import (
    slice_points,
    smooth_hu,
    tilted_positions,
    write_slices,
    write_tilted_series,
    write_uneven_series,
)

from helpers import dcm2niix_executable

GEOMETRY_TOL_MM = 1e-3
UNEVEN_Z = [0.0, 2.5, 5.0, 7.5, 10.0, 11.25, 12.5, 15.0, 17.5, 20.0, 27.5, 30.0, 32.5]  # 1.25 and 7.5 mm steps
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def dcm2niix_output(folder: str, out: str, suffix: str):
    """Run the dcm2niix binary on ``folder`` and load its ``<name><suffix>.nii`` (nibabel image)."""
    nib = pytest.importorskip("nibabel")
    binary = dcm2niix_executable()
    if binary is None:
        pytest.skip("dcm2niix binary not found on PATH or beside the interpreter (pip install dcm2niix)")
    os.makedirs(out, exist_ok=True)
    subprocess.run([binary, "-z", "n", "-b", "n", "-f", "series", "-o", out, folder], check=True,
                   capture_output=True)
    found = sorted(glob.glob(os.path.join(out, f"series{suffix}.nii")))
    assert found, f"dcm2niix wrote {sorted(os.listdir(out))}, no series{suffix}.nii"
    return nib.load(found[0])


def as_nifti(volume):
    """A voxelpipe volume as a nibabel image (index -> RAS through the same affine)."""
    nib = pytest.importorskip("nibabel")
    return nib.Nifti1Image(np.asarray(volume.array[...], dtype=np.float32), LPS_TO_RAS @ volume.geometry.affine)


def canonical(image):
    nib = pytest.importorskip("nibabel")
    canon = nib.as_closest_canonical(image)
    return np.asarray(canon.dataobj, dtype=np.float64), canon.affine


def convert_one(folder, out, **options) -> dict:
    rows = convert([str(folder)], str(out), progress=False, **options)
    assert len(rows) == 1
    return rows[0]


def field_at(geometry) -> np.ndarray:
    """The synthetic field at every voxel centre of ``geometry`` (index -> LPS through its affine)."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij"), axis=-1)
    return smooth_hu(index @ geometry.affine[:3, :3].T + geometry.affine[:3, 3])


def source_slices(paths):
    """(ImagePositionPatient (n, 3), ImageOrientationPatient, HU stack) of the written files, in file order."""
    datasets = [pydicom.dcmread(p) for p in paths]
    ipps = np.array([[float(v) for v in d.ImagePositionPatient] for d in datasets])
    iop = [float(v) for v in datasets[0].ImageOrientationPatient]
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in datasets])
    return ipps, iop, hu


@pytest.fixture(scope="module")
def tilted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tilted") / "dicom"
    paths = write_tilted_series(folder, 15.0, gantry_tag=15.0)
    return folder, paths


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uneven") / "dicom"
    paths = write_uneven_series(folder, UNEVEN_Z)
    return folder, paths


# ----------------------------------------------------------------------------------------------------------
# gantry tilt
# ----------------------------------------------------------------------------------------------------------
def test_tilt_corrected_is_orthonormal_and_every_slice_lands_at_its_position(tilted, tmp_path):
    folder, paths = tilted
    row = convert_one(folder, tmp_path / "out")
    assert row["status"] == Status.DONE, row["reason"]
    assert row["sheared"] is False and row["uniform"] is True and "tilt 15 deg corrected" in row["regrid"]
    volume = open_volume(row["path"])
    g = volume.geometry
    rebuilt = np.eye(4)
    rebuilt[:3, :3] = g.direction * g.spacing
    rebuilt[:3, 3] = g.origin
    np.testing.assert_allclose(g.affine, rebuilt, atol=1e-9)  # spacing/origin/direction = affine
    np.testing.assert_allclose(g.direction.T @ g.direction, np.eye(3), atol=1e-9)  # orthonormal
    assert "sheared" not in volume.attrs
    data = np.asarray(volume.array[...], dtype=np.float64)
    ipps, iop, hu = source_slices(paths)
    inverse = np.linalg.inv(g.affine)
    rows, columns = hu.shape[1:]
    for k, ipp in enumerate(ipps):
        # every pixel centre of source slice k, mapped into the corrected grid: on plane k exactly
        points = slice_points(ipp, iop, rows, columns, (1.0, 1.0)).reshape(-1, 3)
        index = points @ inverse[:3, :3].T + inverse[:3, 3]
        np.testing.assert_allclose(index[:, 0], k, atol=GEOMETRY_TOL_MM / g.spacing[0])
        sampled = map_coordinates(data, index.T, order=1, mode="nearest").reshape(rows, columns)
        inner = (slice(1, -1), slice(1, -1))  # one pixel in from the edge: bilinear of bilinear stays inside
        assert np.max(np.abs(sampled[inner] - hu[k][inner])) < 4.0, k
    # and the values are the field at the voxel centres (where a slice covers them)
    truth = field_at(g)
    covered = data > data.min()
    assert np.median(np.abs(data - truth)[covered]) < 0.5
    assert np.percentile(np.abs(data - truth)[covered], 99) < 3.0


def test_tilt_corrected_matches_dcm2niix_tilt_output(tmp_path):
    folder = tmp_path / "dicom"
    write_tilted_series(folder, 15.0, gantry_tag=15.0)
    reference = dcm2niix_output(str(folder), str(tmp_path / "dcm2niix"), "_Tilt_1")
    row = convert_one(folder, tmp_path / "out")
    ours, our_affine = canonical(as_nifti(open_volume(row["path"])))
    theirs, their_affine = canonical(reference)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(our_affine, their_affine, atol=GEOMETRY_TOL_MM)
    fill_ours, fill_theirs = ours.min(), theirs.min()
    both = (ours > fill_ours) & (theirs > fill_theirs)
    either = (ours > fill_ours) | (theirs > fill_theirs)
    assert both.sum() > 0.97 * either.sum()  # the same pixels are covered (each slice covers 40 of 55 rows)
    # both interpolate linearly between the two rows around each point; dcm2niix rounds to int16
    assert np.max(np.abs(ours - theirs)[both]) <= 0.5 + 1e-3


def test_negative_tilt_is_placed_by_the_positions_not_the_tag(tmp_path):
    """GantryDetectorTilt -20 on a scanner dcm2niix does not know: dcm2niix shifts the rows the other way from
    the tag's sign (its output holds values 100+ HU off the field at its own voxel positions); ours follows the
    ImagePositionPatient of every slice. The grid size rule is the same."""
    folder = tmp_path / "dicom"
    write_tilted_series(folder, -20.0, gantry_tag=-20.0)
    reference = dcm2niix_output(str(folder), str(tmp_path / "dcm2niix"), "_Tilt_1")
    volume = open_volume(convert_one(folder, tmp_path / "out")["path"])
    ours, _ = canonical(as_nifti(volume))
    assert ours.shape == canonical(reference)[0].shape
    data = np.asarray(volume.array[...], dtype=np.float64)
    covered = data > data.min()
    assert np.median(np.abs(data - field_at(volume.geometry))[covered]) < 0.5


def test_tilt_keep_is_sheared_and_rebuilt_by_simpleitk(tilted, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    folder, paths = tilted
    row = convert_one(folder, tmp_path / "out", tilt="keep")
    assert row["status"] == Status.DONE and row["sheared"] is True and row["regrid"] == ""
    volume = open_volume(row["path"])
    attrs = volume.attrs
    assert attrs["sheared"] is True
    ipps, _, hu = source_slices(paths)
    np.testing.assert_array_equal(np.asarray(volume.array[...]), hu.astype(np.int16))  # stored as acquired
    affine = np.asarray(attrs["affine"])
    np.testing.assert_allclose(affine[:3, 3] + np.outer(np.arange(len(ipps)), affine[:3, 0]), ipps,
                               atol=GEOMETRY_TOL_MM)
    image = sitk.GetImageFromArray(np.asarray(volume.array[...]))
    image.SetSpacing([float(v) for v in attrs["spacing"][::-1]])  # SimpleITK: (column, row, slice)
    image.SetOrigin([float(v) for v in attrs["origin"]])
    image.SetDirection([float(v) for v in np.asarray(attrs["direction"])[:, ::-1].ravel()])
    for index in [(0, 0, 0), (39, 0, 23), (5, 17, 11), (0, 39, 23)]:  # (column, row, slice)
        expected = affine[:3, :3] @ np.array(index[::-1], dtype=np.float64) + affine[:3, 3]
        np.testing.assert_allclose(image.TransformIndexToPhysicalPoint(index), expected, atol=GEOMETRY_TOL_MM)


def test_resample_and_project_accept_a_sheared_volume(tilted, tmp_path):
    folder, _ = tilted
    convert_one(folder, tmp_path / "out", tilt="keep")
    rows = resample_volumes(str(tmp_path / "out"), str(tmp_path / "res"), spacing=(1.0, 1.0, 1.0),
                            orientation="LAS", progress=False)
    assert rows[0]["status"] == Status.DONE, rows[0]["reason"]
    result = open_volume(rows[0]["path"])
    g = result.geometry
    np.testing.assert_allclose(g.spacing, 1.0)
    np.testing.assert_allclose(np.abs(g.direction.T @ g.direction), np.eye(3), atol=1e-9)  # no shear left
    assert "sheared" not in result.attrs
    data = np.asarray(result.array[...], dtype=np.float64)
    inside = data != 0
    assert np.median(np.abs(data - field_at(g))[inside]) < 1.0
    rows = project_volumes(str(tmp_path / "out"), str(tmp_path / "proj"), angles=[0.0, 90.0], progress=False)
    assert rows[0]["status"] == Status.DONE, rows[0]["reason"]


def test_project_of_a_sheared_volume_sees_the_field(tilted, tmp_path):
    """About L at 0° the rays run inferior -> superior, one ray per (row, column) of the aligned grid: the
    projection of the kept, sheared volume is the max of the field along those rays inside the scanned slab."""
    folder, _ = tilted
    volume = open_volume(convert_one(folder, tmp_path / "out", tilt="keep")["path"])
    aligned, _ = aligned_for_projection(volume)
    g = aligned.geometry
    assert volume.geometry.sheared and is_sheared(volume.geometry) and not is_sheared(g)
    permutation = np.abs(g.direction)  # every array axis along one patient axis
    np.testing.assert_array_equal(np.sort(permutation, axis=0), [[0, 0, 0], [0, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(permutation.sum(axis=1), [1, 1, 1])
    data = np.asarray(aligned.array, dtype=np.float64)
    truth = field_at(g)
    inside = data > data.min()
    assert np.median(np.abs(data - truth)[inside]) < 1.0
    result = project(volume, [0.0], axis="L")
    assert np.all(np.isfinite(result.images))
    assert result.images.max() == pytest.approx(data.max(), abs=1.0)


def test_corrected_nifti_opens_in_simpleitk(tilted, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    folder, _ = tilted
    row = convert_one(folder, tmp_path / "out")
    volume = open_volume(row["path"])
    path = write_nifti(volume, tmp_path / "corrected.nii.gz")
    image = sitk.ReadImage(str(path))  # refuses non-orthonormal direction cosines
    affine = volume.geometry.affine  # the NIfTI's first index is the array's axis 0
    for index in [(0, 0, 0), (23, 0, 0), (0, 54, 0), (0, 0, 39), (23, 54, 39), (7, 20, 13)]:
        expected = affine[:3, :3] @ np.array(index, dtype=np.float64) + affine[:3, 3]
        np.testing.assert_allclose(image.TransformIndexToPhysicalPoint(index), expected, atol=GEOMETRY_TOL_MM)


@pytest.mark.parametrize("tag", [None, -15.0])
def test_scan_reports_signed_tilt(tmp_path, tag):
    folder = tmp_path / "dicom"
    write_tilted_series(folder, -15.0, n_slices=6, gantry_tag=tag)
    row = scan([str(folder)]).series[0]
    assert float(row["gantry_tilt_deg"]) == pytest.approx(-15.0, abs=0.01)
    assert row["gantry_tilt_source"] == ("geometry" if tag is None else "GantryDetectorTilt (0018,1120)")


def test_scan_geometry_sign_follows_the_documented_convention(tmp_path):
    """Column cosine (0, cos t, -sin t), table toward +z: the normal turns toward the stack direction
    counter-clockwise about the row cosine (+x) for t > 0."""
    folder = tmp_path / "dicom"
    write_tilted_series(folder, 12.0, n_slices=5)
    row = scan([str(folder)]).series[0]
    assert float(row["gantry_tilt_deg"]) == pytest.approx(12.0, abs=0.01)
    assert row["gantry_tilt_source"] == "geometry"


# ----------------------------------------------------------------------------------------------------------
# uneven spacing
# ----------------------------------------------------------------------------------------------------------
def test_uneven_resampled_matches_dcm2niix_eq_output(uneven, tmp_path):
    folder, _ = uneven
    reference = dcm2niix_output(str(folder), str(tmp_path / "dcm2niix"), "_Eq_1")
    row = convert_one(folder, tmp_path / "out")
    assert row["status"] == Status.DONE and row["uniform"] is True and row["regrid"].startswith("even grid 26")
    volume = open_volume(row["path"])
    ours, our_affine = canonical(as_nifti(volume))
    theirs, their_affine = canonical(reference)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(our_affine, their_affine, atol=GEOMETRY_TOL_MM)
    assert np.max(np.abs(ours - theirs)) <= 0.5 + 1e-3  # same linear blend; dcm2niix rounds to integers
    assert volume.attrs["regrid"]["source_slice_positions"] == pytest.approx(UNEVEN_Z, abs=GEOMETRY_TOL_MM)


def test_uneven_resampled_values_follow_the_field(uneven, tmp_path):
    folder, paths = uneven
    volume = open_volume(convert_one(folder, tmp_path / "out")["path"])
    g = volume.geometry
    np.testing.assert_allclose(g.slice_positions, np.linspace(0.0, 32.5, 26), atol=GEOMETRY_TOL_MM)
    data = np.asarray(volume.array[...], dtype=np.float64)
    _, _, hu = source_slices(paths)
    # on an output plane that is a source plane (0, 32.5 mm) the data are the source slice
    np.testing.assert_allclose(data[0], hu[0], atol=1e-4)
    np.testing.assert_allclose(data[-1], hu[-1], atol=1e-4)
    # elsewhere: the linear blend of the two source planes around it
    for k, z in enumerate(g.slice_positions):
        upper = min(int(np.searchsorted(UNEVEN_Z, z, side="right")), len(UNEVEN_Z) - 1)
        lower = upper - 1
        w = (z - UNEVEN_Z[lower]) / (UNEVEN_Z[upper] - UNEVEN_Z[lower])
        np.testing.assert_allclose(data[k], (1 - w) * hu[lower] + w * hu[upper], atol=1e-3)


def test_uneven_keep_claims_no_uniform_step(uneven, tmp_path):
    folder, paths = uneven
    row = convert_one(folder, tmp_path / "out", uneven="keep")
    assert row["status"] == Status.DONE and row["uniform"] is False
    volume = open_volume(row["path"])
    with open(os.path.join(tmp_path / "out", "meta", f"{row['series_key']}.series.json")) as fh:
        attrs = json.load(fh)
    assert attrs["uniform"] is False and attrs["spacing"][0] is None
    assert attrs["affine"] is None and attrs["affine_ras"] is None
    assert attrs["slice_positions"] == pytest.approx(UNEVEN_Z, abs=GEOMETRY_TOL_MM)
    assert volume.geometry.uniform is False
    _, _, hu = source_slices(paths)
    np.testing.assert_array_equal(np.asarray(volume.array[...]), hu.astype(np.int16))
    rows = resample_volumes(str(tmp_path / "out"), str(tmp_path / "res"), spacing=1.0, progress=False)
    assert rows[0]["status"] == Status.FAILED and "unevenly spaced" in rows[0]["reason"]


def test_uneven_fail_names_the_steps(uneven, tmp_path):
    folder, _ = uneven
    row = convert_one(folder, tmp_path / "out", uneven="fail")
    assert row["status"] == Status.FAILED
    for text in ("uneven slice spacing", "2.5 mm x 9", "1.25 mm x 2", "7.5 mm x 1"):
        assert text in row["reason"]


def test_plain_series_is_streamed_unchanged(tmp_path):
    folder = tmp_path / "dicom"
    paths = write_uneven_series(folder, [0.0, 2.5, 5.0, 7.5, 10.0])  # even: the plain path
    row = convert_one(folder, tmp_path / "out")
    assert row["status"] == Status.DONE and row["regrid"] == "" and row["uniform"] is True
    assert row["dtype"] == "int16"
    _, _, hu = source_slices(paths)
    np.testing.assert_array_equal(np.asarray(open_volume(row["path"]).array[...]), hu.astype(np.int16))


@pytest.mark.parametrize(("positions", "missing", "irregular"), [
    ([0.0, 2.5, 5.0, 10.0, 12.5, 15.0], 1, 0),  # one slice missing: a 2 x step
    ([0.0, 2.5, 5.0, 12.5, 15.0, 17.5], 2, 0),  # two missing: a 3 x step
    (UNEVEN_Z, 2, 2),  # 20 -> 27.5 mm is 3 x 2.5 (two missing); the two 1.25 mm steps are irregular
    ([0.0, 4.0, 8.0, 9.08, 13.08, 20.08, 24.08], 0, 2),  # steps 4.0 / 1.08 / 7.0: none missing
])
def test_missing_and_irregular_steps(tmp_path, positions, missing, irregular):
    folder = tmp_path / "dicom"
    write_uneven_series(folder, positions, rows=8, columns=8)
    row = scan([str(folder)]).series[0]
    assert int(row["missing_slices"]) == missing
    assert int(row["irregular_steps"]) == irregular


def test_report_flags_uneven_and_tilted_series(tmp_path):
    write_uneven_series(tmp_path / "uneven", UNEVEN_Z, rows=8, columns=8)
    write_tilted_series(tmp_path / "tilted", -15.0, n_slices=5, rows=8, columns=8)
    rows = scan([str(tmp_path)]).series
    assert len(rows) == 2
    for row in rows:
        assert is_flagged(row)
        verdicts = {column: verdict for column, _, verdict, _ in series_checks(row)}
        if int(row["irregular_steps"]):
            assert verdicts["irregular_steps"] == "flag" and verdicts["missing_slices"] == "flag"
        else:
            assert float(row["gantry_tilt_deg"]) < 0 and verdicts["gantry_tilt_deg"] == "flag"
    # the convert summary alone flags them too (regridded, or kept uneven / sheared)
    assert regrid_flagged({"regrid": "tilt -15 deg corrected", "uniform": "True", "sheared": "False"})
    assert regrid_flagged({"regrid": "", "uniform": "False", "sheared": "False"})
    assert regrid_flagged({"regrid": "", "uniform": "True", "sheared": "True"})
    assert not regrid_flagged({"regrid": "", "uniform": "True", "sheared": "False"})


def test_tilted_and_uneven_are_regridded_in_one_pass(tmp_path):
    ipps, iop = tilted_positions(10.0, 12, 2.0)
    ipps = ipps[[0, 1, 2, 3, 5, 6, 7, 8, 9, 11]]  # steps of 2 and 4 mm along the table
    ipps[4:] += [0.0, 0.0, 0.7]  # and one irregular step
    write_slices(tmp_path / "dicom", ipps, iop)
    row = convert_one(tmp_path / "dicom", tmp_path / "out")
    assert row["status"] == Status.DONE, row["reason"]
    assert row["regrid"].startswith("even grid") and "tilt 10 deg corrected" in row["regrid"]
    volume = open_volume(row["path"])
    g = volume.geometry
    assert g.uniform and not g.sheared
    np.testing.assert_allclose(g.direction.T @ g.direction, np.eye(3), atol=1e-9)
    normal = g.direction[:, 0]
    assert g.slice_positions[0] == pytest.approx(ipps[0] @ normal, abs=GEOMETRY_TOL_MM)
    assert g.slice_positions[-1] == pytest.approx(ipps[-1] @ normal, abs=GEOMETRY_TOL_MM)
    data = np.asarray(volume.array[...], dtype=np.float64)
    covered = data > data.min()
    assert np.median(np.abs(data - field_at(g))[covered]) < 2.0


def test_steps_that_misplace_no_slice_stream_as_plain(tmp_path):
    """Steps of 3.27 mm with one of 3.19 mm (as in a real GE PET): uneven for the scan, but the mean-step grid is
    at most 0.06 mm off any slice (< 5 % of the step): the series streams unchanged, int16, uniform."""
    positions = np.concatenate([[0.0], np.cumsum([3.27] * 4 + [3.19] + [3.27] * 4)])
    write_uneven_series(tmp_path / "dicom", positions, rows=8, columns=8)
    row = convert_one(tmp_path / "dicom", tmp_path / "out")
    assert row["status"] == Status.DONE and row["regrid"] == "" and row["uniform"] is True
    assert row["dtype"] == "int16"
    scanned = scan([str(tmp_path / "dicom")]).series[0]
    assert int(scanned["irregular_steps"]) == 1 and int(scanned["missing_slices"]) == 0
