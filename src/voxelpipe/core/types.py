"""The vocabularies of voxelpipe as ``StrEnum``s: each member compares equal to its plain string, so rows,
attributes and command-line values keep their words."""
from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from voxelpipe.core.errors import InputError


class Status(StrEnum):
    """Outcome of one item (series, volume, subject, patient, ROI) in a run's summary: ``done`` (its output was
    written), ``skipped`` (nothing to do: already complete, or not an input for this run; the reason says which)
    or ``failed`` (the reason says why). Rows are built with :mod:`voxelpipe.core.rows`."""

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
    NIFTI = "nifti"
    NPZ = "npz"


class Executor(StrEnum):
    """Where per-item tasks run: processes of this machine, a running dask scheduler, a local dask cluster."""

    POOL = "pool"
    DASK = "dask"
    DASK_LOCAL = "dask-local"


E = TypeVar("E", bound=StrEnum)


def member_of(kind: type[E], value: str, what: str) -> E:
    """``value`` as a member of the vocabulary ``kind`` (``Format``, ``Executor``, ...).

    Raises:
        InputError: ``value`` is not one of the words, naming ``what`` (the option) and the words allowed.
    """
    try:
        return kind(value)
    except ValueError:
        raise InputError(f"{what} must be one of {', '.join(kind)}, got {value!r}") from None


class Phi(StrEnum):
    """What ``scan`` and ``convert`` write of the attributes of the DICOM Basic Application Level Confidentiality
    Profile (patient names, IDs, dates, institutions, UIDs, ...): ``keep`` them as they are, ``pseudonymise`` them
    (keyed hashes; UIDs become ``2.25.<number>`` UIDs) or ``drop`` them (their columns and attributes left out)."""

    KEEP = "keep"
    PSEUDONYMISE = "pseudonymise"
    DROP = "drop"


class ColumnNames(StrEnum):
    """Column names of ``metadata.csv`` / ``.parquet``: ``name`` = ``"Patient's Name (0010, 0010)"``,
    ``keyword`` = ``PatientName`` (DICOM keywords; nested elements ``Sequence_Keyword``)."""

    NAME = "name"
    KEYWORD = "keyword"


class UnevenPolicy(StrEnum):
    """What ``convert`` does with a series whose slice steps differ: resample onto a uniform grid along the
    slice normal, keep the slices as they are (``uniform: false``), or fail the series."""

    RESAMPLE = "resample"
    KEEP = "keep"
    FAIL = "fail"


class TiltPolicy(StrEnum):
    """What ``convert`` does with a gantry-tilted (sheared) series: resample onto an orthogonal grid, or keep the
    sheared volume (``sheared: true``)."""

    CORRECT = "correct"
    KEEP = "keep"


class PhilipsScaling(StrEnum):
    """Philips MR intensities: ``display`` = the DICOM rescale (RescaleSlope/Intercept); ``precise`` = the
    floating-point values of Philips' private scale slope, as dcm2niix writes by default."""

    DISPLAY = "display"
    PRECISE = "precise"
