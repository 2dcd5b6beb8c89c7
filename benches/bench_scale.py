"""Files per second of scan + convert over the 20,000-file synthetic tree: 1 and 2 pool workers, and the dask
LocalCluster against the pool.

Data: ``voxelpipe.testing.tree.write_scale_tree`` (seed 0), written once per session into pytest's tmp folder:
~330 CT series of 20–100 slices of 16×16 / 32×32 in nested patient/study/series folders, 8 localizers, 7 broken
files. Size: ``VOXELPIPE_BENCH_SCALE_FILES``, default 20,000 when benchmarks are timed and 2,000 in the smoke run
(pyproject addopts ``--benchmark-disable``).

Cases (ids; all implementation ``voxelpipe``, the ratio table's baseline is ``pool-1w``), each
``voxelpipe.convert([tree], out=<fresh dir>, workers=W, executor=E, progress=False)``, the
library call of ``python -m voxelpipe convert TREE --out OUT --workers W --executor E`` (scan into OUT/manifest,
then one series per task, Zarr dir store, verification of 2 slices per series as by default):

* ``pool-1w``: ``executor="pool"``, ``workers=1`` (runs in the calling process).
* ``pool-2w``: ``executor="pool"``, ``workers=2`` (forkserver process pool, kept alive between calls).
* ``dask-local-2w``: ``executor="dask-local"``, ``workers=2`` (a ``distributed.LocalCluster`` of 2 single-thread
  worker processes, kept alive between calls); skipped without dask.distributed.

Before timing, one untimed cold call per case converts two series of the tree (pool or cluster start, numba
kernels loaded); its time is ``extra_info["cold_seconds"]``. Before every round (untimed) every input file is
read once, so rounds convert from the page cache (this VM reclaims idle file pages within tens of seconds), and
the output folder is fresh. The last round's result is sanity-checked outside the timing: one row per series, none
failed, every broken file in the unreadable list (the scale tree's geometry and content are tested in
``tests/test_scale.py``). ``extra_info["files_per_second"]`` = tree files / median (one run when disabled);
the table also splits the last round into its scan (``manifest/scan.json`` seconds) and the rest (convert).

Run:

* smoke test (every case runs once on 2,000 files, with the checks)::

    python -m pytest benches/bench_scale.py -q

* timed, 3 rounds per case on 20,000 files, with the ratio table in the terminal summary::

    python -m pytest benches/bench_scale.py --benchmark-enable -q -s -p no:cacheprovider

Run it on an otherwise idle machine: the 2-worker cases need two free cores.
"""
from __future__ import annotations

import inspect
import json
import os
import shutil
import time
from pathlib import Path

import pytest

import voxelpipe
from voxelpipe.core.types import Status
from voxelpipe.execution import cpu_count
from voxelpipe.testing.tree import ScaleTree, write_scale_tree

from _common import Column, RatioTable

FULL_FILES, SMOKE_FILES = 20000, 2000
ROUNDS = 3
CASES = {"pool-1w": ("pool", 1), "pool-2w": ("pool", 2), "dask-local-2w": ("dask-local", 2)}
GROUP = "scale-scan-convert"

N_FILES: dict[str, int] = {}


@pytest.fixture(scope="session")
def scale_tree(tmp_path_factory, benchmarks_enabled) -> ScaleTree:
    """The synthetic tree, written once per session (shared by every case)."""
    n_files = int(os.environ.get("VOXELPIPE_BENCH_SCALE_FILES") or (FULL_FILES if benchmarks_enabled else SMOKE_FILES))
    tree = write_scale_tree(tmp_path_factory.mktemp("bench_scale") / "dicom", n_files=n_files, seed=0)
    N_FILES["tree"] = tree.n_files
    N_FILES["series"] = len(tree.series)
    N_FILES["write_seconds"] = tree.seconds
    return tree


def _read_inputs(tree: ScaleTree) -> None:
    """Read every input file once (untimed), so a round reads from the page cache."""
    for path in tree.all_files():
        with open(path, "rb") as fh:
            fh.read()


