"""`scan` on real DICOM data: expectations from ../shared/data/README.md and from reading the files with pydicom
in the test. Skipped when the shared data is absent (pydicom's bundled dicomdirtests always run)."""
from __future__ import annotations

import functools
import os
import struct
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest

from voxelpipe import scan

from helpers import sha_key

LOCALIZER_TYPES = {"LOCALIZER", "SCOUT", "TOPOGRAM"}
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
DICOMDIR_TESTS = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"



def real(path) -> str:
    return os.path.realpath(path)


def as_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    assert str(value) in ("True", "False"), value
    return str(value) == "True"


@functools.cache
def headers(folder: Path) -> dict[str, pydicom.Dataset]:
    """pydicom headers of every file below ``folder`` that pydicom reads (cached: treat as read-only)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # pydicom's value validation warnings on real data
                    found[real(path)] = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:
                pass
    return found


def all_values(ds: pydicom.Dataset, keyword: str) -> list[str]:
    """Every value of ``keyword`` anywhere in ``ds`` (recursing into sequences)."""
    values = []
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                values += all_values(item, keyword)
        elif elem.keyword == keyword:
            values.append(str(elem.value))
    return values


def normal_of(iop) -> np.ndarray:
    row, col = np.array(iop[:3], float), np.array(iop[3:], float)
    n = np.cross(row, col)
    return n / np.linalg.norm(n)


def series_row(result, uid: str) -> dict:
    rows = [r for r in result.series if r["series_instance_uid"] == uid]
    assert len(rows) == 1, [r["series_key"] for r in rows]
    return rows[0]


@pytest.fixture(scope="module")
def scanned(shared_data):
    cache = {}

    def run(relative: str):
        if relative not in cache:
            cache[relative] = scan(shared_data / relative, workers=1, progress=False)
        return cache[relative]

    return run


# ----------------------------------------------------------------------------------------------------------
# NSCLC-Radiomics LUNG1-001: CT + RTSTRUCT
# ----------------------------------------------------------------------------------------------------------
def test_nsclc_ct_series(shared_data, scanned):
    ct = headers(shared_data / "nsclc-lung1-001" / "image")
    uids = {str(ds.SeriesInstanceUID) for ds in ct.values()}
    assert len(uids) == 1 and len(ct) == 134  # README: 134 axial slices
    uid = uids.pop()
    z = sorted(float(ds.ImagePositionPatient[2]) for ds in ct.values())
    spacing = z[1] - z[0]
    assert spacing == pytest.approx(3.0, abs=1e-3)  # README: 3 mm

    result = scanned("nsclc-lung1-001")
    assert len(result.series) == 1
    row = series_row(result, uid)
    assert row["series_key"] == sha_key(uid)
    assert row["modality"] == "CT" == {str(ds.Modality) for ds in ct.values()}.pop()
    assert int(row["n_slices"]) == int(row["n_files"]) == int(row["n_positions"]) == 134
    assert (int(row["rows"]), int(row["columns"])) == (512, 512)
    assert float(row["spacing_median"]) == pytest.approx(spacing, abs=1e-3)
    assert float(row["first_position_mm"]) == pytest.approx(z[0], abs=1e-3)
    assert float(row["last_position_mm"]) == pytest.approx(z[-1], abs=1e-3)
    assert int(row["missing_slices"]) == 0 and int(row["duplicate_positions"]) == 0
    assert {real(f["path"]) for f in result.series_files} == set(ct)
    positions = [float(f["position_mm"]) for f in result.series_files]
    assert positions == pytest.approx(z, abs=1e-3)


def test_nsclc_rtstruct_object_references_the_ct(shared_data, scanned):
    ct = headers(shared_data / "nsclc-lung1-001" / "image")
    uid = {str(ds.SeriesInstanceUID) for ds in ct.values()}.pop()
    ct_sops = {str(ds.SOPInstanceUID) for ds in ct.values()}
    rs_path = shared_data / "nsclc-lung1-001" / "mask_rtstruct" / "1-1.dcm"
    rs = pydicom.dcmread(rs_path, stop_before_pixels=True)
    assert rs.Modality == "RTSTRUCT"
    assert uid in all_values(rs, "SeriesInstanceUID")
    referenced = set(all_values(rs, "ReferencedSOPInstanceUID"))
    assert ct_sops <= referenced  # README: the contour image references resolve to the slices in image/

    result = scanned("nsclc-lung1-001")
    assert len(result.objects) == 1
    obj = result.objects[0]
    assert real(obj["path"]) == real(rs_path)
    assert obj["modality"] == "RTSTRUCT"
    assert obj["sop_instance_uid"] == str(rs.SOPInstanceUID)
    assert sha_key(uid) in obj["referenced_series_keys"].split(";")
    assert uid in obj["referenced_series_uids"].split(";")
    assert int(obj["n_referenced_instances_found"]) == len(referenced & ct_sops) == 134
    unreadable = {real(r["path"]): r for r in result.unreadable}
    assert unreadable[real(shared_data / "nsclc-lung1-001" / "LICENSE")]["kind"] == "not_dicom"


# ----------------------------------------------------------------------------------------------------------
# STS_001 PET
# ----------------------------------------------------------------------------------------------------------
def test_sts_pet_series(shared_data, scanned):
    pet = headers(shared_data / "sts001-pet" / "image")
    uids = {str(ds.SeriesInstanceUID) for ds in pet.values()}
    assert len(uids) == 1 and len(pet) == 267
    uid = uids.pop()
    slopes = {str(ds.RescaleSlope) for ds in pet.values()}
    assert len(slopes) > 1  # pydicom reads differing RescaleSlope values
    assert {str(ds.Modality) for ds in pet.values()} == {"PT"}

    result = scanned("sts001-pet")
    assert len(result.series) == 1
    row = series_row(result, uid)
    assert row["series_key"] == sha_key(uid)
    assert row["modality"] == "PT"
    assert int(row["n_slices"]) == 267
    assert (int(row["rows"]), int(row["columns"])) == (128, 128)
    assert as_bool(row["rescale_varies"]) is True
    by_path = {real(f["path"]): float(f["slope"]) for f in result.series_files}
    assert by_path == pytest.approx({p: float(ds.RescaleSlope) for p, ds in pet.items()})
    # the MIM RTSTRUCT is drawn on this PET
    assert len(result.objects) == 1
    assert sha_key(uid) in result.objects[0]["referenced_series_keys"].split(";")


# ----------------------------------------------------------------------------------------------------------
# Sunnybrook cardiac cine MR
# ----------------------------------------------------------------------------------------------------------
def test_cardiac_cine_mr(shared_data, scanned):
    mr = headers(shared_data / "cardiac-mri" / "dicoms" / "SCD0000101")
    uids = {str(ds.SeriesInstanceUID) for ds in mr.values()}
    assert len(uids) == 1 and len(mr) == 240  # README: all in one series
    uid = uids.pop()
    first = next(iter(mr.values()))
    normal = normal_of([float(v) for v in first.ImageOrientationPatient])
    along = [float(np.array([float(v) for v in ds.ImagePositionPatient]) @ normal) for ds in mr.values()]
    positions = Counter(round(p, 2) for p in along)
    assert set(positions.values()) == {20}  # README: 20 cardiac phases at every position

    result = scanned("cardiac-mri/dicoms/SCD0000101")
    assert len(result.series) == 1
    row = series_row(result, uid)
    assert row["modality"] == "MR"
    assert int(row["n_slices"]) == 240
    assert int(row["frames_per_position"]) == 20
    assert int(row["n_positions"]) == len(positions)
    assert int(row["duplicate_positions"]) == 0
    steps = np.diff(sorted(positions))
    assert float(row["spacing_median"]) == pytest.approx(float(np.median(steps)), abs=1e-3)


# ----------------------------------------------------------------------------------------------------------
# dcmqi SEG objects
# ----------------------------------------------------------------------------------------------------------
def test_dcmqi_seg_objects_reference_ct_3slice(shared_data, scanned):
    root = shared_data / "dcmqi-seg" / "segmentations"
    ct = headers(root / "ct-3slice")
    assert len(ct) == 3
    ct_uid = {str(ds.SeriesInstanceUID) for ds in ct.values()}.pop()
    every = headers(root)
    segs = {path: ds for path, ds in every.items() if ds.get("Modality") == "SEG"}
    image_uids = {str(ds.SeriesInstanceUID) for ds in every.values() if ds.get("Modality") != "SEG"}
    for name in ("liver.dcm", "partial_overlaps.dcm"):
        ds = segs[real(root / name)]
        assert str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID) == ct_uid

    result = scanned("dcmqi-seg")
    objects = {real(o["path"]): o for o in result.objects}
    assert set(segs) <= set(objects)
    for path, ds in segs.items():
        obj = objects[path]
        assert obj["modality"] == "SEG"
        keys = obj["referenced_series_keys"].split(";")
        for ref in ds.get("ReferencedSeriesSequence", []):
            if str(ref.SeriesInstanceUID) in image_uids:
                assert sha_key(str(ref.SeriesInstanceUID)) in keys, os.path.basename(path)
    for name in ("liver.dcm", "partial_overlaps.dcm"):
        assert sha_key(ct_uid) in objects[real(root / name)]["referenced_series_keys"].split(";")
    row = series_row(result, ct_uid)
    assert int(row["n_slices"]) == 3
    assert {real(f["path"]) for f in result.series_files if f["series_key"] == row["series_key"]} == set(ct)
    # nrrd label maps and screenshots are not DICOM
    unreadable = {real(r["path"]): r for r in result.unreadable}
    for path in root.rglob("*"):
        if path.suffix in (".nrrd", ".png", ".jpg"):
            assert unreadable[real(path)]["kind"] == "not_dicom"


# ----------------------------------------------------------------------------------------------------------
# pydicom's bundled dicomdirtests (no shared data needed)
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dicomdir_tree():
    if not DICOMDIR_TESTS.is_dir():
        pytest.skip("pydicom's dicomdirtests folder not found")
    full = {}
    for path in sorted(DICOMDIR_TESTS.rglob("*")):
        if path.is_file():
            try:
                full[real(path)] = pydicom.dcmread(path)  # with pixel data: the files are tiny
            except Exception:
                pass
    return full, scan(DICOMDIR_TESTS, workers=1, progress=False)


def _is_localizer(ds) -> bool:
    return bool(LOCALIZER_TYPES & {str(v).upper() for v in (ds.get("ImageType") or [])})


def _usable_image(ds) -> bool:
    return all(k in ds for k in ("PixelData", "SeriesInstanceUID", "Rows", "Columns", "ImagePositionPatient",
                                 "ImageOrientationPatient"))


def _record_items_overrun(path: str) -> bool:
    """True when a DICOMDIR's Directory Record Sequence items declare more bytes than the file holds
    (DICOMDIR-nooffset: "created from DICOMDIR by removing some of the 0-offset tags" without fixing the item
    lengths). Walks the item headers by their declared lengths."""
    data = Path(path).read_bytes()
    syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    little = syntax != "1.2.840.10008.1.2.2"
    endian = "<" if little else ">"
    at = data.find(struct.pack(endian + "HH", 0x0004, 0x1220), 132)
    assert at > 0
    if syntax == "1.2.840.10008.1.2":
        pos = at + 8
    else:
        assert data[at + 4:at + 6] == b"SQ"
        pos = at + 12
    while pos + 8 <= len(data):
        group, element, length = struct.unpack_from(endian + "HHI", data, pos)
        if (group, element) != (0xFFFE, 0xE000):
            return False  # sequence delimiter or the next element
        if length == 0xFFFFFFFF:
            end = data.find(struct.pack(endian + "HHI", 0xFFFE, 0xE00D, 0), pos + 8)
            pos = end + 8
        else:
            pos += 8 + length
    return pos > len(data)


def test_dicomdirtests_dicomdir_files_are_objects(dicomdir_tree):
    full, result = dicomdir_tree
    dicomdirs = {p for p, ds in full.items()
                 if str(ds.file_meta.get("MediaStorageSOPClassUID", "")) == DICOMDIR_SOP_CLASS}
    assert len(dicomdirs) >= 7
    overrun = {p for p in dicomdirs if _record_items_overrun(p)}
    assert overrun == {real(DICOMDIR_TESTS / "DICOMDIR-nooffset")}
    objects = {real(o["path"]) for o in result.objects}
    assert dicomdirs - overrun <= objects
    assert not dicomdirs & {real(f["path"]) for f in result.series_files}
    # a DICOMDIR whose items claim bytes past the end of the file is an object or reported, never dropped
    unreadable = {real(r["path"]): r["reason"] for r in result.unreadable}
    for path in overrun:
        assert path in objects or "truncated" in unreadable.get(path, "").lower()


def test_dicomdirtests_readme_files_are_not_dicom(dicomdir_tree):
    _, result = dicomdir_tree
    readmes = [p for p in DICOMDIR_TESTS.rglob("README*") if p.is_file()]
    assert readmes
    unreadable = {real(r["path"]): r for r in result.unreadable}
    for path in readmes:
        assert unreadable[real(path)]["kind"] == "not_dicom", path


def test_dicomdirtests_ct2n_localizers(dicomdir_tree):
    full, result = dicomdir_tree
    ct2n = {p: ds for p, ds in full.items() if os.sep + "CT2N" + os.sep in p}
    uids = {str(ds.SeriesInstanceUID) for ds in ct2n.values()}
    assert len(uids) == 1
    uid = uids.pop()
    n_localizers = sum(_is_localizer(ds) for ds in ct2n.values())
    assert n_localizers == 2
    row = series_row(result, uid)
    assert row["series_key"] == sha_key(uid)
    assert int(row["localizers_skipped"]) == n_localizers
    assert not any(real(f["path"]) in ct2n for f in result.series_files)


def _orientation_groups(datasets) -> list[list]:
    """Split by (rows, columns) and orientation (direction cosines within 1e-3), greedily."""
    groups: list[tuple[tuple, list[float], list]] = []
    for ds in datasets:
        size = (int(ds.Rows), int(ds.Columns))
        iop = [float(v) for v in ds.ImageOrientationPatient]
        for g_size, g_iop, members in groups:
            if g_size == size and max(abs(a - b) for a, b in zip(g_iop, iop)) <= 1e-3:
                members.append(ds)
                break
        else:
            groups.append((size, iop, [ds]))
    return [members for _, _, members in groups]


def test_dicomdirtests_series_counted_by_series_uid(dicomdir_tree):
    full, result = dicomdir_tree
    by_uid = defaultdict(list)
    for ds in full.values():
        if "SeriesInstanceUID" in ds and str(ds.file_meta.get("MediaStorageSOPClassUID", "")) != DICOMDIR_SOP_CLASS:
            by_uid[str(ds.SeriesInstanceUID)].append(ds)
    expected_rows = 0
    expected_slices = 0
    uids_with_rows = set()
    for uid, datasets in by_uid.items():
        images = [ds for ds in datasets if _usable_image(ds) and not _is_localizer(ds)]
        localizers = [ds for ds in datasets if _usable_image(ds) and _is_localizer(ds)]
        if images:
            expected_rows += len(_orientation_groups(images))
            expected_slices += len(images)
            uids_with_rows.add(uid)
        elif localizers:
            expected_rows += 1
            uids_with_rows.add(uid)
    assert len(result.series) == expected_rows
    assert {r["series_instance_uid"] for r in result.series} == uids_with_rows
    assert sum(int(r["n_slices"]) for r in result.series) == expected_slices
    for row in result.series:
        assert row["series_key"].split("_")[0] == sha_key(row["series_instance_uid"])
    # images that cannot make a volume (no position, no pixel data) are listed as unreadable
    unusable = {p for p, ds in full.items() if "SeriesInstanceUID" in ds and "Rows" in ds and not _usable_image(ds)}
    assert unusable <= {real(r["path"]) for r in result.unreadable}
