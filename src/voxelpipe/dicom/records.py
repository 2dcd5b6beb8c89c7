"""What `scan` keeps of each file: a small record built from the flattened header row.

The flattened row (see ``flatten``) is the parsed header; the few tags needed to group series and check their
geometry are read back from it, so no element is converted twice. Enhanced multi-frame files read their
per-frame functional groups through pydicom.
"""
from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np
from pydicom.dataset import Dataset

from voxelpipe.core.errors import BadTagValueError, DicomReadError, MissingTagError, NoGeometryError
from voxelpipe.dicom.files import Header
from voxelpipe.dicom.flatten import DUPLICATE_PREFIX, column_name
from voxelpipe.dicom.mosaic import MosaicInfo, is_mosaic, mosaic_info, tile_positions
from voxelpipe.dicom.philips import MANUFACTURER_TAG, enhanced_scale_slope, scale_tags
from voxelpipe.dicom.pixels import EXPLICIT_BE, EXPLICIT_LE, IMPLICIT_LE, NATIVE_SYNTAXES, PixelFormat
from voxelpipe.dicom.rawheader import VALID_VRS

# Modalities of non-image objects: listed in objects.csv, never made into volumes.
OBJECT_MODALITIES = frozenset(
    {"RTSTRUCT", "SEG", "SR", "PR", "RTDOSE", "RTPLAN", "RTRECORD", "RTTREAT", "KO", "REG", "FID", "RWV", "DOC",
     "AU", "ECG", "HD", "PLAN", "OT-DOC"}
)
LOCALIZER_TYPES = frozenset({"LOCALIZER", "SCOUT", "TOPOGRAM"})
# Secondary Capture Image Storage and its multi-frame variants (1.2.840.10008.5.1.4.1.1.7.1 to .4): screen captures.
SECONDARY_CAPTURE_CLASS = "1.2.840.10008.5.1.4.1.1.7"
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"

TAGS = {
    "SOPClassUID": 0x00080016, "SOPInstanceUID": 0x00080018, "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E, "Modality": 0x00080060, "SeriesNumber": 0x00200011,
    "SeriesDescription": 0x0008103E, "InstanceNumber": 0x00200013, "Rows": 0x00280010, "Columns": 0x00280011,
    "NumberOfFrames": 0x00280008, "ImageType": 0x00080008, "FrameOfReferenceUID": 0x00200052,
    "ImagePositionPatient": 0x00200032, "ImageOrientationPatient": 0x00200037, "RescaleSlope": 0x00281053,
    "RescaleIntercept": 0x00281052, "PixelSpacing": 0x00280030, "SamplesPerPixel": 0x00280002,
    "BitsAllocated": 0x00280100, "PixelRepresentation": 0x00280103, "EchoNumbers": 0x00180086,
    "TriggerTime": 0x00181060, "TemporalPositionIdentifier": 0x00200100, "AcquisitionNumber": 0x00200012,
    "ReferencedSOPInstanceUID": 0x00081155, "GantryDetectorTilt": 0x00181120,
}
COLUMN = {name: column_name(tag) for name, tag in TAGS.items()}
# Tags whose values tell frames at one position apart (cine phases, echoes, dynamics).
PHASE_TAGS = ("TriggerTime", "EchoNumbers", "TemporalPositionIdentifier", "AcquisitionNumber")
_ENCAPSULATED_MIN = 8
PER_FRAME_PREFIX = "Per-Frame Functional Groups Sequence_"
SHARED_PREFIX = "Shared Functional Groups Sequence_"
PIXEL_MEASURES_PREFIX = "Pixel Measures Sequence_"
# Geometry values convert accepts: lengths (PixelSpacing, ImagePositionPatient) up to 1 km in magnitude, and
# ImageOrientationPatient row and column cosines of unit length (within UNIT_TOLERANCE) and orthogonal (|row .
# column| within ORTHOGONALITY_TOLERANCE, 0.057 degrees: real scanners write 1e-7 or less).
MAX_MM = 1e6
UNIT_TOLERANCE = 0.01
ORTHOGONALITY_TOLERANCE = 1e-3


