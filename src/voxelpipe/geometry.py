"""Geometry in DICOM patient coordinates (LPS, millimetres).

Arrays are indexed (slice, row, column) = axes 0, 1, 2. See DESIGN.md for the conventions.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

POSITION_TOLERANCE_MM = 0.01  # two slice positions closer than this are the same position


def slice_normal(iop: Sequence[float]) -> np.ndarray:
    """Unit normal of the image plane: row cosine × column cosine (LPS)."""
    row = np.asarray(iop[:3], dtype=np.float64)
    col = np.asarray(iop[3:6], dtype=np.float64)
    normal = np.cross(row, col)
    return normal / np.linalg.norm(normal)


def orientation_label(iop: Sequence[float]) -> str:
    """``axial``, ``coronal`` or ``sagittal`` when the normal is within 10° of a patient axis, else ``oblique``."""
    normal = np.abs(slice_normal(iop))
    axis = int(np.argmax(normal))
    if normal[axis] < np.cos(np.deg2rad(10)):
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def cluster_positions(positions: np.ndarray, tolerance: float = POSITION_TOLERANCE_MM) -> tuple[np.ndarray, np.ndarray]:
    """Group positions (mm along the normal) closer than ``tolerance``.

    Returns the ascending unique positions (mean of each group) and, for every input, the index of its group.
    """
    order = np.argsort(positions, kind="stable")
    ordered = positions[order]
    starts = np.concatenate(([True], np.diff(ordered) > tolerance))
    group_of_ordered = np.cumsum(starts) - 1
    groups = np.empty(len(positions), dtype=np.int64)
    groups[order] = group_of_ordered
    counts = np.bincount(group_of_ordered)
    unique = np.bincount(group_of_ordered, weights=ordered) / counts
    return unique, groups


def tilt_degrees(first_ipp: Sequence[float], last_ipp: Sequence[float], normal: np.ndarray) -> float:
    """Angle between the slice normal and the line through the first and last slice positions (gantry tilt)."""
    step = np.asarray(last_ipp, dtype=np.float64) - np.asarray(first_ipp, dtype=np.float64)
    length = np.linalg.norm(step)
    if length == 0:
        return 0.0
    cosine = min(1.0, abs(float(step @ normal)) / length)
    return float(np.degrees(np.arccos(cosine)))
