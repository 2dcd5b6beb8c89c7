"""The DICOM image of a contour pair: stored pixels (rows, columns), a few header values, window and rescale."""
from __future__ import annotations

import numpy as np
import pydicom

from voxelpipe.core.errors import InputError

__all__ = ["read_image"]


def read_image(path: str) -> tuple[np.ndarray, dict, tuple[float, float] | None, tuple[float, float] | None]:
    """Read one single-frame greyscale DICOM image.

    Returns:
        ``(image, meta, window, rescale)``: the stored pixel array (rows, columns) without rescale; JSON-ready
        meta (sop_instance_uid, rows, columns, dtype, pixel_spacing in mm, rescale and window when present);
        the window (centre, width) in rescaled units or None (absent, or width < 1); (slope, intercept) or None.

    Raises:
        InputError: not a single-frame greyscale image. pydicom's own errors pass through.
    """
    ds = pydicom.dcmread(path)
    image = ds.pixel_array
    if image.ndim != 2:
        raise InputError(f"{path}: pixel array of shape {image.shape}; a single-frame greyscale image is needed")
    meta: dict = {"sop_instance_uid": _raw_text(ds, "SOPInstanceUID"),
                  "rows": int(image.shape[0]), "columns": int(image.shape[1]), "dtype": str(image.dtype)}
    spacing = ds.get("PixelSpacing")
    meta["pixel_spacing"] = [float(v) for v in spacing] if spacing else None
    rescale = None
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        meta["rescale_slope"], meta["rescale_intercept"] = slope, intercept
        rescale = (slope, intercept)
    window = None
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        centre, width = (_first(ds.WindowCenter), _first(ds.WindowWidth))
        meta["window_center"], meta["window_width"] = centre, width
        if width >= 1:
            window = (centre, width)
    return image, meta, window, rescale


def _raw_text(ds: pydicom.Dataset, keyword: str) -> str:
    """An element's text from its raw bytes: pydicom would warn on every non-conformant UID (these scanners
    write components with leading zeros), and the value is kept as written anyway."""
    element = ds.get_item(keyword)
    if element is None:
        return ""
    value = element.value
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip("\0 ")
    return "" if value is None else str(value)


def _first(value) -> float:
    """The first value of a possibly multi-valued element, as a float."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)
