"""Masks of a converted volume written back as a DICOM Segmentation object (SEG) that references its source
instances (highdicom, an optional extra: ``voxelpipe[seg]``).

One segment per mask: SegmentLabel = the mask name, SegmentDescription = its ROI name (the ``roi_name``
attribute, else the mask name), ``BINARY`` segmentation type (a voxel is inside where the mask is nonzero), one
frame per source slice that holds any voxel of the segment (empty frames are left out). Each frame is derived
from the source image of its slice (``DerivationImageSequence > SourceImageSequence``) and the SEG references the
source series (``ReferencedSeriesSequence``); patient, study and frame of reference come from the source images.

Segment algorithm type: ``MANUAL`` by default (a mask drawn or reviewed by a person, as RTSTRUCT contours are);
with ``algorithm`` it is ``AUTOMATIC`` with that ``AlgorithmIdentificationSequence`` (name, version, family
"Artificial Intelligence" (DCM 123110)), which the standard requires for every non-manual segment.

Segmented property category and type: given per mask name (``categories``, ``types``), else looked up by
:func:`property_codes` from the mask name (:data:`PROPERTY_RULES`: lungs, GTV/tumour, spinal cord, heart, ...),
else ``Tissue`` / ``Tissue`` (SCT 85756007).

The SEG is placed on the source images, so the volume must be their stack as converted: one single-frame source
instance per slice (no 4-D volumes, no multi-frame sources, no volume resampled away from its slices: convert
with ``--uneven keep`` and ``--tilt keep`` when the slices are unevenly spaced or tilted).
"""
from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from voxelpipe._version import __version__
from voxelpipe.core import defaults
from voxelpipe.core.errors import InputError
from voxelpipe.core.masks import Mask
from voxelpipe.core.volume import Volume
from voxelpipe.dicom.files import iter_files
from voxelpipe.stores.masks import open_masks
from voxelpipe.stores.registry import ZARR_SUFFIXES
from voxelpipe.stores.tables import atomic_path, read_csv
from voxelpipe.stores.volumes import open_volume

log = logging.getLogger("voxelpipe")

INSTALL_HINT = "install voxelpipe[seg] (pip install 'voxelpipe[seg]', which brings highdicom)"
POSITION_TOLERANCE_MM = 0.05  # a source image's position may differ this much from its slice's (decimal strings)
ORIENTATION_TOLERANCE = 1e-4  # largest difference of direction cosines between a source image and the volume
# type 2 patient / study attributes the SEG copies from its sources; a source lacking one gets it empty
COPIED_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                "StudyDate", "StudyTime", "ReferringPhysicianName")


@dataclass(frozen=True)
class PropertyCode:
    """A coded concept: coding scheme designator, code value, code meaning (``SCT:39607008:Lung``)."""

    scheme: str
    value: str
    meaning: str

    @classmethod
    def parse(cls, text: str) -> PropertyCode:
        """``SCHEME:VALUE:MEANING`` (the meaning may hold further colons).

        Raises:
            InputError: fewer than three non-empty parts.
        """
        parts = str(text).split(":", 2)
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise InputError(f"a code is SCHEME:VALUE:MEANING (e.g. SCT:39607008:Lung), got {text!r}")
        return cls(*(p.strip() for p in parts))

    def __str__(self) -> str:
        return f"{self.scheme}:{self.value}:{self.meaning}"


