"""``convert --format nifti``: ``data/<key>.nii.gz`` (or ``.nii``) plus a BIDS JSON sidecar, and masks beside it.

Independent references: pydicom's decode (``apply_modality_lut``) for the voxels; the DICOM tags for the sidecar
and for the physical position of every pixel (ImagePositionPatient + column × PixelSpacing[1] × row cosines +
row × PixelSpacing[0] × column cosines); SimpleITK and nibabel reading the files; the dcm2niix binary converting
the same series (skipped with a reason when absent); the RTSTRUCT truth of test_rtstruct for the masks.
"""
from __future__ import annotations

import dataclasses
import glob
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

import voxelpipe
from test_rtstruct import build_cases
from voxelpipe.cli.app import main
from voxelpipe.core.errors import InputError
from voxelpipe.core.geometry import Geometry
from voxelpipe.dicom.bids import read_bids_sidecar
from voxelpipe.stores.writer import writer_for
from voxelpipe.testing.synthetic import SeriesSpec, write_series

from helpers import dcm2niix_executable, resave

nib = pytest.importorskip("nibabel")
sitk = pytest.importorskip("SimpleITK")

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
MR_TAGS = {"EchoTime": "30", "RepetitionTime": "3200.5", "InversionTime": "900", "FlipAngle": "90",
           "MagneticFieldStrength": "3", "ManufacturerModelName": "Prisma_fit", "ProtocolName": "ep2d prot",
           "BodyPartExamined": "HEAD", "PatientPosition": "HFS", "SpacingBetweenSlices": "3",
           "AcquisitionNumber": 1, "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"], "SeriesNumber": 7,
           "SequenceVariant": ["SK", "SP"]}
# image orientations (row cosines, column cosines) and the step between slice positions (None: the normal)
ORIENTATIONS = {
    "axial": ([1, 0, 0, 0, 1, 0], None),
    "axial_descending": ([1, 0, 0, 0, 1, 0], [0, 0, -1]),
    "flipped_rows": ([1, 0, 0, 0, -1, 0], None),
    "sagittal": ([0, 1, 0, 0, 0, -1], None),
    "coronal": ([1, 0, 0, 0, 0, -1], None),
    "oblique": ([0.9659258, 0.258819, 0, -0.0225576, 0.0841860, -0.9961947], None),  # 15° about z, 5° tilt
}


def write_oriented(folder: Path, name: str, spec: SeriesSpec, tags: dict | None = None) -> list[str]:
    """A series written with ORIENTATIONS[name]; returns the paths."""
    iop, step = ORIENTATIONS[name]
    paths = write_series(folder, spec, names="shuffled", tags=tags)
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    direction = np.cross(row, col) if step is None else np.asarray(step, float)
    for path in paths:
        def edit(ds):
            k = int(ds.InstanceNumber) - 1
            ds.ImageOrientationPatient = [f"{v:.7f}" for v in iop]
            ds.ImagePositionPatient = [f"{v:.4f}" for v in np.array([10.0, -20.0, 30.0]) + k * spec.spacing[0]
                                       * direction]
        resave(path, edit)
    return paths


def dicom_reference(paths: list[str]) -> tuple[np.ndarray, list[pydicom.Dataset]]:
    """pydicom's modality-LUT values (slice, row, column), slices sorted along the normal, and the datasets."""
    datasets = [pydicom.dcmread(p) for p in paths]
    iop = np.asarray([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    datasets.sort(key=lambda ds: float(np.asarray([float(v) for v in ds.ImagePositionPatient]) @ normal))
    return np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in datasets]), datasets


def pixel_lps(ds: pydicom.Dataset, row: int, column: int) -> np.ndarray:
    """The LPS centre of pixel (row, column) of one DICOM image, from its tags alone."""
    ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    return ipp + column * column_spacing * iop[:3] + row * row_spacing * iop[3:]


def convert_nifti(folder: Path, out: Path, **kwargs) -> dict:
    rows = voxelpipe.convert([str(folder)], out=str(out), fmt="nifti", workers=1, progress=False, **kwargs)
    assert len(rows) == 1, rows
    return rows[0]


