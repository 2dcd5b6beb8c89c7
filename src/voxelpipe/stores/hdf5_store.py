"""Volumes in HDF5: one file per run/shard with one dataset per series key, geometry in its attrs.

Each series is first written by its worker into its own ``<key>.h5.partial`` (one writer per file), renamed
to ``<key>.h5`` when complete, and the run's main process then merges such files in batches into the run file
(``volumes_<suffix>.h5``) through a copy renamed over it (:class:`RunFile`), so a kill never leaves a broken run
file, and removes them. Reruns append new series and skip those already present; a run file found unreadable is
set aside (:func:`set_aside`) and rebuilt.
"""
from __future__ import annotations

import json
import os
import shutil
import time

import h5py
import numpy as np

from voxelpipe.stores.zarr_store import PARTIAL, remove

COMPRESSION = "gzip"
COMPRESSION_LEVEL = 1


def _attr_value(value):
    if isinstance(value, (dict, list)) and not _is_numeric_list(value):
        return json.dumps(value)
    if value is None:
        return ""
    return value


def _is_numeric_list(value) -> bool:
    try:
        return isinstance(value, list) and np.asarray(value).dtype.kind in "iuf"
    except ValueError:
        return False


def write_attrs(obj, attrs: dict) -> None:
    """HDF5 attributes from a JSON-like dict (nested values stored as JSON text)."""
    for key, value in attrs.items():
        obj.attrs[key] = _attr_value(value)


def read_attrs(obj) -> dict:
    """The attributes of an HDF5 object as a JSON-like dict (JSON text decoded, numpy values made plain)."""
    result = {}
    for key, value in obj.attrs.items():
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, str) and value[:1] in "[{":
            try:
                value = json.loads(value)
            except ValueError:
                pass
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        result[key] = value
    return result


class Hdf5VolumeWriter:
    """Writes one series into its own HDF5 file (dataset ``image``), published atomically by rename (a
    :class:`~voxelpipe.stores.writer.VolumeWriter`).

    Args:
        path: final path (``<key>.h5``).
        shape: array shape, (slice, row, column) or (frame, slice, row, column).
        dtype: array dtype.
        chunks: chunk shape, same axis order as ``shape`` (clipped to it).
        attrs: JSON-like attributes of the dataset (nested values stored as JSON text).
        clevel: gzip level 1-9 (with shuffle).
    """

    def __init__(self, path: str, shape: tuple[int, ...], dtype: np.dtype, chunks: tuple[int, ...],
                 attrs: dict, clevel: int = COMPRESSION_LEVEL):
        self.path = path
        self.partial = path + PARTIAL
        remove(self.partial)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.file = h5py.File(self.partial, "w")
        self.dataset = self.file.create_dataset(
            "image", shape=shape, dtype=dtype, chunks=tuple(min(c, s) for c, s in zip(chunks, shape)),
            compression=COMPRESSION, compression_opts=max(1, min(9, clevel)), shuffle=True)
        write_attrs(self.dataset, attrs)

    def write(self, start: int, slab: np.ndarray) -> None:
        """Write ``slab`` at ``[start : start + len(slab)]`` along axis 0."""
        self.dataset[start:start + slab.shape[0]] = slab

    def write_at(self, index: tuple, block: np.ndarray) -> None:
        """Write ``block`` at ``index`` = (frame, slice(z0, z1)) of a 4-D volume."""
        self.dataset[index] = block

    def read(self, index: tuple) -> np.ndarray:
        """Read back written data (verification before publishing)."""
        return np.asarray(self.dataset[index])

    def set_attrs(self, attrs: dict) -> None:
        """Add or replace attributes of the dataset."""
        write_attrs(self.dataset, attrs)

    def finish(self) -> int:
        """Close the file and rename it to its final name; returns its size in bytes."""
        self.file.close()
        os.replace(self.partial, self.path)
        return os.path.getsize(self.path)

    def abort(self) -> None:
        """Close the file and delete the partial file."""
        try:
            self.file.close()
        finally:
            remove(self.partial)


MERGE_BATCH_BYTES = 256 << 20
"""Per-series bytes waiting before the run file is rewritten (at least; more once the run file is bigger)."""


