"""`scan`: find DICOM files by content, read their headers, and write the manifest.

MANIFEST/
  metadata.csv (.parquet)      one row per readable file, every element but pixel data, flattened
  series_all.csv               one row per image series (or split part) with geometry checks
  series_files.csv             the files of each series in slice order
  objects.csv                  non-image objects (RTSTRUCT, SEG, SR, ...) and what they reference
  unreadable_files.csv         path, kind and reason of every file that could not be used
  shards/series_shard_XX.csv   the series split into N shards balanced by bytes
  scan.json                    counts and options; written last (the manifest is complete when it exists)

``phi`` (:class:`~voxelpipe.core.types.Phi`) applies to every table: the attributes of the DICOM confidentiality
profile (:mod:`voxelpipe.dicom.deidentify`) are kept, pseudonymised (keyed hashes, UIDs as ``2.25.<number>``) or
dropped in metadata.csv/.parquet, and the UIDs and descriptions of series_all.csv, the shards, series_files.csv
and objects.csv follow the same choice (UIDs named in reasons too). Series keys are always the keys of the original
UIDs, so ``convert`` finds its series; file paths are kept (they are needed to read the files).

A scan owns its manifest folder while it runs: it starts by removing the scan.json and the temporary files an
earlier, interrupted scan of that folder left. An output that cannot be written (disk full, no permission) raises
:class:`~voxelpipe.core.errors.OutputWriteError` naming the file, and leaves no temporary file behind.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom.uid import UID

from voxelpipe._version import __version__
from voxelpipe.core import defaults
from voxelpipe.core.errors import DicomReadError, InputError, NoGeometryError, NotDicomError
from voxelpipe.core.keys import require_secret
from voxelpipe.core.progress import Progress
from voxelpipe.core.types import ColumnNames, Executor, Phi, member_of
from voxelpipe.dicom.deidentify import (
    FIELD_TEXT,
    FIELD_UID,
    FIELD_UIDS,
    REPLACE,
    column_action,
    deidentify_fields,
    deidentify_row,
    kept_columns,
    scrub_uids,
)
from voxelpipe.dicom.files import TruncatedFileError, check_whole, iter_files, read_header
from voxelpipe.dicom.flatten import keyword_column, number_type
from voxelpipe.dicom.records import FileRecord, make_record, pack_record, unpack_record
from voxelpipe.dicom.series import FILE_COLUMNS, SERIES_COLUMNS, KeyClash, Series, group_series
from voxelpipe.execution import check_executor, default_workers, imap
from voxelpipe.execution.pool import settle_pool_start, start_pool
from voxelpipe.stores.lock import holds_alone, locks_output
from voxelpipe.stores.tables import RowSpool, output_errors, remove_temporaries, write_csv, write_json

log = logging.getLogger("voxelpipe")

OBJECT_COLUMNS = [
    "path", "modality", "sop_class_uid", "sop_class_name", "sop_instance_uid", "study_instance_uid",
    "series_instance_uid", "series_description", "frame_of_reference_uid", "referenced_series_uids",
    "referenced_series_keys", "n_referenced_instances", "n_referenced_instances_found", "size_bytes",
]
UNREADABLE_COLUMNS = ["path", "kind", "reason"]
METADATA_LEADING = ["path", "series_key"]
FILES_PER_TASK = 128  # files per worker task: large enough that the parent handles few, compact results
KEY_CLASH = "key_clash"  # kind in unreadable_files.csv of the files of series whose keys clash
MANIFEST_FILES = ("metadata.csv", "metadata.parquet", "series_all.csv", "series_files.csv", "objects.csv",
                  "unreadable_files.csv", "scan.json")
SHARDS_FOLDER = "shards"
# the fields of the manifest tables that hold values of the confidentiality profile
SERIES_PHI = {"study_instance_uid": FIELD_UID, "series_instance_uid": FIELD_UID, "series_description": FIELD_TEXT,
              "frame_of_reference_uid": FIELD_UID}
FILE_PHI = {"sop_instance_uid": FIELD_UID}
OBJECT_PHI = {"sop_instance_uid": FIELD_UID, "study_instance_uid": FIELD_UID, "series_instance_uid": FIELD_UID,
              "series_description": FIELD_TEXT, "frame_of_reference_uid": FIELD_UID,
              "referenced_series_uids": FIELD_UIDS}


@dataclass
class ScanResult:
    """The tables of a scan (lists of row dicts) and where they were written."""

    series: list[dict]
    series_files: list[dict]
    objects: list[dict]
    unreadable: list[dict]
    shards: list[list[dict]]
    metadata_columns: list[str]
    n_metadata_rows: int
    n_files: int
    seconds: float
    out: str | None = None
    metadata: list[dict] = field(default_factory=list)  # only when no output folder was given
    records: dict[str, list[FileRecord]] = field(default_factory=dict)  # series key -> its files, slice order


def _scan_one(path: str) -> tuple[str, dict | None, FileRecord | None, str]:
    """Read one file: ``(kind, row, record, reason)`` with kind ok / not_dicom / unreadable / no_geometry /
    unusable (the ``kind`` column of unreadable_files.csv)."""
    try:
        header = read_header(path)
    except NotDicomError as exc:
        return "not_dicom", None, None, exc.reason
    except DicomReadError as exc:
        return "unreadable", None, None, exc.reason
    try:
        check_whole(header)
        return "ok", header.row, make_record(header), ""
    except TruncatedFileError as exc:  # the header was read whole: its metadata row is kept
        return "unreadable", header.row, None, exc.reason
    except NoGeometryError as exc:
        return "no_geometry", header.row, None, exc.reason
    except DicomReadError as exc:
        return "unusable", header.row, None, exc.reason


def scan_files(paths: list[str]) -> list[tuple[str, str, dict | None, FileRecord | None, str]]:
    """Worker task: read a batch of files; every failure becomes a result, never an exception."""
    results = []
    for path in paths:
        try:
            kind, row, record, reason = _scan_one(path)
        except Exception as exc:  # a bug or an unforeseen corrupt header must not stop the batch
            kind, row, record, reason = "unreadable", None, None, f"{type(exc).__name__}: {exc}"
        results.append((path, kind, row, record, reason))
    return results


@dataclass
class ScanBatch:
    """What a worker task returns for a batch of files, in file order, ready for the parent to store.

    ``text`` holds the metadata rows (phi applied, ``path`` first) as JSON lines for the manifest's row spool and
    ``columns`` their columns in first-seen order; ``rows`` holds them as dicts instead when no text is wanted."""

    n_files: int
    columns: list[str]
    n_rows: int = 0
    text: str = ""
    row_paths: list[str] = field(default_factory=list)  # the paths of the rows of ``text``, in order
    rows: list[dict] = field(default_factory=list)
    records: list[tuple] = field(default_factory=list)  # the usable files' records (pack_record)
    unreadable: list[dict] = field(default_factory=list)  # unreadable_files.csv rows, reasons phi applied


def scan_batch(paths: list[str], phi: Phi = Phi.KEEP, phi_secret: str | None = None,
               as_text: bool = True) -> ScanBatch:
    """Worker task: read a batch of files and apply ``phi`` (keyed with ``phi_secret``) to their metadata rows
    and reasons, so the parent only appends the results (JSON lines when ``as_text``, else row dicts)."""
    batch = ScanBatch(n_files=len(paths), columns=list(METADATA_LEADING[:1]))
    columns: dict[str, None] = dict.fromkeys(batch.columns)
    lines: list[str] = []
    results = scan_files(paths)
    for path, kind, row, record, reason in results:
        if row is not None:
            row = {"path": path, **deidentify_row(row, phi, phi_secret)}
            columns.update(dict.fromkeys(row))
            if as_text:
                lines.append(json.dumps(row, ensure_ascii=False))
            else:
                batch.rows.append(row)
        if record is not None:
            batch.records.append(pack_record(record))
        else:
            batch.unreadable.append({"path": path, "kind": kind, "reason": scrub_uids(reason, phi, phi_secret)})
    batch.columns = list(columns)
    batch.n_rows = len(lines) if as_text else len(batch.rows)
    batch.text = "".join(line + "\n" for line in lines)
    batch.row_paths = [path for path, kind, row, record, reason in results if row is not None] if as_text else []
    return batch


@locks_output("scan")  # one run per manifest folder
def scan(paths: list[str | os.PathLike] | str | os.PathLike, out: str | os.PathLike | None = None,
         shards: int = defaults.SCAN_SHARDS, workers: int | None = None,
         table_format: str = defaults.SCAN_TABLE_FORMAT, secret: str | None = None,
         progress: bool = True, executor: str = defaults.EXECUTOR, scheduler: str | None = None,
         exclude: Sequence[str | os.PathLike] = (), phi: str = defaults.SCAN_PHI,
         column_names: str = defaults.SCAN_COLUMN_NAMES) -> ScanResult:
    """Scan folders (any depth) for DICOM files and build the manifest tables.

    ``out``: manifest folder to write (None: only return the tables, metadata rows included).
    ``shards``: number of byte-balanced shard files; ``workers``: processes (1 = in this process);
    ``table_format``: ``csv`` or ``parquet`` (metadata also as Parquet); ``secret``: HMAC key for series keys.
    ``executor``/``scheduler``: where the header-reading tasks run (:func:`voxelpipe.execution.imap`).
    ``exclude``: folders not to enter (``out`` is never entered: a manifest inside its input is not input).
    ``phi``: ``keep``, ``pseudonymise`` (keyed with ``secret`` or ``VOXELPIPE_KEY_SECRET``; refused without one)
    or ``drop`` the confidentiality profile's attributes in every table (the returned ones too).
    ``column_names``: ``name`` (``"Patient's Name (0010, 0010)"``) or ``keyword`` (``PatientName``) columns of
    metadata.csv/.parquet. metadata.parquet stores single-valued numeric elements as int64 / float64.
    """
    started = time.perf_counter()
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if shards < 1:
        raise InputError(f"shards must be at least 1, got {shards}")
    if table_format not in ("csv", "parquet"):
        raise InputError(f"table format must be csv or parquet, got {table_format!r}")
    check_executor(executor, scheduler)
    phi = member_of(Phi, phi, "phi")
    column_names = member_of(ColumnNames, column_names, "column-names")
    phi_secret = require_secret(secret) if phi == Phi.PSEUDONYMISE else None
    workers = default_workers() if workers is None else max(1, workers)
    files = walk_files(paths, [*exclude, *([out] if out else [])], workers if executor == Executor.POOL else 1)
    log.info("scan: %d files under %s, %d worker(s)", len(files), ", ".join(map(str, paths)), workers)

    out = os.fspath(out) if out is not None else None
    try:
        if out:
            prepare_manifest_folder(out)
        spool = RowSpool(out, METADATA_LEADING) if out else None
    except BaseException:
        settle_pool_start(workers)  # started by the walk
        raise
    metadata: list[dict] = []
    metadata_columns: dict[str, None] = dict.fromkeys(METADATA_LEADING)
    records: list[FileRecord] = []
    unreadable: list[dict] = []
    row_paths: list[str] = []  # the paths of the rows spooled as text, in spool order
    batches = [files[i:i + FILES_PER_TASK] for i in range(0, len(files), FILES_PER_TASK)]
    # the workers apply phi, except on a dask cluster when pseudonymising: the key stays in this process
    in_parent = phi == Phi.PSEUDONYMISE and executor != Executor.POOL
    task = functools.partial(scan_batch, phi=Phi.KEEP if in_parent else phi,
                             phi_secret=None if in_parent else phi_secret, as_text=bool(spool) and not in_parent)
    try:
        with Progress(len(files), "scan", enabled=progress) as bar:
            for batch in imap(task, batches, workers, executor=executor, scheduler=scheduler, start_here=True):
                if in_parent:
                    batch.rows = [{"path": row.pop("path"), **deidentify_row(row, phi, phi_secret)}
                                  for row in batch.rows]
                    for row in batch.unreadable:
                        row["reason"] = scrub_uids(row["reason"], phi, phi_secret)
                if batch.text:
                    spool.add_text(batch.text, batch.columns, batch.n_rows)
                    row_paths.extend(batch.row_paths)
                for row in batch.rows:
                    if spool:
                        spool.add(row)
                    else:
                        metadata_columns.update(dict.fromkeys(row))
                        metadata.append(row)
                records.extend(map(unpack_record, batch.records))
                unreadable.extend(batch.unreadable)
                bar.update(batch.n_files)

        images = [r for r in records if r.kind == "image"]
        series, clashes = group_series(images, secret)
        unreadable.extend({**row, "reason": scrub_uids(row["reason"], phi, phi_secret)}
                          for row in _clash_rows(clashes))
        objects = _object_rows([r for r in records if r.kind == "object"], series, secret)
        objects = [deidentify_fields(row, OBJECT_PHI, phi, phi_secret) for row in objects]
        key_of_path = {r.path: s.key for s in series for r in s.records}
        shard_rows = [[deidentify_fields(row, SERIES_PHI, phi, phi_secret) for row in rows]
                      for rows in balance([s.row for s in series], shards)]
        series_rows = [deidentify_fields(s.row, SERIES_PHI, phi, phi_secret) for s in series]
        file_rows = [deidentify_fields(row, FILE_PHI, phi, phi_secret) for s in series for row in s.file_rows]
        if out:
            extra = {path: {"series_key": key} for path, key in key_of_path.items()}
            rename = ({c: keyword_column(c) for c in spool.columns}
                      if column_names == ColumnNames.KEYWORD else {})
            rename = _unique_names(rename)
            types = {rename.get(c, c): kind for c in spool.columns if (kind := _column_type(c, phi))}
            parallel = workers > 1 and executor == Executor.POOL and len(row_paths) == spool.count
            spool.write(os.path.join(out, "metadata.csv"),
                        os.path.join(out, "metadata.parquet") if table_format == "parquet" else None, extra,
                        rename=rename, types=types,
                        map_chunks=(lambda func, chunks: imap(func, chunks, workers)) if parallel else None,
                        row_extras=[extra.get(path, {}) for path in row_paths] if parallel else None)
            metadata_columns = {rename.get(c, c): None for c in spool.columns}
            _write_manifest(out, series_rows, file_rows, objects, unreadable, shard_rows, phi)
        else:
            for row in metadata:
                row["series_key"] = key_of_path.get(row["path"], "")
            if column_names == ColumnNames.KEYWORD:
                rename = _unique_names({c: keyword_column(c) for c in metadata_columns})
                metadata = [{rename.get(c, c): v for c, v in row.items()} for row in metadata]
                metadata_columns = {rename.get(c, c): None for c in metadata_columns}
    finally:
        if spool:
            spool.close()
    seconds = time.perf_counter() - started
    result = ScanResult(series=series_rows, series_files=file_rows, objects=objects, unreadable=unreadable,
                        shards=shard_rows, metadata_columns=list(metadata_columns),
                        n_metadata_rows=spool.count if spool else len(metadata), n_files=len(files),
                        seconds=seconds, out=out, metadata=metadata,
                        records={s.key: s.records for s in series})
    if out:
        with output_errors(os.path.join(out, "scan.json")):
            write_json(os.path.join(out, "scan.json"),
                       _summary(result, paths, shards, workers, table_format, phi, column_names))
    log.info("scan: %d series, %d objects, %d unreadable of %d files in %.1f s", len(series_rows), len(objects),
             len(unreadable), len(files), seconds)
    return result


def walk_files(paths: Sequence[str | os.PathLike], exclude: Sequence[str | os.PathLike], workers: int) -> list[str]:
    """The files below ``paths`` (:func:`~voxelpipe.dicom.files.iter_files`); with more than one worker the process
    pool starts in the background as soon as there is more than one task's worth of files."""
    files: list[str] = []
    try:
        for path in iter_files(paths, exclude=exclude):
            files.append(path)
            if len(files) == FILES_PER_TASK + 1:
                start_pool(workers)
    except BaseException:
        settle_pool_start(workers)
        raise
    return files


