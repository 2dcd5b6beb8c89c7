"""RT Structure Sets (RTSTRUCT): parse the ROIs' planar contours and rasterise them onto a volume's grid.

``parse_rtstruct(path, rois=None)`` reads the file with pydicom into a :class:`StructureSet` (every ROI's
contours as one (N, 3) array of LPS mm points plus offsets). ``read_rtstruct_masks(path, geometry, rois=None)``
turns it into :class:`~voxelpipe.core.masks.Mask` objects (uint8, the geometry's (slice, row, column) grid) and one
:class:`~voxelpipe.core.masks.PlacedRoi` per ROI (counts and notes as plain data); ``iter_rtstruct_masks`` does the
same one ROI at a time (one mask in memory at a time).

The slice-assignment rule (the contour's ContourImageSequence is never used; it often points at another series):

* a contour's position is where its points lie along the slice normal ``geometry.plane_normal``;
* slice ``k`` (at ``geometry.slice_positions[k]``) owns the positions within half the local step on each side:
  down to the midpoint with slice ``k-1`` and up to the midpoint with slice ``k+1`` (the end slices use their
  one neighbouring step, a single slice ``spacing[0]``), so uneven spacing works; at an exact midpoint the lower
  slice wins. A contour whose points do not all fall in one slice's window is *unmatched* (reported with its
  position) when its points lie in one plane, or *skipped* as not in a slice plane otherwise;
* a contour whose points spread more than ``PLANE_TOLERANCE_MM`` along the normal but stay inside one window is
  filled on that slice and noted;
* when contours from several planes land on one slice (contours drawn on a finer grid than the volume's), only
  the plane nearest to the slice is used (the others are skipped and noted): filling every plane together would
  cancel overlapping contours under the even–odd rule;
* in-plane (row, column) = the least-squares inverse of the affine's in-plane columns applied to the point minus
  the slice's own origin (the first slice's origin moved along the affine's slice axis to the slice's position,
  which keeps gantry shear and uneven spacing exact); with even spacing this is the inverse affine;
* all contours of one ROI on one slice are filled together by the even–odd rule (holes and islands), with the
  pixel-centre rule: a pixel is inside when its centre is inside the polygon.

POINT, OPEN_PLANAR and OPEN_NONPLANAR contours and contours of fewer than three points are skipped and noted.
"""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from voxelpipe.core.errors import (
    BadTagValueError,
    DicomReadError,
    FrameOfReferenceMismatchError,
    MissingTagError,
    RoiNotFoundError,
)
from voxelpipe.core.geometry import Geometry
from voxelpipe.core.masks import Mask, PlacedRoi, mask_array_name
from voxelpipe.ops.polygon import fill_polygons_volume

log = logging.getLogger("voxelpipe")

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
SOURCE_KIND = "RTSTRUCT"
CONTOUR_DATA = 0x30060050
CONTOUR_GEOMETRIC_TYPE = 0x30060042
PLANE_TOLERANCE_MM = 0.1  # points of one planar contour may spread this much along the normal unnoticed
MAX_LISTED = 8  # positions / indices listed in a note
RULE = ("contours assigned to the slice whose window (half the local step either side) holds their position "
        "along the normal; even-odd per slice; pixel centres inside")


class RtstructError(DicomReadError):
    """An RTSTRUCT file cannot be used."""


class NotRtstructError(BadTagValueError):
    """The file is DICOM but not an RT Structure Set."""


