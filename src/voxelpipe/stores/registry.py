"""The one table of output file suffixes: suffix ↔ (:class:`Format`, :class:`StoreKind`).

Converted volumes::

    <key>.zarr          Format.ZARR, StoreKind.DIR      a folder (zarr's LocalStore)
    <key>.zarr.zip      Format.ZARR, StoreKind.ZIP      a zip file (zarr's ZipStore)
    <key>.zarr.sqlite   Format.ZARR, StoreKind.SQLITE   an SQLite file (voxelpipe's SqliteStore)
    <key>.h5            Format.HDF5                     an HDF5 file (``.hdf5`` is read too)
    <key>.npz           Format.NPZ                      a numpy zip archive
    <key>.nii.gz        Format.NIFTI                    a gzipped NIfTI-1 file (``.nii`` with ``nifti_gzip`` off)

Subject files of the PET/CT app (``voxelpipe.stores.subject_store``) are HDF5 (``.h5`` / ``.hdf5``) or a Zarr
folder (``.zarr``); :func:`subject_file_format` names their format.

Only core is imported here, so any layer from stores up may use the table without loading zarr or h5py.
"""
from __future__ import annotations

import os

from voxelpipe.core.errors import InputError, StoreError
from voxelpipe.core.types import Format, StoreKind

__all__ = [
    "HDF5_SUFFIXES",
    "NIFTI_SUFFIXES",
    "NPZ_SUFFIX",
    "STORE_SUFFIXES",
    "SUBJECT_SUFFIXES",
    "VOLUME_SUFFIXES",
    "ZARR_SUFFIXES",
    "inside",
    "is_plain_name",
    "is_volume_path",
    "store_kind",
    "subject_file_format",
    "volume_format",
    "volume_path",
    "volume_suffix",
]

STORE_SUFFIXES: dict[StoreKind, str] = {
    StoreKind.DIR: ".zarr",
    StoreKind.ZIP: ".zarr.zip",
    StoreKind.SQLITE: ".zarr.sqlite",
}
"""The file suffix of each Zarr store kind."""

ZARR_SUFFIXES: tuple[str, ...] = tuple(STORE_SUFFIXES.values())
HDF5_SUFFIXES: tuple[str, ...] = (".h5", ".hdf5")
NPZ_SUFFIX = ".npz"
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")  # gzipped first (the default)

VOLUME_SUFFIXES: dict[str, tuple[Format, StoreKind | None]] = {
    **{suffix: (Format.ZARR, kind) for kind, suffix in STORE_SUFFIXES.items()},
    **{suffix: (Format.HDF5, None) for suffix in HDF5_SUFFIXES},
    NPZ_SUFFIX: (Format.NPZ, None),
    **{suffix: (Format.NIFTI, None) for suffix in NIFTI_SUFFIXES},
}
"""Every volume suffix with its format and, for Zarr, its store kind (None for HDF5, NPZ and NIfTI)."""

SUBJECT_SUFFIXES: dict[str, Format] = {".h5": Format.HDF5, ".hdf5": Format.HDF5, ".zarr": Format.ZARR}
"""Suffixes of PET/CT subject files and their format."""

# longest first, so ".zarr.zip" is not taken for ".zarr"
_BY_LENGTH = sorted(VOLUME_SUFFIXES, key=len, reverse=True)


def _match(path: str | os.PathLike) -> str | None:
    text = os.fspath(path).rstrip("/")
    return next((suffix for suffix in _BY_LENGTH if text.endswith(suffix)), None)


def is_volume_path(path: str | os.PathLike) -> bool:
    """True when ``path`` ends in a volume suffix (Zarr store, HDF5, NPZ or NIfTI)."""
    return _match(path) is not None


def volume_format(path: str | os.PathLike) -> Format:
    """The format of a volume path, from its suffix.

    Raises:
        StoreError: the name ends in no volume suffix.
    """
    suffix = _match(path)
    if suffix is None:
        raise StoreError(f"{os.fspath(path)}: not a voxelpipe volume (expected a name ending in "
                         f"{', '.join(VOLUME_SUFFIXES)})")
    return VOLUME_SUFFIXES[suffix][0]


