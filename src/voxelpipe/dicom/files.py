"""Finding DICOM files by content and reading their headers (never their pixels)."""
from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset

from voxelpipe.core.errors import DicomReadError, NotDicomError, PathNotFoundError
from voxelpipe.dicom.flatten import flatten
from voxelpipe.dicom.rawheader import DEFLATED, Truncated, Unsupported, read_raw_header

# Groups a dataset without preamble commonly starts with (file meta, DICOMDIR, identifying).
_PLAUSIBLE_FIRST_GROUPS = frozenset({0x0002, 0x0004, 0x0008})


def iter_files(roots: Iterable[str | os.PathLike]) -> Iterator[str]:
    """Yield every regular file below the given folders (or the given files), at any depth, sorted per folder."""
    for root in roots:
        root = os.fspath(root)
        if os.path.isfile(root):
            yield root
            continue
        if not os.path.isdir(root):
            raise PathNotFoundError(f"{root}: no such file or folder")
        for folder, dirs, names in os.walk(root):
            dirs.sort()
            for name in sorted(names):
                path = os.path.join(folder, name)
                if os.path.isfile(path):
                    yield path


def sniff(head: bytes) -> bool:
    """True when the first bytes of a file look like DICOM: ``DICM`` at 128, or a plausible first tag."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    group_le = struct.unpack("<H", head[:2])[0]
    group_be = struct.unpack(">H", head[:2])[0]
    return group_le in _PLAUSIBLE_FIRST_GROUPS or group_be in _PLAUSIBLE_FIRST_GROUPS


@dataclass(frozen=True)
class PixelDataLocation:
    """Where the pixel data element of a file starts and how long its value is (bytes; -1 = undefined)."""

    element_offset: int  # offset of the element's tag
    value_offset: int  # offset of the first value byte
    value_length: int  # declared length, -1 for undefined length (encapsulated)
    available: int  # bytes present in the file after value_offset


@dataclass
class Header:
    """A file's header flattened into a row (file meta included), with where its pixel data lies."""

    path: str
    size: int
    row: dict[str, str]
    pixel: PixelDataLocation | None  # None when the file has no pixel data element
    transfer_syntax: str

    def dataset(self) -> Dataset:
        """The header as a pydicom Dataset (read again on demand, for the rare paths that need one)."""
        return pydicom.dcmread(self.path, stop_before_pixels=True, force=True)


def read_header(path: str) -> Header:
    """Read the header of ``path`` (everything before the pixel data); raise DicomReadError with the reason."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            raise NotDicomError(path, "empty file (0 bytes)")
        with open(path, "rb") as fp:
            head = fp.read(132)
            if not sniff(head):
                raise NotDicomError(path, "not DICOM: no 'DICM' marker at byte 128 and no plausible first tag")
            fp.seek(0)
            try:
                raw = read_raw_header(fp, size)
            except Truncated as exc:
                raise DicomReadError(path, f"truncated header: {exc}") from None
            except (Unsupported, struct.error, UnicodeDecodeError, LookupError):
                return _read_with_pydicom(path, size)
    except OSError as exc:
        raise DicomReadError(path, f"cannot read file: {exc.strerror or exc}") from None
    if not raw.row:
        raise NotDicomError(path, "not DICOM: no data elements could be parsed")
    pixel = None
    if raw.pixel_tag_offset >= 0:
        value_offset = raw.pixel_tag_offset + raw.pixel_header_length
        pixel = PixelDataLocation(raw.pixel_tag_offset, value_offset, raw.pixel_value_length, size - value_offset)
    return Header(path=path, size=size, row=raw.row, pixel=pixel, transfer_syntax=raw.transfer_syntax)


def _read_with_pydicom(path: str, size: int) -> Header:
    """The slow path: pydicom parses the header (deflated syntax, unusual encodings)."""
    try:
        with open(path, "rb") as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
            pixel_at = fp.tell()
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise DicomReadError(path, f"truncated or corrupt header: {type(exc).__name__}: {exc}") from None
    if len(ds) == 0:
        raise NotDicomError(path, "not DICOM: no data elements could be parsed")
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    pixel = None
    if syntax in DEFLATED:
        # A deflated file has no byte offsets to speak of: read it whole to learn whether pixel data exists.
        if "PixelData" in pydicom.dcmread(path, force=True):
            pixel = PixelDataLocation(-1, -1, -1, size)
    elif pixel_at + 8 <= size:
        pixel = PixelDataLocation(pixel_at, -1, -1, size - pixel_at)
    return Header(path=path, size=size, row=flatten(ds), pixel=pixel, transfer_syntax=syntax)