TISSUE = PropertyCode("SCT", "85756007", "Tissue")
ANATOMICAL_STRUCTURE = PropertyCode("SCT", "91723000", "Anatomical Structure")
MORPHOLOGICALLY_ALTERED = PropertyCode("SCT", "49755003", "Morphologically Altered Structure")
DEFAULT_PROPERTY = (TISSUE, TISSUE)
# (words found in the lower-cased mask name, category, type); the first rule with a word in the name wins
PROPERTY_RULES: tuple[tuple[tuple[str, ...], PropertyCode, PropertyCode], ...] = (
    (("gtv", "tumor", "tumour", "neoplasm"), MORPHOLOGICALLY_ALTERED, PropertyCode("SCT", "108369006", "Neoplasm")),
    (("lesion",), MORPHOLOGICALLY_ALTERED, PropertyCode("SCT", "52988006", "Lesion")),
    (("nodule",), MORPHOLOGICALLY_ALTERED, PropertyCode("SCT", "27925004", "Nodule")),
    (("lung",), ANATOMICAL_STRUCTURE, PropertyCode("SCT", "39607008", "Lung")),
    (("cord",), ANATOMICAL_STRUCTURE, PropertyCode("SCT", "2748008", "Spinal cord")),
    (("heart",), ANATOMICAL_STRUCTURE, PropertyCode("SCT", "80891009", "Heart")),
    (("liver",), ANATOMICAL_STRUCTURE, PropertyCode("SCT", "10200004", "Liver")),
    (("kidney",), ANATOMICAL_STRUCTURE, PropertyCode("SCT", "64033007", "Kidney")),
    (("esophagus", "oesophagus"), ANATOMICAL_STRUCTURE, PropertyCode("SCT", "32849002", "Esophagus")),
)
AI_FAMILY = PropertyCode("DCM", "123110", "Artificial Intelligence")


def require_highdicom(what: str):
    """The ``highdicom`` module (an optional extra, imported on first use).

    Args:
        what: the task that needs it, for the message.

    Raises:
        InputError: highdicom is not installed; the message says how to install it.
    """
    try:  # optional extra (voxelpipe[seg]): imported only when a SEG is written
        import highdicom
    except ImportError:
        raise InputError(f"{what} needs highdicom: {INSTALL_HINT}") from None
    return highdicom


def property_codes(name: str) -> tuple[PropertyCode, PropertyCode]:
    """Segmented property (category, type) for a mask name by :data:`PROPERTY_RULES` (``Lung_Left`` ->
    Anatomical Structure / Lung, ``GTV-1`` -> Morphologically Altered Structure / Neoplasm), else Tissue / Tissue.
    """
    lower = name.lower()
    for words, category, kind in PROPERTY_RULES:
        if any(w in lower for w in words):
            return category, kind
    return DEFAULT_PROPERTY


