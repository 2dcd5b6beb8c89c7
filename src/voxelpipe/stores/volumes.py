"""Open and save converted volumes: ``open_volume`` reads lazily, ``save_volume`` writes Zarr atomically,
``volume_problem`` tells whether an existing output is complete."""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import tempfile
import zipfile

import h5py
import numpy as np
import zarr

from voxelpipe.core import defaults
from voxelpipe.core.errors import InputError
from voxelpipe.core.geometry import Geometry
from voxelpipe.core.types import StoreKind
from voxelpipe.core.volume import Volume, json_default
from voxelpipe.stores.hdf5_store import read_attrs
from voxelpipe.stores.nifti import nifti_stem, read_nifti_volume, require_nibabel
from voxelpipe.stores.registry import HDF5_SUFFIXES, NIFTI_SUFFIXES, NPZ_SUFFIX, store_kind
from voxelpipe.stores.remote import is_url, isfile, local_path, open_binary, open_group, read_bytes
from voxelpipe.stores.writer import VolumeWriter
from voxelpipe.stores.zarr_store import ZarrVolumeWriter, open_store, open_volume_group


def open_volume(path: str | os.PathLike, key: str | None = None) -> Volume:
    """Open a converted volume: ``<key>.zarr`` / ``.zarr.zip`` / ``.zarr.sqlite``, ``<key>.npz``, a run's
    ``.h5`` file with ``key`` naming the dataset, or ``<key>.nii.gz`` / ``.nii`` (nibabel, read into memory
    and put back in (slice, row, column) order: see :func:`voxelpipe.stores.nifti.read_nifti_volume`). The
    array is read lazily (zarr, h5py).

    ``path`` may be a URL fsspec opens (``http(s)://``, ``s3://`` with s3fs, ``memory://``, ``file://``; the
    ``remote`` extra): Zarr folders and ``.zarr.zip`` through zarr's ``FsspecStore``, ``.h5`` through a seekable
    fsspec file, ``.npz`` and ``.nii(.gz)`` downloaded whole; ``.zarr.sqlite`` only locally (see
    :mod:`voxelpipe.stores.remote`).

    Returns:
        A Volume: array (slice, row, column) or (frame, slice, row, column), geometry in LPS mm from the attrs.

    Raises:
        InputError: no such volume, or an HDF5 file without ``key`` / with several volumes and no ``key``; a URL
            without fsspec installed, or of a kind not readable over a URL.
        StoreError: a name with no volume suffix.
    """
    path = local_path(path)
    if is_url(path):
        return _open_url_volume(path, key)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such volume")
    if path.endswith(NIFTI_SUFFIXES):
        return read_nifti_volume(path)
    if path.endswith(NPZ_SUFFIX):
        return _npz_volume(path, path)
    if path.endswith(HDF5_SUFFIXES):
        return _hdf5_volume(h5py.File(path, "r"), path, key)
    group = open_volume_group(path)
    attrs = dict(group.attrs)
    return Volume(group["image"], Geometry.from_attrs(attrs), attrs, path)


def _npz_volume(source, path: str) -> Volume:
    with np.load(source) as data:
        attrs = json.loads(str(data["attrs_json"]))
        array = data["image"]
    return Volume(array, Geometry.from_attrs(attrs), attrs, path)


def _hdf5_volume(handle: h5py.File, path: str, key: str | None) -> Volume:
    names = list(handle.keys())
    if key is None:
        if len(names) != 1:
            raise InputError(f"{path}: holds {len(names)} volumes; name one with key= ({', '.join(names[:5])}...)")
        key = names[0]
    if key not in handle:
        raise InputError(f"{path}: no volume {key!r}")
    dataset = handle[key]
    attrs = read_attrs(dataset)
    return Volume(dataset, Geometry.from_attrs(attrs), attrs, path)


