"""At scale: a 20,000-file synthetic tree through ``python -m voxelpipe convert TREE --out OUT
--workers 2`` (scan included), in a subprocess whose whole process tree is sampled for memory.

References, all independent of voxelpipe's reader: ``voxelpipe.testing.tree.write_scale_tree`` records every
file it wrote (the files of each series in slice order, the localizers, the broken files with the kind README
gives them) and recomputes each series' HU volume from the formula it stored; series keys are SHA-256 of the
SeriesInstanceUID (``helpers.sha_key``); volumes are read with zarr directly.

Memory rule (stated, not timed): RSS of the process tree (main + forkserver + pool workers, /proc VmRSS) is
sampled every 0.2 s. During the convert phase (after ``manifest/scan.json`` appears) the peak of the second
half (by time) must not exceed the peak of the first half by more than ``MARGIN_MB``. A leak of 1 MB per series
grows the tree by ~half the series count in MB between the two halves (~160 MB for ~330 series; measured with
an injected 1 MB-per-series leak: +222 MB), far above the margin; the workers' one-off warm-up when their first
series arrives (numba kernels, zarr) falls in the first half. During the scan phase (from the moment every pool
process exists), where the main process keeps one record per file for convert by design, the second half's peak
may exceed the first half's by ``MARGIN_MB`` plus ``SCAN_KB_PER_FILE`` per file scanned in it; a leak of 1 MB per
32-file batch would add ~30 KB per file.

Kill: the same command into a fresh OUT2 is SIGKILLed (whole process group) at a seeded random moment of its
convert phase (a seeded fraction of the first run's convert time after OUT2's scan finished, once a first
volume is out; or when 90 % of the volumes are out, whichever is first), then rerun as is; OUT2 must then equal
OUT.

``VOXELPIPE_SCALE_TEST_FILES`` changes the tree size and ``VOXELPIPE_SCALE_TEST_KILL_SEED`` the kill moment
for local experiments (the memory rule is calibrated for the default 20,000 files).
"""
from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import zarr

from voxelpipe.testing.tree import ScaleTree, write_scale_tree

from helpers import sha_key

N_FILES = int(os.environ.get("VOXELPIPE_SCALE_TEST_FILES", "20000"))
TREE_SEED = 0
KILL_SEED = int(os.environ.get("VOXELPIPE_SCALE_TEST_KILL_SEED", "8"))
SAMPLE_SECONDS = 0.2
POLL_SECONDS = 0.02
MARGIN_MB = 32.0
SCAN_KB_PER_FILE = 8.0
GUARD_SECONDS = 300  # against a hung run only (a run takes ~40 s); never a timing assertion
GEOMETRY = ("shape", "spacing", "origin", "direction", "affine", "affine_ras", "slice_positions")


# ----------------------------------------------------------------------------------------------------------
# running convert with a memory sampler and an optional kill
# ----------------------------------------------------------------------------------------------------------
def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # exited between listing and reading
        pass
    return 0.0


def _process_tree(pid: int) -> list[int]:
    """``pid`` and every descendant, from /proc/<pid>/task/<tid>/children."""
    found, i = [pid], 0
    while i < len(found):
        try:
            tasks = os.listdir(f"/proc/{found[i]}/task")
        except OSError:
            tasks = []
        for task in tasks:
            try:
                with open(f"/proc/{found[i]}/task/{task}/children") as fh:
                    found += [int(c) for c in fh.read().split()]
            except OSError:
                pass
        i += 1
    return found


def _group_alive(pgid: int) -> list[int]:
    """Processes still in process group ``pgid`` (zombies excluded)."""
    alive = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(name))
    return alive


@dataclass
class Run:
    out: Path
    returncode: int
    seconds: float
    scan_done: float | None  # seconds from the start until manifest/scan.json appeared
    samples: list[tuple[float, float, int]] = field(default_factory=list)  # (s, tree RSS MB, processes)
    killed_at: float | None = None
    log: Path | None = None

    @property
    def peak_mb(self) -> float:
        return max((s[1] for s in self.samples), default=0.0)


