"""The command line, run as a user runs it: ``python -m voxelpipe ...`` in a subprocess."""
from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from voxelpipe.testing.synthetic import SeriesSpec, write_series

TIMEOUT = 180
MANIFEST_FILES = ["metadata.csv", "series_all.csv", "series_files.csv", "objects.csv", "unreadable_files.csv",
                  "scan.json"]


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m voxelpipe ARGS`` with this interpreter and no VOXELPIPE_* variables but ``env``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VOXELPIPE_")}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "voxelpipe", *args], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=TIMEOUT)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def shard_names(manifest: Path) -> list[str]:
    return sorted(p.name for p in (manifest / "shards").iterdir())


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two small series and a text file."""
    root = tmp_path_factory.mktemp("cli_study")
    specs = [SeriesSpec(n_slices=5, rows=16, columns=16, seed=40),
             SeriesSpec(n_slices=3, rows=16, columns=16, seed=41, series_number=3)]
    paths = {spec.series_uid: write_series(root / f"series{i}", spec) for i, spec in enumerate(specs)}
    notes = root / "notes.txt"
    notes.write_text("not a DICOM file\n")
    return {"root": root, "specs": specs, "paths": paths, "notes": notes}


def test_help(tmp_path):
    done = run(["--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "scan" in done.stdout and "demo" in done.stdout
    done = run(["scan", "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    for option in ("--out", "--shards", "--workers", "--table-format"):
        assert option in done.stdout


def test_version(tmp_path):
    done = run(["--version"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert importlib.metadata.version("voxelpipe") in done.stdout


def test_scan_writes_the_manifest(study, tmp_path):
    manifest = tmp_path / "manifest"
    done = run(["--no-progress", "scan", str(study["root"]), "--out", str(manifest), "--shards", "4",
                "--workers", "1"], tmp_path)
    assert done.returncode == 0, done.stderr
    for name in MANIFEST_FILES:
        assert (manifest / name).is_file(), name
    assert shard_names(manifest) == [f"series_shard_{i:02d}.csv" for i in range(4)]

    series = read_csv(manifest / "series_all.csv")
    by_uid = {row["series_instance_uid"]: row for row in series}
    assert set(by_uid) == {spec.series_uid for spec in study["specs"]}
    for spec in study["specs"]:
        assert int(by_uid[spec.series_uid]["n_slices"]) == spec.n_slices
    files = read_csv(manifest / "series_files.csv")
    expected_files = {os.path.realpath(p) for paths in study["paths"].values() for p in paths}
    assert {os.path.realpath(row["path"]) for row in files} == expected_files
    metadata = read_csv(manifest / "metadata.csv")
    assert {os.path.realpath(row["path"]) for row in metadata} == expected_files
    unreadable = read_csv(manifest / "unreadable_files.csv")
    assert [os.path.realpath(row["path"]) for row in unreadable] == [os.path.realpath(study["notes"])]
    assert read_csv(manifest / "objects.csv") == []
    sharded = [row["series_key"] for name in shard_names(manifest) for row in read_csv(manifest / "shards" / name)]
    assert sorted(sharded) == sorted(row["series_key"] for row in series)
    summary = json.loads((manifest / "scan.json").read_text())
    assert isinstance(summary, dict)


def test_env_variable_sets_shards(study, tmp_path):
    manifest = tmp_path / "manifest"
    done = run(["scan", str(study["root"]), "--out", str(manifest), "--workers", "1"], tmp_path,
               env={"VOXELPIPE_SHARDS": "3", "VOXELPIPE_NO_PROGRESS": "1"})
    assert done.returncode == 0, done.stderr
    assert shard_names(manifest) == [f"series_shard_{i:02d}.csv" for i in range(3)]


def test_command_line_flag_wins_over_env(study, tmp_path):
    manifest = tmp_path / "manifest"
    done = run(["scan", str(study["root"]), "--out", str(manifest), "--shards", "2", "--workers", "1"], tmp_path,
               env={"VOXELPIPE_SHARDS": "3", "VOXELPIPE_NO_PROGRESS": "1"})
    assert done.returncode == 0, done.stderr
    assert shard_names(manifest) == [f"series_shard_{i:02d}.csv" for i in range(2)]


def test_parquet_metadata_matches_csv(study, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    manifest = tmp_path / "manifest"
    done = run(["--no-progress", "scan", str(study["root"]), "--out", str(manifest), "--table-format", "parquet",
                "--workers", "1"], tmp_path)
    assert done.returncode == 0, done.stderr
    table = pq.read_table(manifest / "metadata.parquet")
    rows_csv = read_csv(manifest / "metadata.csv")
    assert table.num_rows == len(rows_csv) == sum(len(p) for p in study["paths"].values())
    with open(manifest / "metadata.csv", newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    assert table.column_names == header
    rows_parquet = table.to_pylist()
    assert len(rows_parquet) == len(rows_csv)
    for row_parquet, row_csv in zip(rows_parquet, rows_csv):
        assert list(row_parquet) == list(row_csv)
        for column, value in row_parquet.items():  # numbers are typed in Parquet (text in the CSV)
            text = row_csv[column]
            if value is None:
                assert text == "" or not text.replace(".", "", 1).lstrip("-").isdigit(), (column, text)
            elif isinstance(value, (int, float)):
                assert float(text) == value, (column, text, value)
            else:
                assert value == text, (column, text, value)


def test_env_variable_named_from_the_long_option(study, tmp_path):
    """--format sets dest fmt; its variable is VOXELPIPE_FORMAT all the same."""
    out = tmp_path / "out"
    done = run(["convert", str(study["root"]), "--out", str(out), "--workers", "1"], tmp_path,
               env={"VOXELPIPE_FORMAT": "npz", "VOXELPIPE_NO_PROGRESS": "yes"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("convert: ") and ", 0 failed -> " in done.stdout
    assert len(list((out / "data").glob("*.npz"))) == len(study["specs"])
    assert not list((out / "data").glob("*.zarr"))


def test_bad_request_exits_2_through_the_interpreter(tmp_path):
    done = run(["--no-progress", "lung", "--out", str(tmp_path / "out")], tmp_path)  # neither DIR nor --manifest
    assert done.returncode == 2 and "lung: give DICOM folders or --manifest" in done.stderr
    done = run(["scan"], tmp_path)
    assert done.returncode == 2 and "error:" in done.stderr


def test_bad_env_value_is_reported(study, tmp_path):
    done = run(["scan", str(study["root"]), "--out", str(tmp_path / "manifest")], tmp_path,
               env={"VOXELPIPE_WORKERS": "x"})
    assert done.returncode != 0
    assert "VOXELPIPE_WORKERS" in done.stderr
    assert not (tmp_path / "manifest" / "scan.json").exists()


def test_demo(tmp_path):
    out = tmp_path / "demo"
    done = run(["--no-progress", "demo", "--out", str(out), "--workers", "1"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout
    manifest = out / "manifest"
    for name in ("metadata.csv", "series_all.csv", "series_files.csv", "objects.csv", "unreadable_files.csv"):
        assert str(manifest / name) in done.stdout
        assert (manifest / name).is_file()
    assert read_csv(manifest / "series_all.csv")  # the demo study has image series
    masks = read_csv(out / "volumes" / "masks_report.csv")  # the whole flow: masks, resample, project, report
    assert sorted(r["roi_name"] for r in masks if r["status"] == "done") == ["Core", "Lesion"]
    converted = read_csv(out / "volumes" / "summary_run.csv")
    assert sorted(r["status"] for r in converted) == ["done", "done"]  # the CT and its 5 mm copy
    resampled = read_csv(out / "resampled_las_1mm" / "resample_summary.csv")
    assert sorted(r["status"] for r in resampled) == ["done", "done"]
    for row in resampled:  # LAS at 1 mm: each axis step is 1 mm along the codes' directions
        attrs = zarr.open_group(row["path"], mode="r").attrs
        np.testing.assert_allclose(attrs["spacing"], [1.0, 1.0, 1.0])
        direction = np.asarray(attrs["direction"])  # column a: LPS unit vector of array axis a
        letters = ["LR"[int(c[0] < 0)] if abs(c[0]) > 0.5 else "PA"[int(c[1] < 0)] if abs(c[1]) > 0.5
                   else "SI"[int(c[2] < 0)] for c in direction.T]
        assert "".join(letters) == "LAS"
    projected = read_csv(out / "projections" / "project_summary.csv")
    assert sorted(r["status"] for r in projected) == ["done", "done"]
    for row in projected:  # 0:360:45 -> 8 angles
        assert zarr.open_array(row["path"] + "/image", mode="r").shape[0] == 8
    html = (out / "volumes" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 8 and "Lesion" in html


def test_demo_stops_on_a_stage_that_did_not_do_its_job():
    from voxelpipe.apps.demo import DemoStepError, _require

    with pytest.raises(DemoStepError, match="convert gave 2 row.*1 not ok.*abc: failed no pixels"):
        _require("convert", [{"series_key": "abc", "status": "failed", "reason": "no pixels"},
                             {"series_key": "def", "status": "done"}], {"done"})
    with pytest.raises(DemoStepError, match=r"masks gave 1 row\(s\), 0 not ok \(expected 2\)"):
        _require("masks", [{"status": "done"}], {"done"}, count=2)
    _require("project", [{"status": "done"}] * 2, {"done"}, count=2)


def test_atomic_outputs_get_the_usual_permissions(tmp_path):
    """mkstemp creates 0600 files; a published table must be readable like any file this user writes."""
    import os

    from voxelpipe.stores.tables import write_csv

    path = tmp_path / "t.csv"
    write_csv(path, [{"a": 1}], ["a"])
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask
