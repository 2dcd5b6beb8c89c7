"""Finding DICOM files by content and reading their headers (never their pixels).

:func:`read_header` raises :class:`~voxelpipe.core.errors.DicomReadError` (``scan`` lists the file as
``unreadable``) when an element of the header declares more bytes than the file holds (truncated), or when the
file meta parses but no data set follows it, or what follows holds only group 0000 elements (corrupt).

:func:`check_whole` raises :class:`TruncatedFileError` (``unreadable`` too, the header's metadata row kept) when
a readable header shows the file was cut after it:

- the pixel data element declares more bytes than the file holds;
- the file ends on an element boundary without pixel data while its SOP Class UID (0008,0016) (or the file meta's
  Media Storage SOP Class UID (0002,0002)) is an image storage class, whose every instance has pixel data. Such a
  file cannot be told apart from one written without its pixels; both are reported as truncated, with the byte
  where the file ends. A non-image object cut on an element boundary is indistinguishable from a shorter object
  and is read as one.

:func:`iter_files` yields what cannot be read too (a folder that cannot be listed, a dangling symbolic link), so
that reading it raises the OS error instead of the path vanishing from the scan.
"""
from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID

from voxelpipe.core.errors import DicomReadError, NotDicomError, PathNotFoundError
from voxelpipe.dicom.flatten import PIXEL_DATA_TAGS, column_name, flatten
from voxelpipe.dicom.rawheader import (
    DEFLATED,
    LONG_VRS,
    UNDEFINED,
    Corrupt,
    InflatedFile,
    Truncated,
    Unsupported,
    read_raw_header,
)

# Groups a dataset without preamble commonly starts with (file meta, DICOMDIR, identifying).
_PLAUSIBLE_FIRST_GROUPS = frozenset({0x0002, 0x0004, 0x0008})
_SOP_CLASS_COLUMNS = (column_name(0x00080016), column_name(0x00020002))
_ENCAPSULATED_MIN = 8  # an item tag and its length: the least encapsulated pixel data holds


class TruncatedFileError(DicomReadError):
    """The file ends before its header says it should: inside the pixel data, or (an image storage class) before
    any pixel data. Its header was read whole."""


def iter_files(roots: Iterable[str | os.PathLike], exclude: Iterable[str | os.PathLike] = ()) -> Iterator[str]:
    """Yield every regular file below the given folders (or the given files), at any depth, sorted per folder.

    Folders in ``exclude`` (a run's own output folder inside its input) are not entered.

    Also yielded, so that reading them reports why they cannot be read: a folder below the roots that cannot be
    listed, and an entry whose status cannot be read (a dangling symbolic link, a file in a folder that can be
    listed but not entered). Other entries (FIFOs, sockets, devices, symbolic links to folders) are left out.

    Raises:
        PathNotFoundError: a root is neither a file nor a folder.
    """
    skipped = {os.path.realpath(os.fspath(folder)) for folder in exclude}
    for root in roots:
        root = os.fspath(root)
        if os.path.isfile(root):
            yield root
            continue
        if not os.path.isdir(root):
            raise PathNotFoundError(f"{root}: no such file or folder")
        unlisted: list[OSError] = []
        for folder, dirs, names in os.walk(root, onerror=unlisted.append):
            yield from _drain(unlisted, root)
            dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(folder, d)) not in skipped)
            for name in sorted(names):
                path = os.path.join(folder, name)
                try:
                    mode = os.stat(path).st_mode
                except OSError:
                    yield path  # a dangling link or an entry that cannot be looked at: reading it says why
                    continue
                if stat.S_ISREG(mode):
                    yield path
        yield from _drain(unlisted, root)


def _drain(errors: list[OSError], root: str) -> Iterator[str]:
    """The folders ``os.walk`` could not list, in the order it met them."""
    while errors:
        yield errors.pop(0).filename or root


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
    """Where the pixel data element of a file starts and how long its value is (bytes; -1 = undefined).

    Offsets are -1 for a deflated data set (its pixel data is not at any offset of the file); ``available`` is -1
    when unknown (deflated)."""

    element_offset: int  # offset of the element's tag
    value_offset: int  # offset of the first value byte
    value_length: int  # declared length, -1 for undefined length (encapsulated)
    available: int  # bytes present in the file after value_offset
    tag: int = 0x7FE00010  # PixelData, or FloatPixelData (7FE0,0008) / DoubleFloatPixelData (7FE0,0009)


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
        return header_dataset(self.path)


def header_dataset(path: str) -> Dataset:
    """pydicom's reading of the header of ``path``: every element before the pixel data, file meta included. A
    deflated data set is inflated only that far."""
    with open(path, "rb") as fp:
        return _pydicom_header(fp)[0]


