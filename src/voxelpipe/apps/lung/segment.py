"""Lung segmentation of a CT volume in HU, its bounding box and crop.

Arrays are ``(slice, row, column)`` = axes 0, 1, 2 with ``spacing`` in mm along those axes; the slices are
assumed axial (axis 0 cranio-caudal, columns running across the patient), as CT series are.

:func:`segment_lungs` works on the whole 3-D volume with ``scipy.ndimage`` labelling and two small numba kernels
(label counts/boxes, the distance transform); no per-slice Python loops:

1. **Threshold**: ``air = hu < threshold`` (−320 HU by default: lung parenchyma and air, not fat or tissue).
2. **Outside air**: the 6-connected 3-D components of ``air`` that touch the *in-plane* border (first/last row
   or column) of any slice are outside the body. The first and last slice planes do not count as border: a
   scan cut through the lungs (lungs touching the first or last slice) keeps them.
3. **Body**: the largest 6-connected component of non-air, holes filled slice by slice. Air must lie inside
   it, so closed air outside the body (the air channel of a hollow table, air in a mattress or a blanket fold)
   is dropped even though it does not touch the border.
4. **Airways**: on every slice, small (< ``TRACHEA_MAX_AREA_MM2``) 2-D air components whose centroid lies
   within ``TRACHEA_MIDLINE_MM`` of the body's midline on that slice are removed: the trachea (and
   oesophageal air, small central gas pockets). This also cuts the airway's link between the two lungs, so
   the trachea never joins the lung mask (those voxels are cleared again after the closing); the main bronchi
   past that band stay with the lungs.
5. **Lungs**: 6-connected 3-D components of what is left; components of at least ``min_fraction`` (10 %) of
   the largest one's volume are lungs: the two lungs whether they are joined (one component at the anterior
   junction) or separate (two), minus stomach/bowel gas and small pockets.
6. **Gaps and holes**, per lung component (so nothing between two separate lungs is ever filled): a closing
   with a ball of radius ``closing_mm`` (``CLOSING_MM`` = 25 mm), an ellipsoid in voxels (anisotropic spacing
   is exact: exact Euclidean distance transforms in mm, a numba kernel), on a box zero-padded by the radius so
   it never sticks to the volume's border; then holes filled slice by slice (vessels, airway walls, tumours
   surrounded by lung). Juxtapleural nodules and masses against the pleura or the mediastinum stay inside: a
   pocket of the lung whose mouth is narrower than about 50 mm is closed. Why 25 mm rather than 10 mm: on NSCLC
   LUNG1-001 (a 157 ml hilar GTV open towards the mediastinum) the GTV fraction inside the mask is 32 % with
   10 mm, 80 % with 20 mm and 99 % with 25 mm, while the Dice against the RTSTRUCT lungs (which exclude the
   GTV) goes from 0.967 to 0.950.

Known limits: lungs joined into one component (anterior/posterior junction, or airways left after step 4) are
closed together, so mediastinum narrower than ~50 mm between them can be filled; a collapsed lung smaller than
``min_fraction`` of the other is dropped; the airway rule assumes axial slices with columns across the patient.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from voxelpipe.core.errors import InputError
from voxelpipe.core.geometry import Geometry
from voxelpipe.core.volume import Volume
from voxelpipe.kernels.morphology import label_counts, label_stats, squared_distance_mm

__all__ = ["segment_lungs", "lung_box", "crop", "CLOSING_MM", "TRACHEA_MAX_AREA_MM2", "TRACHEA_MIDLINE_MM"]

CLOSING_MM = 25.0  # closing radius (mm): see the module docstring
TRACHEA_MAX_AREA_MM2 = 800.0  # 2-D air components smaller than this (mm²) near the midline are airways
TRACHEA_MIDLINE_MM = 30.0  # ... when their centroid is within this distance (mm) of the body's midline
IN_PLANE = np.zeros((3, 3, 3), dtype=bool)  # 4-connectivity within a slice, no link across slices
IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)
IN_PLANE_HOLES = IN_PLANE  # background connectivity for the hole filling (4-connected: holes stay closed)


def _spacing(spacing: Sequence[float]) -> np.ndarray:
    s = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if s.shape != (3,) or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise InputError(f"spacing must be 3 finite numbers > 0 mm, got {np.asarray(spacing).tolist()!r}")
    return s


def _fill_2d(mask: np.ndarray) -> np.ndarray:
    """Holes filled on every slice at once: background components (4-connected within a slice, no links along
    axis 0) that do not touch the slice's in-plane border are holes."""
    background, n = ndimage.label(~mask, structure=IN_PLANE_HOLES)
    if n == 0:
        return mask.copy()
    open_ = np.zeros(n + 1, dtype=bool)
    _mark_in_plane_border(background, open_)
    return mask | ~open_[background]


