"""`convert` on synthetic series written with pydicom (voxelpipe.testing.synthetic plus pydicom edits).

The independent reference for every array is ``phantom_hu(...)``: the HU volume ``write_series`` stores
(slope 1, intercept -1024, so the stored integers are exactly HU + 1024). Geometry references come from the
``SeriesSpec`` the files were written from, never from the code's own output.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

import voxelpipe
import voxelpipe.cli
from voxelpipe.testing.synthetic import ROOT_UID, SeriesSpec, phantom_hu, write_series

from helpers import resave, sha_key

TIMEOUT = 240
TOL_MM = 1e-4  # positions are written with 6 significant digits


# ----------------------------------------------------------------------------------------------------------
# helpers: references computed from what was written
# ----------------------------------------------------------------------------------------------------------

def phantom(spec: SeriesSpec) -> np.ndarray:
    return phantom_hu(spec.n_slices, spec.rows, spec.columns, spec.seed)


def expected_geometry(spec: SeriesSpec) -> dict[str, np.ndarray]:
    """Geometry of an untilted synthetic series: IOP (1,0,0, 0,1,0), slices stepping +z from ``spec.origin``."""
    row_cos = np.array([1.0, 0.0, 0.0])  # along a row = increasing column index (axis 2)
    col_cos = np.array([0.0, 1.0, 0.0])  # down a column = increasing row index (axis 1)
    normal = np.cross(row_cos, col_cos)  # axis 0
    direction = np.column_stack([normal, col_cos, row_cos])
    spacing = np.asarray(spec.spacing, dtype=float)
    origin = np.asarray(spec.origin, dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing
    affine[:3, 3] = origin
    affine_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    positions = origin @ normal + np.arange(spec.n_slices) * spec.spacing[0]
    return {"spacing": spacing, "origin": origin, "direction": direction, "affine": affine,
            "affine_ras": affine_ras, "slice_positions": positions}


def assert_geometry(volume, spec: SeriesSpec) -> None:
    expected = expected_geometry(spec)
    g = volume.geometry
    np.testing.assert_allclose(g.spacing, expected["spacing"], atol=TOL_MM)
    np.testing.assert_allclose(g.origin, expected["origin"], atol=TOL_MM)
    np.testing.assert_allclose(g.direction, expected["direction"], atol=1e-9)
    np.testing.assert_allclose(g.affine, expected["affine"], atol=TOL_MM)
    np.testing.assert_allclose(g.affine_ras, expected["affine_ras"], atol=TOL_MM)
    np.testing.assert_allclose(g.slice_positions, expected["slice_positions"], atol=TOL_MM)
    # the attrs hold the same geometry as the Geometry object built from them
    for name in ("spacing", "origin", "direction", "affine", "affine_ras", "slice_positions"):
        np.testing.assert_allclose(np.asarray(volume.attrs[name], dtype=float), expected[name], atol=TOL_MM,
                                   err_msg=name)


def by_key(rows: list[dict]) -> dict[str, dict]:
    result = {row["series_key"]: row for row in rows}
    assert len(result) == len(rows), "a series appears twice in the summary"
    return result


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def convert(*args, **kwargs) -> list[dict]:
    kwargs.setdefault("workers", 1)
    kwargs.setdefault("progress", False)
    return voxelpipe.convert(*args, **kwargs)



def scan_to(folder, manifest: Path) -> Path:
    voxelpipe.scan([str(f) for f in (folder if isinstance(folder, list) else [folder])], out=str(manifest),
                   shards=1, workers=1, progress=False)
    return manifest / "series_all.csv"


# ----------------------------------------------------------------------------------------------------------
# synthetic inputs written once for this module
# ----------------------------------------------------------------------------------------------------------
CT20 = dict(n_slices=20, rows=24, columns=20, spacing=(2.5, 0.7, 0.9), origin=(-10.0, -12.5, -40.0), seed=41)


@pytest.fixture(scope="module")
def ct20(tmp_path_factory):
    """A 20-slice CT with random file names (no extension): non-square, anisotropic, off-centre."""
    folder = tmp_path_factory.mktemp("ct20")
    spec = SeriesSpec(**CT20)
    paths = write_series(folder, spec, names="shuffled")
    assert sorted(paths) != paths, "precondition: file-name order differs from position order"
    return folder, spec, paths


@pytest.fixture(scope="module")
def ct20_manifest(ct20, tmp_path_factory):
    folder, _, _ = ct20
    return scan_to(folder, tmp_path_factory.mktemp("ct20_manifest"))


@pytest.fixture(scope="module")
def cine(tmp_path_factory):
    """Every position written twice, the two phases with different pixels, told apart by TriggerTime.

    Phase 0 (TriggerTime 0) carries the higher InstanceNumbers, so ordering frames by InstanceNumber or by
    file name would give the wrong answer."""
    folder = tmp_path_factory.mktemp("cine")
    first = SeriesSpec(n_slices=6, rows=16, columns=18, spacing=(3.0, 0.5, 0.6), origin=(1.0, 2.0, 3.0), seed=51)
    second = dataclasses.replace(first, seed=52)
    paths0 = write_series(folder, first, names="shuffled")
    paths1 = write_series(folder, second, names="shuffled")
    assert not set(paths0) & set(paths1)
    for i, path in enumerate(paths0):
        resave(path, lambda ds, i=i: (setattr(ds, "TriggerTime", "0"), setattr(ds, "InstanceNumber", 7 + i)))
    for i, path in enumerate(paths1):
        resave(path, lambda ds, i=i: (setattr(ds, "TriggerTime", "40"), setattr(ds, "InstanceNumber", 1 + i)))
    return folder, first, second


# ----------------------------------------------------------------------------------------------------------
# values and geometry
# ----------------------------------------------------------------------------------------------------------
def test_shuffled_ct_values_and_geometry(ct20, tmp_path):
    folder, spec, _ = ct20
    rows = convert([str(folder)], out=str(tmp_path / "out"), verify_slices=3)
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == "done", row["reason"]
    assert row["series_key"] == sha_key(spec.series_uid)
    assert row["verification"] == "ok 3/3"
    volume = voxelpipe.open_volume(row["path"])
    assert volume.shape == (spec.n_slices, spec.rows, spec.columns)
    assert volume.dtype == np.int16  # integral HU that fit int16
    np.testing.assert_array_equal(volume.numpy(), phantom(spec))
    assert_geometry(volume, spec)
    assert volume.attrs["series_instance_uid"] == spec.series_uid


def test_output_layout_and_meta(ct20, tmp_path):
    """The output layout: data/<key>.zarr, meta/<key>.series.json and .slices.csv, summary_<suffix>."""
    folder, spec, paths = ct20
    out = tmp_path / "out"
    rows = convert([str(folder)], out=str(out), summary_suffix="mine")
    key = sha_key(spec.series_uid)
    assert rows[0]["status"] == "done", rows[0]["reason"]
    assert (out / "data" / f"{key}.zarr").is_dir()
    assert not (out / "data" / f"{key}.zarr.partial").exists()
    series_json = json.loads((out / "meta" / f"{key}.series.json").read_text())
    np.testing.assert_allclose(series_json["origin"], spec.origin, atol=TOL_MM)
    slices = read_csv(out / "meta" / f"{key}.slices.csv")
    # one row per slice, in ascending position order = the order write_series wrote them in
    assert [os.path.realpath(r["file"]) for r in slices] == [os.path.realpath(p) for p in paths]
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]
    assert [r["sop_instance_uid"] for r in slices] == uids
    summary = read_csv(out / "summary_mine.csv")
    assert [(r["series_key"], r["status"]) for r in summary] == [(key, "done")]
    assert json.loads((out / "summary_mine.json").read_text())["counts"] == {"done": 1}
    # provenance: input file count and bytes
    prov = voxelpipe.open_volume(out / "data" / f"{key}.zarr").attrs["provenance"]
    assert prov["input_files"] == len(paths)
    assert prov["input_bytes"] == sum(os.path.getsize(p) for p in paths)


def test_cine_becomes_4d_ordered_by_trigger_time(cine, tmp_path):
    folder, first, second = cine
    rows = convert([str(folder)], out=str(tmp_path / "out"))
    assert len(rows) == 1 and rows[0]["status"] == "done", rows
    volume = voxelpipe.open_volume(rows[0]["path"])
    assert volume.shape == (2, first.n_slices, first.rows, first.columns)
    assert volume.attrs["frame_tag"] == "TriggerTime"
    array = volume.numpy()
    np.testing.assert_array_equal(array[0], phantom(first))  # TriggerTime 0
    np.testing.assert_array_equal(array[1], phantom(second))  # TriggerTime 40
    expected = expected_geometry(first)
    np.testing.assert_allclose(volume.geometry.origin, expected["origin"], atol=TOL_MM)
    np.testing.assert_allclose(volume.geometry.spacing, expected["spacing"], atol=TOL_MM)
    np.testing.assert_allclose(volume.geometry.direction, expected["direction"], atol=1e-9)


def test_localizer_in_the_series_is_left_out(synthetic, tmp_path):
    """From the folder, and from a manifest whose file list for the series includes the localizer."""
    case = synthetic["localizer"]
    spec = case.specs[0]
    key = sha_key(spec.series_uid)
    localizer = case.paths["localizer"][0]
    assert "LOCALIZER" in pydicom.dcmread(localizer, stop_before_pixels=True).ImageType
    rows = convert([str(case.folder)], out=str(tmp_path / "from_folder"))
    assert [(r["series_key"], r["status"]) for r in rows] == [(key, "done")]
    np.testing.assert_array_equal(voxelpipe.open_volume(rows[0]["path"]).numpy(), phantom(spec))

    manifest = tmp_path / "manifest"
    scan_to(case.folder, manifest)
    with open(manifest / "series_files.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns, listed = reader.fieldnames, list(reader)
    assert os.path.realpath(localizer) not in {os.path.realpath(r["path"]) for r in listed}
    listed.insert(3, {**listed[0], "path": localizer, "sop_instance_uid": ""})  # the localizer among the slices
    with open(manifest / "series_files.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        writer.writerows(listed)
    rows = convert(manifest=str(manifest / "series_all.csv"), out=str(tmp_path / "from_manifest"))
    assert rows[0]["status"] == "done", rows[0]["reason"]
    volume = voxelpipe.open_volume(rows[0]["path"])
    assert volume.shape == (spec.n_slices, spec.rows, spec.columns)
    np.testing.assert_array_equal(volume.numpy(), phantom(spec))


def test_series_mixing_image_sizes_converts_both_parts(synthetic, tmp_path):
    case = synthetic["sizes"]
    a, b = case.specs
    key = sha_key(a.series_uid)
    rows = by_key(convert([str(case.folder)], out=str(tmp_path / "out")))
    assert set(rows) == {f"{key}_1", f"{key}_2"}
    for part, spec in ((f"{key}_1", a), (f"{key}_2", b)):
        assert rows[part]["status"] == "done", rows[part]["reason"]
        volume = voxelpipe.open_volume(rows[part]["path"])
        assert volume.shape == (spec.n_slices, spec.rows, spec.columns)
        np.testing.assert_array_equal(volume.numpy(), phantom(spec))


# ----------------------------------------------------------------------------------------------------------
# bad input fails one series with a reason, and the run goes on
# ----------------------------------------------------------------------------------------------------------
def test_duplicated_slice_fails_the_series(synthetic, tmp_path):
    case = synthetic["duplicate"]
    files = case.paths["series"]
    uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    assert len(uids) == len(files) == case.specs[0].n_slices + 1  # precondition: distinct SOPInstanceUIDs
    rows = convert([str(case.folder)], out=str(tmp_path / "out"))
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == "failed"
    assert "duplicat" in row["reason"].lower(), row["reason"]
    assert not os.path.exists(row["path"]), "a failed series left an output under its final name"


def test_truncated_pixel_data_fails_its_series_only(tmp_path):
    """A file whose pixel data is cut in half (after the scan) fails its series, naming the file; another
    series in the same run converts."""
    good = SeriesSpec(n_slices=6, rows=16, columns=16, seed=61)
    bad = SeriesSpec(n_slices=6, rows=16, columns=16, seed=62)
    write_series(tmp_path / "in" / "good", good)
    bad_paths = write_series(tmp_path / "in" / "bad", bad)
    manifest = scan_to(tmp_path / "in", tmp_path / "manifest")
    victim = bad_paths[3]
    data = Path(victim).read_bytes()
    pixel_bytes = bad.rows * bad.columns * 2
    assert data.endswith(pydicom.dcmread(victim).PixelData)  # precondition: pixel data is the last element
    Path(victim).write_bytes(data[: len(data) - pixel_bytes // 2])
    rows = by_key(convert(manifest=str(manifest), out=str(tmp_path / "out")))
    assert set(rows) == {sha_key(good.series_uid), sha_key(bad.series_uid)}
    failed = rows[sha_key(bad.series_uid)]
    assert failed["status"] == "failed"
    assert os.path.basename(victim) in failed["reason"], failed["reason"]
    assert not os.path.exists(failed["path"])
    ok = rows[sha_key(good.series_uid)]
    assert ok["status"] == "done", ok["reason"]
    np.testing.assert_array_equal(voxelpipe.open_volume(ok["path"]).numpy(), phantom(good))


def test_unsupported_transfer_syntax_fails_naming_the_uid(tmp_path):
    """One file re-saved with TransferSyntaxUID 1.2.3.4 (dataset still explicit VR little endian)."""
    spec = SeriesSpec(n_slices=5, rows=16, columns=16, seed=63)
    paths = write_series(tmp_path / "in", spec)
    manifest = scan_to(tmp_path / "in", tmp_path / "manifest")
    resave(paths[2], lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", "1.2.3.4"), implicit_vr=False,
           little_endian=True)
    assert pydicom.dcmread(paths[2], stop_before_pixels=True).file_meta.TransferSyntaxUID == "1.2.3.4"
    rows = convert(manifest=str(manifest), out=str(tmp_path / "out"))
    assert len(rows) == 1
    assert rows[0]["status"] == "failed"
    assert "1.2.3.4" in rows[0]["reason"], rows[0]["reason"]
    assert not os.path.exists(rows[0]["path"])


# ----------------------------------------------------------------------------------------------------------
# stores and formats
# ----------------------------------------------------------------------------------------------------------
FORMATS = [("zarr", "dir", ".zarr"), ("zarr", "zip", ".zarr.zip"), ("zarr", "sqlite", ".zarr.sqlite"),
           ("hdf5", "dir", None), ("npz", "dir", ".npz")]


def test_every_store_and_format_round_trips_the_same_volume(ct20, ct20_manifest, tmp_path):
    _, spec, _ = ct20
    key = sha_key(spec.series_uid)
    reference = phantom(spec)
    geometries = []
    for fmt, store, suffix in FORMATS:
        out = tmp_path / f"{fmt}_{store}"
        rows = convert(manifest=str(ct20_manifest), out=str(out), fmt=fmt, store=store, verify_slices=2,
                       chunks=(8, 16, 16))
        assert len(rows) == 1
        row = rows[0]
        assert row["status"] == "done", (fmt, store, row["reason"])
        assert row["verification"] == "ok 2/2"
        if fmt == "hdf5":
            path = out / "data" / "volumes_run.h5"
            assert Path(row["path"]) == path
            volume = voxelpipe.open_volume(path, key=key)
        else:
            path = out / "data" / f"{key}{suffix}"
            assert Path(row["path"]) == path and path.exists()
            volume = voxelpipe.open_volume(path)
        assert volume.shape == reference.shape, (fmt, store)
        assert volume.dtype == np.int16, (fmt, store)
        np.testing.assert_array_equal(volume.numpy(), reference, err_msg=f"{fmt}/{store}")
        # lazy read of one slice
        np.testing.assert_array_equal(np.asarray(volume.array[7]), reference[7])
        assert_geometry(volume, spec)
        geometries.append({name: np.asarray(volume.attrs[name], dtype=float).tolist()
                           for name in ("shape", "spacing", "origin", "direction", "affine", "affine_ras",
                                        "slice_positions")})
        if fmt == "hdf5":
            volume.array.file.close()
    assert all(g == geometries[0] for g in geometries[1:]), "geometry attrs differ between stores/formats"


def test_hdf5_run_file_one_dataset_per_series_and_rerun_appends(tmp_path):
    a = SeriesSpec(n_slices=7, rows=16, columns=20, seed=71)
    b = SeriesSpec(n_slices=4, rows=12, columns=10, seed=72)
    write_series(tmp_path / "in" / "a", a)
    write_series(tmp_path / "in" / "b", b)
    out = tmp_path / "out"
    first = convert(manifest=str(scan_to(tmp_path / "in" / "a", tmp_path / "m1")), out=str(out), fmt="hdf5")
    assert [(r["series_key"], r["status"]) for r in first] == [(sha_key(a.series_uid), "done")]
    run_file = out / "data" / "volumes_run.h5"
    with h5py.File(run_file, "r") as fh:
        assert set(fh.keys()) == {sha_key(a.series_uid)}
    second = by_key(convert(manifest=str(scan_to(tmp_path / "in", tmp_path / "m2")), out=str(out), fmt="hdf5"))
    assert {k: r["status"] for k, r in second.items()} == {sha_key(a.series_uid): "skipped",
                                                          sha_key(b.series_uid): "done"}
    with h5py.File(run_file, "r") as fh:
        assert set(fh.keys()) == {sha_key(a.series_uid), sha_key(b.series_uid)}
        for spec in (a, b):
            np.testing.assert_array_equal(fh[sha_key(spec.series_uid)][...], phantom(spec))
    # the per-series files were merged and removed
    assert sorted(p.name for p in (out / "data").iterdir()) == ["volumes_run.h5"]


# ----------------------------------------------------------------------------------------------------------
# streaming memory
# ----------------------------------------------------------------------------------------------------------
MEMORY_SCRIPT = textwrap.dedent("""
    import gc, json, sys
    import voxelpipe

    def kib(field):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])

    warm, work, *names = sys.argv[1:]
    voxelpipe.convert([warm], out=work + "/warm", workers=1, progress=False)  # imports, JIT, codecs warmed up
    result = {}
    for name in names:
        voxelpipe.scan([work + "/" + name], out=work + "/manifest_" + name, shards=1, workers=1, progress=False)
    for name in names:
        gc.collect()
        with open("/proc/self/clear_refs", "w") as fh:  # reset the peak RSS (VmHWM) to the current RSS
            fh.write("5")
        before = kib("VmRSS")
        rows = voxelpipe.convert(manifest=work + "/manifest_" + name + "/series_all.csv", out=work + "/out_" + name,
                                 workers=1, progress=False)
        result[name] = {"rss_before_kib": before, "peak_kib": kib("VmHWM"), "rows": rows}
    print(json.dumps(result))
