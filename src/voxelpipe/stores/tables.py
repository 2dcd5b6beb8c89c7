"""Writing tables: CSV (always) and Parquet (optional, pyarrow), atomically (temporary name, then rename).

A temporary file is readable by its owner only (0600) while it exists, since tables may hold patient data; the
final file gets the usual permissions. The row spool of :class:`RowSpool` has no name at all.
"""
from __future__ import annotations

import csv
import functools
import io
import itertools
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from voxelpipe.core.errors import InputError, OutputWriteError

log = logging.getLogger("voxelpipe")

TEMPORARY_PREFIX = ".tmp-"  # atomic_path's temporary files: TEMPORARY_PREFIX + random + final name
SPOOL_PREFIX = ".spool-"  # named row spools of earlier versions: SPOOL_PREFIX + random + SPOOL_SUFFIX
SPOOL_SUFFIX = ".jsonl"


# File names that are not valid UTF-8 (bytes the OS hands Python as lone surrogates) are written to the tables as
# their raw bytes and read back the same way, so every path in a table opens the file it names.
PATH_BYTES = "surrogateescape"


@contextmanager
def output_errors(path: str | os.PathLike, what: str = "") -> Iterator[None]:
    """Turn an ``OSError`` raised in the block into :class:`OutputWriteError` naming ``path`` (``what``: words
    after "cannot write", e.g. " the row spool")."""
    try:
        yield
    except OutputWriteError:
        raise
    except OSError as exc:
        raise OutputWriteError(path, exc, what) from exc


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path`` (mode 0600); give it the usual permissions and rename it to ``path``
    only when the block succeeds, else remove it."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, suffix=os.path.basename(path), dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the output gets the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_temporaries(folder: str | os.PathLike, names: Iterable[str]) -> list[str]:
    """Remove what writers killed before they finished left in ``folder``: :func:`atomic_path`'s temporary files
    of the final ``names``, and named row spools of earlier versions. Only for a folder this process owns (another
    writer's temporaries would go too). Returns the removed paths."""
    folder = os.fspath(folder)
    try:
        entries = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    suffixes = tuple(names)
    removed = []
    for name in entries:
        stale = ((name.startswith(TEMPORARY_PREFIX) and name.endswith(suffixes))
                 or (name.startswith(SPOOL_PREFIX) and name.endswith(SPOOL_SUFFIX)))
        path = os.path.join(folder, name)
        if stale and os.path.isfile(path):
            os.remove(path)
            removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) an interrupted run left in %s", len(removed), folder)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_csv(path: str | os.PathLike, rows: Iterable[dict], columns: list[str]) -> None:
    """Write ``rows`` (dicts; missing keys left empty) as CSV with a header, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8", errors=PATH_BYTES) as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_csv_lists(path: str | os.PathLike, header: list[str], rows: Iterable[list]) -> None:
    """Write ``rows`` (lists of cells in ``header`` order) as CSV with ``header``, atomically: the same file
    :func:`write_csv` writes for the dicts of those cells, without a dict per row."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8", errors=PATH_BYTES) as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def csv_text(chunk: tuple[list[str], Sequence[Mapping[str, str]]], columns: list[str]) -> str:
    """The CSV lines (no header) of rows given as JSON lines, ``extras[i]`` adding cells to row ``i``: what
    :meth:`RowSpool.write` writes for them (a task for worker processes)."""
    lines, extras = chunk
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for line, more in zip(lines, extras):
        row = json.loads(line)
        if more:
            row.update(more)
        writer.writerow([row.get(c, "") for c in columns])
    return buffer.getvalue()


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a CSV file with a header, as dicts of strings."""
    with open(path, newline="", encoding="utf-8", errors=PATH_BYTES) as fh:
        return list(csv.DictReader(fh))


def write_json(path: str | os.PathLike, data: object) -> None:
    """Write ``data`` as indented JSON (values JSON cannot hold written as their text), atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, default=str)
        fh.write("\n")


