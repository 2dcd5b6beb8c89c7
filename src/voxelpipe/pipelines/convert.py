"""`convert`: DICOM series → volumes (Zarr dir/zip/sqlite, HDF5, NPZ, NIfTI) with geometry; `aggregate` merges
the summaries of shards.

OUT/
  data/<series_key>.zarr (.zarr.zip, .zarr.sqlite, .npz)   one volume per series (HDF5: volumes_<suffix>.h5)
  data/<series_key>.nii.gz (.nii) + <series_key>.json      NIfTI: one volume per series and its BIDS sidecar
  meta/<series_key>.series.json, meta/<series_key>.slices.csv
  summary_<suffix>.csv / .json                             one row per series: status (done / skipped / failed),
                                                           reason, sizes, timing
  summary_all.csv                                          after `aggregate`
"""
from __future__ import annotations

import csv
import functools
import glob
import json
import logging
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable

from voxelpipe.core import defaults
from voxelpipe.core.errors import InputError, VoxelpipeError, failure_reason
from voxelpipe.core.keys import check_series_key, require_secret, series_key
from voxelpipe.core.progress import Progress
from voxelpipe.core.rows import (
    ALREADY_COMPLETE,
    count_statuses,
    failed_row,
    format_counts,
    skipped_row,
    warn_if_failed,
)
from voxelpipe.core.types import (
    Executor,
    Format,
    Phi,
    PhilipsScaling,
    Status,
    StoreKind,
    TiltPolicy,
    UnevenPolicy,
    member_of,
)
from voxelpipe.dicom.files import read_header
from voxelpipe.dicom.records import COLUMN
from voxelpipe.execution import check_executor, default_workers, imap, init_worker, threads_per_worker
from voxelpipe.pipelines.scan import balance, scan
from voxelpipe.pipelines.series_regrid import REGRID_COLUMNS
from voxelpipe.pipelines.series_volume import SeriesTask, convert_series, lost_series, series_row, volume_path
from voxelpipe.stores.hdf5_store import RunFile, keys_in, run_file_problem, set_aside
from voxelpipe.stores.lock import output_lock
from voxelpipe.stores.ngff import check_levels
from voxelpipe.stores.nifti import require_nibabel
from voxelpipe.stores.registry import is_plain_name
from voxelpipe.stores.tables import PATH_BYTES, read_csv, write_csv, write_json
from voxelpipe.stores.volumes import volume_problem
from voxelpipe.stores.zarr_store import remove

log = logging.getLogger("voxelpipe")

SUMMARY_COLUMNS = ["series_key", "status", "reason", "n_files", "bytes_in", "bytes_out", "ratio", "shape", "dtype",
                   "seconds", "verification", "mosaic", "path", *REGRID_COLUMNS]


def load_manifest(manifest: str) -> tuple[list[dict], dict[str, list[str]]]:
    """Series rows of a manifest CSV (``series_all.csv`` or a shard) and the files of each series, in slice
    order, from the ``series_files.csv`` beside it (or one folder up, for ``shards/``)."""
    if os.path.isdir(manifest):
        manifest = os.path.join(manifest, "series_all.csv")
    if not os.path.isfile(manifest):
        raise InputError(f"{manifest}: manifest CSV not found")
    rows = read_csv(manifest)
    folder = os.path.dirname(os.path.abspath(manifest))
    candidates = [os.path.join(folder, "series_files.csv"), os.path.join(os.path.dirname(folder), "series_files.csv")]
    files_csv = next((c for c in candidates if os.path.isfile(c)), None)
    if files_csv is None:
        raise InputError(f"{manifest}: no series_files.csv beside it or one folder up")
    files: dict[str, list[str]] = defaultdict(list)
    with open(files_csv, newline="", encoding="utf-8", errors=PATH_BYTES) as fh:
        for row in csv.DictReader(fh):
            files[row["series_key"]].append(row["path"])
    return rows, files


