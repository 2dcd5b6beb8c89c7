"""The report of a ``convert`` output folder: its summaries gathered into :class:`ReportData`, written as HTML.

Reads, never writes, the output folder OUT (see :mod:`voxelpipe.apps.report.runs`): the summary rows, the runs'
times, the scan manifest named in the json (``options.manifest``; else ``OUT/manifest/series_all.csv``) for the
geometry checks, and its ``unreadable_files.csv``. The series shown: every failed one (reason, no pictures),
every flagged one (a check of the manifest says something is off, :mod:`voxelpipe.apps.report.checks`) and
``samples`` done ones drawn with ``random.Random(seed)``; their sections come from
:mod:`voxelpipe.apps.report.sections`, the page from :mod:`voxelpipe.apps.report.html`.
"""
from __future__ import annotations

import logging
import os
import random
import re
from datetime import UTC, datetime

from voxelpipe._version import __version__
from voxelpipe.apps.report.checks import is_flagged, number, regrid_flagged
from voxelpipe.apps.report.html import ReportData, render
from voxelpipe.apps.report.runs import Run, load_runs, load_unreadable, manifest_paths, read_table
from voxelpipe.apps.report.sections import build_section
from voxelpipe.core import defaults
from voxelpipe.core.errors import InputError
from voxelpipe.core.progress import Progress
from voxelpipe.core.types import Status
from voxelpipe.stores.remote import is_url, local_path
from voxelpipe.stores.tables import atomic_path

log = logging.getLogger("voxelpipe")

MAX_UNREADABLE_GROUPS = 50
PATH_PATTERN = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?(?:[\\/][^\\/\s:,;'\"()]+)+[\\/]?")


def is_done(status: str) -> bool:
    """True for a series converted by its run (older summaries' ``converted`` is read as done, see
    :func:`voxelpipe.apps.report.runs.read_summary`)."""
    return status == Status.DONE


def _int(text: object) -> int:
    return int(number(text))


def _run_stats(run: Run) -> dict:
    done = [r for r in run.rows if is_done(r["status"])]
    files = sum(_int(r.get("n_files")) for r in done)
    bytes_in = sum(_int(r.get("bytes_in")) for r in done)
    bytes_out = sum(_int(r.get("bytes_out")) for r in done)
    seconds = (run.info or {}).get("seconds")
    stats = {"summary": os.path.basename(run.csv), "series": len(run.rows), "done": len(done),
             "skipped": sum(r["status"] == Status.SKIPPED for r in run.rows),
             "failed": sum(r["status"] == Status.FAILED for r in run.rows), "files": files,
             "MB in": f"{bytes_in / 1e6:.2f}", "MB out": f"{bytes_out / 1e6:.2f}",
             "ratio": f"{bytes_in / bytes_out:.2f}" if bytes_out else "",
             "seconds": "" if seconds is None else f"{float(seconds):.2f}", "files/s": "", "MB/s": "",
             "_files": files, "_bytes": bytes_in, "_seconds": seconds}
    if seconds:
        stats["files/s"] = f"{files / float(seconds):.1f}"
        stats["MB/s"] = f"{bytes_in / 1e6 / float(seconds):.2f}"
    return stats


def _run_facts(rows: list[dict], runs: list[Run], source: str, manifests: list[str],
               manifest_rows: dict[str, dict]) -> tuple[list[tuple[str, str]], list[dict]]:
    stats = [_run_stats(run) for run in runs]
    done = [r for r in rows if is_done(r["status"])]
    bytes_in = sum(_int(r.get("bytes_in")) for r in done)
    bytes_out = sum(_int(r.get("bytes_out")) for r in done)
    timed = [s for s in stats if s["_seconds"] is not None]
    seconds = sum(float(s["_seconds"]) for s in timed)
    files = sum(s["_files"] for s in timed)
    moved = sum(s["_bytes"] for s in timed)
    facts = [
        ("summary rows from", source),
        ("compression ratio (bytes in / bytes out, converted series)",
         f"{bytes_in / bytes_out:.3f} ({bytes_in / 1e6:.2f} MB → {bytes_out / 1e6:.2f} MB)" if bytes_out
         else "no converted series"),
        ("time (s, summed over runs)", f"{seconds:.2f} over {len(timed)} run(s)" if timed else "unknown (no json)"),
        ("throughput (converted series)",
         f"{files / seconds:.1f} files/s, {moved / 1e6 / seconds:.2f} MB/s ({files} files, {moved / 1e6:.2f} MB)"
         if seconds > 0 else "unknown"),
        ("manifest", ", ".join(manifests) or "not found: no checks"),
    ]
    if manifest_rows:
        keys = {r["series_key"] for r in rows}
        empty = sum(1 for r in manifest_rows.values() if _int(r.get("n_slices")) == 0)
        missing = sorted(k for k, r in manifest_rows.items() if _int(r.get("n_slices")) > 0 and k not in keys)
        facts.append(("manifest series without images (localizers only)", str(empty)))
        facts.append(("manifest series in no summary (not converted yet)",
                      str(len(missing)) + (": " + ", ".join(missing[:20]) if missing else "")))
    for s in stats:
        for k in ("_files", "_bytes", "_seconds"):
            s.pop(k)
    return facts, stats


def _failure_groups(rows: list[dict]) -> list[tuple[str, list[str]]]:
    """Failed series grouped by reason, file paths in the reason replaced by ``<file>``; largest group first."""
    groups: dict[str, list[str]] = {}
    for row in rows:
        if row["status"] == Status.FAILED:
            reason = PATH_PATTERN.sub("<file>", row.get("reason", "") or "(no reason)")
            groups.setdefault(reason, []).append(row["series_key"])
    return sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))