@dataclass
class Slice:
    """Geometry of one frame: position (LPS mm), orientation cosines, rescale."""

    ipp: tuple[float, float, float]
    iop: tuple[float, ...]
    slope: float
    intercept: float
    scale_slope: float = 0.0  # Philips private MR Scale Slope (2005,100E); 0 when absent


@dataclass
class FileRecord:
    """One readable DICOM file: an image (``slices`` filled) or a non-image object (``references`` filled)."""

    path: str
    size: int
    kind: str  # "image" or "object"
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    modality: str
    series_number: str = ""
    series_description: str = ""
    frame_of_reference_uid: str = ""
    instance_number: int | None = None
    rows: int = 0
    columns: int = 0
    frames: int = 1
    transfer_syntax: str = ""
    pixel_offset: int = -1
    pixel_length: int = -1
    image_type: str = ""
    is_localizer: bool = False
    is_screen_capture: bool = False  # Secondary Capture SOP class: a picture of a screen, never part of a volume
    pixel_spacing: str = ""
    pixel_format: PixelFormat | None = None  # None when the header does not describe decodable pixels
    slope: float = 1.0  # top-level RescaleSlope / RescaleIntercept (per-frame values are in ``slices``)
    intercept: float = 0.0
    manufacturer: str = ""
    scale_slope: float = 0.0  # Philips private MR Scale Slope (2005,100E) / Intercept (2005,100D); 0 when absent
    scale_intercept: float = 0.0
    slices: list[Slice] = field(default_factory=list)
    phase: dict[str, str] = field(default_factory=dict)
    referenced_series_uids: list[str] = field(default_factory=list)
    referenced_instance_uids: list[str] = field(default_factory=list)
    mosaic: MosaicInfo | None = None  # Siemens MOSAIC: rows/columns/frames/slices are then the tiles'
    gantry_tilt: str = ""  # GantryDetectorTilt (0018,1120) as written (degrees), "" when absent


RECORD_FIELDS = tuple(f.name for f in fields(FileRecord))
_SLICES = RECORD_FIELDS.index("slices")
_PIXEL_FORMAT = RECORD_FIELDS.index("pixel_format")
_PIXEL_FORMAT_FIELDS = tuple(f.name for f in fields(PixelFormat))


def pack_record(record: FileRecord) -> tuple:
    """``record`` as a tuple of its field values, slices and pixel format as tuples too: unpickled in about a
    third of the time the dataclasses take (worker processes send many). :func:`unpack_record` gives back an
    equal record."""
    values = [getattr(record, name) for name in RECORD_FIELDS]
    values[_SLICES] = [(s.ipp, s.iop, s.slope, s.intercept, s.scale_slope) for s in record.slices]
    pixel_format = record.pixel_format
    if pixel_format is not None:
        values[_PIXEL_FORMAT] = tuple(getattr(pixel_format, name) for name in _PIXEL_FORMAT_FIELDS)
    return tuple(values)


def unpack_record(values: tuple) -> FileRecord:
    """The record :func:`pack_record` packed."""
    values = list(values)
    values[_SLICES] = [Slice(*s) for s in values[_SLICES]]
    if values[_PIXEL_FORMAT] is not None:
        values[_PIXEL_FORMAT] = PixelFormat(*values[_PIXEL_FORMAT])
    return FileRecord(*values)


def cell_values(text: str) -> list[str]:
    """The values of a flattened cell: one, or several for a ``DUPLICATE TAGS IN DICOM:`` cell."""
    if text.startswith(DUPLICATE_PREFIX):
        return text[len(DUPLICATE_PREFIX):].split("/")
    return [text]


def _floats(path: str, name: str, text: str, count: int) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split("\\"))
    except ValueError:
        raise BadTagValueError(path, f"{name} {_tag_text(name)}", text, "not numbers") from None
    if len(values) != count:
        raise BadTagValueError(path, f"{name} {_tag_text(name)}", text, f"expected {count} values")
    return values


def _tag_text(name: str) -> str:
    tag = TAGS[name]
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _int(path: str, row: dict[str, str], name: str, default: int | None = None) -> int | None:
    text = row.get(COLUMN[name], "")
    if not text:
        return default
    try:
        return int(float(text.split("\\")[0]))
    except ValueError:
        raise BadTagValueError(path, f"{name} {_tag_text(name)}", text, "not an integer") from None


