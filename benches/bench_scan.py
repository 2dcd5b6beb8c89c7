"""Header scan of a 300-file CT series: ``voxelpipe.scan`` vs a plain pydicom loop vs SimpleITK.

Peers, timed in the same run on the same folder:

* ``voxelpipe-1worker`` / ``voxelpipe-2workers`` (implementation ``voxelpipe``, the ratio table's baseline is
  ``voxelpipe-1worker``): ``voxelpipe.scan(folder, out=None, workers=N, progress=False)``
  (find files by content, read every header, flatten it, group and check the series; no manifest written).
  With 2 workers every call creates its own process pool (as a library call does); the one-off forkserver
  start is paid by the untimed warm-up call, not by the timed rounds.
* ``pydicom``: ``pydicom.dcmread(path, stop_before_pixels=True)`` for every file of the folder.
* ``simpleitk``: ``SimpleITK.ImageSeriesReader.GetGDCMSeriesFileNames(folder)`` (GDCM reads the headers and
  sorts the series).

Data: one 300-slice 512x512 int16 CT series written once per session with ``voxelpipe.testing.synthetic.write_series``
into pytest's tmp folder. The files were just written, so they are in the page cache: this measures header
parsing (and pool start-up), not disk reads.

Each implementation returns the number of files it read; it must be 300 (a sanity check of the timed call;
scan's tables are tested in ``tests/test_scan_synthetic.py`` and ``tests/test_scan_real.py``).
Before timing, one untimed cold call per implementation (imports, forkserver start) is recorded in
``extra_info["cold_seconds"]``; ``extra_info["files_per_second"]`` is 300 / median (one run when disabled).
Targets (not asserted): 1 worker at least as fast as the pydicom loop (pydicom's ratio >= 1), 2 workers near 2x.

Run:

* smoke test (pyproject addopts ``--benchmark-disable``: every case runs once, with the correctness checks)::

    python -m pytest benches/bench_scan.py -q

* timed, 5 rounds per case, with the ratio table in the terminal summary::

    python -m pytest benches/bench_scan.py --benchmark-enable -q -s

Run it on an otherwise idle machine: the 2-worker case needs two free cores.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable

import pydicom
import pytest

import voxelpipe
from voxelpipe.execution import cpu_count
from voxelpipe.testing.synthetic import SeriesSpec, write_series

from _common import Column, RatioTable

N_FILES = 300
SPEC = dict(n_slices=N_FILES, rows=512, columns=512)
BASELINE = "voxelpipe-1worker"
GROUP = f"scan-{N_FILES}-files"
ROUNDS = 5


@pytest.fixture(scope="session")
def scan_series_folder(tmp_path_factory) -> str:
    """One 300-file CT series (512x512 int16), written once per session."""
    folder = tmp_path_factory.mktemp("bench_scan") / "ct"
    paths = write_series(folder, SeriesSpec(**SPEC))
    assert len(paths) == N_FILES
    return str(folder)


def _voxelpipe(workers: int) -> Callable[[str], int]:
    def run(folder: str) -> int:
        result = voxelpipe.scan(folder, out=None, workers=workers, progress=False)
        assert len(result.series) == 1
        assert result.series[0]["n_slices"] == N_FILES
        return result.n_metadata_rows  # files whose header was read

    return run


def _pydicom_loop(folder: str) -> int:
    n = 0
    for name in sorted(os.listdir(folder)):
        pydicom.dcmread(os.path.join(folder, name), stop_before_pixels=True)
        n += 1
    return n


def _simpleitk(folder: str) -> int:
    import SimpleITK as sitk  # optional peer: imported only by its case (it skips without it)

    return len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder))


IMPLS: dict[str, Callable[[str], int]] = {
    "voxelpipe-1worker": _voxelpipe(1),
    "voxelpipe-2workers": _voxelpipe(2),
    "pydicom": _pydicom_loop,
    "simpleitk": _simpleitk,
}


def _footer() -> list[str]:
    one = TABLE.median(GROUP, "voxelpipe-1worker")
    two = TABLE.median(GROUP, "voxelpipe-2workers")
    lines = [f"voxelpipe 2 workers vs 1 worker: {one / two:.2f}x"] if one and two else []
    lines.append("targets (not asserted): pydicom >= 1.00x (1 worker at least as fast as the pydicom loop), "
                 "voxelpipe-2workers near 0.5x")
    return lines


TABLE = RatioTable(
    "scan: files/s and ratios", baseline=BASELINE, order=list(IMPLS), footer=_footer,
    header=lambda: [f"{N_FILES} files of {SPEC['rows']}x{SPEC['columns']} int16, median of {ROUNDS} rounds, "
                    f"{cpu_count()} usable cores"],
    columns=[Column("files/s", "files_per_second", ".1f"), Column("cold s", "cold_seconds", ".3f")])


@pytest.mark.parametrize("impl", list(IMPLS))
def test_scan_series(benchmark, scan_series_folder, impl):
    """Read the headers of a 300-file series; files/s and ratios."""
    if impl == "simpleitk":
        pytest.importorskip("SimpleITK")
    fn = IMPLS[impl]
    TABLE.begin(benchmark, GROUP, impl.split("-")[0], label=impl)

    t0 = time.perf_counter()  # untimed cold call: imports, forkserver start, first pool
    n = fn(scan_series_folder)
    cold = time.perf_counter() - t0
    assert n == N_FILES
    benchmark.extra_info["cold_seconds"] = cold

    t0 = time.perf_counter()
    n = benchmark.pedantic(fn, args=(scan_series_folder,), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    elapsed = time.perf_counter() - t0  # one run when benchmarks are disabled
    assert n == N_FILES

    median = benchmark.stats.stats.median if benchmark.stats is not None else None
    files_per_second = N_FILES / (median if median is not None else elapsed)
    benchmark.extra_info["files_per_second"] = files_per_second
    TABLE.record(benchmark, ROUNDS, cold_seconds=cold, files_per_second=files_per_second)
