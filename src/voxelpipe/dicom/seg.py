"""DICOM Segmentation objects (SEG) placed on a converted volume's grid: one uint8 mask per segment.

Supported forms (pixel data decoded by pydicom, frame by frame):

- Segmentation Storage (1.2.840.10008.5.1.4.1.1.66.4), ``SegmentationType``
  - ``BINARY``: 1-bit, bit-packed (pydicom unpacks it, also when frames do not end on a byte boundary);
  - ``FRACTIONAL``: 8-bit, value / ``MaximumFractionalValue`` is a probability or occupancy. Stored binary by
    default (fraction >= ``threshold``, 0.5) or, with ``fractional="scaled"``, as uint8 0..255 = fraction × 255;
  each frame belongs to one segment: ``PerFrameFunctionalGroupsSequence[i].SegmentIdentificationSequence[0]
  .ReferencedSegmentNumber``.
- Label Map Segmentation Storage (1.2.840.10008.5.1.4.1.1.66.7), ``SegmentationType`` ``LABELMAP``: a pixel's
  value is its segment's number; every frame holds every segment. Segment 0 (the background) is skipped unless
  asked for by name.

Placement (never resampling): the SEG must be on the volume's grid. A frame's slice is found from its
``PlanePositionSequence`` ImagePositionPatient projected on the volume's normal (``plane_normal``) against
``geometry.slice_positions``: the nearest slice within half the local slice step. Its in-plane position must be
row 0, column 0 of that slice, its ``PlaneOrientationSequence`` (shared or per frame) the volume's, its
``PixelMeasuresSequence`` PixelSpacing and Rows/Columns the volume's. Each of these checks is measured as the
largest displacement it causes anywhere in the frame and must stay within ``IN_PLANE_TOLERANCE_PX`` pixels, else
:class:`SegGridError` names the file, tag, value and the volume's value. A frame without a position is placed by
the instance it was derived from (``DerivationImageSequence > SourceImageSequence > ReferencedSOPInstanceUID``)
matched against the volume's per-slice SOPInstanceUIDs (``slice_uids``). Frames placed on no slice are
counted (``contours_unmatched``) and explained in the segment's notes. Frames of one segment landing on the same
slice are combined (OR; the maximum for scaled fractions) and counted in the note.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import iter_pixels

from voxelpipe.core.errors import (
    BadTagValueError,
    DicomReadError,
    FrameOfReferenceMismatchError,
    InputError,
    MissingTagError,
    NotDicomError,
)
from voxelpipe.core.geometry import Geometry
from voxelpipe.core.masks import Mask, PlacedRoi, mask_array_name

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
SEG_SOP_CLASSES = {SEG_STORAGE: "Segmentation Storage", LABEL_MAP_SEG_STORAGE: "Label Map Segmentation Storage"}
IN_PLANE_TOLERANCE_PX = 0.1  # largest in-plane displacement (pixels) a grid difference may cause anywhere in a frame
FRACTIONAL_MODES = ("threshold", "scaled")


# ----------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------
class NotSegError(BadTagValueError):
    """The file is DICOM but not a Segmentation object."""


class SegMissingTagError(MissingTagError):
    """A tag needed to place a SEG is absent or empty."""

    def __init__(self, path: str | os.PathLike, tags: list[str], why: str = ""):
        self.tags = list(tags)
        DicomReadError.__init__(self, path, "missing tag(s) needed to place a SEG: " + ", ".join(self.tags)
                                + (f" ({why})" if why else ""))


class SegTagValueError(BadTagValueError):
    """A SEG tag holds a value that cannot be used (bad segment number, bad position, ...)."""


class SegGridError(BadTagValueError):
    """The SEG is not on the volume's grid (orientation, pixel spacing, size or in-plane origin differ)."""


# ----------------------------------------------------------------------------------------------------------
# colour
# ----------------------------------------------------------------------------------------------------------
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])
_XYZ_TO_LINEAR_SRGB = np.array([[3.2404542, -1.5371385, -0.4985314],
                                [-0.9692660, 1.8760108, 0.0415560],
                                [0.0556434, -0.2040259, 1.0572252]])


