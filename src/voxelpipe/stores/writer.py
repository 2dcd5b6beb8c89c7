"""The one interface of volume writers, and the factory that picks a writer by output format.

A writer receives a volume slab by slab (or block by block for 4-D volumes), can read back what it wrote, and
publishes the volume under its final name only in :meth:`VolumeWriter.finish`; :meth:`VolumeWriter.abort` leaves
nothing behind. :class:`~voxelpipe.stores.zarr_store.ZarrVolumeWriter`,
:class:`~voxelpipe.stores.hdf5_store.Hdf5VolumeWriter`, :class:`~voxelpipe.stores.npz_store.NpzVolumeWriter` and
:class:`~voxelpipe.stores.nifti.NiftiVolumeWriter` implement it.
"""
from __future__ import annotations

import functools
from typing import Protocol, runtime_checkable

import numpy as np

from voxelpipe.core.errors import StoreError
from voxelpipe.core.types import Format, StoreKind
from voxelpipe.stores.hdf5_store import Hdf5VolumeWriter
from voxelpipe.stores.nifti import NiftiVolumeWriter
from voxelpipe.stores.npz_store import NpzVolumeWriter
from voxelpipe.stores.zarr_store import ZarrVolumeWriter

__all__ = ["VolumeWriter", "WriterFactory", "writer_for"]


@runtime_checkable
class VolumeWriter(Protocol):
    """Writes one volume: array axes (slice, row, column), or (frame, slice, row, column) for 4-D volumes.

    Attributes:
        path: the final path, which exists only after :meth:`finish`.
    """

    path: str

    def write(self, start: int, slab: np.ndarray) -> None:
        """Write ``slab`` at ``[start : start + len(slab)]`` along axis 0 (slices of a 3-D volume).

        ``start`` lies on the chunk grid of axis 0."""
        ...

    def write_at(self, index: tuple, block: np.ndarray) -> None:
        """Write ``block`` (slice, row, column) at ``index = (frame, slice(z0, z1))`` of a 4-D volume."""
        ...

    def read(self, index: tuple) -> np.ndarray:
        """Read back written data at ``index`` (verification before publishing)."""
        ...

    def set_attrs(self, attrs: dict) -> None:
        """Add or replace JSON-ready attributes of the volume."""
        ...

    def finish(self) -> int:
        """Close and publish the volume under :attr:`path`; returns its size on disk in bytes."""
        ...

    def abort(self) -> None:
        """Close and delete everything written so far (the final path is left as it was)."""
        ...


class WriterFactory(Protocol):
    """A callable that opens a :class:`VolumeWriter` (see :func:`writer_for`)."""

    def __call__(self, path: str, shape: tuple[int, ...], dtype: np.dtype, chunks: tuple[int, ...], attrs: dict,
                 clevel: int) -> VolumeWriter:
        ...


def _npz_writer(path: str, shape: tuple[int, ...], dtype: np.dtype, chunks: tuple[int, ...], attrs: dict,
                clevel: int) -> VolumeWriter:
    return NpzVolumeWriter(path, shape, dtype, chunks, attrs, clevel=clevel)


def writer_for(fmt: Format | str, kind: StoreKind | str = StoreKind.DIR, levels: int = 1,
               shards: tuple[int, ...] | None = None) -> WriterFactory:
    """The writer of output format ``fmt`` (Zarr in store ``kind``; ``kind`` is ignored for HDF5, NPZ, NIfTI).

    Call the result as ``factory(path, shape, dtype, chunks, attrs, clevel)``: ``shape`` and ``chunks`` in array
    axis order (slice, row, column) or (frame, slice, row, column), ``attrs`` JSON-ready, ``clevel`` the
    compression level (Zarr Blosc zstd, HDF5 gzip, NIfTI gzip when the path ends in ``.nii.gz``; NPZ is stored
    uncompressed). ``levels`` > 1 adds OME-Zarr pyramid levels to Zarr volumes (ignored for other formats).
    ``shards``: the shard shape of a sharded Zarr volume (``chunks`` are then its inner chunks and slabs are written
    a whole shard deep); None for plain chunks; ignored for other formats.

    Raises:
        StoreError: unknown format or store kind.
    """
    try:
        fmt = Format(fmt)
        if fmt is Format.ZARR:
            return functools.partial(_zarr_writer, kind=StoreKind(kind), levels=levels, shards=shards)
    except ValueError:
        raise StoreError(f"unknown format '{fmt}' / store kind '{kind}'; choose format {', '.join(Format)} and "
                         f"store {', '.join(StoreKind)}") from None
    if fmt is Format.NIFTI:
        return _nifti_writer
    return Hdf5VolumeWriter if fmt is Format.HDF5 else _npz_writer


def _nifti_writer(path: str, shape: tuple[int, ...], dtype: np.dtype, chunks: tuple[int, ...], attrs: dict,
                  clevel: int) -> VolumeWriter:
    return NiftiVolumeWriter(path, shape, dtype, chunks, attrs, clevel=clevel)


def _zarr_writer(path: str, shape: tuple[int, ...], dtype: np.dtype, chunks: tuple[int, ...], attrs: dict,
                 clevel: int, *, kind: StoreKind, levels: int = 1,
                 shards: tuple[int, ...] | None = None) -> VolumeWriter:
    return ZarrVolumeWriter(path, kind, shape, dtype, chunks, attrs, clevel=clevel, levels=levels, shards=shards)
