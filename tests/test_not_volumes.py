"""Series that are not volumes: screen captures (Secondary Capture, or DERIVED\\SECONDARY images all at one
position) are left out and counted, a SeriesInstanceUID holding several SeriesNumbers is split, and every series
the scan found has a row in convert's summary. Synthetic files written here with pydicom; keys recomputed here
with hashlib."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

import voxelpipe
from voxelpipe.core.types import Status
from voxelpipe.testing.synthetic import ROOT_UID, SeriesSpec, write_localizer, write_series

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
DERIVED_SECONDARY = ["DERIVED", "SECONDARY"]


def sha_key(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def small(**kwargs) -> SeriesSpec:
    return SeriesSpec(**{"n_slices": 4, "rows": 16, "columns": 16, **kwargs})


def scan_rows(folder: Path, out: Path) -> dict[str, dict]:
    result = voxelpipe.scan([str(folder)], out=str(out), workers=1, progress=False)
    return {row["series_instance_uid"] + "|" + str(row["series_number"]): row for row in result.series}


def convert_rows(folder: Path, out: Path) -> dict[str, dict]:
    rows = voxelpipe.convert([str(folder)], out=str(out), workers=1, progress=False)
    return {row["series_key"]: row for row in rows}


@pytest.fixture()
def study(tmp_path) -> dict:
    """A CT volume, a Secondary Capture pair, an MR-class DERIVED\\SECONDARY pair at one position, a
    DERIVED\\SECONDARY reformat at four positions, and a localizer-only series, in one folder."""
    folder = tmp_path / "dicom"
    specs = {name: small(series_number=n) for n, name in enumerate(("ct", "sc", "summary", "mpr", "scout"), start=2)}
    write_series(folder / "ct", specs["ct"])
    one_position = (0.0, 0.8, 0.8)
    write_series(folder / "sc", small(series_number=3, n_slices=2, spacing=one_position,
                                      series_uid=specs["sc"].series_uid),
                 tags={"SOPClassUID": SECONDARY_CAPTURE, "ImageType": DERIVED_SECONDARY})
    write_series(folder / "summary", small(series_number=4, n_slices=2, spacing=one_position,
                                           series_uid=specs["summary"].series_uid, modality="MR"),
                 tags={"SOPClassUID": MR_IMAGE, "ImageType": DERIVED_SECONDARY + ["M"]})
    write_series(folder / "mpr", specs["mpr"], tags={"ImageType": DERIVED_SECONDARY + ["MPR"]})
    write_localizer(folder / "scout", specs["scout"])
    return {"folder": folder, "specs": specs}


def test_scan_counts_screen_captures_and_localizer_only(study, tmp_path):
    specs = study["specs"]
    rows = scan_rows(study["folder"], tmp_path / "scan")
    assert len(rows) == 5
    sc = rows[f"{specs['sc'].series_uid}|3"]
    assert int(sc["n_slices"]) == 0 and int(sc["screen_captures_skipped"]) == 2
    assert "screen captures only" in sc["not_volume_reason"]
    summary = rows[f"{specs['summary'].series_uid}|4"]
    assert int(summary["n_slices"]) == 0 and int(summary["screen_captures_skipped"]) == 2
    assert "screen captures only" in summary["not_volume_reason"]
    mpr = rows[f"{specs['mpr'].series_uid}|5"]  # DERIVED\SECONDARY with a real slice stack stays a volume
    assert int(mpr["n_slices"]) == 4 and mpr["not_volume_reason"] == ""
    scout = rows[f"{specs['scout'].series_uid}|6"]
    assert int(scout["n_slices"]) == 0 and int(scout["localizers_skipped"]) == 1
    assert scout["not_volume_reason"] == "localizer images only"
    assert int(rows[f"{specs['ct'].series_uid}|2"]["screen_captures_skipped"]) == 0


def test_convert_summary_has_a_row_for_every_series(study, tmp_path):
    specs = study["specs"]
    rows = convert_rows(study["folder"], tmp_path / "out")
    assert set(rows) == {sha_key(spec.series_uid) for spec in specs.values()}
    for name in ("ct", "mpr"):
        assert rows[sha_key(specs[name].series_uid)]["status"] == Status.DONE
    for name, words, files in (("sc", "screen captures only", 2), ("summary", "screen captures only", 2),
                               ("scout", "localizer images only", 1)):
        row = rows[sha_key(specs[name].series_uid)]
        assert row["status"] == Status.SKIPPED, row
        assert words in row["reason"]
        assert int(row["n_files"]) == files
        assert row["path"] == ""
    summary_csv = (tmp_path / "out" / "summary_run.csv").read_text()
    assert sha_key(specs["scout"].series_uid) in summary_csv


def test_screen_capture_among_slices_is_left_out(tmp_path):
    spec = small()
    write_series(tmp_path / "dicom" / "ct", spec)
    write_series(tmp_path / "dicom" / "sc", small(n_slices=1, series_uid=spec.series_uid, seed=5),
                 tags={"SOPClassUID": SECONDARY_CAPTURE, "ImageType": DERIVED_SECONDARY})
    rows = scan_rows(tmp_path / "dicom", tmp_path / "scan")
    (row,) = rows.values()
    assert int(row["n_slices"]) == 4 and int(row["screen_captures_skipped"]) == 1
    (done,) = convert_rows(tmp_path / "dicom", tmp_path / "out").values()
    assert done["status"] == Status.DONE and done["shape"] == "4x16x16"


def test_one_uid_with_two_series_numbers_is_split(tmp_path):
    uid = generate_uid(ROOT_UID)
    write_series(tmp_path / "dicom" / "a", small(series_number=7, series_uid=uid))
    write_series(tmp_path / "dicom" / "b", small(series_number=8, series_uid=uid, n_slices=3,
                                                 origin=(-25.6, -25.6, 50.0)))
    rows = scan_rows(tmp_path / "dicom", tmp_path / "scan")
    assert set(rows) == {f"{uid}|7", f"{uid}|8"}
    for number, n_slices in ((7, 4), (8, 3)):
        row = rows[f"{uid}|{number}"]
        assert row["series_key"] == sha_key(f"{uid}\\{number}")
        assert row["series_instance_uid"] == uid and str(row["series_number"]) == str(number)
        assert int(row["n_slices"]) == n_slices
        assert "2 SeriesNumbers" in row["split_reason"]
    converted = convert_rows(tmp_path / "dicom", tmp_path / "out")
    assert {key: row["shape"] for key, row in converted.items()} == {
        sha_key(f"{uid}\\7"): "4x16x16", sha_key(f"{uid}\\8"): "3x16x16"}
    assert all(row["status"] == Status.DONE for row in converted.values())


def test_2d_mode_still_converts_screen_captures(study, tmp_path):
    specs = study["specs"]
    rows = {row["series_key"]: row for row in voxelpipe.convert([str(study["folder"])], out=str(tmp_path / "out"),
                                                                 mode="2d", workers=1, progress=False)}
    for name in ("sc", "summary"):
        row = rows[sha_key(specs[name].series_uid)]
        assert row["status"] == Status.DONE and int(row["n_files"]) == 2, row
