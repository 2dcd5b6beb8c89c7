"""Flattened metadata rows (scan's metadata table) against pydicom's data dictionary and pydicom's own reading.

Column rule: ``"<Name> (gggg, eeee)"`` with the data dictionary name; an element nested in a sequence
is ``"<Sequence name>_<Name> (gggg, eeee)"`` recursively; a column receiving several values in one file holds
``DUPLICATE TAGS IN DICOM:v1/v2/...``; multi-valued elements are ``\\``-joined; no pixel data column.
Private elements: DICOM PS3.5 §7.8.1 reserves (gggg,0010-00FF) of an odd group for Private Creator elements;
scan (flatten.py docstring) names them "Private Creator" and every other private element "Private tag data",
which is also pydicom's name for a private element whose creator is not in its private dictionary.
"""
from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import datadict
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import CTImageStorage, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from voxelpipe import scan

PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
DUP = "DUPLICATE TAGS IN DICOM:"
STRING_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}


def col(*keywords: str) -> str:
    """Expected column for an element reached through the sequences ``keywords[:-1]``: names from pydicom's
    data dictionary."""
    names = [datadict.dictionary_description(datadict.tag_for_keyword(k)) for k in keywords]
    tag = datadict.tag_for_keyword(keywords[-1])
    return "_".join(names) + f" ({tag >> 16:04X}, {tag & 0xFFFF:04X})"


def meta_columns(row: dict) -> set[str]:
    """Top-level file meta (group 0002) columns of a row."""
    return {c for c in row if c[-12:].startswith("(0002, ") and "_" not in c}


def scan_rows(paths):
    """Metadata rows of a scan over files, by path."""
    result = scan([str(p) for p in paths], workers=1, progress=False)
    return {os.path.realpath(row["path"]): row for row in result.metadata}, result


# ----------------------------------------------------------------------------------------------------------
# a hand-made dataset with nested sequences and a repeated tag
# ----------------------------------------------------------------------------------------------------------
UIDS = {
    "sop": "1.2.826.0.1.3680043.10.1492.77.1",
    "study": "1.2.826.0.1.3680043.10.1492.77.2",
    "series": "1.2.826.0.1.3680043.10.1492.77.3",
    "ref1": "1.2.826.0.1.3680043.10.1492.77.11",
    "ref2": "1.2.826.0.1.3680043.10.1492.77.12",
    "for": "1.2.826.0.1.3680043.10.1492.77.20",
    "ref_study": "1.2.826.0.1.3680043.10.1492.77.21",
    "ref_series": "1.2.826.0.1.3680043.10.1492.77.22",
}