def dicom_lab_to_rgb(value: Iterable[int]) -> list[int]:
    """sRGB (0..255 integers) of a DICOM CIELab triplet (PS3.3 C.10.7.1.1: L*, a*, b* scaled to 0..65535 as in
    ICC profiles; D65 white, as dcmqi, dcmjs and dcm4che convert it). Out-of-gamut colours are clipped."""
    scaled = np.asarray(list(value), dtype=np.float64)
    if scaled.shape != (3,):
        raise InputError(f"a CIELab value has 3 numbers, got {list(value)!r}")
    lightness = scaled[0] * 100.0 / 65535.0
    a, b = scaled[1:] * 255.0 / 65535.0 - 128.0
    fy = (lightness + 16.0) / 116.0
    f = np.array([fy + a / 500.0, fy, fy - b / 200.0])
    delta = 6.0 / 29.0
    xyz = np.where(f > delta, f ** 3, 3 * delta ** 2 * (f - 4.0 / 29.0)) * _D65_WHITE
    linear = np.clip(_XYZ_TO_LINEAR_SRGB @ xyz, 0.0, 1.0)
    srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return [int(v) for v in np.round(np.clip(srgb, 0.0, 1.0) * 255.0)]


# ----------------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------------
@dataclass
class _Segment:
    number: int
    label: str
    item: object  # the SegmentSequence item
    selected: bool = True
    frames: list[int] = field(default_factory=list)  # frame indices of this segment (BINARY/FRACTIONAL)
    placed: int = 0
    unmatched: int = 0
    shared_slice: int = 0
    empty_frames: int = 0
    mask: np.ndarray | None = None


@dataclass
class _Placement:
    slice_index: np.ndarray  # per frame: slice index, -1 when on no slice
    reasons: dict[int, str]  # frame -> why it is on no slice
    max_off_plane_mm: float
    disagreements: int  # frames whose position and referenced instance point to different slices