def store_kind(path: str | os.PathLike) -> StoreKind:
    """The Zarr store kind of a volume path, from its suffix (``.zarr`` dir, ``.zarr.zip`` zip, ``.zarr.sqlite``
    sqlite).

    Raises:
        StoreError: the name is not that of a Zarr volume.
    """
    suffix = _match(path)
    kind = VOLUME_SUFFIXES[suffix][1] if suffix is not None else None
    if kind is None:
        raise StoreError(f"{os.fspath(path)}: not a voxelpipe Zarr volume (expected {', '.join(ZARR_SUFFIXES)})")
    return kind


def volume_suffix(fmt: Format | str, kind: StoreKind | str = StoreKind.DIR, nifti_gzip: bool = True) -> str:
    """The file suffix of a volume written as ``fmt`` (``kind`` picks the Zarr store; ``nifti_gzip`` picks
    ``.nii.gz`` or ``.nii`` for NIfTI; each is ignored otherwise).

    Raises:
        StoreError: unknown format or store kind.
    """
    try:
        fmt = Format(fmt)
        if fmt is Format.ZARR:
            return STORE_SUFFIXES[StoreKind(kind)]
    except ValueError:
        raise StoreError(f"unknown volume format '{fmt}' / store kind '{kind}'; choose format "
                         f"{', '.join(Format)} and store {', '.join(StoreKind)}") from None
    if fmt is Format.NIFTI:
        return NIFTI_SUFFIXES[0] if nifti_gzip else NIFTI_SUFFIXES[1]
    return HDF5_SUFFIXES[0] if fmt is Format.HDF5 else NPZ_SUFFIX


def volume_path(folder: str | os.PathLike, key: str, fmt: Format | str, kind: StoreKind | str = StoreKind.DIR,
                nifti_gzip: bool = True) -> str:
    """``<folder>/<key><suffix>``: where a volume of series ``key`` is written as ``fmt`` (and ``kind``, or
    ``nifti_gzip``).

    Raises:
        StoreError: ``key`` would name a path outside ``folder`` (a separator, ``..``, an absolute path).
    """
    return inside(folder, key + volume_suffix(fmt, kind, nifti_gzip))


def is_plain_name(name: str) -> bool:
    """True when ``name`` can only name an entry of the folder it is joined to: not empty, not ``.`` or ``..``,
    no path separator (``/`` or ``\\``) and no NUL."""
    return name not in ("", ".", "..") and not any(c in name for c in ("/", "\\", "\0", os.sep))


def inside(folder: str | os.PathLike, name: str) -> str:
    """``<folder>/<name>`` for a plain file name ``name``: the guard of every output path built from a key.

    Raises:
        StoreError: ``name`` holds a path separator or a NUL, is ``.`` / ``..`` or would resolve outside
            ``folder``.
    """
    folder = os.fspath(folder)
    path = os.path.join(folder, name)
    if not is_plain_name(name) or os.path.dirname(os.path.abspath(path)) != os.path.abspath(folder):
        raise StoreError(f"{name!r}: refusing to write outside {folder} (an output name must be a plain file name; "
                         "a series key read from an edited manifest?)")
    return path


def subject_file_format(path: str | os.PathLike) -> Format:
    """The format of a PET/CT subject file: HDF5 for ``.h5`` / ``.hdf5``, Zarr for ``.zarr`` (a folder).

    Raises:
        InputError: any other name.
    """
    text = os.fspath(path).rstrip("/")
    for suffix, fmt in SUBJECT_SUFFIXES.items():
        if text.lower().endswith(suffix):
            return fmt
    raise InputError(f"{text}: unknown subject file kind; expected a name ending in "
                     f"{', '.join(SUBJECT_SUFFIXES)}")
