"""`scan` on synthetic studies written with pydicom: every expectation comes from what the test wrote."""
from __future__ import annotations

import csv
import hashlib
import hmac
import math
import os

import pydicom
import pytest

from voxelpipe import scan

from helpers import sha_key

TOL_MM = 1e-3  # positions are written with 6 significant digits and reported rounded to 0.1 µm



def real(path: str) -> str:
    return os.path.realpath(path)


def as_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    assert str(value) in ("True", "False"), value
    return str(value) == "True"


def only_series(result) -> dict:
    assert len(result.series) == 1, [s["series_key"] for s in result.series]
    return result.series[0]


def files_of(result, key: str) -> list[dict]:
    return [row for row in result.series_files if row["series_key"] == key]


def unreadable_by_path(result) -> dict[str, dict]:
    rows = {real(row["path"]): row for row in result.unreadable}
    assert len(rows) == len(result.unreadable), "a path is listed twice in unreadable"
    return rows


# ----------------------------------------------------------------------------------------------------------
# ordering, positions, names
# ----------------------------------------------------------------------------------------------------------
def test_shuffled_names_give_files_in_ascending_position_order(synthetic, scan_case):
    case = synthetic["shuffled"]
    spec = case.specs[0]
    assert not any(p.endswith(".dcm") for p in case.paths["series"])  # names carry no extension
    result = scan_case("shuffled")
    row = only_series(result)
    files = files_of(result, row["series_key"])
    # write_series returns the paths in slice order; slice i sits at origin z + i * spacing
    assert [real(f["path"]) for f in files] == [real(p) for p in case.paths["series"]]
    assert [float(f["position_mm"]) for f in files] == pytest.approx(case.extra["z"], abs=TOL_MM)
    assert int(row["n_slices"]) == int(row["n_files"]) == int(row["n_positions"]) == spec.n_slices
    assert float(row["spacing_median"]) == pytest.approx(spec.spacing[0], abs=TOL_MM)
    assert float(row["first_position_mm"]) == pytest.approx(spec.origin[2], abs=TOL_MM)
    assert float(row["last_position_mm"]) == pytest.approx(case.extra["z"][-1], abs=TOL_MM)
    assert int(row["missing_slices"]) == 0
    assert int(row["duplicate_positions"]) == 0
    assert float(row["gantry_tilt_deg"]) == pytest.approx(0.0, abs=0.01)
    assert as_bool(row["rescale_varies"]) is False
    # InstanceNumber was written in slice order
    assert as_bool(row["instance_order_matches_position"]) is True
    assert row["modality"] == spec.modality
    assert (int(row["rows"]), int(row["columns"])) == (spec.rows, spec.columns)
    assert row["series_instance_uid"] == spec.series_uid
    assert row["study_instance_uid"] == spec.study_uid


def test_files_are_found_by_content_not_extension_at_any_depth(synthetic, scan_case):
    case = synthetic["content"]
    result = scan_case("content")
    row = only_series(result)
    assert int(row["n_slices"]) == case.specs[0].n_slices
    found = {real(f["path"]) for f in files_of(result, row["series_key"])}
    assert found == {real(p) for p in case.paths["series"]}  # includes notes.txt, 2 and 3 folders deep
    bad = unreadable_by_path(result)
    assert set(bad) == {real(p) for p in case.paths["fake"]}  # fake.dcm is text
    assert bad[real(case.paths["fake"][0])]["kind"] == "not_dicom"


# ----------------------------------------------------------------------------------------------------------
# geometry checks
# ----------------------------------------------------------------------------------------------------------
def test_duplicated_slice(synthetic, scan_case):
    spec = synthetic["duplicate"].specs[0]
    row = only_series(scan_case("duplicate"))
    assert int(row["duplicate_positions"]) == 1
    assert int(row["n_slices"]) == spec.n_slices + 1
    assert int(row["n_positions"]) == spec.n_slices
    assert int(row["missing_slices"]) == 0
    assert float(row["spacing_median"]) == pytest.approx(spec.spacing[0], abs=TOL_MM)


def test_missing_slice(synthetic, scan_case):
    spec = synthetic["missing"].specs[0]
    row = only_series(scan_case("missing"))
    assert int(row["missing_slices"]) == 1
    assert int(row["n_slices"]) == int(row["n_positions"]) == spec.n_slices - 1
    assert float(row["max_gap_mm"]) == pytest.approx(2 * spec.spacing[0], abs=TOL_MM)
    assert float(row["spacing_median"]) == pytest.approx(spec.spacing[0], abs=TOL_MM)
    assert float(row["spacing_min"]) == pytest.approx(spec.spacing[0], abs=TOL_MM)
    assert float(row["spacing_max"]) == pytest.approx(2 * spec.spacing[0], abs=TOL_MM)
    assert int(row["duplicate_positions"]) == 0