@pytest.fixture(scope="module")
def mr(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nifti_mr")
    spec = SeriesSpec(n_slices=6, rows=20, columns=24, spacing=(3.0, 0.9, 0.8), modality="MR", intercept=-5.0,
                      slope=2.0, seed=3)
    paths = write_oriented(folder, "oblique", spec, MR_TAGS)
    return folder, paths


# ----------------------------------------------------------------------------------------------------------
# files, voxels, geometry
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gzip", [True, False])
def test_nifti_files_voxels_and_geometry(mr, tmp_path, gzip):
    folder, paths = mr
    row = convert_nifti(folder, tmp_path / "out", nifti_gzip=gzip, verify_slices=3)
    assert row["status"] == "done" and row["verification"] == "ok 3/3", row
    suffix = ".nii.gz" if gzip else ".nii"
    path = row["path"]
    key = os.path.basename(path)[: -len(suffix)]
    assert path == str(tmp_path / "out" / "data" / f"{key}{suffix}")
    assert sorted(os.listdir(tmp_path / "out" / "data")) == sorted([f"{key}{suffix}", f"{key}.json"])
    with open(path, "rb") as fh:
        assert (fh.read(2) == b"\x1f\x8b") == gzip
    reference, datasets = dicom_reference(paths)
    n_slices, rows, columns = reference.shape

    image = nib.load(path)
    header = image.header
    assert image.shape == (columns, rows, n_slices)
    assert int(header["sform_code"]) == 1 and int(header["qform_code"]) == 1
    assert header.get_xyzt_units() == ("mm", "sec")
    assert header.get_data_dtype() == np.int16
    data = np.asarray(image.dataobj)
    # NIfTI (i, j, k) = DICOM (column, rows - 1 - row, slice), as dcm2niix stores it
    np.testing.assert_array_equal(data, np.flip(reference, axis=1).transpose(2, 1, 0))
    # every corner voxel lands where the DICOM tags put that pixel
    for k, j, i in itertools.product((0, n_slices - 1), (0, rows - 1), (0, columns - 1)):
        lps = (LPS_TO_RAS @ image.affine @ [i, j, k, 1.0])[:3]
        np.testing.assert_allclose(lps, pixel_lps(datasets[k], rows - 1 - j, i), atol=1e-3)
        np.testing.assert_allclose((LPS_TO_RAS @ image.get_qform() @ [i, j, k, 1.0])[:3],
                                   pixel_lps(datasets[k], rows - 1 - j, i), atol=1e-3)

    # SimpleITK: the same origin, spacing and direction as our volume's attrs (LPS, axes i, j, k)
    attrs = json.loads((tmp_path / "out" / "meta" / f"{key}.series.json").read_text())
    affine = np.asarray(attrs["affine"])
    spacing = np.asarray(attrs["spacing"])
    direction = np.asarray(attrs["direction"])
    itk = sitk.ReadImage(path)
    assert itk.GetSize() == (columns, rows, n_slices)
    np.testing.assert_allclose(itk.GetOrigin(), (affine @ [0, rows - 1, 0, 1.0])[:3], atol=1e-3)
    np.testing.assert_allclose(itk.GetSpacing(), spacing[::-1], atol=1e-4)
    expected = np.column_stack([direction[:, 2], -direction[:, 1], direction[:, 0]])
    np.testing.assert_allclose(np.asarray(itk.GetDirection()).reshape(3, 3), expected, atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(itk), np.flip(reference, axis=1))

    # open_volume puts it back in (slice, row, column) order with the same geometry
    volume = voxelpipe.open_volume(path)
    np.testing.assert_array_equal(volume.numpy(), reference)
    np.testing.assert_allclose(volume.geometry.origin, attrs["origin"], atol=1e-3)
    np.testing.assert_allclose(volume.geometry.spacing, spacing, atol=1e-4)
    np.testing.assert_allclose(volume.geometry.direction, direction, atol=1e-5)
    assert volume.attrs["series_instance_uid"] == datasets[0].SeriesInstanceUID


def test_sidecar_fields_and_units(mr, tmp_path):
    folder, paths = mr
    row = convert_nifti(folder, tmp_path / "out")
    sidecar = json.loads(Path(row["path"][: -len(".nii.gz")] + ".json").read_text())
    ds = pydicom.dcmread(paths[0])
    assert sidecar["EchoTime"] == pytest.approx(float(ds.EchoTime) / 1000)  # ms -> s
    assert sidecar["RepetitionTime"] == pytest.approx(float(ds.RepetitionTime) / 1000)
    assert sidecar["InversionTime"] == pytest.approx(float(ds.InversionTime) / 1000)
    assert sidecar["FlipAngle"] == pytest.approx(float(ds.FlipAngle))
    assert sidecar["SliceThickness"] == pytest.approx(float(ds.SliceThickness))
    assert sidecar["SpacingBetweenSlices"] == pytest.approx(float(ds.SpacingBetweenSlices))
    assert sidecar["MagneticFieldStrength"] == pytest.approx(float(ds.MagneticFieldStrength))
    assert sidecar["ImageType"] == list(ds.ImageType)
    assert sidecar["SequenceVariant"] == "SK\\SP"  # DICOM's separator, as dcm2niix keeps it
    assert sidecar["SeriesNumber"] == int(ds.SeriesNumber) and sidecar["AcquisitionNumber"] == 1
    for key, keyword in [("Modality", "Modality"), ("Manufacturer", "Manufacturer"),
                         ("ManufacturersModelName", "ManufacturerModelName"),
                         ("SeriesDescription", "SeriesDescription"), ("ProtocolName", "ProtocolName"),
                         ("BodyPart", "BodyPartExamined"), ("PatientPosition", "PatientPosition")]:
        assert sidecar[key] == str(ds.data_element(keyword).value), key
    assert sidecar["ConversionSoftware"] == "voxelpipe"
    assert sidecar["ConversionSoftwareVersion"] == voxelpipe.__version__
    assert "PatientName" not in sidecar and "PatientID" not in sidecar
    # dcm2niix puts the repetition time (s) in pixdim[4]
    assert float(nib.load(row["path"]).header["pixdim"][4]) == pytest.approx(3.2005)


def test_rerun_skips_complete_output_and_partial_files_are_not_complete(mr, tmp_path):
    folder, _ = mr
    out = tmp_path / "out"
    first = convert_nifti(folder, out)
    assert convert_nifti(folder, out)["status"] == "skipped"
    os.remove(first["path"])
    leftover = first["path"] + ".partial.nii.gz"  # what a killed run leaves: never taken for the output
    Path(leftover).write_bytes(b"half a file")
    again = convert_nifti(folder, out)
    assert again["status"] == "done" and os.path.exists(again["path"])


def test_4d_frames_become_the_fourth_nifti_axis(tmp_path):
    folder = tmp_path / "cine"
    first = SeriesSpec(n_slices=4, rows=10, columns=12, spacing=(3.0, 0.5, 0.6), modality="MR", intercept=0.0,
                       seed=61)
    second = dataclasses.replace(first, seed=62)
    paths0 = write_series(folder, first, names="shuffled")
    paths1 = write_series(folder, second, names="shuffled")
    for path in paths0:
        resave(path, lambda ds: setattr(ds, "TriggerTime", "0"))
    for path in paths1:
        resave(path, lambda ds: setattr(ds, "TriggerTime", "40"))
    row = convert_nifti(folder, tmp_path / "out")
    assert row["status"] == "done", row
    data = np.asarray(nib.load(row["path"]).dataobj)
    assert data.shape == (12, 10, 4, 2)
    for t, paths in enumerate((paths0, paths1)):
        reference, _ = dicom_reference(paths)
        np.testing.assert_array_equal(data[..., t], np.flip(reference, axis=1).transpose(2, 1, 0))
    np.testing.assert_array_equal(voxelpipe.open_volume(row["path"]).numpy()[1], dicom_reference(paths1)[0])


def test_without_nibabel_is_an_input_error_naming_the_extra(mr, tmp_path, monkeypatch):
    folder, _ = mr
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(InputError, match=r"voxelpipe\[nifti\]"):
        voxelpipe.convert([str(folder)], out=str(tmp_path / "out"), fmt="nifti", workers=1, progress=False)


def test_2d_mode_is_refused(mr, tmp_path):
    folder, _ = mr
    with pytest.raises(InputError, match="--mode 3d"):
        voxelpipe.convert([str(folder)], out=str(tmp_path / "out"), fmt="nifti", mode="2d", workers=1,
                          progress=False)


# ----------------------------------------------------------------------------------------------------------
# against dcm2niix
# ----------------------------------------------------------------------------------------------------------
def run_dcm2niix(folder: Path, out: Path) -> Path:
    exe = dcm2niix_executable()
    if exe is None:
        pytest.skip("dcm2niix executable not found (pip install dcm2niix)")
    out.mkdir(parents=True)
    result = subprocess.run([exe, "-z", "y", "-o", str(out), "-f", "ref", str(folder)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    found = sorted(out.glob("ref*.nii.gz"))
    assert len(found) == 1, result.stdout[-2000:]
    return found[0]


def assert_same_as_dcm2niix(ours_path: str, theirs_path: Path) -> None:
    ours, theirs = nib.load(ours_path), nib.load(str(theirs_path))
    # the header layout itself: same voxel order, affine, codes
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-3)
    assert int(ours.header["sform_code"]) == int(theirs.header["sform_code"])
    assert int(ours.header["qform_code"]) == int(theirs.header["qform_code"])
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))
    # and after both are put in the closest canonical (RAS) order
    ours_c, theirs_c = nib.as_closest_canonical(ours), nib.as_closest_canonical(theirs)
    np.testing.assert_allclose(ours_c.affine, theirs_c.affine, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(ours_c.dataobj), np.asarray(theirs_c.dataobj))


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_header_layout_equals_dcm2niix(tmp_path, orientation):
    spec = SeriesSpec(n_slices=5, rows=12, columns=14, spacing=(2.0, 0.9, 0.7), modality="MR", intercept=0.0,
                      seed=9)
    folder = tmp_path / "dicom"
    write_oriented(folder, orientation, spec, MR_TAGS)
    theirs = run_dcm2niix(folder, tmp_path / "dcm2niix")
    row = convert_nifti(folder, tmp_path / "out")
    assert_same_as_dcm2niix(row["path"], theirs)
    ours_json = json.loads(Path(row["path"][: -len(".nii.gz")] + ".json").read_text())
    theirs_json = json.loads(theirs.with_name(theirs.name[: -len(".nii.gz")] + ".json").read_text())
    for key in ("Modality", "ManufacturersModelName", "SeriesDescription", "ProtocolName", "SeriesNumber",
                "AcquisitionNumber", "EchoTime", "RepetitionTime", "InversionTime", "FlipAngle", "SliceThickness",
                "SpacingBetweenSlices", "MagneticFieldStrength", "BodyPart", "PatientPosition",
                "SequenceVariant", "ImageOrientationPatientDICOM"):
        ours_value, theirs_value = ours_json[key], theirs_json[key]
        if isinstance(ours_value, str):
            assert ours_value == theirs_value, key
        else:
            assert ours_value == pytest.approx(theirs_value, abs=1e-6), key
    # dcm2niix may append a magnitude/phase word it infers; the DICOM values come first
    assert theirs_json["ImageType"][: len(ours_json["ImageType"])] == ours_json["ImageType"]


