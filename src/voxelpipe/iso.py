"""Iso-contour lesion masks: inside a mask, the voxels at or above a fraction of their lesion's SUVmax.

A lesion is a connected component of the mask (26-connectivity in 3-D, 8 in 2-D). The EANM default is 41 %
of SUVmax; an absolute SUV threshold can be used instead.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError

__all__ = ["mask_iso", "label_lesions"]


def label_lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of ``mask != 0`` with full (26 in 3-D) connectivity: (labels int32, count)."""
    from scipy import ndimage

    mask = np.asarray(mask) != 0
    structure = np.ones((3,) * mask.ndim, dtype=bool)
    labels, n = ndimage.label(mask, structure=structure)
    return labels.astype(np.int32, copy=False), int(n)


def mask_iso(suv: np.ndarray, mask: np.ndarray, fraction: float | None = 0.41,
             absolute: float | None = None) -> np.ndarray:
    """uint8 mask (same shape): 1 where ``mask`` is non-zero and ``suv`` ≥ ``fraction`` × SUVmax of the voxel's
    lesion (connected component of the mask, 26-connectivity) — or, when ``absolute`` is given, ≥ ``absolute``
    (then ``fraction`` is ignored). Each lesion's SUVmax voxel is always in the result (with ``fraction`` ≤ 1).
    NaN SUV values are never selected."""
    suv = np.asarray(suv)
    mask = np.asarray(mask)
    if suv.shape != mask.shape:
        raise InputError(f"mask_iso: suv shape {suv.shape} differs from mask shape {mask.shape}")
    if absolute is None:
        if fraction is None or not 0.0 < float(fraction) <= 1.0:
            raise InputError(f"mask_iso: fraction must be in (0, 1], got {fraction!r}")
    elif not np.isfinite(float(absolute)):
        raise InputError(f"mask_iso: absolute threshold must be finite, got {absolute!r}")
    inside = mask != 0
    out = np.zeros(suv.shape, dtype=np.uint8)
    if not inside.any():
        return out
    values = np.where(inside, suv, np.nan).astype(np.float64, copy=False)
    if absolute is not None:
        out[inside & (values >= float(absolute))] = 1
        return out
    from scipy import ndimage

    labels, n = label_lesions(inside)
    index = np.arange(1, n + 1)
    finite = np.where(np.isfinite(values), values, -np.inf)
    peaks = np.asarray(ndimage.maximum(finite, labels=labels, index=index), dtype=np.float64)
    thresholds = np.concatenate(([np.inf], float(fraction) * peaks))  # label 0 (outside) never passes
    out[(finite >= thresholds[labels]) & inside & np.isfinite(values)] = 1
    return out
