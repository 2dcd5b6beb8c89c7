"""petct-index: study discovery in PROJECT/<patient>/<study>/, subject IDs, incomplete studies, private mapping,
CLI and the zipped NIfTI export. The project is written with voxelpipe.testing.synthetic; expected values (series UIDs,
subject IDs via hashlib/hmac) come from what was written, never from the index itself."""
from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from voxelpipe.core.keys import subject_id
from voxelpipe.stores.tables import read_csv
from voxelpipe.testing.synthetic import ROOT_UID, SeriesSpec, write_petct_study, write_series

SMALL = dict(ct_shape=(8, 16, 16), ct_spacing=(3.0, 2.0, 2.0), pet_shape=(6, 8, 8), pet_spacing=(4.0, 4.0, 4.0),
             sphere_lps=(2.0, -1.0, 0.0), sphere_radius_mm=6.0)


# ------------------------------------------------------------------------------------------------------------
# subject_id
# ------------------------------------------------------------------------------------------------------------
def test_subject_id_is_sha256_prefix_and_suffix():
    patient, study = "PAT-0001", "1.2.826.0.1.3680043.10.1492.77"
    expected = hashlib.sha256(b"PAT-0001").hexdigest()[:7] + \
        hashlib.sha256(b"1.2.826.0.1.3680043.10.1492.77").hexdigest()[-3:]
    assert subject_id(patient, study) == expected
    assert len(expected) == 10


def test_subject_id_with_secret_is_hmac(monkeypatch):
    patient, study = "Doe^Jane", "1.2.3.4.5"
    expected = hmac.new(b"s3cret", b"Doe^Jane", hashlib.sha256).hexdigest()[:7] + \
        hmac.new(b"s3cret", b"1.2.3.4.5", hashlib.sha256).hexdigest()[-3:]
    assert subject_id(patient, study, secret="s3cret") == expected
    monkeypatch.setenv("VOXELPIPE_KEY_SECRET", "s3cret")
    assert subject_id(patient, study) == expected
    monkeypatch.delenv("VOXELPIPE_KEY_SECRET")
    assert subject_id(patient, study) != expected


