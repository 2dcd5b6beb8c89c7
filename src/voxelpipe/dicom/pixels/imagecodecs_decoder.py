"""The ``imagecodecs`` backend: JPEG lossless (libjpeg-turbo), JPEG-LS (CharLS) and RLE, monochrome only.

4-7x faster than pylibjpeg here, and it releases the GIL. Proven pixel-identical to pydicom by
``tests/test_pixels.py`` on pydicom's and pydicom-data's files; used only where imagecodecs is installed (and
at least ``IMAGECODECS_MIN_VERSION``). JPEG baseline/extended are lossy: libjpeg-turbo and pylibjpeg-libjpeg give
different pixels (IDCT, upsampling), so they stay on pydicom; so does JPEG 2000 (imagecodecs uses the same
OpenJPEG and is not faster here). A frame it cannot decode exactly raises :class:`DecoderDeclined`.
"""
from __future__ import annotations

import struct
from functools import cache

import numpy as np

from voxelpipe.dicom.pixels.encapsulated import encoded_frames
from voxelpipe.dicom.pixels.format import PixelFormat
from voxelpipe.dicom.pixels.job import DecodeJob, DecoderDeclined
from voxelpipe.dicom.pixels.processing import correct_unused_bits
from voxelpipe.dicom.pixels.syntaxes import (
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEGLS_LOSSLESS,
    JPEGLS_NEAR_LOSSLESS,
    JPEGLS_SYNTAXES,
    RLE_LOSSLESS,
)

NAME = "imagecodecs"
COLOUR = False  # one-sample images only
NEEDS_OFFSET = True  # reads the encapsulated frames at the Pixel Data value offset

# transfer syntax -> decode function, for the syntaxes proven identical to pydicom (monochrome)
IMAGECODECS_FUNCTIONS = {
    JPEG_LOSSLESS: "jpeg8_decode",
    JPEG_LOSSLESS_SV1: "jpeg8_decode",
    JPEGLS_LOSSLESS: "jpegls_decode",
    JPEGLS_NEAR_LOSSLESS: "jpegls_decode",
    RLE_LOSSLESS: "dicomrle_decode",
}
IMAGECODECS_MIN_VERSION = (2024, 1)
CODECS = {"jpeg8_decode": "JPEG8", "jpegls_decode": "JPEGLS", "dicomrle_decode": "DICOMRLE"}
JPEGLS_SOF = 0xF7  # JPEG-LS frame header marker (SOF55)


@cache
def library():
    """The imagecodecs module when installed and recent enough, else None (imported on first use)."""
    try:
        # optional extra with many native libraries: imported only when a file needs it
        import imagecodecs
    except ImportError:
        return None
    try:
        version = tuple(int(p) for p in imagecodecs.__version__.split(".")[:2])
    except ValueError:
        return None
    return imagecodecs if version >= IMAGECODECS_MIN_VERSION else None


def is_available() -> bool:
    """True when imagecodecs (at least ``IMAGECODECS_MIN_VERSION``) is installed."""
    return library() is not None


@cache
def syntaxes() -> dict[str, str]:
    """Transfer syntax UID -> ``"<imagecodecs version> <function>"`` for the syntaxes decodable here."""
    module = library()
    if module is None:
        return {}
    found = {}
    for uid, function in IMAGECODECS_FUNCTIONS.items():
        codec = getattr(module, CODECS[function], None)
        if codec is None or not getattr(codec, "available", False) or not hasattr(module, function):
            continue
        if function == "jpeg8_decode" and getattr(codec, "legacy", True):
            continue  # lossless JPEG needs libjpeg-turbo >= 3, not the legacy libjpeg build
        found[uid] = f"{module.__version__} {function}"
    return found


def decode(job: DecodeJob) -> None:
    """Fill ``job.out`` with the stored values of ``job.frames``.

    Raises:
        DecoderDeclined: imagecodecs cannot decode this file exactly as pydicom would.
        DicomReadError: The encapsulated pixel data is corrupt or truncated.
    """
    fmt = job.fmt
    module = library()
    function = IMAGECODECS_FUNCTIONS.get(fmt.transfer_syntax)
    if module is None or function is None or fmt.samples_per_pixel != 1:
        raise DecoderDeclined("imagecodecs cannot decode this syntax")
    decoder = getattr(module, function)
    for k, data in encoded_frames(job):
        try:
            if fmt.transfer_syntax == RLE_LOSSLESS:
                _rle_frame(decoder, data, fmt, job.out[k])
            elif fmt.transfer_syntax in JPEGLS_SYNTAXES:
                _jpegls_frame(decoder, data, fmt, job.out[k])
            else:
                _jpeg_lossless_frame(decoder, data, fmt, job.out[k])
        except DecoderDeclined:
            raise
        except Exception as exc:  # imagecodecs raises its own error types per codec
            raise DecoderDeclined(f"imagecodecs {function}: {type(exc).__name__}: {exc}") from None