class RunFile:
    """The HDF5 file of a run (``volumes_<suffix>.h5``, one dataset or group per series key), fed with complete
    per-series files (``<key>.h5``) in batches, so that the file under its name is always a complete HDF5 file.

    A batch is merged into a copy of the run file (``<run>.partial``), which is flushed to disk and renamed over
    the run file; only then are the per-series files of the batch deleted. A kill at any moment leaves the old
    or the new run file, and every converted series not in it still has its per-series file (a rerun merges
    those first). A batch is merged when its files hold at least as many bytes as the run file (and at least
    ``batch_bytes``) and at the end of the run, so the copies cost at most about twice the run file's final
    size in all, at the price of disk room for the copy while it is made.

    Args:
        path: the run file.
        whole_file: 2-D mode: copy every dataset of a per-series file as a group ``key`` (else its ``image``).
        replace: a key already in the run file is replaced (else kept).
        batch_bytes: the least bytes a batch waits for before :meth:`add` merges it.
    """

    def __init__(self, path: str, whole_file: bool = False, replace: bool = False,
                 batch_bytes: int = MERGE_BATCH_BYTES):
        self.path = path
        self.whole_file = whole_file
        self.replace = replace
        self.batch_bytes = batch_bytes
        self.pending: list[tuple[str, str]] = []
        self.pending_bytes = 0

    def add(self, key: str, series_file: str) -> list[tuple[str, str]]:
        """Queue a complete per-series file; merges the queue when it is big enough (see the class).

        Returns:
            The ``(key, series_file)`` pairs merged now ([] when the batch still waits).

        Raises:
            OSError: the merge failed (disk full, permissions); the run file and the per-series files of the
                batch are left as they were, the queue is emptied.
        """
        self.pending.append((key, series_file))
        self.pending_bytes += _size(series_file)
        if self.pending_bytes >= max(self.batch_bytes, _size(self.path)):
            return self.flush()
        return []

    def flush(self) -> list[tuple[str, str]]:
        """Merge every queued file now (see :meth:`add`); returns the pairs merged."""
        batch, self.pending, self.pending_bytes = self.pending, [], 0
        if batch:
            merge_batch(self.path, batch, self.whole_file, self.replace)
        return batch


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def merge_batch(run_file: str, items: list[tuple[str, str]], whole_file: bool = False,
                replace: bool = False) -> None:
    """Copy dataset ``image`` of each per-series file into ``run_file`` as its key (compressed chunks copied as
    they are), or with ``whole_file`` every dataset of it as a group ``key`` (2-D mode: one dataset per
    instance), in a copy of ``run_file`` renamed over it when complete; then delete the per-series files. A key
    already present is kept unless ``replace``.

    Raises:
        OSError: writing failed; ``run_file`` and the per-series files are left as they were.
    """
    partial = run_file + PARTIAL
    remove(partial)
    try:
        if os.path.exists(run_file):
            shutil.copyfile(run_file, partial)
        with h5py.File(partial, "a") as run:
            for key, series_file in items:
                if key in run:
                    if not replace:
                        continue
                    del run[key]
                with h5py.File(series_file, "r") as single:
                    single.copy(single if whole_file else single["image"], run, name=key)
        _fsync(partial)
        os.replace(partial, run_file)
    except BaseException:
        remove(partial)
        raise
    _fsync(os.path.dirname(os.path.abspath(run_file)))
    for _, series_file in items:
        remove(series_file)


def _fsync(path: str) -> None:
    """Flush a file (or a folder's entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run_file_problem(run_file: str) -> str:
    """Why ``run_file`` cannot be used ('' when it is readable or absent): it must open with h5py and every
    top-level dataset or group must open (a file cut short or garbled by a kill mid-write of an older version,
    or by a full disk, does not)."""
    if not os.path.exists(run_file):
        return ""
    try:
        with h5py.File(run_file, "r") as run:
            for key in run:
                item = run[key]
                if isinstance(item, h5py.Dataset):
                    _ = item.shape, item.dtype, item.id.get_storage_size()
                else:
                    _ = list(item.keys())
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError, KeyError, RuntimeError... for a broken file
        return f"{type(exc).__name__}: {exc}"
    return ""


def set_aside(path: str) -> str:
    """Rename ``path`` to ``<path>.broken-<UTC time>`` (``-N`` added when taken); returns the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = f"{path}.broken-{stamp}"
    number = 1
    while os.path.exists(target):
        number += 1
        target = f"{path}.broken-{stamp}-{number}"
    os.replace(path, target)
    return target


def keys_in(run_file: str) -> set[str]:
    """The series keys (top-level names) held by a run's HDF5 file; empty when the file does not exist."""
    if not os.path.exists(run_file):
        return set()
    with h5py.File(run_file, "r") as run:
        return set(run.keys())