def write_seg(volume: Volume | str | os.PathLike, masks: Mapping[str, object] | Sequence[Mask],
              source_files: Sequence[str | os.PathLike | Dataset], path: str | os.PathLike, *,
              algorithm: str | None = None, algorithm_version: str = defaults.SEG_ALGORITHM_VERSION,
              categories: Mapping[str, PropertyCode | str] | None = None,
              types: Mapping[str, PropertyCode | str] | None = None,
              series_description: str = defaults.SEG_SERIES_DESCRIPTION,
              series_number: int = defaults.SEG_SERIES_NUMBER) -> dict:
    """Write ``masks`` of ``volume`` as a BINARY DICOM SEG at ``path`` (atomically), referencing ``source_files``.

    Args:
        volume: the converted volume (a :class:`Volume` or a path :func:`open_volume` reads), 3-D
            (slice, row, column).
        masks: mask name -> array (slice, row, column) on the volume's grid, or :class:`Mask` objects; nonzero is
            inside. One segment each, numbered 1, 2, ... in this order.
        source_files: the source DICOM instance of every slice, in slice order (index ``k`` -> slice ``k``):
            paths or pydicom datasets (pixel data not needed), single-frame, one series.
        path: the SEG file to write.
        algorithm: the algorithm's name: segments become ``AUTOMATIC`` with this algorithm identification
            (default: ``MANUAL``, no algorithm).
        algorithm_version: AlgorithmVersion with ``algorithm``.
        categories: mask name -> segmented property category (:class:`PropertyCode` or ``SCHEME:VALUE:MEANING``);
            masks not named get :func:`property_codes`'.
        types: mask name -> segmented property type, likewise.
        series_description: the SEG's SeriesDescription.
        series_number: the SEG's SeriesNumber.

    Returns:
        ``path``, ``sop_instance_uid``, ``series_instance_uid``, ``segments`` (names, in segment-number order),
        ``frames`` (frames written), ``empty_segments`` (names of masks without any voxel).

    Raises:
        InputError: highdicom missing, a 4-D volume, no masks, a mask off the volume's grid, a name given codes
            that is not a mask, a source list of another length than the slices, a multi-frame source, sources
            that are not the volume's slices (position, orientation, size or series differ).
    """
    hd = require_highdicom("writing a DICOM SEG")
    if not isinstance(volume, Volume):
        volume = open_volume(volume)
    shape = tuple(volume.array.shape)
    if len(shape) != 3:
        raise InputError(f"{volume.path or 'volume'}: a SEG is written for 3-D volumes (slice, row, column); this "
                         f"one has shape {shape} (4-D volumes are not supported: write one SEG per frame's volume)")
    named = _named_masks(masks, shape, volume.path)
    codes = {name: _codes(name, categories, types) for name in named}
    for what, given in (("categories", categories), ("types", types)):
        unknown = sorted(set(given or {}) - set(named))
        if unknown:
            raise InputError(f"{what} given for {', '.join(unknown)}, which are not among the masks "
                             f"({', '.join(named)})")
    sources = _source_datasets(source_files, volume)

    stack = np.zeros((*shape, len(named)), dtype=bool)
    attrs: dict[str, dict] = {}
    for i, (name, (array, mask_attrs)) in enumerate(named.items()):
        stack[..., i] = np.asarray(array) != 0
        attrs[name] = mask_attrs
    empty = [name for i, name in enumerate(named) if not stack[..., i].any()]
    if len(empty) == len(named):
        raise InputError(f"every mask is empty ({', '.join(named)}): a SEG needs at least one segmented voxel")
    for name in empty:
        log.warning("mask %r has no voxel: its segment gets no frame", name)

    identification = None
    algorithm_type = hd.seg.SegmentAlgorithmTypeValues.MANUAL
    if algorithm:
        algorithm_type = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        identification = hd.AlgorithmIdentificationSequence(
            name=str(algorithm), version=str(algorithm_version or defaults.SEG_ALGORITHM_VERSION),
            family=_coded(hd, AI_FAMILY))
    descriptions = []
    for number, name in enumerate(named, start=1):
        category, kind = codes[name]
        description = hd.seg.SegmentDescription(
            segment_number=number, segment_label=name, segmented_property_category=_coded(hd, category),
            segmented_property_type=_coded(hd, kind), algorithm_type=algorithm_type,
            algorithm_identification=identification, display_color=_colour(hd, attrs[name].get("color")))
        description.SegmentDescription = str(attrs[name].get("roi_name") or name)[:64]
        descriptions.append(description)

    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=stack, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=int(series_number),
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="voxelpipe",
        manufacturer_model_name="voxelpipe", software_versions=__version__, device_serial_number="0",
        series_description=str(series_description)[:64], omit_empty_frames=True)
    out = os.fspath(path)
    with atomic_path(out) as tmp:
        seg.save_as(tmp)
    frames = int(seg.get("NumberOfFrames") or 1)
    log.info("wrote SEG %s: %d segment(s), %d frame(s)", out, len(named), frames)
    return {"path": out, "sop_instance_uid": str(seg.SOPInstanceUID),
            "series_instance_uid": str(seg.SeriesInstanceUID), "segments": list(named), "frames": frames,
            "empty_segments": empty}


