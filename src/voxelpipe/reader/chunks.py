"""Regions of Zarr v3 arrays read chunk by chunk, straight from the store, at the cost of decoding.

:class:`ChunkReader` reads an array's ``zarr.json`` itself (shape, data type, regular chunk grid, chunk key
encoding, fill value, codecs) and, for a region (slice, row, column ranges), fetches the chunk objects it
touches directly from the store: files of a ``.zarr`` folder, members of a ``.zarr.zip`` (stored members are read
by offset, no zipfile call per chunk), rows of a ``.zarr.sqlite`` ``kv`` table. A sharded array
(``sharding_indexed``) is read inner chunk by inner chunk through byte ranges found in the shard's index. Chunks
are decoded by Blosc (``blosc2`` when installed, else numcodecs; zstd too) in a small shared thread pool (both
release the GIL) and each chunk's overlap with the region is copied into the output (a chunk the region covers
whole is decoded straight into it); a missing chunk reads as the fill value. Decoded chunks are kept in
a small per-process LRU cache (bounded in bytes), so consecutive slices of 8-deep chunks decode each chunk once.

Anything else (other codecs, a transpose, an irregular grid, a URL store) falls back to zarr-python, logged
once per reason.

:func:`read_regions` reads the regions of several readers at once (one batch: every chunk decoded in the pool
together).
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sqlite3
import struct
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import product

import numcodecs.blosc
import numcodecs.zstd
import numpy as np
import zarr
from zarr.core.sync import sync

try:  # optional (the "fast" extra): decodes Blosc frames about twice as fast as numcodecs' Blosc
    import blosc2
except ImportError:  # pragma: no cover - numcodecs' Blosc is used instead
    blosc2 = None

from voxelpipe.core.errors import InputError
from voxelpipe.execution.workers import threads_per_worker
from voxelpipe.stores.registry import store_kind
from voxelpipe.stores.remote import is_url, open_group
from voxelpipe.stores.sqlite_store import TABLE, SqliteStore

log = logging.getLogger("voxelpipe")

DEFAULT_CACHE_BYTES = 32 << 20
"""Decoded chunks kept per process (bytes), shared by every reader."""
_GAP = 256 << 10
"""Inner chunks of one shard at most this many bytes apart are fetched by one ranged read."""
MISSING = (1 << 64) - 1
"""Offset and length of an inner chunk a shard does not hold."""
_ZIP_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")


class Unsupported(Exception):
    """The array needs zarr-python (the message says why)."""


# -- stores: bytes by key ---------------------------------------------------------------------------------------
class KeyStore:
    """Raw values of a store by key: ``get(key)`` the whole value, ``get_range(key, start, length)`` a part
    (``start`` < 0: the last ``-start`` bytes); both None when the key is absent."""

    def get(self, key: str) -> bytes | None:
        raise NotImplementedError

    def get_range(self, key: str, start: int, length: int | None) -> bytes | None:
        data = self.get(key)
        if data is None:
            return None
        if start < 0:
            return data[start:]
        return data[start:] if length is None else data[start:start + length]

    def close(self) -> None:
        """Release files and connections."""


class DirKeyStore(KeyStore):
    """A ``.zarr`` folder: one file per key."""

    def __init__(self, root: str):
        self.root = root

    def get(self, key: str) -> bytes | None:
        try:
            with open(os.path.join(self.root, key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def get_range(self, key: str, start: int, length: int | None) -> bytes | None:
        try:
            with open(os.path.join(self.root, key), "rb") as f:
                if start < 0:
                    f.seek(start, os.SEEK_END)
                else:
                    f.seek(start)
                return f.read() if length is None else f.read(length)
        except FileNotFoundError:
            return None


class ZipKeyStore(KeyStore):
    """A ``.zarr.zip``: stored (uncompressed) members are read with ``os.pread`` at their data offset; deflated
    members through :mod:`zipfile`."""

    def __init__(self, path: str):
        self.path = path
        self._zip = zipfile.ZipFile(path, "r")
        self._fd = os.open(path, os.O_RDONLY)
        self._members = {info.filename: info for info in self._zip.infolist()}
        self._offsets: dict[str, int] = {}
        self._lock = threading.Lock()

    def _span(self, key: str) -> tuple[int, int] | None:
        info = self._members.get(key)
        if info is None or info.compress_type != zipfile.ZIP_STORED:
            return None
        offset = self._offsets.get(key)
        if offset is None:
            header = _ZIP_LOCAL_HEADER.unpack(os.pread(self._fd, _ZIP_LOCAL_HEADER.size, info.header_offset))
            offset = info.header_offset + _ZIP_LOCAL_HEADER.size + header[-2] + header[-1]
            self._offsets[key] = offset
        return offset, info.file_size

    def get(self, key: str) -> bytes | None:
        return self.get_range(key, 0, None)

    def get_range(self, key: str, start: int, length: int | None) -> bytes | None:
        if key not in self._members:
            return None
        span = self._span(key)
        if span is None:
            with self._lock:
                data = self._zip.read(key)
            return data[start:] if start < 0 else data[start:None if length is None else start + length]
        offset, size = span
        if start < 0:
            start = max(0, size + start)
        length = size - start if length is None else min(length, size - start)
        return os.pread(self._fd, max(0, length), offset + start)

    def close(self) -> None:
        self._zip.close()
        os.close(self._fd)


class SqliteKeyStore(KeyStore):
    """A ``.zarr.sqlite``: the ``kv`` table, one read-only connection per thread."""

    def __init__(self, path: str):
        self.path = path
        self._uri = os.path.abspath(path)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._db()  # fail early on a file that is not a database

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            uri = "file:" + self._uri + "?mode=ro"
            db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    def get(self, key: str) -> bytes | None:
        row = self._db().execute(f"SELECT value FROM {TABLE} WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def get_range(self, key: str, start: int, length: int | None) -> bytes | None:
        db = self._db()
        row = db.execute(f"SELECT rowid, length(value) FROM {TABLE} WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        rowid, size = row
        if start < 0:
            start = max(0, size + start)
        length = size - start if length is None else min(length, size - start)
        with db.blobopen(TABLE, "value", rowid, readonly=True) as blob:
            blob.seek(start)
            return blob.read(max(0, length))

    def close(self) -> None:
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections = []
        self._local = threading.local()


def open_key_store(path: str) -> KeyStore:
    """The :class:`KeyStore` of a local volume (``.zarr`` folder, ``.zarr.zip`` or ``.zarr.sqlite``).

    Raises:
        Unsupported: ``path`` is a URL (read through zarr-python).
    """
    path = os.fspath(path)
    if is_url(path):
        raise Unsupported("a URL store")
    kind = store_kind(path)
    if kind == "zip":
        return ZipKeyStore(path)
    if kind == "sqlite":
        return SqliteKeyStore(path)
    return DirKeyStore(path)


def key_store_of(store) -> KeyStore:
    """The :class:`KeyStore` reading the same data as the zarr ``store`` (LocalStore, ZipStore, SqliteStore).

    Raises:
        Unsupported: another kind of store.
    """
    if isinstance(store, zarr.storage.LocalStore):
        return DirKeyStore(os.fspath(store.root))
    if isinstance(store, zarr.storage.ZipStore):
        return ZipKeyStore(os.fspath(store.path))
    if isinstance(store, SqliteStore):
        return SqliteKeyStore(os.fspath(store.path))
    raise Unsupported(f"a {type(store).__name__}")


# -- metadata ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """How an array's chunks are found and decoded.

    ``chunks`` is the decoded unit (the inner chunk of a sharded array); ``shard`` the stored object's shape
    (equal to ``chunks`` without sharding); ``compressor`` "blosc", "zstd" or "" (none).
    """

    shape: tuple[int, ...]
    dtype: np.dtype  # as stored (byte order included)
    chunks: tuple[int, ...]
    shard: tuple[int, ...]
    key_prefix: str
    separator: str
    fill_value: object
    compressor: str
    sharded: bool
    index_at_end: bool = True
    index_extra: int = 0  # bytes after the (offset, nbytes) table: 4 with crc32c

    def key(self, coords: tuple[int, ...]) -> str:
        """The store key of the stored object at grid ``coords``."""
        return self.key_prefix + self.separator.join(str(c) for c in coords)


def _fill_value(value, dtype: np.dtype):
    specials = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}
    if isinstance(value, str):
        if value in specials:
            return specials[value]
        if value.startswith("0x"):
            return np.frombuffer(bytes.fromhex(value[2:]), dtype.newbyteorder(">"))[0]
        raise Unsupported(f"fill value {value!r}")
    if isinstance(value, list):
        raise Unsupported(f"fill value {value!r}")
    return dtype.type(value)


def _endian(codec: dict) -> str:
    endian = (codec.get("configuration") or {}).get("endian", "little")
    return ">" if endian == "big" else "<"


def _chunk_codecs(codecs: list) -> tuple[str, str]:
    """(byte order, compressor) of a ``bytes`` + at most one of blosc / zstd codec list."""
    names = [c.get("name") for c in codecs]
    if not names or names[0] != "bytes" or len(names) > 2:
        raise Unsupported(f"codecs {names}")
    compressor = names[1] if len(names) == 2 else ""
    if compressor not in ("", "blosc", "zstd"):
        raise Unsupported(f"codec {compressor!r}")
    return _endian(codecs[0]), compressor


def parse_metadata(meta: dict, array_path: str) -> Layout:
    """The :class:`Layout` of a Zarr v3 array's ``zarr.json`` content.

    Raises:
        Unsupported: a feature read through zarr-python instead.
    """
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
        raise Unsupported("not a Zarr v3 array")
    if meta.get("storage_transformers"):
        raise Unsupported("storage transformers")
    grid = meta.get("chunk_grid", {})
    if grid.get("name") != "regular":
        raise Unsupported(f"chunk grid {grid.get('name')!r}")
    try:
        dtype = np.dtype(meta["data_type"])
    except TypeError as exc:
        raise Unsupported(f"data type {meta['data_type']!r}") from exc
    if dtype.kind not in "biuf":
        raise Unsupported(f"data type {meta['data_type']!r}")
    shape = tuple(int(s) for s in meta["shape"])
    shard = tuple(int(c) for c in grid["configuration"]["chunk_shape"])
    encoding = meta.get("chunk_key_encoding", {"name": "default"})
    separator = (encoding.get("configuration") or {}).get("separator")
    if encoding.get("name") == "default":
        separator = separator or "/"
        prefix = "c" + separator
    elif encoding.get("name") == "v2":
        separator, prefix = separator or ".", ""
    else:
        raise Unsupported(f"chunk key encoding {encoding.get('name')!r}")
    base = array_path.strip("/")
    key_prefix = (base + "/" if base else "") + prefix
    if not shape:
        raise Unsupported("a 0-d array")
    codecs = meta.get("codecs", [])
    fill = _fill_value(meta.get("fill_value", 0), dtype)
    if len(codecs) == 1 and codecs[0].get("name") == "sharding_indexed":
        config = codecs[0]["configuration"]
        inner = tuple(int(c) for c in config["chunk_shape"])
        if any(s % c for s, c in zip(shard, inner)):
            raise Unsupported("shards not a multiple of inner chunks")
        endian, compressor = _chunk_codecs(config.get("codecs", []))
        index_names = [c.get("name") for c in config.get("index_codecs", [])]
        if not index_names or index_names[0] != "bytes" or _endian(config["index_codecs"][0]) != "<" \
                or any(n != "crc32c" for n in index_names[1:]):
            raise Unsupported(f"shard index codecs {index_names}")
        return Layout(shape, dtype.newbyteorder(endian), inner, shard, key_prefix, separator, fill, compressor,
                      True, config.get("index_location", "end") == "end", 4 * (len(index_names) - 1))
    endian, compressor = _chunk_codecs(codecs)
    return Layout(shape, dtype.newbyteorder(endian), shard, shard, key_prefix, separator, fill, compressor, False)


# -- shared pool and cache --------------------------------------------------------------------------------------
class DecodedCache:
    """LRU cache of decoded chunks bounded in bytes (thread-safe)."""

    def __init__(self, limit: int = DEFAULT_CACHE_BYTES):
        self.limit = int(limit)
        self.size = 0
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key, value: np.ndarray) -> None:
        if value.nbytes > self.limit:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.size -= old.nbytes
            self._items[key] = value
            self.size += value.nbytes
            while self.size > self.limit:
                self.size -= self._items.popitem(last=False)[1].nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.size = 0


class _Shared:
    """The process's decode pool and chunk cache, made anew after a fork."""

    def __init__(self):
        self.pid = None
        self.threads = threads_per_worker(1)
        self.cache_bytes = DEFAULT_CACHE_BYTES
        self.pool: ThreadPoolExecutor | None = None
        self.cache = DecodedCache(self.cache_bytes)
        self.lock = threading.Lock()
        self.tokens = 0

    def check(self) -> None:
        if self.pid != os.getpid():
            with self.lock:
                if self.pid != os.getpid():
                    self.pool, self.cache, self.pid = None, DecodedCache(self.cache_bytes), os.getpid()

    def executor(self) -> ThreadPoolExecutor:
        self.check()
        if self.pool is None:
            with self.lock:
                if self.pool is None:
                    if blosc2 is not None:
                        # python-blosc2 holds the GIL while it decodes unless told otherwise (a process-wide
                        # switch): without this the decode threads take turns
                        blosc2.set_releasegil(True)
                    self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="voxelpipe-chunks")
        return self.pool

    def token(self) -> int:
        with self.lock:
            self.tokens += 1
            return self.tokens


