"""The vocabularies of voxelpipe as ``StrEnum``s: each member compares equal to its plain string, so rows,
attributes and command-line values keep their words."""
from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Outcome of one item (series, volume, subject, patient) in a run's summary."""

    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"


class StoreKind(StrEnum):
    """How a Zarr volume is stored: a folder (``.zarr``), a zip file (``.zarr.zip``), an SQLite file
    (``.zarr.sqlite``)."""

    DIR = "dir"
    ZIP = "zip"
    SQLITE = "sqlite"


class Format(StrEnum):
    """Output format of ``convert``."""

    ZARR = "zarr"
    HDF5 = "hdf5"
    NPZ = "npz"


class Executor(StrEnum):
    """Where per-item tasks run: processes of this machine, a running dask scheduler, a local dask cluster."""

    POOL = "pool"
    DASK = "dask"
    DASK_LOCAL = "dask-local"
