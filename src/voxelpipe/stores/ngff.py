"""OME-Zarr (NGFF 0.5) metadata and pyramid levels for the Zarr volumes voxelpipe writes; pure functions.

NGFF 0.5 is Zarr v3 with the metadata under the group attribute ``"ome"``::

    {"ome": {"version": "0.5", "multiscales": [{"name": ..., "axes": [...], "datasets": [...]}]}}

Axes are named ``z``, ``y``, ``x`` for array axes 0, 1, 2 (slice, row, column), of type ``space`` in
``millimeter``; a 4-D volume puts ``t`` first (type ``time`` when the frames follow a time tag, else the custom
type ``frame``; scale 1 = one frame, no unit, since frames need not be evenly spaced in time).

Each level's ``coordinateTransformations`` is a scale (the spacing along each array axis, mm) and a translation
(the centre of voxel [0, 0, 0] in the array's own frame): NGFF 0.5 has no rotation, so the LPS origin is
projected on the array axes' unit vectors, ``t = Dᵀ · origin`` with ``D`` the 3×3 direction whose columns are
those vectors. A viewer places voxel ``i`` at ``t + i · scale``: the coordinate of its LPS centre along each array
axis, so volumes that share a direction (a series and its masks, PET and CT resampled onto one grid) overlay
exactly, and for an axial scan ``(z, y, x)`` are the LPS ``(S, P, L)`` millimetres. The full geometry (direction,
affine) stays in voxelpipe's own group attributes.

Pyramid levels (``--levels N``) halve each spatial axis that is long enough (at least ``2 × MIN_LEVEL_EXTENT``
voxels at the previous level); images by the mean of each 2-voxel block, labels by the block's most frequent
value (ties to the higher label). A block mean is exact and anti-aliased, keeps voxel centres where the NGFF
translation says they are, and needs no interpolation library (a linear zoom would instead sample between
voxels and alias fine structure); odd lengths drop their last voxel.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from voxelpipe.core.errors import InputError

NGFF_VERSION = "0.5"
SPATIAL_AXES = ("z", "y", "x")
TIME_AXIS = "t"
SPATIAL_UNIT = "millimeter"
MIN_LEVEL_EXTENT = 8
TIME_TAGS = ("TriggerTime", "TemporalPositionIdentifier", "AcquisitionNumber", "AcquisitionTime",
             "ContentTime", "FrameReferenceTime")
IMAGE_PATH = "image"
LEVELS_GROUP = "levels"
LABELS_GROUP = "labels"


def check_levels(levels: int) -> int:
    """``levels`` when it is a whole number >= 1, else :class:`InputError`."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise InputError(f"--levels must be a whole number >= 1, got {levels!r}")
    return levels


def dimension_names(ndim: int) -> list[str]:
    """Zarr ``dimension_names`` (= NGFF axis names) of a 3-D ``[z, y, x]`` or 4-D ``[t, z, y, x]`` volume."""
    if ndim not in (3, 4):
        raise ValueError(f"an NGFF volume has 3 or 4 axes, got {ndim}")
    return ([TIME_AXIS] if ndim == 4 else []) + list(SPATIAL_AXES)


def axes(ndim: int, frame_tag: str = "") -> list[dict]:
    """NGFF ``axes`` of a 3-D or 4-D volume; ``frame_tag`` (the DICOM tag that orders 4-D frames) picks the type
    of ``t``: ``time`` for a time tag, else ``frame``."""
    spatial = [{"name": name, "type": "space", "unit": SPATIAL_UNIT} for name in SPATIAL_AXES]
    if ndim == 3:
        return spatial
    if ndim != 4:
        raise ValueError(f"an NGFF volume has 3 or 4 axes, got {ndim}")
    kind = "time" if frame_tag in TIME_TAGS else "frame"
    return [{"name": TIME_AXIS, "type": kind}, *spatial]


def level_factors(spatial_shape: Sequence[int], levels: int) -> list[tuple[int, int, int]]:
    """Per level, the cumulative downsampling factor along (z, y, x): level 0 is (1, 1, 1); each further level
    doubles the factor of every axis whose length at the previous level is at least ``2 × MIN_LEVEL_EXTENT``."""
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    shape = [int(n) for n in spatial_shape]
    factors = [(1, 1, 1)]
    current = [1, 1, 1]
    for _ in range(1, levels):
        for axis in range(3):
            if shape[axis] >= 2 * MIN_LEVEL_EXTENT:
                shape[axis] //= 2
                current[axis] *= 2
        factors.append((current[0], current[1], current[2]))
    return factors


