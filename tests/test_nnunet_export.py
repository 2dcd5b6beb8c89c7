"""export-nnunet: the dataset passes nnU-Net v2's own verify_dataset_integrity, and nibabel / SimpleITK read back
the volume, the masks painted in label order and the geometry (computed here from the LPS geometry)."""
from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

import voxelpipe
from voxelpipe.cli import main
from voxelpipe.core.geometry import Geometry
from voxelpipe.core.masks import Mask
from voxelpipe.core.volume import Volume
from voxelpipe.stores.masks import open_masks, write_masks
from voxelpipe.stores.volumes import save_volume
from voxelpipe.testing.synthetic import phantom_hu

nib = pytest.importorskip("nibabel", reason="nibabel reads the exported NIfTI files")
sitk = pytest.importorskip("SimpleITK", reason="SimpleITK reads the exported NIfTI files as nnU-Net does")
verify = pytest.importorskip("nnunetv2.experiment_planning.verify_dataset_integrity",
                             reason="nnunetv2 (test extra) validates the exported dataset")

LABELS = ["body", "lesion", "core"]


def rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    """Rodrigues rotation matrix about unit ``axis``."""
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = np.radians(degrees)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def sphere(shape, centre, radius) -> np.ndarray:
    z, y, x = np.indices(shape)
    return (((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) <= radius ** 2).astype(np.uint8)


def make_volume(out: Path, key: str, shape, spacing, origin, direction, masks: dict[str, np.ndarray],
                modality: str = "CT", seed: int = 0) -> dict:
    """A convert-like ``out/data/<key>.zarr`` with ``masks``; returns the facts it was built from."""
    image = phantom_hu(*shape, seed=seed)
    geometry = Geometry(shape, spacing, origin, direction)
    path = out / "data" / f"{key}.zarr"
    save_volume(Volume(image, geometry), str(path), attrs={"series_key": key, "modality": modality})
    if masks:
        write_masks(str(path), [Mask(name, array) for name, array in masks.items()])
    return {"key": key, "image": image, "spacing": np.asarray(spacing, float), "origin": np.asarray(origin, float),
            "direction": np.asarray(direction, float), "masks": masks, "path": path}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    """Three volumes: an axial one and an oblique one with every label (overlapping), one lacking ``core``."""
    out = tmp_path_factory.mktemp("convert")
    shape = (12, 40, 48)
    body = np.zeros(shape, np.uint8)
    body[2:10, 5:35, 6:42] = 1
    lesion = sphere(shape, (6, 20, 24), 5)
    core = sphere(shape, (6, 22, 26), 3)
    axial = make_volume(out, "a1b2c3d4e5f60718", shape, (2.5, 0.8, 0.9), (-20.0, -16.0, -30.0),
                        np.eye(3)[:, [2, 1, 0]], {"body": body, "lesion": lesion, "core": core})
    oblique_dir = rotation([1, 2, 0.5], 20) @ np.eye(3)[:, [2, 1, 0]]
    oblique = make_volume(out, "0f1e2d3c4b5a6978", shape, (3.0, 0.7, 0.7), (10.0, -50.0, 80.0), oblique_dir,
                          {"core": sphere(shape, (5, 10, 10), 4), "lesion": sphere(shape, (5, 12, 12), 6),
                           "body": body, "other": sphere(shape, (2, 2, 2), 2)}, seed=1)
    partial = make_volume(out, "ffff0000ffff0000", shape, (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3)[:, [2, 1, 0]],
                          {"body": body, "lesion": lesion}, seed=2)
    return {"out": out, "volumes": [axial, oblique], "partial": partial}


def expected_label(masks: dict[str, np.ndarray]) -> np.ndarray:
    """The masks painted in LABELS order: label i+1 where mask i is set, later ones on top."""
    label = np.zeros(next(iter(masks.values())).shape, np.uint8)
    for number, name in enumerate(LABELS, start=1):
        label[np.asarray(masks[name]) > 0] = number
    return label


def expected_ras_affine(facts: dict, rows: int) -> np.ndarray:
    """NIfTI (i, j, k) = (column, rows-1-row, slice) -> RAS mm, from spacing, origin and direction (LPS)."""
    lps = np.eye(4)
    lps[:3, :3] = facts["direction"] * facts["spacing"]
    lps[:3, 3] = facts["origin"]
    index = np.zeros((4, 4))  # (i, j, k, 1) -> (slice, row, column, 1)
    index[0, 2] = 1
    index[1, 1] = -1
    index[1, 3] = rows - 1
    index[2, 0] = 1
    index[3, 3] = 1
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps @ index


def read_rows(path: Path) -> dict[str, dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["case"]: row for row in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def exported(study, tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("raw")
    code = main(["--no-progress", "export-nnunet", str(study["out"]), "--dataset-id", "501", "--name", "Phantom",
                 "--labels", ",".join(LABELS), "--out", str(raw)])
    assert code == 0
    return raw / "Dataset501_Phantom"


def test_nnunet_verifies_the_dataset(exported, capsys):
    verify.verify_dataset_integrity(str(exported), num_processes=1)  # raises on any problem
    printed = capsys.readouterr().out
    assert "Error" not in printed and "Warning" not in printed


def test_dataset_json(exported, study):
    with open(exported / "dataset.json", encoding="utf-8") as fh:
        description = json.load(fh)
    assert description["channel_names"] == {"0": "CT"}
    assert description["labels"] == {"background": 0, "body": 1, "lesion": 2, "core": 3}
    assert list(description["labels"]) == ["background", *LABELS]
    assert description["numTraining"] == 2 and description["file_ending"] == ".nii.gz"
    assert sorted(os.listdir(exported / "imagesTr")) == sorted(f"{v['key']}_0000.nii.gz" for v in study["volumes"])
    assert sorted(os.listdir(exported / "labelsTr")) == sorted(f"{v['key']}.nii.gz" for v in study["volumes"])


def test_summary_rows(exported, study):
    rows = read_rows(exported / "export_summary.csv")
    assert {k: r["status"] for k, r in rows.items()} == {study["volumes"][0]["key"]: "done",
                                                          study["volumes"][1]["key"]: "done",
                                                          study["partial"]["key"]: "skipped"}
    reason = rows[study["partial"]["key"]]["reason"]
    assert "core" in reason and "no mask" in reason
    for facts in study["volumes"]:
        row = rows[facts["key"]]
        assert row["series_key"] == facts["key"]
        painted = expected_label(facts["masks"])
        assert row["label_voxels"] == ";".join(f"{n}:{int((painted == i).sum())}"
                                               for i, n in enumerate(LABELS, start=1))


@pytest.mark.parametrize("which", [0, 1])
def test_nibabel_reads_volume_labels_and_affine(exported, study, which):
    facts = study["volumes"][which]
    rows = facts["image"].shape[1]
    image = nib.load(exported / "imagesTr" / f"{facts['key']}_0000.nii.gz")
    label = nib.load(exported / "labelsTr" / f"{facts['key']}.nii.gz")
    # NIfTI (i, j, k) = (column, row reversed, slice): the (slice, row, column) array transposed, rows flipped
    expect_image = np.transpose(facts["image"][:, ::-1, :], (2, 1, 0))
    expect_label = np.transpose(expected_label(facts["masks"])[:, ::-1, :], (2, 1, 0))
    np.testing.assert_array_equal(np.asarray(image.dataobj), expect_image)
    assert np.asarray(image.dataobj).dtype == np.int16
    np.testing.assert_array_equal(np.asarray(label.dataobj), expect_label)
    assert label.get_data_dtype() == np.uint8
    affine = expected_ras_affine(facts, rows)
    np.testing.assert_allclose(image.affine, affine, atol=1e-5)
    np.testing.assert_allclose(label.affine, affine, atol=1e-5)
    assert np.array_equal(image.header.get_sform(), label.header.get_sform())
    assert np.array_equal(image.header.get_qform(), label.header.get_qform())


@pytest.mark.parametrize("which", [0, 1])
def test_simpleitk_reads_volume_labels_and_geometry(exported, study, which):
    facts = study["volumes"][which]
    rows = facts["image"].shape[1]
    image = sitk.ReadImage(str(exported / "imagesTr" / f"{facts['key']}_0000.nii.gz"))
    label = sitk.ReadImage(str(exported / "labelsTr" / f"{facts['key']}.nii.gz"))
    # SimpleITK's array is (k, j, i) = (slice, row reversed, column)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), facts["image"][:, ::-1, :])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), expected_label(facts["masks"])[:, ::-1, :])
    spacing, direction = facts["spacing"], facts["direction"]
    # SimpleITK reports LPS: its origin is the centre of voxel (slice 0, last row, column 0)
    origin = facts["origin"] + direction[:, 1] * spacing[1] * (rows - 1)
    columns = np.stack([direction[:, 2], -direction[:, 1], direction[:, 0]], axis=1)  # i, j, k axes in LPS
    for read in (image, label):
        np.testing.assert_allclose(read.GetSpacing(), spacing[::-1], atol=1e-5)
        np.testing.assert_allclose(read.GetOrigin(), origin, atol=1e-4)
        np.testing.assert_allclose(np.reshape(read.GetDirection(), (3, 3)), columns, atol=1e-5)


def test_overlap_goes_to_the_later_label(exported, study):
    facts = study["volumes"][0]
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(exported / "labelsTr" / f"{facts['key']}.nii.gz")))
    label = label[:, ::-1, :]  # back to (slice, row, column)
    masks = facts["masks"]
    both = (masks["lesion"] > 0) & (masks["core"] > 0)
    assert both.any() and np.all(label[both] == 3)
    lesion_only = (masks["lesion"] > 0) & (masks["core"] == 0)
    assert np.all(label[lesion_only] == 2)
    assert np.all(label[(masks["body"] > 0) & (masks["lesion"] == 0) & (masks["core"] == 0)] == 1)
    assert np.all(label[(masks["body"] == 0) & (masks["lesion"] == 0) & (masks["core"] == 0)] == 0)


def test_rerun_skips_complete_cases_and_overwrite_redoes(study, tmp_path, capsys):
    args = ["--no-progress", "export-nnunet", str(study["out"]), "--dataset-id", "502", "--name", "Again",
            "--labels", ",".join(LABELS), "--out", str(tmp_path)]
    assert main(args) == 0
    dataset = tmp_path / "Dataset502_Again"
    image = dataset / "imagesTr" / f"{study['volumes'][0]['key']}_0000.nii.gz"
    first = image.stat().st_mtime_ns
    assert main(args) == 0
    rows = read_rows(dataset / "export_summary.csv")
    assert [rows[v["key"]]["reason"] for v in study["volumes"]] == ["already complete"] * 2
    assert all(rows[v["key"]]["status"] == "skipped" for v in study["volumes"])
    assert image.stat().st_mtime_ns == first
    # a case cut short is redone
    label = dataset / "labelsTr" / f"{study['volumes'][1]['key']}.nii.gz"
    label.write_bytes(label.read_bytes()[:100])
    assert main(args) == 0
    rows = read_rows(dataset / "export_summary.csv")
    assert rows[study["volumes"][1]["key"]]["status"] == "done"
    assert rows[study["volumes"][0]["key"]]["status"] == "skipped"
    assert main([*args, "--overwrite"]) == 0
    rows = read_rows(dataset / "export_summary.csv")
    assert all(rows[v["key"]]["status"] == "done" for v in study["volumes"])
    verify.verify_dataset_integrity(str(dataset), num_processes=1)
    capsys.readouterr()


def test_bad_requests_exit_2(study, tmp_path, caplog):
    base = ["--no-progress", "export-nnunet", str(study["out"]), "--out", str(tmp_path)]
    with caplog.at_level(logging.ERROR, logger="voxelpipe"):
        assert main([*base, "--dataset-id", "1000", "--name", "X", "--labels", "body"]) == 2
        assert main([*base, "--dataset-id", "503", "--name", "bad name", "--labels", "body"]) == 2
        assert main([*base, "--dataset-id", "503", "--name", "X", "--labels", "background,body"]) == 2
        assert main([*base, "--dataset-id", "503", "--name", "X", "--labels", "body,body"]) == 2
        assert main([*base, "--dataset-id", "503", "--name", "X", "--labels", "body", "--channels", "PET,CT"]) == 2
    assert not (tmp_path / "Dataset503_X").exists()
    # the same dataset again with other labels: refused (its label maps hold the old numbers)
    assert main([*base, "--dataset-id", "504", "--name", "Y", "--labels", "body,lesion"]) == 0
    with caplog.at_level(logging.ERROR, logger="voxelpipe"):
        assert main([*base, "--dataset-id", "504", "--name", "Y", "--labels", "lesion,body"]) == 2
        assert "labels" in caplog.text
        # another name with the same id: nnU-Net could not tell the two apart
        assert main([*base, "--dataset-id", "504", "--name", "Z", "--labels", "body"]) == 2
    assert main([*base, "--dataset-id", "504", "--name", "Y", "--labels", "lesion,body", "--overwrite"]) == 0
    with open(tmp_path / "Dataset504_Y" / "dataset.json", encoding="utf-8") as fh:
        assert json.load(fh)["labels"] == {"background": 0, "lesion": 1, "body": 2}


def test_mixed_modalities_need_a_channel_name(study, tmp_path, caplog):
    source = tmp_path / "convert"
    shutil.copytree(study["out"] / "data", source / "data")
    shape = study["volumes"][0]["image"].shape
    make_volume(source, "1234567890abcdef", shape, (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3)[:, [2, 1, 0]],
                {"lesion": sphere(shape, (5, 20, 20), 4)}, modality="MR")
    base = ["--no-progress", "export-nnunet", str(source), "--dataset-id", "508", "--name", "Mixed", "--labels",
            "lesion", "--out", str(tmp_path / "raw")]
    with caplog.at_level(logging.ERROR, logger="voxelpipe"):
        assert main(base) == 2
    assert "--channels" in caplog.text and "'MR'" in caplog.text
    assert not (tmp_path / "raw" / "Dataset508_Mixed").exists()
    assert main([*base, "--channels", "image"]) == 0
    with open(tmp_path / "raw" / "Dataset508_Mixed" / "dataset.json", encoding="utf-8") as fh:
        description = json.load(fh)
    assert description["channel_names"] == {"0": "image"} and description["numTraining"] == 4


def test_channel_name_given(study, tmp_path):
    assert main(["--no-progress", "export-nnunet", str(study["out"]), "--dataset-id", "505", "--name", "Named",
                 "--labels", "lesion", "--channels", "noncontrastCT", "--out", str(tmp_path)]) == 0
    dataset = tmp_path / "Dataset505_Named"
    with open(dataset / "dataset.json", encoding="utf-8") as fh:
        description = json.load(fh)
    assert description["channel_names"] == {"0": "noncontrastCT"} and description["numTraining"] == 3


def test_default_out_is_nnunet_raw_env_or_inside_the_convert_folder(study, tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "env_raw"))
    assert main(["--no-progress", "export-nnunet", str(study["out"]), "--dataset-id", "506", "--name", "Env",
                 "--labels", "lesion"]) == 0
    assert (tmp_path / "env_raw" / "Dataset506_Env" / "dataset.json").is_file()
    monkeypatch.delenv("nnUNet_raw")
    assert main(["--no-progress", "export-nnunet", str(study["out"]), "--dataset-id", "506", "--name", "Env",
                 "--labels", "lesion"]) == 0
    assert (study["out"] / "nnUNet_raw" / "Dataset506_Env" / "dataset.json").is_file()


