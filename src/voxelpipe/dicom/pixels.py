"""Decoding a DICOM file's pixel data straight into a caller-provided buffer (a view into a chunk slab).

Result = pydicom's ``Dataset.pixel_array`` (pydicom 3 defaults), stored values, no rescale:
frames ``(n_frames, rows, columns)``, or ``(n_frames, rows, columns, samples)`` for colour (samples last, RGB
after pydicom's default YBR_FULL / YBR_FULL_422 -> RGB conversion); dtype from BitsAllocated and
PixelRepresentation; BitsStored applied as pydicom does (unused high bits cleared for unsigned values and
sign-extended for signed ones; JPEG-LS signed data sign-corrected from its codestream precision).

Backends, tried in this order for each transfer syntax (see ``DECODERS`` / ``available_decoders()``):

* ``raw``: uncompressed little/big endian. Reads the bytes with ``readinto`` straight into ``out`` at the
  PixelData value offset the header reader found (no intermediate copy for the common layouts).
* ``imagecodecs``: JPEG lossless (libjpeg-turbo), JPEG-LS (CharLS) and RLE, for one-sample (monochrome)
  images; 4-7x faster than pylibjpeg here and releases the GIL. Proven pixel-identical to pydicom by
  ``tests/test_pixels.py`` on pydicom's and pydicom-data's files. Used only where imagecodecs is installed.
* ``pydicom``: everything else pydicom can decode (JPEG baseline/extended, JPEG 2000 / HTJ2K, colour images
  in compressed syntaxes, deflated files), through its own plugins (pylibjpeg ...).

JPEG baseline/extended are lossy: libjpeg-turbo and pylibjpeg-libjpeg give different pixels (IDCT,
upsampling), so they stay on pydicom. JPEG 2000: imagecodecs uses the same OpenJPEG and is not faster here.
"""
from __future__ import annotations

import logging
import os
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from voxelpipe.core.errors import BadTagValueError, DicomReadError, InputError, MissingTagError
from voxelpipe.dicom.flatten import DUPLICATE_PREFIX, column_name

# Transfer syntaxes
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEGLS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEGLS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG2000 = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

NATIVE_SYNTAXES = frozenset({IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE})
JPEG_SYNTAXES = frozenset({JPEG_BASELINE, JPEG_EXTENDED, JPEG_LOSSLESS, JPEG_LOSSLESS_SV1})
JPEGLS_SYNTAXES = frozenset({JPEGLS_LOSSLESS, JPEGLS_NEAR_LOSSLESS})
JPEG2000_SYNTAXES = frozenset({JPEG2000_LOSSLESS, JPEG2000, HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL, HTJ2K})

# imagecodecs: transfer syntax -> decode function, for the syntaxes proven identical to pydicom (monochrome).
IMAGECODECS_FUNCTIONS = {
    JPEG_LOSSLESS: "jpeg8_decode",
    JPEG_LOSSLESS_SV1: "jpeg8_decode",
    JPEGLS_LOSSLESS: "jpegls_decode",
    JPEGLS_NEAR_LOSSLESS: "jpegls_decode",
    RLE_LOSSLESS: "dicomrle_decode",
}
IMAGECODECS_MIN_VERSION = (2024, 1)

PIXEL_DATA_TAG = 0x7FE00010
_EXTENDED_OFFSETS = column_name(0x7FE00001)
_YBR = ("YBR_FULL", "YBR_FULL_422")
_LOG = logging.getLogger(__name__)
_READ_PIECE = 1 << 30  # readinto in pieces of at most 1 GiB (some platforms cap a single read)


def syntax_name(uid: str) -> str:
    """``"<uid> (<name>)"`` for messages."""
    from pydicom.uid import UID

    name = UID(uid).name if uid else ""
    return f"{uid} ({name})" if name and name != uid else (uid or "(no transfer syntax)")


# ----------------------------------------------------------------------------------------------------------
# pixel format
# ----------------------------------------------------------------------------------------------------------
_TAGS = {
    "rows": 0x00280010, "columns": 0x00280011, "frames": 0x00280008, "samples_per_pixel": 0x00280002,
    "bits_allocated": 0x00280100, "bits_stored": 0x00280101, "high_bit": 0x00280102,
    "pixel_representation": 0x00280103, "photometric": 0x00280004, "planar_configuration": 0x00280006,
}
_COLUMNS = {name: column_name(tag) for name, tag in _TAGS.items()}