def level_shapes(shape: Sequence[int], levels: int) -> list[tuple[int, ...]]:
    """The array shape of each level (a leading frame axis is kept whole)."""
    lead = tuple(int(n) for n in shape[:-3])
    spatial = [int(n) for n in shape[-3:]]
    return [lead + tuple(n // f for n, f in zip(spatial, factor)) for factor in level_factors(spatial, levels)]


def level_paths(levels: int) -> list[str]:
    """Array paths of the levels inside a volume group: ``image``, ``levels/1``, ``levels/2``, ... (a label
    group's are ``0``, ``1``, ``2``, ...)."""
    return [IMAGE_PATH] + [f"{LEVELS_GROUP}/{k}" for k in range(1, levels)]


def projected_origin(origin: Sequence[float], direction: Sequence[Sequence[float]]) -> list[float]:
    """``Dᵀ · origin``: the LPS origin (mm) along each array axis' unit vector (columns of ``direction``)."""
    return (np.asarray(direction, dtype=np.float64).T @ np.asarray(origin, dtype=np.float64)).tolist()


def spacing_of(attrs: dict) -> list[float]:
    """Spacing per array axis (mm) from geometry attrs; an uneven slice axis (spacing None) gets the mean step
    between its slice positions (1 mm when there is a single slice)."""
    spacing = list(attrs["spacing"])
    if spacing[0] is None:
        positions = attrs.get("slice_positions") or []
        spacing[0] = (abs(float(positions[-1]) - float(positions[0])) / (len(positions) - 1)
                      if len(positions) > 1 else 1.0)
    return [float(s) for s in spacing]


def multiscale(shape: Sequence[int], spacing: Sequence[float], translation: Sequence[float], levels: int,
               paths: Sequence[str], name: str = "", frame_tag: str = "", axis_names: Sequence[str] | None = None,
               axis_types: Sequence[str] | None = None) -> dict:
    """One NGFF ``multiscales`` entry.

    Args:
        shape: level-0 array shape; its last 3 axes are spatial.
        spacing: level-0 spacing (mm) of the 3 spatial axes.
        translation: centre of voxel [0, 0, 0] (mm) along the 3 spatial axes.
        levels: number of levels (``paths`` has one path per level).
        paths: array path of each level, relative to the group.
        name: the multiscale's name.
        frame_tag: DICOM tag ordering the frames of a 4-D volume (picks the ``t`` axis type).
        axis_names: names of all axes (default ``[t,] z, y, x``).
        axis_types: types of the leading non-spatial axes, when ``axis_names`` is given.

    Returns:
        ``{"name", "axes", "datasets", "type", "metadata"}`` with a scale and a translation per level.
    """
    ndim = len(shape)
    if axis_names is None:
        axis_list = axes(ndim, frame_tag)
    else:
        lead = ndim - 3
        types = list(axis_types or [])
        axis_list = [{"name": n, "type": types[i]} for i, n in enumerate(axis_names[:lead])]
        axis_list += [{"name": n, "type": "space", "unit": SPATIAL_UNIT} for n in axis_names[lead:]]
    lead = [1.0] * (ndim - 3)
    datasets = []
    for path, factor in zip(paths, level_factors(shape[-3:], levels)):
        scale = [float(s) * f for s, f in zip(spacing, factor)]
        # the centre of a block of f voxels lies (f - 1) / 2 level-0 voxels past the first one's centre
        shift = [float(t) + (f - 1) / 2 * float(s) for t, s, f in zip(translation, spacing, factor)]
        datasets.append({"path": path, "coordinateTransformations": [
            {"type": "scale", "scale": lead + scale}, {"type": "translation", "translation": [0.0] * len(lead) + shift}
        ]})
    entry = {"name": name, "axes": axis_list, "datasets": datasets}
    if levels > 1:
        entry["type"] = "block mean (labels: block mode) over 2-voxel blocks"
    return entry


def image_ome(attrs: dict, shape: Sequence[int], levels: int = 1, name: str = "") -> dict:
    """The ``"ome"`` attribute of a volume group from its geometry attrs (``spacing``, ``origin``,
    ``direction``; LPS mm) and level-0 ``shape`` (z, y, x) or (t, z, y, x)."""
    translation = projected_origin(attrs["origin"], attrs["direction"])
    entry = multiscale(shape, spacing_of(attrs), translation, levels, level_paths(levels),
                       name=name or str(attrs.get("series_key", "")), frame_tag=str(attrs.get("frame_tag") or ""))
    return {"version": NGFF_VERSION, "multiscales": [entry]}


def label_ome(image: dict, name: str, attrs: dict | None = None) -> dict:
    """The ``"ome"`` attribute of the label group ``labels/<name>``: the image's levels (spatial axes only,
    arrays ``0``, ``1``, ...) and ``image-label`` metadata (colour of value 1 from ``attrs["color"]`` when given,
    the source image two groups up)."""
    entry = image["multiscales"][0]
    spatial = [a for a in entry["axes"] if a.get("type") == "space"]
    k = len(spatial)
    datasets = []
    for index, dataset in enumerate(entry["datasets"]):
        scale, translation = (t for t in dataset["coordinateTransformations"])
        datasets.append({"path": str(index), "coordinateTransformations": [
            {"type": "scale", "scale": scale["scale"][-k:]},
            {"type": "translation", "translation": translation["translation"][-k:]}]})
    label: dict = {"version": NGFF_VERSION, "source": {"image": "../../"}}
    colour = (attrs or {}).get("color")
    if isinstance(colour, (list, tuple)) and len(colour) >= 3:
        rgba = [int(c) for c in colour[:3]] + [255]
        label["colors"] = [{"label-value": 1, "rgba": rgba}]
        label["properties"] = [{"label-value": 1, "name": str((attrs or {}).get("roi_name", name))}]
    multiscale_entry = {"name": name, "axes": spatial, "datasets": datasets}
    if "type" in entry:
        multiscale_entry["type"] = entry["type"]
    return {"version": NGFF_VERSION, "image-label": label, "multiscales": [multiscale_entry]}


def labels_ome(names: Sequence[str]) -> dict:
    """The ``"ome"`` attribute of the ``labels`` group: the list of its label groups."""
    return {"version": NGFF_VERSION, "labels": sorted(names)}


def level_count(ome: dict | None) -> int:
    """Number of levels of an image group's ``"ome"`` attribute (1 when there is none)."""
    if not ome or not ome.get("multiscales"):
        return 1
    return len(ome["multiscales"][0]["datasets"])


def _blocks(array: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    """View of the last 3 axes cut into blocks: shape (..., n0, f0, n1, f1, n2, f2), odd ends dropped."""
    lead = array.shape[:-3]
    sizes = [n // f for n, f in zip(array.shape[-3:], factor)]
    cropped = array[(...,) + tuple(slice(0, n * f) for n, f in zip(sizes, factor))]
    shape = lead + tuple(v for n, f in zip(sizes, factor) for v in (n, f))
    return cropped.reshape(shape)


def block_mean(array: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    """Mean over blocks of ``factor`` voxels along the last 3 axes, in the input dtype (integers rounded)."""
    blocks = _blocks(np.asarray(array), factor)
    lead = blocks.ndim - 6
    mean = blocks.mean(axis=tuple(lead + a for a in (1, 3, 5)), dtype=np.float64)
    if np.dtype(array.dtype).kind in "iub":
        info = np.iinfo(array.dtype) if array.dtype.kind != "b" else None
        mean = np.rint(mean)
        if info is not None:
            mean = np.clip(mean, info.min, info.max)
    return mean.astype(array.dtype)


def block_mode(array: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    """Most frequent value over blocks of ``factor`` voxels along the last 3 axes (ties to the higher value):
    labels stay labels."""
    blocks = _blocks(np.asarray(array), factor)
    lead = blocks.ndim - 6
    reduce_axes = tuple(lead + a for a in (1, 3, 5))
    best = np.zeros(blocks.sum(axis=reduce_axes, dtype=np.int64).shape, dtype=array.dtype)
    best_count = np.full(best.shape, -1, dtype=np.int64)
    for value in np.unique(blocks):
        count = (blocks == value).sum(axis=reduce_axes, dtype=np.int64)
        better = count >= best_count
        best[better] = value
        best_count[better] = count[better]
    return best


def pyramid(array: np.ndarray, levels: int, labels: bool = False,
            factors: Sequence[Sequence[int]] | None = None) -> list[np.ndarray]:
    """Levels 1.. ``levels - 1`` of ``array`` (level 0 itself not included), each from the previous one.

    ``factors``: the cumulative factors of each level (default :func:`level_factors` of ``array``'s shape); give
    the whole volume's when ``array`` is a slab of it along axis -3 starting at a multiple of the last factor."""
    factors = level_factors(array.shape[-3:], levels) if factors is None else [tuple(f) for f in factors]
    out: list[np.ndarray] = []
    previous = np.asarray(array)
    for before, after in zip(factors, factors[1:]):
        step = tuple(a // b for a, b in zip(after, before))
        previous = (block_mode if labels else block_mean)(previous, step)
        out.append(previous)
    return out