def test_gantry_tilt(synthetic, scan_case):
    spec = synthetic["tilt"].specs[0]
    # precondition from the files themselves: the table steps spacing / cos(tilt) along z
    z = sorted(float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])
               for p in synthetic["tilt"].paths["series"])
    assert z[1] - z[0] == pytest.approx(spec.spacing[0] / math.cos(math.radians(spec.tilt_deg)), abs=TOL_MM)
    row = only_series(scan_case("tilt"))
    assert float(row["gantry_tilt_deg"]) == pytest.approx(spec.tilt_deg, abs=0.01)
    # the spacing along the slice normal is the perpendicular spacing of the spec
    assert float(row["spacing_median"]) == pytest.approx(spec.spacing[0], abs=TOL_MM)
    assert int(row["n_slices"]) == int(row["n_positions"]) == spec.n_slices
    assert int(row["missing_slices"]) == 0


def test_localizer_in_axial_series_is_skipped_and_counted(synthetic, scan_case):
    case = synthetic["localizer"]
    result = scan_case("localizer")
    row = only_series(result)
    assert int(row["localizers_skipped"]) == 1
    assert int(row["n_slices"]) == case.specs[0].n_slices
    listed = {real(f["path"]) for f in result.series_files}
    assert real(case.paths["localizer"][0]) not in listed
    assert listed == {real(p) for p in case.paths["series"]}


def test_two_series_in_one_folder(synthetic, scan_case):
    case = synthetic["two_series"]
    result = scan_case("two_series")
    assert len(result.series) == 2
    by_uid = {row["series_instance_uid"]: row for row in result.series}
    a, b = case.specs
    assert set(by_uid) == {a.series_uid, b.series_uid}
    assert by_uid[a.series_uid]["series_key"] != by_uid[b.series_uid]["series_key"]
    for spec, role in ((a, "a"), (b, "b")):
        row = by_uid[spec.series_uid]
        assert int(row["n_slices"]) == spec.n_slices
        assert {real(f["path"]) for f in files_of(result, row["series_key"])} == {real(p) for p in case.paths[role]}


def test_series_mixing_image_sizes_is_split(synthetic, scan_case):
    case = synthetic["sizes"]
    a, b = case.specs
    key = sha_key(a.series_uid)
    result = scan_case("sizes")
    assert len(result.series) == 2
    parts = {(row["series_key"], int(row["rows"]), int(row["columns"]), int(row["n_slices"]))
             for row in result.series}
    # keys <key>_1 / <key>_2, the largest part first
    assert parts == {(f"{key}_1", a.rows, a.columns, a.n_slices), (f"{key}_2", b.rows, b.columns, b.n_slices)}
    for row in result.series:
        assert "image size" in row["split_reason"]
        assert row["series_instance_uid"] == a.series_uid
    by_key = {row["series_key"]: row for row in result.series}
    assert {real(f["path"]) for f in files_of(result, f"{key}_2")} == {real(p) for p in case.paths["b"]}
    assert int(by_key[f"{key}_1"]["n_files"]) == a.n_slices


def test_series_mixing_orientations_is_split(synthetic, scan_case):
    case = synthetic["orientation"]
    a, b = case.specs
    key = sha_key(a.series_uid)
    result = scan_case("orientation")
    assert len(result.series) == 2
    parts = {(row["series_key"], row["orientation"], int(row["n_slices"])) for row in result.series}
    assert parts == {(f"{key}_1", "axial", a.n_slices), (f"{key}_2", "coronal", b.n_slices)}
    for row in result.series:
        assert "orientation" in row["split_reason"]
    coronal = next(row for row in result.series if row["series_key"] == f"{key}_2")
    assert float(coronal["spacing_median"]) == pytest.approx(2.0, abs=TOL_MM)  # y = -10 + 2 i


def test_rescale_slope_differing_per_slice(synthetic, scan_case):
    slopes = {str(pydicom.dcmread(p, stop_before_pixels=True).RescaleSlope)
              for p in synthetic["rescale"].paths["series"]}
    assert slopes == {"1", "2"}  # precondition: the files really differ
    row = only_series(scan_case("rescale"))
    assert as_bool(row["rescale_varies"]) is True
    assert int(row["n_slices"]) == synthetic["rescale"].specs[0].n_slices
    # the files carry their own slope in series_files
    files = scan_case("rescale").series_files
    expected = {real(p): float(pydicom.dcmread(p, stop_before_pixels=True).RescaleSlope)
                for p in synthetic["rescale"].paths["series"]}
    assert {real(f["path"]): float(f["slope"]) for f in files} == expected