def _mark_in_plane_border(labels: np.ndarray, flags: np.ndarray) -> None:
    """flags[label] = True for every label on the first/last row or column of any slice; flags[0] = True."""
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        flags[edge.ravel()] = True
    flags[0] = True


def _closing_mm(mask: np.ndarray, spacing: np.ndarray, radius_mm: float) -> np.ndarray:
    """Binary closing with a ball of ``radius_mm`` (an ellipsoid in voxels): dilation = within radius of the
    mask, erosion = farther than radius from the dilation's outside, by exact Euclidean distances in mm.
    ``mask`` must have a zero margin of at least radius/spacing + 1 voxels on every side."""
    r2 = float(radius_mm) ** 2
    s = [float(v) for v in spacing]
    dilated = squared_distance_mm(np.ascontiguousarray(mask), *s) <= r2
    return squared_distance_mm(~dilated, *s) > r2


def _remove_airways(candidates: np.ndarray, body: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``candidates`` without small 2-D components near each slice's body midline (trachea, oesophagus), and
    the removed voxels."""
    labels, n = ndimage.label(candidates, structure=IN_PLANE)
    if n == 0:
        return candidates, np.zeros_like(candidates)
    counts, boxes = label_stats(labels, n)
    area = counts * (spacing[1] * spacing[2])
    # midline of every slice: mean column of the body there
    per_column = body.sum(axis=1, dtype=np.int64)  # (slice, column)
    total = per_column.sum(axis=1)
    cols = np.arange(body.shape[2], dtype=np.float64)
    midline = np.where(total > 0, per_column @ cols / np.maximum(total, 1), (body.shape[2] - 1) / 2)
    # a 2-D component's slice is its box start on axis 0; its centre column the middle of its column range
    centre = (boxes[:, 2] + boxes[:, 5] - 1) / 2.0
    slice_of = np.clip(boxes[:, 0], 0, body.shape[0] - 1)
    drop = (area < TRACHEA_MAX_AREA_MM2) & (np.abs(centre - midline[slice_of]) * spacing[2] < TRACHEA_MIDLINE_MM)
    drop[0] = False
    dropped = drop[labels]
    return candidates & ~dropped, dropped


def segment_lungs(hu: np.ndarray, spacing: Sequence[float], threshold: float = -320.0, *,
                  min_fraction: float = 0.10, closing_mm: float = CLOSING_MM) -> np.ndarray:
    """Lung mask (uint8 0/1, same shape) of a CT volume in HU; see the module docstring for the rules.

    ``spacing``: mm along axes 0, 1, 2. ``threshold``: HU below which a voxel is air/lung. ``min_fraction``:
    air components at least this fraction of the largest one are kept as lungs. ``closing_mm``: radius of the
    closing (0 = none). An image without any lung-like air gives an all-zero mask."""
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise InputError(f"segment_lungs needs a 3-D (slice, row, column) volume, got shape {hu.shape}")
    s = _spacing(spacing)
    out = np.zeros(hu.shape, dtype=np.uint8)
    if hu.size == 0:
        return out
    air = hu < threshold  # NaN compares False: not air

    # outside air: components touching the in-plane border of any slice
    labels, n = ndimage.label(air)
    outside = np.zeros(n + 1, dtype=bool)
    _mark_in_plane_border(labels, outside)
    # early size rule (it is applied again below): inside components smaller than min_fraction of the
    # largest inside one are not lungs, whatever follows; this keeps the working box small
    sizes = label_counts(labels, n)
    sizes[outside] = 0
    if sizes.max() == 0:
        return out
    outside |= sizes < min_fraction * sizes.max()
    inside_air = ~outside[labels]
    del labels
    # from here on: the box of the inside air, 2 voxels wider in-plane (the body wall around the lungs)
    sub = []
    for axis in range(3):
        hit = np.flatnonzero(np.any(inside_air, axis=tuple(a for a in range(3) if a != axis)))
        grow = 0 if axis == 0 else 2
        sub.append(slice(max(0, int(hit[0]) - grow), min(hu.shape[axis], int(hit[-1]) + 1 + grow)))
    sub = tuple(sub)
    air, inside_air = air[sub], inside_air[sub]

    # body: largest non-air component, holes filled per slice; air must lie in it
    tissue, m = ndimage.label(~air)
    if m == 0:
        return out
    sizes = label_counts(tissue, m)
    sizes[0] = 0
    body = _fill_2d(tissue == int(np.argmax(sizes)))
    del tissue
    candidates = inside_air & body
    candidates, airways = _remove_airways(candidates, body, s)

    # lungs: components of at least min_fraction of the largest
    labels, n = ndimage.label(candidates)
    if n == 0:
        return out
    sizes, boxes = label_stats(labels, n)
    sizes[0] = 0
    keep = np.flatnonzero(sizes >= min_fraction * sizes.max())
    keep = keep[keep > 0]
    pad = np.ceil(closing_mm / s).astype(int) + 1 if closing_mm > 0 else np.ones(3, dtype=int)
    for label in keep:  # one or two lungs (rarely three): not a per-slice loop
        box = tuple(slice(int(boxes[label, a]), int(boxes[label, a + 3])) for a in range(3))
        part = np.pad(labels[box] == label, [(p, p) for p in pad])
        if closing_mm > 0:  # the closing only adds voxels: one hole filling after it is enough
            part = _closing_mm(part, s, closing_mm)
        part = _fill_2d(part)
        # back into the volume: the padded box clipped to the array
        lo = [b.start - p + o.start for b, p, o in zip(box, pad, sub)]
        src = tuple(slice(max(0, -lo_), max(0, -lo_) + (min(hu.shape[a], lo_ + part.shape[a]) - max(0, lo_)))
                    for a, lo_ in enumerate(lo))
        dst = tuple(slice(max(0, lo_), min(hu.shape[a], lo_ + part.shape[a])) for a, lo_ in enumerate(lo))
        out[dst] |= part[src]
    out[sub][airways] = 0  # the closing must not bring the trachea back
    return out


def lung_box(mask: np.ndarray, spacing: Sequence[float], margin_mm: float = 10.0) -> tuple[slice, slice, slice]:
    """Bounding box of the non-zero voxels of ``mask`` grown by ``margin_mm`` (rounded up to whole voxels per
    axis) and clipped to the array: three ``slice(start, stop)``. An empty mask gives the whole array."""
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise InputError(f"lung_box needs a 3-D mask, got shape {mask.shape}")
    s = _spacing(spacing)
    if margin_mm < 0:
        raise InputError(f"margin_mm must be >= 0, got {margin_mm}")
    margin = [int(v) for v in np.ceil(margin_mm / s - 1e-9)]
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(np.any(mask, axis=other))
        if hit.size == 0:
            return tuple(slice(0, n) for n in mask.shape)
        box.append(slice(max(0, int(hit[0]) - margin[axis]), min(mask.shape[axis], int(hit[-1]) + 1 + margin[axis])))
    return tuple(box)


def crop(volume: Volume, box: Sequence[slice]) -> Volume:
    """``volume`` cut to ``box`` (three slices with step 1, as :func:`lung_box` gives) with a matching geometry:
    origin = affine @ (box starts), same spacing and direction, affine translated, ``slice_positions`` cut.
    A 4-D (frame, slice, row, column) array is cut on its last three axes. Per-slice attrs lists are cut too and
    ``crop_box`` ([[start, stop] × 3]) is recorded in the attrs."""
    geometry = volume.geometry
    shape = tuple(geometry.shape)
    if len(box) != 3:
        raise InputError(f"crop box must have 3 slices, got {len(box)}")
    starts, stops = [], []
    for axis, b in enumerate(box):
        start, stop, step = b.indices(shape[axis])
        if step != 1:
            raise InputError(f"crop box slices must have step 1, got {b!r}")
        starts.append(start)
        stops.append(max(start, stop))
    new_shape = tuple(b - a for a, b in zip(starts, stops))
    cut = tuple(slice(a, b) for a, b in zip(starts, stops))
    affine = np.array(geometry.affine, dtype=np.float64)
    origin = (affine @ np.array([*starts, 1.0]))[:3]
    affine[:3, 3] = origin
    new_geometry = Geometry(new_shape, np.array(geometry.spacing), origin, np.array(geometry.direction),
                            np.asarray(geometry.slice_positions)[cut[0]], affine)
    array = volume.array[(Ellipsis, *cut)]
    attrs = dict(volume.attrs)
    for key, value in volume.attrs.items():
        if isinstance(value, list) and len(value) == shape[0] and key.startswith(("slice_", "sop_", "rescale_")):
            attrs[key] = value[cut[0]]
    if "geometry" in attrs and isinstance(attrs["geometry"], dict):
        attrs["geometry"] = new_geometry.to_attrs()
    for key in ("shape", "spacing", "origin", "direction", "affine", "affine_ras", "slice_positions"):
        if key in attrs:
            attrs[key] = new_geometry.to_attrs()[key]
    attrs["crop_box"] = [[a, b] for a, b in zip(starts, stops)]
    return Volume(array, new_geometry, attrs, "")
