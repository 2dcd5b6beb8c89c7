"""Nodule level: probability maps → connected components → nodule rows and per-patient features.

* ``load_model(spec)``: a model is any callable ``model(hu, geometry) -> probability map`` (same shape, finite
  floats). ``spec`` is ``"module:function"`` (the function part may be dotted, ``"module:Class.method"``);
  ``None`` is the built-in :func:`blob_model`. The returned :class:`Model` validates every result.
* ``blob_model(hu, geometry)``: the built-in candidate detector, so the lung command runs without weights (see its
  docstring for the rule). It is a heuristic for candidates, not a trained detector.
* ``find_nodules(prob, hu, geometry, threshold)``: 26-connected components of ``prob >= threshold`` with centroid
  (LPS mm), volume, equivalent diameter, probability and HU statistics and bounding box (``NODULE_COLUMNS``).
* ``patient_features(rows)``: count, largest diameter, total volume, max probability.

Arrays are (slice, row, column); positions are LPS mm through ``geometry.affine`` (index → LPS).
"""
from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

from voxelpipe.apps.lung.segment import segment_lungs
from voxelpipe.core.errors import InputError, VoxelpipeError
from voxelpipe.core.geometry import Geometry

NODULE_COLUMNS = [
    "nodule", "centroid_x", "centroid_y", "centroid_z", "volume_mm3", "diameter_mm",
    "prob_max", "prob_mean", "hu_mean", "hu_max",
    "bbox_0_start", "bbox_0_stop", "bbox_1_start", "bbox_1_stop", "bbox_2_start", "bbox_2_stop",
    "n_voxels",
]
PATIENT_FEATURE_COLUMNS = ["n_nodules", "largest_diameter_mm", "total_volume_mm3", "max_probability"]

CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


class ModelError(VoxelpipeError, RuntimeError):
    """A nodule model raised an error or returned an unusable probability map."""


# ----------------------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------------------
class Model:
    """A loaded nodule model: ``model(hu, geometry) -> float32 probability map`` (validated).

    Picklable when the wrapped function is importable by name (module-level), so it can be sent to workers;
    sending the spec string and calling :func:`load_model` in the worker works too."""

    def __init__(self, function: Callable, name: str):
        self.function = function
        self.name = name

    def __call__(self, hu: np.ndarray, geometry: Geometry, lung_mask: np.ndarray | None = None) -> np.ndarray:
        """The validated probability map. ``lung_mask`` (optional) is passed on to the built-in
        :func:`blob_model` only, which then skips its own segmentation; user models get ``(hu, geometry)``."""
        try:
            if lung_mask is not None and self.function is blob_model:
                result = blob_model(hu, geometry, lung_mask=lung_mask)
            else:
                result = self.function(hu, geometry)
        except VoxelpipeError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported with the model's name, the cause chained
            raise ModelError(f"nodule model {self.name!r} failed: {type(exc).__name__}: {exc}") from exc
        return validate_probability_map(result, np.shape(hu), self.name)

    def __repr__(self) -> str:
        return f"Model({self.name!r})"


def validate_probability_map(result: object, shape: Sequence[int], name: str) -> np.ndarray:
    """``result`` as a float32 array of ``shape`` with only finite values, else an InputError naming the model."""
    if result is None:
        raise InputError(f"nodule model {name!r} returned None, expected a probability map of shape {tuple(shape)}")
    try:
        array = np.asarray(result)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"nodule model {name!r} returned {type(result).__name__}, not an array: {exc}") from exc
    if array.shape != tuple(shape):
        raise InputError(f"nodule model {name!r} returned shape {array.shape}, expected the input's shape "
                         f"{tuple(shape)}")
    if array.dtype.kind not in "biuf":
        raise InputError(f"nodule model {name!r} returned dtype {array.dtype}, expected real numbers")
    array = array.astype(np.float32, copy=False)
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise InputError(f"nodule model {name!r} returned {bad} non-finite value(s) (NaN or inf) of {array.size}")
    return array