def read_header(path: str) -> Header:
    """Read the header of ``path`` (everything before the pixel data); :func:`check_whole` tells whether the file
    goes on as far as its header says.

    Raises:
        NotDicomError: the file is empty or holds no DICOM data set.
        DicomReadError: the file cannot be read (the OS error), its header is truncated, or what follows the file
            meta is no data set (see the module docstring); the reason names the file and the bytes at fault.
    """
    try:
        size = _file_size(path)
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
                raise DicomReadError(path, f"truncated or corrupt header: {exc}") from None
            except Corrupt as exc:
                raise DicomReadError(path, f"corrupt: {exc}") from None
            except (Unsupported, struct.error, UnicodeDecodeError, LookupError):
                header, elements, valid = _read_with_pydicom(path, size)
            else:
                if not raw.row:
                    raise NotDicomError(path, "not DICOM: no data elements could be parsed")
                header, elements, valid = _from_raw(path, size, raw), raw.elements, raw.valid_elements
    except OSError as exc:
        raise DicomReadError(path, _os_reason(path, exc)) from None
    _check_data_set(path, size, elements, valid)
    return header


def _file_size(path: str) -> int:
    """The size of the regular file ``path``; DicomReadError for a folder, with the error listing it gives."""
    info = os.stat(path)
    if stat.S_ISDIR(info.st_mode):
        with os.scandir(path):
            pass  # raises the OSError of a folder that cannot be listed
        raise DicomReadError(path, f"{path} is a folder, not a file")
    return info.st_size


def _os_reason(path: str, exc: OSError) -> str:
    """Why ``path`` cannot be read: the path, what it is, the OS error and its errno name."""
    error = exc.strerror or str(exc)
    if exc.errno in errno.errorcode:
        error += f" ({errno.errorcode[exc.errno]})"
    if os.path.islink(path) and not os.path.exists(path):
        return f"cannot read {path}: dangling symbolic link to {os.readlink(path)}: {error}"
    if os.path.isdir(path):
        return f"cannot list folder {path}: {error}; the files in it were not read"
    return f"cannot read {path}: {error}"


def _from_raw(path: str, size: int, raw) -> Header:
    pixel = None
    if raw.pixel_tag_offset >= 0:
        if raw.deflated:
            pixel = PixelDataLocation(-1, -1, raw.pixel_value_length, -1, raw.pixel_tag)
        else:
            value_offset = raw.pixel_tag_offset + raw.pixel_header_length
            pixel = PixelDataLocation(raw.pixel_tag_offset, value_offset, raw.pixel_value_length,
                                      size - value_offset, raw.pixel_tag)
    return Header(path=path, size=size, row=raw.row, pixel=pixel, transfer_syntax=raw.transfer_syntax)


def is_image_storage(sop_class_uid: str) -> bool:
    """True for an image storage SOP class (its name ends in "Image Storage", retired ones included): every
    instance of it has pixel data."""
    name = UID(sop_class_uid).name if sop_class_uid else ""
    return "Image Storage" in name


def _check_data_set(path: str, size: int, elements: int, valid: int) -> None:
    """Raise DicomReadError when what follows the file meta is no data set.

    ``elements``: top-level elements after the file meta, pixel data included; ``valid``: those of a group above
    0002."""
    if not elements:
        raise DicomReadError(path, f"truncated or corrupt: {path} ends at byte {size} right after the file meta "
                                   "information: no data set")
    if not valid:
        raise DicomReadError(path, f"corrupt: the {elements} element(s) of {path} after its file meta information "
                                   "are all of group 0000 or 0002 (zero bytes, or no data set)")


def check_whole(header: Header) -> None:
    """Raise TruncatedFileError when the header shows that the file was cut after it (see the module docstring):
    the pixel data declares more bytes than the file holds, or an image storage class file has no pixel data.

    The header itself was read whole, so it stays usable (``scan`` keeps its metadata row)."""
    path, size, pixel = header.path, header.size, header.pixel
    if pixel is None:
        sop_class = next((header.row[c] for c in _SOP_CLASS_COLUMNS if header.row.get(c)), "")
        if is_image_storage(sop_class):
            raise TruncatedFileError(path, f"truncated: {path} ends at byte {size} on an element boundary, "
                                           f"without the PixelData (7FE0,0010) every {UID(sop_class).name} file "
                                           "has (cut short, or written without its pixels)")
        return
    if pixel.value_offset < 0:  # deflated: the pixel data is not inflated, its length cannot be checked
        return
    element = f"({pixel.tag >> 16:04X},{pixel.tag & 0xFFFF:04X})"
    name = "PixelData" if pixel.tag == 0x7FE00010 else "pixel data"
    if pixel.value_offset > size:
        raise TruncatedFileError(path, f"truncated: {path} ends at byte {size}, inside the header of {name} "
                                       f"{element} at byte {pixel.element_offset}")
    if pixel.value_length >= 0 and pixel.available < pixel.value_length:
        raise TruncatedFileError(path, f"truncated: {path} ends at byte {size}, inside {name} {element}: the "
                                       f"element declares {pixel.value_length} bytes from byte "
                                       f"{pixel.value_offset}, {pixel.available} are present "
                                       f"({pixel.value_length - pixel.available} missing)")
    if pixel.value_length < 0 and pixel.available < _ENCAPSULATED_MIN:
        raise TruncatedFileError(path, f"truncated: {path} ends at byte {size}, {pixel.available} bytes into "
                                       f"encapsulated {name} {element}, before the end of its first item header "
                                       f"({_ENCAPSULATED_MIN} bytes)")