def convert(inputs: list[str] | str | None = None, out: str = "voxelpipe-out", *, manifest: str | None = None,
            fmt: str = defaults.CONVERT_FORMAT, store: str = defaults.CONVERT_STORE,
            mode: str = defaults.CONVERT_MODE, workers: int | None = None,
            shard_id: int | None = None, num_shards: int | None = None, overwrite: bool = False,
            verify_slices: int = defaults.CONVERT_VERIFY_SLICES, chunks: tuple[int, int, int] | None = None,
            layout: str = defaults.VOLUME_LAYOUT, clevel: int = defaults.VOLUME_CLEVEL,
            levels: int = defaults.VOLUME_LEVELS,
            uneven: str = defaults.CONVERT_UNEVEN,
            tilt: str = defaults.CONVERT_TILT, philips_scaling: str = defaults.CONVERT_PHILIPS_SCALING,
            nifti_gzip: bool = defaults.NIFTI_GZIP, max_frame_bytes: int = defaults.CONVERT_MAX_FRAME_BYTES,
            summary_suffix: str | None = None, progress: bool = True, executor: str = defaults.EXECUTOR,
            scheduler: str | None = None, phi: str | None = None) -> list[dict]:
    """Convert series to volumes; returns the summary rows (one per series; status ``done``, ``skipped`` for a
    series already in the output, ``failed`` with the reason).

    ``fmt``: a :class:`~voxelpipe.core.types.Format` word (zarr, hdf5, npz, nifti); ``store``: a
    :class:`~voxelpipe.core.types.StoreKind` word (Zarr only). ``levels``: OME-Zarr pyramid levels of Zarr
    volumes (1 = none; for viewers, readers keep reading full resolution). ``layout``: the chunk and shard shapes
    of the volumes, a name of ``defaults.VOLUME_LAYOUTS`` (slices, patches, balanced); ``chunks`` (plain chunks,
    no shards) wins when given.

    ``inputs``: DICOM folders (scanned first into ``out/manifest``) or ``manifest``: a series CSV from `scan`.
    ``shard_id``/``num_shards``: convert only shard I of N (byte-balanced). ``executor``: ``pool`` (processes of
    this machine), ``dask`` (a running scheduler at ``scheduler``) or ``dask-local`` (a LocalCluster of ``workers``
    processes); the outputs are the same. ``phi``: keep, pseudonymise or drop the confidentiality profile's values
    in the volumes' attributes, meta/ files and NIfTI sidecars (None: the choice the manifest's scan.json records,
    keep when it records none; ``inputs`` are scanned with it); 3d mode only. Everything else as the CLI.
    """
    started = time.perf_counter()
    fmt, store = _check_options(fmt, store, mode, shard_id, num_shards, chunks, clevel)
    if layout not in defaults.VOLUME_LAYOUTS:
        raise InputError(f"--layout must be one of {', '.join(defaults.VOLUME_LAYOUTS)}, got {layout!r}")
    check_levels(levels)
    uneven = member_of(UnevenPolicy, uneven, "uneven")
    tilt = member_of(TiltPolicy, tilt, "tilt")
    philips_scaling = member_of(PhilipsScaling, philips_scaling, "philips-scaling")
    check_executor(executor, scheduler)
    phi = member_of(Phi, phi, "phi") if phi is not None else (manifest_phi(manifest) if manifest else Phi.KEEP)
    secret = require_secret() if phi == Phi.PSEUDONYMISE else None
    if phi != Phi.KEEP and mode != "3d":
        raise InputError(f"--phi {phi} is done for --mode 3d only; --mode {mode} would keep the UIDs of every file")
    if summary_suffix is not None and not is_plain_name(summary_suffix):
        raise InputError(f"--summary-suffix must be a plain name (no path separator), got {summary_suffix!r}")
    shard = _shard_name(manifest, shard_id, num_shards, summary_suffix)
    # one run per output folder, or per shard of it (released by the OS however the run ends)
    with output_lock(out, "convert", shard):
        records: dict = {}
        if manifest is None:
            if not inputs:
                raise InputError("give DICOM folders or --manifest")
            scanned = scan(inputs if isinstance(inputs, list) else [inputs], out=os.path.join(out, "manifest"),
                           shards=1, workers=workers, progress=progress,
                           executor=executor, scheduler=scheduler, exclude=[out], phi=phi)
            manifest = os.path.join(out, "manifest", "series_all.csv")
            records = scanned.records  # headers already read: workers need not parse them again
        rows, files = load_manifest(manifest)
        rows, bad_keys = split_bad_keys(rows, manifest, files)
        not_volumes = [r for r in rows if int(r.get("n_slices") or 0) <= 0]
        rows = [r for r in rows if int(r.get("n_slices") or 0) > 0]
        if mode == "2d":  # screen captures are images too: one array per file
            rows += [r for r in not_volumes if files.get(r["series_key"])]
            not_volumes = [r for r in not_volumes if not files.get(r["series_key"])]
            rows = _add_images_without_geometry(manifest, rows, files)
        if num_shards:
            rows = balance(rows, num_shards)[shard_id]
        suffix = summary_suffix or _default_suffix(manifest, shard_id, num_shards)
        options = {"format": fmt, "store": store, "mode": mode, "chunks": chunks, "layout": layout, "clevel": clevel,
                   "levels": levels,
                   "uneven": uneven,
                   "tilt": tilt, "philips_scaling": philips_scaling,
                   "verify_slices": verify_slices, "manifest": os.path.abspath(manifest), "phi": phi}
        tasks = [SeriesTask(key=r["series_key"], paths=files.get(r["series_key"], []), out=out, fmt=fmt, mode=mode,
                            store=store,
                            chunks=chunks, layout=layout, clevel=clevel, levels=levels,
                            verify_slices=verify_slices,
                            overwrite=overwrite,
                            uneven=uneven, tilt=tilt, philips_scaling=philips_scaling, nifti_gzip=nifti_gzip,
                            max_frame_bytes=max_frame_bytes, phi=phi, secret=secret,
                            options=options, records=records.get(r["series_key"]) if mode == "3d" else None)
                 for r in rows]
        summary: list[dict] = []
        extra: dict = {}
        run_file = None
        if fmt == Format.HDF5:
            run_file = RunFile(os.path.join(out, "data", f"volumes_{suffix}.h5"), whole_file=mode == "2d",
                               replace=overwrite)
            tasks, summary, extra["broken_run_files"] = _prepare_run_file(run_file, tasks, overwrite)
        elif not overwrite:
            extra["incomplete_outputs"] = _redo_incomplete(tasks)
        workers = default_workers() if workers is None else max(1, workers)
        if executor == Executor.POOL and (workers == 1 or len(tasks) <= 1):
            # in this process: give its kernels and Blosc every core
            init_worker(threads_per_worker(1))
        log.info("convert: %d series to %s (%s%s), %d worker(s), %s", len(tasks), out, fmt,
                 f"/{store}" if fmt == Format.ZARR else "", workers, scheduler or executor)
        waiting: dict[str, tuple[dict, str]] = {}  # HDF5: rows of the series converted, not yet in the run file
        with Progress(len(tasks), "convert", unit="series", enabled=progress) as bar:
            for row in imap(convert_series, tasks, workers, executor=executor, scheduler=scheduler,
                            on_error=lost_series):
                warn_if_failed(row, "convert", "series_key")
                summary.append(row)
                if run_file is not None and row["status"] == Status.DONE:
                    key, series_file = row["series_key"], row["path"]
                    waiting[key] = (row, series_file)
                    row["path"] = run_file.path
                    _merge(run_file, waiting, functools.partial(run_file.add, key, series_file))
                bar.update()
        if run_file is not None:
            _merge(run_file, waiting, run_file.flush)
        if not shard_id:  # manifest rows that hold no volume or a bad key: one row each, in one shard only
            converted = {row["series_key"] for row in summary}
            summary.extend(not_volume_row(r) for r in not_volumes if r["series_key"] not in converted)
            summary.extend(bad_keys)
        unreadable = [e for e in _unreadable_files(manifest) if not (mode == "2d" and e.get("kind") == "no_geometry")]
        if unreadable:
            log.warning("convert: %d file(s) found by the scan were left out (not DICOM, unreadable or unusable); "
                        "see %s", len(unreadable), unreadable_csv(manifest))
        write_csv(os.path.join(out, f"summary_{suffix}.csv"), summary, SUMMARY_COLUMNS)
        counts = count_statuses(summary)
        write_json(os.path.join(out, f"summary_{suffix}.json"),
                   {"series": summary, "counts": {status: n for status, n in counts.items() if n}, "options": options,
                    "unreadable_files": len(unreadable), "unreadable_list": unreadable_csv(manifest),
                    **{name: value for name, value in extra.items() if value},
                    "seconds": round(time.perf_counter() - started, 3)})
    log.info("convert: %s in %.1f s", format_counts(counts), time.perf_counter() - started)
    return summary