@pytest.mark.slow
def test_nsclc_ct_rtstruct(shared_data, tmp_path, capsys):
    folder = shared_data / "nsclc-lung1-001"
    voxelpipe.scan(str(folder), out=str(tmp_path / "scan"), workers=1, progress=False)
    voxelpipe.convert(manifest=str(tmp_path / "scan" / "series_all.csv"), out=str(tmp_path / "out"), workers=1,
                      progress=False)
    assert main(["--no-progress", "masks", "--manifest", str(tmp_path / "scan"), "--out", str(tmp_path / "out")]) == 0
    labels = ["Lung-Left", "Lung-Right", "GTV-1"]
    assert main(["--no-progress", "export-nnunet", str(tmp_path / "out"), "--dataset-id", "510", "--name", "LUNG1",
                 "--labels", ",".join(labels), "--out", str(tmp_path / "raw")]) == 0
    dataset = tmp_path / "raw" / "Dataset510_LUNG1"
    capsys.readouterr()
    verify.verify_dataset_integrity(str(dataset), num_processes=1)
    printed = capsys.readouterr().out
    assert "Error" not in printed and "Warning" not in printed
    with open(dataset / "dataset.json", encoding="utf-8") as fh:
        description = json.load(fh)
    assert description["channel_names"] == {"0": "CT"} and description["numTraining"] == 1
    # the source read back: the converted volume (plain zarr) and its masks (open_masks, wherever the store keeps
    # them); the export read with SimpleITK and nibabel
    (store,) = (tmp_path / "out" / "data").glob("*.zarr")
    group = zarr.open_group(str(store), mode="r")
    volume = np.asarray(group["image"][...])
    attrs = dict(group.attrs)
    key = store.name.split(".")[0]
    masks = {name: np.asarray(array[...]) for name, array in open_masks(str(store)).items() if name in labels}
    image = sitk.ReadImage(str(dataset / "imagesTr" / f"{key}_0000.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), volume[:, ::-1, :])
    label = nib.load(dataset / "labelsTr" / f"{key}.nii.gz")
    painted = np.zeros(volume.shape, np.uint8)
    for number, name in enumerate(labels, start=1):
        painted[masks[name] > 0] = number
    np.testing.assert_array_equal(np.asarray(label.dataobj), np.transpose(painted[:, ::-1, :], (2, 1, 0)))
    facts = {"spacing": np.asarray(attrs["spacing"]), "origin": np.asarray(attrs["origin"]),
             "direction": np.asarray(attrs["direction"])}
    np.testing.assert_allclose(label.affine, expected_ras_affine(facts, volume.shape[1]), atol=1e-4)
    np.testing.assert_allclose(nib.load(dataset / "imagesTr" / f"{key}_0000.nii.gz").affine, label.affine)
    assert set(np.unique(painted)) == {0, 1, 2, 3}
    rows = read_rows(dataset / "export_summary.csv")
    assert rows[key]["status"] == "done"


def test_an_unreadable_volume_fails_its_row_only(study, tmp_path, capsys):
    source = tmp_path / "convert"
    shutil.copytree(study["out"] / "data", source / "data")
    broken = study["volumes"][0]["key"]
    chunks = sorted(p for p in (source / "data" / f"{broken}.zarr" / "image").rglob("*")
                    if p.is_file() and p.name != "zarr.json")
    assert chunks
    chunks[0].write_bytes(b"not a blosc chunk")
    assert main(["--no-progress", "export-nnunet", str(source), "--dataset-id", "507", "--name", "Broken",
                 "--labels", ",".join(LABELS), "--out", str(tmp_path / "raw")]) == 1
    assert f"failed {broken}" in capsys.readouterr().out
    dataset = tmp_path / "raw" / "Dataset507_Broken"
    rows = read_rows(dataset / "export_summary.csv")
    assert rows[broken]["status"] == "failed" and rows[broken]["reason"]
    assert rows[study["volumes"][1]["key"]]["status"] == "done"
    with open(dataset / "dataset.json", encoding="utf-8") as fh:
        assert json.load(fh)["numTraining"] == 1
    assert os.listdir(dataset / "labelsTr") == [f"{study['volumes'][1]['key']}.nii.gz"]  # no half case left
    assert os.listdir(dataset / "imagesTr") == [f"{study['volumes'][1]['key']}_0000.nii.gz"]
