"""Rows of a run's summary (one per series, volume, subject, ROI): one status vocabulary and one way to build
the failed, lost and skipped rows and to count them.

A row is a plain ``dict`` whose ``status`` is a :class:`~voxelpipe.core.types.Status` (a ``StrEnum``: written
to CSV and JSON as ``done`` / ``skipped`` / ``failed``; rows read back from CSV hold the plain words, which
compare equal to the members). Why an item was skipped or failed goes into the row's reason column (``reason``,
or ``note`` in the masks report: ``key=``).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from voxelpipe.core.errors import failure_reason, lost_task_reason
from voxelpipe.core.types import Status

__all__ = ["ALREADY_COMPLETE", "done_row", "skipped_row", "failed_row", "lost_row", "count_statuses", "format_counts",
           "warn_if_failed"]

log = logging.getLogger("voxelpipe")

ALREADY_COMPLETE = "already complete"  # the reason of an item skipped because an earlier run finished it


def done_row(base: Mapping[str, object], **fields: object) -> dict:
    """A copy of ``base`` updated with ``fields``, status ``done``."""
    return {**base, **fields, "status": Status.DONE}


def skipped_row(base: Mapping[str, object], reason: str, *, key: str = "reason", **fields: object) -> dict:
    """A copy of ``base`` updated with ``fields``, status ``skipped``, ``reason`` in column ``key``."""
    return {**base, **fields, "status": Status.SKIPPED, key: reason}


def failed_row(base: Mapping[str, object], problem: BaseException | str, *, key: str = "reason",
               **fields: object) -> dict:
    """A copy of ``base`` updated with ``fields``, status ``failed``; column ``key`` holds ``problem`` (a
    message as given, or an exception as :func:`~voxelpipe.core.errors.failure_reason` words it)."""
    reason = failure_reason(problem) if isinstance(problem, BaseException) else str(problem)
    return {**base, **fields, "status": Status.FAILED, key: reason}


def lost_row(base: Mapping[str, object], exc: BaseException, *, key: str = "reason", **fields: object) -> dict:
    """The failed row of a task that never returned its own (its worker died, the cluster lost it): reason
    :func:`~voxelpipe.core.errors.lost_task_reason`."""
    return {**base, **fields, "status": Status.FAILED, key: lost_task_reason(exc)}


def count_statuses(rows: Iterable[Mapping[str, object]]) -> dict[Status, int]:
    """How many rows have each status; every member is a key (0 when absent). A row whose status is not a
    :class:`Status` word raises :class:`ValueError` (it was built outside the vocabulary)."""
    counts = dict.fromkeys(Status, 0)
    for row in rows:
        counts[Status(row["status"])] += 1
    return counts


def format_counts(counts: Mapping[Status, int]) -> str:
    """``"3 done, 1 skipped, 0 failed"`` (every status, in the order of :class:`Status`)."""
    return ", ".join(f"{counts.get(status, 0)} {status}" for status in Status)


def warn_if_failed(row: Mapping[str, object], label: str, key: str, *, reason_key: str = "reason") -> None:
    """Log a warning ``"<label>: <row[key]> failed: <reason>"`` when ``row`` failed (a run goes on after it)."""
    if row["status"] == Status.FAILED:
        log.warning("%s: %s failed: %s", label, row.get(key) or "?", row.get(reason_key, ""))