@dataclass(frozen=True)
class PixelFormat:
    """The Image Pixel module of one file: what its decoded frames look like."""

    rows: int
    columns: int
    frames: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    high_bit: int
    pixel_representation: int
    photometric: str
    planar_configuration: int
    transfer_syntax: str
    has_extended_offsets: bool = False  # (7FE0,0001) Extended Offset Table present (encapsulated multi-frame)

    @classmethod
    def from_row(cls, row: dict[str, str], transfer_syntax: str, path: str = "") -> PixelFormat:
        """Read the format from a flattened header row; raise MissingTagError / BadTagValueError naming ``path``."""
        def cell(name: str) -> str:
            text = row.get(_COLUMNS[name], "").strip()
            if text.startswith(DUPLICATE_PREFIX):
                raise BadTagValueError(path, _COLUMNS[name], text, "the tag appears more than once")
            return text

        def integer(name: str, default: int | None = None) -> int:
            text = cell(name)
            if not text:
                if default is None:
                    raise MissingTagError(path, [_COLUMNS[name]])
                return default
            try:
                return int(text)
            except ValueError:
                raise BadTagValueError(path, _COLUMNS[name], text, "not an integer") from None

        samples = integer("samples_per_pixel")
        frames = integer("frames", 1)
        photometric = cell("photometric")
        if not photometric:
            raise MissingTagError(path, [_COLUMNS["photometric"]])
        fmt = cls(
            rows=integer("rows"), columns=integer("columns"), frames=frames if frames > 0 else 1,
            samples_per_pixel=samples, bits_allocated=integer("bits_allocated"),
            bits_stored=integer("bits_stored"), high_bit=integer("high_bit", -1),
            pixel_representation=integer("pixel_representation"), photometric=photometric,
            planar_configuration=integer("planar_configuration", None if samples > 1 else 0),
            transfer_syntax=transfer_syntax, has_extended_offsets=_EXTENDED_OFFSETS in row,
        )
        for name in ("rows", "columns", "samples_per_pixel"):
            if getattr(fmt, name) < 1:
                raise BadTagValueError(path, _COLUMNS[name], getattr(fmt, name), "must be at least 1")
        if fmt.bits_allocated not in (1, 8, 16, 32):
            raise BadTagValueError(path, _COLUMNS["bits_allocated"], fmt.bits_allocated,
                                   "integer pixel data needs 1, 8, 16 or 32")
        if not 1 <= fmt.bits_stored <= fmt.bits_allocated:
            raise BadTagValueError(path, _COLUMNS["bits_stored"], fmt.bits_stored,
                                   f"must be 1..BitsAllocated ({fmt.bits_allocated})")
        if fmt.pixel_representation not in (0, 1):
            raise BadTagValueError(path, _COLUMNS["pixel_representation"], fmt.pixel_representation,
                                   "must be 0 or 1")
        return fmt

    @property
    def stored_dtype(self) -> np.dtype:
        """Native dtype of the stored values: (u)int8/16/32 from BitsAllocated, PixelRepresentation; 1-bit: uint8."""
        if self.bits_allocated == 1:
            return np.dtype(np.uint8)
        if self.bits_allocated not in (8, 16, 32):
            raise InputError(f"BitsAllocated {self.bits_allocated} is not integer pixel data (1, 8, 16, 32)")
        return np.dtype(f"{'ui'[self.pixel_representation]}{self.bits_allocated // 8}")

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """``(rows, columns)``, or ``(rows, columns, samples)`` for colour."""
        if self.samples_per_pixel == 1:
            return (self.rows, self.columns)
        return (self.rows, self.columns, self.samples_per_pixel)

    @property
    def pixels_per_frame(self) -> int:
        return self.rows * self.columns * self.samples_per_pixel

    @property
    def native_frame_bytes(self) -> float:
        """Bytes of one uncompressed frame in the file (fractional for unaligned 1-bit frames)."""
        if self.bits_allocated == 1:
            return self.pixels_per_frame / 8
        length = self.pixels_per_frame * (self.bits_allocated // 8)
        if self.photometric == "YBR_FULL_422":
            length = length // 3 * 2
        return length


# ----------------------------------------------------------------------------------------------------------
# backends
# ----------------------------------------------------------------------------------------------------------
@dataclass
class _Job:
    path: str
    fmt: PixelFormat
    out: np.ndarray
    pixel_offset: int
    frames: list[int]


class _Fallback(Exception):
    """The fast backend declines this file (unexpected codestream); decode it with pydicom instead."""


@dataclass(frozen=True)
class Decoder:
    """A decoding backend: which syntaxes it decodes, whether it can run here, and its decode function."""

    name: str
    syntaxes: Callable[[], dict[str, str]]  # transfer syntax UID -> what decodes it (for logging)
    decode: Callable[[_Job], None]
    colour: bool = True  # False: one-sample images only

    def is_available(self, transfer_syntax: str, samples_per_pixel: int = 1) -> bool:
        """True when this backend can decode ``transfer_syntax`` on this machine."""
        if samples_per_pixel > 1 and not self.colour:
            return False
        return transfer_syntax in self.syntaxes()


@cache
def _raw_syntaxes() -> dict[str, str]:
    return {uid: "readinto" for uid in sorted(NATIVE_SYNTAXES)}


@cache
def _imagecodecs():
    """The imagecodecs module when installed and recent enough, else None (imported on first use)."""
    try:
        import imagecodecs
    except ImportError:
        return None
    try:
        version = tuple(int(p) for p in imagecodecs.__version__.split(".")[:2])
    except ValueError:
        return None
    return imagecodecs if version >= IMAGECODECS_MIN_VERSION else None


@cache
def _imagecodecs_syntaxes() -> dict[str, str]:
    module = _imagecodecs()
    if module is None:
        return {}
    codecs = {"jpeg8_decode": "JPEG8", "jpegls_decode": "JPEGLS", "dicomrle_decode": "DICOMRLE"}
    found = {}
    for uid, function in IMAGECODECS_FUNCTIONS.items():
        codec = getattr(module, codecs[function], None)
        if codec is None or not getattr(codec, "available", False) or not hasattr(module, function):
            continue
        if function == "jpeg8_decode" and getattr(codec, "legacy", True):
            continue  # lossless JPEG needs libjpeg-turbo >= 3, not the legacy libjpeg build
        found[uid] = f"{module.__version__} {function}"
    return found


@cache
def _pydicom_syntaxes() -> dict[str, str]:
    from pydicom.pixels import get_decoder
    from pydicom.uid import AllTransferSyntaxes

    found = {}
    for uid in AllTransferSyntaxes:
        try:
            decoder = get_decoder(uid)
        except NotImplementedError:
            continue
        if decoder.is_available:
            plugins = ", ".join(decoder.available_plugins) if decoder.is_encapsulated else "native"
            found[str(uid)] = plugins
    return found


# ----------------------------------------------------------------------------------------------------------
# raw (uncompressed) pixel data
# ----------------------------------------------------------------------------------------------------------
def _decode_raw(job: _Job) -> None:
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
            what = "Float/Double Float Pixel Data is not integer pixel data" if tag in (0x7FE00008, 0x7FE00009) \
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
    _correct_bits(out, fmt)
    _to_rgb(out, fmt, job.path)


def _read_frames(fp, job: _Job, frame_bytes: int) -> None:
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


def _readinto(fp, job: _Job, position: int, target: np.ndarray) -> None:
    view = memoryview(target.reshape(-1).view(np.uint8))
    fp.seek(position)
    done = 0
    while done < len(view):
        got = fp.readinto(view[done:done + _READ_PIECE])
        if not got:
            raise DicomReadError(job.path, f"truncated pixel data: read {done} of {len(view)} bytes at byte {position}")
        done += got


def _read_unusual_frame(fp, job: _Job, index: int, frame_bytes: float, swap_ow: bool) -> np.ndarray:
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


def _read_bytes(fp, job: _Job, position: int, count: int) -> bytes:
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


def _correct_bits(arr: np.ndarray, fmt: PixelFormat) -> None:
    """pydicom's 'correct_unused_bits': clear the unused high bits (unsigned) or sign-extend (signed), in place."""
    if fmt.bits_allocated <= fmt.bits_stored or fmt.bits_allocated == 1:
        return
    if fmt.pixel_representation == 0:
        np.bitwise_and(arr, arr.dtype.type((1 << fmt.bits_stored) - 1), out=arr)
    else:
        shift = fmt.bits_allocated - fmt.bits_stored
        np.left_shift(arr, shift, out=arr)
        np.right_shift(arr, shift, out=arr)


def _to_rgb(arr: np.ndarray, fmt: PixelFormat, path: str) -> None:
    """pydicom's default processing: YBR_FULL / YBR_FULL_422 colour -> RGB, in place."""
    if fmt.samples_per_pixel != 3 or fmt.photometric not in _YBR:
        return
    from pydicom.pixels.processing import convert_color_space

    try:
        arr[...] = convert_color_space(arr, "YBR_FULL", "RGB")
    except (ValueError, NotImplementedError) as exc:
        raise DicomReadError(path, f"cannot convert {fmt.photometric} to RGB: {exc}") from None


# ----------------------------------------------------------------------------------------------------------
# encapsulated pixel data, decoded by imagecodecs
# ----------------------------------------------------------------------------------------------------------
def _decode_imagecodecs(job: _Job) -> None:
    fmt = job.fmt
    module = _imagecodecs()
    function = IMAGECODECS_FUNCTIONS.get(fmt.transfer_syntax)
    if module is None or function is None or fmt.samples_per_pixel != 1:
        raise _Fallback("imagecodecs cannot decode this syntax")
    decode = getattr(module, function)
    for k, data in _encoded_frames(job):
        try:
            if fmt.transfer_syntax == RLE_LOSSLESS:
                _rle_frame(decode, data, fmt, job.out[k])
            elif fmt.transfer_syntax in JPEGLS_SYNTAXES:
                _jpegls_frame(decode, data, fmt, job.out[k])
            else:
                _jpeg_lossless_frame(decode, data, fmt, job.out[k])
        except _Fallback:
            raise
        except Exception as exc:  # imagecodecs raises its own error types per codec
            raise _Fallback(f"imagecodecs {function}: {type(exc).__name__}: {exc}") from None


def _encoded_frames(job: _Job) -> Iterator[tuple[int, bytes]]:
    """(position in ``out``, encoded frame) for the requested frames, read from the file."""
    from pydicom.encaps import generate_frames, get_frame

    fmt = job.fmt
    extended = None
    with open(job.path, "rb") as fp:
        if fmt.frames > 1 and fmt.has_extended_offsets:
            extended = _extended_offsets(job.path)
        fp.seek(job.pixel_offset)
        if fp.read(4) != b"\xfe\xff\x00\xe0":
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


def _extended_offsets(path: str):
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        return ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths
    return None


def _rle_frame(decode, data: bytes, fmt: PixelFormat, target: np.ndarray) -> None:
    if len(data) < 64:
        raise _Fallback("RLE header too short")
    segments = struct.unpack_from("<I", data)[0]
    if segments != fmt.samples_per_pixel * target.itemsize or fmt.bits_allocated == 1:
        raise _Fallback(f"RLE frame has {segments} segments")
    dtype = target.dtype.newbyteorder("=")
    if target.flags.c_contiguous:
        decoded = decode(data, dtype, out=memoryview(target.reshape(-1).view(np.uint8)))
        if len(decoded) != target.nbytes:
            raise _Fallback("RLE frame decoded to an unexpected size")
    else:
        decoded = decode(data, dtype)
        if len(decoded) != target.nbytes:
            raise _Fallback("RLE frame decoded to an unexpected size")
        target[...] = np.frombuffer(decoded, dtype).reshape(target.shape)
    _correct_bits(target, fmt)


def _jpeg_lossless_frame(decode, data: bytes, fmt: PixelFormat, target: np.ndarray) -> None:
    # pydicom reads libjpeg's output bytes as the stored dtype: same bytes as imagecodecs' unsigned samples
    unsigned = target.view(target.dtype.str.replace("i", "u"))
    decoded = decode(data, out=unsigned) if target.flags.c_contiguous else decode(data)
    if decoded.shape != target.shape or decoded.dtype.itemsize != target.itemsize or decoded.dtype.kind != "u":
        raise _Fallback(f"JPEG frame decoded to {decoded.dtype} {decoded.shape}")
    if not np.shares_memory(decoded, target):
        unsigned[...] = decoded
    _correct_bits(target, fmt)


def _jpegls_frame(decode, data: bytes, fmt: PixelFormat, target: np.ndarray) -> None:
    precision = _jpeg_precision(data, (0xF7,))
    if precision is None:
        raise _Fallback("no JPEG-LS frame header")
    itemsize = 1 if precision <= 8 else 2
    if itemsize == target.itemsize and target.flags.c_contiguous:
        unsigned = target.view(target.dtype.str.replace("i", "u"))
        decoded = decode(data, out=unsigned)
    else:
        decoded = decode(data)
    if decoded.shape != target.shape or decoded.dtype.itemsize != itemsize or decoded.dtype.kind != "u":
        raise _Fallback(f"JPEG-LS frame decoded to {decoded.dtype} {decoded.shape}")
    if not np.shares_memory(decoded, target):
        # pydicom reads the decoded samples with the signedness of PixelRepresentation, then widens
        as_stored = decoded.view(f"{'ui'[fmt.pixel_representation]}{itemsize}")
        np.copyto(target, as_stored, casting="unsafe")
    if fmt.pixel_representation == 1:  # pydicom's JPEG-LS sign correction
        shift = 8 * target.itemsize - precision
        if shift > 0:
            np.left_shift(target, shift, out=target)
            np.right_shift(target, shift, out=target)


def _jpeg_precision(data: bytes, markers: tuple[int, ...]) -> int | None:
    """Sample precision from the first frame header with one of ``markers`` (0xF7: JPEG-LS SOF55)."""
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    end = len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if marker in markers:
            return data[pos + 4] if pos + 4 < end else None
        if marker == 0xDA:  # start of scan before a frame header
            return None
        pos += 2 + length
    return None


# ----------------------------------------------------------------------------------------------------------
# pydicom (its own decoding, plugins included)
# ----------------------------------------------------------------------------------------------------------
def _decode_pydicom(job: _Job) -> None:
    import pydicom
    from pydicom.pixels import pixel_array

    fmt, out = job.fmt, job.out
    try:
        if job.frames == list(range(fmt.frames)):
            arrays = [pixel_array(pydicom.dcmread(job.path))]  # = Dataset.pixel_array
            shape = out.shape
        else:
            # frame by frame; from the path (group 0028 and the wanted frame only) unless deflated
            source = pydicom.dcmread(job.path) if fmt.transfer_syntax == DEFLATED_LE else job.path
            arrays = [pixel_array(source, index=i) for i in job.frames]
            shape = fmt.frame_shape
    except Exception as exc:  # pydicom and its plugins raise many types
        raise DicomReadError(job.path, f"cannot decode pixel data ({syntax_name(fmt.transfer_syntax)}) with "
                                       f"pydicom: {type(exc).__name__}: {exc}") from None
    for k, arr in enumerate(arrays):
        if arr.dtype.kind not in "ui" or arr.dtype.itemsize != out.itemsize:
            raise DicomReadError(job.path, f"pydicom decoded {arr.dtype} pixels, expected {out.dtype}")
        if arr.size != int(np.prod(shape)):
            raise DicomReadError(job.path, f"pixel data size mismatch: pydicom decoded shape {arr.shape}, "
                                           f"expected {shape}")
        target = out if len(arrays) == 1 and shape == out.shape else out[k]
        np.copyto(target, arr.reshape(target.shape), casting="unsafe")


# ----------------------------------------------------------------------------------------------------------
# registry and entry points
# ----------------------------------------------------------------------------------------------------------
DECODERS: dict[str, Decoder] = {
    "raw": Decoder("raw", _raw_syntaxes, _decode_raw),
    "imagecodecs": Decoder("imagecodecs", _imagecodecs_syntaxes, _decode_imagecodecs, colour=False),
    "pydicom": Decoder("pydicom", _pydicom_syntaxes, _decode_pydicom),
}


def decoder_for(transfer_syntax: str, samples_per_pixel: int = 1) -> str:
    """Name of the backend that decodes ``transfer_syntax`` here: "raw", "imagecodecs" or "pydicom".

    Raise InputError naming the UID when no backend can decode it.
    """
    for name, decoder in DECODERS.items():
        if decoder.is_available(transfer_syntax, samples_per_pixel):
            return name
    if not transfer_syntax:
        raise InputError("no transfer syntax (file meta information missing): cannot decode pixel data")
    raise InputError(f"unsupported transfer syntax {syntax_name(transfer_syntax)}: no pixel data decoder "
                     f"installed for it")


def available_decoders() -> dict[str, str]:
    """``{"<uid> (<name>)": "<backend>: <library>"}`` for every transfer syntax decodable here (for logs)."""
    table = {}
    for _, decoder in DECODERS.items():
        for uid, what in decoder.syntaxes().items():
            table.setdefault(syntax_name(uid), f"{decoder.name}: {what}")
    return table


def decode_into(path: str, fmt: PixelFormat, out: np.ndarray, pixel_offset: int = -1,
                frames: Sequence[int] | None = None, *, backend: str | None = None) -> None:
    """Fill ``out`` with the stored values of ``frames`` (default all) of the file at ``path``.

    ``out``: shape ``(n_frames, *fmt.frame_shape)`` = (frame, row, column[, sample]), dtype ``fmt.stored_dtype``,
    writeable (a view into the caller's slab). Values equal pydicom's ``pixel_array`` (no rescale).
    ``pixel_offset``: file offset of the PixelData value (``read_header(path).pixel.value_offset``); -1 finds it.
    ``backend``: force one of ``DECODERS`` (tests, benchmarks); default: ``decoder_for``'s choice.
    Raise DicomReadError naming the file and the reason on any failure; ``out`` is then undefined.
    """
    path = os.fspath(path)
    wanted = list(range(fmt.frames)) if frames is None else [int(i) for i in frames]
    _check_out(fmt, out, wanted)
    try:
        name = backend or decoder_for(fmt.transfer_syntax, fmt.samples_per_pixel)
        if name not in DECODERS:
            raise InputError(f"unknown pixel decoder {name!r}; known: {', '.join(DECODERS)}")
        if not DECODERS[name].is_available(fmt.transfer_syntax, fmt.samples_per_pixel):
            raise InputError(f"pixel decoder {name!r} cannot decode {syntax_name(fmt.transfer_syntax)} "
                             f"with {fmt.samples_per_pixel} sample(s) per pixel here")
    except InputError as exc:
        raise DicomReadError(path, str(exc)) from None
    if name in ("raw", "imagecodecs") and pixel_offset < 0:
        pixel_offset = _find_pixel_offset(path)
    job = _Job(path, fmt, out, pixel_offset, wanted)
    try:
        DECODERS[name].decode(job)
    except _Fallback as why:
        if backend is not None:
            raise DicomReadError(path, f"pixel decoder {name!r} cannot decode this file's "
                                       f"{syntax_name(fmt.transfer_syntax)} data: {why}") from None
        _LOG.debug("%s: %s; decoding with pydicom instead", path, why)
        _decode_pydicom(job)
    except OSError as exc:
        raise DicomReadError(path, f"cannot read pixel data: {exc.strerror or exc}") from None


def _find_pixel_offset(path: str) -> int:
    from voxelpipe.dicom.files import read_header

    header = read_header(path)
    if header.pixel is None or header.pixel.value_offset < 0:
        raise DicomReadError(path, "no addressable Pixel Data element")
    return header.pixel.value_offset


def _check_out(fmt: PixelFormat, out: np.ndarray, frames: list[int]) -> None:
    if not isinstance(out, np.ndarray):
        raise InputError(f"out must be a numpy array, not {type(out).__name__}")
    expected = (len(frames), *fmt.frame_shape)
    if out.shape != expected:
        raise InputError(f"out has shape {out.shape}, expected {expected} (frames, rows, columns[, samples])")
    dtype = fmt.stored_dtype
    if out.dtype != dtype:
        raise InputError(f"out has dtype {out.dtype}, expected {dtype} (native byte order)")
    if not out.flags.writeable:
        raise InputError("out is read-only")
    bad = [i for i in frames if not 0 <= i < fmt.frames]
    if bad:
        raise InputError(f"frame indices {bad[:5]} out of range for {fmt.frames} frame(s)")


if sys.byteorder != "little":  # pragma: no cover - every supported platform is little endian
    raise ImportError("voxelpipe.dicom.pixels assumes a little-endian machine")