def test_real_ct_equals_dcm2niix(shared_data, tmp_path):
    source = shared_data / "dcmqi-seg" / "segmentations" / "ct-3slice"
    folder = tmp_path / "ct"
    folder.mkdir()
    for path in sorted(source.glob("0*.dcm")):  # the three CT slices, without the SEG objects beside them
        shutil.copy(path, folder / path.name)
    theirs = run_dcm2niix(folder, tmp_path / "dcm2niix")
    row = convert_nifti(folder, tmp_path / "out", verify_slices=3)
    assert row["verification"] == "ok 3/3"
    assert_same_as_dcm2niix(row["path"], theirs)
    reference, _ = dicom_reference(sorted(str(p) for p in folder.glob("*.dcm")))
    np.testing.assert_array_equal(voxelpipe.open_volume(row["path"]).numpy(), reference)


# ----------------------------------------------------------------------------------------------------------
# masks beside a NIfTI volume
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gzip", [True, False])
def test_masks_are_written_as_nifti_with_the_volume_geometry(tmp_path, gzip):
    case = build_cases(tmp_path / "cases")["even"]  # uniform steps: a NIfTI holds one step
    row = convert_nifti(case.folder, tmp_path / "out", nifti_gzip=gzip)
    volume_path = row["path"]
    assert main(["--no-progress", "masks", "--volume", volume_path, "--rtstruct", str(case.rtstruct)]) == 0
    suffix = ".nii.gz" if gzip else ".nii"
    mask_path = volume_path[: -len(suffix)] + "_Ring" + suffix
    assert os.path.isfile(mask_path)
    image, mask = nib.load(volume_path), nib.load(mask_path)
    assert mask.shape == image.shape and mask.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(mask.affine, image.affine)
    np.testing.assert_array_equal(mask.header.get_qform(), image.header.get_qform())
    expected = case.expected["Ring"]  # (slice, row, column), from the contours' polygons
    data = np.asarray(mask.dataobj)
    np.testing.assert_array_equal(data.astype(bool), np.flip(expected, axis=1).transpose(2, 1, 0))
    itk_image, itk_mask = sitk.ReadImage(volume_path), sitk.ReadImage(mask_path)
    np.testing.assert_allclose(itk_mask.GetOrigin(), itk_image.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(itk_mask.GetSpacing(), itk_image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(itk_mask.GetDirection(), itk_image.GetDirection(), atol=1e-6)
    attrs = json.loads(Path(mask_path[: -len(suffix)] + ".json").read_text())
    assert attrs["roi_name"] == "Ring" and attrs["source_kind"] == "RTSTRUCT"
    assert sorted(glob.glob(str(tmp_path / "out" / "data" / "*partial*"))) == []


def test_writer_publishes_only_on_finish_and_abort_leaves_nothing(tmp_path):
    geometry = Geometry((2, 3, 4), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    path = str(tmp_path / "data" / "k.nii.gz")
    writer = writer_for("nifti")(path, (2, 3, 4), np.dtype(np.int16), (1, 3, 4), geometry.to_attrs(), 1)
    writer.write(0, np.ones((1, 3, 4), np.int16))
    assert not os.path.exists(path)
    writer.abort()
    assert not os.path.exists(path) and glob.glob(str(tmp_path / "**" / "*.nii*"), recursive=True) == []


def test_sidecar_fields_equal_dcm2niix_reference_json(shared_data):
    """dcm_qa_mosaic's Ref/*.json (dcm2niix's sidecars): every field we write from the first file's header has
    dcm2niix's value, apart from the documented differences (Manufacturer as stored, ImageType without the
    MAGNITUDE word dcm2niix infers) and dcm2niix's 6-digit rounding of numbers."""
    root = shared_data / "siemens-mosaic"
    for folder in sorted((root / "In").iterdir()):
        base, number = folder.name.rsplit("_", 1)
        theirs = json.loads((root / "Ref" / f"{number}_{base}.json").read_text())
        ds_path = sorted(folder.glob("*.dcm"))[0]
        ours = read_bids_sidecar(str(ds_path))
        assert {"EchoTime", "RepetitionTime", "FlipAngle", "SliceThickness", "SeriesNumber",
                "AcquisitionTime", "ProtocolName", "SeriesDescription"} <= set(ours), folder.name
        for key, value in ours.items():
            if key == "Manufacturer":
                assert value.casefold() == theirs[key].casefold()
            elif key == "ImageType":
                assert theirs[key][: len(value)] == value and set(theirs[key][len(value):]) <= {"MAGNITUDE"}
            elif isinstance(value, str):
                assert value == theirs[key], (folder.name, key)
            else:
                assert value == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), (folder.name, key)


MOSAIC_SERIES = ["ep2d_Asc_2", "ep2d_Int_4", "ep2d_Int_HF_5", "cmrr_Asc_6", "cmrr_Asc_HF_7", "cmrr_Int_8",
                 "cmrr_Int_HF_9", "ep2d_Asc_HF_10"]


@pytest.mark.parametrize("name", MOSAIC_SERIES)
def test_mosaic_nifti_equals_dcm2niix_reference(shared_data, tmp_path, name):
    """dcm_qa_mosaic: our 4-D NIfTI of each series against dcm2niix's Ref/<n>_<name>.nii: the same affine within
    10⁻³ mm and identical voxels after ``as_closest_canonical`` on both."""
    root = shared_data / "siemens-mosaic"
    base, number = name.rsplit("_", 1)
    theirs = nib.load(str(root / "Ref" / f"{number}_{base}.nii"))
    row = convert_nifti(root / "In" / name, tmp_path / "out")
    assert row["status"] == "done", row
    ours = nib.load(row["path"])
    if ours.shape[:2] != theirs.shape[:2]:
        pytest.skip(f"MOSAIC files are not unpacked by this build (shape {ours.shape}, dcm2niix {theirs.shape})")
    assert ours.shape == theirs.shape
    ours_c, theirs_c = nib.as_closest_canonical(ours), nib.as_closest_canonical(theirs)
    np.testing.assert_allclose(ours_c.affine, theirs_c.affine, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(ours_c.dataobj, dtype=np.float64),
                                  np.asarray(theirs_c.dataobj, dtype=np.float64))
    np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-3)  # the same voxel order, too
    assert float(ours.header["pixdim"][4]) == pytest.approx(float(theirs.header["pixdim"][4]))
    itk = sitk.ReadImage(row["path"])  # SimpleITK reads the same grid as nibabel
    np.testing.assert_allclose(itk.GetOrigin()[:3], (LPS_TO_RAS @ ours.affine)[:3, 3], atol=1e-3)


def test_volume_without_one_slice_step_is_refused(tmp_path):
    attrs = dict(Geometry((3, 2, 2), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3)).to_attrs(), uniform=False,
                 affine=None)
    with pytest.raises(InputError, match="--uneven resample"):
        writer_for("nifti")(str(tmp_path / "k.nii.gz"), (3, 2, 2), np.dtype(np.int16), (1, 2, 2), attrs, 1)
    assert list(tmp_path.iterdir()) == []