def read_seg_masks(seg_path: str | os.PathLike, geometry: Geometry, slice_uids: list[str] | None = None,
                   segments: list[str] | None = None, *, frame_of_reference_uid: str | None = None,
                   fractional: str = "threshold", threshold: float = 0.5,
                   taken: Iterable[str] = ()) -> tuple[list[Mask], list[PlacedRoi]]:
    """Masks of the segments of the SEG at ``seg_path`` on the grid of ``geometry`` (no resampling).

    Args:
        seg_path: the SEG file.
        geometry: the volume's grid.
        slice_uids: SOPInstanceUID per slice index of the volume, used for frames without a position.
        segments: only these (SegmentLabel or SegmentNumber, case-insensitive); the others get no mask.
        frame_of_reference_uid: the volume's; a SEG of another frame of reference is an error.
        fractional: ``"threshold"`` (default: mask = 1 where value / MaximumFractionalValue >= ``threshold``) or
            ``"scaled"`` (uint8 0..255 = fraction × 255, rounded).
        threshold: see ``fractional``.
        taken: mask names already used on the volume (a name in it gets a further ``_2``, ``_3``, ... suffix).

    Returns:
        One :class:`Mask` per selected segment (empty ones included; overlapping segments stay separate masks;
        names by :func:`segment_mask_names`),
        and one :class:`PlacedRoi` per segment of the SEG (``mask`` None for a segment left out; ``contours``
        counts the segment's frames placed on a slice).

    Raises:
        FrameOfReferenceMismatchError: the SEG is in another frame of reference than ``frame_of_reference_uid``.
        SegGridError: the SEG is not on the volume's grid.
        DicomReadError: the file is not a usable SEG (subclasses name the tag and value).
    """
    path = os.fspath(seg_path)
    if fractional not in FRACTIONAL_MODES:
        raise InputError(f"fractional must be one of {', '.join(FRACTIONAL_MODES)}, got {fractional!r}")
    if not 0.0 < float(threshold) <= 1.0:
        raise InputError(f"threshold must be in (0, 1], got {threshold!r}")
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise NotDicomError(path, f"not a DICOM file ({exc})") from None
    except OSError:
        raise
    except Exception as exc:  # truncated or malformed files raise many kinds of errors inside pydicom
        raise DicomReadError(path, f"could not be parsed: {type(exc).__name__}: {exc}") from None

    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in SEG_SOP_CLASSES:
        raise NotSegError(path, "SOPClassUID (0008,0016)", sop_class,
                          f"not a Segmentation object (Modality {ds.get('Modality', '')!r}); expected "
                          + " or ".join(f"{uid} ({name})" for uid, name in SEG_SOP_CLASSES.items()))
    seg_type = str(ds.get("SegmentationType", "")).upper()
    if not seg_type:
        raise SegMissingTagError(path, ["SegmentationType (0062,0001)"])
    label_map = sop_class == LABEL_MAP_SEG_STORAGE
    expected_types = ("LABELMAP",) if label_map else ("BINARY", "FRACTIONAL")
    if seg_type not in expected_types:
        raise SegTagValueError(path, "SegmentationType (0062,0001)", seg_type,
                               f"{SEG_SOP_CLASSES[sop_class]} holds {' or '.join(expected_types)}")
    if "PixelData" not in ds:
        raise SegMissingTagError(path, ["PixelData (7FE0,0010)"])
    notes: list[str] = []
    _check_frame_of_reference(path, ds, frame_of_reference_uid, notes)
    seg_list = _segments(path, ds, segments, label_map)
    n_frames = int(ds.get("NumberOfFrames") or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        raise SegMissingTagError(path, ["PerFrameFunctionalGroupsSequence (5200,9230)"])
    if len(per_frame) != n_frames:
        raise SegTagValueError(path, "NumberOfFrames (0028,0008)", n_frames,
                               f"PerFrameFunctionalGroupsSequence has {len(per_frame)} items")
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    _check_grid(path, ds, shared, per_frame, geometry, notes)
    by_number = {s.number: s for s in seg_list}
    if not label_map:
        for i, item in enumerate(per_frame):
            number = _frame_segment(path, item, shared, i)
            if number not in by_number:
                raise SegTagValueError(
                    path, f"ReferencedSegmentNumber (0062,000B) of frame {i + 1}", number,
                    f"no such segment in SegmentSequence (numbers {sorted(by_number)})")
            by_number[number].frames.append(i)
    placement = _place_frames(path, per_frame, shared, geometry, slice_uids)
    if placement.max_off_plane_mm > 0.1 * _min_step(geometry):
        notes.append(f"frames lie up to {placement.max_off_plane_mm:.3g} mm off their slice's plane")
    if placement.disagreements:
        notes.append(f"{placement.disagreements} frame(s) whose position and referenced instance point to "
                     "different slices (position used)")

    scaled = seg_type == "FRACTIONAL" and fractional == "scaled"
    max_fraction = _max_fractional_value(path, ds) if seg_type == "FRACTIONAL" else None
    bits = int(ds.get("BitsAllocated") or 0)
    if seg_type == "BINARY" and bits != 1:
        notes.append(f"BINARY SEG with BitsAllocated {bits} (the standard says 1): nonzero pixels are inside")
    for s in seg_list:
        if s.selected:
            s.mask = np.zeros(geometry.shape, dtype=np.uint8)
    _fill(path, ds, seg_list, placement, label_map, seg_type, scaled, max_fraction, threshold,
          geometry)

    voxel_ml = abs(float(np.linalg.det(geometry.affine[:3, :3]))) / 1000.0
    common = _common_attrs(path, ds, seg_type, fractional, threshold, max_fraction)
    names = segment_mask_names([(s.number, s.label) for s in seg_list], taken,
                               selected=[s.number for s in seg_list if s.selected])
    masks: list[Mask] = []
    placed: list[PlacedRoi] = []
    for s in seg_list:
        frame_count = n_frames if label_map else len(s.frames)
        seg_notes = list(notes)
        if not s.selected:
            seg_notes.append("background segment of a label map (pixel value 0)" if label_map and s.number == 0
                             else "not among the requested segments")
            placed.append(PlacedRoi(os.path.abspath(path), "SEG", s.label, s.number, contours_skipped=frame_count,
                                    notes=seg_notes))
            continue
        name = names[s.number]
        voxels = int(np.count_nonzero(s.mask))
        attrs = dict(common)
        attrs.update(_segment_attrs(s))
        attrs.update(voxels=voxels, volume_ml=round(voxels * voxel_ml, 6))
        if scaled:
            attrs["fractional_volume_ml"] = round(float(s.mask.sum(dtype=np.float64)) / 255.0 * voxel_ml, 6)
        if frame_count == 0:
            seg_notes.append("segment has no frames")
        if s.empty_frames:
            seg_notes.append(f"{s.empty_frames} empty frame(s)")
        if s.unmatched:
            why = sorted({placement.reasons[i] for i in (range(n_frames) if label_map else s.frames)
                          if placement.slice_index[i] < 0})
            seg_notes.append(f"{s.unmatched} frame(s) placed on no slice: " + "; ".join(why))
        if s.shared_slice:
            seg_notes.append(f"{s.shared_slice} frame(s) on a slice already holding a frame of this segment "
                             f"({'maximum' if scaled else 'OR'})")
        attrs["frames"] = s.placed
        attrs["frames_unmatched"] = s.unmatched
        mask = Mask(name, s.mask, attrs)
        masks.append(mask)
        placed.append(PlacedRoi(os.path.abspath(path), "SEG", s.label, s.number, mask, contours=s.placed,
                                contours_unmatched=s.unmatched, contours_skipped=0, voxels=voxels,
                                volume_ml=attrs["volume_ml"], notes=seg_notes))
    return masks, placed


def segment_mask_names(segments: Sequence[tuple[int, str]], taken: Iterable[str] = (),
                       selected: Iterable[int] | None = None) -> dict[int, str]:
    """Mask names of a SEG's segments, tied to their segment numbers where labels repeat.

    A segment's base name is its SegmentLabel made store-safe (:func:`voxelpipe.core.masks.mask_array_name`;
    ``segment_<number>`` when the label is empty). Segments whose base names are equal ignoring case (counted over
    every segment of the SEG, asked for or not, so a name never depends on the selection) are each named
    ``<base>_<SegmentNumber>``: segments 2 and 3 labelled ``Neoplasm Secondary`` give ``Neoplasm_Secondary_2``
    and ``Neoplasm_Secondary_3``. A name already in ``taken`` (or given to an earlier segment) gets a further
    ``_2``, ``_3``, ... .

    Args:
        segments: (SegmentNumber, SegmentLabel) of every segment, in SegmentSequence order.
        taken: Mask names already used on the volume.
        selected: The segment numbers that get a mask (default: all).

    Returns:
        SegmentNumber -> mask name, for the selected segments.
    """
    bases = {number: mask_array_name(label or f"segment_{number}") for number, label in segments}
    repeats = Counter(base.casefold() for base in bases.values())
    wanted = set(bases) if selected is None else set(selected)
    used = set(taken)
    names: dict[int, str] = {}
    for number, base in bases.items():
        if number not in wanted:
            continue
        name = mask_array_name(f"{base}_{number}" if repeats[base.casefold()] > 1 else base, used)
        used.add(name)
        names[number] = name
    return names


def _check_frame_of_reference(path: str, ds, volume_for: str | None, notes: list[str]) -> None:
    seg_for = str(ds.get("FrameOfReferenceUID", "") or "")
    if not volume_for:
        return
    if not seg_for:
        notes.append("SEG has no FrameOfReferenceUID: frame of reference not checked")
        return
    if seg_for != volume_for:
        raise FrameOfReferenceMismatchError(path, "FrameOfReferenceUID (0020,0052)", seg_for, volume_for)


def _segments(path: str, ds, wanted: list[str] | None, label_map: bool) -> list[_Segment]:
    items = ds.get("SegmentSequence")
    if not items:
        raise SegMissingTagError(path, ["SegmentSequence (0062,0002)"], "the SEG defines no segments")
    wanted_keys = None if wanted is None else {str(w).strip().casefold() for w in wanted}
    result: list[_Segment] = []
    seen: set[int] = set()
    for position, item in enumerate(items):
        raw = item.get("SegmentNumber")
        if raw is None or raw == "":
            raise SegMissingTagError(path, [f"SegmentNumber (0062,0004) of SegmentSequence item {position + 1}"])
        try:
            number = int(raw)
        except (TypeError, ValueError):
            raise SegTagValueError(path, f"SegmentNumber (0062,0004) of SegmentSequence item {position + 1}", raw,
                                   "not an integer") from None
        if number in seen:
            raise SegTagValueError(path, "SegmentNumber (0062,0004)", number, "repeated in SegmentSequence")
        if number < (0 if label_map else 1):
            raise SegTagValueError(path, "SegmentNumber (0062,0004)", number,
                                   "segment numbers start at " + ("0" if label_map else "1"))
        seen.add(number)
        label = str(item.get("SegmentLabel", "") or "")
        if wanted_keys is None:
            selected = not (label_map and number == 0)
        else:
            selected = label.strip().casefold() in wanted_keys or str(number) in wanted_keys
        result.append(_Segment(number, label, item, selected))
    return result


def _frame_segment(path: str, item, shared, i: int) -> int:
    for group in (item, shared):
        if group is None:
            continue
        ident = group.get("SegmentIdentificationSequence")
        if ident:
            value = ident[0].get("ReferencedSegmentNumber")
            if value is None or value == "":
                break
            try:
                return int(value)
            except (TypeError, ValueError):
                raise SegTagValueError(path, f"ReferencedSegmentNumber (0062,000B) of frame {i + 1}", value,
                                       "not an integer") from None
    raise SegMissingTagError(path, [f"SegmentIdentificationSequence > ReferencedSegmentNumber (0062,000B) of "
                                    f"frame {i + 1}"])


def _floats(path: str, value, n: int, tag: str) -> np.ndarray:
    items = list(value) if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)) else [value]
    try:
        values = [float(v) for v in items]
    except (TypeError, ValueError):
        raise SegTagValueError(path, tag, value, "not numbers") from None
    if len(values) != n or not np.all(np.isfinite(values)):
        raise SegTagValueError(path, tag, value, f"expected {n} finite numbers")
    return np.asarray(values, dtype=np.float64)