def _float(path: str, row: dict[str, str], name: str, default: float) -> float:
    text = row.get(COLUMN[name], "")
    if not text:
        return default
    try:
        return float(text.split("\\")[0])
    except ValueError:
        raise BadTagValueError(path, f"{name} {_tag_text(name)}", text, "not a number") from None


def _media_sop_class(header: Header) -> str:
    return header.row.get(column_name(0x00020002), "")


def is_object(row: dict[str, str], header: Header) -> bool:
    """True for non-image objects (RTSTRUCT, SEG, SR, DICOMDIR, ...)."""
    modality = row.get(COLUMN["Modality"], "").upper()
    if modality in OBJECT_MODALITIES:
        return True
    if (row.get(COLUMN["SOPClassUID"]) or _media_sop_class(header)) == DICOMDIR_CLASS:
        return True
    return header.pixel is None and COLUMN["Rows"] not in row and not modality


def is_secondary_capture(sop_class_uid: str) -> bool:
    """True for the Secondary Capture Image Storage SOP classes (single- and multi-frame)."""
    return sop_class_uid == SECONDARY_CAPTURE_CLASS or sop_class_uid.startswith(SECONDARY_CAPTURE_CLASS + ".")


def is_derived_secondary(image_type: str) -> bool:
    """True when ImageType (0008,0008) starts ``DERIVED\\SECONDARY``."""
    return [v.strip().upper() for v in image_type.split("\\")[:2]] == ["DERIVED", "SECONDARY"]


def make_record(header: Header, require_geometry: bool = True) -> FileRecord:
    """Build the record of a header from its flattened row.

    Raises DicomReadError (MissingTagError, BadTagValueError) when an image cannot become a volume; with
    ``require_geometry=False`` an image without ImagePositionPatient/ImageOrientationPatient gets a record
    with no ``slices`` (2-D use) instead of NoGeometryError.
    """
    row = header.row
    record = FileRecord(
        path=header.path,
        size=header.size,
        kind="object" if is_object(row, header) else "image",
        sop_class_uid=row.get(COLUMN["SOPClassUID"]) or _media_sop_class(header),
        sop_instance_uid=row.get(COLUMN["SOPInstanceUID"], ""),
        study_uid=row.get(COLUMN["StudyInstanceUID"], ""),
        series_uid=row.get(COLUMN["SeriesInstanceUID"], ""),
        modality=row.get(COLUMN["Modality"], ""),
        series_number=row.get(COLUMN["SeriesNumber"], ""),
        series_description=row.get(COLUMN["SeriesDescription"], ""),
        frame_of_reference_uid=row.get(COLUMN["FrameOfReferenceUID"], ""),
        transfer_syntax=header.transfer_syntax,
    )
    if record.kind == "object":
        _add_references(row, record)
    else:
        _fill_image(header, row, record, require_geometry)
    return record


def _add_references(row: dict[str, str], record: FileRecord) -> None:
    """Referenced series and instances: every SeriesInstanceUID / ReferencedSOPInstanceUID nested in a sequence."""
    nested_series = "_" + COLUMN["SeriesInstanceUID"]
    nested_instance = "_" + COLUMN["ReferencedSOPInstanceUID"]
    series: dict[str, None] = {}
    instances: dict[str, None] = {}
    for key, text in row.items():
        if key.endswith(nested_series):
            series.update(dict.fromkeys(v for v in cell_values(text) if v))
        elif key.endswith(nested_instance) or key == COLUMN["ReferencedSOPInstanceUID"]:
            instances.update(dict.fromkeys(v for v in cell_values(text) if v))
    series.pop(record.series_uid, None)
    record.referenced_series_uids = list(series)
    record.referenced_instance_uids = list(instances)