def manifest_phi(manifest: str) -> Phi:
    """The ``phi`` choice recorded in the scan.json of a manifest (a manifest folder, its series_all.csv or a shard
    file); ``keep`` when there is no scan.json or it records none."""
    folder = manifest if os.path.isdir(manifest) else os.path.dirname(os.path.abspath(manifest))
    for candidate in (os.path.join(folder, "scan.json"), os.path.join(os.path.dirname(folder), "scan.json")):
        if os.path.isfile(candidate):
            try:
                with open(candidate, encoding="utf-8") as fh:
                    recorded = json.load(fh).get("options", {}).get("phi", Phi.KEEP)
            except (OSError, ValueError, AttributeError) as exc:
                raise InputError(f"{candidate}: cannot read the phi choice of the manifest: {exc}") from exc
            return member_of(Phi, recorded, f"phi recorded in {candidate}")
    return Phi.KEEP


def split_bad_keys(rows: list[dict], manifest: str, files: dict[str, list[str]]) -> tuple[list[dict], list[dict]]:
    """The manifest rows whose ``series_key`` is a series key (:func:`~voxelpipe.core.keys.is_series_key`), and
    a failed summary row for each other one: a key is used as a file name, so a manifest edited to hold
    ``../x`` or ``/x`` never leads a write outside the output folder. The reason names the manifest, the row
    (1 = the first row under the header) and the value."""
    good, bad = [], []
    for number, row in enumerate(rows, start=1):
        key = row.get("series_key") or ""
        try:
            check_series_key(key, f"{manifest}, row {number}")
        except InputError as exc:
            log.warning("convert: %s", exc)
            bad.append(failed_row({"series_key": key, "n_files": len(files.get(key, [])), "bytes_in": 0,
                                   "bytes_out": 0, "shape": "", "dtype": "", "ratio": "", "seconds": 0.0,
                                   "verification": "", "path": ""}, exc))
        else:
            good.append(row)
    return good, bad