def complete_volumes(out: Path) -> set[str]:
    data = out / "data"
    return {p.name[:-len(".zarr")] for p in data.iterdir() if p.name.endswith(".zarr")} if data.is_dir() else set()


def run_convert(tree: ScaleTree, out: Path, kill=None) -> Run:
    """``python -m voxelpipe convert TREE --out OUT --workers 2`` in its own session; ``kill(elapsed, scan_done,
    out)`` → True SIGKILLs the whole process group."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXELPIPE_")}
    log = out.with_name(out.name + ".log")
    # --tilt keep: the tree's tilted series are stored as written, so every volume is compared with the writer's
    # own arrays (tilt correction has its own tests against dcm2niix in test_regrid.py)
    command = [sys.executable, "-m", "voxelpipe", "--no-progress", "convert", tree.root, "--out", str(out),
               "--workers", "2", "--tilt", "keep"]
    with open(log, "ab") as fh:
        fh.write(f"$ {' '.join(command)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(command, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    run = Run(out=out, returncode=0, seconds=0.0, scan_done=None, log=log)
    scan_json = out / "manifest" / "scan.json"
    started = time.monotonic()
    next_sample = started
    try:
        while proc.poll() is None:
            now = time.monotonic()
            elapsed = now - started
            if elapsed > GUARD_SECONDS:
                raise AssertionError(f"convert still running after {GUARD_SECONDS} s (hung?); log: {log}")
            if run.scan_done is None and scan_json.exists():
                run.scan_done = elapsed
            if now >= next_sample:
                pids = _process_tree(proc.pid)
                run.samples.append((elapsed, sum(_rss_mb(p) for p in pids), len(pids)))
                next_sample += SAMPLE_SECONDS
            if kill is not None and kill(elapsed, run.scan_done, out):
                os.killpg(proc.pid, signal.SIGKILL)
                run.killed_at = elapsed
                break
            time.sleep(POLL_SECONDS)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + 30
    while _group_alive(proc.pid) and time.monotonic() < deadline:  # forkserver and workers die with the group
        time.sleep(0.05)
    assert not _group_alive(proc.pid), f"processes of the killed group survive: {_group_alive(proc.pid)}"
    run.returncode = proc.returncode
    run.seconds = time.monotonic() - started
    return run


# ----------------------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> ScaleTree:
    written = write_scale_tree(tmp_path_factory.mktemp("scale") / "dicom", n_files=N_FILES, seed=TREE_SEED)
    print(f"\nscale tree: {written.n_files} files, {len(written.series)} series, {len(written.localizers)} "
          f"localizers, {len(written.broken)} broken, written in {written.seconds:.1f} s")
    return written


@pytest.fixture(scope="module")
def first_run(tree, tmp_path_factory) -> Run:
    run = run_convert(tree, tmp_path_factory.mktemp("scale_out") / "OUT")
    assert run.returncode == 0, f"convert exited {run.returncode}; log: {run.log}"
    assert run.scan_done is not None, "manifest/scan.json never appeared"
    print(f"\nfirst run: {run.seconds:.1f} s (scan {run.scan_done:.1f} s), {len(run.samples)} RSS samples, "
          f"peak {run.peak_mb:.0f} MB; {N_FILES / run.seconds:.0f} files/s")
    return run


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def summary_statuses(out: Path) -> dict[str, str]:
    rows = read_rows(out / "summary_run.csv")
    statuses = {r["series_key"]: r["status"] for r in rows}
    assert len(statuses) == len(rows), "a series appears twice in the summary"
    return statuses


# ----------------------------------------------------------------------------------------------------------
# memory
# ----------------------------------------------------------------------------------------------------------
def _halves(samples: list[tuple[float, float, int]]) -> tuple[float, float]:
    """Peak RSS (MB) of the first and of the second half (by time) of ``samples``."""
    mid = (samples[0][0] + samples[-1][0]) / 2
    return (max(s[1] for s in samples if s[0] < mid), max(s[1] for s in samples if s[0] >= mid))


def test_memory_stays_flat(first_run, tree):
    scan = [s for s in first_run.samples if s[0] < first_run.scan_done]
    pool_up = max((s[2] for s in scan), default=0)
    # main, forkserver and the 2 pool workers: fewer means the sampler missed processes (it would judge too few)
    assert pool_up >= 4, f"the RSS sampler saw at most {pool_up} process(es) of the tree"
    scan = [s for s in scan if s[2] == pool_up]  # from the moment every worker process exists
    convert = [s for s in first_run.samples if s[0] >= first_run.scan_done]
    assert len(scan) >= 10 and len(convert) >= 10, (
        f"too few samples to judge ({len(scan)} in scan, {len(convert)} in convert): the tree is too small")
    scan_first, scan_second = _halves(scan)
    convert_first, convert_second = _halves(convert)
    scan_allowance = MARGIN_MB + SCAN_KB_PER_FILE * tree.n_files / 2 / 1024
    print(f"\ntree RSS peaks (MB): scan {scan_first:.0f} -> {scan_second:.0f} (allowed +{scan_allowance:.0f}), "
          f"convert {convert_first:.0f} -> {convert_second:.0f} (allowed +{MARGIN_MB:.0f}); processes "
          f"{max(s[2] for s in first_run.samples)} at most")
    assert convert_second <= convert_first + MARGIN_MB, (
        f"convert: tree RSS peak grew from {convert_first:.0f} MB (first half) to {convert_second:.0f} MB "
        f"(second half): memory is not flat")
    assert scan_second <= scan_first + scan_allowance, (
        f"scan: tree RSS peak grew from {scan_first:.0f} MB to {scan_second:.0f} MB, more than "
        f"{scan_allowance:.0f} MB")


# ----------------------------------------------------------------------------------------------------------
# every file accounted for
# ----------------------------------------------------------------------------------------------------------
def test_every_file_is_accounted_for(first_run, tree):
    manifest = first_run.out / "manifest"
    on_disk = {os.path.join(d, n) for d, _, names in os.walk(tree.root) for n in names}
    assert on_disk == tree.all_files() and len(on_disk) == N_FILES
    assert json.loads((manifest / "scan.json").read_text())["files"] == N_FILES

    # converted: every series, with its files in slice order
    keys = {sha_key(s.series_uid): s for s in tree.series}
    files_by_key: dict[str, list[str]] = {}
    for row in read_rows(manifest / "series_files.csv"):
        files_by_key.setdefault(row["series_key"], []).append(row["path"])
    assert set(files_by_key) == set(keys)
    for key, series in keys.items():
        assert files_by_key[key] == list(series.files), f"series {series.index}: files or slice order differ"
    not_volumes = {sha_key(u) for u in tree.localizer_only_uids}  # a summary row each, skipped with the reason
    assert summary_statuses(first_run.out) == {**dict.fromkeys(keys, "done"), **dict.fromkeys(not_volumes, "skipped")}
    for row in read_rows(first_run.out / "summary_run.csv"):
        if row["series_key"] in not_volumes:
            assert row["reason"] == "localizer images only", row
            continue
        assert int(row["n_files"]) == keys[row["series_key"]].n_slices
    in_series = {p for paths in files_by_key.values() for p in paths}

    # skipped localizers: counted on their series' row, never in a series' files, read as LOCALIZER
    series_rows = {r["series_key"]: r for r in read_rows(manifest / "series_all.csv")}
    assert set(series_rows) == set(keys) | {sha_key(u) for u in tree.localizer_only_uids}
    for key, series in keys.items():
        assert int(series_rows[key]["localizers_skipped"] or 0) == len(series.localizers)
    for uid in tree.localizer_only_uids:
        row = series_rows[sha_key(uid)]
        assert int(row["n_slices"]) == 0 and int(row["localizers_skipped"]) > 0
    assert sum(int(r["localizers_skipped"] or 0) for r in series_rows.values()) == len(tree.localizers)
    with open(manifest / "metadata.csv", newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        path_at, type_at = header.index("path"), header.index("Image Type (0008, 0008)")
        image_type = {row[path_at]: row[type_at] for row in reader}
    for path in tree.localizers:
        assert "LOCALIZER" in image_type[path].split("\\"), path

    # unreadable: exactly the broken files, each with a kind and a reason
    unreadable = {r["path"]: r for r in read_rows(manifest / "unreadable_files.csv")}
    assert set(unreadable) == set(tree.broken)
    for path, kind in tree.broken.items():
        row = unreadable[path]
        assert row["reason"], f"{path}: no reason"
        if os.path.basename(path) == "truncated_pixels.dcm":
            # README (scan) lists truncated pixel data under `unreadable`; scan reports the truncation found
            # while building the file's record as `unusable`. Either way it must say it is truncated.
            assert row["kind"] in ("unreadable", "unusable") and "truncated" in row["reason"], row
        else:
            assert row["kind"] == kind, row

    localizers, broken = set(tree.localizers), set(tree.broken)
    assert not (in_series & localizers) and not (in_series & broken) and not (localizers & broken)
    assert in_series | localizers | broken == on_disk


# ----------------------------------------------------------------------------------------------------------
# every volume equals the expectation
# ----------------------------------------------------------------------------------------------------------
def read_volume(out: Path, key: str) -> tuple[np.ndarray, dict]:
    group = zarr.open_group(str(out / "data" / f"{key}.zarr"), mode="r")
    return group["image"][...], dict(group.attrs)


def test_every_volume_equals_the_expected_array(first_run, tree):
    for series in tree.series:
        array, attrs = read_volume(first_run.out, sha_key(series.series_uid))
        expected = series.expected()
        dtype = series.expected_dtype
        assert np.array_equal(expected.astype(dtype).astype(np.float64), expected)  # exact in that dtype
        assert array.dtype == dtype, f"series {series.index} ({series.rescale}): {array.dtype}"
        assert array.shape == series.shape
        np.testing.assert_array_equal(array, expected.astype(dtype), err_msg=f"series {series.index}")
        np.testing.assert_allclose(attrs["origin"], series.origin, atol=1e-3)
        # the writer's geometry: slice step along the normal, in-plane spacing, row/column cosines of its IOP
        t = np.radians(series.tilt_deg)
        row_cos, col_cos = np.array([1.0, 0.0, 0.0]), np.array([0.0, np.cos(t), -np.sin(t)])
        np.testing.assert_allclose(attrs["spacing"][1:], series.spacing[1:], rtol=1e-5)
        if series.tilt_deg:  # kept sheared: axis 0 runs from one slice origin to the next, longer than the normal step
            assert attrs["sheared"] is True and attrs["spacing"][0] > series.spacing[0]
        else:
            np.testing.assert_allclose(attrs["spacing"][0], series.spacing[0], rtol=1e-5)
        direction = np.asarray(attrs["direction"])  # column a: LPS unit vector of array axis a
        np.testing.assert_allclose(direction[:, 1], col_cos, atol=1e-6)  # down a column = along the rows axis
        np.testing.assert_allclose(direction[:, 2], row_cos, atol=1e-6)
        if not series.tilt_deg:  # untilted: the affine maps (k, 0, 0) onto slice k's ImagePositionPatient
            k = series.shape[0] - 1
            last = np.asarray(attrs["affine"]) @ [k, 0, 0, 1]
            np.testing.assert_allclose(last[:3], np.add(series.origin, [0, 0, series.spacing[0] * k]), atol=1e-3)
        else:  # kept sheared: the affine maps (k, 0, 0) onto the last slice's position, as the slice positions say
            k = series.shape[0] - 1
            last = np.asarray(attrs["affine"]) @ [k, 0, 0, 1]
            np.testing.assert_allclose(last[:3] @ np.cross(row_cos, col_cos), attrs["slice_positions"][k], atol=1e-3)


# ----------------------------------------------------------------------------------------------------------
# kill at a random moment, rerun, same outputs
# ----------------------------------------------------------------------------------------------------------
def leftovers(out: Path) -> tuple[list[str], list[str]]:
    """(``*.partial`` paths, other temporary files: ``.tmp-*`` / ``.spool-*``) under ``out``."""
    partial, temporary = [], []
    for folder, dirs, files in os.walk(out):
        for name in dirs + files:
            if name.endswith(".partial"):
                partial.append(os.path.join(folder, name))
            elif name.startswith((".tmp-", ".spool-")):
                temporary.append(os.path.join(folder, name))
    return partial, temporary


def test_kill_at_random_moment_then_rerun_gives_the_same_outputs(first_run, tree, tmp_path_factory):
    keys = {sha_key(s.series_uid) for s in tree.series}
    convert_seconds = first_run.seconds - first_run.scan_done
    fraction = random.Random(KILL_SEED).uniform(0.1, 0.9)
    delay = fraction * convert_seconds
    enough = int(0.9 * len(keys))

    def kill(elapsed: float, scan_done: float | None, out: Path) -> bool:
        if scan_done is None:
            return False
        done = len(complete_volumes(out))
        return (elapsed - scan_done >= delay and done >= 1) or done >= enough

    out = tmp_path_factory.mktemp("scale_kill") / "OUT2"
    killed = run_convert(tree, out, kill=kill)
    assert killed.killed_at is not None, f"convert ended (exit {killed.returncode}) before the kill"
    complete = complete_volumes(out)
    partial, temporary = leftovers(out)
    meta = sorted(p.name for p in (out / "meta").iterdir()) if (out / "meta").is_dir() else []
    interrupted = (f"killed at {killed.killed_at:.1f} s ({killed.killed_at - killed.scan_done:.1f} s into convert, "
                   f"target {delay:.1f} s = {fraction:.2f} of the first run's {convert_seconds:.1f} s): "
                   f"{len(complete)}/{len(keys)} volumes complete, {len(partial)} partial "
                   f"{[os.path.basename(p) for p in partial]}, {len(meta)} meta files, {len(temporary)} temp files, "
                   f"summary written: {(out / 'summary_run.csv').exists()}")
    print("\n" + interrupted)
    assert 0 < len(complete) < len(keys), f"nothing to resume: {interrupted}"
    assert not (out / "summary_run.csv").exists(), interrupted

    rerun = run_convert(tree, out)
    assert rerun.returncode == 0, f"rerun exited {rerun.returncode}; log: {rerun.log}"
    not_volumes = {sha_key(u) for u in tree.localizer_only_uids}
    assert summary_statuses(out) == {**{k: ("skipped" if k in complete else "done") for k in keys},
                                     **dict.fromkeys(not_volumes, "skipped")}
    assert summary_statuses(first_run.out) == {**dict.fromkeys(keys, "done"), **dict.fromkeys(not_volumes, "skipped")}

    partial, temporary = leftovers(out)
    assert partial == [], f"partial outputs left after the rerun: {partial}"
    if temporary:  # killed atomic writes: never under a final name, so never taken as complete
        print(f"temporary files left by the kill (not final names): {temporary}")
    data_names = sorted(p.name for p in (out / "data").iterdir())
    assert data_names == sorted(p.name for p in (first_run.out / "data").iterdir())
    assert data_names == sorted(f"{k}.zarr" for k in keys)
    for name in ("series_files.csv", "series_all.csv", "unreadable_files.csv"):
        assert (out / "manifest" / name).read_bytes() == (first_run.out / "manifest" / name).read_bytes(), name
    for series in tree.series:
        key = sha_key(series.series_uid)
        array, attrs = read_volume(out, key)
        reference, reference_attrs = read_volume(first_run.out, key)
        assert array.dtype == reference.dtype
        np.testing.assert_array_equal(array, reference, err_msg=f"series {series.index}")
        np.testing.assert_array_equal(array, series.expected().astype(series.expected_dtype))
        for name in GEOMETRY:
            assert attrs[name] == reference_attrs[name], (key, name)
        for suffix in (".slices.csv",):
            assert (out / "meta" / f"{key}{suffix}").read_bytes() == \
                (first_run.out / "meta" / f"{key}{suffix}").read_bytes(), key
        series_json = json.loads((out / "meta" / f"{key}.series.json").read_text())
        reference_json = json.loads((first_run.out / "meta" / f"{key}.series.json").read_text())
        series_json.pop("provenance"), reference_json.pop("provenance")  # holds the output's manifest path
        assert series_json == reference_json, key