def _fill_image(header: Header, row: dict[str, str], record: FileRecord, require_geometry: bool) -> None:
    path = header.path
    missing = [f"{name} {_tag_text(name)}" for name in ("SeriesInstanceUID", "Rows", "Columns")
               if not row.get(COLUMN[name])]
    if header.pixel is None:
        missing.append("PixelData (7FE0,0010)")
    if missing:
        raise MissingTagError(path, missing)
    record.rows = _int(path, row, "Rows") or 0
    record.columns = _int(path, row, "Columns") or 0
    if record.rows <= 0 or record.columns <= 0:
        raise BadTagValueError(path, "Rows/Columns (0028,0010)/(0028,0011)",
                               f"{record.rows}x{record.columns}", "image size must be positive")
    record.frames = _int(path, row, "NumberOfFrames", 1) or 1
    record.instance_number = _int(path, row, "InstanceNumber")
    record.image_type = row.get(COLUMN["ImageType"], "")
    record.is_localizer = bool(LOCALIZER_TYPES.intersection(record.image_type.upper().split("\\")))
    record.is_screen_capture = is_secondary_capture(record.sop_class_uid)
    record.pixel_spacing = _pixel_spacing_text(row)
    record.phase = {name: row[COLUMN[name]] for name in PHASE_TAGS if row.get(COLUMN[name])}
    record.manufacturer = row.get(column_name(MANUFACTURER_TAG), "")
    record.scale_slope, record.scale_intercept = scale_tags(row)
    record.gantry_tilt = cell_values(row.get(COLUMN["GantryDetectorTilt"], ""))[0].strip()
    _check_pixel_length(header, row, record)
    try:
        record.pixel_format = PixelFormat.from_row(row, pixel_transfer_syntax(header), path)
    except DicomReadError:
        record.pixel_format = None  # convert reads the header again and reports the reason
    if record.frames > 1 and any(key.startswith(PER_FRAME_PREFIX) for key in row):
        record.slices = _enhanced_slices(header.dataset(), path, record.frames, record.scale_slope)
        return
    record.slope = _float(path, row, "RescaleSlope", 1.0)
    record.intercept = _float(path, row, "RescaleIntercept", 0.0)
    missing = [f"{name} {_tag_text(name)}" for name in ("ImagePositionPatient", "ImageOrientationPatient")
               if not row.get(COLUMN[name])]
    if missing:
        if require_geometry:
            raise NoGeometryError(path, missing)
        return
    ipp = _floats(path, "ImagePositionPatient", row[COLUMN["ImagePositionPatient"]], 3)
    iop = _floats(path, "ImageOrientationPatient", row[COLUMN["ImageOrientationPatient"]], 6)
    _check_orientation(path, iop)
    record.slices = [Slice(ipp, iop, record.slope, record.intercept, record.scale_slope)] * record.frames
    if record.frames == 1 and is_mosaic(record.image_type):
        _unpack_mosaic(path, row, record, ipp, iop)


def pixel_spacing_mm(record: FileRecord) -> tuple[tuple[float, float], str]:
    """(row spacing, column spacing) in mm and where it came from; 1 mm, said so, when PixelSpacing is absent."""
    text = record.pixel_spacing
    if not text:
        return (1.0, 1.0), "default 1 mm: PixelSpacing (0028,0030) absent"
    try:
        values = [float(v) for v in text.split("\\")[:2]]
    except ValueError:
        raise BadTagValueError(record.path, "PixelSpacing (0028,0030)", text, "not numbers") from None
    if len(values) == 1:
        values.append(values[0])
    if not all(math.isfinite(v) for v in values):
        raise BadTagValueError(record.path, "PixelSpacing (0028,0030)", text, "spacing must be a finite number")
    if min(values) <= 0:
        raise BadTagValueError(record.path, "PixelSpacing (0028,0030)", text, "spacing must be positive")
    if max(values) > MAX_MM:
        raise BadTagValueError(record.path, "PixelSpacing (0028,0030)", text,
                               f"spacing above {MAX_MM:g} mm is not an image's")
    return (values[0], values[1]), "PixelSpacing (0028,0030)"