def _prepare_run_file(run_file: RunFile, tasks: list[SeriesTask],
                      overwrite: bool) -> tuple[list[SeriesTask], list[dict], list[dict]]:
    """Before an HDF5 run: set an unreadable run file aside (it is rebuilt), merge the complete per-series files
    a killed run left, and (without ``overwrite``) skip the series the run file holds. Returns the tasks left
    to convert, the rows already known and the run files set aside (path and reason)."""
    broken = []
    problem = run_file_problem(run_file.path)
    if problem:
        aside = set_aside(run_file.path)
        log.warning("convert: %s is unreadable (%s); set aside as %s, its series are converted again",
                    run_file.path, problem, aside)
        broken.append({"path": aside, "reason": problem})
    if overwrite:
        return tasks, [], broken
    present = keys_in(run_file.path)
    left = []
    for task in tasks:
        if task.key in present:  # merged by a run killed before it deleted the per-series file
            remove(volume_path(task))
        elif os.path.exists(volume_path(task)):  # converted by a run killed before it merged it
            run_file.pending.append((task.key, volume_path(task)))
            left.append(task)
    rows = []
    try:
        run_file.flush()
    except Exception as exc:  # noqa: BLE001 - recorded in each row; the per-series files stay for a rerun
        rows = [failed_row(series_row(t), f"merging into {run_file.path} failed: {failure_reason(exc)}")
                for t in left]
        tasks = [t for t in tasks if t not in left]
    present = keys_in(run_file.path)
    rows += [_skipped(t, run_file.path) for t in tasks if t.key in present]
    return [t for t in tasks if t.key not in present], rows, broken