""")


def _write_long_series(folder: Path, n_slices: int, size: int, seed: int) -> tuple[SeriesSpec, np.ndarray]:
    """``n_slices`` slices of ``size``², slice z holding ``block[z % 8]`` (HU). One template file is written
    by pydicom with fixed-width placeholder values, then copied with the placeholders replaced: pydicom
    takes ~5 ms per file, too slow for 1,500 files."""
    spec = SeriesSpec(n_slices=1, rows=size, columns=size, spacing=(1.0, 1.0, 1.0), origin=(-5.0, -5.0, 0.0),
                      seed=seed)
    block = phantom_hu(8, size, size, seed)
    stored = (block.astype(np.int32) - int(spec.intercept)).astype("<i2")
    template = write_series(folder / "template", spec)[0]
    uid = f"{ROOT_UID}7.{seed}.{{:06d}}"
    resave(template, lambda ds: (setattr(ds, "SOPInstanceUID", uid.format(999999)),
                                 setattr(ds.file_meta, "MediaStorageSOPInstanceUID", uid.format(999999)),
                                 setattr(ds, "InstanceNumber", "999999"),
                                 setattr(ds, "ImagePositionPatient", ["-5", "-5", "+9999.99"]),
                                 setattr(ds, "SliceLocation", "+9999.99")))
    data = Path(template).read_bytes()
    shutil.rmtree(folder / "template")
    pixel_bytes = stored[0].nbytes
    assert data.count(uid.format(999999).encode()) == 2 and data.count(b"999999") == 3
    assert data.count(b"+9999.99") == 2
    head = data[:-pixel_bytes]
    for z in range(n_slices):
        content = (head.replace(uid.format(999999).encode(), uid.format(z).encode())
                   .replace(b"999999", f"{z + 1:06d}".encode()).replace(b"+9999.99", f"{z:+08.2f}".encode()))
        (folder / f"IM{z:05d}.dcm").write_bytes(content + stored[z % 8].tobytes())
    check = pydicom.dcmread(folder / f"IM{n_slices - 1:05d}.dcm")  # precondition: valid files, right values
    assert float(check.ImagePositionPatient[2]) == n_slices - 1
    np.testing.assert_array_equal(apply_modality_lut(check.pixel_array, check),
                                  block[(n_slices - 1) % 8])
    return dataclasses.replace(spec, n_slices=n_slices), block


def test_peak_memory_does_not_grow_with_series_length(tmp_path):
    """Zarr streaming: peak RSS during convert of 1,500 slices of 256x256 against 150 slices (whole volumes
    would differ by ~177 MB)."""
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS after warm-up")
    size = 256
    write_series(tmp_path / "warm", SeriesSpec(n_slices=20, rows=size, columns=size, seed=80))
    series = {"short": _write_long_series(tmp_path / "short", 150, size, 82),
              "long": _write_long_series(tmp_path / "long", 1500, size, 83)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXELPIPE_")}
    # one fresh interpreter measures both (same warmed-up state); peak RSS is reset before each convert
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "warm"), str(tmp_path), *series],
                          capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    increase_mib = {}
    for name, (spec, _) in series.items():
        (row,) = result[name]["rows"]
        assert row["status"] == "done", row["reason"]
        assert row["shape"] == f"{spec.n_slices}x{size}x{size}"
        increase_mib[name] = (result[name]["peak_kib"] - result[name]["rss_before_kib"]) / 1024
    long_spec, block = series["long"]
    whole_volume_difference_mib = (long_spec.n_slices - series["short"][0].n_slices) * size * size * 2 / 2**20
    assert whole_volume_difference_mib > 150  # so the bound below would catch a whole-volume buffer
    assert increase_mib["long"] - increase_mib["short"] < 60, increase_mib
    # the long volume holds what was written
    volume = voxelpipe.open_volume(tmp_path / "out_long" / "data" / f"{sha_key(long_spec.series_uid)}.zarr")
    for z in (0, 777, 1499):
        np.testing.assert_array_equal(np.asarray(volume.array[z]), block[z % 8])


# ----------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------
def cli(args: list[str], cwd: Path) -> subprocess.Popen:
    """``python -m voxelpipe ARGS`` as a user runs it, without VOXELPIPE_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXELPIPE_")}
    return subprocess.Popen([sys.executable, "-m", "voxelpipe", "--no-progress", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, stdout, stderr


def test_cli_shards_from_a_scan_manifest_and_aggregate(synthetic, tmp_path):
    """``convert --manifest series_all.csv --shard-id I --num-shards 2`` (both shards at once): disjoint
    subsets whose union is every series, each volume equal to what was written; ``aggregate`` lists every
    series once."""
    specs = synthetic["shards"].specs
    keys = {sha_key(s.series_uid) for s in specs}
    manifest = scan_to(synthetic["shards"].folder, tmp_path / "manifest")
    out = tmp_path / "out"
    procs = [cli(["convert", "--manifest", str(manifest), "--out", str(out), "--workers", "1",
                  "--shard-id", str(i), "--num-shards", "2"], tmp_path) for i in (0, 1)]
    for proc in procs:
        code, _, stderr = finish(proc)
        assert code == 0, stderr[-3000:]
    parts = [read_csv(out / f"summary_shard{i:02d}of02.csv") for i in (0, 1)]
    sets = [{r["series_key"] for r in part} for part in parts]
    assert sets[0] and sets[1], "a shard converted nothing"
    assert not sets[0] & sets[1]
    assert sets[0] | sets[1] == keys
    assert all(r["status"] == "done" for part in parts for r in part), parts
    for spec in specs:
        volume = voxelpipe.open_volume(out / "data" / f"{sha_key(spec.series_uid)}.zarr")
        np.testing.assert_array_equal(volume.numpy(), phantom(spec))
    # `python -m voxelpipe aggregate OUT` runs cli.main; called in this process to save an interpreter start
    assert voxelpipe.cli.main(["--no-progress", "aggregate", str(out)]) == 0
    merged = read_csv(out / "summary_all.csv")
    assert sorted(r["series_key"] for r in merged) == sorted(keys)
    assert all(r["status"] == "done" for r in merged)


def test_batch_scheduler_recipe_scan_shards_convert_hdf5_per_shard_aggregate(synthetic, tmp_path):
    """README's SLURM recipe: ``scan --shards 2``, then one ``convert --manifest shards/series_shard_II.csv
    --format hdf5`` per array task, both at once and without --summary-suffix, then ``aggregate``. Each task
    names its own summary and HDF5 file after its shard (one writer per file), every series lands in exactly one
    shard file equal to the phantom, and summary_all.csv points at that file."""
    specs = synthetic["shards"].specs
    keys = {sha_key(s.series_uid) for s in specs}
    assert voxelpipe.cli.main(["--no-progress", "scan", str(synthetic["shards"].folder),
                               "--out", str(tmp_path / "manifest"), "--shards", "2", "--workers", "1"]) == 0
    shards = sorted((tmp_path / "manifest" / "shards").iterdir())
    assert [p.name for p in shards] == ["series_shard_00.csv", "series_shard_01.csv"]
    out = tmp_path / "out"
    procs = [cli(["convert", "--manifest", str(p), "--out", str(out), "--workers", "1", "--format", "hdf5"],
                 tmp_path) for p in shards]
    for proc in procs:
        code, _, stderr = finish(proc)
        assert code == 0, stderr[-3000:]
    assert sorted(p.name for p in out.glob("summary_*.csv")) == ["summary_shard00.csv", "summary_shard01.csv"]
    assert sorted(os.listdir(out / "data")) == ["volumes_shard00.h5", "volumes_shard01.h5"]
    assert voxelpipe.cli.main(["--no-progress", "aggregate", str(out)]) == 0
    merged = {r["series_key"]: r for r in read_csv(out / "summary_all.csv")}
    assert set(merged) == keys and all(r["status"] == "done" for r in merged.values())
    found = {}
    for i in (0, 1):
        path = out / "data" / f"volumes_shard{i:02d}.h5"
        with h5py.File(path, "r") as h5:
            assert len(h5) > 0, f"{path.name} holds no series"
            for key in h5:
                assert key not in found, f"{key} is in two shard files"
                found[key] = h5[key][()]
                assert Path(merged[key]["path"]).name == path.name
    assert set(found) == keys
    for spec in specs:
        np.testing.assert_array_equal(found[sha_key(spec.series_uid)], phantom(spec))


def test_cli_failed_series_exits_nonzero_with_reason(synthetic, tmp_path):
    """The duplicate-slice series fails; a good series given in the same run still converts."""
    good, bad = synthetic["shuffled"], synthetic["duplicate"]
    code, stdout, stderr = finish(cli(["convert", str(bad.folder), str(good.folder), "--out", str(tmp_path / "out"),
                                       "--workers", "1"], tmp_path))
    assert code != 0
    assert sha_key(bad.specs[0].series_uid) in stdout
    assert "duplicat" in stdout.lower(), stdout
    summary = by_key(read_csv(tmp_path / "out" / "summary_run.csv"))
    assert summary[sha_key(good.specs[0].series_uid)]["status"] == "done"
    assert summary[sha_key(bad.specs[0].series_uid)]["status"] == "failed"