def _open_url_volume(url: str, key: str | None) -> Volume:
    """:func:`open_volume` of a URL (see :mod:`voxelpipe.stores.remote`)."""
    if url.rstrip("/").endswith(NIFTI_SUFFIXES):
        return _nifti_url_volume(url.rstrip("/"))
    if url.endswith(NPZ_SUFFIX):
        return _npz_volume(io.BytesIO(read_bytes(url)), url)
    if url.endswith(HDF5_SUFFIXES):
        return _hdf5_volume(h5py.File(open_binary(url), "r"), url, key)
    group = open_group(url)
    attrs = dict(group.attrs)
    return Volume(group["image"], Geometry.from_attrs(attrs), attrs, url)


def _nifti_url_volume(url: str) -> Volume:
    """A NIfTI file at ``url``, downloaded with its ``meta/<key>.series.json`` (when there is one) into a
    temporary ``data/`` + ``meta/`` pair and read by :func:`read_nifti_volume` (which reads it into memory)."""
    name = url.rsplit("/", 1)[-1]
    stem = nifti_stem(name)
    meta = url.rsplit("/", 2)[0] + f"/meta/{stem}.series.json" if url.count("/") > 3 else ""
    with tempfile.TemporaryDirectory(prefix="voxelpipe-nifti-") as tmp:
        os.makedirs(os.path.join(tmp, "data"))
        local = os.path.join(tmp, "data", name)
        with open(local, "wb") as fh:
            fh.write(read_bytes(url))
        if meta and isfile(meta):
            os.makedirs(os.path.join(tmp, "meta"))
            with open(os.path.join(tmp, "meta", f"{stem}.series.json"), "wb") as fh:
                fh.write(read_bytes(meta))
        volume = read_nifti_volume(local)
    return dataclasses.replace(volume, path=url)


def save_volume(volume: Volume, path: str | os.PathLike, chunks: tuple[int, int, int] = defaults.VOLUME_CHUNKS,
                clevel: int = defaults.VOLUME_CLEVEL, attrs: dict | None = None,
                levels: int = defaults.VOLUME_LEVELS) -> int:
    """Write a volume as a Zarr store (kind from the suffix: ``.zarr``, ``.zarr.zip``, ``.zarr.sqlite``) with its
    geometry in the attributes, atomically; returns the bytes written. 4-D arrays keep their frame axis.

    Args:
        volume: the volume to write.
        path: the store's path; its suffix picks the store kind.
        chunks: spatial chunk shape (slice, row, column), clipped to the array (4-D: one frame per chunk).
        clevel: Blosc zstd level.
        attrs: extra attributes (the geometry's own entries win).
        levels: OME-Zarr pyramid levels (1 = full resolution only).

    Raises:
        StoreError: a name that is not a Zarr volume's.
    """
    path = os.fspath(path)
    array = volume.array
    shape = tuple(array.shape)
    spatial = tuple(max(1, min(c, s)) for c, s in zip(chunks, shape[-3:]))
    chunk_shape = spatial if len(shape) == 3 else (1,) + spatial
    merged = dict(volume.attrs)
    merged.update(attrs or {})
    merged.update(volume.geometry.to_attrs())
    merged["dtype"] = str(np.dtype(array.dtype))
    writer: VolumeWriter = ZarrVolumeWriter(path, store_kind(path), shape, np.dtype(array.dtype), chunk_shape,
                              json.loads(json.dumps(merged, default=json_default)), clevel=clevel,
                              levels=levels)
    try:
        depth = spatial[0]
        for z0 in range(0, shape[-3], depth):
            if len(shape) == 3:
                writer.write(z0, np.ascontiguousarray(array[z0:z0 + depth]))
            else:
                for t in range(shape[0]):
                    writer.write_at((t, slice(z0, z0 + depth)), np.ascontiguousarray(array[t, z0:z0 + depth]))
        return writer.finish()
    except BaseException:
        writer.abort()
        raise


# ----------------------------------------------------------------------------------------------------------
# is a converted volume complete?
# ----------------------------------------------------------------------------------------------------------
VOLUME_ATTRS = ("series_key", "shape", "dtype", "spacing", "origin", "direction")
"""Attributes every volume written by ``convert`` (3-D mode) carries."""