def _merge(run_file: RunFile, waiting: dict[str, tuple[dict, str]], step: Callable[[], list[tuple[str, str]]]) -> None:
    """Run ``step`` (``run_file.add`` or ``flush``); the rows of the series it merged leave ``waiting``. When it
    fails, every row still waiting fails with the reason (its per-series file stays: a rerun merges it)."""
    try:
        merged = step()
    except Exception as exc:  # noqa: BLE001 - disk full, permissions: the rows say so and the run goes on
        for row, series_file in waiting.values():
            row.update(failed_row(row, f"merging into {run_file.path} failed: {failure_reason(exc)} (the series "
                                       f"stays in {series_file}; a rerun merges it)", path=series_file))
            warn_if_failed(row, "convert", "series_key")
        waiting.clear()
        return
    for key, _ in merged:
        waiting.pop(key, None)


def _redo_incomplete(tasks: list[SeriesTask]) -> list[dict]:
    """Outputs present under their final name but not complete (:func:`~voxelpipe.stores.volumes.volume_problem`)
    are converted again: their task gets ``overwrite``. Returns one entry (series_key, path, problem) each."""
    redone = []
    for task in tasks:
        path = volume_path(task)
        if not os.path.exists(path):
            continue
        problem = volume_problem(path, task.key if task.mode == "3d" else None)
        if problem:
            log.warning("convert: %s is not complete (%s); converting it again", path, problem)
            task.overwrite = True
            redone.append({"series_key": task.key, "path": path, "problem": problem})
    return redone


def not_volume_row(row: dict) -> dict:
    """The skipped summary row of a manifest series that holds no volume (localizers or screen captures only;
    ``n_files``: how many files were left out)."""
    reason = row.get("not_volume_reason") or row.get("split_reason") or "no image to convert"
    skipped = int(row.get("localizers_skipped") or 0) + int(row.get("screen_captures_skipped") or 0)
    return skipped_row({"series_key": row["series_key"], "n_files": skipped, "bytes_in": 0, "bytes_out": 0, "shape": "",
                        "dtype": "", "ratio": "", "seconds": 0.0, "verification": "", "path": ""}, reason)


def _shard_name(manifest: str | None, shard_id: int | None, num_shards: int | None,
                summary_suffix: str | None) -> str | None:
    """The shard a run writes (its summary suffix) when it converts a shard (``--shard-id`` or a scan shard
    file), else None: shards of one output folder run side by side, whole runs alone."""
    sharded = num_shards is not None or (manifest is not None and _is_shard_file(manifest))
    return (summary_suffix or _default_suffix(manifest, shard_id, num_shards)) if sharded else None


def _is_shard_file(manifest: str) -> bool:
    return re.fullmatch(r"series_shard_(\d+)\.csv", os.path.basename(manifest)) is not None


def _default_suffix(manifest: str, shard_id: int | None, num_shards: int | None) -> str:
    """Summary / run-file suffix: ``shardIIofNN`` for --shard-id, ``shardII`` for a scan shard file
    (``series_shard_II.csv``, so array tasks never share a summary or an HDF5 file), else ``run``."""
    if num_shards:
        return f"shard{shard_id:02d}of{num_shards:02d}"
    match = re.fullmatch(r"series_shard_(\d+)\.csv", os.path.basename(manifest))
    return f"shard{match.group(1)}" if match else "run"


def unreadable_csv(manifest: str) -> str:
    """Path of the unreadable_files.csv of a manifest (beside it or one folder up), or ''."""
    folder = os.path.dirname(os.path.abspath(manifest))
    for candidate in (folder, os.path.dirname(folder)):
        path = os.path.join(candidate, "unreadable_files.csv")
        if os.path.isfile(path):
            return path
    return ""


def _unreadable_files(manifest: str) -> list[dict]:
    """The rows of the manifest's unreadable_files.csv (files no series could use), for the run's report."""
    path = unreadable_csv(manifest)
    return read_csv(path) if path else []


