"""The entry point: decode a file's pixel data straight into a caller-provided buffer (a view into a chunk slab)."""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from voxelpipe.core.errors import DicomReadError, InputError
from voxelpipe.dicom.files import read_header
from voxelpipe.dicom.pixels.encapsulated import truncation
from voxelpipe.dicom.pixels.format import PixelFormat
from voxelpipe.dicom.pixels.job import DecodeJob, DecoderDeclined
from voxelpipe.dicom.pixels.registry import DECODERS, FALLBACK, decoder_for
from voxelpipe.dicom.pixels.syntaxes import DEFLATED_LE, NATIVE_SYNTAXES, syntax_name

log = logging.getLogger("voxelpipe")


def decode_into(path: str, fmt: PixelFormat, out: np.ndarray, pixel_offset: int = -1,
                frames: Sequence[int] | None = None, *, backend: str | None = None) -> None:
    """Fill ``out`` with the stored values of ``frames`` (default all) of the file at ``path``.

    Values equal pydicom's ``pixel_array`` (pydicom 3 defaults, no rescale); a fast backend that declines a
    file hands it to pydicom unless ``backend`` was forced.

    Args:
        path: The DICOM file.
        fmt: Its pixel format (``PixelFormat.from_row``).
        out: Writeable array of shape ``(n_frames, *fmt.frame_shape)`` = (frame, row, column[, sample]) and
            dtype ``fmt.stored_dtype`` (a view into the caller's slab).
        pixel_offset: File offset (bytes) of the PixelData value (``read_header(path).pixel.value_offset``);
            -1 finds it.
        frames: Frame indices (0-based) to decode, one per ``out[k]``; None: all.
        backend: Force one of ``DECODERS`` (tests, benchmarks); default: ``decoder_for``'s choice.

    Raises:
        InputError: ``out`` or ``frames`` do not fit ``fmt``.
        DicomReadError: Naming the file and the reason, on any decoding failure; ``out`` is then undefined.
    """
    path = os.fspath(path)
    wanted = list(range(fmt.frames)) if frames is None else [int(i) for i in frames]
    check_out(fmt, out, wanted)
    try:
        name = backend or decoder_for(fmt.transfer_syntax, fmt.samples_per_pixel)
        if name not in DECODERS:
            raise InputError(f"unknown pixel decoder {name!r}; known: {', '.join(DECODERS)}")
        if not DECODERS[name].is_available(fmt.transfer_syntax, fmt.samples_per_pixel):
            raise InputError(f"pixel decoder {name!r} cannot decode {syntax_name(fmt.transfer_syntax)} "
                             f"with {fmt.samples_per_pixel} sample(s) per pixel here")
    except InputError as exc:
        raise DicomReadError(path, str(exc)) from None
    encapsulated = fmt.transfer_syntax not in NATIVE_SYNTAXES and fmt.transfer_syntax != DEFLATED_LE
    if DECODERS[name].needs_offset and pixel_offset < 0:
        pixel_offset = find_pixel_offset(path)
    if encapsulated:  # cut-short data is named as such, not left to a decoder's puzzling error
        why = truncation(path, pixel_offset)
        if why:
            raise DicomReadError(path, why)
    job = DecodeJob(path, fmt, out, pixel_offset, wanted)
    try:
        DECODERS[name].decode(job)
    except DecoderDeclined as why:
        if backend is not None:
            raise DicomReadError(path, f"pixel decoder {name!r} cannot decode this file's "
                                       f"{syntax_name(fmt.transfer_syntax)} data: {why}") from None
        log.debug("%s: %s; decoding with pydicom instead", path, why)
        DECODERS[FALLBACK].decode(job)
    except OSError as exc:
        raise DicomReadError(path, f"cannot read pixel data: {exc.strerror or exc}") from None


def find_pixel_offset(path: str) -> int:
    """File offset (bytes) of the Pixel Data value of ``path``, from its header.

    Raises:
        DicomReadError: The file has no addressable Pixel Data element.
    """
    header = read_header(path)
    if header.pixel is None or header.pixel.value_offset < 0:
        raise DicomReadError(path, "no addressable Pixel Data element")
    return header.pixel.value_offset


def check_out(fmt: PixelFormat, out: np.ndarray, frames: list[int]) -> None:
    """Check that ``out`` can take ``frames`` of ``fmt``.

    Raises:
        InputError: ``out`` is not a writeable numpy array of shape (len(frames), *fmt.frame_shape) and dtype
            ``fmt.stored_dtype``, or a frame index is out of range.
    """
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


__all__ = ["check_out", "decode_into", "find_pixel_offset"]
