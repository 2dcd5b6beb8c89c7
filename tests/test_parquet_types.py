"""metadata.parquet column types (checked with pyarrow against pydicom's data dictionary) and values (against
pydicom's reading of the files); ``--column-names keyword``."""
from __future__ import annotations

import csv
import math
import re

import numpy as np
import pydicom
import pytest
from pydicom import datadict

from voxelpipe.cli.app import main
from voxelpipe.testing.synthetic import SeriesSpec, write_rtstruct, write_series

pa = pytest.importorskip("pyarrow", reason="metadata.parquet needs pyarrow (the parquet extra)")
pq = pytest.importorskip("pyarrow.parquet", reason="metadata.parquet needs pyarrow (the parquet extra)")

INTEGER_VRS = {"US", "SS", "UL", "SL", "SV", "IS"}
FLOAT_VRS = {"FL", "FD", "DS"}
SEQUENCE_KEYWORDS = {entry[2]: entry[4] for entry in datadict.DicomDictionary.values() if entry[0] == "SQ"}
TAG = re.compile(r".*\(([0-9A-F]{4}), ([0-9A-F]{4})\)")


def first_keyword(vr: str, exclude: set[str] = frozenset()) -> str:
    """A public, current, single-valued attribute of ``vr`` from pydicom's dictionary."""
    for tag, (entry_vr, vm, _, retired, keyword) in sorted(datadict.DicomDictionary.items()):
        if entry_vr == vr and vm == "1" and not retired and keyword and tag >> 16 not in (0x0000, 0x0002) \
                and keyword not in exclude:
            return keyword
    raise AssertionError(vr)


def extra_tags() -> dict:
    """One attribute of each numeric VR (values that need the type: large, negative, fractional)."""
    return {first_keyword("SS"): -1234, first_keyword("SL"): -70000, first_keyword("UL"): 4000000000,
            first_keyword("FL"): 0.25, first_keyword("FD"): -1.0 / 3.0, "KVP": "120.5", "ExposureTime": "750",
            "PatientWeight": "71.5"}


def expected_type(column: str):
    match = TAG.fullmatch(column)
    if match is None:  # path, series_key
        return pa.string()
    tag = int(match.group(1) + match.group(2), 16)
    if tag >> 16 & 1:
        return pa.string()
    try:
        vm, vrs = datadict.dictionary_VM(tag), set(datadict.dictionary_VR(tag).split(" or "))
    except KeyError:
        return pa.string()
    if vm == "1" and vrs <= INTEGER_VRS:
        return pa.int64()
    if vm == "1" and vrs <= FLOAT_VRS:
        return pa.float64()
    return pa.string()


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    root = tmp_path_factory.mktemp("typed")
    spec = SeriesSpec(n_slices=4, rows=16, columns=20)
    paths = write_series(root / "in" / "ct", spec, tags=extra_tags())
    private = pydicom.dcmread(paths[0])
    private.add_new(0x00291010, "SL", 5)
    private.save_as(paths[0], enforce_file_format=True)
    (root / "in" / "rt").mkdir()
    square = np.array([[-5, -5, -50.0], [5, -5, -50.0], [5, 5, -50.0], [-5, 5, -50.0]])
    write_rtstruct(root / "in" / "rt" / "RS.dcm", paths, {"a": [square], "b": [square + [0, 0, 2.5]]})
    for names in ("name", "keyword"):
        assert main(["--no-progress", "scan", str(root / "in"), "--out", str(root / names), "--table-format",
                     "parquet", "--column-names", names, "--workers", "1"]) == 0
    return root


def test_types_follow_the_dictionary_vr(manifests):
    schema = pq.read_schema(manifests / "name" / "metadata.parquet")
    assert len(schema.names) > 40
    for field in schema:
        assert field.type == expected_type(field.name), field.name
    kinds = {str(field.type) for field in schema}
    assert kinds == {"string", "int64", "double"}


def test_values_equal_pydicom(manifests):
    table = pq.read_table(manifests / "name" / "metadata.parquet").to_pylist()
    checked = 0
    for row in table:
        ds = pydicom.dcmread(row["path"], stop_before_pixels=True)
        for column, value in row.items():
            match = TAG.fullmatch(column)
            if match is None or expected_type(column) == pa.string() or "_" in column:
                continue  # text columns and elements nested in sequences
            tag = int(match.group(1) + match.group(2), 16)
            elem = (ds.file_meta if tag >> 16 == 2 else ds).get(tag)
            if elem is None or elem.value in (None, ""):
                assert value is None, column
                continue
            if expected_type(column) == pa.int64():
                assert value == int(elem.value), column
            else:
                assert math.isclose(value, float(elem.value), rel_tol=0, abs_tol=0), column
            checked += 1
    for keyword in extra_tags():  # every numeric VR was compared above, as a number
        tag = datadict.tag_for_keyword(keyword)
        column = f"{datadict.dictionary_description(tag)} ({tag >> 16:04X}, {tag & 0xFFFF:04X})"
        assert all(isinstance(row[column], (int, float)) for row in table if row["Modality (0008, 0060)"] == "CT")
    assert checked > 60


def test_multi_valued_and_duplicates(manifests):
    table = pq.read_table(manifests / "name" / "metadata.parquet")
    assert table.schema.field("Pixel Spacing (0028, 0030)").type == pa.string()
    assert set(table.column("Pixel Spacing (0028, 0030)").to_pylist()) - {None} == {"0.8\\0.8"}
    # two ROIs: the nested ROI Number column holds DUPLICATE TAGS text in CSV, a null in Parquet
    column = "Structure Set ROI Sequence_ROI Number (3006, 0022)"
    assert table.schema.field(column).type == pa.int64()
    assert set(table.column(column).to_pylist()) == {None}
    with open(manifests / "name" / "metadata.csv", newline="", encoding="utf-8") as fh:
        cells = {row[column] for row in csv.DictReader(fh)}
    assert "DUPLICATE TAGS IN DICOM:1/2" in cells


def test_keyword_column_names(manifests):
    named = pq.read_schema(manifests / "name" / "metadata.parquet")
    keyed = pq.read_schema(manifests / "keyword" / "metadata.parquet")
    assert len(named) == len(keyed)
    for by_name, by_keyword in zip(named, keyed):
        assert by_name.type == by_keyword.type
        match = TAG.fullmatch(by_name.name)
        if match is None:
            assert by_keyword.name == by_name.name  # path, series_key
            continue
        tag = int(match.group(1) + match.group(2), 16)
        prefix = by_name.name[: by_name.name.rfind(datadict.dictionary_description(tag) if not tag >> 16 & 1
                                                 else "Private")]
        sequences = [SEQUENCE_KEYWORDS[n] for n in prefix.rstrip("_").split("_")] if prefix else []
        if tag >> 16 & 1:
            leaf = f"Private_{tag >> 16:04X}_{tag & 0xFFFF:04X}" if tag & 0xFF00 else \
                f"PrivateCreator_{tag >> 16:04X}_{tag & 0xFFFF:04X}"
        else:
            leaf = datadict.keyword_for_tag(tag)
        assert by_keyword.name == "_".join([*sequences, leaf])
    assert "PatientName" in keyed.names and "Private_0029_1010" in keyed.names
    assert "StructureSetROISequence_ROINumber" in keyed.names
    with open(manifests / "keyword" / "metadata.csv", newline="", encoding="utf-8") as fh:
        assert next(csv.reader(fh)) == keyed.names
