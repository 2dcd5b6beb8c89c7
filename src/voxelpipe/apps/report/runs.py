"""Reading a ``convert`` output folder for the report: the summary rows, the runs, the manifest, unreadable files.

The summary rows come from ``summary_all.csv`` (from ``aggregate``) when it is at least as new as every other
``summary_<suffix>.csv``, else from those merged by aggregate's rule (a later row of a series wins, except that a
``skipped`` row does not replace a done one); run times from the ``summary_<suffix>.json`` beside each.
"""
from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass

from voxelpipe.core.errors import InputError
from voxelpipe.core.types import Status
from voxelpipe.pipelines.convert import merge_summaries, unreadable_csv
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


def read_summary(path: str) -> list[dict]:
    """The rows of a summary CSV, with an older summary's ``converted`` read as :attr:`Status.DONE`."""
    rows = read_csv(path)
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
    if not os.path.isdir(out):
        raise InputError(f"{out}: no such folder (give the output folder of convert)")
    paths = sorted(p for p in glob.glob(os.path.join(out, "summary_*.csv")) if os.path.basename(p) != ALL_SUMMARY)
    merged = os.path.join(out, ALL_SUMMARY)
    if not paths and not os.path.isfile(merged):
        raise InputError(f"{out}: no summary_*.csv here: not an output folder of convert")
    runs = [Run(p, read_summary(p), read_json(p[:-len(".csv")] + ".json")) for p in paths]
    if os.path.isfile(merged) and all(os.path.getmtime(merged) >= os.path.getmtime(p) for p in paths):
        return sorted(read_summary(merged), key=lambda r: r["series_key"]), runs, ALL_SUMMARY
    if os.path.isfile(merged):
        log.warning("report: %s is older than a shard summary; merging the shard summaries instead", merged)
    return merge_summaries([(run.csv, run.rows) for run in runs]), runs, ", ".join(os.path.basename(p) for p in paths)


def read_json(path: str) -> dict | None:
    """The parsed json file at ``path``; None (with a warning when unreadable) when absent or unreadable."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        log.warning("report: %s unreadable (%s); its run time is left out", path, exc)
        return None


def manifest_paths(out: str, runs: list[Run]) -> list[str]:
    """The manifest CSVs the runs converted (``options.manifest``), else ``OUT/manifest/series_all.csv``."""
    found = []
    for run in runs:
        path = ((run.info or {}).get("options") or {}).get("manifest") or ""
        if path and os.path.isfile(path) and path not in found:
            found.append(path)
    fallback = os.path.join(out, "manifest", "series_all.csv")
    if not found and os.path.isfile(fallback):
        found.append(fallback)
    return found


def load_unreadable(out: str, runs: list[Run], manifests: list[str]) -> tuple[list[dict], str]:
    """Rows of the manifest's ``unreadable_files.csv`` (each file once) and the CSV paths read (comma-joined)."""
    candidates = [(r.info or {}).get("unreadable_list") or "" for r in runs]
    candidates += [unreadable_csv(m) for m in manifests] + [os.path.join(out, "manifest", "unreadable_files.csv")]
    rows: dict[str, dict] = {}
    used: list[str] = []
    for path in candidates:
        path = os.path.abspath(path) if path else ""
        if path and os.path.isfile(path) and path not in used:
            used.append(path)
            for row in read_csv(path):
                rows.setdefault(row.get("path", ""), row)
    return list(rows.values()), ", ".join(used)


__all__ = ["ALL_SUMMARY", "Run", "load_runs", "load_unreadable", "manifest_paths", "read_json"]