def _add_images_without_geometry(manifest: str, rows: list[dict], files: dict[str, list[str]]) -> list[dict]:
    """2-D mode also converts the images `scan` left out of volumes for lack of geometry (kind no_geometry),
    grouped by their SeriesInstanceUID."""
    by_key = {r["series_key"]: dict(r) for r in rows}
    for entry in _unreadable_files(manifest):
        if entry.get("kind") != "no_geometry":
            continue
        try:
            header = read_header(entry["path"])
        except VoxelpipeError:
            continue  # changed since the scan; it stays in the unreadable list
        key = series_key(header.row.get(COLUMN["SeriesInstanceUID"], "") or entry["path"])
        files[key].append(entry["path"])
        row = by_key.setdefault(key, {"series_key": key, "n_bytes": 0})
        row["n_bytes"] = int(row.get("n_bytes") or 0) + header.size
    return list(by_key.values())


def _skipped(task: SeriesTask, run_h5: str) -> dict:
    return skipped_row({"series_key": task.key, "n_files": len(task.paths), "path": run_h5}, ALREADY_COMPLETE)


def _check_options(fmt: str, store: str, mode: str, shard_id: int | None, num_shards: int | None,
                   chunks: tuple[int, int, int] | None, clevel: int) -> tuple[Format, StoreKind]:
    """Raise InputError for a bad option; returns the format and store kind as vocabulary members."""
    fmt = member_of(Format, fmt, "format")
    store = member_of(StoreKind, store, "store")
    if mode not in ("3d", "2d"):
        raise InputError(f"mode must be 3d or 2d, got {mode!r}")
    if (shard_id is None) != (num_shards is None):
        raise InputError("--shard-id and --num-shards go together")
    if num_shards is not None and not 0 <= shard_id < num_shards:
        raise InputError(f"--shard-id must be in [0, {num_shards}), got {shard_id}")
    if chunks is not None and (len(chunks) != 3 or min(chunks) < 1):
        raise InputError(f"--chunks must be three positive integers Z,Y,X, got {chunks}")
    if not 0 <= clevel <= 9:
        raise InputError(f"--clevel must be 0..9, got {clevel}")
    if fmt == Format.NIFTI:
        if mode == "2d":
            raise InputError("--format nifti writes one volume per series: use --mode 3d (2d writes zarr, hdf5, npz)")
        require_nibabel("--format nifti")  # InputError naming the extra when nibabel is absent
    return fmt, store


def merge_summaries(tables: list[tuple[str, list[dict]]],
                    modified: Callable[[str], float] = os.path.getmtime) -> list[dict]:
    """One row per series from several summaries ``(csv path, rows)``, oldest file first (by ``modified``, the
    file's modification time; ties keep the given order): a later row replaces an earlier one unless it is a
    skip of a series that did not fail (a rerun's result replaces an earlier failure). Each row gets
    ``summary_file``; rows come back sorted by series key."""
    merged: dict[str, dict] = {}
    for path, rows in sorted(tables, key=lambda table: modified(table[0])):
        for row in rows:
            row = dict(row, summary_file=os.path.basename(path))
            previous = merged.get(row["series_key"])
            if previous is None or row["status"] != Status.SKIPPED or previous["status"] == Status.FAILED:
                merged[row["series_key"]] = row
    return sorted(merged.values(), key=lambda r: r["series_key"])


def aggregate(out: str) -> list[dict]:
    """Merge every ``summary_<suffix>.csv`` under ``out`` into ``summary_all.csv`` (later rows of a series win:
    a rerun's result replaces an earlier failure)."""
    paths = sorted(p for p in glob.glob(os.path.join(out, "summary_*.csv"))
                   if os.path.basename(p) != "summary_all.csv")
    if not paths:
        raise InputError(f"{out}: no summary_*.csv to aggregate")
    rows = merge_summaries([(path, read_csv(path)) for path in paths])
    write_csv(os.path.join(out, "summary_all.csv"), rows, SUMMARY_COLUMNS + ["summary_file"])
    return rows


__all__ = ["convert", "aggregate", "merge_summaries", "unreadable_csv", "load_manifest", "volume_path"]