def _group_value(item, shared, sequence: str, keyword: str):
    """``keyword`` of ``sequence`` in the per-frame group ``item``, else in the shared group; None if absent."""
    for group in (item, shared):
        if group is None:
            continue
        seq = group.get(sequence)
        if seq and keyword in seq[0] and seq[0].get(keyword) not in (None, ""):
            return seq[0].get(keyword)
    return None


def _distinct_values(per_frame, shared, sequence: str, keyword: str) -> dict:
    """Each distinct value of ``sequence > keyword`` over the frames (per-frame, else shared groups), with the
    first frame index that has it: ``{value as strings: (frame index, value)}``."""
    values: dict = {}
    for i, item in enumerate(per_frame):
        value = _group_value(item, shared, sequence, keyword)
        if value is not None:
            values.setdefault(tuple(str(v) for v in value), (i, value))
    return values


def _min_step(geometry: Geometry) -> float:
    if len(geometry.slice_positions) > 1:
        return float(np.min(np.abs(np.diff(geometry.slice_positions))))
    return float(geometry.spacing[0])


def _check_grid(path: str, ds, shared, per_frame, geometry: Geometry, notes: list[str]) -> None:
    """Rows/Columns, orientation and pixel spacing must be the volume's (SegGridError naming the difference)."""
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if (rows, cols) != tuple(geometry.shape[1:]):
        raise SegGridError(path, "Rows, Columns (0028,0010), (0028,0011)", [rows, cols],
                           f"the volume's slices are {list(geometry.shape[1:])}: the SEG is on another grid "
                           "(placing a SEG needs the volume's grid; resample one onto the other first)")
    extent = max(rows, cols) - 1
    volume_iop = np.concatenate([geometry.direction[:, 2], geometry.direction[:, 1]])
    orientations = _distinct_values(per_frame, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
    if not orientations:
        notes.append("no PlaneOrientationSequence: orientation not checked")
    for i, value in orientations.values():
        iop = _floats(path, value, 6, f"PlaneOrientationSequence > ImageOrientationPatient (0020,0037) of "
                                      f"frame {i + 1}")
        iop = np.concatenate([iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])])
        worst = float(np.max(np.abs(iop - volume_iop))) * extent
        if worst > IN_PLANE_TOLERANCE_PX:
            raise SegGridError(path, f"PlaneOrientationSequence > ImageOrientationPatient (0020,0037) of frame "
                                     f"{i + 1}", list(value),
                               f"the volume's orientation is {np.round(volume_iop, 6).tolist()} (moves pixels by "
                               f"up to {worst:.3g} px): the SEG is on another grid; placing does not resample")
    spacings = _distinct_values(per_frame, shared, "PixelMeasuresSequence", "PixelSpacing")
    if not spacings:
        notes.append("no PixelMeasuresSequence PixelSpacing: pixel spacing not checked")
    volume_spacing = geometry.spacing[1:3]
    for i, value in spacings.values():
        spacing = _floats(path, value, 2, f"PixelMeasuresSequence > PixelSpacing (0028,0030) of frame {i + 1}")
        if np.any(spacing <= 0):
            raise SegTagValueError(path, f"PixelMeasuresSequence > PixelSpacing (0028,0030) of frame {i + 1}",
                                   list(value), "spacing must be positive")
        worst = float(np.max(np.abs(spacing - volume_spacing) / volume_spacing)) * extent
        if worst > IN_PLANE_TOLERANCE_PX:
            raise SegGridError(path, f"PixelMeasuresSequence > PixelSpacing (0028,0030) of frame {i + 1}",
                               list(value), f"the volume's pixel spacing is {volume_spacing.tolist()} (moves pixels "
                               f"by up to {worst:.3g} px): the SEG is on another grid; placing does not resample")


