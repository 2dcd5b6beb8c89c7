"""Converted outputs read over URLs (fsspec): ``open_volume``, ``open_masks``, the readers and ``report``.

A convert output folder is served by Python's own ``http.server`` (ThreadingHTTPServer on 127.0.0.1, port 0,
in a thread; a small subclass answers HTTP range requests as real servers and S3 do) and copied into fsspec's
``memory://`` filesystem. Every array read through a URL is compared with the same file read locally by the
format's own library (plain zarr-python, h5py, numpy, nibabel), never by voxelpipe. s3:// is not tested (no
network; moto is not installed).
"""
from __future__ import annotations

import csv
import functools
import json
import os
import re
import sys
import threading
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest
import zarr

import voxelpipe
from voxelpipe.apps.report import build_report, html_path
from voxelpipe.cli.app import main
from voxelpipe.core.errors import InputError
from voxelpipe.pipelines.masks import add_masks_from_manifest
from voxelpipe.reader import PairReader, PatchReader, SliceReader, pair_files, volume_paths
from voxelpipe.stores import remote
from voxelpipe.stores.masks import open_masks
from voxelpipe.stores.volumes import open_volume
from voxelpipe.testing.synthetic import SeriesSpec, sphere_contours, write_demo_study, write_rtstruct, write_series

fsspec = pytest.importorskip("fsspec", reason="reading URLs needs fsspec (the remote extra)")
pytest.importorskip("aiohttp", reason="fsspec's http(s):// filesystem needs aiohttp (the remote extra)")


