"""Put a stack of parallel slices on an orthonormal, evenly spaced grid: uneven slice spacing and gantry tilt.

Slices are ``(slice, row, column)``, sorted ascending along the slice normal; positions are LPS millimetres.

Along the normal (``even=True``), the rule of dcm2niix's ``_Eq`` output: the step is the smallest step between
consecutive slices, ``d_min``; the grid has ``n_out = ceil(extent / d_min) + 1`` slices (``extent`` = last minus
first position), at most ``2 × n`` for ``n`` input slices, and its step is ``extent / (n_out - 1)``, so the first
and the last output slice lie on the first and the last input slice. Each output slice is the linear blend of the
two input slices around it (by distance along the normal).

In-plane (``straight=True``, gantry tilt): slice ``m`` lies ``a_m`` rows and ``b_m`` columns (fractional) away
from a straight stack through slice 0 along the normal; the output planes are the input planes (or the even grid
above) with rows and columns extended to hold every slice, by whole pixels from slice 0's grid:
``lo = floor(min a_m)``, ``hi = ceil(max a_m)`` (same for columns), ``rows_out = rows + hi - lo``. Each output
slice reads its input slice(s) bilinearly at the in-plane position of the same LPS point, so every input pixel
lies where its ImagePositionPatient says. Pixels no slice covers get ``fill``.

The output geometry is orthonormal: direction columns (normal, column cosine, row cosine), spacing (step, row
spacing, column spacing), ``affine = direction · diag(spacing)`` plus the origin.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from voxelpipe.core.errors import InputError
from voxelpipe.core.geometry import Geometry, Steps, slice_normal
from voxelpipe.kernels.regrid import regrid_slices

__all__ = ["RegridPlan", "axis_aligned_geometry", "even_steps", "is_sheared", "plan_regrid", "regrid",
           "straightened_geometry"]

SHEAR_TOLERANCE = 1e-6  # |cos| between the slice axis and the plane above this: the grid is sheared


@dataclass
class RegridPlan:
    """Where every output slice reads the input stack, and the output geometry."""

    geometry: Geometry
    lower: np.ndarray  # (n_out,) int64: input slice below output slice k
    weight: np.ndarray  # (n_out,) float64: weight of input slice lower[k] + 1
    shift_rows: np.ndarray  # (n_in,) float64: input row = output row + shift_rows[m]
    shift_columns: np.ndarray  # (n_in,) float64

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.geometry.shape  # type: ignore[return-value]


def even_steps(positions: np.ndarray) -> tuple[int, float]:
    """(number of slices, step in mm) of the even grid from the first to the last of ``positions`` (ascending,
    mm along the normal), by dcm2niix's ``_Eq`` rule (module docstring)."""
    positions = np.asarray(positions, dtype=np.float64)
    steps = np.diff(positions)
    if len(steps) == 0 or np.any(steps <= 0):
        raise InputError(f"slice positions must be strictly ascending to regrid, got {positions.tolist()}")
    extent = float(positions[-1] - positions[0])
    n_out = min(2 * len(positions), math.ceil(extent / float(steps.min()) - 1e-6) + 1)
    return n_out, extent / (n_out - 1)