def _referenced_uids(item) -> list[str]:
    uids = []
    for derivation in item.get("DerivationImageSequence") or []:
        for source in derivation.get("SourceImageSequence") or []:
            uid = source.get("ReferencedSOPInstanceUID")
            if uid:
                uids.append(str(uid))
    return uids


def _place_frames(path: str, per_frame, shared, geometry: Geometry, slice_uids: list[str] | None) -> _Placement:
    n = len(per_frame)
    slice_index = np.full(n, -1, dtype=np.int64)
    reasons: dict[int, str] = {}
    normal = geometry.plane_normal
    positions = geometry.slice_positions
    n_slices = len(positions)
    # a frame belongs to the nearest slice when closer than half the gap to the next slice on its side
    # (positions ascend; the outer slices use their one gap; a single slice uses spacing[0])
    gaps = np.diff(positions) if n_slices > 1 else np.array([float(geometry.spacing[0])])
    gap_above = np.concatenate([gaps, gaps[-1:]])
    gap_below = np.concatenate([gaps[:1], gaps])
    # origin of slice k = origin + (p_k - p_0) * step / (step . normal): follows gantry tilt (sheared affine)
    step = geometry.slice_axis
    along = float(step @ normal)
    per_mm = step / along if abs(along) > 1e-9 else normal
    uid_index: dict[str, int] = {}
    repeated: set[str] = set()
    for k, uid in enumerate(slice_uids or []):
        if uid in uid_index:
            repeated.add(uid)
        uid_index[uid] = k
    max_off = 0.0
    disagreements = 0
    for i, item in enumerate(per_frame):
        value = _group_value(item, shared, "PlanePositionSequence", "ImagePositionPatient")
        refs = _referenced_uids(item)
        ref_slice = next((uid_index[u] for u in refs if u in uid_index and u not in repeated), None)
        if value is not None:
            tag = f"PlanePositionSequence > ImagePositionPatient (0020,0032) of frame {i + 1}"
            ipp = _floats(path, value, 3, tag)
            p = float(ipp @ normal)
            k = int(np.argmin(np.abs(positions - p)))
            expected = geometry.origin + (p - positions[0]) * per_mm
            residual = ipp - expected
            offset = np.array([residual @ geometry.direction[:, 1] / geometry.spacing[1],
                               residual @ geometry.direction[:, 2] / geometry.spacing[2]])
            if np.max(np.abs(offset)) > IN_PLANE_TOLERANCE_PX:
                raise SegGridError(path, tag, list(value),
                                   f"it lies {offset[0]:.3g} rows, {offset[1]:.3g} columns from the volume's row 0, "
                                   "column 0 at that position: the SEG is on another grid (shifted or cropped); "
                                   "placing does not resample")
            distance = abs(p - positions[k])
            if distance < 0.5 * (gap_above[k] if p >= positions[k] else gap_below[k]):
                slice_index[i] = k
                max_off = max(max_off, distance)
                if ref_slice is not None and ref_slice != k:
                    disagreements += 1
            else:
                side = "below" if p < positions.min() else "above" if p > positions.max() else "between"
                reasons[i] = (f"position {p:.4g} mm along the normal is {side} the volume's slices "
                              f"({positions.min():.4g} to {positions.max():.4g} mm)")
            continue
        if ref_slice is not None:
            slice_index[i] = ref_slice
        elif not refs:
            reasons[i] = "no position and no referenced instance"
        elif slice_uids is None:
            reasons[i] = "no position, and no slice UIDs given to match the referenced instance"
        elif any(u in repeated for u in refs):
            reasons[i] = "no position, and the referenced instance is on several slices (multi-frame source)"
        else:
            reasons[i] = "no position, and the referenced instance is not a slice of the volume"
    return _Placement(slice_index, reasons, max_off, disagreements)


