"""Image files: RGB arrays written as PNG, atomically (temporary name, then rename)."""
from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from voxelpipe.core.errors import InputError
from voxelpipe.ops.overlay import overlay_rgb
from voxelpipe.stores.tables import atomic_path

__all__ = ["PNG_LEVEL", "overlay_png", "png_bytes", "write_png"]

PNG_LEVEL = 3  # zlib level: half the time of Pillow's default 6 on 256x256 overlays, files no larger


def png_bytes(rgb: np.ndarray, level: int = PNG_LEVEL, label: str = "png") -> bytes:
    """The PNG encoding of an image.

    Args:
        rgb: uint8 (rows, columns, 3) RGB, or (rows, columns) greyscale.
        level: zlib compression level 0-9.
        label: names the image in the error message.

    Raises:
        InputError: not a uint8 (rows, columns[, 3]) array.
    """
    data = np.asarray(rgb)
    if data.dtype != np.uint8 or not (data.ndim == 2 or (data.ndim == 3 and data.shape[2] == 3)):
        raise InputError(f"{label}: a PNG needs uint8 (rows, columns) or (rows, columns, 3), got "
                         f"{data.dtype} {data.shape}")
    buffer = io.BytesIO()
    Image.fromarray(data).save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()


def write_png(path: str | os.PathLike, rgb: np.ndarray, level: int = PNG_LEVEL) -> str:
    """Write an image as PNG at ``path`` (folders made as needed), atomically; returns the path.

    Args:
        path: the file to write.
        rgb: uint8 (rows, columns, 3) RGB, or (rows, columns) greyscale.
        level: zlib compression level 0-9.

    Raises:
        InputError: not a uint8 (rows, columns[, 3]) array.
    """
    path = os.fspath(path)
    data = png_bytes(rgb, level, label=path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return path


def overlay_png(image: np.ndarray, masks: Mapping[str, np.ndarray], path: str | os.PathLike,
                window: Sequence[float] | None = None, colors: Mapping[str, Sequence[int]] | None = None) -> str:
    """Write :func:`voxelpipe.ops.overlay.overlay_rgb` ``(image, masks, window, colors)`` as a PNG at ``path``
    (atomically; folders made as needed); returns the path.

    Args:
        image: greyscale (rows, columns), in the units of ``window``.
        masks: name -> (rows, columns) mask (nonzero = inside); outlines are painted in this order.
        path: the PNG file.
        window: DICOM linear window (centre, width) in the image's units; None for the 1st-99th percentile.
        colors: name -> RGB 0-255 (defaults: ``i`` red, ``o`` green, others from the palette).
    """
    return write_png(path, overlay_rgb(image, masks, window, colors))