@dataclass
class Roi:
    """One ROI of a structure set: its contours as one (N, 3) float64 LPS array ``points`` split by
    ``offsets`` (contour ``i`` = ``points[offsets[i]:offsets[i+1]]``); ``types[i]`` its ContourGeometricType.
    Contours whose data could not be used are left out of ``points`` and listed in ``bad`` (index, reason)."""

    number: int
    name: str
    position: int = 0  # index in StructureSetROISequence
    color: list[int] | None = None
    frame_of_reference_uid: str = ""
    interpreted_type: str = ""
    generation_algorithm: str = ""
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    types: list[str] = field(default_factory=list)
    bad: list[tuple[int, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def n_contours(self) -> int:
        """Every contour of the ROI, usable or not."""
        return len(self.types) + len(self.bad)


@dataclass
class StructureSet:
    path: str
    sop_instance_uid: str = ""
    series_instance_uid: str = ""
    label: str = ""
    frame_of_reference_uids: list[str] = field(default_factory=list)  # ReferencedFrameOfReferenceSequence
    referenced_series_uids: list[str] = field(default_factory=list)
    rois: list[Roi] = field(default_factory=list)  # the selected ROIs (all by default), with their contours
    roi_names: list[str] = field(default_factory=list)  # every ROI of the file, selected or not
    unselected: list[Roi] = field(default_factory=list)  # ROIs left out by the selection (no contours read)


def _key(text: object) -> str:
    return str(text).strip().casefold()


def select_rois(path: str, rois: list[Roi], wanted: Sequence[str]) -> list[Roi]:
    """The ROIs named in ``wanted`` (ROIName, case-insensitive and trimmed, or ROINumber), in the file's order;
    :class:`RoiNotFoundError` when a name matches none."""
    keys = {_key(w) for w in wanted}
    missing = [w for w in dict.fromkeys(wanted)
               if not any(_key(w) in (_key(r.name), str(r.number)) for r in rois)]
    if missing:
        raise RoiNotFoundError(path, missing, [r.name for r in rois])
    return [r for r in rois if _key(r.name) in keys or str(r.number) in keys]


def _text(ds, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _int(ds, keyword: str, path: str, default: int | None = None) -> int | None:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        tag = ds.data_element(keyword).tag
        raise BadTagValueError(path, f"{keyword} ({tag.group:04X},{tag.element:04X})", value,
                               "not an integer") from None


def parse_rtstruct(path: str | os.PathLike, rois: Sequence[str] | None = None) -> StructureSet:
    """Read an RTSTRUCT file: the ROIs (all, or those named in ``rois``, in the file's order) with their
    contour points. Raises :class:`RoiNotFoundError` naming the missing and the available names."""
    path = os.fspath(path)
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise RtstructError(path, f"not a DICOM file: {exc}") from None
    except (OSError, EOFError, ValueError, KeyError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise RtstructError(path, f"cannot be read: {type(exc).__name__}: {exc}") from None
    sop_class = _text(ds, "SOPClassUID")
    modality = _text(ds, "Modality")
    if sop_class != RTSTRUCT_SOP_CLASS and modality != "RTSTRUCT":
        raise NotRtstructError(path, "SOPClassUID (0008,0016)", sop_class or modality,
                               f"not an RT Structure Set ({RTSTRUCT_SOP_CLASS}; Modality {modality or 'absent'})")
    if "StructureSetROISequence" not in ds:
        raise MissingTagError(path, ["StructureSetROISequence (3006,0020)"])
    result = StructureSet(path, _text(ds, "SOPInstanceUID"), _text(ds, "SeriesInstanceUID"),
                          _text(ds, "StructureSetLabel"))
    for ref in ds.get("ReferencedFrameOfReferenceSequence", []):
        uid = _text(ref, "FrameOfReferenceUID")
        if uid:
            result.frame_of_reference_uids.append(uid)
        for study in ref.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                uid = _text(series, "SeriesInstanceUID")
                if uid and uid not in result.referenced_series_uids:
                    result.referenced_series_uids.append(uid)

    by_number: dict[int, Roi] = {}
    for item in ds.StructureSetROISequence:
        number = _int(item, "ROINumber", path)
        if number is None:
            raise MissingTagError(path, ["ROINumber (3006,0022) in StructureSetROISequence (3006,0020)"])
        roi = Roi(number, _text(item, "ROIName") or f"ROI_{number}", position=len(result.rois),
                  frame_of_reference_uid=_text(item, "ReferencedFrameOfReferenceUID"),
                  generation_algorithm=_text(item, "ROIGenerationAlgorithm"))
        result.roi_names.append(roi.name)
        if number in by_number:
            log.warning("%s: ROINumber %d appears twice in StructureSetROISequence (3006,0020); the later ROI "
                        "(%r) gets no contours", path, number, roi.name)
            roi.notes.append(f"ROINumber {number} repeats in StructureSetROISequence; its contours go to "
                             f"{by_number[number].name!r}")
        else:
            by_number[number] = roi
        result.rois.append(roi)
    if rois is not None:
        chosen = select_rois(path, result.rois, rois)
        result.unselected = [roi for roi in result.rois if roi not in chosen]
        result.rois = chosen
    selected = {id(roi) for roi in result.rois}

    for observation in ds.get("RTROIObservationsSequence", []):
        roi = by_number.get(_int(observation, "ReferencedROINumber", path, -1))
        if roi is not None and id(roi) in selected:
            roi.interpreted_type = _text(observation, "RTROIInterpretedType")

    raws: list[bytes] = []
    counts: list[int] = []
    owners: list[tuple[Roi, int]] = []
    for item in ds.get("ROIContourSequence", []):
        number = _int(item, "ReferencedROINumber", path, None)
        roi = by_number.get(number)
        if roi is None:
            log.warning("%s: ROIContourSequence (3006,0039) item references ROINumber %s, absent from "
                        "StructureSetROISequence (3006,0020); ignored", path, number)
            continue
        if id(roi) not in selected:
            continue
        color = item.get("ROIDisplayColor", None)
        if color is not None:
            try:
                roi.color = [int(v) for v in (color if isinstance(color, (list, tuple, MultiValue)) else [color])]
            except (TypeError, ValueError):
                roi.notes.append(f"ROIDisplayColor (3006,002A) {color!r} unusable")
        for index, contour in enumerate(item.get("ContourSequence", [])):
            kind = _raw_text(contour, CONTOUR_GEOMETRIC_TYPE).upper()
            raw = _contour_bytes(contour)
            if raw is None:
                roi.bad.append((index, "ContourData (3006,0050) absent"))
                continue
            n_values = (raw.count(b"\\") + 1) if raw.strip(b" \x00") else 0
            raws.append(raw)
            counts.append(n_values)
            owners.append((roi, index))
            roi.types.append(kind)  # provisional: contours with bad data are moved to roi.bad below
    _decode_points(path, raws, counts, owners)
    return result


def _raw_text(item, tag: int) -> str:
    """A short text element's value without building pydicom's value object ('' when absent)."""
    if tag not in item:
        return ""
    value = item.get_item(tag).value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("ascii", "replace").strip(" \x00")
    return "" if value is None else str(value).strip()


def _contour_bytes(contour) -> bytes | None:
    """ContourData as its raw text bytes (no per-value DS objects: ~15x faster for large structure sets)."""
    if CONTOUR_DATA not in contour:
        return None
    element = contour.get_item(CONTOUR_DATA)
    value = element.value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode("ascii", "replace")
    try:
        values = list(value)
    except TypeError:
        values = [value]
    return "\\".join(repr(float(v)) for v in values).encode()


def _parse_floats(raw: bytes) -> np.ndarray | None:
    """The numbers of a DS value (backslash separated); None when some part is not a number."""
    text = raw.replace(b"\\", b" ").replace(b"\x00", b" ")
    if not text.strip():
        return np.zeros(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # older numpy warns where newer raises
            return np.fromstring(text, dtype=np.float64, sep=" ")
    except ValueError:
        return None


def _decode_points(path: str, raws: list[bytes], counts: list[int], owners: list[tuple[Roi, int]]) -> None:
    """Parse every contour's text in one call, check each contour's value count, and store the points of each
    ROI (bad contours go to ``roi.bad`` with the reason)."""
    if not raws:
        return
    values = _parse_floats(b"\\".join(raws))
    per_contour: list[np.ndarray | None]
    if values is not None and values.size == sum(counts) and np.all(np.isfinite(values)):
        bounds = np.concatenate(([0], np.cumsum(counts)))
        per_contour = [values[bounds[i]:bounds[i + 1]] for i in range(len(raws))]
    else:  # some value is not a number: find which contours, one by one
        per_contour = []
        for raw, count in zip(raws, counts):
            parsed = _parse_floats(raw)
            ok = parsed is not None and parsed.size == count and bool(np.all(np.isfinite(parsed)))
            per_contour.append(parsed if ok else None)
    by_roi: dict[int, tuple[Roi, list[tuple[int, np.ndarray | None, str]]]] = {}
    for (roi, index), data, raw in zip(owners, per_contour, raws):
        reason = ""
        if data is None:
            reason = f"ContourData (3006,0050) value {raw[:40]!r} is not a list of numbers"
        elif data.size % 3:
            reason = f"ContourData (3006,0050) has {data.size} values, not a multiple of 3"
        by_roi.setdefault(id(roi), (roi, []))[1].append((index, None if reason else data.reshape(-1, 3), reason))
    for roi, contours in by_roi.values():
        types, keep = [], []
        for kind, (index, array, reason) in zip(roi.types, contours):  # roi.types: one per contour with data
            if array is None:
                roi.bad.append((index, reason))
                log.warning("%s: ROI %r contour %d: %s", path, roi.name, index, reason)
            else:
                types.append(kind)
                keep.append(array)
        roi.types = types
        roi.bad.sort()
        if keep:
            roi.points = np.concatenate(keep)
            roi.offsets = np.concatenate(([0], np.cumsum([len(a) for a in keep]))).astype(np.int64)


# ----------------------------------------------------------------------------------------------------------
# slice assignment and rasterisation
# ----------------------------------------------------------------------------------------------------------
def slice_windows(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """For every slice the (lower, upper) limits of the positions along the normal it owns: half the local step
    on each side (midpoints between neighbours; the end slices use their one neighbouring step)."""
    positions = np.asarray(geometry.slice_positions, dtype=np.float64)
    if len(positions) == 1:
        half = abs(float(geometry.spacing[0])) / 2 or 0.5
        return positions - half, positions + half
    mid = (positions[1:] + positions[:-1]) / 2
    lower = np.concatenate(([positions[0] - (positions[1] - positions[0]) / 2], mid))
    upper = np.concatenate((mid, [positions[-1] + (positions[-1] - positions[-2]) / 2]))
    return lower, upper


def slice_thickness(geometry: Geometry) -> np.ndarray:
    """Thickness (mm) each slice stands for: the width of its window (the local step; uneven spacing kept)."""
    lower, upper = slice_windows(geometry)
    return upper - lower


def assign_slices(low: np.ndarray, high: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Slice index of every contour whose positions along the normal span ``[low, high]``; -1 where the span
    is not inside one slice's window."""
    lower, upper = slice_windows(geometry)
    positions = np.asarray(geometry.slice_positions, dtype=np.float64)
    centre = (low + high) / 2
    if len(positions) > 1:
        # nearest slice; an exact midpoint goes to the lower slice (searchsorted 'left' on the midpoints)
        k = np.searchsorted((positions[1:] + positions[:-1]) / 2, centre, side="left")
    else:
        k = np.zeros(len(centre), dtype=np.int64)
    ok = (low >= lower[k]) & (high <= upper[k])
    return np.where(ok, k, -1).astype(np.int64)


def _slice_origins(geometry: Geometry) -> np.ndarray:
    """LPS origin of every slice: the first slice's origin moved along the affine's slice axis to the slice's
    position along the normal (exact for uneven spacing and for gantry shear)."""
    axis = geometry.slice_axis
    normal = geometry.plane_normal
    along = float(axis @ normal)
    positions = np.asarray(geometry.slice_positions, dtype=np.float64)
    if abs(along) < 1e-12:
        return np.repeat(geometry.origin[None], len(positions), axis=0)
    return geometry.origin[None, :] + np.outer((positions - positions[0]) / along, axis)


def to_row_col(points: np.ndarray, slices: np.ndarray, geometry: Geometry) -> np.ndarray:
    """(row, column) float index coordinates of LPS ``points`` lying on slices ``slices`` (one per point)."""
    in_plane = geometry.affine[:3, 1:3]
    inverse = np.linalg.pinv(in_plane)  # (2, 3); exact for points in the slice plane
    origins = _slice_origins(geometry)
    return (points - origins[slices]) @ inverse.T


def _positions_note(values: np.ndarray) -> str:
    shown = ", ".join(f"{v:.2f}" for v in values[:MAX_LISTED])
    return shown + (f", ... ({len(values)} in all)" if len(values) > MAX_LISTED else "")


@dataclass
class _RoiRaster:
    polygons: list[np.ndarray]
    slice_index: np.ndarray
    filled: int
    unmatched: int
    skipped: int
    notes: list[str]
    slices_used: np.ndarray


def _plan_roi(roi: Roi, geometry: Geometry) -> _RoiRaster:
    """Which contours of ``roi`` go onto which slice, as (row, column) polygons; counts and notes."""
    notes = list(roi.notes)
    skipped = len(roi.bad)
    if roi.bad:
        notes.append(f"{len(roi.bad)} contour(s) with unusable data skipped: "
                     + "; ".join(f"#{i} {why}" for i, why in roi.bad[:MAX_LISTED]))
    n = len(roi.types)
    if n == 0:
        return _RoiRaster([], np.zeros(0, np.int64), 0, 0, skipped, notes, np.zeros(0, np.int64))
    types = np.array(roi.types, dtype=object)
    sizes = np.diff(roi.offsets)
    closed = types == "CLOSED_PLANAR"
    other = ~closed
    if other.any():
        kinds = {}
        for kind in types[other]:
            kinds[kind or "(no ContourGeometricType)"] = kinds.get(kind or "(no ContourGeometricType)", 0) + 1
        notes.append("skipped (not CLOSED_PLANAR, nothing to fill): "
                     + ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items())))
    short = closed & (sizes < 3)
    if short.any():
        notes.append(f"{int(short.sum())} CLOSED_PLANAR contour(s) with fewer than 3 points skipped")
    usable = closed & ~short
    skipped += int(other.sum() + short.sum())
    if not usable.any():
        return _RoiRaster([], np.zeros(0, np.int64), 0, 0, skipped, notes, np.zeros(0, np.int64))

    normal = geometry.plane_normal
    along = roi.points @ normal  # position of every point along the slice normal
    starts = roi.offsets[:-1]
    nonempty = sizes > 0
    low = np.full(n, np.nan)
    high = np.full(n, np.nan)
    low[nonempty] = np.minimum.reduceat(along, starts[nonempty])
    high[nonempty] = np.maximum.reduceat(along, starts[nonempty])
    index = np.full(n, -1, dtype=np.int64)
    index[usable] = assign_slices(low[usable], high[usable], geometry)
    spread = high - low
    off_plane = usable & (spread > PLANE_TOLERANCE_MM)
    lower, upper = slice_windows(geometry)
    positions = np.asarray(geometry.slice_positions)

    tilted = off_plane & (index < 0)  # points not in one slice plane and not inside one window: not fillable
    if tilted.any():
        details = [_plane_detail(roi.points[starts[i]:starts[i] + sizes[i]], normal) for i in np.flatnonzero(tilted)]
        notes.append(f"{int(tilted.sum())} CLOSED_PLANAR contour(s) not in a slice plane skipped ("
                     + "; ".join(f"#{i}: {d}" for i, d in zip(np.flatnonzero(tilted)[:MAX_LISTED], details)) + ")")
        skipped += int(tilted.sum())
    leaning = off_plane & (index >= 0)
    if leaning.any():
        notes.append(f"{int(leaning.sum())} contour(s) not exactly in one plane (points spread up to "
                     f"{float(spread[leaning].max()):.2f} mm along the normal) filled on their slice")
    unmatched_mask = usable & (index < 0) & ~tilted
    unmatched = int(unmatched_mask.sum())
    if unmatched:
        centres = np.sort((low[unmatched_mask] + high[unmatched_mask]) / 2)
        notes.append(f"{unmatched} contour(s) off every slice, at {_positions_note(centres)} mm along the normal "
                     f"(slices own {lower[0]:.2f}..{upper[-1]:.2f} mm; tolerance half the local step)")

    matched = np.flatnonzero(index >= 0)
    # several planes on one slice (contours drawn on a finer grid): keep the plane nearest to the slice
    centre = (low + high) / 2
    distance = np.abs(centre - np.where(index >= 0, positions[np.maximum(index, 0)], np.nan))
    nearest = np.full(len(positions), np.inf)
    np.minimum.at(nearest, index[matched], distance[matched])
    far = matched[distance[matched] > nearest[index[matched]] + PLANE_TOLERANCE_MM]
    if len(far):
        notes.append(f"{len(far)} contour(s) on a plane farther from their slice than another plane of this ROI "
                     f"skipped (contours on {len(np.unique(index[far]))} slice(s) come from several planes; the "
                     "nearest plane is used)")
        skipped += len(far)
        matched = np.setdiff1d(matched, far)

    outside = 0
    polygons: list[np.ndarray] = []
    if len(matched):
        point_slice = np.repeat(index, sizes)
        take = np.repeat(np.isin(np.arange(n), matched), sizes)
        rc = to_row_col(roi.points[take], point_slice[take], geometry)
        rows, cols = geometry.shape[1], geometry.shape[2]
        bounds = np.concatenate(([0], np.cumsum(sizes[matched])))
        for j in range(len(matched)):
            polygon = rc[bounds[j]:bounds[j + 1]]
            polygons.append(polygon)
        beyond = ((rc[:, 0] < -0.5) | (rc[:, 0] > rows - 0.5) | (rc[:, 1] < -0.5) | (rc[:, 1] > cols - 0.5))
        if beyond.any():
            outside = int(len(np.unique(np.searchsorted(bounds, np.flatnonzero(beyond), side="right"))))
            notes.append(f"{outside} contour(s) reach outside the image grid (clipped)")
    return _RoiRaster(polygons, index[matched], len(matched), unmatched, skipped, notes, np.unique(index[matched]))


def _plane_detail(points: np.ndarray, normal: np.ndarray) -> str:
    """Why a contour is not in a slice plane: not planar at all, or planar but tilted to the slices."""
    spread = float(np.ptp(points @ normal))
    centred = points - points.mean(axis=0)
    vt = np.linalg.svd(centred, full_matrices=False)[2]
    residual = float(np.max(np.abs(centred @ vt[-1]))) if len(points) >= 3 else 0.0
    if residual > PLANE_TOLERANCE_MM:
        return f"not planar (points up to {residual:.2f} mm off their best-fit plane; {spread:.2f} mm along the normal)"
    angle = float(np.degrees(np.arccos(min(1.0, abs(float(vt[-1] @ normal))))))
    return f"planar but tilted {angle:.1f} deg to the slice planes ({spread:.2f} mm along the normal)"


def fill(polygons: list[np.ndarray], slice_index: np.ndarray, shape: tuple[int, int, int],
         out: np.ndarray | None = None) -> np.ndarray:
    """Fill ``polygons`` ((K, 2) row, column vertices in pixels) into their slices ``slice_index`` (one per
    polygon, each in ``0..shape[0] - 1``) of a uint8 (slice, row, column) volume: even–odd per slice,
    pixel-centre rule (:func:`voxelpipe.ops.polygon.fill_polygons_volume`). ``out``: a
    C-contiguous uint8 array of ``shape`` to fill (zeros when not given)."""
    if out is None:
        out = np.zeros(shape, dtype=np.uint8)
    if polygons:
        fill_polygons_volume(polygons, np.asarray(slice_index, dtype=np.int64), shape, out=out)
    return out


def _frame_check(structure: StructureSet, frame_of_reference_uid: str | None) -> list[str]:
    """Notes for every ROI about the frame of reference; raises when the whole set is in another one."""
    if frame_of_reference_uid is None:
        return []
    if not frame_of_reference_uid:
        return ["volume has no FrameOfReferenceUID; frame of reference not checked"]
    found = list(dict.fromkeys(structure.frame_of_reference_uids
                               + [r.frame_of_reference_uid for r in structure.rois if r.frame_of_reference_uid]))
    if found and frame_of_reference_uid not in found:
        raise FrameOfReferenceMismatchError(structure.path, "ReferencedFrameOfReferenceSequence (3006,0010) "
                                            "FrameOfReferenceUID", found, frame_of_reference_uid)
    if not found:
        return ["structure set names no frame of reference; not checked"]
    return []


def iter_rtstruct_masks(path: str | os.PathLike, geometry: Geometry, rois: Sequence[str] | None = None, *,
                        frame_of_reference_uid: str | None = None,
                        taken: Iterable[str] = ()) -> Iterator[PlacedRoi]:
    """Like :func:`read_rtstruct_masks`, one ROI at a time (one mask in memory at a time): yields a
    :class:`PlacedRoi` per ROI of the file (its ``mask`` None when no mask was made), in the file's ROI order."""
    path = os.fspath(path)
    structure = parse_rtstruct(path, rois)
    common = _frame_check(structure, frame_of_reference_uid)
    shape = tuple(int(v) for v in geometry.shape[-3:])
    thickness = slice_thickness(geometry)
    voxel_area = float(abs(geometry.spacing[1] * geometry.spacing[2]))
    used = set(taken)
    source = os.path.abspath(path)
    unselected = {id(r) for r in structure.unselected}
    for roi in sorted(structure.rois + structure.unselected, key=lambda r: r.position):
        if id(roi) in unselected:
            yield PlacedRoi(source, SOURCE_KIND, roi.name, roi.number, contours=None, contours_skipped=None,
                            notes=["not among the requested ROIs"])
            continue
        notes = list(common)
        if (frame_of_reference_uid and roi.frame_of_reference_uid
                and roi.frame_of_reference_uid != frame_of_reference_uid):
            notes.append(f"ROI's ReferencedFrameOfReferenceUID (3006,0024) {roi.frame_of_reference_uid} is not "
                         f"the volume's {frame_of_reference_uid}: not rasterised")
            yield PlacedRoi(source, SOURCE_KIND, roi.name, roi.number, contours=roi.n_contours,
                            contours_skipped=roi.n_contours, notes=notes + roi.notes)
            continue
        plan = _plan_roi(roi, geometry)
        notes += plan.notes
        if roi.n_contours and "CLOSED_PLANAR" not in roi.types:
            # only points, open contours or unusable data: no area to fill, so no mask
            yield PlacedRoi(source, SOURCE_KIND, roi.name, roi.number, contours=roi.n_contours,
                            contours_unmatched=plan.unmatched, contours_skipped=plan.skipped,
                            notes=notes + ["no CLOSED_PLANAR contour: no mask"])
            continue
        if roi.n_contours == 0:
            notes.append("ROI has no contours (ContourSequence absent or empty)")
        array = np.zeros(shape, dtype=np.uint8)  # untouched pages stay free (calloc): fill only the slab used
        if plan.filled:
            k0, k1 = int(plan.slices_used[0]), int(plan.slices_used[-1]) + 1
            fill(plan.polygons, plan.slice_index - k0, (k1 - k0,) + shape[1:], out=array[k0:k1])
        per_slice = np.array([np.count_nonzero(array[k]) for k in plan.slices_used], dtype=np.int64)
        voxels = int(per_slice.sum())
        volume_ml = round(float(per_slice @ thickness[plan.slices_used]) * voxel_area / 1000.0, 6)
        name = mask_array_name(roi.name, used)
        used.add(name)
        attrs = {
            "roi_name": roi.name, "roi_number": roi.number, "color": roi.color, "source": source,
            "source_kind": SOURCE_KIND, "source_sop_instance_uid": structure.sop_instance_uid,
            "source_series_instance_uid": structure.series_instance_uid,
            "structure_set_label": structure.label,
            "frame_of_reference_uid": roi.frame_of_reference_uid or next(iter(structure.frame_of_reference_uids), ""),
            "rt_roi_interpreted_type": roi.interpreted_type, "roi_generation_algorithm": roi.generation_algorithm,
            "voxels": voxels, "volume_ml": volume_ml, "contours": roi.n_contours, "contours_filled": plan.filled,
            "contours_unmatched": plan.unmatched, "contours_skipped": plan.skipped,
            "slices_with_contours": int(len(plan.slices_used)),
            "slice_range": [int(plan.slices_used[0]), int(plan.slices_used[-1])] if plan.filled else [],
            "rule": RULE, "note": "; ".join(notes),
        }
        yield PlacedRoi(source, SOURCE_KIND, roi.name, roi.number, Mask(name, array, attrs),
                        contours=roi.n_contours, contours_unmatched=plan.unmatched, contours_skipped=plan.skipped,
                        voxels=voxels, volume_ml=volume_ml, notes=notes)


def read_rtstruct_masks(path: str | os.PathLike, geometry: Geometry, rois: Sequence[str] | None = None, *,
                        frame_of_reference_uid: str | None = None,
                        taken: Iterable[str] = ()) -> tuple[list[Mask], list[PlacedRoi]]:
    """Rasterise the ROIs of an RTSTRUCT onto ``geometry``'s grid.

    Args:
        path: the RTSTRUCT file.
        geometry: the volume's grid.
        rois: only these (ROIName, case-insensitive, or ROINumber); the others get no mask.
        frame_of_reference_uid: the volume's; when given, a structure set in another frame is an error and ROIs
            in another frame get no mask.
        taken: mask names already used (new names get ``_2``, ... suffixes).

    Returns:
        ``(masks, placed)``: a :class:`~voxelpipe.core.masks.Mask` (uint8 (slice, row, column), attrs with
        ``roi_name``, ``roi_number``, ``color``, ``source``, ``source_kind``, ``source_sop_instance_uid``,
        ``voxels``, ``volume_ml``, ``contours``, ``contours_unmatched``, ...) for every ROI with an area to fill
        (possibly empty when nothing landed on the grid), and one :class:`~voxelpipe.core.masks.PlacedRoi` per
        ROI of the file.

    Raises:
        RoiNotFoundError: a name in ``rois`` matches no ROI.
        FrameOfReferenceMismatchError: the structure set is in another frame of reference.
        DicomReadError: the file is not a usable RTSTRUCT (subclasses name the tag and value).
    """
    masks, placed = [], []
    for roi in iter_rtstruct_masks(path, geometry, rois, frame_of_reference_uid=frame_of_reference_uid,
                                   taken=taken):
        if roi.mask is not None:
            masks.append(roi.mask)
        placed.append(roi)
    return masks, placed


__all__ = ["parse_rtstruct", "read_rtstruct_masks", "iter_rtstruct_masks", "assign_slices", "slice_windows",
           "slice_thickness", "to_row_col", "StructureSet", "Roi", "RoiNotFoundError",
           "FrameOfReferenceMismatchError", "NotRtstructError", "RtstructError", "SOURCE_KIND", "RTSTRUCT_SOP_CLASS"]
