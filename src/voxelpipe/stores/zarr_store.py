"""Volumes in Zarr 3: a group holding the ``image`` array (slice, row, column) and, later, ``masks/<name>``.

Stores (suffixes in :mod:`voxelpipe.stores.registry`): ``dir`` (zarr's LocalStore, ``<key>.zarr``), ``zip``
(ZipStore, ``<key>.zarr.zip``) and ``sqlite`` (``SqliteStore``, ``<key>.zarr.sqlite``). A volume is written under
``<name>.partial`` and renamed when complete, so an existing final name always means a complete volume.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import zarr
from numcodecs import Blosc
from zarr.codecs import BloscCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from voxelpipe.core import defaults
from voxelpipe.core.errors import StoreError
from voxelpipe.core.types import StoreKind
from voxelpipe.core.volume import json_default
from voxelpipe.stores.registry import STORE_SUFFIXES, store_kind  # noqa: F401  (both also importable from here)
from voxelpipe.stores.sqlite_store import SqliteStore

PARTIAL = ".partial"
DEFAULT_CLEVEL = defaults.VOLUME_CLEVEL
MAX_BLOCKSIZE = 1 << 20


def open_store(path: str, kind: StoreKind | str, mode: str = "r") -> zarr.abc.store.Store:
    """A zarr store object of ``kind`` at ``path``.

    Args:
        path: the store's folder (``dir``) or file (``zip``, ``sqlite``).
        kind: ``dir``, ``zip`` or ``sqlite``.
        mode: ``"r"`` read-only, ``"w"`` writable.

    Raises:
        StoreError: unknown ``kind``.
    """
    read_only = mode == "r"
    if kind == StoreKind.DIR:
        return zarr.storage.LocalStore(path, read_only=read_only)
    if kind == StoreKind.ZIP:
        return zarr.storage.ZipStore(path, mode="r" if read_only else "w", read_only=read_only)
    if kind == StoreKind.SQLITE:
        return SqliteStore(path, read_only=read_only)
    raise StoreError(f"unknown store kind '{kind}'; choose {', '.join(StoreKind)}")


def remove(path: str) -> None:
    """Delete a store (folder or file) if it exists."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


async def _set_all(store, values: dict) -> None:
    await asyncio.gather(*(store.set(key, value) for key, value in values.items()))


class ZarrVolumeWriter:
    """Writes one volume slab by slab, then publishes it atomically (a
    :class:`~voxelpipe.stores.writer.VolumeWriter`).

    Args:
        path: final path of the store (its suffix should match ``kind``).
        kind: ``dir``, ``zip`` or ``sqlite``.
        shape: array shape, (slice, row, column) or (frame, slice, row, column).
        dtype: array dtype (native or little endian).
        chunks: chunk shape, same axis order as ``shape``.
        attrs: JSON-ready attributes of the group (geometry, provenance).
        clevel: Blosc zstd level.

    zarr creates the group, array metadata and attributes; the chunks are encoded here with numcodecs' Blosc
    (the same codec and format as zarr's ``BloscCodec``: zstd, bitshuffle, typesize = itemsize) and put into
    the store under zarr's own chunk keys. That skips zarr-python's per-chunk machinery, which halves write
    throughput (measured: 228 MB/s against 104 MB/s on one core for a CT volume).
    """

    def __init__(self, path: str, kind: StoreKind | str, shape: tuple[int, ...], dtype: np.dtype,
                 chunks: tuple[int, ...], attrs: dict, clevel: int = DEFAULT_CLEVEL):
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
            raise StoreError("big-endian arrays are not written; zarr's default bytes codec is little endian")
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
            raise StoreError(f"write at {origin} is not aligned to the chunk grid {chunks}")
        prototype = default_buffer_prototype()
        full = np.zeros(chunks, dtype=self.dtype)
        grid = [range(0, n, c) for n, c in zip(block.shape, chunks)]
        encoded: dict[str, bytes] = {}
        for starts in np.ndindex(*(len(g) for g in grid)):
            lo = [grid[a][i] for a, i in enumerate(starts)]
            piece = block[tuple(slice(start, start + c) for start, c in zip(lo, chunks))]
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
        """Add or replace attributes of the group (JSON-ready)."""
        self.group.attrs.update(attrs)

    def finish(self) -> int:
        """Close the store and rename it to its final name; returns the bytes on disk."""
        self.store.close()
        remove(self.path)
        os.replace(self.partial, self.path)
        return disk_size(self.path)

    def abort(self) -> None:
        """Close the store and delete the partial volume."""
        try:
            self.store.close()
        finally:
            remove(self.partial)


def disk_size(path: str) -> int:
    """Bytes on disk of a store: the sum over a folder's files, or the file's size."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    return os.path.getsize(path)


def open_volume_group(path: str) -> zarr.Group:
    """Open a stored volume's group read-only (its store stays open while the group is used); the store kind
    comes from the suffix."""
    return zarr.open_group(store=open_store(path, store_kind(path), "r"), mode="r")


def publish(partial: str, path: str) -> None:
    """Rename a complete store ``partial`` to ``path``; an existing store at ``path`` is first moved aside to
    ``<path>.old`` and deleted after the rename, so ``path`` is never a half-written store."""
    if os.path.exists(path):
        old = path + ".old"
        remove(old)
        os.replace(path, old)
        os.replace(partial, path)
        remove(old)
    else:
        os.replace(partial, path)


@contextmanager
def atomic_group(path: str, attrs: dict | None = None) -> Iterator[zarr.Group]:
    """Yield a new Zarr 3 group in a folder store written as ``<path>.partial``, published by :func:`publish`
    when the block succeeds and deleted when it fails. ``attrs`` (made JSON-ready) are the group's attributes."""
    partial = path + PARTIAL
    remove(partial)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        group = zarr.open_group(store=zarr.storage.LocalStore(partial), mode="w", zarr_format=3)
        if attrs:
            group.attrs.update(json.loads(json.dumps(attrs, default=json_default)))
        yield group
        publish(partial, path)
    finally:
        remove(partial)


def put_array(group: zarr.Group, name: str, data: np.ndarray, chunks: tuple[int, ...] | None = None,
              clevel: int = DEFAULT_CLEVEL, dimension_names: Sequence[str] | None = None) -> zarr.Array:
    """Create array ``name`` in ``group`` (Blosc zstd at ``clevel`` with bitshuffle, fill value 0) holding
    ``data``; ``chunks`` None lets zarr choose."""
    array = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks or "auto", fill_value=0,
                               compressors=[BloscCodec(cname="zstd", clevel=clevel, shuffle="bitshuffle")],
                               dimension_names=None if dimension_names is None else list(dimension_names))
    array[...] = data
    return array
