"""Open and save converted volumes: ``open_volume`` reads lazily, ``save_volume`` writes Zarr atomically."""
from __future__ import annotations

import json
import os

import h5py
import numpy as np

from voxelpipe.core import defaults
from voxelpipe.core.errors import InputError
from voxelpipe.core.geometry import Geometry
from voxelpipe.core.volume import Volume, json_default
from voxelpipe.stores.hdf5_store import read_attrs
from voxelpipe.stores.nifti import read_nifti_volume
from voxelpipe.stores.registry import HDF5_SUFFIXES, NIFTI_SUFFIXES, NPZ_SUFFIX, store_kind
from voxelpipe.stores.writer import VolumeWriter
from voxelpipe.stores.zarr_store import ZarrVolumeWriter, open_volume_group


def open_volume(path: str | os.PathLike, key: str | None = None) -> Volume:
    """Open a converted volume: ``<key>.zarr`` / ``.zarr.zip`` / ``.zarr.sqlite``, ``<key>.npz``, a run's
    ``.h5`` file with ``key`` naming the dataset, or ``<key>.nii.gz`` / ``.nii`` (nibabel, read into memory
    and put back in (slice, row, column) order: see :func:`voxelpipe.stores.nifti.read_nifti_volume`). The
    array is read lazily (zarr, h5py).

    Returns:
        A Volume: array (slice, row, column) or (frame, slice, row, column), geometry in LPS mm from the attrs.

    Raises:
        InputError: no such volume, or an HDF5 file without ``key`` / with several volumes and no ``key``.
        StoreError: a name with no volume suffix.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such volume")
    if path.endswith(NIFTI_SUFFIXES):
        return read_nifti_volume(path)
    if path.endswith(NPZ_SUFFIX):
        with np.load(path) as data:
            attrs = json.loads(str(data["attrs_json"]))
            array = data["image"]
        return Volume(array, Geometry.from_attrs(attrs), attrs, path)
    if path.endswith(HDF5_SUFFIXES):
        handle = h5py.File(path, "r")
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
    group = open_volume_group(path)
    attrs = dict(group.attrs)
    return Volume(group["image"], Geometry.from_attrs(attrs), attrs, path)


def save_volume(volume: Volume, path: str | os.PathLike, chunks: tuple[int, int, int] = defaults.VOLUME_CHUNKS,
                clevel: int = defaults.VOLUME_CLEVEL, attrs: dict | None = None) -> int:
    """Write a volume as a Zarr store (kind from the suffix: ``.zarr``, ``.zarr.zip``, ``.zarr.sqlite``) with its
    geometry in the attributes, atomically; returns the bytes written. 4-D arrays keep their frame axis.

    Args:
        volume: the volume to write.
        path: the store's path; its suffix picks the store kind.
        chunks: spatial chunk shape (slice, row, column), clipped to the array (4-D: one frame per chunk).
        clevel: Blosc zstd level.
        attrs: extra attributes (the geometry's own entries win).

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
                              json.loads(json.dumps(merged, default=json_default)), clevel=clevel)
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