def write_lines(path: str | os.PathLike, lines: Iterable[str]) -> None:
    """Write ``lines`` as UTF-8 text, one per line (``\n`` endings), atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", errors=PATH_BYTES, newline="\n") as fh:
        fh.writelines(line + "\n" for line in lines)


CSV_CHUNK_ROWS = 1000  # rows per CSV-encoding task of RowSpool.write
CSV_CHUNKS_AT_ONCE = 2  # tasks in flight (one per worker of a 2-core machine): bounds the memory of a parallel write


def write_csv_text(path: str | os.PathLike, header: list[str], texts: Iterable[str]) -> None:
    """Write a CSV header and then ``texts`` (CSV lines as :func:`csv_text` encodes them), atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8", errors=PATH_BYTES) as fh:
        csv.writer(fh).writerow(header)
        for text in texts:
            fh.write(text)


class RowSpool:
    """Rows with varying columns streamed to a temporary JSON-lines file, then written as one table whose
    columns are the union over all rows (first-seen order). Memory stays flat however many rows come.

    The file has no name (it is removed from ``folder`` as it is created), so it is never visible to other users
    and nothing is left behind when the process is killed. An ``OSError`` while spooling (disk full) is raised as
    :class:`OutputWriteError` naming ``folder``."""

    def __init__(self, folder: str | os.PathLike, leading: list[str]):
        self.folder = os.fspath(folder)
        with output_errors(self.folder, " the temporary row spool"):
            os.makedirs(self.folder, exist_ok=True)
            self._fh = tempfile.TemporaryFile("w+", encoding="utf-8", errors=PATH_BYTES, dir=self.folder,
                                              prefix=SPOOL_PREFIX, suffix=SPOOL_SUFFIX)
        self.columns: dict[str, None] = dict.fromkeys(leading)
        self.count = 0

    def add(self, row: dict[str, str]) -> None:
        """Append one row (its new columns join the table's columns)."""
        with output_errors(self.folder, " the temporary row spool"):
            self._fh.write(json.dumps(row, ensure_ascii=False))
            self._fh.write("\n")
        self.columns.update(dict.fromkeys(row))
        self.count += 1

    def add_text(self, text: str, columns: Iterable[str], count: int) -> None:
        """Append ``count`` rows already encoded as JSON lines (as :meth:`add` writes them, each ending in a
        newline; from worker processes), whose columns in first-seen order are ``columns``."""
        with output_errors(self.folder, " the temporary row spool"):
            self._fh.write(text)
        self.columns.update(dict.fromkeys(columns))
        self.count += count

    def _rows(self, extra: dict[str, dict[str, str]] | None, key: str,
              rename: Mapping[str, str] | None = None) -> Iterator[dict[str, str]]:
        with output_errors(self.folder, " the temporary row spool"):
            self._fh.flush()
            self._fh.seek(0)
        for line in self._fh:
            row = json.loads(line)
            if extra:
                row.update(extra.get(row.get(key, ""), {}))
            yield {rename.get(c, c): v for c, v in row.items()} if rename else row

    def _cells(self, extra: dict[str, dict[str, str]] | None, key: str) -> Iterator[list[str]]:
        """The rows as lists of cells in column order ("" for a column a row lacks)."""
        columns = list(self.columns)
        for row in self._rows(extra, key):
            yield [row.get(c, "") for c in columns]

    def _line_chunks(self, size: int) -> Iterator[list[str]]:
        """The spooled JSON lines, ``size`` at a time."""
        with output_errors(self.folder, " the temporary row spool"):
            self._fh.flush()
            self._fh.seek(0)
        while chunk := list(itertools.islice(self._fh, size)):
            yield chunk

    def write(self, csv_path: str, parquet_path: str | None = None,
              extra: dict[str, dict[str, str]] | None = None, key: str = "path",
              rename: Mapping[str, str] | None = None, types: Mapping[str, str] | None = None,
              map_chunks: Callable[[Callable[[tuple], str], list[tuple]], Iterable[str]] | None = None,
              row_extras: Sequence[Mapping[str, str]] | None = None) -> None:
        """Write the CSV (and Parquet); ``extra[row[key]]`` adds cells to a row on the way out; ``rename`` maps
        column names to the names written (``key`` is the name before renaming); ``types``: Parquet column types
        (:func:`write_parquet`, by the names written). An ``OSError`` is raised as :class:`OutputWriteError`
        naming the table.

        ``map_chunks(func, chunks)`` (an ordered map over worker processes) with ``row_extras`` (the cells
        ``extra`` adds, one mapping per row in spool order): the CSV lines are encoded by ``func`` in chunks of
        ``CSV_CHUNK_ROWS`` rows, a few chunks at a time (memory stays bounded); the file is the same."""
        columns = [rename.get(c, c) for c in self.columns] if rename else list(self.columns)
        with output_errors(csv_path):
            if map_chunks is None or row_extras is None:
                write_csv_lists(csv_path, columns, self._cells(extra, key))
            else:
                encode = functools.partial(csv_text, columns=list(self.columns))
                chunks = zip(self._line_chunks(CSV_CHUNK_ROWS),
                             (row_extras[i:i + CSV_CHUNK_ROWS] for i in range(0, self.count, CSV_CHUNK_ROWS)))
                windows = iter(lambda: list(itertools.islice(chunks, CSV_CHUNKS_AT_ONCE)), [])
                write_csv_text(csv_path, columns, (text for window in windows for text in map_chunks(encode, window)))
        if parquet_path:
            with output_errors(parquet_path):
                write_parquet(parquet_path, self._rows(extra, key, rename), columns, types=types)

    def close(self) -> None:
        """Close (and so delete) the temporary file; rows not yet written to disk are dropped, never an error."""
        try:
            self._fh.close()
        except OSError:  # flushing the last rows failed (disk full): the file goes all the same
            pass


