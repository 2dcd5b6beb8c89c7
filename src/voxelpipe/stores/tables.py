"""Writing tables: CSV (always) and Parquet (optional, pyarrow), atomically (temporary name, then rename)."""
from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from voxelpipe.core.errors import InputError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only when the block succeeds."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_csv(path: str | os.PathLike, rows: Iterable[dict], columns: list[str]) -> None:
    """Write ``rows`` (dicts; missing keys left empty) as CSV with a header, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a CSV file with a header, as dicts of strings."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_json(path: str | os.PathLike, data: object) -> None:
    """Write ``data`` as indented JSON (values JSON cannot hold written as their text), atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, default=str)
        fh.write("\n")


def write_lines(path: str | os.PathLike, lines: Iterable[str]) -> None:
    """Write ``lines`` as UTF-8 text, one per line (``\n`` endings), atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.writelines(line + "\n" for line in lines)


class RowSpool:
    """Rows with varying columns streamed to a temporary JSON-lines file, then written as one table whose
    columns are the union over all rows (first-seen order). Memory stays flat however many rows come."""

    def __init__(self, folder: str | os.PathLike, leading: list[str]):
        os.makedirs(folder, exist_ok=True)
        self._fh = tempfile.NamedTemporaryFile("w+", encoding="utf-8", dir=folder, prefix=".spool-",
                                               suffix=".jsonl", delete=False)
        self.columns: dict[str, None] = dict.fromkeys(leading)
        self.count = 0

    def add(self, row: dict[str, str]) -> None:
        """Append one row (its new columns join the table's columns)."""
        self.columns.update(dict.fromkeys(row))
        self._fh.write(json.dumps(row, ensure_ascii=False))
        self._fh.write("\n")
        self.count += 1

    def _rows(self, extra: dict[str, dict[str, str]] | None, key: str) -> Iterator[dict[str, str]]:
        self._fh.flush()
        self._fh.seek(0)
        for line in self._fh:
            row = json.loads(line)
            if extra:
                row.update(extra.get(row.get(key, ""), {}))
            yield row

    def write(self, csv_path: str, parquet_path: str | None = None,
              extra: dict[str, dict[str, str]] | None = None, key: str = "path") -> None:
        """Write the CSV (and Parquet); ``extra[row[key]]`` adds cells to a row on the way out."""
        columns = list(self.columns)
        write_csv(csv_path, self._rows(extra, key), columns)
        if parquet_path:
            write_parquet(parquet_path, self._rows(extra, key), columns)

    def close(self) -> None:
        """Close and delete the temporary file."""
        name = self._fh.name
        self._fh.close()
        if os.path.exists(name):
            os.remove(name)


def write_parquet(path: str, rows: Iterable[dict], columns: list[str], batch_rows: int = 5000) -> None:
    """Write rows as a Parquet table of string columns (needs pyarrow: ``pip install voxelpipe[parquet]``)."""
    try:  # optional extra, imported only when Parquet is asked for
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("--table-format parquet needs pyarrow: pip install 'voxelpipe[parquet]'") from None
    schema = pa.schema([(c, pa.string()) for c in columns])
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            batch: list[dict] = []
            written = 0
            for row in rows:
                batch.append(row)
                if len(batch) >= batch_rows:
                    writer.write_table(_table(pa, schema, columns, batch))
                    written += len(batch)
                    batch = []
            if batch or not written:
                writer.write_table(_table(pa, schema, columns, batch))


def _table(pa, schema, columns: list[str], rows: list[dict]):
    data = {c: [None if r.get(c) is None else str(r[c]) for r in rows] for c in columns}
    return pa.table(data, schema=schema)
