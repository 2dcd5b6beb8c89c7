"""The pictures of one volume: middle planes across each patient axis, an anterior MIP, mask overlays.

Planes: the middle array plane across each patient axis (axial, coronal, sagittal: the array axis closest to S,
A/P, L/R, by nibabel's ``io_orientation`` rule, so oblique volumes give their nearest array planes), windowed
W400/L40 for CT and 1st-99th percentile otherwise, resampled with Pillow (bilinear) to square millimetre pixels
at most ``MAX_SIDE`` pixels long. MIP: anterior (``voxelpipe.ops.projection.project``, axis S, 0°, 1st-99th
percentile). Overlays (Zarr volumes with masks): one axial plane through each mask's centroid with the outlines
of every mask (``overlay_rgb``). 4-D volumes show frame 0 (``lead``).

Thin volumes: a view whose picture would be 1 voxel across (an array axis in its plane has extent 1, as the
coronal and sagittal views of a one-slice axial volume) is left out with a note; the plane across that axis (the
slice itself) is shown instead, overlays are drawn on it, and the MIP, a strip too, is left out with a note.

Memory: slices are read one plane at a time (zarr and h5py index lazily; an NPZ volume is loaded whole); a mask's
centroid is summed one chunk slab at a time; the MIP reads the whole volume, strided by the smallest integer step
on every axis that leaves at most ``MIP_MAX_VOXELS`` voxels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

import numpy as np
from PIL import Image

from voxelpipe.apps.report.html import Picture, SeriesSection
from voxelpipe.core.errors import InputError
from voxelpipe.core.geometry import Geometry
from voxelpipe.core.volume import Volume
from voxelpipe.ops.overlay import mask_colors, overlay_rgb, window_to_uint8
from voxelpipe.ops.projection import project
from voxelpipe.ops.reorient import orientation

MAX_SIDE = 256  # longest side of a picture, pixels
CT_WINDOW = (40.0, 400.0)  # soft tissue (centre, width), HU
MIP_MAX_VOXELS = 16 * 1024 * 1024  # larger volumes are strided for the MIP
MAX_OVERLAYS = 6  # masks per series drawn through their centroid (all are listed in the legend)

# view -> (patient axis of the plane normal, (axis, sign) growing down the rows, (axis, sign) growing rightward);
# patient axes are LPS indices 0 (L), 1 (P), 2 (S); sign +1 = toward L / P / S
VIEWS = {
    "axial": (2, (1, 1), (0, 1)),  # anterior up, patient left on the right
    "coronal": (1, (2, -1), (0, 1)),  # superior up, patient left on the right
    "sagittal": (0, (2, -1), (1, 1)),  # superior up, posterior on the right
}
LETTERS = {(0, 1): "L", (0, -1): "R", (1, 1): "P", (1, -1): "A", (2, 1): "S", (2, -1): "I"}


@dataclass
class ViewPlan:
    """How to cut one view out of a (slice, row, column) array.

    Attributes:
        view: "axial", "coronal" or "sagittal".
        axis: The array axis across the plane.
        row_axis: The array axis shown down the picture's rows.
        col_axis: The array axis shown across the picture's columns.
        flip_rows: Rows reversed.
        flip_cols: Columns reversed.
        spacing: (row, column) pixel spacing in mm.
        up: Patient direction at the top of the picture (letter of L, R, P, A, S, I).
        left: Patient direction on the left of the picture.
    """

    view: str
    axis: int
    row_axis: int
    col_axis: int
    flip_rows: bool
    flip_cols: bool
    spacing: tuple[float, float]
    up: str
    left: str


def view_plan(geometry: Geometry, view: str) -> ViewPlan:
    """How to cut ``view`` out of an array with ``geometry`` (radiological layout, see ``VIEWS``)."""
    normal, (row_world, row_sign), (col_world, col_sign) = VIEWS[view]
    axes = orientation(geometry.affine)  # per array axis: (closest LPS axis, sign)
    world_to_axis = {world: (a, sign) for a, (world, sign) in enumerate(axes)}
    row_axis, row_dir = world_to_axis[row_world]
    col_axis, col_dir = world_to_axis[col_world]
    spacing = tuple(_spacing(geometry, a) for a in (row_axis, col_axis))
    return ViewPlan(view, world_to_axis[normal][0], row_axis, col_axis, row_dir != row_sign, col_dir != col_sign,
                    spacing, LETTERS[(row_world, -row_sign)], LETTERS[(col_world, -col_sign)])


def _spacing(geometry: Geometry, axis: int) -> float:
    value = abs(float(geometry.spacing[axis]))
    return value if math.isfinite(value) and value > 0 else 1.0


def read_plane(array, plan: ViewPlan, index: int, lead: tuple = ()) -> np.ndarray:
    """The plane ``index`` of array axis ``plan.axis`` as the picture's (rows, columns).

    Only that plane is read from a lazy array (zarr, h5py).

    Args:
        array: (slice, row, column) array, or with leading axes selected by ``lead``.
        plan: The view.
        index: Index along ``plan.axis``.
        lead: Indices of leading axes (the frame of a 4-D volume).
    """
    selection = [slice(None)] * 3
    selection[plan.axis] = index
    return orient_plane(np.asarray(array[lead + tuple(selection)]), plan)


def orient_plane(plane: np.ndarray, plan: ViewPlan) -> np.ndarray:
    """A 2-D array over the two array axes other than ``plan.axis`` (in array order) turned and flipped to the
    picture's (rows, columns)."""
    remaining = [a for a in range(3) if a != plan.axis]
    if remaining[0] != plan.row_axis:
        plane = plane.T
    if plan.flip_rows:
        plane = plane[::-1]
    if plan.flip_cols:
        plane = plane[:, ::-1]
    return plane