def _max_fractional_value(path: str, ds) -> int:
    value = ds.get("MaximumFractionalValue")
    if value is None or value == "":
        raise SegMissingTagError(path, ["MaximumFractionalValue (0062,000E)"], "FRACTIONAL SEG")
    try:
        value = int(value)
    except (TypeError, ValueError):
        raise SegTagValueError(path, "MaximumFractionalValue (0062,000E)", value, "not an integer") from None
    if value < 1:
        raise SegTagValueError(path, "MaximumFractionalValue (0062,000E)", value, "must be at least 1")
    return value


def _fill(path: str, ds, seg_list: list[_Segment], placement: _Placement,
          label_map: bool, seg_type: str, scaled: bool, max_fraction: int | None, threshold: float,
          geometry: Geometry) -> None:
    """Decode the frames that land on a slice (one at a time) into the selected segments' masks."""
    n_frames = len(placement.slice_index)
    frame_segment: dict[int, _Segment] = {}
    for s in seg_list:
        for i in s.frames:
            frame_segment[i] = s
    # counts first (every frame of a segment, selected or not, is placed or unmatched)
    for i in range(n_frames):
        targets = seg_list if label_map else [frame_segment[i]]
        for s in targets:
            if placement.slice_index[i] >= 0:
                s.placed += 1
            else:
                s.unmatched += 1
    if label_map:
        any_selected = any(s.selected for s in seg_list)
        needed = [i for i in range(n_frames) if placement.slice_index[i] >= 0 and any_selected]
    else:
        needed = [i for i in range(n_frames) if placement.slice_index[i] >= 0 and frame_segment[i].selected]
    if not needed:
        return
    rows, cols = geometry.shape[1:]
    filled: dict[int, set[int]] = {s.number: set() for s in seg_list}
    if max_fraction is not None:
        cut = float(threshold) * max_fraction  # value / max >= threshold  <=>  value >= threshold * max
    try:
        frames = iter_pixels(ds, indices=needed)
        for i, pixels in zip(needed, frames):
            pixels = np.asarray(pixels)
            if pixels.shape != (rows, cols):
                raise DicomReadError(path, f"frame {i + 1} decoded to shape {pixels.shape}, expected "
                                           f"{(rows, cols)}")
            k = int(placement.slice_index[i])
            if label_map:
                present = np.unique(pixels)
                for s in seg_list:
                    if not s.selected:
                        continue
                    if s.number not in present:
                        s.empty_frames += 1
                        continue
                    if k in filled[s.number]:
                        s.shared_slice += 1
                    filled[s.number].add(k)
                    s.mask[k] |= (pixels == s.number)
                continue
            s = frame_segment[i]
            if k in filled[s.number]:
                s.shared_slice += 1
            filled[s.number].add(k)
            if not pixels.any():
                s.empty_frames += 1
                continue
            if seg_type == "FRACTIONAL":
                if scaled:
                    # round(fraction × 255), halves up, in integers: (v × 255 + max // 2) // max
                    values = (np.minimum(pixels, max_fraction).astype(np.uint32) * 255 + max_fraction // 2) \
                        // max_fraction
                    np.maximum(s.mask[k], values.astype(np.uint8), out=s.mask[k])
                else:
                    s.mask[k] |= (pixels >= cut)
            else:
                s.mask[k] |= (pixels != 0)
    except DicomReadError:
        raise
    except Exception as exc:  # decoder failures (missing plugin, corrupt data) come in many types
        raise DicomReadError(path, f"SEG pixel data could not be decoded: {type(exc).__name__}: {exc}") from None


def _code(item, sequence: str) -> tuple[str, str]:
    seq = item.get(sequence)
    if not seq:
        return "", ""
    code = seq[0]
    value = code.get("CodeValue") or code.get("LongCodeValue") or code.get("URNCodeValue") or ""
    scheme = code.get("CodingSchemeDesignator") or ""
    return str(code.get("CodeMeaning", "") or ""), f"{scheme}:{value}" if scheme else str(value)


def _segment_attrs(s: _Segment) -> dict:
    item = s.item
    attrs = {"roi_name": s.label, "roi_number": s.number}
    lab = item.get("RecommendedDisplayCIELabValue")
    if lab is not None and len(lab) == 3:
        attrs["cielab"] = [int(v) for v in lab]
        attrs["color"] = dicom_lab_to_rgb(lab)
    for key, sequence in (("segment_category", "SegmentedPropertyCategoryCodeSequence"),
                          ("segment_type", "SegmentedPropertyTypeCodeSequence"),
                          ("anatomic_region", "AnatomicRegionSequence")):
        meaning, code = _code(item, sequence)
        if meaning or code:
            attrs[key], attrs[f"{key}_code"] = meaning, code
    type_seq = item.get("SegmentedPropertyTypeCodeSequence")
    if type_seq:
        meaning, code = _code(type_seq[0], "SegmentedPropertyTypeModifierCodeSequence")
        if meaning or code:
            attrs["segment_type_modifier"], attrs["segment_type_modifier_code"] = meaning, code
    attrs["algorithm_type"] = str(item.get("SegmentAlgorithmType", "") or "")
    for key, keyword in (("algorithm_name", "SegmentAlgorithmName"), ("segment_description", "SegmentDescription"),
                         ("tracking_id", "TrackingID"), ("tracking_uid", "TrackingUID")):
        value = item.get(keyword)
        if value:
            attrs[key] = str(value)
    return attrs


def _common_attrs(path: str, ds, seg_type: str, fractional: str, threshold: float,
                  max_fraction: int | None) -> dict:
    attrs = {
        "source": os.path.abspath(path),
        "source_kind": "SEG",
        "source_sop_instance_uid": str(ds.get("SOPInstanceUID", "") or ""),
        "source_series_instance_uid": str(ds.get("SeriesInstanceUID", "") or ""),
        "source_sop_class_uid": str(ds.get("SOPClassUID", "") or ""),
        "frame_of_reference_uid": str(ds.get("FrameOfReferenceUID", "") or ""),
        "segmentation_type": seg_type,
    }
    referenced = [str(r.get("SeriesInstanceUID", "")) for r in ds.get("ReferencedSeriesSequence") or []]
    if referenced:
        attrs["referenced_series_instance_uid"] = referenced[0] if len(referenced) == 1 else referenced
    if seg_type == "FRACTIONAL":
        attrs.update(fractional_type=str(ds.get("SegmentationFractionalType", "") or ""),
                     maximum_fractional_value=max_fraction, fractional_mode=fractional)
        if fractional == "threshold":
            attrs["fractional_threshold"] = float(threshold)
            attrs["values"] = f"1 where value / MaximumFractionalValue >= {float(threshold):g}, else 0"
        else:
            attrs["values"] = "round(value / MaximumFractionalValue * 255), halves up: 0..255 = fraction 0..1"
    return attrs


__all__ = ["read_seg_masks", "segment_mask_names", "dicom_lab_to_rgb", "NotSegError", "SegMissingTagError",
           "SegTagValueError", "SegGridError", "FrameOfReferenceMismatchError", "IN_PLANE_TOLERANCE_PX",
           "SEG_SOP_CLASSES"]
