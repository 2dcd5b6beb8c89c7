"""Reading the encoded frames of encapsulated (compressed) pixel data from a file."""
from __future__ import annotations

import struct
from collections.abc import Iterator

import pydicom
from pydicom.encaps import generate_frames, get_frame

from voxelpipe.core.errors import DicomReadError
from voxelpipe.dicom.pixels.job import DecodeJob

ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000) little endian: the first item of encapsulated pixel data


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


def extended_offsets(path: str):
    """(ExtendedOffsetTable, ExtendedOffsetTableLengths) of the file, or None when it has not both."""
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        return ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths
    return None


__all__ = ["encoded_frames", "extended_offsets"]
