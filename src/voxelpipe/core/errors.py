"""Errors raised by voxelpipe: one base type, specific subclasses.

Every message names the file, and where it applies the tag and the value at fault.
"""
from __future__ import annotations

import os


class VoxelpipeError(Exception):
    """Base of every error voxelpipe raises on purpose."""


class InputError(VoxelpipeError, ValueError):
    """Bad input to a library call (wrong shape, dtype, option value)."""


class ValuesDoNotFitError(InputError):
    """Rescaled values are not integral or do not fit the requested integer output dtype."""


class DicomReadError(VoxelpipeError, ValueError):
    """A file could not be read as DICOM (empty, truncated, not DICOM, parse failure)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class NotDicomError(DicomReadError):
    """The file holds no DICOM dataset."""


class MissingTagError(DicomReadError):
    """A tag needed for the job is absent or empty."""

    def __init__(self, path: str | os.PathLike, tags: list[str]):
        self.tags = list(tags)
        super().__init__(path, "missing tag(s) needed for a volume: " + ", ".join(self.tags))


class NoGeometryError(MissingTagError):
    """An image without ImagePositionPatient / ImageOrientationPatient: not a volume slice (2-D use only)."""


class BadTagValueError(DicomReadError):
    """A tag holds a value that cannot be used."""

    def __init__(self, path: str | os.PathLike, tag: str, value: object, why: str):
        self.tag = tag
        self.value = value
        super().__init__(path, f"tag {tag} has unusable value {value!r}: {why}")


def lost_task_reason(exc: BaseException) -> str:
    """The reason recorded for a task that never returned its own row (its worker died, the cluster lost it)."""
    return f"task lost: {failure_reason(exc)}"


def failure_reason(exc: BaseException) -> str:
    """The reason recorded in a run's report when one task (a series, subject, patient) fails: the message of
    our own errors, ``out of memory``, the OS error with its type, else ``unexpected <type>: <message>``."""
    if isinstance(exc, VoxelpipeError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory"
    if isinstance(exc, OSError):  # disk full, permissions
        return f"{type(exc).__name__}: {exc}"
    return f"unexpected {type(exc).__name__}: {exc}"


class StoreError(VoxelpipeError, ValueError, TypeError):
    """A store (Zarr, HDF5, NPZ, SQLite) used against its contract: a value of the wrong type, an unknown store
    kind or suffix, a store opened twice, a file that is not the store its name says. It is also a ValueError and
    a TypeError, the built-ins zarr's ``Store`` API names for these cases."""