def prepare_manifest_folder(out: str) -> None:
    """Make the manifest folder ready for a new scan: create it, remove scan.json (the manifest is incomplete until
    the scan finishes) and the temporary files an interrupted scan left (tables not yet renamed, named row spools
    of earlier versions) when this process holds the folder as a whole run. The caller owns the folder for the whole
    scan."""
    with output_errors(out):
        os.makedirs(out, exist_ok=True)
        summary = os.path.join(out, "scan.json")
        if os.path.exists(summary):
            os.remove(summary)
        if holds_alone(out):  # shards of one convert may scan into one manifest side by side: keep theirs
            remove_temporaries(out, MANIFEST_FILES)
            remove_temporaries(os.path.join(out, SHARDS_FOLDER), [".csv"])


def _column_type(column: str, phi: Phi) -> str | None:
    """Parquet type of a metadata column: a number type for single-valued numeric elements, except those
    pseudonymised (their cells are hashes)."""
    kind = number_type(column)
    if kind and phi == Phi.PSEUDONYMISE and column_action(column) == REPLACE:
        return None
    return kind


def _unique_names(rename: dict[str, str]) -> dict[str, str]:
    """``rename`` without clashes: a column whose new name another one already took keeps its own name."""
    taken: set[str] = set()
    result = {}
    for old, new in rename.items():
        result[old] = new if new not in taken else old
        taken.add(result[old])
    return result