def display_size(shape: tuple[int, int], spacing: tuple[float, float], max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(rows, columns) of a picture with square pixels.

    Args:
        shape: (rows, columns) of the plane, pixels.
        spacing: (row, column) spacing of the plane, mm.
        max_side: Longest side allowed, pixels.

    Returns:
        The finer spacing kept unless the longer side would exceed ``max_side``.
    """
    extent = (shape[0] * spacing[0], shape[1] * spacing[1])
    pixel = max(min(spacing), max(extent) / max_side)
    return max(1, int(round(extent[0] / pixel))), max(1, int(round(extent[1] / pixel)))


def square_pixels(plane: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """``plane`` (rows, columns) with ``spacing`` mm resampled (Pillow bilinear, float32) to
    :func:`display_size`; unchanged when it already has that size."""
    rows, cols = display_size(plane.shape, spacing)
    if (rows, cols) == plane.shape:
        return plane
    image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))
    return np.asarray(image.resize((cols, rows), Image.Resampling.BILINEAR))


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    inside = np.ascontiguousarray(mask != 0, dtype=np.uint8)
    if inside.shape == shape:
        return inside
    return np.asarray(Image.fromarray(inside).resize((shape[1], shape[0]), Image.Resampling.NEAREST))


def window_of(attrs: dict) -> tuple[float, float] | None:
    """Soft-tissue window (centre, width) in HU for CT, else None (1st-99th percentile)."""
    return CT_WINDOW if str(attrs.get("modality", "")).upper() == "CT" else None


def _caption(plan: ViewPlan, index: int, n: int, shape: tuple[int, ...], extra: str = "") -> str:
    return (f"{plan.view}{extra}: axis {plan.axis} index {index} of {n}; top {plan.up}, left {plan.left}; "
            f"{shape[1]}×{shape[0]} px")


def is_strip(plan: ViewPlan, shape: tuple[int, ...]) -> bool:
    """True when the view ``plan`` of a (slice, row, column) array of ``shape`` is 1 voxel across."""
    return shape[plan.row_axis] == 1 or shape[plan.col_axis] == 1


def _thin_note(shape: tuple[int, ...], left_out: list[str], shown: str) -> str:
    thin = [a for a in range(3) if shape[a] == 1]
    axes = " and ".join(f"array axis {a}" for a in thin)
    what = " (one slice)" if thin == [0] else ""
    return (f"{' and '.join(left_out)} view{'s' if len(left_out) > 1 else ''} left out: the volume is 1 voxel thick "
            f"along {axes}{what}, so {'they' if len(left_out) > 1 else 'it'} would be 1-voxel strips; the {shown} "
            "view is the plane itself")


def view_plans(geometry: Geometry, shape: tuple[int, ...]) -> tuple[list[ViewPlan], list[str]]:
    """The views drawn of a (slice, row, column) array of ``shape``, and the ones left out as 1-voxel strips.

    Every view of ``VIEWS`` is drawn unless :func:`is_strip`; when all are strips (two axes of extent 1) the one
    with the most voxels is kept.

    Returns:
        (plans drawn in ``VIEWS`` order, names of the views left out).
    """
    shape = tuple(shape[-3:])
    plans = [view_plan(geometry, view) for view in VIEWS]
    kept = [p for p in plans if not is_strip(p, shape)]
    if not kept:
        kept = [max(plans, key=lambda p: shape[p.row_axis] * shape[p.col_axis])]
    return kept, [p.view for p in plans if p not in kept]


def view_pictures(volume: Volume, lead: tuple, window, notes: list[str] | None = None) -> list[Picture]:
    """The middle plane across each patient axis (axial, coronal, sagittal), less those 1 voxel across.

    Args:
        volume: A 3-D or 4-D volume (``lead`` selects the frame of a 4-D one).
        lead: Indices of leading axes.
        window: (centre, width) or None for the 1st-99th percentile.
        notes: Where a note saying which views were left out (:func:`view_plans`) is appended.
    """
    pictures = []
    plans, left_out = view_plans(volume.geometry, volume.shape)
    if left_out and notes is not None:
        notes.append(_thin_note(tuple(volume.shape[-3:]), left_out, plans[0].view))
    for plan in plans:
        n = volume.shape[-3:][plan.axis]
        index = n // 2
        image = square_pixels(read_plane(volume.array, plan, index, lead), plan.spacing)
        pictures.append(Picture(plan.view, _caption(plan, index, n, image.shape), window_to_uint8(image, window)))
    return pictures


def _strided(geometry: Geometry, shape: tuple[int, ...], step: int) -> Geometry:
    affine = np.array(geometry.affine, dtype=np.float64)
    affine[:3, :3] *= step
    positions = np.asarray(geometry.slice_positions)[::step] if len(geometry.slice_positions) else None
    return Geometry(shape, geometry.spacing * step, geometry.origin, geometry.direction, positions, affine)


def mip_picture(volume: Volume, lead: tuple) -> Picture:
    """Anterior maximum intensity projection (axis S, 0°: rays A→P), cropped to the volume's extent, superior up.

    The volume is strided when it has more than ``MIP_MAX_VOXELS`` voxels. A volume whose planes are not
    perpendicular to S (gantry tilt, oblique), which ``project`` refuses, gets the maximum along the array axis
    closest to A/P instead, laid out like the coronal view.

    Raises:
        InputError: The projection would be 1 voxel across (the volume is 1 voxel thick along the array axis
            closest to S or to L/R, as a one-slice axial volume), or ``project`` refuses the volume for a reason
            other than obliquity.
    """
    shape = volume.shape[-3:]
    if is_strip(view_plan(volume.geometry, "coronal"), shape):
        raise InputError(f"the volume ({'×'.join(map(str, shape))}) is 1 voxel thick across the anterior view: "
                         "its projection would be a 1-voxel strip")
    step = 1
    while math.prod(-(-n // step) for n in shape) > MIP_MAX_VOXELS:
        step += 1
    data = np.asarray(volume.array[lead + (slice(None, None, step),) * 3])
    geometry = _strided(volume.geometry, data.shape, step) if step > 1 else volume.geometry
    strided = f", strided by {step} on every axis" if step > 1 else ""
    try:
        result = project(Volume(data, geometry), [0.0], axis="S")
    except InputError as exc:
        if "oblique" not in str(exc):
            raise
        plan = view_plan(geometry, "coronal")
        image = square_pixels(orient_plane(data.max(axis=plan.axis), plan), plan.spacing)
        return Picture("mip", f"MIP along array axis {plan.axis} (top {plan.up}, left {plan.left}; planes oblique "
                              f"to S){strided}; {image.shape[1]}×{image.shape[0]} px", window_to_uint8(image, None))
    corners = np.array([geometry.affine @ (*c, 1.0) for c in product(*[(-0.5, n - 0.5) for n in data.shape])])
    half = float(np.max(np.abs((corners[:, :3] - result.centre) @ result.column_directions[0])))
    keep = np.abs(result.column_offsets()) <= half * (1 + 1e-9)
    image = result.images[0][:, keep][::-1]  # rows ascend toward S: superior at the top
    image = square_pixels(image, result.pixel_spacing)
    return Picture("mip", f"MIP, anterior view (top S, left R){strided}; {image.shape[1]}×{image.shape[0]} px",
                   window_to_uint8(image, None))


def mask_centroid(mask) -> tuple[np.ndarray, int]:
    """Centroid and voxel count of a (slice, row, column) mask, read one chunk slab at a time.

    Returns:
        (centroid as array indices along axes 0, 1, 2 — zeros when empty; number of non-zero voxels).
    """
    depth = int((getattr(mask, "chunks", None) or (8,))[0])
    n0, n1, n2 = mask.shape
    sums = np.zeros(3)
    total = 0
    for z0 in range(0, n0, depth):
        inside = np.asarray(mask[z0:z0 + depth]) != 0
        per_slice = inside.sum(axis=(1, 2))
        count = int(per_slice.sum())
        if not count:
            continue
        total += count
        sums[0] += float(per_slice @ np.arange(z0, z0 + len(per_slice)))
        sums[1] += float(inside.sum(axis=(0, 2)) @ np.arange(n1))
        sums[2] += float(inside.sum(axis=(0, 1)) @ np.arange(n2))
    return (sums / total if total else sums), total


def _colors(masks: dict) -> dict[str, tuple[int, int, int]]:
    """Each mask's stored colour (ROIDisplayColor) where usable, else the overlay defaults."""
    chosen = {}
    for name, array in masks.items():
        color = dict(array.attrs).get("color")
        if isinstance(color, (list, tuple)) and len(color) == 3:
            chosen[name] = color
    try:
        return mask_colors(list(masks), chosen)
    except InputError:
        return mask_colors(list(masks))


def overlay_pictures(volume: Volume, masks: dict, lead: tuple, window, section: SeriesSection) -> list[Picture]:
    """One axial plane through each mask's centroid (up to ``MAX_OVERLAYS``) with every mask's outline; the
    first view of :func:`view_plans` instead when the axial one is 1 voxel across.

    Adds every mask to ``section.legend`` (name, RGB, voxel count) and a note when masks were left out.

    Args:
        volume: The volume; ``masks``: name -> (slice, row, column) mask array of the same grid.
        lead: Indices of leading axes (frame of a 4-D volume).
        window: (centre, width) or None for the 1st-99th percentile.
        section: The series section the legend and notes go to.
    """
    plans, _ = view_plans(volume.geometry, volume.shape)
    plan = next((p for p in plans if p.view == "axial"), plans[0])
    palette = _colors(masks)
    n = volume.shape[-3:][plan.axis]
    pictures = []
    for name, mask in masks.items():
        centroid, voxels = mask_centroid(mask)
        section.legend.append((name, palette[name], f"{voxels} voxels" if voxels else "empty"))
        if not voxels or len(pictures) >= MAX_OVERLAYS:
            continue
        index = int(round(float(centroid[plan.axis])))
        image = square_pixels(read_plane(volume.array, plan, index, lead), plan.spacing)
        planes = {m: _resize_mask(read_plane(array, plan, index), image.shape) for m, array in masks.items()}
        rgb = overlay_rgb(image, planes, window, palette)
        pictures.append(Picture("overlay", _caption(plan, index, n, image.shape, f" through the centroid of {name}"),
                                rgb))
    if len(masks) > MAX_OVERLAYS:
        section.notes.append(f"{len(masks)} masks: planes drawn for the first {MAX_OVERLAYS} non-empty ones")
    return pictures


__all__ = ["CT_WINDOW", "LETTERS", "MAX_OVERLAYS", "MAX_SIDE", "MIP_MAX_VOXELS", "VIEWS", "ViewPlan",
           "display_size", "is_strip", "mask_centroid", "mip_picture", "orient_plane", "overlay_pictures",
           "read_plane", "square_pixels", "view_pictures", "view_plan", "view_plans", "window_of"]
