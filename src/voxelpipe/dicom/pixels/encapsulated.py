"""Reading the encoded frames of encapsulated (compressed) pixel data from a file."""
from __future__ import annotations

import os
import struct
from collections.abc import Iterator

import pydicom
from pydicom.encaps import generate_frames, get_frame

from voxelpipe.core.errors import DicomReadError
from voxelpipe.dicom.pixels.job import DecodeJob

ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000) little endian: the first item of encapsulated pixel data
SEQUENCE_DELIMITER_TAG = b"\xfe\xff\xdd\xe0"  # (FFFE,E0DD): the end of encapsulated pixel data


def encoded_frames(job: DecodeJob) -> Iterator[tuple[int, bytes]]:
    """The encoded frames ``job.frames`` of the file, read at ``job.pixel_offset``.

    Yields:
        (position in ``job.out``, encoded frame bytes), in the order of ``job.frames``.

    Raises:
        DicomReadError: No item tag at the offset, fewer frames than expected, corrupt or truncated data.
    """
    fmt = job.fmt
    extended = None
    with open(job.path, "rb") as fp:
        if fmt.frames > 1 and fmt.has_extended_offsets:
            extended = extended_offsets(job.path)
        fp.seek(job.pixel_offset)
        if fp.read(4) != ITEM_TAG:
            raise DicomReadError(job.path, f"encapsulated pixel data should start with an item tag at byte "
                                           f"{job.pixel_offset}")
        fp.seek(job.pixel_offset)
        try:
            if job.frames == list(range(fmt.frames)):
                generator = generate_frames(fp, number_of_frames=fmt.frames, extended_offsets=extended)
                for k in range(fmt.frames):
                    yield k, next(generator)
            else:
                for k, index in enumerate(job.frames):
                    fp.seek(job.pixel_offset)
                    yield k, get_frame(fp, index, number_of_frames=fmt.frames, extended_offsets=extended)
        except StopIteration:
            raise DicomReadError(job.path, f"encapsulated pixel data holds fewer than {fmt.frames} frames") from None
        except (ValueError, struct.error, EOFError) as exc:
            raise DicomReadError(job.path, f"corrupt or truncated encapsulated pixel data: {exc}") from None


def truncation(path: str, pixel_offset: int) -> str | None:
    """Why the encapsulated pixel data of ``path`` at ``pixel_offset`` is cut short, or None when every item
    it declares is present in the file (only the item headers are read).

    Returns:
        ``"truncated pixel data: ..."`` naming the bytes of encapsulated data present and the item cut short.
    """
    if pixel_offset < 0:
        return None
    with open(path, "rb") as fp:
        size = os.fstat(fp.fileno()).st_size
        present = size - pixel_offset
        pos, index = pixel_offset, 0
        while pos < size:
            fp.seek(pos)
            head = fp.read(8)
            if len(head) < 8:
                return (f"truncated pixel data: the encapsulated Pixel Data (7FE0,0010) holds {present} bytes from "
                        f"byte {pixel_offset}; the header of item {index} at byte {pos} is cut short")
            if head[:4] == SEQUENCE_DELIMITER_TAG:
                return None
            if head[:4] != ITEM_TAG:
                return None  # not an item: corrupt rather than cut short, the decoder says so
            length = struct.unpack_from("<I", head, 4)[0]
            if pos + 8 + length > size:
                return (f"truncated pixel data: the encapsulated Pixel Data (7FE0,0010) holds {present} bytes from "
                        f"byte {pixel_offset}; item {index} at byte {pos} declares {length} bytes, "
                        f"{size - pos - 8} present")
            pos += 8 + length
            index += 1
    return None


def extended_offsets(path: str):
    """(ExtendedOffsetTable, ExtendedOffsetTableLengths) of the file, or None when it has not both."""
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        return ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths
    return None


__all__ = ["encoded_frames", "extended_offsets", "truncation"]