def _unreadable_groups(entries: list[dict]) -> list[tuple[str, str, int, list[str]]]:
    groups: dict[tuple[str, str], list[str]] = {}
    for entry in entries:
        reason = PATH_PATTERN.sub("<file>", entry.get("reason", ""))
        groups.setdefault((entry.get("kind", ""), reason), []).append(entry.get("path", ""))
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    return [(kind, reason, len(paths), paths[:3]) for (kind, reason), paths in ordered[:MAX_UNREADABLE_GROUPS]]


def choose_series(rows: list[dict], manifest_rows: dict[str, dict], samples: int, seed: int
                  ) -> list[tuple[dict, list[str]]]:
    """The series shown and why.

    Args:
        rows: Summary rows, one per series.
        manifest_rows: Scan manifest rows by series key (for the flags).
        samples: How many of the other done (or skipped, already complete) series to draw.
        seed: Seed of ``random.Random``, which draws from the rows in their given (series key) order.

    Returns:
        (row, roles): failed ones first, then flagged ones (each by key), then the drawn ones (``["sampled"]``,
        by key).
    """
    chosen: list[tuple[dict, list[str]]] = []
    pool = []
    for row in rows:
        roles = (["failed"] if row["status"] == Status.FAILED else []) + \
                (["flagged"] if is_flagged(manifest_rows.get(row["series_key"])) or regrid_flagged(row) else [])
        if roles:
            chosen.append((row, roles))
        elif is_done(row["status"]) or (row["status"] == Status.SKIPPED and row.get("path")):  # has a volume
            pool.append(row)
    chosen.sort(key=lambda item: ("failed" not in item[1], item[0]["series_key"]))
    picks = random.Random(seed).sample(pool, min(samples, len(pool)))
    chosen += [(row, ["sampled"]) for row in sorted(picks, key=lambda r: r["series_key"])]
    return chosen


def build_report(out: str | os.PathLike, samples: int = defaults.REPORT_SAMPLES, seed: int = defaults.REPORT_SEED,
                 progress: bool = True) -> ReportData:
    """Everything the page shows, read from the convert output folder ``out``.

    Args:
        out: The convert output folder: a local path or a URL (``http(s)://``, ``s3://``, ``memory://``; see
            :mod:`voxelpipe.apps.report.runs`), read, never written.
        samples: Done series drawn besides the failed and flagged ones (>= 0).
        seed: Seed of the draw.
        progress: Show a progress bar while the sections are built.

    Raises:
        InputError: ``samples`` < 0, or ``out`` is not a convert output folder.
    """
    out = os.fspath(local_path(out))
    if samples < 0:
        raise InputError(f"samples must be >= 0, got {samples}")
    rows, runs, source = load_runs(out)
    manifests = manifest_paths(out, runs)
    manifest_rows: dict[str, dict] = {}
    for path in manifests:
        for row in read_table(path):
            manifest_rows.setdefault(row["series_key"], row)
    unreadable, unreadable_source = load_unreadable(out, runs, manifests)
    modes = {((r.info or {}).get("options") or {}).get("mode", "3d") for r in runs}
    mode = "2d" if modes == {"2d"} else "3d"
    facts, stats = _run_facts(rows, runs, source, manifests, manifest_rows)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    chosen = choose_series(rows, manifest_rows, samples, seed)
    log.info("report: %d series in %s; drawing %d", len(rows), out, len(chosen))
    sections = []
    with Progress(len(chosen), "report", unit="series", enabled=progress) as bar:
        for row, roles in chosen:
            sections.append(build_section(out, row, manifest_rows.get(row["series_key"]), roles, mode))
            bar.update()
    notes = [] if manifest_rows else ["The scan manifest was not found: no geometry checks and no flagged series."]
    return ReportData(
        out=out if is_url(out) else os.path.abspath(out), generated=datetime.now(UTC).isoformat(timespec="seconds"),
        version=__version__, facts=facts, status_counts=dict(sorted(counts.items())),
        failure_groups=_failure_groups(rows), unreadable_total=len(unreadable),
        unreadable_groups=_unreadable_groups(unreadable), unreadable_source=unreadable_source, runs=stats,
        problems=[(s.key, s.problem) for s in sections if s.problem], sections=sections, notes=notes)


def write_html(data: ReportData, path: str) -> str:
    """Render ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(render(data))
    return path


def write_report(out: str, html: str | None = None, samples: int = defaults.REPORT_SAMPLES,
                 seed: int = defaults.REPORT_SEED, progress: bool = True) -> str:
    """Write the HTML report of the convert output folder ``out``.

    Args:
        out: The convert output folder (a local path or a URL).
        html: Where to write (default ``out/report.html``; required when ``out`` is a URL).
        samples: Done series drawn besides the failed and flagged ones.
        seed: Seed of the draw.
        progress: Show a progress bar.

    Returns:
        The path written.

    Raises:
        InputError: ``out`` is a URL and ``html`` is not given.
    """
    return write_html(build_report(out, samples, seed, progress), html_path(out, html))


def html_path(out: str | os.PathLike, html: str | None) -> str:
    """Where the report of ``out`` goes: ``html``, else ``out/report.html`` for a local folder.

    Raises:
        InputError: ``out`` is a URL and ``html`` is not given (the report is written locally).
    """
    if html:
        return html
    out = local_path(out)
    if is_url(out):
        raise InputError(f"{out}: the report of a URL is written locally: name the file with --html / html=")
    return os.path.join(os.fspath(out), "report.html")


__all__ = ["MAX_UNREADABLE_GROUPS", "build_report", "choose_series", "html_path", "is_done", "write_html",
           "write_report"]