def test_cine_repeats_positions(synthetic, scan_case):
    case = synthetic["cine"]
    spec = case.specs[0]
    row = only_series(scan_case("cine"))
    assert int(row["frames_per_position"]) == 2
    assert int(row["duplicate_positions"]) == 0
    assert int(row["n_slices"]) == 2 * spec.n_slices
    assert int(row["n_positions"]) == spec.n_slices
    assert float(row["spacing_median"]) == pytest.approx(spec.spacing[0], abs=TOL_MM)


# ----------------------------------------------------------------------------------------------------------
# bad files
# ----------------------------------------------------------------------------------------------------------
BAD_REASONS = {
    "truncated_pixels": "truncated",
    "truncated_header": "truncated",
    "truncated_meta": "truncated",
    "empty": "empty",
    "text": "",
    "random": "",
    "no_ipp": "ImagePositionPatient (0020,0032)",
}


@pytest.mark.parametrize("role", sorted(BAD_REASONS))
def test_bad_file_is_listed_with_reason(synthetic, scan_case, role):
    path = real(synthetic["bad"].extra["bad"][role])
    bad = unreadable_by_path(scan_case("bad"))
    assert path in bad, f"{role} file not listed in unreadable"
    row = bad[path]
    assert row["kind"], "kind column empty"
    assert row["reason"], "reason column empty"
    assert BAD_REASONS[role].lower() in row["reason"].lower(), row["reason"]


def test_bad_files_do_not_stop_the_scan(synthetic, scan_case):
    case = synthetic["bad"]
    result = scan_case("bad")
    row = only_series(result)
    assert row["series_instance_uid"] == case.specs[0].series_uid
    assert int(row["n_slices"]) == int(row["n_files"]) == case.specs[0].n_slices
    assert [real(f["path"]) for f in files_of(result, row["series_key"])] == [real(p) for p in case.paths["series"]]
    assert {real(r["path"]) for r in result.unreadable} == {real(p) for p in case.extra["bad"].values()}
    assert result.n_files == len(case.paths["series"]) + len(case.extra["bad"])


# ----------------------------------------------------------------------------------------------------------
# keys
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["shuffled", "two_series", "sizes", "cine", "shards"])
def test_series_key_is_sha256_of_series_uid(synthetic, scan_case, name):
    result = scan_case(name)
    uids = {spec.series_uid for spec in synthetic[name].specs}
    assert {row["series_instance_uid"] for row in result.series} == uids
    for row in result.series:
        expected = hashlib.sha256(row["series_instance_uid"].encode()).hexdigest()[:16]
        assert row["series_key"] in (expected, f"{expected}_1", f"{expected}_2")
        assert all(f["series_key"] == row["series_key"] for f in files_of(result, row["series_key"]))


def test_series_key_with_secret_is_hmac(synthetic, scan_case):
    secret = "not-so-secret"
    result = scan_case("two_series", secret=secret)
    keys = {row["series_instance_uid"]: row["series_key"] for row in result.series}
    for spec in synthetic["two_series"].specs:
        expected = hmac.new(secret.encode(), spec.series_uid.encode(), hashlib.sha256).hexdigest()[:16]
        assert keys[spec.series_uid] == expected
        assert expected != sha_key(spec.series_uid)


# ----------------------------------------------------------------------------------------------------------
# shards
# ----------------------------------------------------------------------------------------------------------
def test_shards_cover_every_series_once_and_balance_bytes(synthetic, scan_case):
    case = synthetic["shards"]
    size_of = {uid: sum(os.path.getsize(p) for p in paths) for uid, paths in case.paths.items()}
    assert len(set(size_of.values())) == 5
    result = scan_case("shards", shards=3)
    assert len(result.shards) == 3
    keys = [row["series_key"] for shard in result.shards for row in shard]
    assert sorted(keys) == sorted(row["series_key"] for row in result.series)
    assert sorted(keys) == sorted(sha_key(uid) for uid in case.paths)
    for row in result.series:
        assert int(row["n_bytes"]) == size_of[row["series_instance_uid"]]
    loads = [sum(size_of[row["series_instance_uid"]] for row in shard) for shard in result.shards]
    assert sum(loads) == sum(size_of.values())
    assert max(loads) <= min(loads) + max(size_of.values())


