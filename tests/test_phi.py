"""`scan --phi` and `convert --phi`: no value of the confidentiality profile's attributes of the input is left in
any output file (bytes), and the pseudonyms are the keyed hashes computed here with hmac/hashlib."""
from __future__ import annotations

import csv
import gzip
import hashlib
import hmac
import json
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
import zarr

from voxelpipe.cli.app import main
from voxelpipe.core.errors import InputError
from voxelpipe.dicom.deidentify import CONFIDENTIALITY_PROFILE
from voxelpipe.testing.synthetic import SeriesSpec, write_rtstruct, write_series

SECRET = "phi-test-secret"
PATIENT = {
    "PatientName": "Zyxwvut^Qwertyuiop",
    "PatientBirthDate": "19370412",
    "InstitutionName": "Grimsby Lighthouse Infirmary",
    "ReferringPhysicianName": "Dr^Plinkettsworth",
    "AccessionNumber": "ACCN88231X",
    "StudyID": "STDYID7741",
    "StudyDate": "19990817",
    "StationName": "STATIONKQ93",
}
PATIENT_ID = "PIDX93817Q"
DESCRIPTION = "Thorax Kraxelhuber protocol"
PRIVATE_VALUE = "PRIVATEVALUE88QZ"
# the profile's attributes this test puts distinctive values in (names, IDs, dates, institution, UIDs)
WATCHED = ["PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "ReferringPhysicianName",
           "AccessionNumber", "StudyID", "StudyDate", "StationName", "SeriesDescription", "StudyInstanceUID",
           "SeriesInstanceUID", "SOPInstanceUID", "MediaStorageSOPInstanceUID", "FrameOfReferenceUID",
           "ReferencedSOPInstanceUID"]


def text_pseudonym(value: str) -> str:
    return hmac.new(SECRET.encode(), value.encode(), hashlib.sha256).hexdigest()[:32]


def uid_pseudonym(uid: str) -> str:
    return "2.25." + str(int(hmac.new(SECRET.encode(), uid.encode(), hashlib.sha256).hexdigest()[:32], 16))


def keyed_series_key(uid: str) -> str:
    return hmac.new(SECRET.encode(), uid.encode(), hashlib.sha256).hexdigest()[:16]


def cli(*argv: str) -> int:
    return main(["--no-progress", *argv])


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def walk_values(ds: pydicom.Dataset, keywords: set[str], found: set[str]) -> None:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                walk_values(item, keywords, found)
        elif elem.keyword in keywords and elem.value not in (None, ""):
            values = elem.value if isinstance(elem.value, pydicom.multival.MultiValue) else [elem.value]
            found.update(str(v) for v in values)
        elif elem.tag.is_private and elem.value not in (None, b"", ""):
            found.add(elem.value.decode() if isinstance(elem.value, bytes) else str(elem.value))


def input_values(folder: Path) -> set[str]:
    found: set[str] = set()
    for path in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        walk_values(ds.file_meta, set(WATCHED), found)
        walk_values(ds, set(WATCHED), found)
    return found


def leaks(out: Path, values: set[str]) -> dict[str, list[str]]:
    """{value: [files holding its bytes]} over every file under ``out``."""
    found: dict[str, list[str]] = {}
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".gz":  # NIfTI .nii.gz: its header and extensions are inside the gzip stream
                data += gzip.decompress(data)
            for value in values:
                if value.encode() in data:
                    found.setdefault(value, []).append(str(path.relative_to(out)))
    return found


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("phi") / "input"
    spec = SeriesSpec(n_slices=6, rows=24, columns=24, series_description=DESCRIPTION, patient_id=PATIENT_ID)
    paths = write_series(root / "ct", spec, tags=PATIENT)
    private = pydicom.dcmread(paths[0])  # one private element: removed under pseudonymise and drop
    private.add_new(0x00291010, "LO", PRIVATE_VALUE)
    private.save_as(paths[0], enforce_file_format=True)
    centre = np.array([0.0, 0.0, -50.0 + 2.5 * 3])
    square = centre + np.array([[-5, -5, 0], [5, -5, 0], [5, 5, 0], [-5, 5, 0]], dtype=float)
    (root / "rt").mkdir()
    write_rtstruct(root / "rt" / "RS.dcm", paths, {"lesion": [square]})
    datasets = [pydicom.dcmread(p) for p in paths]
    values = input_values(root)
    assert {PATIENT["PatientName"], PATIENT_ID, DESCRIPTION, PRIVATE_VALUE, spec.study_uid} <= values
    return {"root": root, "spec": spec, "paths": paths, "datasets": datasets, "values": values}


