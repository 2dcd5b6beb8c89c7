"""Faults on the output side of `convert`: a kill mid-merge of the HDF5 run file, two runs into one output
folder, outputs that look complete but are not, manifest keys that try to leave the output folder, disk full and
a non-writable output folder. References: pydicom's own reading of the files written (apply_modality_lut), the
bytes and mtimes of files outside the output folder, and the exit status / stderr of the CLI."""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

import voxelpipe
from voxelpipe.cli.app import main
from voxelpipe.core.errors import StoreError
from voxelpipe.core.keys import check_series_key, is_series_key, series_key, series_number_key
from voxelpipe.stores.lock import OutputBusyError, holds_alone, output_lock
from voxelpipe.stores.registry import volume_path
from voxelpipe.testing.synthetic import SeriesSpec, write_series

from helpers import sha_key

TIMEOUT = 120  # a guard against hanging, not a timing assertion


def clean_env() -> dict[str, str]:
    """This process's environment without VOXELPIPE_* settings (children import voxelpipe as this process does:
    installed, or through the inherited PYTHONPATH; never with site-packages put ahead of the standard library)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("VOXELPIPE_")}


def write_study(folder: Path, n_series: int, n_slices: int, size: int, seed: int) -> dict[str, Path]:
    """``n_series`` axial CT series; returns series key -> its folder."""
    result = {}
    for i in range(n_series):
        spec = SeriesSpec(n_slices=n_slices, rows=size, columns=size, spacing=(2.0, 0.8, 0.9),
                          origin=(-10.0 + i, -20.0, -30.0 - i), seed=seed + i, series_number=10 + i)
        write_series(folder / f"series{i}", spec, names="shuffled")
        result[sha_key(spec.series_uid)] = folder / f"series{i}"
    return result


def dicom_pixels(folder: Path) -> np.ndarray:
    """pydicom's modality values of a series folder, slices sorted along the slice normal (axial: z)."""
    datasets = [pydicom.dcmread(p) for p in folder.iterdir()]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    return np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in datasets])


def assert_run_file_holds(run_file: Path, study: dict[str, Path]) -> None:
    with h5py.File(run_file, "r") as fh:
        assert set(fh.keys()) == set(study)
        for key, folder in study.items():
            np.testing.assert_array_equal(fh[key][...], dicom_pixels(folder))


def cli(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "voxelpipe", "--no-progress", *argv], env=clean_env(),
                          capture_output=True, text=True, timeout=TIMEOUT, **kwargs)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("study")
    return folder, write_study(folder, 3, 12, 48, seed=300)