def pixel_transfer_syntax(header: Header) -> str:
    """The transfer syntax the pixel data of ``header`` is encoded in: the file meta's, or for a file without
    file meta the encoding its first data element shows (as pydicom's ``force=True`` reading guesses it)."""
    if header.transfer_syntax:
        return header.transfer_syntax
    try:
        with open(header.path, "rb") as fp:
            data = fp.read(140)
    except OSError:
        return ""
    pos = 132 if data[128:132] == b"DICM" else 0
    if len(data) < pos + 8 or struct.unpack_from("<H", data, pos)[0] == 0x0002:
        return ""  # file meta without a transfer syntax: nothing to go by
    implicit = data[pos + 4:pos + 6].decode("latin-1") not in VALID_VRS
    little = struct.unpack_from("<H", data, pos)[0] in (0x0008, 0x0004, 0x0010)
    if implicit:
        return IMPLICIT_LE if little else ""
    return EXPLICIT_LE if little else EXPLICIT_BE


def _values_text(values: Sequence[float]) -> str:
    return "\\".join(f"{v:g}" for v in values)


def check_geometry(paths: Sequence[str], slices: Sequence[Slice]) -> None:
    """Refuse geometry no volume can have: ImagePositionPatient not finite or beyond ``MAX_MM``,
    ImageOrientationPatient not finite, not unit vectors or not orthogonal (``ORTHOGONALITY_TOLERANCE``).
    ``slices[i]`` comes from the file ``paths[i]``; checked together (numpy), once per series.

    Raises:
        BadTagValueError: Naming the first offending file, the tag and its values.
    """
    ipps = np.array([s.ipp for s in slices], dtype=np.float64).reshape(-1, 3)
    iops = np.array([s.iop for s in slices], dtype=np.float64).reshape(-1, 6)
    with np.errstate(invalid="ignore", over="ignore"):
        bad = ~np.all(np.isfinite(ipps) & (np.abs(ipps) <= MAX_MM), axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            why = "not a finite number" if not np.all(np.isfinite(ipps[i])) else f"beyond {MAX_MM:g} mm"
            raise BadTagValueError(paths[i], "ImagePositionPatient (0020,0032)", _values_text(ipps[i]),
                                   f"a position is {why}")
        row, column = iops[:, :3], iops[:, 3:]
        finite = np.all(np.isfinite(iops), axis=1)
        unit = (np.abs(np.linalg.norm(row, axis=1) - 1) <= UNIT_TOLERANCE) & \
            (np.abs(np.linalg.norm(column, axis=1) - 1) <= UNIT_TOLERANCE)
        dot = np.abs(np.sum(row * column, axis=1))
        orthogonal = dot <= ORTHOGONALITY_TOLERANCE
    bad = ~(finite & unit & orthogonal)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        if not finite[i]:
            why = "direction cosines are not finite numbers"
        elif not unit[i]:
            why = "direction cosines are not unit vectors"
        else:
            why = (f"row and column directions are not orthogonal (|row . column| = {dot[i]:.3g}, more than "
                   f"{ORTHOGONALITY_TOLERANCE:g})")
        raise BadTagValueError(paths[i], "ImageOrientationPatient (0020,0037)", _values_text(iops[i]), why)


def _unpack_mosaic(path: str, row: dict[str, str], record: FileRecord, ipp: tuple[float, float, float],
                   iop: tuple[float, ...]) -> None:
    """Make a MOSAIC file's record describe its tiles: one slice (frame) per tile, tile rows and columns."""
    info = mosaic_info(path, row, record.rows, record.columns, iop)
    spacing = list(pixel_spacing_mm(record)[0])
    record.mosaic = info
    record.rows, record.columns, record.frames = info.tile_rows, info.tile_columns, info.n_images
    record.slices = [Slice(p, iop, record.slope, record.intercept, record.scale_slope)
                     for p in tile_positions(info, ipp, iop, spacing)]


def _pixel_spacing_text(row: dict[str, str]) -> str:
    """PixelSpacing: top level, else from the shared / per-frame Pixel Measures functional group (first value)."""
    for prefix in ("", SHARED_PREFIX + PIXEL_MEASURES_PREFIX, PER_FRAME_PREFIX + PIXEL_MEASURES_PREFIX):
        text = row.get(prefix + COLUMN["PixelSpacing"], "")
        if text:
            return cell_values(text)[0]
    return ""


def _check_orientation(path: str, iop: tuple[float, ...]) -> None:
    row_norm = sum(v * v for v in iop[:3]) ** 0.5
    col_norm = sum(v * v for v in iop[3:]) ** 0.5
    if abs(row_norm - 1) > 0.01 or abs(col_norm - 1) > 0.01:
        raise BadTagValueError(path, "ImageOrientationPatient (0020,0037)", "\\".join(map(str, iop)),
                               "direction cosines are not unit vectors")


def _check_pixel_length(header: Header, row: dict[str, str], record: FileRecord) -> None:
    """Detect truncated pixel data from the declared and available lengths."""
    pixel = header.pixel
    assert pixel is not None
    record.pixel_offset = pixel.value_offset
    record.pixel_length = pixel.value_length
    path = header.path
    if pixel.value_offset < 0:  # read by pydicom from a deflated file: no offset to check
        return
    if pixel.value_length < 0:
        if pixel.available < _ENCAPSULATED_MIN:
            raise DicomReadError(path, f"truncated: encapsulated PixelData (7FE0,0010) has only "
                                       f"{pixel.available} bytes")
        if record.frames > pixel.available // _ENCAPSULATED_MIN:  # each frame needs an item (8-byte header)
            raise BadTagValueError(path, f"NumberOfFrames {_tag_text('NumberOfFrames')}", record.frames,
                                   f"the encapsulated PixelData (7FE0,0010) of {pixel.available} bytes holds at "
                                   f"most {pixel.available // _ENCAPSULATED_MIN} items")
        return
    if pixel.available < pixel.value_length:
        raise DicomReadError(path, f"truncated: PixelData (7FE0,0010) declares {pixel.value_length} bytes, "
                                   f"the file holds {pixel.available}")
    samples = _int(path, row, "SamplesPerPixel", 1) or 1
    bits = _int(path, row, "BitsAllocated", 16) or 16
    total_bits = record.rows * record.columns * samples * record.frames * bits
    expected = (total_bits + 7) // 8
    native = not record.transfer_syntax or record.transfer_syntax in NATIVE_SYNTAXES
    if native and pixel.value_length < expected:
        raise DicomReadError(path, f"truncated: PixelData (7FE0,0010) holds {pixel.value_length} bytes, "
                                   f"Rows x Columns x SamplesPerPixel x NumberOfFrames x BitsAllocated needs "
                                   f"{expected}")


def _enhanced_slices(ds: Dataset, path: str, frames: int, scale_slope: float = 0.0) -> list[Slice]:
    """Per-frame geometry and rescale from the shared and per-frame functional groups (``scale_slope``: the
    file's Philips MR Scale Slope, used for frames that carry none of their own)."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared_item = shared[0] if shared else Dataset()
    per_frame = ds.PerFrameFunctionalGroupsSequence
    if len(per_frame) != frames:
        raise BadTagValueError(path, "PerFrameFunctionalGroupsSequence (5200,9230)", f"{len(per_frame)} items",
                               f"NumberOfFrames is {frames}")
    slices = []
    for index, item in enumerate(per_frame):
        def pick(sequence: str, attribute: str, item: Dataset = item):
            for source in (item, shared_item):
                seq = source.get(sequence)
                if seq and attribute in seq[0]:
                    return seq[0].get(attribute)
            return None

        ipp = pick("PlanePositionSequence", "ImagePositionPatient")
        iop = pick("PlaneOrientationSequence", "ImageOrientationPatient")
        if ipp is None or iop is None:
            missing = "ImagePositionPatient (0020,0032)" if ipp is None else "ImageOrientationPatient (0020,0037)"
            raise MissingTagError(path, [f"{missing} in functional groups of frame {index + 1}"])
        if len(ipp) != 3 or len(iop) != 6:
            raise BadTagValueError(path, "functional group plane position/orientation", f"{ipp} / {iop}",
                                   f"frame {index + 1} needs 3 position and 6 orientation values")
        slope = pick("PixelValueTransformationSequence", "RescaleSlope")
        intercept = pick("PixelValueTransformationSequence", "RescaleIntercept")
        iop_t = tuple(float(v) for v in iop)
        _check_orientation(path, iop_t)
        slices.append(Slice(tuple(float(v) for v in ipp), iop_t,
                            1.0 if slope is None else float(slope), 0.0 if intercept is None else float(intercept),
                            enhanced_scale_slope(item, scale_slope)))
    return slices