def _clash_rows(clashes: list[KeyClash]) -> list[dict]:
    """unreadable_files.csv rows of the files of series whose keys clash (every file, with the reason)."""
    rows = []
    for clash in clashes:
        log.warning("scan: %d file(s) not used: %s", len(clash.records), clash.reason)
        rows.extend({"path": r.path, "kind": KEY_CLASH, "reason": clash.reason} for r in clash.records)
    return rows


def _object_rows(objects: list[FileRecord], series: list[Series], secret: str | None) -> list[dict]:
    """objects.csv rows; references resolved to the series keys of this scan (all parts of a split series)."""
    keys_of_uid: dict[str, list[str]] = {}
    key_of_instance: dict[str, str] = {}
    for s in series:
        keys_of_uid.setdefault(s.row["series_instance_uid"], []).append(s.key)
        for r in s.records:
            key_of_instance[r.sop_instance_uid] = s.key
    rows = []
    for obj in sorted(objects, key=lambda r: r.path):
        keys: dict[str, None] = {}
        for uid in obj.referenced_series_uids:
            keys.update(dict.fromkeys(keys_of_uid.get(uid, [])))
        found = [key_of_instance[i] for i in obj.referenced_instance_uids if i in key_of_instance]
        keys.update(dict.fromkeys(found))
        rows.append({
            "path": obj.path, "modality": obj.modality, "sop_class_uid": obj.sop_class_uid,
            "sop_class_name": UID(obj.sop_class_uid).name if obj.sop_class_uid else "",
            "sop_instance_uid": obj.sop_instance_uid, "study_instance_uid": obj.study_uid,
            "series_instance_uid": obj.series_uid, "series_description": obj.series_description,
            "frame_of_reference_uid": obj.frame_of_reference_uid,
            "referenced_series_uids": ";".join(obj.referenced_series_uids),
            "referenced_series_keys": ";".join(keys), "n_referenced_instances": len(obj.referenced_instance_uids),
            "n_referenced_instances_found": len(found), "size_bytes": obj.size,
        })
    return rows