def load_model(spec: str | Callable | None) -> Model:
    """The nodule model named by ``spec``: ``"module:function"`` (function may be dotted), ``None`` or ``""`` →
    the built-in :func:`blob_model`; a callable is wrapped as it is. Raises InputError naming the spec when the
    module cannot be imported, the attribute is missing, or it is not callable."""
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return Model(blob_model, "voxelpipe.apps.lung.nodules:blob_model")
    if callable(spec) and not isinstance(spec, str):
        name = f"{getattr(spec, '__module__', '?')}:{getattr(spec, '__qualname__', repr(spec))}"
        return Model(spec, name)
    if not isinstance(spec, str):
        raise InputError(f"nodule model spec {spec!r}: expected 'module:function', a callable or None")
    spec = spec.strip()
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise InputError(f"nodule model {spec!r}: expected 'module:function' (e.g. 'mypackage.models:predict')")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - ImportError, or any error raised while importing the module
        raise InputError(f"nodule model {spec!r}: cannot import module {module_name!r}: "
                         f"{type(exc).__name__}: {exc}") from exc
    target: object = module
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise InputError(f"nodule model {spec!r}: module {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(target):
        raise InputError(f"nodule model {spec!r}: {attr_path!r} is a {type(target).__name__}, not callable")
    return Model(target, spec)


# ----------------------------------------------------------------------------------------------------------
# find_nodules / patient_features
# ----------------------------------------------------------------------------------------------------------
def voxel_volume_mm3(geometry: Geometry) -> float:
    """Volume of one voxel: |det| of the affine's 3×3 part (spacing product; the sheared cell with gantry tilt)."""
    return float(abs(np.linalg.det(geometry.affine[:3, :3])))


def _check_arrays(prob: np.ndarray, hu: np.ndarray | None, geometry: Geometry) -> tuple[np.ndarray, np.ndarray | None]:
    prob = np.asarray(prob)
    if prob.ndim != 3:
        raise InputError(f"find_nodules: probability map must be 3-D (slice, row, column), got shape {prob.shape}")
    if prob.dtype.kind not in "biuf":
        raise InputError(f"find_nodules: probability map dtype {prob.dtype} is not numeric")
    if tuple(geometry.shape) != prob.shape:
        raise InputError(f"find_nodules: probability map shape {prob.shape} differs from the geometry's "
                         f"{tuple(geometry.shape)}")
    if hu is not None:
        hu = np.asarray(hu)
        if hu.shape != prob.shape:
            raise InputError(f"find_nodules: HU array shape {hu.shape} differs from the probability map's {prob.shape}")
    return prob, hu


def _component_stats(labels: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Per component 1..n: voxel counts, index-space centroids, bounding boxes (from one pass over the labels)."""
    flat = np.flatnonzero(labels)
    lab = labels.ravel()[flat]
    counts = np.bincount(lab, minlength=n + 1)[1:].astype(np.float64)
    coords = np.unravel_index(flat, labels.shape)
    centroid = np.stack([np.bincount(lab, weights=c, minlength=n + 1)[1:] for c in coords], axis=1) / counts[:, None]
    return {"flat": flat, "lab": lab, "counts": counts, "centroid_index": centroid}


def find_nodules(prob: np.ndarray, hu: np.ndarray | None, geometry: Geometry, threshold: float = 0.5) -> list[dict]:
    """Nodules = 26-connected components of ``prob >= threshold`` (NaN never passes).

    One dict per nodule with ``NODULE_COLUMNS``: ``nodule`` numbers 1..n in label order (first voxel in C order);
    centroid_x/y/z = LPS mm of the unweighted mean voxel index through ``geometry.affine``; ``volume_mm3`` =
    voxels × voxel volume; ``diameter_mm`` = equivalent sphere diameter (6V/π)^(1/3); prob_max/prob_mean over the
    component; hu_mean/hu_max over the component (NaN when ``hu`` is None); bbox_a_start/stop = index slice along
    axis a (stop exclusive); ``n_voxels``. An empty map gives ``[]``."""
    threshold = float(threshold)
    if not math.isfinite(threshold):
        raise InputError(f"find_nodules: threshold must be finite, got {threshold}")
    prob, hu = _check_arrays(prob, hu, geometry)
    labels, n = ndimage.label(prob >= threshold, structure=CONNECTIVITY_26)
    if n == 0:
        return []
    stats = _component_stats(labels, n)
    flat, lab, counts = stats["flat"], stats["lab"], stats["counts"]
    centroid_index = stats["centroid_index"]
    lps = centroid_index @ geometry.affine[:3, :3].T + geometry.affine[:3, 3]
    volume = counts * voxel_volume_mm3(geometry)
    diameter = np.cbrt(6.0 * volume / np.pi)

    p = prob.ravel()[flat].astype(np.float64)
    order = np.argsort(lab, kind="stable")
    starts = np.searchsorted(lab[order], np.arange(1, n + 1))  # every label 1..n has at least one voxel
    prob_max = np.maximum.reduceat(p[order], starts)
    prob_mean = np.bincount(lab, weights=p, minlength=n + 1)[1:] / counts
    if hu is not None:
        h = hu.ravel()[flat].astype(np.float64)
        hu_mean = np.bincount(lab, weights=h, minlength=n + 1)[1:] / counts
        hu_max = np.maximum.reduceat(h[order], starts)
    else:
        hu_mean = hu_max = np.full(n, np.nan)
    boxes = ndimage.find_objects(labels, max_label=n)

    rows = []
    for i in range(n):
        box = boxes[i]
        row = {
            "nodule": i + 1,
            "centroid_x": float(lps[i, 0]), "centroid_y": float(lps[i, 1]), "centroid_z": float(lps[i, 2]),
            "volume_mm3": float(volume[i]), "diameter_mm": float(diameter[i]),
            "prob_max": float(prob_max[i]), "prob_mean": float(prob_mean[i]),
            "hu_mean": float(hu_mean[i]), "hu_max": float(hu_max[i]),
        }
        for axis in range(3):
            row[f"bbox_{axis}_start"] = int(box[axis].start)
            row[f"bbox_{axis}_stop"] = int(box[axis].stop)
        row["n_voxels"] = int(counts[i])
        rows.append(row)
    return rows


def patient_features(nodules: Sequence[dict]) -> dict:
    """Per-patient aggregates of ``find_nodules`` rows: n_nodules, largest_diameter_mm, total_volume_mm3,
    max_probability (0, 0.0, 0.0, 0.0 when there are none). Values may be numbers or strings (CSV rows)."""
    diameters = [float(r["diameter_mm"]) for r in nodules]
    volumes = [float(r["volume_mm3"]) for r in nodules]
    probs = [float(r["prob_max"]) for r in nodules]
    return {
        "n_nodules": len(nodules),
        "largest_diameter_mm": max(diameters, default=0.0),
        "total_volume_mm3": float(sum(volumes)),
        "max_probability": max(probs, default=0.0),
    }


# ----------------------------------------------------------------------------------------------------------
# built-in candidate detector
# ----------------------------------------------------------------------------------------------------------
def ellipsoid_structure(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Boolean ball of ``radius_mm`` on a grid of ``spacing`` (voxel centres within the radius; at least the
    6-neighbour cross)."""
    spacing = np.asarray(spacing, dtype=np.float64)
    half = np.maximum(np.floor(radius_mm / spacing).astype(int), 1)
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    dist2 = sum((g * s) ** 2 for g, s in zip(grids, spacing))
    ball = dist2 <= radius_mm ** 2 + 1e-9
    centre = tuple(half)
    for axis in range(3):
        for step in (-1, 1):
            at = list(centre)
            at[axis] += step
            ball[tuple(at)] = True
    return ball


def _ramp(x: np.ndarray, zero: float, one: float) -> np.ndarray:
    """0 at ``zero``, 1 at ``one``, linear between, clipped (works for zero > one too)."""
    return np.clip((x - zero) / (one - zero), 0.0, 1.0)


def blob_model(hu: np.ndarray, geometry: Geometry, *, lung_mask: np.ndarray | None = None,
               hu_threshold: float = -400.0, open_radius_mm: float = 2.0, min_diameter_mm: float = 3.0,
               max_diameter_mm: float = 30.0, full_size_mm: tuple[float, float] = (5.0, 9.0),
               surrounded: tuple[float, float] = (0.4, 0.6)) -> np.ndarray:
    """Built-in nodule candidate detector: float32 map in [0, 1], constant over each candidate.

    1. Lung mask: ``voxelpipe.apps.lung.segment.segment_lungs(hu, geometry.spacing)`` unless ``lung_mask`` is given
       (its closing
       keeps juxtapleural nodules inside the mask).
    2. Solid voxels: ``hu > hu_threshold`` (−400 HU) inside the lung mask.
    3. Opening with a ball of ``open_radius_mm`` (2 mm; at least the 6-neighbour cross) removes noise and thin
       vessels; each opened component is then grown back by one conditional dilation inside the solid voxels so
       the nodule's surface voxels the opening shaved off count again.
    4. Components (26-connected) with equivalent-sphere diameter outside [``min_diameter_mm``,
       ``max_diameter_mm``] (3–30 mm) are dropped.
    5. Probability = size × shape × density × surroundings, each in [0, 1]:
       size = ramp of the equivalent diameter over ``full_size_mm`` (0 at 5 mm → 1 at 9 mm: a perfect candidate
       reaches 0.5 at 7 mm, so small vessel cross-sections and specks stay below the default threshold while
       still showing in the map); shape = ramp of the elongation
       sqrt(λmax/λmin) of the component's second moments in mm, 1 up to 2.0 (a sphere is 1, a hemisphere ~1.8,
       a juxtapleural nodule cut by the pleura in between) down to 0 at 3.5 (vessel segments are ≫ 3);
       density = ramp of the mean HU, 0 at ``hu_threshold`` → 1 at −100 HU;
       surroundings = ramp of the fraction of the candidate's one-voxel (26-neighbour) shell that is aerated lung
       (inside the mask, ≤ ``hu_threshold``) over ``surrounded`` (0 at 0.4 → 1 at 0.6): a nodule is mostly
       surrounded by lung — 1.0 in the parenchyma, ~2/3 for a hemisphere on the pleura — while the airway walls,
       hilar tissue and pleural folds that the mask's closing takes in touch the mask's edge over much of
       their surface.
    6. Juxtapleural completion: a scored candidate whose shell touches the outside of the lung mask (≥ 5 %) is
       a nodule cut by the mask's edge; a sphere is fitted (least squares) to its lung-facing surface and the
       solid voxels inside that sphere but outside the mask (the part in the chest wall) get the same score, so
       the nodule's centroid and diameter are those of the whole nodule, not of its intrapulmonary cap.
    Only voxels of kept candidates are non-zero; the map's probability is the candidate's score.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise InputError(f"blob_model: HU array must be 3-D (slice, row, column), got shape {hu.shape}")
    if tuple(geometry.shape) != hu.shape:
        raise InputError(f"blob_model: HU shape {hu.shape} differs from the geometry's {tuple(geometry.shape)}")
    spacing = np.asarray(geometry.spacing, dtype=np.float64)
    if lung_mask is None:
        lung_mask = segment_lungs(hu, spacing)
    lung = np.asarray(lung_mask).astype(bool, copy=False)
    if lung.shape != hu.shape:
        raise InputError(f"blob_model: lung mask shape {lung.shape} differs from the HU shape {hu.shape}")
    out = np.zeros(hu.shape, dtype=np.float32)
    solid = (hu > hu_threshold) & lung
    if not solid.any():
        return out
    ball = ellipsoid_structure(open_radius_mm, spacing)
    opened = ndimage.binary_opening(solid, structure=ball)
    labels, n = ndimage.label(opened, structure=CONNECTIVITY_26)
    if n == 0:
        return out
    # grow each component back by one step of the ball inside the solid voxels (max label wins where two meet)
    grown = ndimage.grey_dilation(labels, footprint=ball)
    labels = np.where(solid, np.where(labels > 0, labels, grown), 0).astype(labels.dtype, copy=False)

    flat = np.flatnonzero(labels)
    lab = labels.ravel()[flat]
    counts = np.bincount(lab, minlength=n + 1).astype(np.float64)
    present = counts > 0
    safe = np.where(present, counts, 1.0)
    coords = [c * s for c, s in zip(np.unravel_index(flat, labels.shape), spacing)]  # mm along each axis
    means = [np.bincount(lab, weights=c, minlength=n + 1) / safe for c in coords]
    cov = np.empty((n + 1, 3, 3))
    for a in range(3):
        for b in range(a, 3):
            m = np.bincount(lab, weights=coords[a] * coords[b], minlength=n + 1) / safe - means[a] * means[b]
            cov[:, a, b] = cov[:, b, a] = m
    # a voxel is a cube, not a point: add its own second moment so one-voxel-thin parts are not degenerate
    cov[:, range(3), range(3)] += spacing ** 2 / 12.0
    eig = np.linalg.eigvalsh(cov)
    elongation = np.sqrt(np.maximum(eig[:, 2], 1e-12) / np.maximum(eig[:, 0], 1e-12))
    volume = counts * voxel_volume_mm3(geometry)
    diameter = np.cbrt(6.0 * volume / np.pi)
    hu_mean = np.bincount(lab, weights=hu.ravel()[flat].astype(np.float64), minlength=n + 1) / safe

    # surroundings: the 26-neighbour shell around each candidate, and how much of it is aerated lung
    around = ndimage.grey_dilation(labels, footprint=CONNECTIVITY_26)
    shell = np.flatnonzero((labels == 0) & (around > 0))
    shell_lab = around.ravel()[shell]
    shell_n = np.bincount(shell_lab, minlength=n + 1).astype(np.float64)
    aerated = lung.ravel()[shell] & (hu.ravel()[shell] <= hu_threshold)
    parenchyma = np.bincount(shell_lab, weights=aerated, minlength=n + 1) / np.where(shell_n > 0, shell_n, 1.0)

    size_score = _ramp(diameter, *full_size_mm)
    shape_score = _ramp(elongation, 3.5, 2.0)
    density_score = _ramp(hu_mean, hu_threshold, -100.0)
    context_score = _ramp(parenchyma, *surrounded)
    score = size_score * shape_score * density_score * context_score
    keep = present & (diameter >= min_diameter_mm) & (diameter <= max_diameter_mm)
    score = np.where(keep, score, 0.0)
    score[0] = 0.0
    out.ravel()[flat] = score[lab].astype(np.float32)

    # juxtapleural candidates (touching the mask's edge): complete the sphere into the wall
    outside = (np.bincount(shell_lab, weights=~lung.ravel()[shell], minlength=n + 1)
               / np.where(shell_n > 0, shell_n, 1.0))
    boxes = ndimage.find_objects(labels, max_label=n)
    for k in np.flatnonzero((score > 0) & (outside >= 0.05)):
        _complete_sphere(out, labels, int(k), boxes[k - 1], float(score[k]), hu, lung, spacing, hu_threshold,
                         diameter[k] / 2.0, max_diameter_mm / 2.0)
    return out


def _fit_sphere(points: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Sphere through ``points`` (m, 3): algebraic least squares (|p|² = 2 c·p + r² − |c|²) as the start, then
    Gauss–Newton on the geometric distances (|p − c| − r), which the algebraic fit biases on a partial sphere."""
    if len(points) < 10:
        return None
    a = np.column_stack([2.0 * points, np.ones(len(points))])
    b = (points ** 2).sum(axis=1)
    solution, *_ = np.linalg.lstsq(a, b, rcond=None)
    centre = solution[:3]
    r2 = solution[3] + centre @ centre
    if not np.isfinite(r2) or r2 <= 0:
        return None
    radius = float(np.sqrt(r2))
    for _ in range(20):
        offset = points - centre
        dist = np.maximum(np.linalg.norm(offset, axis=1), 1e-9)
        residual = dist - radius
        jacobian = np.column_stack([-offset / dist[:, None], -np.ones(len(points))])
        delta, *_ = np.linalg.lstsq(jacobian, -residual, rcond=None)
        centre = centre + delta[:3]
        radius += float(delta[3])
        if np.abs(delta).max() < 1e-4:
            break
    if not (np.all(np.isfinite(centre)) and np.isfinite(radius) and radius > 0):
        return None
    return centre, radius


def _complete_sphere(out: np.ndarray, labels: np.ndarray, k: int, box: tuple[slice, ...], score: float,
                     hu: np.ndarray, lung: np.ndarray, spacing: np.ndarray, hu_threshold: float,
                     r_equivalent: float, r_max: float) -> None:
    """A candidate cut by the lung mask's edge (a juxtapleural nodule: the mask holds only its part inside the
    lung): fit a sphere to its lung-facing surface (the midpoints between its voxels and face-adjacent aerated
    lung voxels) and give ``score`` to the solid voxels
    (> ``hu_threshold``) inside that sphere that are outside the lung mask — the part in the chest wall or
    mediastinum. Skipped unless the fit is plausible (radius ≤ ``r_max`` and within 0.8–2 × the candidate's
    equivalent radius, centre within the radius of the candidate's centroid)."""
    shape = np.array(labels.shape)
    lo = np.maximum([sl.start - 1 for sl in box], 0)
    hi = np.minimum([sl.stop + 1 for sl in box], shape)
    sub = tuple(slice(a, b) for a, b in zip(lo, hi))
    comp = labels[sub] == k
    air = lung[sub] & (hu[sub] <= hu_threshold)
    points = []  # the lung-facing surface: midpoints between a candidate voxel and a face-adjacent aerated voxel
    for axis in range(3):
        lower = [slice(None)] * 3
        upper = [slice(None)] * 3
        lower[axis], upper[axis] = slice(0, -1), slice(1, None)
        lower, upper = tuple(lower), tuple(upper)
        step = np.zeros(3)
        step[axis] = 0.5
        points.append(np.argwhere(comp[lower] & air[upper]) + step)
        points.append(np.argwhere(air[lower] & comp[upper]) + step)
    fit = _fit_sphere((np.concatenate(points) + lo) * spacing)
    if fit is None:
        return
    centre, radius = fit
    centroid = (np.argwhere(comp) + lo).mean(axis=0) * spacing
    if not (radius <= r_max and 0.8 * r_equivalent <= radius <= 2.0 * r_equivalent
            and np.linalg.norm(centre - centroid) <= radius):
        return
    lo = np.maximum(np.floor((centre - radius) / spacing).astype(int), 0)
    hi = np.minimum(np.ceil((centre + radius) / spacing).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return
    sub = tuple(slice(a, b) for a, b in zip(lo, hi))
    grids = np.ogrid[sub]
    inside = sum(((g * s - c) ** 2) for g, s, c in zip(grids, spacing, centre)) <= radius ** 2
    add = inside & ~lung[sub] & (hu[sub] > hu_threshold) & (out[sub] == 0)
    out[sub][add] = score
