"""Subject files (``voxelpipe.stores.subject_store``): round trip in HDF5 and Zarr, the documented layout read
with h5py / zarr directly, completion (an interrupted write is not listed and is replaced by the next write)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from voxelpipe import __version__
from voxelpipe.core.errors import InputError
from voxelpipe.core.geometry import Geometry
from voxelpipe.stores import subject_store
from voxelpipe.stores.subject_store import LAYOUT_VERSION, open_subject_store

LAS = np.diag([1.0, -1.0, 1.0])
KINDS = ["s.h5", "s.zarr"]


def make_subject(seed: int, shape=(6, 8, 5)):
    rng = np.random.default_rng(seed)
    image = rng.random((2, *shape), dtype=np.float32)
    mask = (rng.random((1, *shape)) > 0.7).astype(np.uint8)
    mask_iso = mask * (rng.random((1, *shape)) > 0.5)
    geometry = Geometry(shape, [2.0, 2.0, 3.0], [-10.0, 20.0, -30.0], LAS)
    attrs = {"geometry": geometry.to_attrs(), "suv_audit": {"units": "BQML", "factor": 1.5e-4, "weight": None},
             "normalisation": {"ct_window": [-1000.0, 1000.0], "suv_window": [0, 20]}, "orientation": "LAS",
             "source": "[looks like json]", "n_lesions": 2, "ok": True}
    return image, mask, mask_iso.astype(np.uint8), attrs


@pytest.mark.parametrize("name", KINDS)
def test_round_trip(tmp_path, name):
    path = tmp_path / name
    subjects = {f"subj{i:03d}": make_subject(i) for i in range(3)}
    with open_subject_store(path, "a") as store:
        for key, (image, mask, mask_iso, attrs) in subjects.items():
            store.write(key, image, mask, mask_iso, attrs)
    with open_subject_store(path) as store:
        assert store.kind == ("hdf5" if name.endswith(".h5") else "zarr")
        assert store.subjects() == sorted(subjects)
        assert len(store) == 3 and store.has("subj001") and not store.has("nope") and store.incomplete() == []
        assert store.attrs["layout_version"] == LAYOUT_VERSION
        assert store.attrs["voxelpipe_version"] == __version__
        assert "mask_iso" in store.attrs["layout"]
        for key, (image, mask, mask_iso, attrs) in subjects.items():
            data = store.read(key)
            assert data["image"].dtype == np.float32 and data["image"].shape == (2, 6, 8, 5)
            np.testing.assert_array_equal(data["image"], image)
            assert data["mask"].dtype == np.uint8 and data["mask_iso"].dtype == np.uint8
            np.testing.assert_array_equal(data["mask"], mask)
            np.testing.assert_array_equal(data["mask_iso"], mask_iso)
            assert data["attrs"] == attrs  # exactly, nested values included
            assert Geometry.from_attrs(data["attrs"]["geometry"]).shape == (6, 8, 5)
        with pytest.raises(InputError, match="read-only"):
            store.write("x", *subjects["subj000"])
        with pytest.raises(InputError, match="no complete subject"):
            store.read("nope")


def test_hdf5_layout_with_h5py(tmp_path):
    import h5py

    path = tmp_path / "s.h5"
    image, mask, mask_iso, attrs = make_subject(0, shape=(4, 300, 300))
    with open_subject_store(path, "a") as store:
        store.write("abc1234def", image, mask, mask_iso, attrs)
    with h5py.File(path, "r") as f:
        assert set(f.keys()) == {"image", "mask", "mask_iso"}
        d = f["image/abc1234def"]
        assert d.shape == (2, 4, 300, 300) and d.dtype == np.float32
        assert d.compression == "gzip" and d.compression_opts == 1 and d.shuffle
        assert d.chunks[0] == 1 and d.chunks[2:] == (300, 300)  # one channel, slabs along axis 0
        assert f["mask/abc1234def"].shape == (1, 4, 300, 300) and f["mask_iso/abc1234def"].dtype == np.uint8
        assert bool(d.attrs["complete"]) is True
        assert json.loads(d.attrs["geometry"])["shape"] == [4, 300, 300]  # nested values as JSON text
        assert d.attrs["orientation"] == "LAS"
        assert "geometry" in json.loads(d.attrs["_json"])
        assert f.attrs["layout_version"] == LAYOUT_VERSION


def test_zarr_layout_with_zarr(tmp_path):
    import zarr

    path = tmp_path / "s.zarr"
    image, mask, mask_iso, attrs = make_subject(0)
    with open_subject_store(path, "a") as store:
        store.write("abc1234def", image, mask, mask_iso, attrs)
    root = zarr.open_group(str(path), mode="r")
    array = root["image/abc1234def"]
    assert array.shape == (2, 6, 8, 5) and array.dtype == np.float32 and array.chunks[0] == 1
    assert array.attrs["complete"] is True and array.attrs["geometry"]["shape"] == [6, 8, 5]
    codec = array.compressors[0]
    assert codec.cname.value == "zstd" and codec.clevel == 1
    assert root["mask_iso/abc1234def"].dtype == np.uint8 and root.attrs["layout_version"] == LAYOUT_VERSION


@pytest.mark.parametrize("name", KINDS)
def test_inputs_checked_and_cast(tmp_path, name):
    image, mask, mask_iso, attrs = make_subject(0)
    with open_subject_store(tmp_path / name, "a") as store:
        store.write("bool", image.astype(np.float64), mask.astype(bool), mask_iso.astype(np.int32), attrs)
        data = store.read("bool")
        assert data["image"].dtype == np.float32 and data["mask"].dtype == np.uint8
        np.testing.assert_array_equal(data["mask"], mask)
        with pytest.raises(InputError, match=r"image must be \[2"):
            store.write("s", image[:1], mask, mask_iso, attrs)
        with pytest.raises(InputError, match="mask_iso must have shape"):
            store.write("s", image, mask, mask_iso[:, :2], attrs)
        with pytest.raises(InputError, match="0..255"):
            store.write("s", image, mask.astype(np.int16) * 300, mask_iso, attrs)
        with pytest.raises(InputError, match="not usable"):
            store.write("a/b", image, mask, mask_iso, attrs)
        store.write("np", image, mask, mask_iso, {"a": np.float32(1.5), "b": np.arange(3), "c": np.int64(2)})
        assert store.read_attrs("np") == {"a": 1.5, "b": [0, 1, 2], "c": 2}
        with pytest.raises(InputError, match="JSON-ready"):
            store.write("s", image, mask, mask_iso, {"bad": object()})
        assert store.subjects() == ["bool", "np"]


def test_open_errors(tmp_path):
    with pytest.raises(InputError, match="no such subject file"):
        open_subject_store(tmp_path / "missing.h5")
    with pytest.raises(InputError, match="unknown subject file kind"):
        open_subject_store(tmp_path / "x.nii", "a")


@pytest.mark.parametrize("name", KINDS)
def test_interrupted_write_not_listed_and_replaced(tmp_path, name, monkeypatch):
    path = tmp_path / name
    good = make_subject(1)
    with open_subject_store(path, "a") as store:
        store.write("done", *good)

    # a crash between the array writes and the completion mark
    backend = type(open_subject_store(path)._backend)

    def crash(self, subject):
        raise RuntimeError("simulated crash")

    with monkeypatch.context() as patch:
        patch.setattr(backend, "mark_complete", crash)
        with open_subject_store(path, "a") as store, pytest.raises(RuntimeError):
            store.write("half", *make_subject(2))
    with open_subject_store(path) as store:
        assert store.subjects() == ["done"]
        assert store.incomplete() == ["half"]
        assert not store.has("half")
        with pytest.raises(InputError):
            store.read("half")

    # a crash earlier: only the mask written
    with monkeypatch.context() as patch:
        def put_then_crash(self, group, subject, data, _put=backend.put):
            if group == "image":
                raise RuntimeError("simulated crash")
            _put(self, group, subject, data)
        patch.setattr(backend, "put", put_then_crash)
        with open_subject_store(path, "a") as store, pytest.raises(RuntimeError):
            store.write("early", *make_subject(3))
    with open_subject_store(path) as store:
        assert store.subjects() == ["done"] and store.incomplete() == ["early", "half"]

    # the rerun replaces the leftovers
    new = make_subject(4, shape=(3, 4, 5))
    with open_subject_store(path, "a") as store:
        store.write("half", *new)
        store.write("early", *new)
    with open_subject_store(path) as store:
        assert store.subjects() == ["done", "early", "half"] and store.incomplete() == []
        data = store.read("half")
        np.testing.assert_array_equal(data["image"], new[0])
        np.testing.assert_array_equal(data["mask_iso"], new[2])
        np.testing.assert_array_equal(store.read("done")["image"], good[0])


@pytest.mark.parametrize("name", KINDS)
def test_process_killed_mid_write(tmp_path, name):
    """A real crash: the writing process dies (os._exit) after the arrays, before the completion mark."""
    path = tmp_path / name
    script = textwrap.dedent(f"""
        import os, numpy as np
        from voxelpipe.stores import subject_store
        from voxelpipe.stores.subject_store import open_subject_store
        image = np.ones((2, 4, 5, 6), np.float32); mask = np.zeros((1, 4, 5, 6), np.uint8)
        store = open_subject_store({str(path)!r}, "a")
        store.write("first", image, mask, mask, {{"n": 1}})
        for cls in (subject_store._Hdf5Backend, subject_store._ZarrBackend):
            cls.mark_complete = lambda self, name: os._exit(3)
        store.write("second", image, mask, mask, {{"n": 2}})
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 3, result.stderr
    with open_subject_store(path) as store:
        assert store.subjects() == ["first"] and store.incomplete() == ["second"]
    image = np.full((2, 4, 5, 6), 2, np.float32)
    with open_subject_store(path, "a") as store:
        store.write("second", image, np.ones((1, 4, 5, 6), np.uint8), np.ones((1, 4, 5, 6), np.uint8), {"n": 3})
    with open_subject_store(path) as store:
        assert store.subjects() == ["first", "second"]
        assert store.read("second")["attrs"] == {"n": 3}
        np.testing.assert_array_equal(store.read("second")["image"], image)


def test_write_replaces_complete_subject(tmp_path):
    path = tmp_path / "s.h5"
    with open_subject_store(path, "a") as store:
        store.write("s", *make_subject(0))
        store.write("s", *make_subject(1, shape=(2, 3, 4)))
        assert store.shape("s") == (2, 2, 3, 4) and store.subjects() == ["s"]


def test_chunks_for():
    assert subject_store.chunks_for((2, 200, 200, 300), 4) == (1, 17, 200, 300)
    assert subject_store.chunks_for((1, 3, 4, 5), 1) == (1, 3, 4, 5)