def plan_regrid(ipps: np.ndarray, iop: Sequence[float], pixel_spacing: Sequence[float], rows: int, columns: int,
                *, even: bool, straight: bool) -> RegridPlan:
    """The plan that puts slices at ``ipps`` ((n, 3) LPS mm, ascending along the normal; orientation ``iop``,
    ``pixel_spacing`` (row, column) mm) on an even grid along the normal (``even``) and/or straightens a
    gantry-tilted stack (``straight``). Without ``even`` the output slices are the input planes, unevenly spaced
    when they were (``uniform`` False)."""
    ipps = np.asarray(ipps, dtype=np.float64)
    n = len(ipps)
    if ipps.ndim != 2 or ipps.shape[1] != 3 or n < 2:
        raise InputError(f"regridding needs at least 2 slice positions (n, 3), got shape {ipps.shape}")
    row_cos = np.asarray(iop[:3], dtype=np.float64)
    col_cos = np.asarray(iop[3:6], dtype=np.float64)
    normal = slice_normal(iop)
    dr, dc = float(pixel_spacing[0]), float(pixel_spacing[1])
    positions = ipps @ normal
    offsets = ipps - ipps[0]
    a = offsets @ col_cos / dr if straight else np.zeros(n)
    b = offsets @ row_cos / dc if straight else np.zeros(n)
    lo_r, hi_r = math.floor(a.min() + 1e-6), math.ceil(a.max() - 1e-6)
    lo_c, hi_c = math.floor(b.min() + 1e-6), math.ceil(b.max() - 1e-6)
    origin = ipps[0] + lo_r * dr * col_cos + lo_c * dc * row_cos
    if even:
        n_out, step = even_steps(positions)
        targets = positions[0] + np.arange(n_out) * step
        targets[-1] = positions[-1]
        lower = np.clip(np.searchsorted(positions, targets, side="right") - 1, 0, n - 2).astype(np.int64)
        weight = np.clip((targets - positions[lower]) / (positions[lower + 1] - positions[lower]), 0.0, 1.0)
        weight[np.abs(weight) < 1e-9] = 0.0
        uniform = True
    else:
        n_out, step = n, float(positions[-1] - positions[0]) / (n - 1)
        targets = positions
        lower = np.arange(n, dtype=np.int64)
        weight = np.zeros(n)
        uniform = not Steps(positions).needs_even_grid
    origin = origin + (targets[0] - positions[0]) * normal
    direction = np.column_stack([normal, col_cos, row_cos])
    spacing = [step if uniform else np.nan, dr, dc]
    shape = (n_out, rows + hi_r - lo_r, columns + hi_c - lo_c)
    geometry = Geometry(shape, spacing, origin, direction, targets, uniform=uniform)
    return RegridPlan(geometry, lower, weight, lo_r - a, lo_c - b)


def regrid(stack: np.ndarray, plan: RegridPlan, fill: float | None = None) -> np.ndarray:
    """``stack`` ((n, rows, columns), any real dtype; float32 inside) on the grid of ``plan``; float32 output.
    ``fill`` (default: the stack's minimum, as dcm2niix fills its tilt-corrected margins) where no slice reads."""
    stack = np.asarray(stack)
    n = len(plan.shift_rows)
    if stack.ndim != 3 or stack.shape[0] != n:
        raise InputError(f"stack must be (slice, row, column) with {n} slices, got shape {stack.shape}")
    if stack.dtype.kind not in "iuf":
        raise InputError(f"stack must hold integers or floats, got {stack.dtype}")
    source = np.ascontiguousarray(stack, dtype=np.float32)
    value = float(np.nanmin(source)) if fill is None else float(fill)
    out = np.empty(plan.shape, dtype=np.float32)
    regrid_slices(source, plan.lower, plan.weight, np.ascontiguousarray(plan.shift_rows, dtype=np.float64),
                  np.ascontiguousarray(plan.shift_columns, dtype=np.float64), out, value)
    return out


def _cosine(u: np.ndarray, v: np.ndarray) -> float:
    denominator = float(np.linalg.norm(u) * np.linalg.norm(v))
    return abs(float(u @ v)) / denominator if denominator else 0.0


def _stack_axis(affine: np.ndarray) -> int | None:
    """The array axis a sheared grid is stacked along (the other two are perpendicular to each other, the
    stack axis leans out of their normal); None when the grid is not sheared. Ties: axis 0, then 2, then 1."""
    columns = affine[:3, :3].T
    if not np.all(np.isfinite(columns)):
        return None
    if max(_cosine(columns[a], columns[b]) for a, b in ((0, 1), (0, 2), (1, 2))) <= SHEAR_TOLERANCE:
        return None  # orthogonal
    for k in (0, 2, 1):
        p, q = (i for i in range(3) if i != k)
        if _cosine(columns[p], columns[q]) <= SHEAR_TOLERANCE:
            return k
    return None  # skewed in-plane as well: not a sheared stack of planes


