"""Errors raised by voxelpipe: one base type, specific subclasses.

Every error voxelpipe raises on purpose derives from :class:`VoxelpipeError`; every message names the file, and
where it applies the tag and the value at fault. The tree (classes of other modules name theirs in brackets; those
that are natural built-in errors too also inherit that built-in, so ``except ValueError`` keeps working)::

    VoxelpipeError
      InputError (ValueError)                      a bad request: option value, shape, dtype, missing input
        PathNotFoundError (FileNotFoundError)      a named input file or folder does not exist
        ValuesDoNotFitError                        rescaled values do not fit the requested integer dtype
        RoiNotFoundError                           requested ROI / segment names absent from the object
        NoPetError                    [apps.petct.suv]       no PET file among the inputs
        PetctError                    [apps.petct.pipeline]  a subject cannot be prepared
        ContourParseError             [apps.contours.pipeline]
      DicomReadError (ValueError)                  a file cannot be used as DICOM (names the file)
        NotDicomError                              no DICOM dataset in the file
        TruncatedFileError            [dicom.files]  a whole header, then the file ends too soon
        MissingTagError                            a needed tag is absent or empty
          NoGeometryError                          an image without position / orientation
          SegMissingTagError          [dicom.seg]
          SuvMissingTagError          [dicom.suv]  (also SuvError)
        BadTagValueError                           a tag holds an unusable value
          FrameOfReferenceMismatchError            an RTSTRUCT / SEG in another frame of reference than the volume
          NotSegError, SegTagValueError, SegGridError  [dicom.seg]
          NotRtstructError            [dicom.rtstruct]
          SuvTagValueError            [dicom.suv]  (also SuvError)
            UnsupportedUnitsError, NegativeUptakeError
        RtstructError                 [dicom.rtstruct]  an RTSTRUCT that cannot be read
        SuvError                      [dicom.suv]  SUV cannot be computed for a file
        OutputBusyError               [stores.lock]  another run holds the output folder (exit 2)
        OutputNotWritableError        [stores.lock]  the output folder cannot be created or written (exit 2)
      StoreError (ValueError, TypeError)           a store used against its contract (wrong type, unknown kind,
                                                   a file that is not the store its name says)
      OutputWriteError (OSError)                   an output could not be written mid-run: disk full, file too
                                                   large, no permission (names the path; exit 1)
      MergeError (RuntimeError)       [apps.petct.merge]    a merged subject file does not hold what was planned
      ModelError (RuntimeError)       [apps.lung.nodules]   a user nodule model failed
      DemoStepError                   [apps.demo]           a demo stage did not do its job

Internal signals that never leave their package (the raw header walker meeting an encoding it does not handle,
a fast pixel decoder declining a file) are plain exceptions caught by their caller; they are not errors of a run.

A run that goes on after one item failed records :func:`failure_reason` (or :func:`lost_task_reason`) in that
item's row (see :mod:`voxelpipe.core.rows`).
"""
from __future__ import annotations

import errno
import os
from collections.abc import Sequence


class VoxelpipeError(Exception):
    """Base of every error voxelpipe raises on purpose."""


class InputError(VoxelpipeError, ValueError):
    """Bad input to a library call (wrong shape, dtype, option value)."""


class OutputWriteError(VoxelpipeError, OSError):
    """An output file or folder could not be written (disk full, file too large, no permission): the message names
    the path and the OS error. Also an ``OSError``, with the original ``errno``."""

    def __init__(self, path: str | os.PathLike, exc: OSError, what: str = ""):
        self.path = os.fspath(path)
        code = errno.errorcode.get(exc.errno, "") if exc.errno else ""
        reason = exc.strerror or str(exc)
        self.message = f"{self.path}: cannot write{what}: {reason}" + (f" ({code})" if code else "")
        super().__init__(self.message)
        self.errno = exc.errno

    def __str__(self) -> str:  # OSError's own would show only "[Errno N] ..." once errno is set
        return self.message


class PathNotFoundError(InputError, FileNotFoundError):
    """A file or folder named by the caller does not exist."""


class ValuesDoNotFitError(InputError):
    """Rescaled values are not integral or do not fit the requested integer output dtype."""


class RoiNotFoundError(InputError):
    """Requested ROI (RTSTRUCT) or segment (SEG) names or numbers are not in the object."""

    def __init__(self, path: str | os.PathLike, missing: Sequence[str], available: Sequence[str],
                 where: str = "StructureSetROISequence (3006,0020) ROIName (3006,0026)"):
        self.path = os.fspath(path)
        self.missing = list(missing)
        self.available = list(available)
        super().__init__(f"{self.path}: ROI name(s) {', '.join(map(repr, self.missing))} not in {where}; "
                         f"available: {', '.join(map(repr, self.available)) or 'none'}")


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


class FrameOfReferenceMismatchError(BadTagValueError):
    """A mask object (RTSTRUCT, SEG) is in another frame of reference than the volume it is placed on.

    Args:
        path: the object's file.
        tag: the tag holding the object's frame(s) of reference, with its number.
        found: the object's FrameOfReferenceUID(s).
        expected: the volume's FrameOfReferenceUID.
    """

    def __init__(self, path: str | os.PathLike, tag: str, found: str | Sequence[str], expected: str):
        self.found = [found] if isinstance(found, str) else list(found)
        self.expected = expected
        super().__init__(path, tag, ", ".join(self.found) or "(none)",
                         f"the volume's frame of reference is {expected}: the object is in another patient "
                         "coordinate system")


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