def _read_with_pydicom(path: str, size: int) -> tuple[Header, int, int]:
    """The slow path: pydicom parses the header (unusual encodings). Returns the header, the number of top-level
    elements after the file meta and how many of them belong to a group above 0002."""
    try:
        with open(path, "rb") as fp:
            ds, pixel_at, pixel_head, inflated = _pydicom_header(fp)
    except OSError:
        raise
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise DicomReadError(path, f"truncated or corrupt header: {type(exc).__name__}: {exc}") from None
    if len(ds) == 0 and len(pixel_head) < 8:
        raise NotDicomError(path, "not DICOM: no data elements could be parsed")
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    deflated = inflated is not None
    _check_lengths(path, ds, size if inflated is None else len(inflated.inflated(0)), deflated)
    pixel = None
    if len(pixel_head) >= 8:
        group, element = struct.unpack_from("<HH", pixel_head)
        tag = group << 16 | element
        if deflated:
            length = -1
            if pixel_head[4:6].decode("latin-1") in LONG_VRS and len(pixel_head) >= 12:
                length = struct.unpack_from("<I", pixel_head, 8)[0]
            pixel = PixelDataLocation(-1, -1, -1 if length == UNDEFINED else length, -1,
                                      tag if tag in PIXEL_DATA_TAGS else 0x7FE00010)
        else:
            pixel = PixelDataLocation(pixel_at, -1, -1, size - pixel_at)
    elements = len(ds) + (pixel is not None)
    valid = sum(1 for tag in ds.keys() if tag >> 16 > 0x0002) + (pixel is not None)
    return Header(path=path, size=size, row=flatten(ds), pixel=pixel, transfer_syntax=syntax), elements, valid


def _check_lengths(path: str, ds: Dataset, size: int, deflated: bool) -> None:
    """Raise DicomReadError for a top-level element of pydicom's reading that declares more bytes than the data
    (``size`` bytes: the file, or the inflated data set) holds: pydicom reads what is there and goes on; the file
    is cut, or what was read is no data set."""
    for elem in ds.elements():
        if isinstance(elem, RawDataElement) and elem.length != UNDEFINED and elem.value_tell + elem.length > size:
            where = "the inflated data set" if deflated else path
            raise DicomReadError(path, f"truncated or corrupt data set: element ({elem.tag.group:04X},"
                                       f"{elem.tag.element:04X}) declares {elem.length} bytes from byte "
                                       f"{elem.value_tell}, {where} ends at byte {size}")


def _pydicom_header(fp: BinaryIO) -> tuple[Dataset, int, bytes, InflatedFile | None]:
    """pydicom's reading of an open file's header, up to its pixel data.

    Returns the data set, where reading stopped (the pixel data tag; in the inflated data set when deflated), the
    first 12 bytes there (fewer, or none, at the end of the data) and the inflated data set (None when not
    deflated). A deflated data set is inflated only as far as it is read (``pydicom.dcmread`` would inflate it
    whole)."""
    head = fp.read(134)
    meta_start = 132 if head[128:132] == b"DICM" else 0
    meta = None
    if head[meta_start:meta_start + 2] == b"\x02\x00":  # a file meta group: does it say the data set is deflated?
        try:
            fp.seek(meta_start)
            meta = read_dataset(fp, False, True, stop_when=lambda tag, vr, length: tag >> 16 != 0x0002)
        except Exception:  # an odd file meta: pydicom's dcmread below copes with more of them
            meta = None
    if meta is not None and str(meta.get("TransferSyntaxUID", "")) == DEFLATED:
        body = InflatedFile(fp)
        ds = read_dataset(body, False, True, stop_when=lambda tag, vr, length: tag in PIXEL_DATA_TAGS)
        ds.file_meta = FileMetaDataset(meta)
        at = body.tell()
        return ds, at, body.read(12), body
    fp.seek(0)
    ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
    at = fp.tell()
    return ds, at, fp.read(12), None
