"""Maximum / mean intensity projections at many angles about a patient axis, in physical space (mm).

``project(volume, angles_deg)`` casts parallel rays perpendicular to a rotation axis through the volume centre,
in millimetres, so anisotropic voxels project correctly (a sphere stays a circle at every angle). Every plane
perpendicular to the axis is projected on its own (a 2-D problem); all angles are done in one pass over the
data by the shear-warp kernel ``voxelpipe.kernels.project`` (see its docstring for the numerics).

Geometry, in DICOM patient coordinates (LPS, mm); ``a`` is the unit vector of the named axis letter:

=====  ==================  ==========================  =============================
axis   ``a`` (rows grow)   ray ``d0`` at 0°            columns ``u0`` grow toward
=====  ==================  ==========================  =============================
``S``  superior            posterior (A→P: coronal)    patient left
``I``  inferior            posterior                   patient right
``L``  left                superior (I→S: axial)       posterior
``R``  right               superior                    anterior
``P``  posterior           left (R→L: sagittal)        superior
``A``  anterior            left                        inferior
=====  ==================  ==========================  =============================

(the rule: ``d0`` is the LPS axis before ``a``'s in the cycle L→P→S→L, and ``u0 = d0 × a``.)

At angle θ (degrees) the rays run along ``d(θ) = cos θ d0 + sin θ u0`` and detector columns grow along
``u(θ) = cos θ u0 − sin θ d0 = d(θ) × a``: the view rotates counter-clockwise as seen looking along ``a``
(for ``S``: seen from the feet, 90° is a view from the patient's right, rays R→L, columns toward anterior).
For every angle, ``u(θ)`` is the viewer's right for a viewer looking along the rays with ``a`` pointing up, so
``images[n]`` shown with row 0 at the bottom (``origin="lower"``) is what that viewer sees.

For a standard axial volume (rows toward P, columns toward L, slices toward S, equal spacings) and axis ``S``:
0° is ``max`` over array rows (``volume.max(axis=1)``), 180° the same with columns reversed, 90° is ``max`` over
array columns with its columns reversed (``volume.max(axis=2)[:, ::-1]``), 270° the same unreversed — each
centred in the wider detector (see ``width``).

Per plane (array slice perpendicular to ``a``) and angle the value at detector position ``t`` (mm along
``u(θ)`` from the rotation axis) is the max (or mean) of the plane's image along the ray ``{t u + s d}``,
sampled where the ray crosses the lines of voxels (rows or columns, whichever is closer to the detector line)
with 1-D linear interpolation along the line, then resampled linearly to pixels ``pixel_mm`` apart. Only the
hull of voxel centres is sampled (no extrapolation). The mean is the average of those samples, i.e. of the
image over the part of the ray inside that hull (samples are equally spaced along the ray). Pixels whose ray
misses the plane get ``fill``. NaN voxels are skipped by the max and propagate through the mean.

Accuracy, compared with rotate-then-max (bilinear resampling of each plane, then max): at multiples of 90° on
a grid whose spacing equals ``pixel_mm`` both are exact. Otherwise both are linear-interpolation schemes with
different errors: shear-warp samples the rays where they cross the voxel lines (up to 1.41 voxels apart, at
45°) and interpolates the max profile, so it can be a fraction of a pixel narrower at sharp silhouettes and
slightly higher where the brightest structure along the rays changes; rotate-then-max underestimates peaks
between voxels. On smooth data they agree within a few % of the range (tests/test_projection.py).

Geometry handled through the affine: the rotation axis may be any array axis (the array is then transposed to
put it first, a copy); slices may be rotated in-plane (any in-plane direction cosines) and sheared along the
axis (gantry tilt: each plane is shifted by its own in-plane offset); planes that are not perpendicular to the
axis within ``AXIS_TOLERANCE_DEG`` (oblique volumes) raise :class:`InputError`: resample them first. A volume
marked ``sheared: true`` (a gantry tilt kept by ``convert --tilt keep``: its planes are tilted too) is resampled
onto a patient-axis aligned grid first (:func:`aligned_for_projection`); a volume with ``uniform: false``
(unevenly spaced slices kept as they are) raises :class:`InputError`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from voxelpipe.core.errors import InputError
from voxelpipe.core.volume import Volume
from voxelpipe.kernels.project import project_into
from voxelpipe.ops.regrid import axis_aligned_geometry
from voxelpipe.ops.resample import resample_to
from voxelpipe.ops.threads import run_ranges

__all__ = ["project", "aligned_for_projection", "Projections", "AXES", "KINDS", "AXIS_TOLERANCE_DEG"]

KINDS = ("max", "mean")
KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.int16), np.dtype(np.uint8))  # others are cast to float32
AXIS_TOLERANCE_DEG = 0.01  # in-plane array axes must be this close to perpendicular to the rotation axis
_TRIG_SNAP = 1e-12

# letter -> (LPS axis index, sign)
AXES = {"L": (0, 1.0), "R": (0, -1.0), "P": (1, 1.0), "A": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


@dataclass
class Projections:
    """Projection images and how to place them in patient space (LPS, mm).

    ``images``: float32 ``(n_angles, n_rows, width)``; row ``i`` is the plane at ``row_positions[i]`` mm along
    ``axis_direction`` from ``centre`` (rows ascend toward the named axis letter); column ``j`` is at
    ``(j - (width - 1) / 2) * pixel_spacing[1]`` mm along ``column_directions[n]`` from the rotation axis.
    ``mask_images``: uint8, same shape, the max projection of the mask (labels kept), or None.
    ``angles``: degrees as given. ``pixel_spacing``: (mm between rows = step of the planes along the axis, mm
    between columns). ``ray_directions`` / ``column_directions``: ``(n_angles, 3)`` LPS unit vectors ``d(θ)``
    and ``u(θ)``. ``centre``: LPS point on the rotation axis (the volume centre). ``fill``: value of pixels
    whose ray misses the plane. ``array_axis``: the array axis along the rotation axis.
    """

    images: np.ndarray
    mask_images: np.ndarray | None
    angles: np.ndarray
    kind: str
    axis: str
    pixel_spacing: tuple[float, float]
    centre: np.ndarray
    axis_direction: np.ndarray
    ray_directions: np.ndarray
    column_directions: np.ndarray
    row_positions: np.ndarray
    fill: float
    array_axis: int

    @property
    def width(self) -> int:
        return int(self.images.shape[2])

    def column_offsets(self) -> np.ndarray:
        """mm from the rotation axis along ``column_directions[n]`` of every column (same for all angles)."""
        return (np.arange(self.width) - 0.5 * (self.width - 1)) * self.pixel_spacing[1]

    def pixel_positions(self, index: int) -> np.ndarray:
        """LPS mm ``(n_rows, width, 3)`` of the pixel centres of ``images[index]``, on the plane through the
        rotation axis perpendicular to the rays."""
        rows = self.row_positions[:, None, None] * self.axis_direction
        cols = self.column_offsets()[None, :, None] * self.column_directions[index]
        return self.centre + rows + cols

    def to_attrs(self) -> dict:
        """JSON-ready description of the geometry (for store attributes)."""
        return {
            "kind": self.kind, "axis": self.axis, "angles_deg": [float(v) for v in self.angles],
            "pixel_spacing": [float(v) for v in self.pixel_spacing], "centre": self.centre.tolist(),
            "axis_direction": self.axis_direction.tolist(), "ray_directions": self.ray_directions.tolist(),
            "column_directions": self.column_directions.tolist(), "row_positions": self.row_positions.tolist(),
            "fill": float(self.fill), "width": self.width, "array_axis": self.array_axis,
            "axes": ["angle", "row (along axis_direction)", "column (along column_directions)"],
            "coordinate_system": "LPS", "units": "mm",
        }


def _unit(i: int, sign: float = 1.0) -> np.ndarray:
    e = np.zeros(3)
    e[i] = sign
    return e


def axis_frame(axis: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(a, d0, u0)``: LPS unit vectors of the rotation axis letter, the 0° ray and the 0° column direction."""
    index, sign = AXES[axis]
    a = _unit(index, sign)
    d0 = _unit((index - 1) % 3)
    u0 = np.cross(d0, a)
    return a, d0, u0


