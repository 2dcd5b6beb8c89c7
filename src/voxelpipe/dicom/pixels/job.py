"""What a decoding backend is handed (:class:`DecodeJob`) and how it declines a file (:class:`DecoderDeclined`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voxelpipe.dicom.pixels.format import PixelFormat


@dataclass
class DecodeJob:
    """One decoding request.

    Attributes:
        path: The DICOM file.
        fmt: Its pixel format.
        out: Writeable (n_frames, *fmt.frame_shape) array of ``fmt.stored_dtype``, filled by the backend.
        pixel_offset: File offset (bytes) of the Pixel Data value; -1 when unknown (the pydicom backend only).
        frames: Frame indices (0-based) to decode, one per ``out[k]``.
    """

    path: str
    fmt: PixelFormat
    out: np.ndarray
    pixel_offset: int
    frames: list[int]


class DecoderDeclined(Exception):
    """A fast backend declines this file (unexpected codestream); it is decoded with pydicom instead."""


__all__ = ["DecodeJob", "DecoderDeclined"]