# ------------------------------------------------------------------------------------------------------------
# the synthetic project
# ------------------------------------------------------------------------------------------------------------
def _resave_as_new_series(paths: list[str], folder: Path, edit) -> tuple[str, list[str]]:
    """Copy a series into ``folder`` with a new SeriesInstanceUID and SOP UIDs, applying ``edit(ds)``."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid(ROOT_UID)
    out = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(ROOT_UID)
        edit(ds)
        target = folder / os.path.basename(path)
        ds.save_as(target, enforce_file_format=True)
        out.append(str(target))
    return series_uid, out


def _sid(patient: str, study_uid: str) -> str:
    return hashlib.sha256(patient.encode()).hexdigest()[:7] + hashlib.sha256(study_uid.encode()).hexdigest()[-3:]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("petct_project") / "project"
    facts: dict[str, dict] = {}

    # P001/ST1: complete, RTSTRUCT; plus a non-attenuation-corrected PET and a shorter CT to choose against
    study = root / "P001" / "ST1"
    info = write_petct_study(study, seed=1, patient_id="PID-001", **SMALL)
    nac_uid, _ = _resave_as_new_series(info["pet_files"], study / "PT_NAC",
                                       lambda ds: setattr(ds, "CorrectedImage", ["DECY"]))
    short = SeriesSpec(n_slices=4, rows=16, columns=16, spacing=(6.0, 2.0, 2.0), origin=(-15.0, -15.0, -10.0),
                       patient_id="PID-001", study_uid=info["study_uid"], series_description="CT 6 mm", seed=5)
    write_series(study / "CT_6mm", short)
    facts["P001/ST1"] = {**info, "nac_uid": nac_uid, "short_ct_uid": short.series_uid}

    # P001/ST2: no PET
    study = root / "P001" / "ST2"
    info = write_petct_study(study, seed=2, patient_id="PID-001", **SMALL)
    shutil.rmtree(info["pet_dir"])
    facts["P001/ST2"] = info

    # P002/ST1: no mask
    facts["P002/ST1"] = write_petct_study(root / "P002" / "ST1", seed=3, patient_id="PID-002", mask="none", **SMALL)

    # P003/ST1: SEG, every part nested in sub-folders
    study = root / "P003" / "ST1"
    staging = root.parent / "staging_p003"
    info = write_petct_study(staging, seed=4, patient_id="PID-003", mask="SEG", **SMALL)
    (study / "a" / "b").mkdir(parents=True)
    (study / "x").mkdir(parents=True)
    (study / "y" / "z").mkdir(parents=True)
    shutil.move(info["ct_dir"], study / "a" / "b" / "CT")
    shutil.move(info["pet_dir"], study / "x" / "PT")
    shutil.move(info["mask_path"], study / "y" / "z" / "SEG.dcm")
    facts["P003/ST1"] = {**info, "mask_path": str(study / "y" / "z" / "SEG.dcm")}

    # P004/ST1: no RTSTRUCT/SEG but a label volume (more slices than the CT: must not be taken as the CT)
    study = root / "P004" / "ST1"
    info = write_petct_study(study, seed=6, patient_id="PID-004", mask="none", **SMALL)
    label = SeriesSpec(n_slices=12, rows=16, columns=16, spacing=(2.0, 2.0, 2.0), origin=(-15.0, -15.0, -12.0),
                       patient_id="PID-004", study_uid=info["study_uid"], series_description="GTV Label Mask",
                       slope=1.0, intercept=0.0, seed=6)
    label_array = np.zeros((12, 16, 16), np.int16)
    label_array[4:8, 6:10, 6:10] = 1
    write_series(study / "LABEL", label, hu=label_array)
    facts["P004/ST1"] = {**info, "label_uid": label.series_uid}

    # P005/ST1: an empty study folder
    (root / "P005" / "ST1").mkdir(parents=True)

    # P006/ST1: no PatientID -> PatientName; P007/ST1: neither -> the patient folder name
    facts["P006/ST1"] = write_petct_study(root / "P006" / "ST1", seed=7, patient_id="", patient_name="Doe^John",
                                          **SMALL)
    facts["P007/ST1"] = write_petct_study(root / "P007" / "ST1", seed=8, patient_id="", patient_name="", **SMALL)

    # P008/ST1: a copy of P001/ST1 (same PatientID and StudyInstanceUID)
    shutil.copytree(root / "P001" / "ST1", root / "P008" / "ST1")

    # P009: a file directly in the patient folder, no study folder
    (root / "P009").mkdir()
    shutil.copy(facts["P002/ST1"]["ct_files"][0], root / "P009" / "stray.dcm")
    return {"root": root, "facts": facts}


@pytest.fixture(scope="module")
def indexed(project, tmp_path_factory):
    from voxelpipe.apps.petct.index import index_project

    out = tmp_path_factory.mktemp("index")
    rows, incomplete = index_project(project["root"], out / "INDEX.csv", workers=1, progress=False)
    return {"rows": rows, "incomplete": incomplete, "out": out}


def _by_study(rows):
    return {f"{os.path.basename(r['patient_dir'])}/{os.path.basename(r['study_dir'])}": r for r in rows}


def test_complete_studies_name_the_written_series(project, indexed):
    facts = project["facts"]
    rows = _by_study(indexed["rows"])
    assert sorted(rows) == ["P001/ST1", "P003/ST1", "P004/ST1", "P006/ST1", "P007/ST1"]
    root = project["root"]
    for name, row in rows.items():
        info = facts[name]
        assert row["ct_series_uid"] == info["ct_series_uid"], name
        assert row["pet_series_uid"] == info["pet_series_uid"], name
        assert row["study_instance_uid"] == info["study_uid"]
        assert row["n_ct_files"] == len(info["ct_files"]) and row["n_pet_files"] == len(info["pet_files"])
        assert row["patient_dir"] == str((root / name.split("/")[0]).resolve())
        assert row["study_dir"] == str((root / name).resolve())
    assert rows["P001/ST1"]["pet_series_uid"] != facts["P001/ST1"]["nac_uid"]  # attenuation-corrected wins
    assert rows["P001/ST1"]["mask_kind"] == "RTSTRUCT"
    assert os.path.samefile(rows["P001/ST1"]["mask_path"], facts["P001/ST1"]["mask_path"])
    assert rows["P001/ST1"]["mask_series_uid"] == ""
    assert rows["P003/ST1"]["mask_kind"] == "SEG"
    assert os.path.samefile(rows["P003/ST1"]["mask_path"], facts["P003/ST1"]["mask_path"])
    assert rows["P004/ST1"]["mask_kind"] == "LABEL" and rows["P004/ST1"]["mask_path"] == ""
    assert rows["P004/ST1"]["mask_series_uid"] == facts["P004/ST1"]["label_uid"]


def test_subject_ids_from_patient_id_then_name_then_folder(project, indexed):
    facts = project["facts"]
    rows = _by_study(indexed["rows"])
    assert rows["P001/ST1"]["subject_id"] == _sid("PID-001", facts["P001/ST1"]["study_uid"])
    assert rows["P003/ST1"]["subject_id"] == _sid("PID-003", facts["P003/ST1"]["study_uid"])
    assert rows["P006/ST1"]["subject_id"] == _sid("Doe^John", facts["P006/ST1"]["study_uid"])
    assert rows["P007/ST1"]["subject_id"] == _sid("P007", facts["P007/ST1"]["study_uid"])


def test_incomplete_studies_say_what_is_missing(project, indexed):
    from voxelpipe.apps.petct.index import INCOMPLETE_COLUMNS

    path = indexed["out"] / "INDEX_incomplete.csv"
    table = read_csv(path)
    assert list(table[0]) == INCOMPLETE_COLUMNS
    by = {f"{os.path.basename(r['patient_dir'])}/{os.path.basename(r['study_dir'])}": r for r in table}
    assert sorted(by) == ["P001/ST2", "P002/ST1", "P005/ST1", "P008/ST1", "P009/"]
    assert by["P001/ST2"]["missing"] == "PET"
    assert (by["P001/ST2"]["has_ct"], by["P001/ST2"]["has_pet"], by["P001/ST2"]["has_mask"]) == \
        ("True", "False", "True")
    assert by["P002/ST1"]["missing"] == "mask" and by["P002/ST1"]["has_mask"] == "False"
    assert by["P005/ST1"]["missing"] == "CT;PET;mask" and "no files" in by["P005/ST1"]["note"]
    assert by["P008/ST1"]["missing"] == "unique subject_id" and "P001" in by["P008/ST1"]["note"]
    assert by["P009/"]["missing"] == "study folder" and "1 file" in by["P009/"]["note"]


def test_index_csv_has_the_fixed_columns_and_no_mapping_unless_asked(indexed):
    from voxelpipe.apps.petct.index import INDEX_COLUMNS

    table = read_csv(indexed["out"] / "INDEX.csv")
    assert list(table[0]) == INDEX_COLUMNS and len(table) == 5
    assert sorted(os.listdir(indexed["out"])) == ["INDEX.csv", "INDEX_incomplete.csv"]
    text = (indexed["out"] / "INDEX.csv").read_text()
    assert "PID-00" not in text and "Doe^John" not in text  # no patient IDs or names in the index


def test_choices_are_noted(project):
    from voxelpipe.apps.petct import index as petct_index
    from voxelpipe.apps.petct.index import StudyFolder, classify_study, scan_study

    root = project["root"]
    study = scan_study(StudyFolder(str(root / "P001"), str(root / "P001" / "ST1")), workers=1)

    ct, ct_notes = petct_index.choose_ct(study)
    pet, pet_notes = petct_index.choose_pet(study)
    assert ct["series_instance_uid"] == project["facts"]["P001/ST1"]["ct_series_uid"]
    assert "CT: 2 series" in ct_notes[0] and "PET: 2 series" in pet_notes[0]
    row, bad, private = classify_study(study)
    assert bad is None and private["patient_id"] == "PID-001"


def test_cli_writes_mapping_only_when_asked(project, tmp_path, capsys):
    from voxelpipe.cli.app import main

    out = tmp_path / "idx" / "INDEX.csv"
    mapping = tmp_path / "private" / "map.csv"
    code = main(["--no-progress", "petct-index", str(project["root"]), "--out", str(out), "--workers", "1",
                 "--mapping", str(mapping)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "5 complete" in printed and "5 incomplete" in printed and "map.csv" in printed
    table = read_csv(mapping)
    index = read_csv(out)
    assert [r["subject_id"] for r in table] == [r["subject_id"] for r in index]
    by_id = {r["subject_id"]: r for r in table}
    p1 = next(r for r in index if r["study_dir"].endswith(os.path.join("P001", "ST1")))
    assert by_id[p1["subject_id"]]["patient_id"] == "PID-001"
    assert by_id[p1["subject_id"]]["study_instance_uid"] == project["facts"]["P001/ST1"]["study_uid"]
    assert by_id[p1["subject_id"]]["study_dir"] == p1["study_dir"]


def test_cli_secret_from_environment(project, tmp_path, monkeypatch):
    from voxelpipe.cli.app import main

    monkeypatch.setenv("VOXELPIPE_KEY_SECRET", "k3y")
    out = tmp_path / "INDEX.csv"
    assert main(["--no-progress", "petct-index", str(project["root"] / ".." / "project"), "--out", str(out),
                 "--workers", "1"]) == 0
    p1 = next(r for r in read_csv(out) if r["study_dir"].endswith(os.path.join("P001", "ST1")))
    study_uid = project["facts"]["P001/ST1"]["study_uid"]
    assert p1["subject_id"] == hmac.new(b"k3y", b"PID-001", hashlib.sha256).hexdigest()[:7] + \
        hmac.new(b"k3y", study_uid.encode(), hashlib.sha256).hexdigest()[-3:]


def test_not_a_project_folder_is_a_clear_error(tmp_path):
    from voxelpipe.cli.app import main

    assert main(["--no-progress", "petct-index", str(tmp_path / "nope"), "--out", str(tmp_path / "i.csv")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["--no-progress", "petct-index", str(tmp_path / "empty"), "--out", str(tmp_path / "i.csv")]) == 1
    assert read_csv(tmp_path / "i.csv") == []


# ------------------------------------------------------------------------------------------------------------
# --export-zip
# ------------------------------------------------------------------------------------------------------------
def _load_subject():
    try:
        from voxelpipe.apps.petct.pipeline import load_subject
    except ImportError:
        pytest.skip("voxelpipe.apps.petct.pipeline.load_subject not available yet")
    return load_subject


def test_export_zip_round_trip(project, tmp_path):
    pytest.importorskip("nibabel")
    load_subject = _load_subject()
    from voxelpipe.apps.petct.index import index_project
    from voxelpipe.stores.nifti import read_nifti

    source = tmp_path / "project"
    for name in ("P001", "P003", "P004"):  # RTSTRUCT, nested SEG, label volume
        shutil.copytree(project["root"] / name, source / name)
    zpath = tmp_path / "out" / "project.zip"
    rows, _ = index_project(source, tmp_path / "out" / "INDEX.csv", export_zip=zpath, workers=1, progress=False)
    assert sorted(r["mask_kind"] for r in rows) == ["LABEL", "RTSTRUCT", "SEG"]
    with zipfile.ZipFile(zpath) as archive:
        names = sorted(archive.namelist())
        expected = sorted(f"{r['subject_id']}/{r['subject_id']}_{part}.nii.gz" for r in rows
                          for part in ("ct", "petsuv", "mask"))
        assert names == expected
        for row in rows:
            sid = row["subject_id"]
            subject = load_subject(dict(row))
            for part, volume in (("ct", subject.ct), ("petsuv", subject.pet), ("mask", subject.mask)):
                back = read_nifti(archive.read(f"{sid}/{sid}_{part}.nii.gz"), name=part)
                assert back.shape == volume.shape
                np.testing.assert_array_equal(back.numpy(), np.asarray(volume.numpy()), err_msg=f"{sid} {part}")
                assert back.dtype == np.asarray(volume.numpy()).dtype
                np.testing.assert_allclose(back.geometry.affine, volume.geometry.affine, atol=1e-4)
            assert subject.mask.numpy().any()
    assert not [n for n in os.listdir(zpath.parent) if n.startswith(".tmp-")]


def test_export_zip_affines_match_the_dicom_geometry(project, tmp_path):
    nib = pytest.importorskip("nibabel")
    _load_subject()
    from voxelpipe.apps.petct.index import index_project
    from voxelpipe.core.geometry import geometry_from_slices

    source = tmp_path / "project"
    shutil.copytree(project["root"] / "P001", source / "P001")
    zpath = tmp_path / "project.zip"
    rows, _ = index_project(source, tmp_path / "INDEX.csv", export_zip=zpath, workers=1, progress=False)
    sid = rows[0]["subject_id"]
    info = project["facts"]["P001/ST1"]
    # the geometry of the written CT / PET from their own ImagePositionPatient, not from voxelpipe's readers
    for part, files in (("ct", info["ct_files"]), ("petsuv", info["pet_files"])):
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
        iop = [float(v) for v in headers[0].ImageOrientationPatient]
        normal = np.cross(iop[:3], iop[3:])
        headers.sort(key=lambda d: float(np.asarray(d.ImagePositionPatient, float) @ normal))
        ipps = np.array([[float(v) for v in d.ImagePositionPatient] for d in headers])
        expected = geometry_from_slices(ipps, iop, [float(v) for v in headers[0].PixelSpacing],
                                        (len(headers), int(headers[0].Rows), int(headers[0].Columns)))
        with zipfile.ZipFile(zpath) as archive:
            data = archive.read(f"{sid}/{sid}_{part}.nii.gz")
        (tmp_path / f"{part}.nii.gz").write_bytes(data)
        image = nib.load(str(tmp_path / f"{part}.nii.gz"))
        assert image.shape == expected.shape
        np.testing.assert_allclose(image.affine, expected.affine_ras, atol=1e-3)
