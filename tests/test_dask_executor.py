"""convert on a dask.distributed cluster gives exactly what the process pool gives.

The pool's own correctness is tested against pydicom elsewhere (test_convert*.py); here the volumes are also
checked against pydicom's ``apply_modality_lut`` so the dask run is held to the independent reference too.
"""
from __future__ import annotations

import json
import os
import time

import h5py
import numpy as np
import pydicom
import pytest
import zarr
from pydicom.pixels import apply_modality_lut

from voxelpipe.cli.app import main
from voxelpipe.execution import imap
from voxelpipe.pipelines.convert import convert
from voxelpipe.testing.synthetic import write_demo_study

distributed = pytest.importorskip("distributed", reason="the dask executor needs dask.distributed (the dask extra)")

STABLE = ("series_key", "status", "reason", "n_files", "bytes_in", "shape", "dtype", "verification")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask")
    files = write_demo_study(root / "dicom")
    with open(root / "dicom" / "broken.dcm", "wb") as fh:  # one unreadable file: listed, never fatal
        fh.write(b"DICM" * 10)
    return root, {k: v for k, v in files.items() if k != "localizer"}  # the localizer is skipped by scan


def _expected(paths: list[str]) -> np.ndarray:
    """HU volume by pydicom, slices ordered along the slice normal."""
    datasets = [pydicom.dcmread(p) for p in paths]
    normal = np.cross(*np.reshape(np.asarray(datasets[0].ImageOrientationPatient, float), (2, 3)))
    datasets.sort(key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))))
    return np.stack([apply_modality_lut(d.pixel_array, d) for d in datasets])


def _zarr_volumes(out) -> dict[str, tuple[np.ndarray, dict]]:
    found = {}
    for name in sorted(os.listdir(out / "data")):
        group = zarr.open_group(str(out / "data" / name), mode="r")
        found[name] = (group["image"][:], dict(group.attrs))
    return found


def _attrs(attrs: dict, out) -> str:
    """The volume's attributes with its own output folder (in provenance) taken out."""
    return json.dumps({k: v for k, v in attrs.items() if k != "created"}, sort_keys=True).replace(str(out), "OUT")


def _plain(attrs) -> dict:
    """HDF5 attributes as JSON-able values (numpy scalars and arrays as lists)."""
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in attrs.items()}


def _stable(rows: list[dict]) -> list[tuple]:
    return sorted(tuple(str(r.get(c, "")) for c in STABLE) for r in rows)


def test_convert_zarr_on_dask_local_equals_the_pool_and_pydicom(study, tmp_path):
    root, files = study
    pool = convert([str(root / "dicom")], out=str(tmp_path / "pool"), workers=2, progress=False)
    dask = convert([str(root / "dicom")], out=str(tmp_path / "dask"), workers=2, progress=False,
                   executor="dask-local")
    assert _stable(dask) == _stable(pool)
    assert sum(r["status"] == "done" for r in dask) == len(files)
    a, b = _zarr_volumes(tmp_path / "pool"), _zarr_volumes(tmp_path / "dask")
    assert sorted(a) == sorted(b) and len(a) == len(files)
    for name in a:
        np.testing.assert_array_equal(a[name][0], b[name][0])
        assert _attrs(a[name][1], tmp_path / "pool") == _attrs(b[name][1], tmp_path / "dask")
    by_slices = {v[0].shape[0]: v[0] for v in b.values()}
    for paths in files.values():
        expected = _expected([str(p) for p in paths])
        np.testing.assert_array_equal(by_slices[len(paths)], expected)
    for out in ("pool", "dask"):
        summary = json.loads((tmp_path / out / "summary_run.json").read_text())
        assert summary["unreadable_files"] == 1


def test_convert_hdf5_has_one_writer_and_equals_the_pool(study, tmp_path):
    root, _ = study
    for executor in ("pool", "dask-local"):
        rows = convert([str(root / "dicom")], out=str(tmp_path / executor), fmt="hdf5", workers=2,
                       progress=False, executor=executor)
        assert all(r["path"].endswith("volumes_run.h5") for r in rows if r["status"] == "done")
    with h5py.File(tmp_path / "pool" / "data" / "volumes_run.h5") as a, \
            h5py.File(tmp_path / "dask-local" / "data" / "volumes_run.h5") as b:
        assert sorted(a) == sorted(b) and len(a) == 2
        for key in a:
            np.testing.assert_array_equal(a[key][()], b[key][()])
            assert _attrs(_plain(a[key].attrs), tmp_path / "pool") == \
                _attrs(_plain(b[key].attrs), tmp_path / "dask-local")
    # the per-series files the workers wrote were merged by the one writer and removed
    assert sorted(os.listdir(tmp_path / "dask-local" / "data")) == ["volumes_run.h5"]


def test_dask_scheduler_address_runs_on_that_cluster(study, tmp_path):
    """``--executor dask --scheduler tcp://…``: a cluster started elsewhere (here: a LocalCluster of this test)."""
    root, files = study
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) \
            as cluster:
        assert main(["--no-progress", "convert", str(root / "dicom"), "--out", str(tmp_path / "remote"),
                     "--executor", "dask", "--scheduler", cluster.scheduler_address]) == 0
    volumes = _zarr_volumes(tmp_path / "remote")
    assert sorted(v[0].shape[0] for v in volumes.values()) == sorted(len(p) for p in files.values())


def _slow_identity(i: int) -> int:
    """Later items finish first: a result order that follows completion would come out reversed."""
    time.sleep(0.05 * (6 - i))
    return i


def test_results_come_back_in_input_order():
    assert list(imap(_slow_identity, range(6), workers=2, executor="dask-local")) == list(range(6))


def _die_on_three(i: int) -> int:
    if i == 3:
        os._exit(1)  # the worker process dies under the task, as after an out-of-memory kill
    return i


def test_a_task_whose_worker_dies_becomes_its_on_error_result_and_the_rest_run():
    results = list(imap(_die_on_three, range(6), workers=2, executor="dask-local",
                        on_error=lambda item, exc: ("lost", item, type(exc).__name__)))
    assert results == [0, 1, 2, ("lost", 3, "KilledWorker"), 4, 5]
    # the cluster is still usable afterwards
    assert list(imap(_slow_identity, [1, 2], workers=2, executor="dask-local")) == [1, 2]