# ----------------------------------------------------------------------------------------------------------
# metadata
# ----------------------------------------------------------------------------------------------------------
def _private_column(path: str) -> tuple[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    creator = ds.private_block(0x0009, "VOXELPIPE TEST")
    elem = ds[creator.get_tag(0x01)]
    # no private dictionary knows this creator: pydicom names the element "Private tag data"
    assert elem.name == "Private tag data"
    return f"{elem.name} ({elem.tag.group:04X}, {elem.tag.element:04X})", str(elem.value)


def test_metadata_one_row_per_file_with_union_of_columns(synthetic, tmp_path):
    case = synthetic["metadata"]
    column, value = _private_column(case.extra["private_file"])
    out = tmp_path / "manifest"
    scan(case.folder, out=out, workers=1, progress=False)
    with open(out / "metadata.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames
        rows = list(reader)
    assert "path" in header
    assert len(rows) == len(case.paths["series"])
    assert {real(r["path"]) for r in rows} == {real(p) for p in case.paths["series"]}
    assert column in header
    cells = {real(r["path"]): r[column] for r in rows}
    assert cells.pop(real(case.extra["private_file"])) == value
    assert set(cells.values()) == {""}
    # a column every file has is filled for every file
    sop_column = "SOP Instance UID (0008, 0018)"
    assert {r[sop_column] for r in rows} == {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                                             for p in case.paths["series"]}


def test_metadata_rows_in_memory_without_output_folder(synthetic, scan_case):
    case = synthetic["metadata"]
    column, value = _private_column(case.extra["private_file"])
    result = scan_case("metadata")
    assert len(result.metadata) == len(case.paths["series"])
    assert column in result.metadata_columns
    with_private = [row for row in result.metadata if row.get(column)]
    assert [real(row["path"]) for row in with_private] == [real(case.extra["private_file"])]
    assert with_private[0][column] == value


def test_metadata_has_a_row_for_every_readable_file_only(synthetic, scan_case):
    """Files with a parsable header have a row; empty, text and random files do not."""
    case = synthetic["bad"]
    result = scan_case("bad")
    paths = {real(row["path"]) for row in result.metadata}
    for role in ("empty", "text", "random"):
        assert real(case.extra["bad"][role]) not in paths
    for path in case.paths["series"]:
        assert real(path) in paths
    assert real(case.extra["bad"]["no_ipp"]) in paths  # readable, just not usable as a volume


# ----------------------------------------------------------------------------------------------------------
# process pool
# ----------------------------------------------------------------------------------------------------------
def test_two_workers_give_the_same_tables_as_one(synthetic):
    root = synthetic["_root"].folder
    one = scan(root, workers=1, progress=False, shards=4)
    two = scan(root, workers=2, progress=False, shards=4)
    assert one.n_files == two.n_files > 100
    for table in ("series", "series_files", "objects", "unreadable", "shards", "metadata", "metadata_columns"):
        assert getattr(two, table) == getattr(one, table), table
    # one row per SeriesInstanceUID written, plus one more part for each of the two split series
    uids = {spec.series_uid for name, case in synthetic.items() for spec in case.specs}
    assert len(one.series) == len(uids) + 2


@pytest.mark.parametrize("phi", ["keep", "pseudonymise"])
def test_two_workers_write_the_same_manifest_as_one(synthetic, tmp_path, monkeypatch, phi):
    """Written tables, byte for byte: the workers apply phi, send rows as JSON lines and records as tuples,
    and encode metadata.csv in chunks (small chunks here, so that there are several windows of them)."""
    from voxelpipe.stores import tables

    monkeypatch.setenv("VOXELPIPE_KEY_SECRET", "s3cret")
    monkeypatch.setattr(tables, "CSV_CHUNK_ROWS", 7)
    monkeypatch.setattr(tables, "CSV_CHUNKS_AT_ONCE", 3)
    root = synthetic["_root"].folder
    results = {workers: scan(root, out=str(tmp_path / f"w{workers}"), workers=workers, progress=False, phi=phi)
               for workers in (1, 2)}
    assert results[1].n_metadata_rows == results[2].n_metadata_rows > 7 * 3
    assert results[2].records == results[1].records
    names = sorted(os.listdir(tmp_path / "w1"))
    assert "metadata.csv" in names and sorted(os.listdir(tmp_path / "w2")) == names
    for name in names:
        if name.endswith(".csv"):
            assert (tmp_path / "w2" / name).read_bytes() == (tmp_path / "w1" / name).read_bytes(), name
