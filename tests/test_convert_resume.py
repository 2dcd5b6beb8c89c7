"""`convert` reruns: skip what is complete, redo what is not, ``overwrite`` redoes everything, and a convert
killed with SIGKILL then rerun gives the same volumes as an uninterrupted run. References: the phantom
``write_series`` stored, and an uninterrupted run of the same input."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import voxelpipe
from voxelpipe.testing.synthetic import SeriesSpec, phantom_hu, write_series

from helpers import sha_key

TIMEOUT = 240
GEOMETRY = ("shape", "spacing", "origin", "direction", "affine", "affine_ras", "slice_positions")



def phantom(spec: SeriesSpec) -> np.ndarray:
    return phantom_hu(spec.n_slices, spec.rows, spec.columns, spec.seed)


def convert(*args, **kwargs) -> list[dict]:
    kwargs.setdefault("workers", 1)
    kwargs.setdefault("progress", False)
    return voxelpipe.convert(*args, **kwargs)


def statuses(rows: list[dict]) -> dict[str, str]:
    result = {r["series_key"]: r["status"] for r in rows}
    assert len(result) == len(rows)
    return result


def leftovers(out: Path) -> list[str]:
    """Every ``*.partial`` file or folder under ``out``."""
    found = []
    for folder, dirs, files in os.walk(out):
        found += [os.path.join(folder, n) for n in dirs + files if ".partial" in n]
    return found


def write_study(folder: Path, n_series: int, n_slices: int, size: int, seed: int) -> list[SeriesSpec]:
    specs = []
    for i in range(n_series):
        spec = SeriesSpec(n_slices=n_slices, rows=size, columns=size, spacing=(2.0, 0.8, 0.9),
                          origin=(-10.0 + i, -20.0, -30.0 - i), seed=seed + i, series_number=10 + i)
        write_series(folder / f"series{i}", spec, names="shuffled")
        specs.append(spec)
    return specs


def assert_volume_is(path, spec: SeriesSpec) -> None:
    volume = voxelpipe.open_volume(path)
    np.testing.assert_array_equal(volume.numpy(), phantom(spec))
    np.testing.assert_allclose(volume.geometry.origin, spec.origin, atol=1e-4)
    np.testing.assert_allclose(volume.geometry.spacing, spec.spacing, atol=1e-4)


@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small_study")
    return folder, write_study(folder, 3, 10, 32, seed=100)


# ----------------------------------------------------------------------------------------------------------
# skip, overwrite, leftovers
# ----------------------------------------------------------------------------------------------------------
def test_rerun_skips_complete_series_and_overwrite_redoes_them(small_study, tmp_path):
    folder, specs = small_study
    keys = {sha_key(s.series_uid) for s in specs}
    out = tmp_path / "out"
    first = convert([str(folder)], out=str(out), verify_slices=3)
    assert statuses(first) == dict.fromkeys(keys, "done")
    assert {r["verification"] for r in first} == {"ok 3/3"}
    mtimes = {k: os.path.getmtime(out / "data" / f"{k}.zarr" / "zarr.json") for k in keys}
    second = convert([str(folder)], out=str(out), verify_slices=3)
    assert statuses(second) == dict.fromkeys(keys, "skipped")
    assert {k: os.path.getmtime(out / "data" / f"{k}.zarr" / "zarr.json") for k in keys} == mtimes
    third = convert([str(folder)], out=str(out), verify_slices=3, overwrite=True)
    assert statuses(third) == dict.fromkeys(keys, "done")
    assert {r["verification"] for r in third} == {"ok 3/3"}
    for spec in specs:
        assert_volume_is(out / "data" / f"{sha_key(spec.series_uid)}.zarr", spec)
    assert leftovers(out) == []


def test_leftover_partial_output_is_replaced(small_study, tmp_path):
    """A ``<key>.zarr.partial`` folder with junk (a killed earlier write) is redone, not taken as complete."""
    folder, specs = small_study
    out = tmp_path / "out"
    spec = specs[1]
    key = sha_key(spec.series_uid)
    partial = out / "data" / f"{key}.zarr.partial"
    (partial / "image" / "c" / "0").mkdir(parents=True)
    (partial / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {"junk": 1}}')
    (partial / "image" / "c" / "0" / "0").write_bytes(b"\x00junk" * 100)
    rows = convert([str(folder)], out=str(out))
    assert statuses(rows) == dict.fromkeys((sha_key(s.series_uid) for s in specs), "done")
    volume = voxelpipe.open_volume(out / "data" / f"{key}.zarr")
    assert "junk" not in volume.attrs
    assert_volume_is(out / "data" / f"{key}.zarr", spec)
    assert leftovers(out) == []


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_overwrite_replaces_a_volume_whose_input_changed(tmp_path, fmt):
    """Same series (same SeriesInstanceUID), pixel values changed between runs: a rerun skips it and keeps
    the old volume; ``overwrite=True`` stores the new values."""
    spec = SeriesSpec(n_slices=6, rows=16, columns=16, seed=120)
    key = sha_key(spec.series_uid)
    old = phantom(spec)
    new = (old + 7).astype(np.int16)
    write_series(tmp_path / "in", spec)
    out = tmp_path / "out"

    def stored() -> np.ndarray:
        if fmt == "hdf5":
            with h5py.File(out / "data" / "volumes_run.h5", "r") as fh:
                return fh[key][...]
        return voxelpipe.open_volume(out / "data" / f"{key}.zarr").numpy()

    assert statuses(convert([str(tmp_path / "in")], out=str(out), fmt=fmt)) == {key: "done"}
    np.testing.assert_array_equal(stored(), old)
    for path in (tmp_path / "in").iterdir():
        path.unlink()
    write_series(tmp_path / "in", spec, hu=new)
    assert statuses(convert([str(tmp_path / "in")], out=str(out), fmt=fmt)) == {key: "skipped"}
    np.testing.assert_array_equal(stored(), old)
    assert statuses(convert([str(tmp_path / "in")], out=str(out), fmt=fmt, overwrite=True)) == {key: "done"}
    np.testing.assert_array_equal(stored(), new)


def test_hdf5_series_published_but_not_merged_is_merged_on_rerun(small_study, tmp_path):
    """HDF5: a worker publishes ``data/<key>.h5`` and the main process copies it into the run file. A run
    killed between the two leaves a complete ``<key>.h5`` that is not in the run file; the rerun must end with
    the series in the run file (the state is made here by running the worker's task function alone)."""
    from voxelpipe.pipelines.series_volume import SeriesTask, convert_series

    folder, specs = small_study
    out = tmp_path / "out"
    manifest = tmp_path / "manifest"
    voxelpipe.scan([str(folder)], out=str(manifest), shards=1, workers=1, progress=False)
    with open(manifest / "series_files.csv", newline="", encoding="utf-8") as fh:
        files = [r for r in csv.DictReader(fh)]
    spec = specs[0]
    key = sha_key(spec.series_uid)
    row = convert_series(SeriesTask(key=key, paths=[r["path"] for r in files if r["series_key"] == key],
                                    out=str(out), fmt="hdf5"))
    assert row["status"] == "done" and os.path.exists(out / "data" / f"{key}.h5")  # the killed run's state
    rows = convert(manifest=str(manifest / "series_all.csv"), out=str(out), fmt="hdf5")
    assert "failed" not in statuses(rows).values(), rows
    with h5py.File(out / "data" / "volumes_run.h5", "r") as fh:
        assert set(fh.keys()) == {sha_key(s.series_uid) for s in specs}
        for s in specs:
            np.testing.assert_array_equal(fh[sha_key(s.series_uid)][...], phantom(s))


# ----------------------------------------------------------------------------------------------------------
# kill -9
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kill_study(tmp_path_factory):
    """Six series of 48 slices of 256x256: long enough that a kill lands mid-run."""
    folder = tmp_path_factory.mktemp("kill_study")
    return folder, write_study(folder, 6, 48, 256, seed=200)


def test_kill_9_then_rerun_equals_uninterrupted_run(kill_study, tmp_path):
    folder, specs = kill_study
    keys = {sha_key(s.series_uid) for s in specs}
    out = tmp_path / "killed"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXELPIPE_")}
    proc = subprocess.Popen([sys.executable, "-m", "voxelpipe", "--no-progress", "convert", str(folder), "--out",
                             str(out), "--workers", "1"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    data = out / "data"
    deadline = time.monotonic() + TIMEOUT  # a guard against hanging, not a timing assertion
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if data.is_dir() and any(p.name.endswith(".zarr") for p in data.iterdir()):
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.002)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the convert finished before it could be killed"
    complete = {p.name[:-len(".zarr")] for p in data.iterdir() if p.name.endswith(".zarr")}
    assert complete and complete < keys, f"{len(complete)} of {len(keys)} complete at the kill: nothing to resume"

    rerun = convert([str(folder)], out=str(out))
    assert statuses(rerun) == {k: ("skipped" if k in complete else "done") for k in keys}
    assert {r["verification"] for r in rerun if r["status"] == "done"} == {"ok 2/2"}
    reference = tmp_path / "uninterrupted"
    assert set(statuses(convert([str(folder)], out=str(reference))).values()) == {"done"}

    assert leftovers(out) == []
    assert sorted(p.name for p in data.iterdir()) == sorted(f"{k}.zarr" for k in keys)
    for spec in specs:
        key = sha_key(spec.series_uid)
        resumed = voxelpipe.open_volume(data / f"{key}.zarr")
        uninterrupted = voxelpipe.open_volume(reference / "data" / f"{key}.zarr")
        array = resumed.numpy()
        assert array.dtype == uninterrupted.dtype
        np.testing.assert_array_equal(array, uninterrupted.numpy())
        np.testing.assert_array_equal(array, phantom(spec))
        for name in GEOMETRY:
            assert resumed.attrs[name] == uninterrupted.attrs[name], name
        assert resumed.attrs["series_instance_uid"] == spec.series_uid
