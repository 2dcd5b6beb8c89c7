"""The lung pipeline (voxelpipe.apps.lung.pipeline) on synthetic chest phantoms written as CT DICOM.

Facts come from what was written (voxelpipe.testing.synthetic.chest_phantom: volume, geometry, nodule centres), never
from the pipeline's own outputs. Three folders: ``patient_alpha`` (phantom with the two default nodules: a 10 mm one
inside the right lung, a 12 mm juxtapleural one), ``patient_beta`` (no nodule), ``broken_gamma`` (CT files
without ImagePositionPatient: no geometry, so no volume).
"""
from __future__ import annotations

import csv
import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pydicom
import pytest

from voxelpipe.apps.lung.pipeline import SUMMARY_COLUMNS, run_lung, stage_dirs
from voxelpipe.core.geometry import Geometry
from voxelpipe.core.keys import series_key
from voxelpipe.ops.resample import resample
from voxelpipe.testing.synthetic import SeriesSpec, chest_phantom, write_series

pytest.importorskip("voxelpipe.apps.lung.segment")

SHAPE = (48, 96, 96)  # input CT: 3 mm slices, 2.5 mm pixels -> 72 x 120 x 120 at 2 mm
SPACING_IN = (3.0, 2.5, 2.5)
NPZ_GEOMETRY = {"array", "spacing", "origin", "direction", "slice_positions", "geometry_json"}
NAMES = ("patient_alpha", "patient_beta", "broken_gamma")


def _write_phantom(folder: Path, nodules, seed: int, patient_id: str, series_number: int = 2,
                   shape=SHAPE, spacing=SPACING_IN):
    volume, info = chest_phantom(shape=shape, spacing=spacing, nodules=nodules, seed=seed)
    spec = SeriesSpec(n_slices=shape[0], rows=shape[1], columns=shape[2], spacing=tuple(spacing),
                      origin=tuple(float(v) for v in volume.geometry.origin), patient_id=patient_id,
                      series_number=series_number, seed=seed)
    paths = write_series(folder, spec, hu=np.asarray(volume.array))
    return {"volume": volume, "info": info, "spec": spec, "paths": paths}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("lung_dicom")
    facts = {"root": root,
             "alpha": _write_phantom(root / "patient_alpha", None, 1, "PID-ALPHA"),
             "beta": _write_phantom(root / "patient_beta", (), 2, "PID-BETA")}
    broken = _write_phantom(root / "broken_gamma", (), 3, "PID-GAMMA", shape=(16, 64, 64), spacing=(3, 3, 3))
    for path in broken["paths"]:
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path, enforce_file_format=True)
    facts["broken"] = broken
    return facts


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _run(data, out: Path, **kwargs) -> list[dict]:
    kwargs.setdefault("workers", 1)
    return run_lung([str(data["root"])], str(out), progress=False, **kwargs)