def balance(rows: list[dict], shards: int) -> list[list[dict]]:
    """Split series rows into ``shards`` lists balanced by ``n_bytes`` (largest first onto the lightest)."""
    loads = [0] * shards
    result: list[list[dict]] = [[] for _ in range(shards)]
    for row in sorted(rows, key=lambda r: (-int(r["n_bytes"]), r["series_key"])):
        target = loads.index(min(loads))
        result[target].append(row)
        loads[target] += int(row["n_bytes"])
    return result


def shard_name(index: int, shards: int) -> str:
    return f"series_shard_{index:0{max(2, len(str(shards - 1)))}d}.csv"


def _write_manifest(out: str, series_rows: list[dict], file_rows: list[dict], objects: list[dict],
                    unreadable: list[dict], shard_rows: list[list[dict]], phi: Phi = Phi.KEEP) -> None:
    """Write the manifest tables (``phi`` drop: without the profile's columns); an ``OSError`` becomes an
    OutputWriteError naming the file."""
    series_columns = kept_columns(SERIES_COLUMNS, SERIES_PHI, phi)
    tables = [("series_all.csv", series_rows, series_columns),
              ("series_files.csv", file_rows, kept_columns(FILE_COLUMNS, FILE_PHI, phi)),
              ("objects.csv", objects, kept_columns(OBJECT_COLUMNS, OBJECT_PHI, phi)),
              ("unreadable_files.csv", unreadable, UNREADABLE_COLUMNS)]
    for name, rows, columns in tables:
        with output_errors(os.path.join(out, name)):
            write_csv(os.path.join(out, name), rows, columns)
    shard_dir = os.path.join(out, SHARDS_FOLDER)
    with output_errors(shard_dir):
        os.makedirs(shard_dir, exist_ok=True)
        for name in os.listdir(shard_dir):  # a rerun with fewer shards must not leave stale ones behind
            if name.startswith("series_shard_"):
                os.remove(os.path.join(shard_dir, name))
    for index, rows in enumerate(shard_rows):
        path = os.path.join(shard_dir, shard_name(index, len(shard_rows)))
        with output_errors(path):
            write_csv(path, rows, series_columns)


def _summary(result: ScanResult, paths, shards: int, workers: int, table_format: str, phi: Phi = Phi.KEEP,
             column_names: ColumnNames = ColumnNames.NAME) -> dict:
    return {
        "voxelpipe_version": __version__,
        "inputs": [os.fspath(p) for p in paths],
        "options": {"shards": shards, "workers": workers, "table_format": table_format, "phi": str(phi),
                    "column_names": str(column_names)},
        "files": result.n_files,
        "metadata_rows": result.n_metadata_rows,
        "series": len(result.series),
        "image_files": sum(int(r["n_files"]) for r in result.series),
        "localizers_skipped": sum(int(r["localizers_skipped"] or 0) for r in result.series),
        "screen_captures_skipped": sum(int(r["screen_captures_skipped"] or 0) for r in result.series),
        "objects": len(result.objects),
        "unreadable": len(result.unreadable),
        "seconds": round(result.seconds, 3),
        "complete": True,
    }
