"""`convert` when something goes wrong while writing: a verification mismatch and a full disk fail the series
with the reason, publish nothing, leave no partial output, and the run goes on. 2-D mode in every format."""
from __future__ import annotations

import errno
import os

import numpy as np
import pydicom
import pytest

import voxelpipe
from voxelpipe.pipelines import series_volume
from voxelpipe.stores import zarr_store
from voxelpipe.testing.synthetic import SeriesSpec, phantom_hu, write_series


@pytest.fixture(scope="module")
def two_series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two_series")
    specs = [SeriesSpec(n_slices=12, rows=32, columns=32, seed=s, series_number=s + 1) for s in (1, 2)]
    for index, spec in enumerate(specs):
        write_series(folder / f"s{index}", spec)
    return folder, specs


def _leftovers(out) -> list[str]:
    return [name for _, dirs, files in os.walk(out) for name in dirs + files if ".partial" in name]


def test_verification_mismatch_fails_the_series_and_publishes_nothing(two_series, tmp_path, monkeypatch):
    folder, specs = two_series
    real_rescale = series_volume.rescale

    def corrupting_rescale(stored, slope, intercept, out=None):  # one stored value off by one
        result = real_rescale(stored, slope, intercept, out=out)
        result[...] += 1
        return result

    monkeypatch.setattr(series_volume, "rescale", corrupting_rescale)
    summary = voxelpipe.convert([str(folder)], out=str(tmp_path), workers=1, progress=False, verify_slices=3)
    assert len(summary) == 2
    for row in summary:
        assert row["status"] == "failed"
        assert "verification failed" in row["reason"] and "mismatch" in row["reason"]
        assert not os.path.exists(row["path"])
    assert _leftovers(tmp_path) == []


def test_disk_full_fails_the_series_and_the_run_goes_on(two_series, tmp_path, monkeypatch):
    folder, specs = two_series
    calls = {"n": 0}
    real_write = zarr_store.ZarrVolumeWriter._write_chunks

    def full_disk_once(self, origin, block):  # the first series hits ENOSPC on its second slab
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, origin, block)

    monkeypatch.setattr(zarr_store.ZarrVolumeWriter, "_write_chunks", full_disk_once)
    summary = voxelpipe.convert([str(folder)], out=str(tmp_path), workers=1, progress=False, chunks=(4, 32, 32))
    statuses = sorted(row["status"] for row in summary)
    assert statuses == ["done", "failed"]
    failed = next(r for r in summary if r["status"] == "failed")
    assert "No space left on device" in failed["reason"]
    assert not os.path.exists(failed["path"])
    assert _leftovers(tmp_path) == []
    converted = next(r for r in summary if r["status"] == "done")
    volume = voxelpipe.open_volume(converted["path"])
    expected = [phantom_hu(s.n_slices, s.rows, s.columns, s.seed) for s in specs]
    assert any(np.array_equal(volume.numpy(), e) for e in expected)


@pytest.mark.parametrize("fmt", ["zarr", "hdf5", "npz"])
def test_2d_mode_every_format_holds_each_file_as_pydicom_decodes_it(two_series, tmp_path, fmt):
    folder, specs = two_series
    summary = voxelpipe.convert([str(folder)], out=str(tmp_path), workers=1, progress=False, mode="2d", fmt=fmt)
    assert [r["status"] for r in summary] == ["done", "done"]
    from pydicom.pixels import apply_modality_lut

    from voxelpipe.core.keys import series_key

    files = sorted(p for p in folder.rglob("*.dcm"))
    assert len(files) == 24
    arrays = _instances(summary, fmt)
    for path in files:
        ds = pydicom.dcmread(path)
        expected = apply_modality_lut(ds.pixel_array, ds)[None]
        stored = arrays[series_key(ds.SOPInstanceUID)]
        assert stored.shape == (1, 32, 32)
        np.testing.assert_array_equal(stored, expected)


def _instances(summary: list[dict], fmt: str) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for row in summary:
        if fmt == "zarr":
            import zarr

            group = zarr.open_group(store=zarr_store.open_store(row["path"], "dir", "r"), mode="r")
            arrays.update({name: np.asarray(a[...]) for name, a in group.arrays()})
        elif fmt == "hdf5":
            import h5py

            with h5py.File(row["path"], "r") as handle:
                arrays.update({name: handle[row["series_key"]][name][...] for name in handle[row["series_key"]]})
        else:
            with np.load(row["path"]) as data:
                arrays.update({name: data[name] for name in data.files if name != "attrs_json"})
    return arrays
