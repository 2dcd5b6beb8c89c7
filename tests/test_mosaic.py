"""Siemens MOSAIC: the CSA header reader, tile unpacking on small mosaics written here with pydicom (expected
geometry worked out by hand from the tags written), and every series of dcm_qa_mosaic against dcm2niix's NIfTI."""
from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import voxelpipe
from voxelpipe.apps.report.checks import series_checks
from voxelpipe.core.errors import DicomReadError
from voxelpipe.dicom.csa import read_csa
from voxelpipe.stores.volumes import open_volume

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
MOSAIC_SERIES = ["ep2d_Asc_2", "ep2d_Int_4", "ep2d_Int_HF_5", "cmrr_Asc_6", "cmrr_Asc_HF_7", "cmrr_Int_8",
                 "cmrr_Int_HF_9", "ep2d_Asc_HF_10"]
AFFINE_ATOL_MM = 1e-3

# The small synthetic mosaic: 5 tiles of 3 rows x 4 columns in a 3 x 3 grid (9 x 12 pixels).
N_TILES, GRID, TILE_ROWS, TILE_COLUMNS = 5, 3, 3, 4
IPP = (-10.0, -20.0, 30.0)
PIXEL_SPACING = (2.0, 1.5)  # row spacing (between rows), column spacing (between columns), mm
SPACING_BETWEEN = 2.5
SLICE_THICKNESS = 1.0  # deliberately not the step: the step comes from SpacingBetweenSlices
# First tile's corner: IPP moved along the row direction (x) by 1.5 mm * (12 - 4) / 2 and along the column
# direction (y) by 2.0 mm * (9 - 3) / 2.
FIRST_TILE = (-10.0 + 6.0, -20.0 + 6.0, 30.0)


def csa2(tags: dict[str, tuple[str, list[str]]], n_items: int = 6) -> bytes:
    """A CSA2 ("SV10") header written from the documented layout; every tag padded to ``n_items`` items."""
    out = b"SV10" + bytes([4, 3, 2, 1]) + struct.pack("<II", len(tags), 77)
    for name, (vr, values) in tags.items():
        out += struct.pack("<64si4siii", name.encode(), len(values), vr.encode(), 3, max(n_items, len(values)), 77)
        for index in range(max(n_items, len(values))):
            data = values[index].encode() + b"\0" if index < len(values) else b""
            out += struct.pack("<4i", len(data), len(data), 77, len(data))
            out += data + b"\0" * (-len(data) % 4)
    return out


def tile_values(k: int, volume_index: int) -> np.ndarray:
    return (1000 * volume_index + 100 * k + np.arange(TILE_ROWS * TILE_COLUMNS)).reshape(TILE_ROWS, TILE_COLUMNS)


def write_mosaic(path: Path, *, volume_index: int, series_uid: str, normal: tuple[float, float, float] | None,
                 csa: bool = True, private_count: bool = False, image_type: str = "ORIGINAL\\PRIMARY\\M\\ND\\MOSAIC"):
    mosaic = np.zeros((GRID * TILE_ROWS, GRID * TILE_COLUMNS), dtype=np.uint16)
    for k in range(N_TILES):
        top, left = (k // GRID) * TILE_ROWS, (k % GRID) * TILE_COLUMNS
        mosaic[top:top + TILE_ROWS, left:left + TILE_COLUMNS] = tile_values(k, volume_index)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.Modality = "MR"
    ds.Manufacturer = "SIEMENS"
    ds.SeriesNumber = 7
    ds.InstanceNumber = volume_index + 1
    ds.AcquisitionNumber = volume_index + 1
    ds.ImageType = image_type.split("\\")
    ds.ImagePositionPatient = list(IPP)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = list(PIXEL_SPACING)
    ds.SliceThickness = SLICE_THICKNESS
    ds.SpacingBetweenSlices = SPACING_BETWEEN
    ds.Rows, ds.Columns = mosaic.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if private_count:
        ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0A, "US", N_TILES)
    if csa:
        tags = {"NumberOfImagesInMosaic": ("US", [str(N_TILES)]), "EchoLinePosition": ("IS", ["32"])}
        if normal is not None:
            tags["SliceNormalVector"] = ("FD", [f"{v:.8f}" for v in normal])
        ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True).add_new(0x10, "OB", csa2(tags))
    ds.PixelData = mosaic.tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def mosaic_folder(root: Path, name: str, **kwargs) -> Path:
    folder = root / name
    folder.mkdir()
    uid = generate_uid()
    for t in range(2):
        write_mosaic(folder / f"vol{t}.dcm", volume_index=t, series_uid=uid, **kwargs)
    return folder


def convert_one(folder: Path, out: Path, **kwargs) -> dict:
    rows = voxelpipe.convert([str(folder)], str(out), fmt="npz", workers=1, progress=False, **kwargs)
    assert len(rows) == 1
    assert rows[0]["status"] == "done", rows[0]["reason"]
    return rows[0]