def masks_to_seg(out: str | os.PathLike, key: str, path: str | os.PathLike, *, masks: Sequence[str] | None = None,
                 dicom: str | os.PathLike | None = None, **options) -> dict:
    """Write the masks of the converted volume ``OUT/data/<key>.zarr`` as a DICOM SEG at ``path``.

    The source instance of every slice is named by ``OUT/meta/<key>.slices.csv`` (``sop_instance_uid``) and
    found in ``dicom`` by SOPInstanceUID (every file below the folder is looked at), or, without ``dicom``, at
    the ``file`` path the CSV recorded.

    Args:
        out: the convert output folder.
        key: the volume's series key.
        path: the SEG file to write.
        masks: mask names to write, in this order (default: every mask of the volume, sorted by name).
        dicom: a folder holding the source DICOM files.
        **options: passed to :func:`write_seg` (``algorithm``, ``algorithm_version``, ``categories``, ``types``,
            ``series_description``, ``series_number``).

    Returns:
        :func:`write_seg`'s summary.

    Raises:
        InputError: highdicom missing, no such volume or slice table, a mask the volume lacks, a multi-frame or
            4-D source, source instances missing from ``dicom`` (named by SOPInstanceUID), and :func:`write_seg`'s
            errors.
    """
    require_highdicom("writing a DICOM SEG")  # before any source file is read
    out = os.fspath(out)
    volume_path = find_volume(out, key)
    available = open_masks(volume_path)
    if not available:
        raise InputError(f"{volume_path}: the volume has no masks (add some with `python -m voxelpipe masks`)")
    names = list(masks) if masks else list(available)
    missing = [n for n in names if n not in available]
    if missing:
        raise InputError(f"{volume_path}: no mask {', '.join(map(repr, missing))}; the volume has "
                         f"{', '.join(available)}")
    if len(set(names)) != len(names):
        raise InputError(f"mask names repeat: {', '.join(names)}")
    volume = open_volume(volume_path)
    uids, recorded = slice_sources(out, key, int(volume.array.shape[-3]))
    files = find_sources(dicom, uids) if dicom is not None else _recorded_files(recorded, uids)
    chosen = {}
    for name in names:
        array = available[name]
        chosen[name] = Mask(name, np.asarray(array[...]), dict(getattr(array, "attrs", {}) or {}))
    return write_seg(volume, list(chosen.values()), files, path, **options)


def find_volume(out: str, key: str) -> str:
    """``OUT/data/<key>`` with a Zarr suffix (``.zarr``, ``.zarr.zip``, ``.zarr.sqlite``).

    Raises:
        InputError: none exists.
    """
    data = os.path.join(out, "data")
    for suffix in ZARR_SUFFIXES:
        candidate = os.path.join(data, key + suffix)
        if os.path.exists(candidate):
            return candidate
    raise InputError(f"{out}: no converted Zarr volume {key!r} (looked for data/{key}"
                     f"{{{','.join(ZARR_SUFFIXES)}}}); masks-to-seg reads the masks of a Zarr volume")


def slice_sources(out: str, key: str, n_slices: int) -> tuple[list[str], list[str]]:
    """SOPInstanceUID and recorded file of every slice index, from ``OUT/meta/<key>.slices.csv``.

    Raises:
        InputError: no such table; a slice without a row or UID; a multi-frame source (a ``frame`` other than 0,
            or one UID on several slices); more rows than slices (a 4-D volume or a volume resampled away from
            its slices).
    """
    table = os.path.join(out, "meta", f"{key}.slices.csv")
    if not os.path.isfile(table):
        raise InputError(f"{table}: no such slice table (the convert output of {key!r} names each slice's "
                         "source instance there)")
    rows = read_csv(table)
    if len(rows) != n_slices:
        raise InputError(f"{table}: {len(rows)} source frame(s) for {n_slices} slice(s): the volume is 4-D or was "
                         "resampled away from its source slices (convert with --uneven keep --tilt keep); a SEG "
                         "needs one source instance per slice")
    uids, files = [""] * n_slices, [""] * n_slices
    for position, row in enumerate(rows):
        index = int(row.get("index") or position)
        if not 0 <= index < n_slices:
            raise InputError(f"{table}: slice index {index} outside 0..{n_slices - 1}")
        if str(row.get("frame") or "0") not in ("0", ""):
            raise InputError(f"{table}: slice {index} is frame {row['frame']} of {row.get('file', '')}: SEGs of "
                             "volumes from multi-frame source images are not supported")
        uids[index] = str(row.get("sop_instance_uid") or "")
        files[index] = str(row.get("file") or "")
    lacking = [str(i) for i, uid in enumerate(uids) if not uid]
    if lacking:
        raise InputError(f"{table}: no sop_instance_uid for slice(s) {', '.join(lacking[:10])}")
    if len(set(uids)) != len(uids):
        raise InputError(f"{table}: one SOPInstanceUID on several slices (a multi-frame source): not supported")
    return uids, files


