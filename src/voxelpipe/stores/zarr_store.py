"""Volumes in Zarr 3: a group holding the ``image`` array (slice, row, column) and, later, ``masks/<name>``.

Stores: ``dir`` (zarr's LocalStore, ``<key>.zarr``), ``zip`` (ZipStore, ``<key>.zarr.zip``) and ``sqlite``
(``SqliteStore``, ``<key>.zarr.sqlite``). A volume is written under ``<name>.partial`` and renamed when
complete, so an existing final name always means a complete volume.
"""
from __future__ import annotations

import asyncio
import os
import shutil

import numpy as np
import zarr
from numcodecs import Blosc
from zarr.codecs import BloscCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from voxelpipe.core import defaults

STORE_SUFFIXES = {"dir": ".zarr", "zip": ".zarr.zip", "sqlite": ".zarr.sqlite"}
PARTIAL = ".partial"
DEFAULT_CLEVEL = defaults.VOLUME_CLEVEL
MAX_BLOCKSIZE = 1 << 20


def open_store(path: str, kind: str, mode: str = "r"):
    """A zarr store object of ``kind`` at ``path`` (``mode`` "r" or "w")."""
    read_only = mode == "r"
    if kind == "dir":
        return zarr.storage.LocalStore(path, read_only=read_only)
    if kind == "zip":
        return zarr.storage.ZipStore(path, mode="r" if read_only else "w", read_only=read_only)
    if kind == "sqlite":
        from voxelpipe.stores.sqlite_store import SqliteStore

        return SqliteStore(path, read_only=read_only)
    raise ValueError(f"unknown store kind {kind!r}; choose dir, zip or sqlite")


def store_kind(path: str) -> str:
    """The store kind of a volume path, from its suffix."""
    for kind, suffix in sorted(STORE_SUFFIXES.items(), key=lambda item: -len(item[1])):
        if path.endswith(suffix):
            return kind
    raise ValueError(f"{path}: not a voxelpipe Zarr volume (expected {', '.join(STORE_SUFFIXES.values())})")


def remove(path: str) -> None:
    """Delete a store (folder or file) if it exists."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


async def _set_all(store, values: dict) -> None:
    await asyncio.gather(*(store.set(key, value) for key, value in values.items()))


class ZarrVolumeWriter:
    """Writes one volume slab by slab, then publishes it atomically.

    zarr creates the group, array metadata and attributes; the chunks are encoded here with numcodecs' Blosc
    (the same codec and format as zarr's ``BloscCodec``: zstd, bitshuffle, typesize = itemsize) and put into
    the store under zarr's own chunk keys. That skips zarr-python's per-chunk machinery, which halves write
    throughput (measured: 228 MB/s against 104 MB/s on one core for a CT volume).
    """

    def __init__(self, path: str, kind: str, shape: tuple[int, ...], dtype: np.dtype, chunks: tuple[int, ...],
                 attrs: dict, clevel: int = DEFAULT_CLEVEL):
        self.path = path
        self.kind = kind
        self.partial = path + PARTIAL
        remove(self.partial)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.store = open_store(self.partial, kind, "w")
        # attributes go in at creation: a zip store cannot rewrite zarr.json without leaving duplicates
        self.group = zarr.create_group(store=self.store, zarr_format=3, attributes=attrs)
        dtype = np.dtype(dtype)
        if dtype.byteorder == ">":
            raise ValueError("big-endian arrays are not written; zarr's default bytes codec is little endian")
        self.dtype = dtype
        self.chunks = tuple(chunks)
        # one Blosc block per chunk (up to 1 MiB): ~1.7x faster zstd and a slightly better ratio than Blosc's
        # automatic block size on CT chunks (measured: 576-739 against 335 MB/s, ratio 2.63 against 2.53)
        blocksize = min(int(np.prod(chunks)) * dtype.itemsize, MAX_BLOCKSIZE)
        self.encoder = Blosc(cname="zstd", clevel=clevel, shuffle=Blosc.BITSHUFFLE, blocksize=blocksize)
        codec = BloscCodec(cname="zstd", clevel=clevel, shuffle="bitshuffle", typesize=dtype.itemsize,
                           blocksize=blocksize)
        self.array = self.group.create_array(
            "image", shape=shape, dtype=dtype, chunks=chunks, compressors=[codec],
            fill_value=0, dimension_names=["slice", "row", "column"][-len(shape):] if len(shape) <= 3 else
            ["frame", "slice", "row", "column"],
        )

    def write(self, start: int, slab: np.ndarray) -> None:
        """Write ``slab`` at ``[start : start + len(slab)]`` along axis 0 (``start`` on a chunk boundary)."""
        self._write_chunks((start,), slab)

    def write_at(self, index: tuple, block: np.ndarray) -> None:
        """Write ``block`` at ``index`` = (frame, slice(z0, z1)) of a 4-D volume."""
        frame, slices = index
        self._write_chunks((frame, slices.start), block[None])

    def _write_chunks(self, origin: tuple[int, ...], block: np.ndarray) -> None:
        """Encode and store every chunk of ``block``, whose leading axes start at ``origin`` (chunk-aligned)
        and whose remaining axes cover the whole array."""
        chunks = self.chunks
        lead = len(origin)
        if any(o % c for o, c in zip(origin, chunks)):
            raise ValueError(f"write at {origin} is not aligned to the chunk grid {chunks}")
        prototype = default_buffer_prototype()
        full = np.zeros(chunks, dtype=self.dtype)
        grid = [range(0, n, c) for n, c in zip(block.shape, chunks)]
        encoded: dict[str, bytes] = {}
        for starts in np.ndindex(*(len(g) for g in grid)):
            lo = [grid[a][i] for a, i in enumerate(starts)]
            piece = block[tuple(slice(l, l + c) for l, c in zip(lo, chunks))]
            if piece.shape != chunks:  # edge chunk: zarr stores whole chunks padded with the fill value
                full[...] = 0
                full[tuple(slice(0, n) for n in piece.shape)] = piece
                piece = full
            index = tuple((origin[a] + lo[a]) // chunks[a] if a < lead else lo[a] // chunks[a]
                          for a in range(len(chunks)))
            key = "image/" + self.array.metadata.encode_chunk_key(index)
            encoded[key] = self.encoder.encode(np.ascontiguousarray(piece))
        if self.kind == "dir":
            # LocalStore layout is one file per key; writing them here is ~3x faster than the async store API
            for key, data in encoded.items():
                path = os.path.join(self.partial, *key.split("/"))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as fh:
                    fh.write(data)
        else:  # one trip to zarr's event loop per slab; the store writes the chunks concurrently
            sync(_set_all(self.store, {k: prototype.buffer.from_bytes(v) for k, v in encoded.items()}))

    def read(self, index: tuple) -> np.ndarray:
        """Read back written data (verification before publishing)."""
        return np.asarray(self.array[index])

    def set_attrs(self, attrs: dict) -> None:
        self.group.attrs.update(attrs)

    def finish(self) -> int:
        """Close the store and rename it to its final name; returns the bytes on disk."""
        self.store.close()
        remove(self.path)
        os.replace(self.partial, self.path)
        return disk_size(self.path)

    def abort(self) -> None:
        try:
            self.store.close()
        finally:
            remove(self.partial)


def disk_size(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    return os.path.getsize(path)


def open_volume_group(path: str):
    """Open a stored volume's group read-only (its store stays open while the group is used)."""
    return zarr.open_group(store=open_store(path, store_kind(path), "r"), mode="r")
