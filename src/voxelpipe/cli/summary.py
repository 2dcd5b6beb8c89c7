"""The one-line summary of a run's rows, counted by :class:`voxelpipe.core.types.Status`."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from voxelpipe.cli.options import EXIT_ITEMS_FAILED, EXIT_OK
from voxelpipe.core.types import Status


@dataclass
class Summary:
    """Row counts per status: ``done``, ``skipped``, ``failed``, and ``other`` for any word outside
    :class:`Status` (shown before ``failed``, never hidden)."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    other: dict[str, int] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 when no row failed, else 1."""
        return EXIT_ITEMS_FAILED if self.failed else EXIT_OK

    def counts(self) -> str:
        """``3 done, 1 skipped, 0 failed`` (``N <word>, `` before ``failed`` per other status word)."""
        other = "".join(f"{n} {word}, " for word, n in self.other.items())
        return f"{self.done} done, {self.skipped} skipped, {other}{self.failed} failed"


def summarise(rows: Iterable[Mapping]) -> Summary:
    """Count ``rows`` by their ``status``."""
    counts = Counter(str(row.get("status", "")) for row in rows)
    return Summary(done=counts.pop(Status.DONE, 0), skipped=counts.pop(Status.SKIPPED, 0),
                   failed=counts.pop(Status.FAILED, 0), other=dict(sorted(counts.items())))


def failed_rows(rows: Iterable[Mapping]) -> list[Mapping]:
    """The rows whose status is :attr:`Status.FAILED`."""
    return [row for row in rows if row.get("status") == Status.FAILED]


def print_summary(command: str, rows: list[Mapping], out: str, label: str, detail: str = "") -> int:
    """Print ``<command>: 3 done, 1 skipped, 0 failed<detail> -> OUT`` and one ``  failed <label>: <reason>``
    line per failed row (``label``: the row's identifying column); return the exit status."""
    summary = summarise(rows)
    print(f"{command}: {summary.counts()}{detail} -> {out}")
    for row in failed_rows(rows):
        print(f"  failed {row.get(label) or '?'}: {row.get('reason', '')}")
    return summary.exit_code


__all__ = ["Summary", "summarise", "failed_rows", "print_summary"]