_SHARED = _Shared()


def configure(*, threads: int | None = None, workers: int | None = None, cache_bytes: int | None = None) -> None:
    """Size this process's decode threads and decoded-chunk cache.

    Args:
        threads: Decode threads (default: cores / ``workers``).
        workers: Processes reading at once (DataLoader workers), so that workers × threads ≤ cores.
        cache_bytes: Bytes of decoded chunks kept (0: no cache).
    """
    if threads is None and workers is not None:
        threads = threads_per_worker(workers)
    with _SHARED.lock:
        if threads is not None:
            if _SHARED.pool is not None and _SHARED.pid == os.getpid():
                _SHARED.pool.shutdown(wait=True)
            _SHARED.pool, _SHARED.threads = None, max(1, int(threads))
        if cache_bytes is not None:
            _SHARED.cache_bytes = max(0, int(cache_bytes))
            _SHARED.cache = DecodedCache(_SHARED.cache_bytes)


def settings() -> dict[str, int]:
    """This process's ``threads`` (decode threads) and ``cache_bytes`` (decoded-chunk cache limit)."""
    _SHARED.check()
    return {"threads": _SHARED.threads, "cache_bytes": _SHARED.cache_bytes}


def clear_cache() -> None:
    """Forget this process's decoded chunks."""
    _SHARED.check()
    _SHARED.cache.clear()