# ----------------------------------------------------------------------------------------------------------
# the CSA reader
# ----------------------------------------------------------------------------------------------------------
def test_csa_reader_reads_names_vr_vm_and_non_empty_items():
    data = csa2({"NumberOfImagesInMosaic": ("US", ["36"]), "SliceNormalVector": ("FD", ["0.0", "0.1236", "0.9923"]),
                 "ImageHistory": ("LO", ["ChannelMixing:ND=true", "CC:SoS"])})
    tags = read_csa(data)
    assert list(tags) == ["NumberOfImagesInMosaic", "SliceNormalVector", "ImageHistory"]
    assert tags["NumberOfImagesInMosaic"].items == ("36",)
    assert tags["NumberOfImagesInMosaic"].vr == "US"
    assert tags["SliceNormalVector"].vm == 3
    assert tags["SliceNormalVector"].floats() == (0.0, 0.1236, 0.9923)
    assert tags["ImageHistory"].items == ("ChannelMixing:ND=true", "CC:SoS")


def test_csa_reader_refuses_truncated_or_implausible_bytes():
    data = csa2({"NumberOfImagesInMosaic": ("US", ["36"])})
    with pytest.raises(DicomReadError, match="truncated|declares"):
        read_csa(data[:100], "x.dcm: CSA")
    with pytest.raises(DicomReadError, match="too short"):
        read_csa(b"SV10", "x.dcm: CSA")
    with pytest.raises(DicomReadError, match="tags"):
        read_csa(b"SV10\4\3\2\1" + struct.pack("<II", 0, 77), "x.dcm: CSA")


def test_csa_reader_agrees_with_nibabel_on_real_headers(shared_data):
    csareader = pytest.importorskip("nibabel.nicom.csareader")
    path = sorted((shared_data / "siemens-mosaic" / "In" / "cmrr_Asc_HF_7").glob("*.dcm"))[0]
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    for tag in (0x00291010, 0x00291020):
        ours = read_csa(ds[tag].value)
        theirs = csareader.read(ds[tag].value)["tags"]
        assert list(ours) == list(theirs)
        for name, info in theirs.items():
            expected = [v for v in info["items"] if v not in (b"", "")]
            if expected and isinstance(expected[0], float | int):
                assert ours[name].floats() == pytest.approx([float(v) for v in expected]), name
            else:
                assert list(ours[name].items) == [str(v).strip() for v in expected], name
            assert (ours[name].vr, ours[name].vm) == (info["vr"], info["vm"])


# ----------------------------------------------------------------------------------------------------------
# tile unpacking on synthetic mosaics
# ----------------------------------------------------------------------------------------------------------
def test_foot_to_head_mosaic_unpacks_into_4d_volume(tmp_path):
    folder = mosaic_folder(tmp_path, "fh", normal=(0.0, 0.0, 1.0))
    row = convert_one(folder, tmp_path / "out")
    assert row["shape"] == f"2x{N_TILES}x{TILE_ROWS}x{TILE_COLUMNS}"
    assert row["mosaic"] == N_TILES
    volume = open_volume(row["path"])
    array = np.asarray(volume.array)
    for t in range(2):
        for k in range(N_TILES):
            np.testing.assert_array_equal(array[t, k], tile_values(k, t))
    geometry = volume.geometry
    np.testing.assert_allclose(geometry.origin, FIRST_TILE, atol=1e-6)
    np.testing.assert_allclose(geometry.spacing, (SPACING_BETWEEN, *PIXEL_SPACING), atol=1e-6)
    np.testing.assert_allclose(geometry.direction, [[0, 0, 1], [0, 1, 0], [1, 0, 0]], atol=1e-9)
    assert volume.attrs["frame_tag"] == "AcquisitionNumber"
    assert volume.attrs["mosaic"]["storage_order"] == "F>>H"
    assert volume.attrs["mosaic"]["grid"] == GRID


def test_head_to_foot_mosaic_is_reversed_into_ascending_slices(tmp_path):
    folder = mosaic_folder(tmp_path, "hf", normal=(0.0, 0.0, -1.0))
    volume = open_volume(convert_one(folder, tmp_path / "out")["path"])
    array = np.asarray(volume.array)
    for k in range(N_TILES):  # tile 0 is the highest slice: it lands last
        np.testing.assert_array_equal(array[1, N_TILES - 1 - k], tile_values(k, 1))
    last_tile_z = IPP[2] - SPACING_BETWEEN * (N_TILES - 1)
    np.testing.assert_allclose(volume.geometry.origin, (FIRST_TILE[0], FIRST_TILE[1], last_tile_z), atol=1e-6)
    np.testing.assert_allclose(volume.geometry.spacing[0], SPACING_BETWEEN, atol=1e-6)
    assert volume.attrs["mosaic"]["storage_order"] == "H>>F"


