"""``.zarr.sqlite`` volumes read by plain zarr-python through the importable ``SqliteStore`` class.

The reference is plain zarr: ``zarr.open_group(SqliteStore(path, read_only=True), mode="r")`` as the docs tell
other tools to do, and, independently of the class, the SQLite table read with Python's ``sqlite3`` module and
copied key by key into zarr's own ``MemoryStore`` (the documented layout: ``kv(key, value)`` holding zarr v3
keys).
"""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

import voxelpipe
from voxelpipe.core.masks import Mask
from voxelpipe.stores.masks import write_masks
from voxelpipe.stores.sqlite_store import SqliteStore
from voxelpipe.stores.volumes import open_volume
from voxelpipe.testing.synthetic import SeriesSpec, write_series


@pytest.fixture(scope="module")
def sqlite_volume(tmp_path_factory):
    root = tmp_path_factory.mktemp("sqlite")
    write_series(root / "dicom", SeriesSpec(n_slices=7, rows=20, columns=18, seed=4))
    out = root / "out"
    voxelpipe.convert([str(root / "dicom")], out=str(out), store="sqlite", workers=1, progress=False)
    [path] = sorted((out / "data").glob("*.zarr.sqlite"))
    ball = np.zeros((7, 20, 18), np.uint8)
    ball[2:5, 5:12, 4:9] = 1
    write_masks(path, [Mask("ball", ball)])
    return path, ball


def _memory_copy(path) -> zarr.Group:
    """The SQLite file's kv rows, read with sqlite3, put in a zarr MemoryStore and opened by plain zarr."""
    with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT key, value FROM kv").fetchall()
    store = zarr.storage.MemoryStore()
    buffer = default_buffer_prototype().buffer
    for key, value in rows:
        sync(store.set(key, buffer.from_bytes(value)))
    return zarr.open_group(store=store, mode="r")


def test_plain_zarr_reads_sqlite_volume(sqlite_volume):
    path, ball = sqlite_volume
    store = SqliteStore(path, read_only=True)
    try:
        group = zarr.open_group(store, mode="r")
        image = np.asarray(group["image"][...])
        mask = np.asarray(group["labels/ball/0"][...])
        attrs = dict(group.attrs)
    finally:
        store.close()
    volume = open_volume(path)
    np.testing.assert_array_equal(image, np.asarray(volume.array[...]))
    assert attrs == volume.attrs
    np.testing.assert_array_equal(mask, ball)

    reference = _memory_copy(path)  # the same bytes without SqliteStore
    np.testing.assert_array_equal(np.asarray(reference["image"][...]), image)
    np.testing.assert_array_equal(np.asarray(reference["labels/ball/0"][...]), ball)
    assert dict(reference.attrs) == attrs


def test_sqlite_store_is_read_only_when_asked(sqlite_volume):
    path, _ = sqlite_volume
    store = SqliteStore(path, read_only=True)
    try:
        group = zarr.open_group(store, mode="r")
        with pytest.raises(ValueError):
            group["image"][0, 0, 0] = 1
    finally:
        store.close()


def test_two_readers_at_once(sqlite_volume):
    path, _ = sqlite_volume
    first, second = SqliteStore(path, read_only=True), SqliteStore(path, read_only=True)
    try:
        a = zarr.open_group(first, mode="r")["image"]
        b = zarr.open_group(second, mode="r")["image"]
        np.testing.assert_array_equal(a[3], b[3])
    finally:
        first.close()
        second.close()
