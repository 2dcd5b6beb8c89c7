"""A zarr v3 store in one SQLite file: table ``kv(key TEXT PRIMARY KEY, value BLOB)``.

``convert --store sqlite`` writes ``<key>.zarr.sqlite`` volumes with it. The class is a public zarr ``Store``
subclass any zarr-python 3 program can import to read (or write) such a file::

    import zarr
    from voxelpipe.stores.sqlite_store import SqliteStore

    group = zarr.open_group(SqliteStore("OUT/data/<key>.zarr.sqlite", read_only=True), mode="r")
    image = group["image"][10]            # (row, column) of slice 10; group.attrs holds the geometry

Each row is one zarr key (``zarr.json``, ``image/zarr.json``, ``image/c/0/0/0``, ``labels/<name>/0/...``) and its
bytes, exactly what a ``.zarr`` folder holds as files. Tools that open stores by URL or path alone (tensorstore,
napari, ome-zarr, zarr-python without this class, other languages) cannot open the file; give them a ``.zarr``
folder, or copy the rows out (each key to a file of that name gives the folder).

One connection per store object, shared by the caller's thread and zarr's event-loop thread
(``check_same_thread=False``) with a lock around every statement. Writers use WAL journalling and autocommit
(every set/delete is its own transaction; ``_set_many`` is one). Byte-range reads (shard indexes, chunks inside
shards) use incremental blob I/O, which reads only the pages holding the requested bytes; SQL ``substr`` is only
the Python 3.10 fallback, because SQLite loads the whole value to evaluate it. A store pickles without its
connection and reconnects on first use, so it can go to spawned workers (never share one across ``fork``).
Read-only stores open the file with ``mode=ro``: any number of processes may read one file at once.
"""
from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    Store,
    SuffixByteRequest,
)
from zarr.core.buffer import Buffer, default_buffer_prototype

from voxelpipe.core.errors import StoreError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable
    from typing import Self

    from zarr.core.buffer import BufferPrototype

__all__ = ["SqliteStore"]

TABLE = "kv"
_HAVE_BLOBOPEN = hasattr(sqlite3.Connection, "blobopen")  # Python >= 3.11
_SCHEMA = f"CREATE TABLE IF NOT EXISTS {TABLE} (key TEXT PRIMARY KEY, value BLOB NOT NULL)"


def _bounds(byte_range: ByteRequest, size: int) -> tuple[int, int]:
    """``[start, stop)`` of ``byte_range`` within a value of ``size`` bytes, clipped like a file read."""
    if isinstance(byte_range, RangeByteRequest):
        start = min(byte_range.start, size)
        return start, min(max(byte_range.end, start), size)
    if isinstance(byte_range, OffsetByteRequest):
        return min(byte_range.offset, size), size
    if isinstance(byte_range, SuffixByteRequest):
        return max(size - byte_range.suffix, 0), size
    raise StoreError(f"Unexpected byte_range, got {byte_range}.")


def _prefix_sql(prefix: str) -> tuple[str, tuple[str, ...]]:
    """A WHERE clause matching keys that start with ``prefix``, as a range scan of the primary key."""
    if prefix == "":
        return "", ()
    last = ord(prefix[-1])
    if last < 0x10FFFF and not 0xD7FF <= last <= 0xDFFF:
        # keys >= prefix and < prefix with its last character incremented are exactly those starting with it
        return " WHERE key >= ? AND key < ?", (prefix, prefix[:-1] + chr(last + 1))
    return " WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)  # pragma: no cover - exotic last character