def directions(axis: str, angles_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(d, u)``: ``(n_angles, 3)`` ray and column directions (cos/sin within 1e-12 of 0 or ±1 snapped)."""
    _, d0, u0 = axis_frame(axis)
    rad = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    c, s = np.cos(rad), np.sin(rad)
    for v in (c, s):
        v[np.abs(v) < _TRIG_SNAP] = 0.0
        ones = np.abs(np.abs(v) - 1.0) < _TRIG_SNAP
        v[ones] = np.sign(v[ones])
    d = c[:, None] * d0 + s[:, None] * u0
    u = c[:, None] * u0 - s[:, None] * d0
    return d, u


def _check_number(name: str, value, positive: bool = False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a number, got {value!r}") from exc
    if positive and not (math.isfinite(x) and x > 0):
        raise InputError(f"{name} must be a finite number > 0, got {value!r}")
    return x


def _angles(angles_deg) -> np.ndarray:
    try:
        angles = np.asarray(angles_deg, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"angles_deg must be a sequence of numbers, got {angles_deg!r}") from exc
    if angles.ndim > 1:
        raise InputError(f"angles_deg must be a number or a 1-D sequence, got shape {angles.shape}")
    angles = np.atleast_1d(angles)
    if angles.size == 0:
        raise InputError("angles_deg is empty: give at least one angle")
    bad = ~np.isfinite(angles)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"angles_deg must be finite, got {angles[i]!r} at position {i}")
    return angles


def _image_array(volume: Volume) -> np.ndarray:
    arr = volume.array if isinstance(volume.array, np.ndarray) else volume.numpy()
    if arr.ndim != 3:
        raise InputError(f"volume array must be 3-D (slice, row, column), got {arr.ndim}-D shape {arr.shape}")
    if 0 in arr.shape:
        raise InputError(f"volume array is empty: shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.view(np.uint8)
    if arr.dtype.kind not in "iuf":
        raise InputError(f"volume array must have an integer or float dtype, got {arr.dtype}")
    if arr.dtype not in KERNEL_DTYPES:  # the kernel works in float32 anyway; one compiled variant fewer
        return arr.astype(np.float32)
    return arr


def _mask_array(mask, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(mask, np.ndarray):
        raise InputError(f"mask must be a numpy array, got {type(mask).__name__}")
    if mask.shape != shape:
        raise InputError(f"mask shape {mask.shape} does not match the volume array shape {shape}")
    if mask.dtype == np.bool_:
        return mask.view(np.uint8)
    if mask.dtype == np.uint8:
        return mask
    if mask.dtype.kind not in "iu":
        raise InputError(f"mask must be bool or integer labels 0..255, got dtype {mask.dtype}")
    lo, hi = int(mask.min()), int(mask.max())
    if lo < 0 or hi > 255:
        raise InputError(f"mask labels must be within 0..255 (projected as uint8), got {lo}..{hi}")
    return mask.astype(np.uint8)


@dataclass
class _Plan:
    array_axis: int
    in_plane: tuple[int, int]
    a: np.ndarray
    centre: np.ndarray
    step_along_axis: float  # signed mm per index step of array_axis along a
    tilt_step: np.ndarray  # in-plane part of that step (gantry tilt), LPS mm
    line_steps: tuple[np.ndarray, np.ndarray]  # in-plane LPS mm per index step of the two in-plane axes


def _plan(volume: Volume, shape: tuple[int, int, int], axis: str) -> _Plan:
    geometry = volume.geometry
    if tuple(geometry.shape[:3]) != tuple(shape):
        raise InputError(f"geometry shape {geometry.shape} does not match the array shape {shape}")
    a, _, _ = axis_frame(axis)
    affine = np.asarray(geometry.affine, dtype=np.float64)
    steps = affine[:3, :3]
    if not np.all(np.isfinite(affine)):
        raise InputError("the volume's affine holds non-finite values")
    k = int(np.argmax(np.abs(geometry.direction.T @ a)))
    in_plane = tuple(i for i in range(3) if i != k)
    limit = math.sin(math.radians(AXIS_TOLERANCE_DEG))
    line_steps = []
    for i in in_plane:
        v = steps[:, i]
        norm = float(np.linalg.norm(v))
        if norm == 0:
            raise InputError(f"array axis {i} has zero spacing in the affine")
        cosine = abs(float(v @ a)) / norm
        if cosine > limit:
            raise InputError(
                f"the volume is oblique to the {axis} axis: array axis {i} makes "
                f"{math.degrees(math.asin(min(1.0, cosine))):.3f} deg with the plane perpendicular to {axis} "
                f"(tolerance {AXIS_TOLERANCE_DEG} deg); resample it onto an axis-aligned grid first")
        line_steps.append(v - (v @ a) * a)
    step = steps[:, k]
    along = float(step @ a)
    if abs(along) < 1e-9 * float(np.linalg.norm(step) or 1.0):
        raise InputError(f"array axis {k} does not advance along the {axis} axis")
    centre = affine[:3, :3] @ ((np.asarray(shape, dtype=np.float64) - 1) / 2) + affine[:3, 3]
    return _Plan(k, in_plane, a, centre, along, step - along * a, (line_steps[0], line_steps[1]))


def aligned_for_projection(volume: Volume, mask: np.ndarray | None = None) -> tuple[Volume, np.ndarray | None]:
    """A gantry-tilted volume kept sheared (``sheared: true``), and its mask, resampled onto a patient-axis
    aligned grid (:func:`voxelpipe.ops.regrid.axis_aligned_geometry`: each array axis' spacing kept; linear for
    the image with the volume's minimum outside, ``label`` for the mask), so it can be projected about a
    patient axis."""
    grid = axis_aligned_geometry(volume.geometry)
    array = np.asarray(volume.array[...])
    if array.dtype not in KERNEL_DTYPES:
        array = array.astype(np.float32)
    source = Volume(array, volume.geometry, {}, volume.path)
    aligned = resample_to(source, grid, order="linear", fill=float(np.min(array)))
    aligned = Volume(aligned.array, aligned.geometry, {**volume.attrs, **grid.to_attrs(), "sheared": False},
                     volume.path)
    if mask is None:
        return aligned, None
    labels = np.asarray(mask)
    labels = labels.astype(np.uint8) if labels.dtype != np.bool_ else labels
    return aligned, np.asarray(resample_to(Volume(labels, volume.geometry), grid, order="label").array)


def project(
    volume: Volume,
    angles_deg: Sequence[float] | np.ndarray | float,
    axis: str = "S",
    kind: str = "max",
    mask: np.ndarray | None = None,
    pixel_mm: float | None = None,
    fill: float | None = None,
) -> Projections:
    """Max (or mean) intensity projections of ``volume`` at ``angles_deg`` about the patient ``axis``.

    ``volume``: a :class:`Volume` with a 3-D array (any integer or float dtype; float32, int16 and uint8 are
    projected in place, others through a float32 copy; lazy arrays are read whole).
    ``angles_deg``: one or more finite angles in degrees (see the module docstring for the convention:
    for ``axis="S"``, 0° = rays anterior→posterior, columns toward patient left; counter-clockwise seen from the
    feet). ``axis``: ``"S"`` (default), ``"I"``, ``"A"``, ``"P"``, ``"L"`` or ``"R"``: the rotation axis runs
    through the volume centre along that patient direction, and image rows ascend toward it.
    ``kind``: ``"max"`` or ``"mean"`` along the rays. ``mask``: optional bool/integer labels (0..255) array of
    the volume array's shape, projected alongside by max with nearest-neighbour sampling (``mask_images``).
    ``pixel_mm``: detector pixel spacing across (default: the smallest in-plane spacing). ``fill``: value of
    pixels whose ray misses the data (default: the volume's minimum).

    The detector width (the same for every angle, so images stack) covers the diagonal of the planes: the
    smallest pixel count whose extent covers every voxel corner of every plane at any angle, plus one if needed
    to make ``width - n`` even, ``n`` the array size along ``u0`` (so that 0° pixels line up with voxels).
    Returns :class:`Projections` (``images`` float32 ``(n_angles, n_rows, width)``).
    """
    if not isinstance(volume, Volume):
        raise InputError(f"volume must be a voxelpipe Volume, got {type(volume).__name__}")
    if kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(axis, str) or axis.upper() not in AXES:
        raise InputError(f"axis must be one of {', '.join(AXES)} (a patient direction), got {axis!r}")
    axis = axis.upper()
    angles = _angles(angles_deg)
    if not volume.geometry.uniform:
        raise InputError("the volume's slices are unevenly spaced (uniform: false): no grid to project through; "
                         "convert the series with --uneven resample")
    if volume.geometry.sheared or volume.attrs.get("sheared") is True:
        volume, mask = aligned_for_projection(volume, mask)
    arr = _image_array(volume)
    plan = _plan(volume, arr.shape, axis)
    mask_arr = None if mask is None else _mask_array(mask, arr.shape)

    k = plan.array_axis
    i1, i2 = plan.in_plane
    n1, n2 = arr.shape[i1], arr.shape[i2]
    if min(n1, n2) < 2:
        raise InputError(f"the planes perpendicular to {axis} are {n1} x {n2} voxels (array axes {i1}, {i2}): "
                         "projection needs at least 2 voxels along each in-plane axis")
    nz = arr.shape[k]
    s1, s2 = plan.line_steps
    norm1, norm2 = float(np.linalg.norm(s1)), float(np.linalg.norm(s2))
    pm = min(norm1, norm2) if pixel_mm is None else _check_number("pixel_mm", pixel_mm, positive=True)

    d, u = directions(axis, angles)
    _, _, u0 = axis_frame(axis)
    # detector width: every voxel corner of every plane (planes shift with gantry tilt, linearly in the index)
    half = 0.0
    for z in (0, nz - 1):
        for c1 in (-0.5 * n1, 0.5 * n1):
            for c2 in (-0.5 * n2, 0.5 * n2):
                p = (z - 0.5 * (nz - 1)) * plan.tilt_step + c1 * s1 + c2 * s2
                half = max(half, float(np.linalg.norm(p)))
    width = max(1, int(math.ceil(2.0 * half / pm - 1e-9)))
    n_u = n1 if abs(s1 @ u0) / norm1 > abs(s2 @ u0) / norm2 else n2  # array size along u0
    if (width - n_u) % 2:
        width += 1
    if width > 1 << 20:
        raise InputError(f"pixel_mm={pm} gives a detector {width} pixels wide; use a larger pixel_mm")

    # per angle: elements along the in-plane axis closer to the detector line (lines are rows unless
    # ``transposed``); at a tie (45°) the one closer to u0, so that the choice does not depend on the layout
    p1 = u @ s1
    p2 = u @ s2
    r1, r2 = np.abs(p1) / norm1, np.abs(p2) / norm2
    elements_along_1 = abs(s1 @ u0) / norm1 > abs(s2 @ u0) / norm2
    transposed = np.where(np.abs(r1 - r2) <= 1e-12, elements_along_1, r1 > r2)
    alpha = np.where(transposed, p2, p1)
    beta = np.where(transposed, p1, p2)
    delta = (np.arange(nz) - 0.5 * (nz - 1))[:, None] * (u @ plan.tilt_step)[None, :]

    work = np.ascontiguousarray(np.moveaxis(arr, k, 0))
    if mask_arr is not None:
        mask_work = np.ascontiguousarray(np.moveaxis(mask_arr, k, 0))
        mask_images = np.empty((angles.size, nz, width), np.uint8)
    else:
        mask_work = np.empty((0, 0, 0), np.uint8)
        mask_images = np.empty((1, 1, 1), np.uint8)
    if fill is None:
        fill_value = float(np.min(work))
    else:
        fill_value = _check_number("fill", fill)

    ascending = plan.step_along_axis > 0
    out_rows = np.arange(nz, dtype=np.int64) if ascending else np.arange(nz - 1, -1, -1, dtype=np.int64)
    images = np.empty((angles.size, nz, width), np.float32)
    alpha = np.ascontiguousarray(alpha)
    beta = np.ascontiguousarray(beta)
    delta = np.ascontiguousarray(delta)
    mean = kind == "mean"
    run_ranges(lambda start, stop: project_into(work, mask_work, transposed, alpha, beta, delta, float(pm), fill_value,
                                                mean, out_rows, images, mask_images, start, stop), nz,
               runs_per_thread=4)

    geometry = volume.geometry
    positions = geometry.slice_positions
    if k == 0 and positions is not None and len(positions) == nz:
        normal = geometry.direction[:, 0]
        along = (np.asarray(positions, dtype=np.float64) - float(plan.centre @ normal)) * float(normal @ plan.a)
    else:
        along = (np.arange(nz) - 0.5 * (nz - 1)) * plan.step_along_axis
    row_positions = np.empty(nz)
    row_positions[out_rows] = along
    return Projections(
        images=images,
        mask_images=mask_images if mask_arr is not None else None,
        angles=angles,
        kind=kind,
        axis=axis,
        pixel_spacing=(abs(plan.step_along_axis), float(pm)),
        centre=plan.centre,
        axis_direction=plan.a,
        ray_directions=d,
        column_directions=u,
        row_positions=row_positions,
        fill=fill_value,
        array_axis=k,
    )
