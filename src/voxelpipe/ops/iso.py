"""Iso-contour lesion masks: inside a mask, the voxels at or above a fraction of their lesion's SUVmax.

A lesion is a connected component of the mask (26-connectivity in 3-D, 8 in 2-D). The EANM default is 41 %
of SUVmax; an absolute SUV threshold can be used instead.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from voxelpipe.core import defaults
from voxelpipe.core.errors import InputError

__all__ = ["mask_iso", "label_lesions"]


def label_lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of ``mask != 0`` with full (26 in 3-D) connectivity: (labels int32, count)."""
    mask = np.asarray(mask) != 0
    structure = np.ones((3,) * mask.ndim, dtype=bool)
    labels, n = ndimage.label(mask, structure=structure)
    return labels.astype(np.int32, copy=False), int(n)


def mask_iso(suv: np.ndarray, mask: np.ndarray, fraction: float | None = defaults.PETCT_ISO,
             absolute: float | None = None, labels: tuple[np.ndarray, int] | None = None) -> np.ndarray:
    """uint8 mask (same shape): 1 where ``mask`` is non-zero and ``suv`` ≥ ``fraction`` × SUVmax of the voxel's
    lesion (connected component of the mask, 26-connectivity) — or, when ``absolute`` is given, ≥ ``absolute``
    (then ``fraction`` is ignored). Each lesion's SUVmax voxel is always in the result (with ``fraction`` ≤ 1).
    NaN SUV values are never selected; comparisons are made in float64.

    ``labels``: optionally ``label_lesions(mask)`` already computed by the caller (``(labels, count)``), so the
    mask is not labelled twice; it must be the labelling of this ``mask``.

    Work is done per lesion in its bounding box (``scipy.ndimage.find_objects``), not on whole volumes."""
    suv = np.asarray(suv)
    mask = np.asarray(mask)
    if suv.shape != mask.shape:
        raise InputError(f"mask_iso: suv shape {suv.shape} differs from mask shape {mask.shape}")
    if absolute is None:
        if fraction is None or not 0.0 < float(fraction) <= 1.0:
            raise InputError(f"mask_iso: fraction must be in (0, 1], got {fraction!r}")
    elif not np.isfinite(float(absolute)):
        raise InputError(f"mask_iso: absolute threshold must be finite, got {absolute!r}")
    if labels is not None:
        label_image, n = np.asarray(labels[0]), int(labels[1])
        if label_image.shape != mask.shape:
            raise InputError(f"mask_iso: labels shape {label_image.shape} differs from mask shape {mask.shape}")
    out = np.zeros(suv.shape, dtype=np.uint8)
    if absolute is not None:
        threshold = float(absolute)
        inside = mask != 0
        boxes = ndimage.find_objects(inside.view(np.uint8))  # one box around every mask voxel, or none
        if not boxes or boxes[0] is None:
            return out
        box = boxes[0]
        values = np.asarray(suv[box], dtype=np.float64)
        out[box][inside[box] & (values >= threshold)] = 1  # NaN >= t is False
        return out
    if labels is None:
        label_image, n = label_lesions(mask)
    if n == 0:
        return out
    fraction = float(fraction)
    for lesion, box in enumerate(ndimage.find_objects(label_image, max_label=n), start=1):
        if box is None:
            continue
        values = np.asarray(suv[box], dtype=np.float64)
        usable = (label_image[box] == lesion) & np.isfinite(values)
        if not usable.any():  # no finite SUV in the lesion: nothing selected
            continue
        threshold = fraction * float(values[usable].max())
        usable &= values >= threshold
        out[box][usable] = 1
    return out
