"""The ``raw`` backend: uncompressed little/big endian pixel data read with ``readinto``.

The bytes are read straight into ``out`` at the Pixel Data value offset the header reader found (no
intermediate copy for the common layouts); 1-bit, YBR_FULL_422, planar and byte-swapped OW data go frame by
frame through a small buffer.
"""
from __future__ import annotations

import os
import struct
from functools import cache

import numpy as np

from voxelpipe.core.errors import DicomReadError
from voxelpipe.dicom.pixels.format import PixelFormat
from voxelpipe.dicom.pixels.job import DecodeJob
from voxelpipe.dicom.pixels.processing import correct_unused_bits, ybr_to_rgb
from voxelpipe.dicom.pixels.syntaxes import EXPLICIT_BE, IMPLICIT_LE, NATIVE_SYNTAXES, syntax_name

NAME = "raw"
COLOUR = True  # decodes colour images too
NEEDS_OFFSET = True  # reads at the Pixel Data value offset
PIXEL_DATA_TAG = 0x7FE00010
FLOAT_PIXEL_DATA_TAGS = (0x7FE00008, 0x7FE00009)
READ_PIECE = 1 << 30  # readinto in pieces of at most 1 GiB (some platforms cap a single read)


def is_available() -> bool:
    """Always True: the raw reader needs no library."""
    return True


@cache
def syntaxes() -> dict[str, str]:
    """Transfer syntax UID -> ``"readinto"`` for the uncompressed syntaxes."""
    return {uid: "readinto" for uid in sorted(NATIVE_SYNTAXES)}


def decode(job: DecodeJob) -> None:
    """Fill ``job.out`` with the stored values of ``job.frames``, bits corrected and YBR converted to RGB.

    Raises:
        DicomReadError: No Pixel Data element header at the offset, encapsulated or truncated data.
        OSError: The file cannot be read.
    """
    fmt, out = job.fmt, job.out
    little = fmt.transfer_syntax != EXPLICIT_BE
    implicit = fmt.transfer_syntax == IMPLICIT_LE
    with open(job.path, "rb", buffering=0) as fp:
        size = os.fstat(fp.fileno()).st_size
        offset = job.pixel_offset
        header = 8 if implicit else 12
        if offset < header:
            raise DicomReadError(job.path, f"pixel data offset {offset} is not after a pixel data element header")
        fp.seek(offset - header)
        element = fp.read(header)
        endian = "<" if little else ">"
        group, elem = struct.unpack(endian + "HH", element[:4])
        tag = group << 16 | elem
        if tag != PIXEL_DATA_TAG:
            what = "Float/Double Float Pixel Data is not integer pixel data" if tag in FLOAT_PIXEL_DATA_TAGS \
                else f"no Pixel Data element header before byte {offset} (found ({group:04X},{elem:04X}))"
            raise DicomReadError(job.path, what)
        vr = "" if implicit else element[4:6].decode("latin-1")
        length = struct.unpack(endian + "I", element[-4:])[0]
        if length == 0xFFFFFFFF:
            raise DicomReadError(job.path, f"undefined-length (encapsulated) pixel data in uncompressed "
                                           f"transfer syntax {syntax_name(fmt.transfer_syntax)}")
        frame_bytes = fmt.native_frame_bytes
        expected = int(np.ceil(frame_bytes * fmt.frames))
        if length < expected:
            raise DicomReadError(
                job.path, f"pixel data holds {length} bytes, {fmt.frames} frame(s) of {fmt.rows}x{fmt.columns}x"
                          f"{fmt.samples_per_pixel} at {fmt.bits_allocated} bits need {expected}")
        available = size - offset
        if available < expected:
            raise DicomReadError(
                job.path, f"truncated pixel data: {fmt.frames} frame(s) need {expected} bytes after byte "
                          f"{offset}, the file has {available}")
        swap_ow = not little and fmt.bits_allocated == 8 and vr == "OW"
        simple = (fmt.bits_allocated > 1 and fmt.photometric != "YBR_FULL_422" and not swap_ow
                  and (fmt.samples_per_pixel == 1 or fmt.planar_configuration == 0))
        if simple:
            _read_frames(fp, job, int(frame_bytes))
            if not little and out.itemsize > 1:
                out.byteswap(inplace=True)
        else:
            for k, index in enumerate(job.frames):
                flat = _read_unusual_frame(fp, job, index, frame_bytes, swap_ow)
                _place(flat, fmt, out[k])
    correct_unused_bits(out, fmt)
    ybr_to_rgb(out, fmt, job.path)