def volume_problem(path: str | os.PathLike, key: str | None = None) -> str:
    """Why the converted volume at ``path`` is not complete, or '' when it is: what ``convert`` checks before
    it skips an existing output as already complete.

    Checked without decoding the volume: the file or store opens (a zip or NPZ with its central directory, an
    SQLite file as long as its header says, a ``.nii.gz`` whose gzip trailer gives the expected size); our
    attributes are present (``series_key`` equal to ``key`` when given, ``shape``, ``dtype``, geometry); the array
    has that shape and dtype; every chunk (every shard of a sharded array) of a Zarr array is stored and its last
    chunk decodes. 2-D mode outputs
    (``mode: 2d``) must hold every instance listed in ``meta/<key>.instances.csv`` (Zarr) or in their attrs
    (NPZ). HDF5 run files are checked as a whole by :func:`voxelpipe.stores.hdf5_store.run_file_problem`.
    """
    path = os.fspath(path)
    try:
        if path.endswith(NIFTI_SUFFIXES):
            return _nifti_problem(path, key)
        if path.endswith(NPZ_SUFFIX):
            return _npz_problem(path, key)
        if path.endswith(HDF5_SUFFIXES):
            return ""
        return _zarr_problem(path, key)
    except Exception as exc:  # noqa: BLE001 - any failure to read it means it is not complete
        return f"unreadable ({type(exc).__name__}: {exc})"


def _attrs_problem(attrs: dict, key: str | None) -> str:
    missing = [name for name in VOLUME_ATTRS if name not in attrs]
    if missing:
        return f"attribute(s) {', '.join(missing)} missing"
    if key is not None and attrs["series_key"] != key:
        return f"attribute series_key is {attrs['series_key']!r}, expected {key!r}"
    return ""


def _array_problem(shape: tuple[int, ...], dtype: np.dtype, attrs: dict) -> str:
    if len(shape) not in (3, 4) or list(shape[-3:]) != list(attrs["shape"]):
        return f"array shape {tuple(shape)} does not match the attrs' shape {attrs['shape']}"
    if np.dtype(dtype) != np.dtype(attrs["dtype"]):
        return f"array dtype {np.dtype(dtype)} does not match the attrs' dtype {attrs['dtype']}"
    return ""