def test_private_count_without_csa_header(tmp_path):
    folder = mosaic_folder(tmp_path, "private", normal=None, csa=False, private_count=True)
    row = convert_one(folder, tmp_path / "out")
    volume = open_volume(row["path"])
    assert volume.attrs["mosaic"]["count_source"] == "NumberOfImagesInMosaic (0019,100A)"
    np.testing.assert_array_equal(np.asarray(volume.array)[0, 2], tile_values(2, 0))
    np.testing.assert_allclose(volume.geometry.origin, FIRST_TILE, atol=1e-6)


def test_mosaic_without_a_tile_count_fails_naming_the_tags(tmp_path):
    folder = mosaic_folder(tmp_path, "nocount", normal=None, csa=False)
    rows = voxelpipe.convert([str(folder)], str(tmp_path / "out"), fmt="npz", workers=1, progress=False)
    assert rows == []  # no volume: both files are listed as unusable with the reason
    with open(tmp_path / "out" / "manifest" / "unreadable_files.csv", newline="") as fh:
        unusable = list(csv.DictReader(fh))
    assert len(unusable) == 2
    assert all("CSA NumberOfImagesInMosaic (0029,1010)" in r["reason"] and "(0019,100A)" in r["reason"]
               for r in unusable)


def test_scan_and_summary_flag_the_mosaic(tmp_path):
    folder = mosaic_folder(tmp_path, "flag", normal=(0.0, 0.0, 1.0))
    out = tmp_path / "out"
    convert_one(folder, out)
    with open(out / "manifest" / "series_all.csv", newline="") as fh:
        (series,) = list(csv.DictReader(fh))
    assert series["mosaic"] == str(N_TILES)
    assert (series["rows"], series["columns"]) == (str(TILE_ROWS), str(TILE_COLUMNS))
    assert series["n_positions"] == str(N_TILES) and series["frames_per_position"] == "2"
    assert series["multiframe_files"] == "0"
    summary = next(out.glob("summary_*.csv"))
    with open(summary, newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["mosaic"] == str(N_TILES)
    checks = {column: (value, verdict) for column, value, verdict, _ in series_checks(series)}
    assert checks["mosaic"] == (str(N_TILES), "note")
    assert series_checks({"mosaic": ""})[-1][2] == "ok"


def test_plain_image_type_is_not_unpacked(tmp_path):
    folder = mosaic_folder(tmp_path, "plain", normal=(0.0, 0.0, 1.0), image_type="ORIGINAL\\PRIMARY\\M\\ND")
    row = convert_one(folder, tmp_path / "out")
    assert row["shape"] == f"2x1x{GRID * TILE_ROWS}x{GRID * TILE_COLUMNS}" and row["mosaic"] == ""


def test_2d_mode_stores_one_frame_per_tile(tmp_path):
    folder = mosaic_folder(tmp_path, "twod", normal=(0.0, 0.0, 1.0))
    rows = voxelpipe.convert([str(folder)], str(tmp_path / "out"), mode="2d", workers=1, progress=False)
    assert rows[0]["status"] == "done", rows[0]["reason"]
    with open(tmp_path / "out" / "meta" / f"{rows[0]['series_key']}.instances.csv", newline="") as fh:
        instances = list(csv.DictReader(fh))
    assert {r["shape"] for r in instances} == {f"{N_TILES}x{TILE_ROWS}x{TILE_COLUMNS}"}


# ----------------------------------------------------------------------------------------------------------
# dcm_qa_mosaic against dcm2niix
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MOSAIC_SERIES)
def test_real_mosaic_matches_dcm2niix(shared_data, tmp_path, name):
    nib = pytest.importorskip("nibabel")
    root = shared_data / "siemens-mosaic"
    folder = root / "In" / name
    if not folder.is_dir():
        pytest.skip(f"{folder} absent")
    description, number = name.rsplit("_", 1)
    reference = nib.as_closest_canonical(nib.load(root / "Ref" / f"{number}_{description}.nii"))
    row = convert_one(folder, tmp_path / "out")
    assert row["mosaic"] != ""
    volume = open_volume(row["path"])
    array = np.asarray(volume.array)
    if array.ndim == 3:
        array = array[None]
    data = np.transpose(array, (3, 2, 1, 0))  # (frame, slice, row, column) -> (i=column, j=row, k=slice, t)
    affine = volume.geometry.affine_ras[:, [2, 1, 0, 3]]  # index (slice, row, column) -> (column, row, slice)
    ours = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    expected = np.asarray(reference.dataobj)
    if expected.ndim == 3:
        expected = expected[..., None]
    assert ours.shape == expected.shape
    np.testing.assert_array_equal(np.asarray(ours.dataobj), expected)
    np.testing.assert_allclose(ours.affine, reference.affine, atol=AFFINE_ATOL_MM)
    series_json = json.loads(next((tmp_path / "out" / "meta").glob("*.series.json")).read_text())
    assert series_json["mosaic"]["n_images"] == array.shape[1]