def find_sources(dicom: str | os.PathLike, uids: Sequence[str]) -> list[Dataset]:
    """The header (no pixel data) of the file holding each of ``uids``, found below ``dicom`` by SOPInstanceUID.

    Raises:
        InputError: ``dicom`` is no folder, or some UIDs are in no file (the message names them).
    """
    root = os.fspath(dicom)
    if not os.path.isdir(root):
        raise InputError(f"--dicom {root}: no such folder")
    wanted = set(uids)
    found: dict[str, Dataset] = {}
    for file in iter_files([root]):
        ds = _read_header(file)
        uid = str(getattr(ds, "SOPInstanceUID", "") or "") if ds is not None else ""
        if uid in wanted and uid not in found:
            found[uid] = ds
            if len(found) == len(wanted):
                break
    missing = [u for u in uids if u not in found]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise InputError(f"--dicom {root}: {len(missing)} of the volume's {len(uids)} source instance(s) are "
                         f"missing (SOPInstanceUID {shown})")
    return [found[u] for u in uids]


def _recorded_files(files: Sequence[str], uids: Sequence[str]) -> list[Dataset]:
    datasets, missing = [], []
    for file, uid in zip(files, uids):
        ds = _read_header(file) if file and os.path.isfile(file) else None
        if ds is None or str(getattr(ds, "SOPInstanceUID", "")) != uid:
            missing.append(uid)
        datasets.append(ds)
    if missing:
        raise InputError(f"{len(missing)} source instance(s) are not at the paths the slice table recorded "
                         f"(SOPInstanceUID {', '.join(missing[:10])}); give the source folder with --dicom")
    return datasets


def _read_header(path: str) -> Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError):
        return None
    except Exception:  # malformed files raise many kinds of errors inside pydicom; such a file holds no source
        return None


def _named_masks(masks, shape: tuple[int, ...], where: str) -> dict[str, tuple[object, dict]]:
    if isinstance(masks, Mapping):
        items = [(str(k), v, dict(getattr(v, "attrs", {}) or {})) for k, v in masks.items()]
    else:
        items = [(m.name, m.array, dict(m.attrs or {})) for m in masks]
    if not items:
        raise InputError("no masks to write: a SEG needs at least one")
    named: dict[str, tuple[object, dict]] = {}
    for name, array, attrs in items:
        if not name.strip():
            raise InputError("a mask has an empty name")
        if name in named:
            raise InputError(f"mask name {name!r} repeats")
        if tuple(np.shape(array)) != shape:
            raise InputError(f"{where}: mask {name!r} has shape {tuple(np.shape(array))}, the volume's grid is "
                             f"{shape}")
        named[name] = (array, attrs)
    return named


def _codes(name: str, categories, types) -> tuple[PropertyCode, PropertyCode]:
    category, kind = property_codes(name)
    given_category = (categories or {}).get(name)
    given_type = (types or {}).get(name)
    if given_category is not None:
        category = given_category if isinstance(given_category, PropertyCode) else PropertyCode.parse(given_category)
    if given_type is not None:
        kind = given_type if isinstance(given_type, PropertyCode) else PropertyCode.parse(given_type)
    return category, kind


def _coded(hd, code: PropertyCode):
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _colour(hd, rgb):
    try:
        r, g, b = (float(v) for v in rgb)
    except (TypeError, ValueError):
        return None
    if not all(0.0 <= v <= 255.0 for v in (r, g, b)):
        return None
    return hd.color.CIELabColor.from_rgb(r, g, b)