def _zarr_problem(path: str, key: str | None) -> str:
    kind = store_kind(path)
    if kind == StoreKind.SQLITE:
        problem = _sqlite_size_problem(path)
        if problem:
            return problem
    store = open_store(path, kind, "r")
    try:
        group = zarr.open_group(store=store, mode="r")
        attrs = dict(group.attrs)
        if attrs.get("mode") == "2d":
            return _instances_problem(group, path, key)
        problem = _attrs_problem(attrs, key)
        if problem:
            return problem
        if "image" not in group:
            return "no image array"
        array = group["image"]
        problem = _array_problem(array.shape, array.dtype, attrs)
        if problem:
            return problem
        if array.shards is None:
            stored, expected, unit = array.nchunks_initialized, array.nchunks, "chunks"
        else:  # zarr counts every inner chunk slot of each stored shard
            per_shard = math.prod(s // c for s, c in zip(array.shards, array.chunks))
            stored = array.nchunks_initialized // per_shard
            expected, unit = math.prod(-(-n // s) for n, s in zip(array.shape, array.shards)), "shards"
        if stored != expected:
            return f"{expected - stored} of {expected} {unit} missing"
        np.asarray(array[tuple(slice(n - 1, n) for n in array.shape)])  # the last chunk decodes
        return ""
    finally:
        store.close()


def _instances_problem(group, path: str, key: str | None) -> str:
    """A 2-D mode Zarr store: every instance of ``meta/<key>.instances.csv`` present and its last frame read."""
    key = key or os.path.basename(path).split(".")[0]
    table = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), "meta", f"{key}.instances.csv")
    if not os.path.isfile(table):
        return f"{table} missing"
    with open(table, newline="", encoding="utf-8") as fh:
        names = [row["instance_key"] for row in csv.DictReader(fh)]
    present = set(group.array_keys())
    missing = [name for name in names if name not in present]
    if missing:
        return f"{len(missing)} of {len(names)} instance arrays missing"
    for name in names:
        array = group[name]
        np.asarray(array[tuple(slice(n - 1, n) for n in array.shape)])
    return ""


def _sqlite_size_problem(path: str) -> str:
    """An SQLite file shorter than its header's page count says (cut short); '' when it is whole."""
    if os.path.exists(path + "-wal"):
        return ""  # the size in the header is not final while a write-ahead log exists
    with open(path, "rb") as fh:
        header = fh.read(100)
    if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
        return "not an SQLite file"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    if header[24:28] == header[92:96] and pages and os.path.getsize(path) < page_size * pages:
        return f"file cut short: {os.path.getsize(path)} bytes, its header says {page_size * pages}"
    return ""


def _npy_member(archive: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of member ``name`` of an NPZ; ValueError when the member is shorter than they say."""
    info = archive.getinfo(name)
    with archive.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(fh)
        header = fh.tell()
    if dtype.hasobject:
        raise ValueError(f"{name}: object array")
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if info.file_size != expected:
        raise ValueError(f"{name}: {info.file_size} bytes, its header says {expected}")
    return tuple(shape), dtype


def _npz_problem(path: str, key: str | None) -> str:
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        if "attrs_json.npy" not in names:
            return "attrs_json missing"
        with archive.open("attrs_json.npy") as fh:
            attrs = json.loads(str(np.lib.format.read_array(fh)))
        if "image.npy" not in names:  # 2-D mode: one array per instance, attrs per instance
            missing = [name for name in attrs if f"{name}.npy" not in names]
            if missing or not attrs:
                return f"{len(missing)} of {len(attrs)} instance arrays missing"
            for name in attrs:
                _npy_member(archive, f"{name}.npy")
            return ""
        problem = _attrs_problem(attrs, key)
        if problem:
            return problem
        shape, dtype = _npy_member(archive, "image.npy")
        return _array_problem(shape, dtype, attrs)


def _nifti_problem(path: str, key: str | None) -> str:
    nib = require_nibabel("checking a NIfTI volume")
    stem = os.path.basename(nifti_stem(path))
    meta = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), "meta", f"{stem}.series.json")
    try:
        with open(meta, encoding="utf-8") as fh:
            attrs = json.load(fh)
    except (OSError, ValueError) as exc:
        return f"{meta} unreadable ({exc})"
    problem = _attrs_problem(attrs, key)
    if problem:
        return f"{meta}: {problem}"
    header = nib.load(path).header
    nifti_shape = tuple(int(n) for n in header.get_data_shape())
    spatial = tuple(reversed(nifti_shape[:3]))  # NIfTI (column, row, slice[, frame]) of a converted volume
    problem = _array_problem(spatial, header.get_data_dtype(), attrs)
    if problem:
        return problem
    # vox_offset 0 means the data follow the 348-byte header, the 4-byte extension flag and the extensions
    offset = int(header.get_data_offset()) or 352 + header.extensions.get_sizeondisk()
    expected = offset + int(np.prod(nifti_shape)) * header.get_data_dtype().itemsize
    if path.endswith(".gz"):
        with open(path, "rb") as fh:  # the gzip trailer ends with the uncompressed size modulo 2**32
            fh.seek(-4, os.SEEK_END)
            size = int.from_bytes(fh.read(4), "little")
        if size != expected % (1 << 32):
            return f"gzip stream cut short or garbled: trailer says {size} bytes, expected {expected}"
    elif os.path.getsize(path) < expected:
        return f"file cut short: {os.path.getsize(path)} bytes, expected {expected}"
    return ""