@pytest.fixture(scope="module")
def run1(data, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("lung_out1")
    rows = _run(data, out, workers=1)
    return {"out": out, "rows": rows}


def _stage(out: Path, id_: str) -> dict[str, dict]:
    result = {}
    for name, folder in stage_dirs(out, (2, 2, 2)).items():
        with np.load(os.path.join(folder, f"{id_}.npz")) as z:
            result[name] = {k: z[k] for k in z.files}
    return result


def test_summary_done_and_failed_with_reason(run1):
    rows = {r["id"]: r for r in run1["rows"]}
    assert rows["patient_alpha"]["status"] == "done"
    assert rows["patient_beta"]["status"] == "done"
    assert rows["broken_gamma"]["status"] == "failed"
    assert "no_geometry" in rows["broken_gamma"]["reason"]
    written = _rows(run1["out"] / "summary.csv")
    assert list(written[0]) == SUMMARY_COLUMNS
    assert {r["id"]: r["status"] for r in written} == {k: v["status"] for k, v in rows.items()}
    for id_ in ("patient_alpha", "patient_beta"):
        assert 500 < float(rows[id_]["lung_volume_ml"]) < 20000


def test_stage_files_and_keys(run1):
    out = run1["out"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("stage1")) == [
        "stage1_2x2x2", "stage1_segmented_2x2x2", "stage1_segmented_2x2x2_crop"]
    for id_ in ("patient_alpha", "patient_beta"):
        stages = _stage(out, id_)
        assert NPZ_GEOMETRY <= set(stages["resampled"])
        assert NPZ_GEOMETRY <= set(stages["segmented"])
        assert NPZ_GEOMETRY | {"mask", "box"} <= set(stages["crop"])
        assert stages["resampled"]["array"].dtype == np.int16
        assert set(np.unique(stages["segmented"]["array"])) <= {0, 1}
    assert not any(out.glob("*/broken_gamma.npz"))


def test_geometry_is_the_input_resampled_to_2mm(run1, data):
    stages = _stage(run1["out"], "patient_alpha")
    volume = data["alpha"]["volume"]  # what was written; origin = LPS of the first voxel centre
    g_in = volume.geometry
    s = stages["resampled"]
    fov = np.array(SHAPE) * np.array(SPACING_IN)
    expected_shape = tuple(int(np.floor(v / 2.0 + 0.5)) for v in fov)
    assert s["array"].shape == expected_shape == (72, 120, 120)
    np.testing.assert_allclose(s["spacing"], [2.0, 2.0, 2.0])
    # axial DICOM (IOP 1,0,0,0,1,0): axis 0 -> +z (normal), axis 1 -> +y (column cosine), axis 2 -> +x (row)
    direction = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(s["direction"], direction, atol=1e-9)
    # voxel edges kept: first centre = input origin - half an input voxel + half an output voxel (per axis, LPS)
    half = (np.array([-SPACING_IN[2], -SPACING_IN[1], -SPACING_IN[0]]) + 2.0) / 2
    np.testing.assert_allclose(s["origin"], g_in.origin + half, atol=1e-6)
    geometry = Geometry.from_attrs(json.loads(str(s["geometry_json"])))
    np.testing.assert_allclose(geometry.affine[:3, 3], s["origin"])
    np.testing.assert_allclose(geometry.affine[:3, :3], direction * 2.0, atol=1e-9)
    np.testing.assert_allclose(s["slice_positions"], s["origin"][2] + 2.0 * np.arange(72), atol=1e-6)
    # the values: the written HU resampled (linear) onto that grid, rounded; the outer voxels (centre outside the
    # input's first/last voxel centre: slice 0 and 71, row/column 0 and 119) repeat their inner neighbour
    reference = np.asarray(resample(volume, spacing=2.0, order="linear", fill=-1024.0).array)
    inner = (slice(1, 71), slice(1, 119), slice(1, 119))
    assert np.abs(s["array"][inner].astype(np.float64) - reference[inner]).max() <= 0.5 + 1e-3
    a = s["array"]
    for axis, (first, last) in enumerate(((0, 71), (0, 119), (0, 119))):
        view = np.moveaxis(a, axis, 0)
        np.testing.assert_array_equal(view[first], view[first + 1])
        np.testing.assert_array_equal(view[last], view[last - 1])
    # the segmentation stage lies on the same grid
    np.testing.assert_allclose(stages["segmented"]["origin"], s["origin"])
    assert stages["segmented"]["array"].shape == s["array"].shape


def test_crop_is_the_uncropped_arrays_sliced_by_box(run1):
    for id_ in ("patient_alpha", "patient_beta"):
        stages = _stage(run1["out"], id_)
        box = stages["crop"]["box"]
        assert box.shape == (3, 2)
        sl = tuple(slice(int(a), int(b)) for a, b in box)
        np.testing.assert_array_equal(stages["crop"]["array"], stages["resampled"]["array"][sl])
        np.testing.assert_array_equal(stages["crop"]["mask"], stages["segmented"]["array"][sl])
        assert int(stages["crop"]["mask"].sum()) == int(stages["segmented"]["array"].sum())  # whole mask inside
        affine = Geometry.from_attrs(json.loads(str(stages["resampled"]["geometry_json"]))).affine
        np.testing.assert_allclose(stages["crop"]["origin"], (affine @ np.append(box[:, 0], 1.0))[:3], atol=1e-6)
        np.testing.assert_allclose(stages["crop"]["spacing"], stages["resampled"]["spacing"])
        np.testing.assert_allclose(stages["crop"]["direction"], stages["resampled"]["direction"])
        positions = stages["resampled"]["slice_positions"][sl[0]]
        np.testing.assert_allclose(stages["crop"]["slice_positions"], positions, atol=1e-6)


def test_nodule_found_at_its_lps_position(run1, data):
    rows = _rows(run1["out"] / "nodules.csv")
    assert rows and list(rows[0])[:2] == ["patient", "series_key"]
    alpha = [r for r in rows if r["patient"] == "patient_alpha"]
    centre = data["alpha"]["info"]["nodule_centres"][0]  # the 10 mm nodule inside the right lung
    found = np.array([[float(r["centroid_x"]), float(r["centroid_y"]), float(r["centroid_z"])] for r in alpha])
    assert len(found), "no nodule found in patient_alpha"
    distance = np.abs(found - centre).max(axis=1)
    best = int(np.argmin(distance))
    assert distance[best] <= 2.0, (found, centre)  # within one 2 mm voxel on every axis
    assert abs(float(alpha[best]["diameter_mm"]) - data["alpha"]["info"]["diameters"][0]) <= 2.0


def test_patient_features_one_row_per_patient(run1):
    features = _rows(run1["out"] / "patient_features.csv")
    assert sorted(r["patient"] for r in features) == ["patient_alpha", "patient_beta"]
    nodules = _rows(run1["out"] / "nodules.csv")
    for row in features:
        assert int(row["n_nodules"]) == sum(1 for n in nodules if n["patient"] == row["patient"])
        assert float(row["lung_volume_ml"]) > 0
    alpha = next(r for r in features if r["patient"] == "patient_alpha")
    assert float(alpha["largest_diameter_mm"]) >= 8.0


@pytest.mark.parametrize("executor", ["pool", "dask-local"])
def test_two_workers_give_the_same_outputs(run1, data, tmp_path, executor):
    if executor != "pool":
        pytest.importorskip("distributed", reason="the dask executor needs dask.distributed (the dask extra)")
    rows = _run(data, tmp_path, workers=2, executor=executor)
    assert {r["id"]: r["status"] for r in rows} == {r["id"]: r["status"] for r in run1["rows"]}
    for id_ in ("patient_alpha", "patient_beta"):
        a, b = _stage(run1["out"], id_), _stage(tmp_path, id_)
        for stage in a:
            assert set(a[stage]) == set(b[stage])
            for key in a[stage]:
                np.testing.assert_array_equal(a[stage][key], b[stage][key])
    assert _rows(tmp_path / "nodules.csv") == _rows(run1["out"] / "nodules.csv")


def test_rerun_keeps_and_overwrite_redoes(data, tmp_path):
    _run(data, tmp_path)
    outputs = sorted(p for p in tmp_path.rglob("*") if p.is_file() and p.stem in ("patient_alpha", "patient_beta"))
    assert len(outputs) == 2 * 5  # 3 npz + nodules json/csv per patient
    mtimes = {p: p.stat().st_mtime_ns for p in outputs}
    rows = _run(data, tmp_path)
    status = {r["id"]: r["status"] for r in rows}
    assert status == {"patient_alpha": "skipped", "patient_beta": "skipped", "broken_gamma": "failed"}
    assert {p: p.stat().st_mtime_ns for p in outputs} == mtimes
    kept = next(r for r in rows if r["id"] == "patient_alpha")
    assert float(kept["lung_volume_ml"]) > 0
    assert len(_rows(tmp_path / "patient_features.csv")) == 2  # rebuilt from the caches
    rows = _run(data, tmp_path, overwrite=True)
    assert {r["id"]: r["status"] for r in rows}["patient_alpha"] == "done"
    assert all(p.stat().st_mtime_ns != mtimes[p] for p in outputs)
    # an unfinished series (marker missing) is redone, the complete one kept
    (tmp_path / "nodules" / "patient_beta.csv").unlink()
    status = {r["id"]: r["status"] for r in _run(data, tmp_path)}
    assert status["patient_beta"] == "done" and status["patient_alpha"] == "skipped"


MODEL = """
import numpy as np

CALLS = []

def predict(hu, geometry):
    CALLS.append((hu.shape, geometry.shape))
    prob = np.zeros(hu.shape, dtype=np.float32)
    c = [n // 2 for n in hu.shape]
    prob[c[0] - 1:c[0] + 2, c[1] - 1:c[1] + 2, c[2] - 1:c[2] + 2] = 0.9  # 3x3x3 cube at the crop's centre
    return prob

def broken(hu, geometry):
    return np.zeros((2, 2, 2))
"""


def test_user_model(data, tmp_path, monkeypatch):
    (tmp_path / "lung_test_model.py").write_text(textwrap.dedent(MODEL))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "out"
    rows = _run(data, out, model="lung_test_model:predict")
    assert {r["id"]: r["status"] for r in rows}["patient_alpha"] == "done"
    nodules = _rows(out / "nodules.csv")
    crop = _stage(out, "patient_alpha")["crop"]
    alpha = [r for r in nodules if r["patient"] == "patient_alpha"]
    assert len(alpha) == 1
    centre_index = np.array([n // 2 for n in crop["array"].shape], dtype=np.float64)
    affine = Geometry.from_attrs(json.loads(str(crop["geometry_json"]))).affine
    expected = (affine @ np.append(centre_index, 1.0))[:3]
    got = np.array([float(alpha[0][k]) for k in ("centroid_x", "centroid_y", "centroid_z")])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert float(alpha[0]["volume_mm3"]) == pytest.approx(27 * 8.0)
    assert float(alpha[0]["prob_max"]) == pytest.approx(0.9)
    # the option is part of completeness: the built-in model afterwards redoes the series
    assert {r["id"]: r["status"] for r in _run(data, out)}["patient_alpha"] == "done"
    # a model returning the wrong shape, or one that cannot be imported: every series fails, naming it
    for spec, words in (("lung_test_model:broken", "lung_test_model:broken"),
                        ("no_such_module_xyz:predict", "no_such_module_xyz")):
        rows = _run(data, tmp_path / "bad", model=spec)
        failed = [r for r in rows if r["id"] in ("patient_alpha", "patient_beta")]
        assert all(r["status"] == "failed" and words in r["reason"] for r in failed), failed


def test_pseudonymise(data, tmp_path, monkeypatch):
    monkeypatch.setenv("VOXELPIPE_KEY_SECRET", "lung-test-secret")
    rows = _run(data, tmp_path, pseudonymise=True)
    expected = {series_key(name, "lung-test-secret"): name for name in NAMES}
    assert {r["id"] for r in rows} == set(expected)
    done = {expected[r["id"]] for r in rows if r["status"] == "done"}
    assert done == {"patient_alpha", "patient_beta"}
    for path in tmp_path.rglob("*"):
        for name in NAMES + ("PID-",):
            assert name not in str(path.relative_to(tmp_path))
            if path.is_file() and path.suffix in (".csv", ".json"):
                text = path.read_text()
                assert name not in text and str(data["root"]) not in text, path
    features = _rows(tmp_path / "patient_features.csv")
    assert {r["patient"] for r in features} == {k for k, v in expected.items() if v != "broken_gamma"}


def test_manifest_and_several_ct_series(data, tmp_path):
    from voxelpipe.pipelines.scan import scan

    # one patient folder with two CT series (and a non-CT series): one output per CT series
    folder = tmp_path / "dicom" / "patient_delta"
    one = _write_phantom(folder / "a", (), 4, "PID-DELTA", series_number=3, shape=(40, 80, 80),
                         spacing=(3.0, 3.0, 3.0))
    two = _write_phantom(folder / "b", (), 5, "PID-DELTA", series_number=4, shape=(40, 80, 80),
                         spacing=(3.0, 3.0, 3.0))
    mr = SeriesSpec(n_slices=12, rows=16, columns=16, modality="MR", patient_id="PID-DELTA")
    write_series(folder / "mr", mr)
    scan([str(tmp_path / "dicom")], out=str(tmp_path / "manifest"), workers=1, progress=False)
    rows = run_lung(manifest=str(tmp_path / "manifest" / "series_all.csv"), out=str(tmp_path / "out"), workers=1,
                    progress=False)
    keys = {series_key(p["spec"].series_uid) for p in (one, two)}
    by_key = {r["series_key"]: r for r in rows}
    assert {by_key[k]["id"] for k in keys} == {f"PID-DELTA_{k[:8]}" for k in keys}
    assert all(by_key[k]["status"] == "done" for k in keys), rows
    mr_row = by_key[series_key(mr.series_uid)]
    assert mr_row["status"] == "skipped" and "not CT" in mr_row["reason"]
    for k in keys:
        for folder_ in stage_dirs(tmp_path / "out", (2, 2, 2)).values():
            assert os.path.isfile(os.path.join(folder_, f"PID-DELTA_{k[:8]}.npz"))
    # the same folder as DIR input: the patient is its top folder under DIR
    rows = run_lung([str(tmp_path / "dicom")], out=str(tmp_path / "out_dir"), workers=1, progress=False)
    assert {r["id"] for r in rows if r["status"] == "done"} == {f"patient_delta_{k[:8]}" for k in keys}


def test_cli(data, tmp_path, capsys):
    from voxelpipe.cli.app import main

    out = tmp_path / "cli"
    code = main(["--no-progress", "lung", str(data["root"]), "--out", str(out), "--workers", "1",
                 "--spacing", "2,2,2", "--threshold", "0.5"])
    text = capsys.readouterr().out
    assert code == 1  # broken_gamma failed
    assert "2 done" in text and "1 failed" in text and "lung volume" in text and "broken_gamma" in text
    assert (out / "summary.csv").is_file() and (out / "nodules.csv").is_file()
    code = main(["--no-progress", "lung", str(data["root"] / "patient_beta"), "--out", str(out), "--workers", "1"])
    text = capsys.readouterr().out
    assert code == 0 and "lung: 0 done, 1 skipped, 0 failed" in text
    assert main(["--no-progress", "lung", "--out", str(out)]) == 2  # neither DIR nor --manifest: a bad request