_LOGGED: set[str] = set()


def _log_fallback(reason: str) -> None:
    if reason not in _LOGGED:
        _LOGGED.add(reason)
        log.info("chunk reader: %s is read through zarr-python", reason)


# -- the reader -------------------------------------------------------------------------------------------------
def _load_json(keys: KeyStore, key: str) -> dict | None:
    data = keys.get(key)
    return None if data is None else json.loads(data)


class ChunkReader:
    """Regions of one Zarr v3 array read straight from its store (see the module docstring).

    Args:
        source: A local volume path (``.zarr``, ``.zarr.zip``, ``.zarr.sqlite``), a :class:`KeyStore` (shared by
            the readers of one volume), a zarr store, group or array. A URL or any other zarr store is read
            through zarr-python.
        array_path: The array's path in the store (``image``, ``labels/<name>/0``); ignored for a zarr array.

    Attributes:
        shape, dtype, chunks: The array's shape, native-order dtype and chunk shape (inner chunks when sharded,
            as ``zarr.Array.chunks``).

    Raises:
        InputError: No array at ``array_path``.
    """

    def __init__(self, source, array_path: str = "image"):
        self.array_path = array_path.strip("/")
        self._keys: KeyStore | None = None
        self._owns_keys = False
        self._zarr = None
        self.layout: Layout | None = None
        self._indexes: OrderedDict = OrderedDict()
        self._index_lock = threading.Lock()
        self._token = _SHARED.token()
        if isinstance(source, zarr.Array):
            self.array_path = source.path
            self._zarr = source
            source = source.store
        elif isinstance(source, zarr.Group):
            self.array_path = "/".join(p for p in (source.path, self.array_path) if p)
            source = source.store
        try:
            if isinstance(source, KeyStore):
                self._keys = source
            elif isinstance(source, (str, os.PathLike)):
                self._keys, self._owns_keys = open_key_store(os.fspath(source)), True
            else:
                self._keys, self._owns_keys = key_store_of(source), True
            meta = _load_json(self._keys, f"{self.array_path}/zarr.json" if self.array_path else "zarr.json")
            if meta is None:
                if self._owns_keys:
                    self._keys.close()
                raise InputError(f"{source}: no Zarr array at {self.array_path!r}")
            self.layout = parse_metadata(meta, self.array_path)
        except Unsupported as exc:
            _log_fallback(str(exc))
            if self._owns_keys and self._keys is not None:
                self._keys.close()
            self._keys, self.layout = None, None
            if self._zarr is None:
                self._zarr = _open_zarr(source, self.array_path)
        if self.layout is not None:
            self.shape = self.layout.shape
            self.dtype = self.layout.dtype.newbyteorder("=")
            self.chunks = self.layout.chunks
            self.fill_value = self.layout.fill_value
        else:
            self.shape = tuple(self._zarr.shape)
            self.dtype = np.dtype(self._zarr.dtype)
            self.chunks = tuple(self._zarr.chunks)
            self.fill_value = self._zarr.fill_value

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def native(self) -> bool:
        """Whether regions are read by this module (else by zarr-python)."""
        return self.layout is not None

    def close(self) -> None:
        """Close the store files this reader opened."""
        if self._owns_keys and self._keys is not None:
            self._keys.close()
        self._keys = None
        if self._zarr is not None and self.layout is None:
            self._zarr.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def read(self, region: tuple = (), out: np.ndarray | None = None) -> np.ndarray:
        """The array's values in ``region``.

        Args:
            region: Slices (step 1) or integers per leading axis; missing axes are taken whole. Ranges beyond
                the array are clipped, as in numpy.
            out: Array of the region's shape to fill (any dtype numpy casts to), else a new one.

        Returns:
            ``out`` (or a new array of ``dtype``) with the region's values.

        Raises:
            InputError: a step other than 1, or ``out`` of the wrong shape.
        """
        return read_regions([(self, region)], [out])[0]

    def __getitem__(self, region) -> np.ndarray:
        return self.read(region if isinstance(region, tuple) else (region,))

    def __getstate__(self):
        raise TypeError("a ChunkReader holds open files; open one per process")

    # -- internals ----------------------------------------------------------------------------------------------
    def normalise(self, region: tuple) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...], tuple]:
        """((start, stop) per axis, output shape, index of the output giving a view with every axis) of
        ``region``, clipped to the array."""
        if len(region) > self.ndim:
            raise InputError(f"region {region} has more axes than the array's {self.shape}")
        bounds, shape, expand = [], [], []
        for axis, n in enumerate(self.shape):
            item = region[axis] if axis < len(region) else slice(None)
            if isinstance(item, slice):
                start, stop, step = item.indices(n)
                if step != 1:
                    raise InputError(f"region {region}: only slices of step 1 are read")
                stop = max(start, stop)
                bounds.append((start, stop))
                shape.append(stop - start)
                expand.append(slice(None))
            else:
                index = int(item)
                if not -n <= index < n:
                    raise IndexError(f"index {index} out of range for axis {axis} of size {n}")
                index %= n
                bounds.append((index, index + 1))
                expand.append(np.newaxis)
        return tuple(bounds), tuple(shape), tuple(expand)

    def shard_index(self, coords: tuple[int, ...]) -> np.ndarray | None:
        """(inner chunks, 2) uint64 table of (offset, nbytes) of the shard at ``coords``; None when absent."""
        with self._index_lock:
            if coords in self._indexes:
                return self._indexes[coords]
        layout = self.layout
        per_shard = tuple(s // c for s, c in zip(layout.shard, layout.chunks))
        size = math.prod(per_shard) * 16
        total = size + layout.index_extra
        key = layout.key(coords)
        data = self._keys.get_range(key, -total, None) if layout.index_at_end else \
            self._keys.get_range(key, 0, total)
        index = None if data is None else np.frombuffer(data[:size], "<u8").reshape(per_shard + (2,))
        with self._index_lock:
            self._indexes[coords] = index
            while len(self._indexes) > 4096:
                self._indexes.popitem(last=False)
        return index

    def locate(self, coords: tuple[int, ...]) -> tuple[str, int, int | None] | None:
        """(store key, byte offset, byte count or None for the whole value) of chunk ``coords`` (inner chunk when
        sharded); None when a shard does not hold it."""
        layout = self.layout
        if not layout.sharded:
            return layout.key(coords), 0, None
        per = tuple(s // c for s, c in zip(layout.shard, layout.chunks))
        shard = tuple(c // p for c, p in zip(coords, per))
        index = self.shard_index(shard)
        if index is None:
            return None
        offset, nbytes = (int(v) for v in index[tuple(c % p for c, p in zip(coords, per))])
        if offset == MISSING and nbytes == MISSING:
            return None
        return layout.key(shard), offset, nbytes

    def decode(self, data: bytes, out: np.ndarray | None = None, threads: int = 1) -> np.ndarray:
        """A chunk's values (chunk shape, native byte order) from its encoded bytes, into ``out`` when given
        (C-contiguous, the chunk's shape and stored dtype); ``threads`` decode its Blosc blocks (blosc2 only)."""
        layout = self.layout
        if out is None:
            out = np.empty(layout.chunks, layout.dtype)
        if layout.compressor == "blosc":
            if blosc2 is not None:  # a context per call: no global lock, the GIL released (see _Shared)
                blosc2.decompress2(data, dst=out, nthreads=threads)
            else:
                numcodecs.blosc.decompress(data, out)
        elif layout.compressor == "zstd":
            out.reshape(-1).view(np.uint8)[:] = np.frombuffer(numcodecs.zstd.decompress(data), np.uint8)
        else:
            out.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, np.uint8)
        return out if layout.dtype.isnative else out.astype(self.dtype)


def _open_zarr(source, array_path: str):
    if isinstance(source, (str, os.PathLike)):
        return open_group(os.fspath(source))[array_path]
    return zarr.open_array(store=source, path=array_path, mode="r")


@dataclass
class _Piece:
    target: np.ndarray
    src: tuple[slice, ...]
    dst: tuple[slice, ...]


def _plan(reader: ChunkReader, bounds, view: np.ndarray, pieces: dict) -> None:
    """Add the (chunk -> pieces) of one region to ``pieces``."""
    chunks = reader.layout.chunks
    ranges = [range(a // c, (b - 1) // c + 1) if b > a else range(0) for (a, b), c in zip(bounds, chunks)]
    for coords in product(*ranges):
        src, dst = [], []
        for (a, b), c, i in zip(bounds, chunks, coords):
            lo, hi = max(a, i * c), min(b, (i + 1) * c)
            src.append(slice(lo - i * c, hi - i * c))
            dst.append(slice(lo - a, hi - a))
        pieces.setdefault((reader, coords), []).append(_Piece(view, tuple(src), tuple(dst)))


def _place(reader: ChunkReader, coords, pieces: list[_Piece], data, threads: int = 1) -> None:
    """Decode chunk ``coords`` from ``data`` (None: absent, the fill value) into its pieces: straight into the
    output when one piece is the whole chunk, else through a buffer kept in the cache; ``threads`` decode its
    blocks."""
    if data is None:
        for piece in pieces:
            piece.target[piece.dst] = reader.fill_value
        return
    layout = reader.layout
    if len(pieces) == 1:
        target = pieces[0].target[pieces[0].dst]
        if target.shape == layout.chunks and target.dtype == layout.dtype and target.flags.c_contiguous:
            reader.decode(data, target, threads)
            return
    values = reader.decode(data, None, threads)
    _SHARED.cache.put((reader._token, coords), values)
    for piece in pieces:
        piece.target[piece.dst] = values[piece.src]


def _fetched(reader: ChunkReader, items: list):
    """(coords, pieces, encoded bytes or None) of every (coords, pieces) of ``reader``: inner chunks of one shard
    that lie close together are fetched by one ranged read (at most ``_GAP`` unused bytes between them)."""
    ranged = []
    for coords, pieces in items:
        where = reader.locate(coords)
        if where is None:
            yield coords, pieces, None
        elif where[2] is None:
            yield coords, pieces, reader._keys.get(where[0])
        else:
            ranged.append((where, coords, pieces))
    ranged.sort(key=lambda item: item[0][:2])
    i = 0
    while i < len(ranged):
        key, start, nbytes = ranged[i][0]
        end, j = start + nbytes, i + 1
        while j < len(ranged) and ranged[j][0][0] == key and ranged[j][0][1] - end <= _GAP:
            end = max(end, ranged[j][0][1] + ranged[j][0][2])
            j += 1
        data = reader._keys.get_range(key, start, end - start)
        view = None if data is None else memoryview(data)
        for (_, offset, nbytes), coords, pieces in ranged[i:j]:
            yield coords, pieces, None if view is None else view[offset - start:offset - start + nbytes]
        i = j


def _decode_part(part: list, threads: int = 1) -> None:
    """Fetch and place the (reader, coords, pieces) of ``part`` (one task of a batch); ``threads`` decode each
    chunk's blocks (a batch of one chunk)."""
    by_reader: dict = {}
    for reader, coords, pieces in part:
        by_reader.setdefault(reader, []).append((coords, pieces))
    for reader, items in by_reader.items():
        for coords, pieces, data in _fetched(reader, items):
            _place(reader, coords, pieces, data, threads)


def read_regions(reads: Sequence[tuple[ChunkReader, tuple]], outs: Sequence[np.ndarray | None] | None = None
                 ) -> list[np.ndarray]:
    """``reader.read(region, out)`` for every (reader, region) pair, decoding all their chunks together.

    Args:
        reads: (ChunkReader, region) pairs; see :meth:`ChunkReader.read`.
        outs: An output array per pair (or None for a new one).

    Returns:
        One array per pair, in order.

    Raises:
        InputError: a bad region or output shape.
    """
    _SHARED.check()
    outs = list(outs) if outs is not None else [None] * len(reads)
    results: list[np.ndarray] = []
    pieces: dict = {}
    fallback = []
    for (reader, region), out in zip(reads, outs):
        region = region if isinstance(region, tuple) else (region,)
        bounds, shape, expand = reader.normalise(region)
        if out is None:
            out = np.empty(shape, reader.dtype)
        elif tuple(out.shape) != shape:
            raise InputError(f"out has shape {tuple(out.shape)}, the region {region} has {shape}")
        results.append(out)
        full = tuple(b - a for a, b in bounds)
        if math.prod(full) == 0:
            continue
        if not reader.native:
            fallback.append((reader, tuple(slice(a, b) for a, b in bounds), out))
            continue
        _plan(reader, bounds, out[expand], pieces)
    if fallback:
        _read_zarr(fallback)
    cache = _SHARED.cache
    misses = []
    for (reader, coords), found in pieces.items():
        values = cache.get((reader._token, coords))
        if values is None:
            misses.append((reader, coords, found))
            continue
        for piece in found:
            piece.target[piece.dst] = values[piece.src]
    # one task per decode thread, each a run of neighbouring chunks (so its ranged reads stay whole); the
    # calling thread takes the first
    tasks = min(_SHARED.threads, len(misses))
    parts = [misses[k * len(misses) // tasks:(k + 1) * len(misses) // tasks] for k in range(tasks)]
    futures = [_SHARED.executor().submit(_decode_part, part) for part in parts[1:]]
    if parts:
        # a lone chunk (a slice of a one-slice chunk) is split among the threads by Blosc block instead
        _decode_part(parts[0], _SHARED.threads if len(misses) == 1 else 1)
    for future in futures:
        future.result()
    return results


def _read_zarr(reads: list) -> None:
    """Regions of zarr arrays, fetched in one trip to zarr's event loop."""
    async def gather():
        return await asyncio.gather(*(r._zarr.async_array.getitem(region) for r, region, _ in reads))

    for (_, _, out), data in zip(reads, sync(gather())):
        out[...] = data


__all__ = ["ChunkReader", "DEFAULT_CACHE_BYTES", "DecodedCache", "DirKeyStore", "KeyStore", "Layout",
           "SqliteKeyStore", "Unsupported", "ZipKeyStore", "clear_cache", "configure", "key_store_of", "open_key_store",
           "parse_metadata", "read_regions", "settings"]