class SqliteStore(Store):
    """Zarr store backed by a single SQLite database file.

    Args:
        path: The database file. Created (with its parent directories) by a writable store on first use.
        read_only: Open the file read-only (``mode=ro``); the file must exist. Writes raise ``ValueError``.

    Misuse the zarr ``Store`` API answers with TypeError or ValueError (a value that is not a ``Buffer``, an
    unknown byte range, opening twice, a file without the ``kv`` table) raises
    :class:`~voxelpipe.core.errors.StoreError`, which is both.
    """

    supports_writes: bool = True
    supports_deletes: bool = True
    supports_listing: bool = True

    path: Path
    _conn: sqlite3.Connection | None
    _lock: threading.Lock

    def __init__(self, path: Path | str, *, read_only: bool = False) -> None:
        super().__init__(read_only=read_only)
        if not isinstance(path, (str, Path)):
            raise StoreError(f"'path' must be a str or Path, got {type(path)}")
        self.path = Path(path)
        self._conn = None
        self._lock = threading.Lock()

    # ---- connection ------------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        """Open the connection (call with the lock held)."""
        if self.read_only:
            if not self.path.is_file():
                raise FileNotFoundError(f"SQLite store {self.path} does not exist")
            uri = self.path.absolute().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,))
            if found.fetchone() is None:
                conn.close()
                raise StoreError(f"{self.path} is not a SqliteStore database (no table {TABLE!r})")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            # New files only: 64 KiB pages and the auto-vacuum pointer map make big values 2-3x faster to write
            # and let a blob read seek to an offset without walking the overflow-page chain (100x on suffixes).
            conn.execute("PRAGMA page_size=65536")
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable against crashes of the process
            conn.execute(_SCHEMA)
        return conn

    def _db(self) -> sqlite3.Connection:
        """The connection, opened on first use (call with the lock held)."""
        if self._conn is None:
            self._conn = self._connect()
            self._is_open = True
        return self._conn

    async def _open(self) -> None:
        if self._is_open:
            raise StoreError("store is already open")
        with self._lock:
            self._db()
            self._is_open = True

    def close(self) -> None:
        """Close the connection; the store reconnects if used again.

        A writer first leaves WAL mode, so the finished file stands alone (no -wal/-shm files) and opens
        read-only even on a read-only mount. If other connections still use the file it stays in WAL mode.
        """
        super().close()
        with self._lock:
            if self._conn is not None:
                if not self.read_only:
                    with contextlib.suppress(sqlite3.OperationalError):
                        self._conn.execute("PRAGMA journal_mode=DELETE")
                self._conn.close()
                self._conn = None

    def with_read_only(self, read_only: bool = False) -> Self:
        # docstring inherited
        return type(self)(self.path, read_only=read_only)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_conn"], state["_lock"]
        state["_is_open"] = False
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._conn = None
        self._lock = threading.Lock()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, type(self)) and self.path == other.path

    def __str__(self) -> str:
        return f"sqlite://{self.path.as_posix()}"

    def __repr__(self) -> str:
        return f"SqliteStore('{self}')"

    # ---- synchronous core ------------------------------------------------------------------------------------
    def _read(self, db: sqlite3.Connection, key: str, byte_range: ByteRequest | None) -> bytes | None:
        """The value at ``key`` or the requested part of it (call with the lock held)."""
        if byte_range is None:
            row = db.execute(f"SELECT value FROM {TABLE} WHERE key = ?", (key,)).fetchone()
            return None if row is None else row[0]
        row = db.execute(f"SELECT rowid, length(value) FROM {TABLE} WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        rowid, size = row
        start, stop = _bounds(byte_range, size)
        if stop <= start:
            return b""
        if not _HAVE_BLOBOPEN:  # Python 3.10
            sql = f"SELECT substr(value, ?, ?) FROM {TABLE} WHERE rowid = ?"
            return db.execute(sql, (start + 1, stop - start, rowid)).fetchone()[0]
        with db.blobopen(TABLE, "value", rowid, readonly=True) as blob:
            blob.seek(start)
            return blob.read(stop - start)

    def _get_many_sync(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        with self._lock:
            db = self._db()
            values = [self._read(db, key, byte_range) for key, byte_range in key_ranges]
        return [None if value is None else prototype.buffer.from_bytes(value) for value in values]

    def get_sync(
        self,
        key: str,
        *,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        """Read ``key`` (or ``byte_range`` of it); None if absent."""
        return self._get_many_sync(prototype or default_buffer_prototype(), [(key, byte_range)])[0]

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        self._check_writable()
        with self._lock:
            self._db().execute(sql, params)

    @staticmethod
    def _blob(value: Buffer) -> memoryview:
        if not isinstance(value, Buffer):
            raise StoreError(f"SqliteStore.set(): `value` must be a Buffer instance, got {type(value)}")
        return memoryview(value.as_numpy_array())

    def set_sync(self, key: str, value: Buffer) -> None:
        """Store ``value`` at ``key``, replacing any previous value."""
        self._write(f"INSERT OR REPLACE INTO {TABLE} (key, value) VALUES (?, ?)", (key, self._blob(value)))

    def delete_sync(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""
        self._write(f"DELETE FROM {TABLE} WHERE key = ?", (key,))

    def _keys(self, prefix: str) -> list[str]:
        where, params = _prefix_sql(prefix)
        with self._lock:
            rows = self._db().execute(f"SELECT key FROM {TABLE}{where} ORDER BY key", params).fetchall()
        return [row[0] for row in rows]

    # ---- zarr.abc.store.Store --------------------------------------------------------------------------------
    async def get(
        self,
        key: str,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        # docstring inherited
        return self.get_sync(key, prototype=prototype, byte_range=byte_range)

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        # docstring inherited
        return self._get_many_sync(prototype, key_ranges)

    async def exists(self, key: str) -> bool:
        # docstring inherited
        with self._lock:
            return self._db().execute(f"SELECT 1 FROM {TABLE} WHERE key = ?", (key,)).fetchone() is not None

    async def set(self, key: str, value: Buffer) -> None:
        # docstring inherited
        self.set_sync(key, value)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        # docstring inherited
        self._write(f"INSERT OR IGNORE INTO {TABLE} (key, value) VALUES (?, ?)", (key, self._blob(value)))

    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        """Insert many pairs in one transaction."""
        self._check_writable()
        rows = [(key, self._blob(value)) for key, value in values]
        with self._lock:
            db = self._db()
            with db:  # BEGIN ... COMMIT, or ROLLBACK on error
                db.execute("BEGIN")
                db.executemany(f"INSERT OR REPLACE INTO {TABLE} (key, value) VALUES (?, ?)", rows)

    async def delete(self, key: str) -> None:
        # docstring inherited
        self.delete_sync(key)

    async def delete_dir(self, prefix: str) -> None:
        # docstring inherited
        if prefix != "" and not prefix.endswith("/"):
            prefix += "/"
        where, params = _prefix_sql(prefix)
        self._write(f"DELETE FROM {TABLE}{where}", params)

    async def list(self) -> AsyncIterator[str]:
        # docstring inherited
        for key in self._keys(""):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        for key in self._keys(prefix):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        prefix = prefix.rstrip("/")
        base = prefix + "/" if prefix else ""
        children = dict.fromkeys(key[len(base) :].split("/", 1)[0] for key in self._keys(base))
        for child in children:
            yield child

    async def getsize(self, key: str) -> int:
        # docstring inherited
        with self._lock:
            row = self._db().execute(f"SELECT length(value) FROM {TABLE} WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise FileNotFoundError(key)
        return int(row[0])

    async def getsize_prefix(self, prefix: str) -> int:
        # docstring inherited
        where, params = _prefix_sql(prefix)
        with self._lock:
            row = self._db().execute(f"SELECT sum(length(value)) FROM {TABLE}{where}", params).fetchone()
        return int(row[0] or 0)