def _read_frames(fp, job: DecodeJob, frame_bytes: int) -> None:
    """readinto ``out`` directly: one read for each run of consecutive frames."""
    out, frames = job.out, job.frames
    k = 0
    while k < len(frames):
        end = k + 1
        while end < len(frames) and frames[end] == frames[end - 1] + 1:
            end += 1
        target = out[k:end]
        if target.flags.c_contiguous:
            _readinto(fp, job, job.pixel_offset + frames[k] * frame_bytes, target)
        else:
            buffer = np.empty(target.shape, target.dtype)
            _readinto(fp, job, job.pixel_offset + frames[k] * frame_bytes, buffer)
            target[...] = buffer
        k = end


def _readinto(fp, job: DecodeJob, position: int, target: np.ndarray) -> None:
    view = memoryview(target.reshape(-1).view(np.uint8))
    fp.seek(position)
    done = 0
    while done < len(view):
        got = fp.readinto(view[done:done + READ_PIECE])
        if not got:
            raise DicomReadError(job.path, f"truncated pixel data: read {done} of {len(view)} bytes at byte {position}")
        done += got


def _read_unusual_frame(fp, job: DecodeJob, index: int, frame_bytes: float, swap_ow: bool) -> np.ndarray:
    """One frame as a flat array of stored values, for 1-bit, YBR_FULL_422, planar and byte-swapped OW data."""
    fmt = job.fmt
    if fmt.bits_allocated == 1:
        first_bit = index * fmt.pixels_per_frame
        start = first_bit // 8
        skip = first_bit - start * 8
        count = (skip + fmt.pixels_per_frame + 7) // 8
        packed = _read_bytes(fp, job, job.pixel_offset + start, count)
        bits = np.unpackbits(np.frombuffer(packed, np.uint8), bitorder="little")
        return bits[skip:skip + fmt.pixels_per_frame]
    frame_bytes = int(frame_bytes)
    dtype = fmt.stored_dtype
    if swap_ow:  # 8-bit data in OW, big endian: bytes swapped in pairs (pydicom's 'be_swap_ow')
        odd = index % 2 if frame_bytes % 2 else 0
        start = index * frame_bytes - odd
        raw = _read_bytes(fp, job, job.pixel_offset + start, frame_bytes + frame_bytes % 2)
        swapped = np.frombuffer(raw, "<u2").byteswap().view(np.uint8)
        flat = swapped[odd:odd + frame_bytes].view(dtype)
    else:
        raw = _read_bytes(fp, job, job.pixel_offset + index * frame_bytes, frame_bytes)
        flat = np.frombuffer(raw, dtype.newbyteorder("<" if fmt.transfer_syntax != EXPLICIT_BE else ">"))
    if fmt.photometric == "YBR_FULL_422":  # Y1 Y2 B R -> Y1 B R Y2 B R
        expanded = np.empty(flat.shape[0] // 2 * 3, dtype=flat.dtype)
        expanded[::6] = flat[::4]
        expanded[3::6] = flat[1::4]
        expanded[1::6], expanded[4::6] = flat[2::4], flat[2::4]
        expanded[2::6], expanded[5::6] = flat[3::4], flat[3::4]
        flat = expanded
    return flat


def _read_bytes(fp, job: DecodeJob, position: int, count: int) -> bytes:
    fp.seek(position)
    data = fp.read(count)
    if len(data) < count:
        raise DicomReadError(job.path, f"truncated pixel data: {count} bytes needed at byte {position}, "
                                       f"{len(data)} present")
    return data


def _place(flat: np.ndarray, fmt: PixelFormat, target: np.ndarray) -> None:
    """Copy one flat frame into ``target`` (frame_shape), honouring the planar configuration."""
    if fmt.samples_per_pixel > 1 and fmt.planar_configuration == 1:
        target[...] = flat.reshape(fmt.samples_per_pixel, fmt.rows, fmt.columns).transpose(1, 2, 0)
    else:
        target[...] = flat.reshape(target.shape)


__all__ = ["COLOUR", "NAME", "NEEDS_OFFSET", "PIXEL_DATA_TAG", "decode", "is_available", "syntaxes"]