# ----------------------------------------------------------------------------------------------------------
# a local HTTP server
# ----------------------------------------------------------------------------------------------------------
RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class RangeHandler(SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler that also answers ``Range: bytes=a-b`` (one range) with 206, quietly."""

    def log_message(self, *args) -> None:
        pass

    def send_head(self):
        match = RANGE.match(self.headers.get("Range", "").strip())
        path = self.translate_path(self.path)
        if match is None or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        first, last = match.groups()
        if first == "":
            start, stop = max(size - int(last), 0), size
        else:
            start, stop = int(first), min(int(last) + 1 if last else size, size)
        if start >= size:
            self.send_error(416)
            return None
        fh = open(path, "rb")
        fh.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.send_header("Content-Length", str(stop - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._range_left = stop - start
        return fh

    def copyfile(self, source, outputfile):
        left = getattr(self, "_range_left", None)
        if left is None:
            return super().copyfile(source, outputfile)
        self._range_left = None
        outputfile.write(source.read(left))


class NoIndexHandler(RangeHandler):
    """A static host: files only; a folder answers 404 (no index page, no redirect)."""

    def send_head(self):
        if os.path.isdir(self.translate_path(self.path)):
            self.send_error(404)
            return None
        return super().send_head()


def _serve(root: Path, handler):
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A demo CT with two RTSTRUCT masks converted to Zarr folders, and one small series in every other kind."""
    root = tmp_path_factory.mktemp("remote")
    files = write_demo_study(root / "dicom")
    z = [float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in files["ct"]]
    write_rtstruct(root / "dicom" / "rs.dcm", files["ct"],
                   {"Ball": sphere_contours((5.0, -3.0, z[25]), 8.0, z),
                    "Box": sphere_contours((-10.0, 5.0, z[10]), 5.0, z)})
    out = root / "out"
    voxelpipe.convert([str(root / "dicom")], out=str(out), workers=1, progress=False)
    add_masks_from_manifest(out / "manifest", out, workers=1, progress=False)
    small = SeriesSpec(n_slices=6, rows=24, columns=20, seed=2, series_description="small")
    write_series(root / "small", small)
    kinds = {"npz": dict(fmt="npz"), "h5": dict(fmt="hdf5"), "nii": dict(fmt="nifti"),
             "zip": dict(store="zip"), "sqlite": dict(store="sqlite")}
    for name, options in kinds.items():
        voxelpipe.convert([str(root / "small")], out=str(root / f"out_{name}"), workers=1, progress=False,
                          **options)
    return root


@pytest.fixture(scope="module")
def served(study):
    server, thread = _serve(study, RangeHandler)
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _one(folder: Path, pattern: str) -> Path:
    [found] = sorted((folder / "data").glob(pattern))
    return found


def _zarr_image(path: Path) -> tuple[np.ndarray, dict]:
    """Image and attrs of a Zarr folder volume read by plain zarr-python."""
    group = zarr.open_group(store=zarr.storage.LocalStore(str(path), read_only=True), mode="r")
    return np.asarray(group["image"][...]), dict(group.attrs)


# ----------------------------------------------------------------------------------------------------------
# open_volume / open_masks over http
# ----------------------------------------------------------------------------------------------------------
def test_open_volume_http_zarr_equals_plain_zarr(study, served):
    for local in sorted((study / "out" / "data").glob("*.zarr")):
        url = f"{served}/out/data/{local.name}"
        volume = open_volume(url)
        expected, attrs = _zarr_image(local)
        assert volume.path == url
        np.testing.assert_array_equal(np.asarray(volume.array[...]), expected)
        assert volume.attrs == attrs
        np.testing.assert_allclose(volume.geometry.spacing, attrs["spacing"])
        np.testing.assert_allclose(volume.geometry.origin, attrs["origin"])


def test_open_masks_http_equals_plain_zarr(study, served):
    masked = [p for p in (study / "out" / "data").glob("*.zarr") if (p / "labels").is_dir()]
    assert masked, "the RTSTRUCT added no masks"
    for local in masked:  # NGFF labels: labels/<name>/0 is the full-resolution mask
        group = zarr.open_group(store=zarr.storage.LocalStore(str(local), read_only=True), mode="r")
        expected = {name: np.asarray(label["0"][...]) for name, label in group["labels"].groups()}
        got = open_masks(f"{served}/out/data/{local.name}")
        assert sorted(got) == sorted(expected) and {"Ball", "Box"} <= set(got)
        for name, array in got.items():
            np.testing.assert_array_equal(np.asarray(array[...]), expected[name])


def test_open_volume_http_other_kinds(study, served):
    # .npz: numpy's own reading of the local file
    local = _one(study / "out_npz", "*.npz")
    with np.load(local) as data:
        expected, attrs = data["image"], json.loads(str(data["attrs_json"]))
    volume = open_volume(f"{served}/out_npz/data/{local.name}")
    np.testing.assert_array_equal(np.asarray(volume.array), expected)
    assert volume.attrs == attrs
    # .h5: h5py on the local file, the remote one read lazily by HTTP ranges
    local = _one(study / "out_h5", "*.h5")
    with h5py.File(local, "r") as handle:
        [key] = list(handle)
        expected = handle[key][...]
    volume = open_volume(f"{served}/out_h5/data/{local.name}", key)
    np.testing.assert_array_equal(volume.array[...], expected)
    np.testing.assert_array_equal(volume.array[2, 3:9], expected[2, 3:9])
    # .nii.gz: nibabel's array, from NIfTI (i, j, k) to (slice, row, column) = k, j reversed, i
    nib = pytest.importorskip("nibabel", reason="NIfTI needs nibabel")
    local = _one(study / "out_nii", "*.nii.gz")
    data = np.asanyarray(nib.load(str(local)).dataobj)
    volume = open_volume(f"{served}/out_nii/data/{local.name}")
    np.testing.assert_array_equal(np.asarray(volume.array), np.flip(data.T, axis=-2))
    assert volume.attrs.get("series_key") == local.name[:-len(".nii.gz")]  # meta/<key>.series.json fetched too
    # .zarr.zip: plain zarr's ZipStore on the local file
    local = _one(study / "out_zip", "*.zarr.zip")
    store = zarr.storage.ZipStore(str(local), mode="r", read_only=True)
    expected = np.asarray(zarr.open_group(store=store, mode="r")["image"][...])
    store.close()
    volume = open_volume(f"{served}/out_zip/data/{local.name}")
    np.testing.assert_array_equal(np.asarray(volume.array[...]), expected)


def test_static_host_without_folder_index(study):
    """A .zarr folder is found by its zarr.json; only listing a folder needs an index page."""
    server, thread = _serve(study, NoIndexHandler)
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        local = sorted((study / "out" / "data").glob("*.zarr"))[0]
        expected, _ = _zarr_image(local)
        url = f"{base}/out/data/{local.name}"
        np.testing.assert_array_equal(np.asarray(open_volume(url).array[...]), expected)
        assert volume_paths(url) == [url]
        with pytest.raises(InputError, match="neither a Zarr volume"):
            volume_paths(f"{base}/out/data")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class PlainHandler(SimpleHTTPRequestHandler):
    """Python's own server as it is: no range requests."""

    def log_message(self, *args) -> None:
        pass


def test_zip_without_range_requests_says_so(study):
    server, thread = _serve(study, PlainHandler)
    try:
        local = _one(study / "out_zip", "*.zarr.zip")
        with pytest.raises(InputError, match="range requests"):
            open_volume(f"http://127.0.0.1:{server.server_port}/out_zip/data/{local.name}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_sqlite_url_is_refused_with_the_kinds_that_work(study, served):
    local = _one(study / "out_sqlite", "*.zarr.sqlite")
    with pytest.raises(InputError, match=r"\.zarr\.sqlite.*local.*\.zarr, \.zarr\.zip, \.h5"):
        open_volume(f"{served}/out_sqlite/data/{local.name}")


def test_missing_url_volume(served):
    with pytest.raises(InputError, match="no such volume"):
        open_volume(f"{served}/out/data/nothing.zarr")


def test_url_without_fsspec_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "fsspec", None)  # import fsspec now raises ImportError
    with pytest.raises(InputError, match=r"voxelpipe\[remote\]"):
        open_volume("http://127.0.0.1:9/out/data/x.zarr")
    with pytest.raises(InputError, match=r"voxelpipe\[remote\]"):
        volume_paths("s3://bucket/out/data")


def test_file_url_and_windows_drive():
    assert remote.is_url("file:///tmp/x.zarr") and remote.local_path("file:///tmp/a%20b.zarr") == "/tmp/a b.zarr"
    assert not remote.is_url("C://data/x.zarr") and not remote.is_url("/data/x.zarr")


def test_open_volume_file_url(study):
    local = sorted((study / "out" / "data").glob("*.zarr"))[0]
    expected, _ = _zarr_image(local)
    volume = open_volume(local.as_uri())
    np.testing.assert_array_equal(np.asarray(volume.array[...]), expected)


# ----------------------------------------------------------------------------------------------------------
# memory://
# ----------------------------------------------------------------------------------------------------------
def test_open_volume_memory(study):
    local = sorted((study / "out" / "data").glob("*.zarr"))[0]
    memory = fsspec.filesystem("memory")
    memory.put(str(local), "memory://remote-test/x.zarr", recursive=True)
    try:
        expected, attrs = _zarr_image(local)
        volume = open_volume("memory://remote-test/x.zarr")
        np.testing.assert_array_equal(np.asarray(volume.array[...]), expected)
        assert volume.attrs == attrs
        assert volume_paths("memory://remote-test") == ["memory://remote-test/x.zarr"]
    finally:
        memory.rm("memory://remote-test", recursive=True)


# ----------------------------------------------------------------------------------------------------------
# the readers
# ----------------------------------------------------------------------------------------------------------
def test_volume_paths_of_a_served_folder(study, served):
    names = sorted(p.name for p in (study / "out" / "data").glob("*.zarr"))
    assert volume_paths(f"{served}/out/data") == [f"{served}/out/data/{n}" for n in names]
    assert volume_paths(f"{served}/out/") == [f"{served}/out/data/{n}" for n in names]


def test_slice_reader_over_http_equals_numpy_slicing(study, served):
    reader = SliceReader(f"{served}/out/data", batch_size=7, seed=3, prefetch=0)
    local = {f"{served}/out/data/{p.name}": p for p in (study / "out" / "data").glob("*.zarr")}
    arrays = {url: _zarr_image(path)[0] for url, path in local.items()}
    masks = {}
    for url, path in local.items():
        group = zarr.open_group(store=zarr.storage.LocalStore(str(path), read_only=True), mode="r")
        masks[url] = ({n: np.asarray(label["0"][...]) for n, label in group["labels"].groups()}
                      if "labels" in group else {})
    seen = Counter()
    for batch in reader:
        for i, (source, index) in enumerate(zip(batch["source"], batch["index"])):
            np.testing.assert_array_equal(batch["image"][i], arrays[source][index])
            for k, name in enumerate(reader.mask_names):
                present = name in masks[source]
                assert batch["present"][i, k] == present
                if present:
                    np.testing.assert_array_equal(batch["mask"][i, k], masks[source][name][index])
            seen[(source, int(index))] += 1
    assert sorted(seen) == sorted((url, z) for url, a in arrays.items() for z in range(a.shape[0]))
    assert set(seen.values()) == {1}  # every slice once


def test_patch_reader_over_http_equals_numpy_slicing(study, served):
    reader = PatchReader(f"{served}/out/data", patch_size=(4, 16, 16), patches_per_volume=3, batch_size=4,
                         seed=5, prefetch=0)
    arrays = {f"{served}/out/data/{p.name}": _zarr_image(p)[0] for p in (study / "out" / "data").glob("*.zarr")}
    batches = list(reader)
    assert sum(len(b["source"]) for b in batches) == 3 * len(arrays)
    for batch in batches:
        for i, (source, start) in enumerate(zip(batch["source"], batch["start"])):
            z, y, x = (int(v) for v in start)
            np.testing.assert_array_equal(batch["image"][i], arrays[source][z:z + 4, y:y + 16, x:x + 16])


def test_pair_reader_over_http(study, served):
    folder = study / "pairs"
    written = []
    for n in range(5):
        rel = f"p{n % 2}/{n:04d}.npz"
        os.makedirs(folder / f"p{n % 2}", exist_ok=True)
        np.savez_compressed(folder / rel, image=np.full((6, 5), n, np.int16), mask_i=np.eye(6, 5, dtype=np.uint8),
                            meta_json=json.dumps({"id": n}))
        written.append(rel)
    url = f"{served}/pairs"
    assert pair_files(url) == sorted(f"{url}/{rel}" for rel in written)  # no filelist: the listing
    (folder / "filelist.txt").write_text("\n".join(reversed(written)) + "\n")
    assert pair_files(url) == [f"{url}/{rel}" for rel in reversed(written)]
    reader = PairReader(url, batch_size=2, shuffle=False, prefetch=0)
    for batch in reader:
        for i, source in enumerate(batch["source"]):
            with np.load(folder / source[len(url) + 1:]) as data:
                np.testing.assert_array_equal(batch["image"][i], data["image"])
                np.testing.assert_array_equal(batch["mask"][i, 0], data["mask_i"])
                assert batch["meta"][i] == json.loads(str(data["meta_json"]))


# ----------------------------------------------------------------------------------------------------------
# report of a served output folder
# ----------------------------------------------------------------------------------------------------------
def test_report_of_a_served_folder(study, served, tmp_path):
    url = f"{served}/out"
    data = build_report(url, samples=3, seed=0, progress=False)
    with open(next((study / "out").glob("summary_*.csv")), newline="", encoding="utf-8") as fh:
        statuses = Counter(row["status"] for row in csv.DictReader(fh))
    assert data.status_counts == dict(statuses)
    assert data.out == url and data.problems == []
    assert data.sections and all(s.pictures for s in data.sections if "sampled" in s.roles)
    assert ("manifest", f"{url}/manifest/series_all.csv") in data.facts

    html = tmp_path / "remote.html"
    assert main(["--no-progress", "report", url, "--html", str(html), "--samples", "2"]) == 0
    page = html.read_text(encoding="utf-8")
    assert "data:image/png;base64," in page
    assert not (study / "out" / "report.html").exists()  # nothing written into the served folder


def test_report_of_a_file_url_is_local(study):
    out = study / "out"
    assert html_path(out.as_uri(), None) == str(out / "report.html")
    data = build_report(out.as_uri(), samples=0, progress=False)
    assert data.out == str(out)


def test_report_of_a_url_needs_html(served, caplog):
    assert main(["--no-progress", "report", f"{served}/out"]) == 2  # a bad request, before anything is read
    assert "--html" in caplog.text
