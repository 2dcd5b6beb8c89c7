"""Volumes in HDF5: one file per run/shard with one dataset per series key, geometry in its attrs.

Each series is first written by its worker into its own ``<key>.h5.partial`` (one writer per file), renamed
to ``<key>.h5`` when complete, and the run's main process then copies it into the run file
(``volumes_<suffix>.h5``) and removes it. Reruns append new series and skip those already present.
"""
from __future__ import annotations

import json
import os

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


def merge_into(run_file: str, series_file: str, key: str, whole_file: bool = False, replace: bool = False) -> bool:
    """Copy dataset ``image`` of ``series_file`` into ``run_file`` as ``key`` (compressed chunks copied as they
    are), or with ``whole_file`` every dataset of it as a group ``key`` (2-D mode: one dataset per instance);
    then delete ``series_file``. Returns False when ``key`` was already present and kept (``replace`` False)."""
    with h5py.File(run_file, "a") as run, h5py.File(series_file, "r") as single:
        if key in run and replace:
            del run[key]
        if key in run:
            present = True
        else:
            single.copy(single if whole_file else single["image"], run, name=key)
            present = False
    os.remove(series_file)
    return not present


def keys_in(run_file: str) -> set[str]:
    """The series keys (top-level names) held by a run's HDF5 file; empty when the file does not exist."""
    if not os.path.exists(run_file):
        return set()
    with h5py.File(run_file, "r") as run:
        return set(run.keys())
