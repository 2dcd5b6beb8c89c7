"""The one-line summary of a run's rows, counted by :class:`voxelpipe.core.types.Status`."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from voxelpipe.cli.options import EXIT_ITEMS_FAILED, EXIT_OK
from voxelpipe.core.rows import count_statuses, format_counts
from voxelpipe.core.text import visible
from voxelpipe.core.types import Status


@dataclass
class Summary:
    """Row counts per status (every :class:`Status` member is a key)."""

    by_status: dict[Status, int]

    @property
    def done(self) -> int:
        return self.by_status[Status.DONE]

    @property
    def skipped(self) -> int:
        return self.by_status[Status.SKIPPED]

    @property
    def failed(self) -> int:
        return self.by_status[Status.FAILED]

    @property
    def exit_code(self) -> int:
        """0 when no row failed, else 1."""
        return EXIT_ITEMS_FAILED if self.failed else EXIT_OK

    def counts(self) -> str:
        """``3 done, 1 skipped, 0 failed``."""
        return format_counts(self.by_status)


def summarise(rows: Iterable[Mapping]) -> Summary:
    """Count ``rows`` by their ``status`` (a word outside :class:`Status` raises ``ValueError``: a pipeline
    built that row outside the vocabulary)."""
    return Summary(count_statuses(rows))


def failed_rows(rows: Iterable[Mapping]) -> list[Mapping]:
    """The rows whose status is :attr:`Status.FAILED`."""
    return [row for row in rows if row.get("status") == Status.FAILED]


def print_summary(command: str, rows: list[Mapping], out: str, label: str, detail: str = "") -> int:
    """Print ``<command>: 3 done, 1 skipped, 0 failed<detail> -> OUT`` and one ``  failed <label>: <reason>``
    line per failed row (``label``: the row's identifying column); return the exit status."""
    summary = summarise(rows)
    print(f"{command}: {summary.counts()}{detail} -> {out}")
    for row in failed_rows(rows):
        print(visible(f"  failed {row.get(label) or '?'}: {row.get('reason', '')}"))
    return summary.exit_code


__all__ = ["Summary", "summarise", "failed_rows", "print_summary"]