# ----------------------------------------------------------------------------------------------------------
# A. the HDF5 run file survives a kill mid-merge
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overwrite", [False, True])
def test_broken_hdf5_run_file_is_set_aside_and_rebuilt(study, tmp_path, overwrite):
    """A run file left unreadable (truncated as by a kill mid-merge) is set aside as ``.broken-<time>`` (logged,
    listed in the summary json) and the rerun, with or without overwrite, ends with every series in a readable run
    file equal to pydicom's pixels."""
    folder, keys = study
    out = tmp_path / "out"
    rows = voxelpipe.convert([str(folder)], out=str(out), fmt="hdf5", workers=1, progress=False)
    assert {r["status"] for r in rows} == {"done"}
    run_file = out / "data" / "volumes_run.h5"
    size = run_file.stat().st_size
    with open(run_file, "r+b") as fh:  # a kill mid-merge leaves the file short of its metadata
        fh.truncate(size // 2)
    rerun = voxelpipe.convert([str(folder)], out=str(out), fmt="hdf5", workers=1, progress=False,
                              overwrite=overwrite)
    assert {r["status"] for r in rerun} == {"done"}, rerun
    assert_run_file_holds(run_file, keys)
    aside = [p for p in (out / "data").iterdir() if ".broken-" in p.name]
    assert len(aside) == 1 and aside[0].stat().st_size == size // 2
    summary = json.loads((out / "summary_run.json").read_text())
    assert [entry["path"] for entry in summary["broken_run_files"]] == [str(aside[0])]


def test_garbled_hdf5_run_file_is_rebuilt_without_leftovers(study, tmp_path):
    """A run file whose superblock is garbled is set aside and every series it held is converted again into a
    new run file; no per-series file is left in data/."""
    folder, keys = study
    out = tmp_path / "out"
    voxelpipe.convert([str(folder)], out=str(out), fmt="hdf5", workers=1, progress=False)
    run_file = out / "data" / "volumes_run.h5"
    with open(run_file, "r+b") as fh:  # garble the superblock
        fh.write(b"\0" * 64)
    rerun = voxelpipe.convert([str(folder)], out=str(out), fmt="hdf5", workers=1, progress=False)
    assert {r["status"] for r in rerun} == {"done"}
    assert_run_file_holds(run_file, keys)
    assert sorted(p.name for p in (out / "data").iterdir() if not p.name.startswith("volumes_run.h5")) == []


SLOW_MERGE_CONVERT = """
import sys, time
import h5py
from voxelpipe.cli.app import main
real_copy = h5py.Group.copy
def slow_copy(self, *args, **kwargs):  # the merge phase made long enough to be hit: a pause after each copy
    result = real_copy(self, *args, **kwargs)
    time.sleep(0.05)
    return result
h5py.Group.copy = slow_copy
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_kill_during_hdf5_merge_never_breaks_reruns(tmp_path):
    """kill -9 at random moments of the merge phase of an HDF5 convert (0-150 ms after the run file or its copy
    appears, each series' copy into it followed by a 50 ms pause): every rerun completes (exit 0) and every
    series is readable with h5py and equal to pydicom's pixels."""
    keys = write_study(tmp_path / "in", 3, 8, 48, seed=400)
    rng = random.Random(7)
    for attempt in range(6):
        out = tmp_path / f"out{attempt}"
        argv = ["convert", str(tmp_path / "in"), "--out", str(out), "--format", "hdf5", "--workers", "1"]
        proc = subprocess.Popen([sys.executable, "-c", SLOW_MERGE_CONVERT, "--no-progress", *argv], env=clean_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + TIMEOUT
        data = out / "data"
        try:  # wait for the merge into the run file to begin (its name or its copy appears), kill soon after
            while proc.poll() is None and time.monotonic() < deadline:
                if data.is_dir() and any(p.name.startswith("volumes_run.h5") for p in data.iterdir()):
                    break
                time.sleep(0.001)
            time.sleep(rng.uniform(0.0, 0.15))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert main(["--no-progress", *argv]) == 0
        assert_run_file_holds(data / "volumes_run.h5", keys)


# ----------------------------------------------------------------------------------------------------------
# B. one run per output folder; "already complete" means complete
# ----------------------------------------------------------------------------------------------------------
GATED_CONVERT = """
import os, sys, time
import voxelpipe.pipelines.convert as pipeline
from voxelpipe.cli.app import main
real, ready, go = pipeline.convert_series, sys.argv[1], sys.argv[2]
def gated(task):  # the first series waits for the test: the run is surely going on while the second starts
    open(ready, "w").close()
    while not os.path.exists(go):
        time.sleep(0.01)
    return real(task)
pipeline.convert_series = gated
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_second_concurrent_convert_exits_2_naming_folder_and_holder(tmp_path, fmt):
    """While a convert writes into OUT, a second convert into OUT exits 2 with one line naming OUT and the first
    run's pid, and the first run's outputs are correct."""
    keys = write_study(tmp_path / "in", 3, 8, 32, seed=500)
    out = tmp_path / "out"
    ready, go = tmp_path / "ready", tmp_path / "go"
    argv = ["convert", str(tmp_path / "in"), "--out", str(out), "--format", fmt, "--workers", "1"]
    first = subprocess.Popen([sys.executable, "-c", GATED_CONVERT, str(ready), str(go), "--no-progress", *argv],
                             env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while first.poll() is None and time.monotonic() < deadline and not ready.exists():
            time.sleep(0.01)
        assert first.poll() is None, first.communicate()[1]
        second = cli(argv)
    finally:
        go.touch()
    first_err = first.communicate(timeout=TIMEOUT)[1]
    assert first.returncode == 0, first_err
    assert second.returncode == 2, second.stderr
    assert "Traceback" not in second.stderr
    message = [line for line in second.stderr.splitlines() if "ERROR" in line]
    assert len(message) == 1 and str(out) in message[0] and f"pid {first.pid}" in message[0], second.stderr
    if fmt == "hdf5":
        assert_run_file_holds(out / "data" / "volumes_run.h5", keys)
    else:
        for key, folder in keys.items():
            np.testing.assert_array_equal(voxelpipe.open_volume(out / "data" / f"{key}.zarr").numpy(),
                                          dicom_pixels(folder))


def _delete_a_chunk(path: Path) -> None:
    chunks = sorted(p for p in (path / "image").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunks[-1].unlink()


def _truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size * 2 // 3)


def _drop_group_attrs(path: Path) -> None:
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"] = {}
    (path / "zarr.json").write_text(json.dumps(meta))


def _drop_npz_attrs(path: Path) -> None:
    with zipfile.ZipFile(path) as src:
        members = {name: src.read(name) for name in src.namelist() if name != "attrs_json.npy"}
    with zipfile.ZipFile(path, "w") as dst:
        for name, data in members.items():
            dst.writestr(name, data)


BREAKAGES = {
    "zarr-dir-chunk-deleted": (dict(fmt="zarr"), ".zarr", _delete_a_chunk),
    "zarr-dir-attrs-dropped": (dict(fmt="zarr"), ".zarr", _drop_group_attrs),
    "zarr-zip-truncated": (dict(fmt="zarr", store="zip"), ".zarr.zip", _truncate),
    "zarr-sqlite-truncated": (dict(fmt="zarr", store="sqlite"), ".zarr.sqlite", _truncate),
    "npz-truncated": (dict(fmt="npz"), ".npz", _truncate),
    "npz-attrs-dropped": (dict(fmt="npz"), ".npz", _drop_npz_attrs),
    "nifti-truncated": (dict(fmt="nifti"), ".nii.gz", _truncate),
}


@pytest.mark.parametrize("case", list(BREAKAGES))
def test_incomplete_output_is_reconverted_not_skipped(study, tmp_path, case):
    """An output under its final name that is not complete (a chunk missing, a truncated file, our attrs gone) is
    converted again on a rerun (not skipped as already complete), and the new volume equals pydicom's pixels; the
    untouched series stay skipped."""
    options, suffix, damage = BREAKAGES[case]
    if options["fmt"] == "nifti":
        pytest.importorskip("nibabel")
    folder, keys = study
    out = tmp_path / "out"
    first = voxelpipe.convert([str(folder)], out=str(out), workers=1, progress=False, **options)
    assert {r["status"] for r in first} == {"done"}
    broken = sorted(keys)[1]
    damage(out / "data" / f"{broken}{suffix}")
    rerun = voxelpipe.convert([str(folder)], out=str(out), workers=1, progress=False, **options)
    assert {r["series_key"]: r["status"] for r in rerun} == {k: ("done" if k == broken else "skipped") for k in keys}
    volume = voxelpipe.open_volume(out / "data" / f"{broken}{suffix}")
    np.testing.assert_array_equal(volume.numpy(), dicom_pixels(keys[broken]))
    assert volume.attrs.get("series_instance_uid") or options["fmt"] == "nifti"


# ----------------------------------------------------------------------------------------------------------
# C. keys from a manifest never lead outside --out
# ----------------------------------------------------------------------------------------------------------
def test_series_keys_of_every_kind_pass_the_check_and_paths_do_not():
    """Keys voxelpipe builds (SeriesInstanceUID hash, SeriesNumber split, split parts ``_N``) pass; anything that
    could name another place is refused with the value in the message."""
    uid = "1.2.3.4"
    good = [series_key(uid), series_key(uid, secret="s"), series_number_key(uid, "3"), series_key(uid) + "_2"]
    assert all(is_series_key(k) for k in good)
    bad = ["../../../victim/keep", "", series_key(uid).upper(), series_key(uid)[:-1], series_key(uid) + "/x",
           series_key(uid) + "_0", series_key(uid) + "_", "/" + series_key(uid), series_key(uid) + "\n"]
    for key in bad:
        assert not is_series_key(key), key
        with pytest.raises(ValueError, match="series key"):
            check_series_key(key)


def test_volume_path_refuses_a_key_that_leaves_the_folder(tmp_path):
    """The one place that builds volume paths raises instead of naming a path outside its folder."""
    with pytest.raises(StoreError, match="outside"):
        volume_path(tmp_path / "data", "../../victim/keep", "zarr")
    assert volume_path(tmp_path / "data", "0123456789abcdef", "npz") == str(tmp_path / "data" / "0123456789abcdef.npz")


@pytest.mark.parametrize("fmt", ["zarr", "npz"])
def test_manifest_key_cannot_write_outside_out(study, tmp_path, fmt):
    """A series_key edited in series_all.csv / series_files.csv to ``../../../victim/keep`` fails that row (reason
    names the manifest row and the value) and ``convert --overwrite`` neither deletes nor replaces
    ``victim/keep.zarr`` / ``victim/keep.npz`` outside --out; the other series convert (exit 1)."""
    folder, keys = study
    manifest = tmp_path / "manifest"
    assert main(["--no-progress", "scan", str(folder), "--out", str(manifest)]) == 0
    target = sorted(keys)[0]
    attack = "../../../victim/keep"
    for name in ("series_all.csv", "series_files.csv"):
        with open(manifest / name, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns, rows = reader.fieldnames, list(reader)
        for row in rows:
            if row["series_key"] == target:
                row["series_key"] = attack
        with open(manifest / name, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    out = tmp_path / "a" / "out"
    victim = tmp_path / "victim"
    (victim / "keep.zarr").mkdir(parents=True)
    (victim / "keep.zarr" / "precious.txt").write_bytes(b"do not touch")
    (victim / "keep.npz").write_bytes(b"do not touch either")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in victim.rglob("*") if p.is_file()}
    assert Path(os.path.normpath(out / "data" / (attack + ".zarr"))) == victim / "keep.zarr"  # the attack aims here
    code = main(["--no-progress", "convert", "--manifest", str(manifest / "series_all.csv"), "--out", str(out),
                 "--format", fmt, "--overwrite", "--workers", "1"])
    assert code == 1
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in victim.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in victim.iterdir()) == ["keep.npz", "keep.zarr"]
    rows = {r["series_key"]: r for r in csv.DictReader(open(out / "summary_run.csv", encoding="utf-8"))}
    assert rows[attack]["status"] == "failed"
    assert "series_all.csv" in rows[attack]["reason"] and " row " in rows[attack]["reason"]
    assert repr(attack) in rows[attack]["reason"]
    assert {rows[k]["status"] for k in keys if k != target} == {"done"}



def test_lung_refuses_a_manifest_key_that_is_not_a_key(study, tmp_path):
    """`lung --manifest` with a series_key edited to a path is refused (exit 2, naming the manifest row and the
    value) before anything is written."""
    folder, keys = study
    manifest = tmp_path / "manifest"
    assert main(["--no-progress", "scan", str(folder), "--out", str(manifest)]) == 0
    path = manifest / "series_all.csv"
    text = path.read_text(encoding="utf-8")
    assert sorted(keys)[0] in text
    path.write_text(text.replace(sorted(keys)[0], "../../victim"), encoding="utf-8")
    out = tmp_path / "lung"
    assert main(["--no-progress", "lung", "--manifest", str(path), "--out", str(out), "--workers", "1"]) == 2
    assert not out.exists() or not any(p.is_file() and p.name != ".voxelpipe.lock" for p in out.rglob("*"))

# ----------------------------------------------------------------------------------------------------------
# D. disk full, non-writable --out: failed rows plus a summary, or one line and exit 2
# ----------------------------------------------------------------------------------------------------------
def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_disk_full_during_hdf5_merge_gives_failed_rows_and_a_summary(study, tmp_path):
    """Writes failing with EFBIG while the run file is merged: exit 1, no traceback, summary csv/json written with
    the failed rows and the OS error, each failed series kept in its per-series file; the rerun with room
    completes every series equal to pydicom's pixels."""
    folder, keys = study
    reference = tmp_path / "reference"
    voxelpipe.convert([str(folder)], out=str(reference), fmt="hdf5", workers=1, progress=False)
    run_size = (reference / "data" / "volumes_run.h5").stat().st_size
    out = tmp_path / "out"
    manifest = reference / "manifest" / "series_all.csv"
    # every per-series file fits (each is about a third of the run file), the run file does not
    full = cli(["convert", "--manifest", str(manifest), "--out", str(out), "--format", "hdf5", "--workers", "1"],
               preexec_fn=_limit_file_size(run_size * 2 // 3))
    assert full.returncode == 1, full.stderr
    assert "Traceback" not in full.stderr
    summary = list(csv.DictReader(open(out / "summary_run.csv", encoding="utf-8")))
    assert {r["series_key"] for r in summary} == set(keys)
    failed = [r for r in summary if r["status"] == "failed"]
    assert failed and all("File too large" in r["reason"] or "No space" in r["reason"] for r in failed), failed
    assert json.loads((out / "summary_run.json").read_text())["counts"]["failed"] == len(failed)
    for row in failed:  # the converted series waits in its own file, not lost
        assert (out / "data" / f"{row['series_key']}.h5").is_file()
    rerun = cli(["convert", "--manifest", str(manifest), "--out", str(out), "--format", "hdf5", "--workers", "1"])
    assert rerun.returncode == 0, rerun.stderr
    assert_run_file_holds(out / "data" / "volumes_run.h5", keys)


def test_non_writable_out_exits_2_naming_the_folder(study, tmp_path):
    """An --out the user cannot write (here: a folder owned by root, the CLI run as uid 65534 in a forked child) is
    a bad request: exit 2, one line naming the folder, no traceback."""
    folder, _ = study
    base = Path(tempfile.mkdtemp())
    try:
        os.chmod(base, 0o755)
        readable = base / "in"
        shutil.copytree(folder, readable)
        for path in [readable, *readable.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        locked = base / "locked"
        locked.mkdir()
        os.chmod(locked, 0o755)
        out = locked / "out"
        errors_file = base / "stderr.txt"
        pid = os.fork()
        if pid == 0:  # the child: drop to nobody, run the CLI as `python -m voxelpipe` would, exit with its code
            code = 1
            try:
                sys.stderr = open(errors_file, "w", encoding="utf-8")
                os.setgid(65534)
                os.setuid(65534)
                logging.root.handlers.clear()
                code = main(["--no-progress", "convert", str(readable), "--out", str(out), "--format", "npz",
                             "--workers", "1"])
            except BaseException:  # what the interpreter would print for an uncaught error
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        stderr = errors_file.read_text(encoding="utf-8")
        assert os.waitstatus_to_exitcode(status) == 2, stderr
        assert "Traceback" not in stderr
        errors = [line for line in stderr.splitlines() if "ERROR" in line]
        assert len(errors) == 1 and str(out) in errors[0], stderr
        assert not out.exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


HOLD_LOCK = """
import os, sys, time
from voxelpipe.stores.lock import output_lock
folder, shard, ready = sys.argv[1], sys.argv[2] or None, sys.argv[3]
with output_lock(folder, "test", shard):
    open(ready, "w").close()
    time.sleep(600)
"""


def _hold(folder: Path, shard: str, ready: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder), shard, str(ready)], env=clean_env())
    deadline = time.monotonic() + TIMEOUT
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ready.exists()
    return proc


def test_output_lock_is_released_by_kill_9(tmp_path):
    """A run killed with SIGKILL never leaves its output folder locked: the next run takes the lock."""
    out = tmp_path / "out"
    holder = _hold(out, "", tmp_path / "ready")
    try:
        with pytest.raises(OutputBusyError, match=f"pid {holder.pid}"):
            with output_lock(out, "convert"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with output_lock(out, "convert") as folder:
        assert folder == str(out)


def test_shards_share_an_output_folder_but_a_shard_runs_once(tmp_path):
    """Shards of one run (convert --shard-id, scan shard files) write one folder side by side; the same shard
    twice, or a whole run beside a shard, is refused naming the holder."""
    out = tmp_path / "out"
    holder = _hold(out, "shard00of02", tmp_path / "ready")
    try:
        with output_lock(out, "convert", "shard01of02"):
            pass
        with pytest.raises(OutputBusyError, match=f"pid {holder.pid}"):
            with output_lock(out, "convert", "shard00of02"):
                pass
        with pytest.raises(OutputBusyError, match=f"sharded runs: pid {holder.pid}"):
            with output_lock(out, "convert"):
                pass
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("command", ["scan", "masks", "resample", "project"])
def test_other_commands_writing_a_folder_refuse_a_busy_one(tmp_path, caplog, command):
    """scan --out, masks --manifest, resample and project hold the output folder's lock too: beside a running
    convert they exit 2 naming the folder and its holder."""
    out = tmp_path / "out"
    holder = _hold(out, "", tmp_path / "ready")
    source = str(tmp_path / "missing")
    argv = {"scan": ["scan", source, "--out", str(out)],
            "masks": ["masks", "--manifest", source, "--out", str(out)],
            "resample": ["resample", source, "--out", str(out), "--spacing", "1,1,1"],
            "project": ["project", source, "--out", str(out)]}[command]
    try:
        with caplog.at_level(logging.ERROR, logger="voxelpipe"):
            assert main(["--no-progress", *argv]) == 2
    finally:
        holder.kill()
        holder.wait()
    assert str(out) in caplog.text and f"pid {holder.pid}" in caplog.text


def test_disk_full_before_the_summary_stops_with_one_line(study, tmp_path):
    """A write error that stops the run itself (here: no file may exceed 512 bytes, so even the scan tables
    cannot be written) ends with exit 1 (the run failed; the request was fine) and one line naming the file, never
    a traceback."""
    folder, _ = study
    out = tmp_path / "out"
    result = cli(["convert", str(folder), "--out", str(out), "--workers", "1"], preexec_fn=_limit_file_size(512))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and str(out) in errors[0] and "File too large" in errors[0], result.stderr


@pytest.fixture(scope="module")
def mixed_study(tmp_path_factory) -> Path:
    """A plain CT series and a cine series (two phases per position, 4-D)."""
    folder = tmp_path_factory.mktemp("mixed")
    write_series(folder / "ct", SeriesSpec(n_slices=5, rows=16, columns=18, seed=61))
    first = SeriesSpec(n_slices=4, rows=16, columns=18, spacing=(3.0, 0.5, 0.6), seed=62)
    for phase, spec in enumerate((first, dataclasses.replace(first, seed=63))):
        for path in write_series(folder / "cine", spec, names="shuffled"):
            ds = pydicom.dcmread(path)
            ds.TriggerTime = str(40 * phase)
            ds.InstanceNumber = ds.InstanceNumber + 100 * phase
            ds.save_as(path)
    return folder


OUTPUT_KINDS = {"zarr-dir": dict(fmt="zarr"), "zarr-zip": dict(fmt="zarr", store="zip"),
                "zarr-sqlite": dict(fmt="zarr", store="sqlite"), "npz": dict(fmt="npz"), "nifti": dict(fmt="nifti"),
                "nifti-plain": dict(fmt="nifti", nifti_gzip=False), "zarr-2d": dict(fmt="zarr", mode="2d"),
                "npz-2d": dict(fmt="npz", mode="2d")}


@pytest.mark.parametrize("kind", list(OUTPUT_KINDS))
def test_complete_outputs_pass_the_completeness_check(mixed_study, tmp_path, kind):
    """The completeness check never takes a complete output for a broken one: 3-D, 4-D and 2-D mode outputs of
    every format and store are all skipped on a rerun, none listed as incomplete."""
    options = OUTPUT_KINDS[kind]
    if options["fmt"] == "nifti":
        pytest.importorskip("nibabel")
    out = tmp_path / "out"
    first = voxelpipe.convert([str(mixed_study)], out=str(out), workers=1, progress=False, **options)
    assert {r["status"] for r in first} == {"done"} and len(first) == 2, first
    rerun = voxelpipe.convert([str(mixed_study)], out=str(out), workers=1, progress=False, **options)
    assert {r["status"] for r in rerun} == {"skipped"}
    assert "incomplete_outputs" not in json.loads((out / "summary_run.json").read_text())


def test_holds_alone_only_under_a_whole_run_lock(tmp_path):
    """Leftovers of dead runs may be cleaned only by a process holding the folder (or one around it) as a whole
    run: not under a shard's shared lock, not without a lock."""
    out = tmp_path / "out"
    assert not holds_alone(out / "manifest")
    with output_lock(out, "convert"):
        assert holds_alone(out) and holds_alone(out / "manifest")
    with output_lock(out, "convert", "shard00of02"):
        assert not holds_alone(out / "manifest")
    assert not holds_alone(out)