def _rle_frame(decoder, data: bytes, fmt: PixelFormat, target: np.ndarray) -> None:
    if len(data) < 64:
        raise DecoderDeclined("RLE header too short")
    segments = struct.unpack_from("<I", data)[0]
    if segments != fmt.samples_per_pixel * target.itemsize or fmt.bits_allocated == 1:
        raise DecoderDeclined(f"RLE frame has {segments} segments")
    dtype = target.dtype.newbyteorder("=")
    if target.flags.c_contiguous:
        decoded = decoder(data, dtype, out=memoryview(target.reshape(-1).view(np.uint8)))
        if len(decoded) != target.nbytes:
            raise DecoderDeclined("RLE frame decoded to an unexpected size")
    else:
        decoded = decoder(data, dtype)
        if len(decoded) != target.nbytes:
            raise DecoderDeclined("RLE frame decoded to an unexpected size")
        target[...] = np.frombuffer(decoded, dtype).reshape(target.shape)
    correct_unused_bits(target, fmt)


def _jpeg_lossless_frame(decoder, data: bytes, fmt: PixelFormat, target: np.ndarray) -> None:
    # pydicom reads libjpeg's output bytes as the stored dtype: same bytes as imagecodecs' unsigned samples
    unsigned = target.view(target.dtype.str.replace("i", "u"))
    decoded = decoder(data, out=unsigned) if target.flags.c_contiguous else decoder(data)
    if decoded.shape != target.shape or decoded.dtype.itemsize != target.itemsize or decoded.dtype.kind != "u":
        raise DecoderDeclined(f"JPEG frame decoded to {decoded.dtype} {decoded.shape}")
    if not np.shares_memory(decoded, target):
        unsigned[...] = decoded
    correct_unused_bits(target, fmt)


def _jpegls_frame(decoder, data: bytes, fmt: PixelFormat, target: np.ndarray) -> None:
    precision = jpeg_precision(data, (JPEGLS_SOF,))
    if precision is None:
        raise DecoderDeclined("no JPEG-LS frame header")
    itemsize = 1 if precision <= 8 else 2
    if itemsize == target.itemsize and target.flags.c_contiguous:
        unsigned = target.view(target.dtype.str.replace("i", "u"))
        decoded = decoder(data, out=unsigned)
    else:
        decoded = decoder(data)
    if decoded.shape != target.shape or decoded.dtype.itemsize != itemsize or decoded.dtype.kind != "u":
        raise DecoderDeclined(f"JPEG-LS frame decoded to {decoded.dtype} {decoded.shape}")
    if not np.shares_memory(decoded, target):
        # pydicom reads the decoded samples with the signedness of PixelRepresentation, then widens
        as_stored = decoded.view(f"{'ui'[fmt.pixel_representation]}{itemsize}")
        np.copyto(target, as_stored, casting="unsafe")
    if fmt.pixel_representation == 1:  # pydicom's JPEG-LS sign correction
        shift = 8 * target.itemsize - precision
        if shift > 0:
            np.left_shift(target, shift, out=target)
            np.right_shift(target, shift, out=target)


def jpeg_precision(data: bytes, markers: tuple[int, ...]) -> int | None:
    """Sample precision (bits) from the first frame header of a JPEG codestream with one of ``markers``.

    Args:
        data: The codestream, starting with SOI.
        markers: Frame header markers to look for (``JPEGLS_SOF``: JPEG-LS SOF55).

    Returns:
        The precision, or None when the codestream has no such header before its first scan.
    """
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


__all__ = ["COLOUR", "IMAGECODECS_FUNCTIONS", "IMAGECODECS_MIN_VERSION", "NAME", "NEEDS_OFFSET", "decode",
           "is_available", "jpeg_precision", "library", "syntaxes"]
