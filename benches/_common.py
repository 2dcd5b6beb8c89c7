"""What the benchmark modules share: the ratio table of peers timed in the same run, and the shared data root.

Every benchmark case is one implementation (``impl``) in one pytest-benchmark group. A module makes one
``RatioTable`` at import; each case calls ``table.begin(benchmark, group, impl)`` before timing (it sets
``benchmark.group`` and ``benchmark.extra_info["impl"]``, which is all a ``--benchmark-json`` reader needs to
build the same table) and ``table.record(benchmark, **figures)`` after it. At the end of a timed run
(``--benchmark-enable``) ``benches/conftest.py`` prints every table that has timed rows: per group, one row per
implementation with its rounds, median and ``ratio = impl median / baseline median`` (the baseline is voxelpipe
unless the table says otherwise: > 1 means voxelpipe is faster), then the module's own figure columns and lines.
In the default smoke run (``--benchmark-disable``) nothing is timed and nothing is printed.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA_SKIP = "../shared/data not found: real-data benchmarks need the shared test data beside the repo"


def shared_data_root() -> Path:
    """The real DICOM test data: ``$VOXELPIPE_TEST_DATA``, else ``../shared/data`` beside the repository."""
    env = os.environ.get("VOXELPIPE_TEST_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def remove_paths(*paths: str) -> None:
    """Remove each of ``paths`` that exists (a folder with its contents, or a file): a round's outputs."""
    for path in paths:
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


@dataclass(frozen=True)
class Column:
    """One figure column of a ratio table: ``figures[key]`` (or ``key(row)`` when ``key`` is a callable) formatted
    with ``fmt`` (a format spec, or a callable from the value to its text); ``missing`` when there is no value;
    ``align`` ">" (right) or "<" (left)."""

    header: str
    key: str | Callable[[Row], object]
    fmt: str | Callable[[object], str] = ".3f"
    missing: str = ""
    align: str = ">"

    def cell(self, row: Row) -> str:
        value = self.key(row) if callable(self.key) else row.figures.get(self.key)
        if value is None:
            return self.missing
        return self.fmt(value) if callable(self.fmt) else format(value, self.fmt)


@dataclass
class Row:
    group: str
    label: str  # the row's name: the implementation, or the case when one implementation has several
    impl: str
    rounds: int | None
    median: float | None  # seconds; None when benchmarks are disabled
    figures: dict = field(default_factory=dict)


TABLES: list[RatioTable] = []  # every table made, in import order; printed by benches/conftest.py


class RatioTable:
    """The end-of-run table of one benchmark module (see the module docstring).

    Args:
        title: The section title in the terminal summary.
        baseline: The row label every ratio is taken against, in each group ("voxelpipe").
        unit: "s" or "ms", for the median column.
        columns: The module's own figure columns, read from ``record``'s figures.
        header: Lines printed above the table (a callable returning them, called at render time).
        footer: Lines printed below the table (a callable returning them: compile times, targets, notes).
        order: Row labels in print order (others follow in the order they ran).
    """

    def __init__(self, title: str, *, baseline: str = "voxelpipe", unit: str = "s", columns: Sequence[Column] = (),
                 header: Callable[[], Iterable[str]] | None = None,
                 footer: Callable[[], Iterable[str]] | None = None, order: Sequence[str] = ()):
        if unit not in ("s", "ms"):
            raise ValueError(f"unit must be 's' or 'ms', not {unit!r}")
        self.title = title
        self.baseline = baseline
        self.unit = unit
        self.columns = list(columns)
        self.header = header
        self.footer = footer
        self.order = list(order)
        self.rows: dict[tuple[str, str], Row] = {}
        TABLES.append(self)

    # ---------------------------------------------------------------------------------------------- cases
    @staticmethod
    def begin(benchmark, group: str, impl: str, label: str | None = None) -> None:
        """Name the case for pytest-benchmark's JSON: ``benchmark.group`` and ``extra_info["impl"]`` (and
        ``extra_info["case"]`` when the row label is not the implementation)."""
        benchmark.group = group
        benchmark.extra_info["impl"] = impl
        if label is not None and label != impl:
            benchmark.extra_info["case"] = label

    def record(self, benchmark, rounds: int | None = None, **figures) -> float | None:
        """Add the case's row (after its timing); returns its median in seconds, None when not timed."""
        stats = getattr(benchmark, "stats", None)
        median = stats.stats.median if stats is not None else None
        if stats is not None:
            rounds = stats.stats.rounds
        impl = benchmark.extra_info["impl"]
        label = benchmark.extra_info.get("case", impl)
        self.rows[(benchmark.group, label)] = Row(benchmark.group, label, impl, rounds, median, dict(figures))
        return median

    def row(self, group: str, label: str) -> Row | None:
        return self.rows.get((group, label))

    def median(self, group: str, label: str) -> float | None:
        row = self.rows.get((group, label))
        return row.median if row is not None else None

    # --------------------------------------------------------------------------------------------- render
    def _ordered(self, rows: list[Row]) -> list[Row]:
        rank = {label: i for i, label in enumerate(self.order)}
        return sorted(rows, key=lambda r: rank.get(r.label, len(rank)))

    def render(self) -> list[str]:
        """The table's lines; empty when no case was timed."""
        timed = [r for r in self.rows.values() if r.median is not None]
        if not timed:
            return []
        scale = 1e3 if self.unit == "ms" else 1.0
        groups = list(dict.fromkeys(r.group for r in timed))
        table = [["group", "impl", "rounds", f"median {self.unit}", f"vs {self.baseline}"]
                 + [c.header for c in self.columns]]
        for group in groups:
            rows = self._ordered([r for r in timed if r.group == group])
            base = next((r.median for r in rows if r.label == self.baseline), None)
            for r in rows:
                table.append([group, r.label, "" if r.rounds is None else str(r.rounds), f"{r.median * scale:.3f}",
                              f"{r.median / base:.2f}x" if base else "n/a"] + [c.cell(r) for c in self.columns])
        align = ["<", "<", ">", ">", ">"] + [c.align for c in self.columns]
        widths = [max(len(line[i]) for line in table) for i in range(len(align))]
        lines = list(self.header() or []) if self.header else []
        lines.append(f"ratio = impl median / {self.baseline} median, per group (> 1: {self.baseline} is faster)")
        lines += [" ".join(f"{cell:{a}{w}}" for cell, a, w in zip(line, align, widths, strict=True)).rstrip()
                  for line in table]
        if self.footer:
            lines.extend(self.footer() or [])
        return lines


def render_tables() -> list[tuple[str, list[str]]]:
    """(title, lines) of every table with timed rows, in import order."""
    out = []
    for table in TABLES:
        lines = table.render()
        if lines:
            out.append((table.title, lines))
    return out