def _source_datasets(source_files, volume: Volume) -> list[Dataset]:
    """Headers of the sources, checked to be the volume's slices: same count, single-frame, one series and frame of
    reference, same rows/columns, orientation and position (slice k's voxel [k, 0, 0])."""
    geometry = volume.geometry
    n, rows, cols = geometry.shape[-3:]
    if len(source_files) != n:
        raise InputError(f"{len(source_files)} source file(s) for {n} slice(s): give one per slice, in slice order")
    datasets = []
    for item in source_files:
        if isinstance(item, Dataset):
            datasets.append(item)
            continue
        ds = _read_header(os.fspath(item))
        if ds is None:
            raise InputError(f"{os.fspath(item)}: not a readable DICOM file")
        datasets.append(ds)
    row_dir = np.asarray(geometry.direction, dtype=np.float64)[:, 2]  # along a row: the column axis
    col_dir = np.asarray(geometry.direction, dtype=np.float64)[:, 1]
    normal = geometry.plane_normal
    origin = np.asarray(geometry.origin, dtype=np.float64)
    positions = np.asarray(geometry.slice_positions, dtype=np.float64)
    affine = np.asarray(geometry.affine, dtype=np.float64)
    lacking = [k for k in COPIED_TYPE2 if k not in datasets[0]]
    if lacking:  # the SEG copies them from the first source: a copy of it gets them empty (never the caller's)
        log.info("the source images lack %s: written empty in the SEG", ", ".join(lacking))
        datasets[0] = copy.deepcopy(datasets[0])
        for keyword in lacking:
            setattr(datasets[0], keyword, "")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) != 1:
        raise InputError(f"the source files come from {len(series)} series; a SEG references one")
    for k, ds in enumerate(datasets):
        where = f"{getattr(ds, 'filename', None) or 'source of slice ' + str(k)}"
        if int(ds.get("NumberOfFrames") or 1) != 1:
            raise InputError(f"{where}: a multi-frame image (NumberOfFrames {ds.NumberOfFrames}); SEGs of "
                             "multi-frame sources are not supported")
        if (int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)) != (rows, cols):
            raise InputError(f"{where}: Rows/Columns {ds.get('Rows')}x{ds.get('Columns')}, the volume's slices are "
                             f"{rows}x{cols}")
        iop = np.asarray([float(v) for v in ds.get("ImageOrientationPatient") or []], dtype=np.float64)
        ipp = np.asarray([float(v) for v in ds.get("ImagePositionPatient") or []], dtype=np.float64)
        if iop.shape != (6,) or ipp.shape != (3,):
            raise InputError(f"{where}: no ImageOrientationPatient / ImagePositionPatient")
        if np.abs(iop[:3] - row_dir).max() > ORIENTATION_TOLERANCE or \
                np.abs(iop[3:] - col_dir).max() > ORIENTATION_TOLERANCE:
            raise InputError(f"{where}: ImageOrientationPatient {iop.round(6).tolist()} is not the volume's "
                             f"{np.concatenate([row_dir, col_dir]).round(6).tolist()} (was it reoriented?)")
        expected = affine[:3, :3] @ np.array([k, 0.0, 0.0]) + affine[:3, 3]
        if not np.all(np.isfinite(expected)):  # uneven steps: the normal from slice_positions, in-plane from origin
            offset = ipp - origin
            expected = ipp - (offset @ normal - (positions[k] - origin @ normal)) * normal
            off_plane = np.hypot(offset @ row_dir, offset @ col_dir)
            expected = expected if off_plane <= POSITION_TOLERANCE_MM else ipp + np.inf
        if not np.all(np.abs(ipp - expected) <= POSITION_TOLERANCE_MM):
            raise InputError(f"{where}: ImagePositionPatient {ipp.round(4).tolist()} is not slice {k}'s "
                             f"{np.round(expected, 4).tolist()}: the volume is not the stack of its source slices "
                             "(resampled? convert with --uneven keep --tilt keep)")
    return datasets


__all__ = ["write_seg", "masks_to_seg", "find_volume", "slice_sources", "find_sources", "property_codes",
           "require_highdicom", "PropertyCode", "PROPERTY_RULES", "DEFAULT_PROPERTY", "INSTALL_HINT"]