def _convert(tree_root: str, out: str, executor: str, workers: int, folders: list[str] | None = None) -> list[dict]:
    return voxelpipe.convert(folders or [tree_root], out=out, workers=workers, executor=executor, progress=False)


def _check(tree: ScaleTree, out: Path, rows: list[dict]) -> None:
    volumes = [r for r in rows if r["path"]]  # the rest: localizer-only series, skipped with no output path
    assert len(volumes) == len(tree.series), (len(volumes), len(tree.series))
    assert len(rows) == len(tree.series) + len(tree.localizer_only_uids), (len(rows), len(tree.series))
    failed = [r for r in rows if r["status"] == Status.FAILED]
    assert not failed, failed[:3]
    summary = json.loads((out / "summary_run.json").read_text())
    assert summary["unreadable_files"] == len(tree.broken)


def _header() -> list[str]:
    return [f"scan + convert of {N_FILES['tree']:,} files ({N_FILES['series']} series; tree written in "
            f"{N_FILES['write_seconds']:.1f} s), median of {ROUNDS} rounds, {cpu_count()} usable cores"]


def _footer() -> list[str]:
    """2w/1w scaling and the dask-local overhead."""
    one, two, dask = (TABLE.median(GROUP, case) for case in CASES)
    lines = []
    if one and two:
        lines.append(f"scaling 2w/1w (pool): {one / two:.2f}x (ideal 2.00x)")
    if two and dask:
        lines.append(f"dask-local overhead, pool/dask throughput (= dask time / pool time), 2 workers: "
                     f"{dask / two:.2f}x (1.00x = none)")
    return lines


TABLE = RatioTable(
    "scale: scan + convert files/s, 2w/1w scaling, dask-local overhead", baseline="pool-1w", order=list(CASES),
    header=_header, footer=_footer,
    columns=[Column("files/s", "files_per_second", ".0f"), Column("cold s", "cold_seconds", ".2f"),
             Column("last round: scan s + rest s",
                    lambda r: f"{r.figures['scan']:.1f} + {r.figures['last'] - r.figures['scan']:.1f}", "")])


@pytest.mark.parametrize("case", list(CASES))
def test_scale_convert(benchmark, scale_tree, tmp_path, case):
    """scan + convert of the whole tree; files/s."""
    executor, workers = CASES[case]
    if executor != "pool":
        pytest.importorskip("distributed")
        if "executor" not in inspect.signature(voxelpipe.convert).parameters:
            pytest.skip("voxelpipe.convert has no executor argument yet")
    TABLE.begin(benchmark, GROUP, "voxelpipe", label=case)

    t0 = time.perf_counter()  # untimed cold call on two series: pool / cluster start, numba kernels loaded
    _convert(scale_tree.root, str(tmp_path / "cold"), executor, workers,
             folders=[s.folder for s in scale_tree.series[:2]])
    cold = time.perf_counter() - t0
    benchmark.extra_info["cold_seconds"] = cold

    outs: list[Path] = []

    def setup():
        if outs:
            shutil.rmtree(outs[-1], ignore_errors=True)
        outs.append(tmp_path / f"round{len(outs)}")
        _read_inputs(scale_tree)
        return (scale_tree.root, str(outs[-1]), executor, workers), {}

    last: list[float] = []

    def run(*args):
        t = time.perf_counter()
        result = _convert(*args)
        last.append(time.perf_counter() - t)
        return result

    rows = benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1)
    _check(scale_tree, outs[-1], rows)

    median = benchmark.stats.stats.median if benchmark.stats is not None else None
    files_per_second = scale_tree.n_files / (median if median is not None else last[-1])  # disabled: one run
    scan_seconds = json.loads((outs[-1] / "manifest" / "scan.json").read_text())["seconds"]  # last round's split
    benchmark.extra_info.update(files_per_second=files_per_second, files=scale_tree.n_files,
                                last_round_scan_seconds=scan_seconds, last_round_seconds=last[-1])
    TABLE.record(benchmark, ROUNDS, cold_seconds=cold, files_per_second=files_per_second, scan=scan_seconds,
                 last=last[-1])
