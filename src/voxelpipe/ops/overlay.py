"""Mask outlines drawn over a greyscale image: an RGB uint8 array (``overlay_rgb``) or a PNG (``overlay_png``).

- The image is windowed to 0-255: with ``window=(centre, width)`` by the DICOM linear VOI rule (PS3.3
  C.11.2.1.2.1, the rule viewers apply to WindowCenter/WindowWidth), else between its 1st and 99th percentile.
  The window is in the image's units: pass rescaled values (slope x stored + intercept) with a header window.
- A mask's outline is the mask minus its erosion by the 4-neighbour cross; pixels beyond the image edge count as
  outside, so mask pixels on the image border are outline. Outlines are painted in the mask's colour, in the
  order of the ``masks`` dict (a later mask wins where outlines meet).
- Default colours: ``i`` red, ``o`` green, other names from ``PALETTE`` in turn.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from voxelpipe.core.errors import InputError
from voxelpipe.stores.tables import atomic_path

DEFAULT_COLORS: dict[str, tuple[int, int, int]] = {"i": (255, 0, 0), "o": (0, 255, 0)}
PNG_LEVEL = 3  # zlib level: half the time of Pillow's default 6 on 256x256 overlays, files no larger
PALETTE: list[tuple[int, int, int]] = [(0, 128, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
                                       (255, 128, 0), (128, 0, 255)]


def window_to_uint8(image: np.ndarray, window: Sequence[float] | None = None) -> np.ndarray:
    """Greyscale ``image`` (rows, cols) to uint8 0-255: DICOM linear window ``(centre, width)``, or the 1st-99th
    percentile range when ``window`` is None (a flat image becomes all 0)."""
    data = np.asarray(image)
    if data.ndim != 2:
        raise InputError(f"overlay: image must be 2-D (rows, cols), got shape {data.shape}")
    data = data.astype(np.float64, copy=False)
    if window is None:
        finite = data[np.isfinite(data)]
        if finite.size == 0:
            return np.zeros(data.shape, np.uint8)
        lo, hi = (float(v) for v in np.percentile(finite, [1.0, 99.0]))
        if hi <= lo:
            scaled = np.where(data > lo, 255.0, 0.0)
        else:
            scaled = (data - lo) / (hi - lo) * 255.0
    else:
        centre, width = (float(v) for v in window)
        if not (np.isfinite(centre) and np.isfinite(width)) or width < 1:
            raise InputError(f"overlay: window (centre {centre}, width {width}) needs a finite width >= 1")
        if width == 1:
            scaled = np.where(data > centre - 0.5, 255.0, 0.0)
        else:
            scaled = ((data - (centre - 0.5)) / (width - 1) + 0.5) * 255.0
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a 2-D mask (nonzero = inside): the mask minus its 4-neighbour erosion, bool."""
    inside = np.asarray(mask) != 0
    if inside.ndim != 2:
        raise InputError(f"overlay: mask must be 2-D (rows, cols), got shape {inside.shape}")
    padded = np.pad(inside, 1, constant_values=False)
    eroded = (inside & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return inside & ~eroded


def mask_colors(names: Sequence[str], colors: Mapping[str, Sequence[int]] | None = None
                ) -> dict[str, tuple[int, int, int]]:
    """The colour of every mask name: ``colors`` first, then DEFAULT_COLORS, then PALETTE in turn."""
    chosen: dict[str, tuple[int, int, int]] = {}
    spare = iter(PALETTE * (len(names) // len(PALETTE) + 1))
    for name in names:
        if colors is not None and name in colors:
            rgb = tuple(int(c) for c in colors[name])
        elif name in DEFAULT_COLORS:
            rgb = DEFAULT_COLORS[name]
        else:
            rgb = next(spare)
        if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
            raise InputError(f"overlay: colour of {name!r} must be 3 values 0-255, got {rgb}")
        chosen[name] = rgb
    return chosen


def overlay_rgb(image: np.ndarray, masks: Mapping[str, np.ndarray], window: Sequence[float] | None = None,
                colors: Mapping[str, Sequence[int]] | None = None) -> np.ndarray:
    """RGB uint8 (rows, cols, 3): ``image`` windowed to grey (see ``window_to_uint8``) with the outline of each
    mask in ``masks`` (name -> (rows, cols) array, nonzero = inside) painted in its colour."""
    grey = window_to_uint8(image, window)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    palette = mask_colors(list(masks), colors)
    for name, mask in masks.items():
        if np.shape(mask) != grey.shape:
            raise InputError(f"overlay: mask {name!r} has shape {np.shape(mask)}, the image {grey.shape}")
        rgb[outline(mask)] = palette[name]
    return rgb


def overlay_png(image: np.ndarray, masks: Mapping[str, np.ndarray], path: str | os.PathLike,
                window: Sequence[float] | None = None, colors: Mapping[str, Sequence[int]] | None = None) -> str:
    """Write ``overlay_rgb(image, masks, window, colors)`` as a PNG at ``path`` (atomically: temporary name,
    then rename; folders made as needed); returns the path."""
    rgb = overlay_rgb(image, masks, window, colors)
    path = os.fspath(path)
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG", compress_level=PNG_LEVEL)
    return path