@pytest.fixture(scope="module")
def pseudonymised(study, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pseudo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VOXELPIPE_KEY_SECRET", SECRET)
        assert cli("scan", str(study["root"]), "--out", str(out / "manifest"), "--phi", "pseudonymise",
                   "--table-format", "parquet", "--workers", "1") == 0
        # convert inherits the manifest's choice (no --phi given)
        assert cli("convert", "--manifest", str(out / "manifest"), "--out", str(out / "zarr"), "--workers", "1") == 0
        assert cli("convert", "--manifest", str(out / "manifest" / "series_all.csv"), "--out", str(out / "nifti"),
                   "--format", "nifti", "--workers", "1") == 0
        assert cli("convert", str(study["root"]), "--out", str(out / "direct"), "--format", "hdf5",
                   "--phi", "pseudonymise", "--workers", "1") == 0
    return out


def test_grep_finds_values_when_kept(study, tmp_path):
    """The leak check itself: with --phi keep the values are in the outputs."""
    assert cli("scan", str(study["root"]), "--out", str(tmp_path / "m"), "--workers", "1") == 0
    found = leaks(tmp_path, study["values"])
    assert PATIENT["PatientName"] in found and PRIVATE_VALUE in found and study["spec"].series_uid in found


def test_no_input_value_in_any_pseudonymised_output(study, pseudonymised):
    files = [p for p in pseudonymised.rglob("*") if p.is_file()]
    assert any(p.name == "metadata.parquet" for p in files) and any(p.suffix == ".gz" for p in files)
    assert any(p.suffix == ".h5" for p in files) and any("zarr" in p.name for p in pseudonymised.rglob("*"))
    assert leaks(pseudonymised, study["values"]) == {}


def test_pseudonyms_are_the_keyed_hashes(study, pseudonymised):
    spec, datasets = study["spec"], study["datasets"]
    manifest = pseudonymised / "manifest"
    frame_uid = str(datasets[0].FrameOfReferenceUID)
    sop_of = {os.path.realpath(p): str(d.SOPInstanceUID) for p, d in zip(study["paths"], datasets)}
    meta = {os.path.realpath(r["path"]): r for r in read_rows(manifest / "metadata.csv")}
    for path, uid in sop_of.items():
        row = meta[path]
        assert row["SOP Instance UID (0008, 0018)"] == uid_pseudonym(uid)
        assert row["Media Storage SOP Instance UID (0002, 0003)"] == uid_pseudonym(uid)
        assert row["Study Instance UID (0020, 000D)"] == uid_pseudonym(spec.study_uid)
        assert row["Series Instance UID (0020, 000E)"] == uid_pseudonym(spec.series_uid)
        assert row["Frame of Reference UID (0020, 0052)"] == uid_pseudonym(frame_uid)
        assert row["Patient's Name (0010, 0010)"] == text_pseudonym(PATIENT["PatientName"])
        assert row["Patient ID (0010, 0020)"] == text_pseudonym(PATIENT_ID)
        assert row["Patient's Birth Date (0010, 0030)"] == text_pseudonym(PATIENT["PatientBirthDate"])
        assert row["Institution Name (0008, 0080)"] == text_pseudonym(PATIENT["InstitutionName"])
        assert row["Accession Number (0008, 0050)"] == text_pseudonym(PATIENT["AccessionNumber"])
        assert row["Study ID (0020, 0010)"] == text_pseudonym(PATIENT["StudyID"])
        assert row["Series Description (0008, 103E)"] == text_pseudonym(DESCRIPTION)
        assert row["Rows (0028, 0010)"] == "24"  # not in the profile: kept
        assert row["series_key"] == keyed_series_key(spec.series_uid)  # the key of the ORIGINAL UID
        assert not any(c.startswith("Private") for c in row)
    rt = next(r for p, r in meta.items() if p.endswith("RS.dcm"))
    nested = [v for c, v in rt.items() if "Referenced SOP Instance UID (0008, 1155)" in c]
    assert nested and set("/".join(nested).replace("DUPLICATE TAGS IN DICOM:", "").split("/")) <= (
        {uid_pseudonym(u) for u in sop_of.values()} | {uid_pseudonym(spec.study_uid)})

    series = read_rows(manifest / "series_all.csv")[0]
    assert series["series_key"] == keyed_series_key(spec.series_uid)
    assert series["series_instance_uid"] == uid_pseudonym(spec.series_uid)
    assert series["study_instance_uid"] == uid_pseudonym(spec.study_uid)
    assert series["frame_of_reference_uid"] == uid_pseudonym(frame_uid)
    assert series["series_description"] == text_pseudonym(DESCRIPTION)
    shard = [r for p in (manifest / "shards").iterdir() for r in read_rows(p)]
    assert shard == [series]
    for row in read_rows(manifest / "series_files.csv"):
        assert row["sop_instance_uid"] == uid_pseudonym(sop_of[os.path.realpath(row["path"])])
    obj = read_rows(manifest / "objects.csv")[0]
    assert obj["study_instance_uid"] == uid_pseudonym(spec.study_uid)
    assert obj["referenced_series_uids"] == uid_pseudonym(spec.series_uid)
    assert obj["referenced_series_keys"] == keyed_series_key(spec.series_uid)
    assert json.loads((manifest / "scan.json").read_text())["options"]["phi"] == "pseudonymise"

    key = keyed_series_key(spec.series_uid)
    expected = {"series_instance_uid": uid_pseudonym(spec.series_uid),
                "study_instance_uid": uid_pseudonym(spec.study_uid),
                "frame_of_reference_uid": uid_pseudonym(frame_uid), "series_description": text_pseudonym(DESCRIPTION)}
    attrs = dict(zarr.open_group(str(pseudonymised / "zarr" / "data" / f"{key}.zarr"), mode="r").attrs)
    meta_json = json.loads((pseudonymised / "zarr" / "meta" / f"{key}.series.json").read_text())
    for source in (attrs, meta_json):
        stored = source.get("voxelpipe", source)  # the attributes may sit under a namespace key
        assert {k: stored[k] for k in expected} == expected
    slices = read_rows(pseudonymised / "zarr" / "meta" / f"{key}.slices.csv")
    assert [r["sop_instance_uid"] for r in slices] == [uid_pseudonym(str(d.SOPInstanceUID)) for d in datasets]
    sidecar = json.loads((pseudonymised / "nifti" / "data" / f"{key}.json").read_text())
    assert sidecar["SeriesDescription"] == text_pseudonym(DESCRIPTION)


def test_drop_leaves_out_the_columns(study, tmp_path):
    out = tmp_path
    assert cli("scan", str(study["root"]), "--out", str(out / "manifest"), "--phi", "drop", "--workers", "1") == 0
    assert cli("convert", "--manifest", str(out / "manifest"), "--out", str(out / "zarr"), "--workers", "1") == 0
    assert leaks(out, study["values"]) == {}
    with open(out / "manifest" / "metadata.csv", newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    assert "Rows (0028, 0010)" in header and "path" in header
    assert not any(name in c for c in header for name in ("Patient's Name", "Patient ID", "Instance UID",
                                                          "Institution Name", "Private"))
    series = read_rows(out / "manifest" / "series_all.csv")[0]
    assert "series_instance_uid" not in series and series["series_key"] == hashlib.sha256(
        study["spec"].series_uid.encode()).hexdigest()[:16]
    assert "sop_instance_uid" not in read_rows(out / "manifest" / "series_files.csv")[0]
    key = series["series_key"]
    meta_json = json.loads((out / "zarr" / "meta" / f"{key}.series.json").read_text())
    assert not {"series_instance_uid", "study_instance_uid", "series_description"} & set(meta_json)


def test_pseudonymise_needs_a_secret(study, tmp_path):
    from voxelpipe.pipelines.scan import scan

    with pytest.raises(InputError, match="VOXELPIPE_KEY_SECRET"):
        scan(study["root"], out=tmp_path / "m", phi="pseudonymise", workers=1, progress=False)
    assert cli("scan", str(study["root"]), "--out", str(tmp_path / "m2"), "--phi", "pseudonymise") == 2


def test_profile_table_tags_and_keywords_agree_with_pydicom():
    """The table is written by hand: each (group, element) must be the tag of its keyword in the dictionary."""
    tags = [(group << 16) | element for group, element, _ in CONFIDENTIALITY_PROFILE]
    assert len(set(tags)) == len(tags) > 250
    for (_, _, keyword), tag in zip(CONFIDENTIALITY_PROFILE, tags):
        assert pydicom.datadict.keyword_for_tag(tag) == keyword, (hex(tag), keyword)
    assert {"PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "ReferringPhysicianName",
            "AccessionNumber", "StudyID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
            "FrameOfReferenceUID"} <= {keyword for _, _, keyword in CONFIDENTIALITY_PROFILE}