def is_sheared(geometry: Geometry) -> bool:
    """Whether ``geometry`` is a sheared stack of planes (gantry tilt): two array axes perpendicular, the third
    leaning out of their normal."""
    return _stack_axis(np.asarray(geometry.affine, dtype=np.float64)) is not None


def straightened_geometry(geometry: Geometry) -> Geometry:
    """The orthonormal grid a sheared (gantry-tilted) ``geometry`` is straightened onto, as :func:`plan_regrid`
    does it (same planes, same pixel spacing, rows and columns extended to hold every slice), with the array axes
    in the input's order and directions. Raises InputError when ``geometry`` is not sheared."""
    affine = np.asarray(geometry.affine, dtype=np.float64)
    k = _stack_axis(affine)
    if k is None:
        raise InputError("geometry is not a sheared stack of planes: nothing to straighten")
    p, q = (i for i in range(3) if i != k)
    shape = np.asarray(geometry.shape)
    # planes spanned by axes p (rows) and q (columns), stacked along k
    col_step, row_step = affine[:3, p], affine[:3, q]
    dr, dc = float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))
    iop = [*(row_step / dc), *(col_step / dr)]
    ipps = affine[:3, 3] + np.outer(np.arange(shape[k]), affine[:3, k])
    descending = float(affine[:3, k] @ slice_normal(iop)) < 0
    straight = plan_regrid(ipps[::-1] if descending else ipps, iop, (dr, dc), int(shape[p]), int(shape[q]),
                           even=False, straight=True).geometry
    a = straight.affine.copy()
    if descending:  # back to the input's direction along the stack axis
        a[:3, 3] = a[:3, 3] + (straight.shape[0] - 1) * a[:3, 0]
        a[:3, 0] = -a[:3, 0]
    out_shape = [0, 0, 0]
    out = np.eye(4)
    for source, target in ((0, k), (1, p), (2, q)):
        out[:3, target] = a[:3, source]
        out_shape[target] = straight.shape[source]
    out[:3, 3] = a[:3, 3]
    spacing = np.linalg.norm(out[:3, :3], axis=0)
    direction = out[:3, :3] / spacing
    positions = float(out[:3, 3] @ direction[:, 0]) + np.arange(out_shape[0]) * float(out[:3, 0] @ direction[:, 0])
    return Geometry(out_shape, spacing, out[:3, 3], direction, positions, out)


def axis_aligned_geometry(geometry: Geometry) -> Geometry:
    """A grid whose array axes run along patient axes (LPS, each array axis onto the patient axis closest to
    its affine column, with that column's sign), with each axis' spacing (the length of its affine column) and
    covering every voxel centre of ``geometry``: what a sheared or oblique volume is resampled onto before a
    projection about a patient axis."""
    affine = np.asarray(geometry.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise InputError("geometry has no finite affine (unevenly spaced slices?): cannot align it")
    columns = affine[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    assigned: dict[int, int] = {}
    for flat in np.argsort(-np.abs(columns / spacing), axis=None):
        patient, axis = divmod(int(flat), 3)
        if axis not in assigned and patient not in assigned.values():
            assigned[axis] = patient
    shape_in = np.asarray(geometry.shape, dtype=np.float64)
    corners = np.array([[i, j, k] for i in (0, shape_in[0] - 1) for j in (0, shape_in[1] - 1)
                        for k in (0, shape_in[2] - 1)])
    points = corners @ columns.T + affine[:3, 3]
    direction = np.zeros((3, 3))
    origin = np.zeros(3)
    shape = []
    for axis in range(3):
        patient = assigned[axis]
        sign = 1.0 if columns[patient, axis] >= 0 else -1.0
        direction[patient, axis] = sign
        low, high = points[:, patient].min(), points[:, patient].max()
        origin[patient] = low if sign > 0 else high
        shape.append(int(math.floor((high - low) / spacing[axis] + 1e-6)) + 1)
    return Geometry(shape, spacing, origin, direction)