def nested_dataset(syntax) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UIDS["sop"]
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = UIDS["sop"]
    ds.StudyDate = "20260101"
    ds.Modality = "CT"
    ds.PatientName = "Müller^Jörg"
    ds.PatientID = "FLAT-1"
    ds.StudyInstanceUID = UIDS["study"]
    ds.SeriesInstanceUID = UIDS["series"]
    ds.InstanceNumber = 7
    ds.ImagePositionPatient = ["-10", "-10", "5"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 4
    ds.Columns = 4
    ds.PixelSpacing = ["0.5", "0.5"]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.SmallestImagePixelValue = -5  # VR "US or SS": resolved by PixelRepresentation
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.DiffusionBValue = 1000.5  # FD
    ds.FrameIncrementPointer = 0x00181063  # AT
    # a tag repeated across two sequence items
    refs = []
    for key in ("ref1", "ref2"):
        item = Dataset()
        item.ReferencedSOPClassUID = CTImageStorage
        item.ReferencedSOPInstanceUID = UIDS[key]
        refs.append(item)
    ds.ReferencedImageSequence = refs
    # a sequence inside a sequence inside a sequence
    series_item = Dataset()
    series_item.SeriesInstanceUID = UIDS["ref_series"]
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study_item.ReferencedSOPInstanceUID = UIDS["ref_study"]
    study_item.RTReferencedSeriesSequence = [series_item]
    for_item = Dataset()
    for_item.FrameOfReferenceUID = UIDS["for"]
    for_item.RTReferencedStudySequence = [study_item]
    ds.ReferencedFrameOfReferenceSequence = [for_item]
    ds.PixelData = np.arange(16, dtype="<i2" if syntax != ExplicitVRBigEndian else ">i2").tobytes()
    return ds


ENCODINGS = {
    "explicit_le": (ExplicitVRLittleEndian, dict(implicit_vr=False, little_endian=True)),
    "implicit_le": (ImplicitVRLittleEndian, dict(implicit_vr=True, little_endian=True)),
    "explicit_be": (ExplicitVRBigEndian, dict(implicit_vr=False, little_endian=False)),
}


@pytest.fixture(scope="module")
def nested_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("flatten")
    paths = {}
    for name, (syntax, options) in ENCODINGS.items():
        path = folder / f"nested_{name}"  # no extension: found by content
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom may warn that big endian is retired
            nested_dataset(syntax).save_as(path, enforce_file_format=True, **options)
        assert str(pydicom.dcmread(path).file_meta.TransferSyntaxUID) == syntax
        paths[name] = path
    return paths


@pytest.fixture(scope="module")
def nested_rows(nested_files) -> dict[str, dict]:
    rows, _ = scan_rows(nested_files.values())
    return {name: rows[os.path.realpath(path)] for name, path in nested_files.items()}


EXPECTED_BODY = {
    col("SpecificCharacterSet"): "ISO_IR 100",
    col("ImageType"): "ORIGINAL\\PRIMARY\\AXIAL",
    col("SOPClassUID"): CTImageStorage,
    col("SOPInstanceUID"): UIDS["sop"],
    col("StudyDate"): "20260101",
    col("Modality"): "CT",
    col("PatientName"): "Müller^Jörg",
    col("PatientID"): "FLAT-1",
    col("StudyInstanceUID"): UIDS["study"],
    col("SeriesInstanceUID"): UIDS["series"],
    col("InstanceNumber"): "7",
    col("ImagePositionPatient"): "-10\\-10\\5",
    col("ImageOrientationPatient"): "1\\0\\0\\0\\1\\0",
    col("SamplesPerPixel"): "1",
    col("PhotometricInterpretation"): "MONOCHROME2",
    col("Rows"): "4",
    col("Columns"): "4",
    col("PixelSpacing"): "0.5\\0.5",
    col("BitsAllocated"): "16",
    col("BitsStored"): "16",
    col("HighBit"): "15",
    col("PixelRepresentation"): "1",
    col("SmallestImagePixelValue"): "-5",
    col("RescaleIntercept"): "-1024",
    col("RescaleSlope"): "1",
    col("DiffusionBValue"): "1000.5",
    col("FrameIncrementPointer"): None,  # AT: presence only, the notation of a tag value is not specified
    col("ReferencedImageSequence", "ReferencedSOPClassUID"): f"{DUP}{CTImageStorage}/{CTImageStorage}",
    col("ReferencedImageSequence", "ReferencedSOPInstanceUID"): f"{DUP}{UIDS['ref1']}/{UIDS['ref2']}",
    col("ReferencedFrameOfReferenceSequence", "FrameOfReferenceUID"): UIDS["for"],
    col("ReferencedFrameOfReferenceSequence", "RTReferencedStudySequence", "ReferencedSOPClassUID"):
        "1.2.840.10008.3.1.2.3.1",
    col("ReferencedFrameOfReferenceSequence", "RTReferencedStudySequence", "ReferencedSOPInstanceUID"):
        UIDS["ref_study"],
    col("ReferencedFrameOfReferenceSequence", "RTReferencedStudySequence", "RTReferencedSeriesSequence",
        "SeriesInstanceUID"): UIDS["ref_series"],
}


def test_expected_column_names_are_the_dictionary_names():
    """The helper builds the names the issue spells out."""
    assert col("ReferencedImageSequence", "ReferencedSOPInstanceUID") == \
        "Referenced Image Sequence_Referenced SOP Instance UID (0008, 1155)"
    assert col("ReferencedFrameOfReferenceSequence", "RTReferencedStudySequence", "RTReferencedSeriesSequence",
               "SeriesInstanceUID") == ("Referenced Frame of Reference Sequence_RT Referenced Study Sequence_"
                                        "RT Referenced Series Sequence_Series Instance UID (0020, 000E)")
    assert col("ImageType") == "Image Type (0008, 0008)"


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_nested_dataset_gives_exactly_the_expected_columns(nested_rows, encoding):
    row = nested_rows[encoding]
    body = {c for c in row if c not in ("path", "series_key") and c not in meta_columns(row)}
    assert body == set(EXPECTED_BODY)


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_nested_dataset_cells(nested_rows, encoding):
    row = nested_rows[encoding]
    for column, expected in EXPECTED_BODY.items():
        if expected is not None:
            assert row.get(column) == expected, column


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_no_pixel_data_column(nested_rows, encoding):
    row = nested_rows[encoding]
    for group, element in PIXEL_TAGS:
        assert not [c for c in row if c.endswith(f"({group:04X}, {element:04X})")]
    assert not any("Pixel Data" in c for c in row)


def test_flattened_rows_identical_across_encodings(nested_rows):
    def body(row):
        return {c: v for c, v in row.items() if c not in ("path", "series_key") and c not in meta_columns(row)}
    reference = body(nested_rows["explicit_le"])
    for encoding in ("implicit_le", "explicit_be"):
        assert body(nested_rows[encoding]) == reference, encoding


def _meta_mismatches(row: dict, meta: Dataset) -> list[str]:
    """Differences between a row's group 0002 columns (when it has any) and pydicom's file meta."""
    present = meta_columns(row)
    if not present:
        return []
    expected = {f"{e.name} ({e.tag.group:04X}, {e.tag.element:04X})": e for e in meta}
    problems = [f"column {c!r} not in pydicom's file meta" for c in sorted(present - set(expected))]
    problems += [f"file meta column {c!r} missing" for c in sorted(set(expected) - present)]
    for column, elem in expected.items():
        if column in present and elem.VR in STRING_VRS and _norm(row[column]) != _norm(_text(elem.value)):
            problems.append(f"{column}: {row[column]!r} != {_text(elem.value)!r}")
    return problems


def test_file_meta_columns_if_present_follow_pydicom(nested_files, nested_rows):
    """Group 0002 columns are optional; when present they carry pydicom's dictionary names and values."""
    problems = {}
    for encoding, path in nested_files.items():
        found = _meta_mismatches(nested_rows[encoding], pydicom.dcmread(path, stop_before_pixels=True).file_meta)
        if found:
            problems[encoding] = found
    assert not problems


# ----------------------------------------------------------------------------------------------------------
# reference comparison over pydicom's bundled test files
# ----------------------------------------------------------------------------------------------------------
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
BUNDLED = sorted(p for p in TEST_FILES.iterdir() if p.is_file()) if TEST_FILES.is_dir() else []


def _reference_dataset(path: Path) -> Dataset | None:
    """pydicom's reading of a file, or None when pydicom cannot read it (a dataset without preamble is
    accepted when it parses with force=True and carries a SOPClassUID)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            pass
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:
            return None
    return ds if "SOPClassUID" in ds else None


def _name(elem) -> str:
    tag = elem.tag
    if tag.group % 2 == 1:  # PS3.5 §7.8.1 (see the module docstring)
        return "Private Creator" if 0x0010 <= tag.element <= 0x00FF else "Private tag data"
    return elem.name


def _reference_columns(ds: Dataset, prefix: str = "") -> set[str]:
    columns = set()
    for elem in ds:
        if (elem.tag.group, elem.tag.element) in PIXEL_TAGS:
            continue
        if elem.VR == "SQ":
            for item in elem.value:
                columns |= _reference_columns(item, f"{prefix}{_name(elem)}_")
        else:
            columns.add(f"{prefix}{_name(elem)} ({elem.tag.group:04X}, {elem.tag.element:04X})")
    return columns


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def _norm(text: str) -> str:
    return "\\".join(part.strip(" \x00") for part in text.split("\\")).strip()


@functools.cache
def _truncated_copy_of(path: Path) -> Path | None:
    """The bundled file this one is a strict prefix of (an independently known truncated file), if any."""
    data = path.read_bytes()
    for other in BUNDLED:
        if other != path and other.stat().st_size > len(data) > 132:
            with open(other, "rb") as fh:
                if fh.read(len(data)) == data:
                    return other
    return None


@pytest.fixture(scope="module")
def bundled_scan():
    if not BUNDLED:
        pytest.skip("pydicom's test_files folder not found")
    rows, result = scan_rows(BUNDLED)
    unreadable = {os.path.realpath(r["path"]): r for r in result.unreadable}
    return rows, unreadable


@pytest.mark.parametrize("path", BUNDLED, ids=[p.name for p in BUNDLED])
def test_bundled_file_columns_match_pydicom(bundled_scan, path):
    ds = _reference_dataset(path)
    if ds is None:
        pytest.skip("pydicom cannot read this file")
    rows, unreadable = bundled_scan
    key = os.path.realpath(path)
    original = _truncated_copy_of(path)
    if original is not None:  # a cut copy of another bundled file: must be reported as truncated
        assert key in unreadable and "truncated" in unreadable[key]["reason"].lower(), \
            f"{path.name} is a truncated copy of {original.name}"
        if key not in rows:
            return
    assert key in rows, f"no metadata row; unreadable: {unreadable.get(key)}"
    row = rows[key]
    present = {c for c in row if c not in ("path", "series_key")}
    assert present - meta_columns(row) == _reference_columns(ds)


@pytest.mark.parametrize("path", BUNDLED, ids=[p.name for p in BUNDLED])
def test_bundled_file_string_values_match_pydicom(bundled_scan, path):
    ds = _reference_dataset(path)
    if ds is None:
        pytest.skip("pydicom cannot read this file")
    rows, _ = bundled_scan
    row = rows.get(os.path.realpath(path))
    if row is None:
        pytest.skip("no metadata row (checked by the columns test)")
    wrong = []
    for elem in ds:
        if elem.tag.group % 2 == 1 or elem.VR not in STRING_VRS:
            continue
        column = f"{_name(elem)} ({elem.tag.group:04X}, {elem.tag.element:04X})"
        expected = _norm(_text(elem.value))
        if _norm(row.get(column, "<missing>")) != expected:
            wrong.append((column, expected, row.get(column)))
    assert not wrong, wrong[:5]


def test_bundled_files_meta_columns_if_present_follow_pydicom(bundled_scan):
    """One test over all bundled files (one naming rule would otherwise fail every file)."""
    rows, _ = bundled_scan
    problems = {}
    for path in BUNDLED:
        ds = _reference_dataset(path)
        row = rows.get(os.path.realpath(path))
        if ds is None or row is None:
            continue
        found = _meta_mismatches(row, getattr(ds, "file_meta", None) or Dataset())
        if found:
            problems[path.name] = found
    assert not problems, f"{len(problems)} files, e.g. {next(iter(problems.items()))}"
