"""Header scan of a 300-file CT series: ``voxelpipe.scan`` vs a plain pydicom loop vs SimpleITK (issue 2).

Peers, timed in the same run on the same folder:

* ``voxelpipe-1worker`` / ``voxelpipe-2workers``: ``voxelpipe.scan(folder, out=None, workers=N, progress=False)``
  (find files by content, read every header, flatten it, group and check the series; no manifest written).
  With 2 workers every call creates its own process pool (as a library call does); the one-off forkserver
  start is paid by the untimed warm-up call, not by the timed rounds.
* ``pydicom``: ``pydicom.dcmread(path, stop_before_pixels=True)`` for every file of the folder.
* ``simpleitk``: ``SimpleITK.ImageSeriesReader.GetGDCMSeriesFileNames(folder)`` (GDCM reads the headers and
  sorts the series).

Data: one 300-slice 512x512 int16 CT series written once per session with ``voxelpipe.testing.synthetic.write_series``
into pytest's tmp folder. The files were just written, so they are in the page cache: this measures header
parsing (and pool start-up), not disk reads.

Each implementation returns the number of files it read; it must be 300 (a correctness check, not timing).
Before timing, one untimed cold call per implementation (imports, forkserver start) is recorded in
``extra_info["cold_seconds"]``; ``extra_info["files_per_second"]`` is 300 / median (one run when disabled).
Targets (not asserted): 1 worker at least as fast as the pydicom loop, 2 workers near 2x.

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

N_FILES = 300
SPEC = dict(n_slices=N_FILES, rows=512, columns=512)
BASELINE = "pydicom"
ROUNDS = 5

# impl id -> {"cold": s, "median": s or None, "files_per_second": ...}, filled by the cases, read at session end
RESULTS: dict[str, dict] = {}


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
    import SimpleITK as sitk

    return len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder))


IMPLS: dict[str, Callable[[str], int]] = {
    "voxelpipe-1worker": _voxelpipe(1),
    "voxelpipe-2workers": _voxelpipe(2),
    "pydicom": _pydicom_loop,
    "simpleitk": _simpleitk,
}


def _ratio_table() -> list[str]:
    """Median of each implementation vs the pydicom loop; empty when benchmarks were disabled."""
    timed = {impl: r for impl, r in RESULTS.items() if r["median"] is not None}
    if not timed:
        return []
    base = timed.get(BASELINE, {}).get("median")
    lines = [
        f"{N_FILES} files of {SPEC['rows']}x{SPEC['columns']} int16, median of {ROUNDS} rounds, "
        f"{cpu_count()} usable cores; ratio = pydicom median / impl median (>1 = faster than the pydicom loop)",
        f"{'impl':<20} {'median s':>9} {'files/s':>9} {'vs pydicom':>11} {'cold s':>8}",
    ]
    for impl in IMPLS:
        if impl not in timed:
            continue
        r = timed[impl]
        ratio = f"{base / r['median']:.2f}x" if base else "n/a"
        lines.append(f"{impl:<20} {r['median']:>9.4f} {r['files_per_second']:>9.1f} {ratio:>11} {r['cold']:>8.3f}")
    one, two = timed.get("voxelpipe-1worker"), timed.get("voxelpipe-2workers")
    if one and two:
        lines.append(f"voxelpipe 2 workers vs 1 worker: {one['median'] / two['median']:.2f}x")
    lines.append("targets (not asserted): voxelpipe-1worker >= 1.00x, voxelpipe-2workers near 2x")
    return lines


@pytest.mark.parametrize("impl", list(IMPLS))
def test_scan_series(benchmark, bench_summary, scan_series_folder, impl):
    """Read the headers of a 300-file series; files/s and ratio to the pydicom loop."""
    if impl == "simpleitk":
        pytest.importorskip("SimpleITK")
    fn = IMPLS[impl]
    benchmark.group = f"scan-{N_FILES}-files"
    bench_summary("scan: files/s and ratios vs the pydicom loop", _ratio_table)

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
    RESULTS[impl] = {"cold": cold, "median": median, "files_per_second": files_per_second}
