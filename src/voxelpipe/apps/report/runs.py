"""Reading a ``convert`` output folder for the report: the summary rows, the runs, the manifest, unreadable files.

The summary rows come from ``summary_all.csv`` (from ``aggregate``) when it is at least as new as every other
``summary_<suffix>.csv``, else from those merged by aggregate's rule (a later row of a series wins, except that a
``skipped`` row does not replace a done one); run times from the ``summary_<suffix>.json`` beside each.

``out`` may be a URL (``http(s)://``, ``s3://``, ``memory://``: see :mod:`voxelpipe.stores.remote`): its folder
must be listable (S3, or an HTTP server's index page). When its server gives no modification times,
``summary_all.csv`` is taken as it stands. Over a URL, a manifest or unreadable-file list the runs name by a
local path is not looked up on this machine; ``OUT/manifest/`` is read instead.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
from dataclasses import dataclass

from voxelpipe.core.errors import InputError
from voxelpipe.core.types import Status
from voxelpipe.pipelines.convert import merge_summaries, unreadable_csv
from voxelpipe.stores import remote
from voxelpipe.stores.tables import read_csv

log = logging.getLogger("voxelpipe")

ALL_SUMMARY = "summary_all.csv"


@dataclass
class Run:
    """One ``summary_<suffix>.csv`` with its rows and its json (None when absent or unreadable).

    Attributes:
        csv: Path of the summary CSV.
        rows: Its rows (column -> text).
        info: The parsed ``summary_<suffix>.json`` (``seconds``, ``options`` ...), or None.
    """

    csv: str
    rows: list[dict]
    info: dict | None


LEGACY_DONE = "converted"  # the success word of summaries written before the statuses became done/skipped/failed


def read_table(path: str) -> list[dict]:
    """The rows of a CSV file, local (:func:`voxelpipe.stores.tables.read_csv`) or at a URL."""
    if not remote.is_url(path):
        return read_csv(path)
    text = remote.read_bytes(path).decode("utf-8", errors="surrogateescape")
    return list(csv.DictReader(io.StringIO(text, newline="")))


def read_summary(path: str) -> list[dict]:
    """The rows of a summary CSV, with an older summary's ``converted`` read as :attr:`Status.DONE`."""
    rows = read_table(path)
    for row in rows:
        if row.get("status") == LEGACY_DONE:
            row["status"] = Status.DONE
    return rows


def load_runs(out: str) -> tuple[list[dict], list[Run], str]:
    """The summary rows of the output folder ``out``.

    Returns:
        (the series rows to report, one per series key, sorted by key; every run; where the rows came from).

    Raises:
        InputError: ``out`` is not a folder or holds no ``summary_*.csv``.
    """
    if not remote.isdir(out):
        raise InputError(f"{out}: no such folder (give the output folder of convert)")
    paths = sorted(p for p in _summary_csvs(out) if os.path.basename(p) != ALL_SUMMARY)
    merged = remote.join(out, ALL_SUMMARY)
    has_merged = remote.isfile(merged)
    if not paths and not has_merged:
        raise InputError(f"{out}: no summary_*.csv here: not an output folder of convert")
    runs = [Run(p, read_summary(p), read_json(p[:-len(".csv")] + ".json")) for p in paths]
    if has_merged and _newest(merged, paths):
        return sorted(read_summary(merged), key=lambda r: r["series_key"]), runs, ALL_SUMMARY
    if has_merged:
        log.warning("report: %s is older than a shard summary; merging the shard summaries instead", merged)
    modified = (lambda p: remote.mtime(p) or 0.0) if remote.is_url(out) else os.path.getmtime
    merged_rows = merge_summaries([(run.csv, run.rows) for run in runs], modified)
    return merged_rows, runs, ", ".join(os.path.basename(p) for p in paths)


def _summary_csvs(out: str) -> list[str]:
    """The ``summary_*.csv`` files of the folder ``out`` (local or URL)."""
    if not remote.is_url(out):
        return glob.glob(os.path.join(out, "summary_*.csv"))
    return [remote.join(out, name) for name, folder in remote.listdir(out)
            if not folder and name.startswith("summary_") and name.endswith(".csv")]


def _newest(merged: str, paths: list[str]) -> bool:
    """True when ``merged`` is at least as new as every one of ``paths`` (or a URL's times are unknown)."""
    if not remote.is_url(merged):
        return all(os.path.getmtime(merged) >= os.path.getmtime(p) for p in paths)
    times = [remote.mtime(p) for p in (merged, *paths)]
    return None in times or all(times[0] >= t for t in times[1:])


def read_json(path: str) -> dict | None:
    """The parsed json file at ``path``; None (with a warning when unreadable) when absent or unreadable."""
    if not remote.isfile(path):
        return None
    try:
        if remote.is_url(path):
            return json.loads(remote.read_text(path))
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError, InputError) as exc:
        log.warning("report: %s unreadable (%s); its run time is left out", path, exc)
        return None


def manifest_paths(out: str, runs: list[Run]) -> list[str]:
    """The manifest CSVs the runs converted (``options.manifest``), else ``OUT/manifest/series_all.csv``."""
    found = []
    for run in runs:
        path = ((run.info or {}).get("options") or {}).get("manifest") or ""
        if path and _usable(out, path) and remote.isfile(path) and path not in found:
            found.append(path)
    fallback = remote.join(out, "manifest", "series_all.csv")
    if not found and remote.isfile(fallback):
        found.append(fallback)
    return found


def load_unreadable(out: str, runs: list[Run], manifests: list[str]) -> tuple[list[dict], str]:
    """Rows of the manifest's ``unreadable_files.csv`` (each file once) and the CSV paths read (comma-joined)."""
    candidates = [(r.info or {}).get("unreadable_list") or "" for r in runs]
    candidates += [unreadable_csv(m) for m in manifests] + [remote.join(out, "manifest", "unreadable_files.csv")]
    rows: dict[str, dict] = {}
    used: list[str] = []
    for path in candidates:
        path = (path if remote.is_url(path) else os.path.abspath(path)) if path else ""
        if path and _usable(out, path) and remote.isfile(path) and path not in used:
            used.append(path)
            for row in read_table(path):
                rows.setdefault(row.get("path", ""), row)
    return list(rows.values()), ", ".join(used)


def _usable(out: str, path: str) -> bool:
    """False for a local path named by the runs of a URL output (it was a path on the converting machine)."""
    return remote.is_url(path) or not remote.is_url(out)


__all__ = ["ALL_SUMMARY", "Run", "load_runs", "load_unreadable", "manifest_paths", "read_json", "read_table"]
