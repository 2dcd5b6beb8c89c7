"""Shared fixtures and markers for the tests.

``shared_data``: the real DICOM test data beside the repository (../shared/data, or $VOXELPIPE_TEST_DATA);
tests using it skip when it is absent, and are marked ``real_data`` at collection.
``slow``: the test modules in ``SLOW_MODULES`` (more than about 20 s each on a 2-core machine) are marked ``slow``
at collection. Markers only select: ``python -m pytest`` runs everything; ``-m "not slow and not bench"`` is the
quick run.
``synthetic``: synthetic studies written once per session with pydicom (voxelpipe.testing.synthetic plus direct pydicom
edits for what synthetic.py cannot do). Every case records the facts it was built from (specs, the paths in
slice order, the positions it was written at), so tests compare scan's tables against what was written, never
against scan's own output.
"""
from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest

from voxelpipe import scan
from voxelpipe.testing.synthetic import SeriesSpec, write_localizer, write_series

from helpers import resave

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA_SKIP = "../shared/data not found: real-data tests need the shared test data beside the repo"
SMALL = dict(rows=16, columns=16)
TESTS = Path(__file__).resolve().parent
# test modules that take more than about 20 s on a 2-core machine (measured with --durations)
SLOW_MODULES = frozenset({"test_scale.py"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``real_data`` on every test that uses the ``shared_data`` fixture (directly or through another fixture),
    ``slow`` on the tests of ``SLOW_MODULES``."""
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_data)
        path = Path(item.path)
        if path.parent == TESTS and path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def _no_key_secret():
    """A VOXELPIPE_KEY_SECRET in the developer's environment would change every series key."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("VOXELPIPE_KEY_SECRET", raising=False)
        yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    env = os.environ.get("VOXELPIPE_TEST_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(SHARED_DATA_SKIP)
    return path


# ----------------------------------------------------------------------------------------------------------
# synthetic studies
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One synthetic folder and the facts it was built from."""

    folder: Path
    specs: list[SeriesSpec] = field(default_factory=list)
    paths: dict[str, list[str]] = field(default_factory=dict)  # role -> paths (image series: in slice order)
    extra: dict[str, object] = field(default_factory=dict)



def _write_shuffled(folder: Path, spec: SeriesSpec, **kwargs) -> list[str]:
    return write_series(folder, spec, names="shuffled", **kwargs)


def _build_cases(root: Path) -> dict[str, Case]:
    cases: dict[str, Case] = {}

    # shuffled names, no extension, nested three folders deep
    spec = SeriesSpec(n_slices=15, spacing=(2.0, 0.5, 0.5), origin=(-4.0, -4.0, -20.0), seed=1, **SMALL)
    folder = root / "shuffled"
    paths = _write_shuffled(folder / "a" / "b" / "c", spec)
    cases["shuffled"] = Case(folder, [spec], {"series": paths},
                             {"z": [spec.origin[2] + i * spec.spacing[0] for i in range(spec.n_slices)]})

    # slice 5 written twice
    spec = SeriesSpec(n_slices=12, spacing=(2.5, 0.5, 0.5), seed=2, **SMALL)
    folder = root / "duplicate"
    cases["duplicate"] = Case(folder, [spec], {"series": write_series(folder, spec, duplicate=[5])})

    # slice 10 left out
    spec = SeriesSpec(n_slices=20, spacing=(1.5, 0.5, 0.5), seed=3, **SMALL)
    folder = root / "missing"
    cases["missing"] = Case(folder, [spec], {"series": write_series(folder, spec, skip=[10])})

    # gantry tilt of 12 degrees
    spec = SeriesSpec(n_slices=12, spacing=(3.0, 0.5, 0.5), tilt_deg=12.0, seed=4, **SMALL)
    folder = root / "tilt"
    cases["tilt"] = Case(folder, [spec], {"series": write_series(folder, spec)})

    # a localizer in the folder and the series of an axial series
    spec = SeriesSpec(n_slices=10, seed=5, **SMALL)
    folder = root / "localizer"
    paths = write_series(folder, spec)
    cases["localizer"] = Case(folder, [spec], {"series": paths, "localizer": [write_localizer(folder, spec)]})

    # two series in one folder
    a = SeriesSpec(n_slices=9, seed=6, series_number=2, **SMALL)
    b = SeriesSpec(n_slices=5, seed=7, series_number=3, study_uid=a.study_uid, **SMALL)
    folder = root / "two_series"
    cases["two_series"] = Case(folder, [a, b], {"a": _write_shuffled(folder, a), "b": _write_shuffled(folder, b)})

    # one SeriesInstanceUID, two image sizes
    a = SeriesSpec(n_slices=10, seed=8, **SMALL)
    b = SeriesSpec(n_slices=6, rows=12, columns=12, seed=9, study_uid=a.study_uid, series_uid=a.series_uid)
    folder = root / "sizes"
    cases["sizes"] = Case(folder, [a, b], {"a": _write_shuffled(folder, a), "b": _write_shuffled(folder, b)})

    # one SeriesInstanceUID, axial and coronal images
    a = SeriesSpec(n_slices=10, seed=10, **SMALL)
    b = SeriesSpec(n_slices=6, seed=11, study_uid=a.study_uid, series_uid=a.series_uid, **SMALL)
    folder = root / "orientation"
    paths_a = _write_shuffled(folder, a)
    paths_b = _write_shuffled(folder, b)
    for i, path in enumerate(paths_b):
        def coronal(ds, i=i):
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
            ds.ImagePositionPatient = ["-6", f"{-10 + 2 * i:g}", "30"]
        resave(path, coronal)
    cases["orientation"] = Case(folder, [a, b], {"a": paths_a, "b": paths_b})

    # RescaleSlope differs on two slices
    spec = SeriesSpec(n_slices=10, seed=12, **SMALL)
    folder = root / "rescale"
    paths = write_series(folder, spec)
    for index in (3, 7):
        resave(paths[index], lambda ds: setattr(ds, "RescaleSlope", "2"))
    cases["rescale"] = Case(folder, [spec], {"series": paths})

    # cine-like: every position twice, told apart by TriggerTime
    spec = SeriesSpec(n_slices=8, seed=13, **SMALL)
    folder = root / "cine"
    paths = write_series(folder, spec)
    phase2 = []
    for i, path in enumerate(paths):
        def second(ds, i=i):
            ds.TriggerTime = "100"
            ds.InstanceNumber = spec.n_slices + i + 1
        phase2.append(resave(path, second, new_path=str(folder / f"PH2_{i:03d}.dcm"), new_uid=True))
        resave(path, lambda ds: setattr(ds, "TriggerTime", "0"))
    cases["cine"] = Case(folder, [spec], {"phase1": paths, "phase2": phase2})

    # bad files beside a good series
    spec = SeriesSpec(n_slices=8, seed=14, **SMALL)
    folder = root / "bad"
    paths = write_series(folder, spec)
    cases["bad"] = Case(folder, [spec], {"series": paths}, {"bad": _write_bad_files(folder, paths, spec)})

    # five series of different sizes for sharding
    folder = root / "shards"
    specs, series_paths = [], {}
    for n, seed in zip((3, 5, 8, 13, 21), range(20, 25)):
        spec = SeriesSpec(n_slices=n, seed=seed, **SMALL)
        specs.append(spec)
        series_paths[spec.series_uid] = write_series(folder / f"s{n:02d}", spec)
    cases["shards"] = Case(folder, specs, series_paths)

    # metadata: one file carries an extra private element
    spec = SeriesSpec(n_slices=4, seed=30, **SMALL)
    folder = root / "metadata"
    paths = write_series(folder, spec)

    def private(ds):
        block = ds.private_block(0x0009, "VOXELPIPE TEST", create=True)
        block.add_new(0x01, "LO", "extra value")
    resave(paths[2], private)
    cases["metadata"] = Case(folder, [spec], {"series": paths}, {"private_file": paths[2]})

    # found by content, not by name: a DICOM file called .txt and a text file called .dcm
    spec = SeriesSpec(n_slices=4, seed=31, **SMALL)
    folder = root / "content"
    paths = write_series(folder / "deep" / "er", spec)
    disguised = str(folder / "deep" / "notes.txt")
    shutil.move(paths[1], disguised)
    paths[1] = disguised
    fake = folder / "fake.dcm"
    fake.write_text("this is not DICOM, whatever its name says\n")
    cases["content"] = Case(folder, [spec], {"series": paths, "fake": [str(fake)]})
    return cases


def _write_bad_files(folder: Path, paths: list[str], spec: SeriesSpec) -> dict[str, str]:
    """Bad files made from copies of good ones; returns role -> path."""
    data = Path(paths[0]).read_bytes()
    ds = pydicom.dcmread(paths[0])
    bad = {}

    # pixel data cut in half (PixelData is the last element of these files)
    pixel_bytes = spec.rows * spec.columns * 2
    assert len(ds.PixelData) == pixel_bytes and data.endswith(ds.PixelData)
    bad["truncated_pixels"] = folder / "truncated_pixels.dcm"
    bad["truncated_pixels"].write_bytes(data[: len(data) - pixel_bytes // 2])

    # cut in the middle of the SeriesDescription value (main dataset, before the pixel data)
    value = spec.series_description.encode()
    assert data.count(value) == 1
    at = data.index(value)
    bad["truncated_header"] = folder / "truncated_header.dcm"
    bad["truncated_header"].write_bytes(data[: at + len(value) // 2])

    # cut in the middle of the MediaStorageSOPInstanceUID value (file meta group)
    uid = str(ds.file_meta.MediaStorageSOPInstanceUID).encode()
    at = data.index(uid)
    meta_end = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    assert 132 < at and at + len(uid) < meta_end  # the first occurrence is in the file meta
    bad["truncated_meta"] = folder / "truncated_meta.dcm"
    bad["truncated_meta"].write_bytes(data[: at + len(uid) // 2])

    bad["empty"] = folder / "empty.dcm"
    bad["empty"].write_bytes(b"")
    bad["text"] = folder / "readme.txt"
    bad["text"].write_text("Notes about this study.\nNothing to see here.\n" * 20)
    rng = np.random.default_rng(99)
    random_bytes = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert random_bytes[128:132] != b"DICM"
    bad["random"] = folder / "random.bin"
    bad["random"].write_bytes(random_bytes)

    # an image of the same series without ImagePositionPatient
    bad["no_ipp"] = Path(resave(paths[0], lambda d: delattr(d, "ImagePositionPatient"),
                                 new_path=str(folder / "no_ipp.dcm"), new_uid=True))
    assert "ImagePositionPatient" not in pydicom.dcmread(bad["no_ipp"])
    return {role: str(path) for role, path in bad.items()}


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> dict[str, Case]:
    """Every synthetic case, written once per session."""
    root = tmp_path_factory.mktemp("synthetic")
    cases = _build_cases(root)
    cases["_root"] = Case(root)
    return cases


@pytest.fixture(scope="session")
def scan_case(synthetic):
    """``scan_case(name)``: scan one synthetic folder in-process (workers=1), cached for the session."""
    cache = {}

    def run(name: str, **kwargs):
        key = (name, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = scan(synthetic[name].folder, workers=1, progress=False, **kwargs)
        return copy.deepcopy(cache[key])

    return run