def write_parquet(path: str, rows: Iterable[dict], columns: list[str], batch_rows: int = 5000,
                  types: Mapping[str, str] | None = None) -> None:
    """Write rows as a Parquet table (needs pyarrow: ``pip install voxelpipe[parquet]``).

    Columns are strings, except those ``types`` names ``"int64"`` or ``"float64"``: a cell of such a column is
    parsed from its text as one number, and is null when empty, absent or not one number (several values, a
    ``DUPLICATE TAGS IN DICOM:`` cell)."""
    try:  # optional extra, imported only when Parquet is asked for
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("--table-format parquet needs pyarrow: pip install 'voxelpipe[parquet]'") from None
    types = types or {}
    arrow = {"int64": pa.int64(), "float64": pa.float64()}
    schema = pa.schema([(c, arrow.get(types.get(c, ""), pa.string())) for c in columns])
    parsers = {c: PARSERS[types[c]] for c in columns if types.get(c) in PARSERS}
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            batch: list[dict] = []
            written = 0
            for row in rows:
                batch.append(row)
                if len(batch) >= batch_rows:
                    writer.write_table(_table(pa, schema, columns, batch, parsers))
                    written += len(batch)
                    batch = []
            if batch or not written:
                writer.write_table(_table(pa, schema, columns, batch, parsers))


def parse_int(text: object) -> int | None:
    """One integer from a cell (``" 12 "``, ``"+5"``), or None (empty, several values, not an integer, outside
    int64)."""
    try:
        value = int(str(text).strip())
    except ValueError:
        return None
    return value if -(1 << 63) <= value < (1 << 63) else None


def parse_float(text: object) -> float | None:
    """One number from a cell (``"0.5"``, ``"-1e3"``), or None (empty, several values, not a number)."""
    try:
        return float(str(text).strip())
    except ValueError:
        return None


PARSERS: dict[str, Callable[[object], int | float | None]] = {"int64": parse_int, "float64": parse_float}


def _table(pa, schema, columns: list[str], rows: list[dict], parsers: Mapping[str, Callable] | None = None):
    parsers = parsers or {}
    data = {}
    for c in columns:
        parse = parsers.get(c)
        if parse is None:
            data[c] = [None if r.get(c) is None else str(r[c]) for r in rows]
        else:
            data[c] = [None if r.get(c) in (None, "") else parse(r[c]) for r in rows]
    return pa.table(data, schema=schema)
