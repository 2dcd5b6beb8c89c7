"""Geometry in DICOM patient coordinates (LPS, millimetres).

Arrays are indexed (slice, row, column) = axes 0, 1, 2; positions are DICOM patient LPS millimetres.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

POSITION_TOLERANCE_MM = 0.01  # two slice positions closer than this are the same position
TILT_TOLERANCE_DEG = 0.05  # a slice stack leaning more than this from the plane normal is gantry-tilted
STEP_TOLERANCE_MM = 0.01  # steps within max(this, STEP_TOLERANCE_FRACTION x regular step) of each other are equal
STEP_TOLERANCE_FRACTION = 0.01
MISPLACEMENT_FRACTION = 0.05  # convert regrids (or keeps as uneven) when a uniform step would misplace a slice more


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


def signed_tilt_degrees(first_ipp: Sequence[float], last_ipp: Sequence[float], iop: Sequence[float]) -> float:
    """Gantry tilt from the geometry, signed: the angle from the slice normal to the stack direction (first to
    last slice, ascending along the normal), positive when that rotation is counter-clockwise about the image
    row direction (row cosine, the direction of increasing column index), by the right-hand rule."""
    normal = slice_normal(iop)
    step = np.asarray(last_ipp, dtype=np.float64) - np.asarray(first_ipp, dtype=np.float64)
    if float(step @ normal) < 0:
        step = -step
    angle = tilt_degrees(np.zeros(3), step, normal)
    row = np.asarray(iop[:3], dtype=np.float64)
    return -angle if float(np.cross(normal, step) @ row) < 0 else angle


class Steps:
    """The steps between consecutive slice positions (mm along the normal) sorted into kinds.

    ``regular``: the median step; a step is regular when within the tolerance (``max(STEP_TOLERANCE_MM,
    STEP_TOLERANCE_FRACTION x regular)``) of it, a gap of ``k - 1`` missing slices when within the tolerance of
    ``k x regular`` (k >= 2), else irregular. ``uneven`` when any step is not regular.

    ``misplacement``: the largest distance (mm) of a position from the uniform grid through the first and the
    last one (the mean step); ``needs_even_grid`` when it exceeds ``MISPLACEMENT_FRACTION`` of the mean step: a
    volume with the mean step would put some slice that far off, so ``convert`` applies ``--uneven``. (Steps of
    3.27 mm with one of 3.19 mm are uneven for the scan, yet misplace no slice by more than 0.04 mm.)
    """

    def __init__(self, positions: np.ndarray):
        positions = np.asarray(positions, dtype=np.float64)
        steps = np.diff(positions)
        self.steps = steps
        self.regular = float(np.median(steps)) if len(steps) else 0.0
        self.tolerance = max(STEP_TOLERANCE_MM, STEP_TOLERANCE_FRACTION * self.regular)
        multiple = np.round(steps / self.regular) if self.regular > 0 else np.ones_like(steps)
        on_grid = np.abs(steps - multiple * self.regular) <= self.tolerance
        self.missing = int(np.sum((multiple - 1)[on_grid & (multiple >= 2)]))
        self.irregular = int(np.sum(~on_grid | (multiple < 1)))
        self.uneven = bool(len(steps) and np.any(np.abs(steps - self.regular) > self.tolerance))
        n = len(positions)
        self.mean = float(positions[-1] - positions[0]) / (n - 1) if n > 1 else 0.0
        grid = positions[0] + np.arange(n) * self.mean if n > 1 else positions
        self.misplacement = float(np.max(np.abs(positions - grid))) if n > 1 else 0.0
        self.needs_even_grid = self.misplacement > MISPLACEMENT_FRACTION * abs(self.mean)

    def describe(self, limit: int = 8) -> str:
        """The distinct steps (mm) as text, e.g. ``2.5 mm x 10, 1.25 mm x 2, 7.5 mm x 1``."""
        values, counts = np.unique(np.round(self.steps, 3), return_counts=True)
        order = np.argsort(-counts, kind="stable")
        parts = [f"{values[i]:g} mm x {counts[i]}" for i in order[:limit]]
        return ", ".join(parts) + (", ..." if len(order) > limit else "")


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class Geometry:
    """Where a (slice, row, column) array lies in patient space (LPS, mm).

    ``spacing``: mm along axes 0, 1, 2 (axis 0 = step between slice planes along their normal);
    ``origin``: LPS centre of voxel [0, 0, 0]; ``direction``: 3×3, column a = LPS unit vector of axis a;
    ``slice_positions``: position of every slice along the normal (mm), kept even when spacing is uneven;
    ``affine``: 4×4 index → LPS. It equals direction·diag(spacing) plus origin, except with gantry tilt, where
    column 0 is the true step between slice origins (a sheared affine, like the data).

    ``uniform`` False: the slices are not equally spaced; ``spacing[0]`` and affine column 0 are NaN (``None``
    in attrs, where ``affine`` and ``affine_ras`` are ``None``) and ``slice_positions`` is the only truth
    along the normal. ``sheared`` True: a gantry-tilted stack kept as acquired (see ``convert --tilt keep``).
    """

    def __init__(self, shape: Sequence[int], spacing: Sequence[float], origin: Sequence[float],
                 direction: np.ndarray, slice_positions: Sequence[float] | None = None,
                 affine: np.ndarray | None = None, uniform: bool = True, sheared: bool = False):
        self.uniform = bool(uniform)
        self.sheared = bool(sheared)
        self.shape = tuple(int(v) for v in shape)
        self.spacing = np.asarray(spacing, dtype=np.float64)
        self.origin = np.asarray(origin, dtype=np.float64)
        self.direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
        self.slice_positions = np.asarray(
            slice_positions if slice_positions is not None else
            float(self.origin @ self.direction[:, 0]) + np.arange(self.shape[0]) * self.spacing[0],
            dtype=np.float64)
        if affine is None:
            affine = np.eye(4)
            affine[:3, :3] = self.direction * self.spacing
            affine[:3, 3] = self.origin
        self.affine = np.asarray(affine, dtype=np.float64)

    @property
    def plane_normal(self) -> np.ndarray:
        """Unit normal of the slice planes (spanned by axes 1 and 2), pointing along axis 0: direction column 0,
        except for a kept gantry tilt (``sheared``), whose direction column 0 is the step between slices."""
        normal = np.cross(self.direction[:, 2], self.direction[:, 1])
        normal = normal / np.linalg.norm(normal)
        return -normal if float(normal @ self.direction[:, 0]) < 0 else normal

    @property
    def slice_axis(self) -> np.ndarray:
        """LPS direction in which slice origins advance along axis 0 (any length): affine column 0, or direction
        column 0 when the slices are unevenly spaced (``uniform`` False: no affine step)."""
        column = self.affine[:3, 0]
        return column if np.all(np.isfinite(column)) else self.direction[:, 0]

    @property
    def affine_ras(self) -> np.ndarray:
        """The affine mapping index → RAS mm (x and y negated), as NIfTI tools use."""
        return LPS_TO_RAS @ self.affine

    def to_attrs(self) -> dict:
        """JSON-ready dict (lists of floats) for store attributes."""
        attrs = {
            "shape": list(self.shape), "spacing": self.spacing.tolist(), "origin": self.origin.tolist(),
            "direction": self.direction.tolist(), "affine": self.affine.tolist(),
            "affine_ras": self.affine_ras.tolist(), "slice_positions": self.slice_positions.tolist(),
            "axes": ["slice", "row", "column"], "coordinate_system": "LPS", "units": "mm",
        }
        if not self.uniform:
            attrs.update(uniform=False, spacing=[None, *self.spacing[1:].tolist()], affine=None, affine_ras=None)
        if self.sheared:
            attrs["sheared"] = True
        return attrs

    @classmethod
    def from_attrs(cls, attrs: dict) -> Geometry:
        spacing = [np.nan if v is None else v for v in attrs["spacing"]]
        uniform = attrs.get("uniform", True) is not False
        affine = attrs.get("affine")
        if affine is None and not uniform:
            affine = np.eye(4)
            affine[:3, :3] = np.asarray(attrs["direction"], dtype=np.float64) * np.asarray(spacing)
            affine[:3, 3] = attrs["origin"]
        return cls(attrs["shape"], spacing, attrs["origin"], np.asarray(attrs["direction"]),
                   attrs.get("slice_positions"), None if affine is None else np.asarray(affine, dtype=np.float64),
                   uniform=uniform, sheared=bool(attrs.get("sheared", False)))

    def __repr__(self) -> str:
        return (f"Geometry(shape={self.shape}, spacing={np.round(self.spacing, 4).tolist()}, "
                f"origin={np.round(self.origin, 3).tolist()})")


def mean_step_geometry(geometry: Geometry) -> Geometry:
    """``geometry`` with the mean step between its slice positions as a uniform step along direction column 0
    (for display of unevenly spaced slices; positions in between are approximate, first and last exact)."""
    positions = np.asarray(geometry.slice_positions, dtype=np.float64)
    n = len(positions)
    step = float(positions[-1] - positions[0]) / (n - 1) if n > 1 else 1.0
    axis = geometry.direction[:, 0] * (step / float(geometry.direction[:, 0] @ geometry.plane_normal))
    affine = np.array(geometry.affine, dtype=np.float64)
    affine[:3, 0] = axis
    spacing = np.array(geometry.spacing, dtype=np.float64)
    spacing[0] = float(np.linalg.norm(axis))
    return Geometry(geometry.shape, spacing, geometry.origin, geometry.direction, positions, affine,
                    sheared=geometry.sheared)


def geometry_from_slices(ipps: np.ndarray, iop: Sequence[float], pixel_spacing: Sequence[float],
                         shape: Sequence[int]) -> Geometry:
    """Geometry of slices already sorted by position: ``ipps`` (n, 3) LPS, ``iop`` 6 cosines,
    ``pixel_spacing`` (row spacing, column spacing) in mm as in DICOM PixelSpacing."""
    row_cos = np.asarray(iop[:3], dtype=np.float64)  # direction of increasing column index (axis 2)
    col_cos = np.asarray(iop[3:6], dtype=np.float64)  # direction of increasing row index (axis 1)
    normal = slice_normal(iop)
    positions = ipps @ normal
    n = len(ipps)
    # mean step: first and last slice land exactly; slice_positions keeps every slice when spacing is uneven
    step_along_normal = float(positions[-1] - positions[0]) / (n - 1) if n > 1 else 1.0
    direction = np.column_stack([normal, col_cos, row_cos])
    spacing = [step_along_normal if n > 1 else 1.0, float(pixel_spacing[0]), float(pixel_spacing[1])]
    affine = np.eye(4)
    affine[:3, 0] = (ipps[-1] - ipps[0]) / (n - 1) if n > 1 else normal * spacing[0]
    affine[:3, 1] = col_cos * spacing[1]
    affine[:3, 2] = row_cos * spacing[2]
    affine[:3, 3] = ipps[0]
    return Geometry(shape, spacing, ipps[0], direction, positions, affine)
