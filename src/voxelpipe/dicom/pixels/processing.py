"""pydicom's default processing of decoded values, applied in place: unused bits, YBR colour to RGB."""
from __future__ import annotations

import numpy as np
from pydicom.pixels.processing import convert_color_space

from voxelpipe.core.errors import DicomReadError
from voxelpipe.dicom.pixels.format import PixelFormat

YBR_PHOTOMETRICS = ("YBR_FULL", "YBR_FULL_422")


def correct_unused_bits(arr: np.ndarray, fmt: PixelFormat) -> None:
    """Clear the unused high bits (unsigned) or sign-extend from BitsStored (signed), in place.

    The same as pydicom's ``correct_unused_bits``; nothing to do when BitsStored = BitsAllocated or for 1-bit
    data.

    Args:
        arr: Stored values of any shape, dtype ``fmt.stored_dtype``.
        fmt: The pixel format.
    """
    if fmt.bits_allocated <= fmt.bits_stored or fmt.bits_allocated == 1:
        return
    if fmt.pixel_representation == 0:
        np.bitwise_and(arr, arr.dtype.type((1 << fmt.bits_stored) - 1), out=arr)
    else:
        shift = fmt.bits_allocated - fmt.bits_stored
        np.left_shift(arr, shift, out=arr)
        np.right_shift(arr, shift, out=arr)


def ybr_to_rgb(arr: np.ndarray, fmt: PixelFormat, path: str) -> None:
    """Convert YBR_FULL / YBR_FULL_422 colour to RGB in place, as pydicom does by default.

    Args:
        arr: (frames, rows, columns, 3) stored values.
        fmt: The pixel format; other photometric interpretations are left alone.
        path: The file, for messages.

    Raises:
        DicomReadError: The conversion fails.
    """
    if fmt.samples_per_pixel != 3 or fmt.photometric not in YBR_PHOTOMETRICS:
        return
    try:
        arr[...] = convert_color_space(arr, "YBR_FULL", "RGB")
    except (ValueError, NotImplementedError) as exc:
        raise DicomReadError(path, f"cannot convert {fmt.photometric} to RGB: {exc}") from None


__all__ = ["YBR_PHOTOMETRICS", "correct_unused_bits", "ybr_to_rgb"]
