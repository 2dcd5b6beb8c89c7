"""The BIDS sidecar fields of a series, read from one DICOM header, named and scaled as dcm2niix writes them.

Only fields the header holds are returned (an absent or empty tag gives no key). Times are converted to BIDS
units: EchoTime, RepetitionTime and InversionTime are milliseconds in DICOM and seconds in the sidecar.
Multi-valued strings follow dcm2niix: ImageType is a list, ScanningSequence / SequenceVariant / ScanOptions keep
DICOM's backslash between values (``SK\\SP``, as dcm2niix v1.0.2026 writes them). Enhanced (multi-frame) files hold
most acquisition tags in their functional groups; those are looked up in the shared groups, then in the first
frame's groups.

Differences from dcm2niix, on purpose: the Manufacturer is the tag's text as stored (dcm2niix normalises it, e.g.
``SIEMENS`` → ``Siemens``); no vendor-private fields (CSA, Philips, GE private tags), no SliceTiming, no
phase-encoding fields; no institution, station or device identifiers.
"""
from __future__ import annotations

from collections.abc import Callable

import pydicom
from pydicom.dataset import Dataset

MS_TO_S = 0.001


def _number(value) -> float | int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


def _seconds(value) -> float | None:
    number = _number(value)
    return None if number is None else round(float(number) * MS_TO_S, 9)


def _text(value) -> str | None:
    text = "\\".join(str(v) for v in value) if _is_multi(value) else str(value)
    return text.strip() or None


def _strings(value) -> list[str] | None:
    parts = [str(v).strip() for v in value] if _is_multi(value) else str(value).split("\\")
    return [p for p in parts if p] or None


def _numbers(value) -> list[float] | None:
    values = [_number(v) for v in (value if _is_multi(value) else [value])]
    return None if not values or any(v is None for v in values) else values


def _integer(value) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def _time(value) -> str | None:
    """DICOM TM ``HHMMSS.ffffff`` as ``HH:MM:SS.ffffff`` (dcm2niix's AcquisitionTime)."""
    text = str(value).strip()
    if len(text) < 6 or not text[:6].isdigit():
        return text or None
    fraction = text[7:] if len(text) > 7 and text[6] == "." else ""
    return f"{text[0:2]}:{text[2:4]}:{text[4:6]}" + (f".{fraction.ljust(6, '0')}" if fraction else "")


def _is_multi(value) -> bool:
    return isinstance(value, (list, tuple, pydicom.multival.MultiValue))


# (BIDS key, DICOM keyword, conversion), in dcm2niix's order
FIELDS: list[tuple[str, str, Callable]] = [
    ("Modality", "Modality", _text),
    ("MagneticFieldStrength", "MagneticFieldStrength", _number),
    ("ImagingFrequency", "ImagingFrequency", _number),
    ("Manufacturer", "Manufacturer", _text),
    ("ManufacturersModelName", "ManufacturerModelName", _text),
    ("BodyPart", "BodyPartExamined", _text),
    ("PatientPosition", "PatientPosition", _text),
    ("SoftwareVersions", "SoftwareVersions", _text),
    ("MRAcquisitionType", "MRAcquisitionType", _text),
    ("StudyDescription", "StudyDescription", _text),
    ("SeriesDescription", "SeriesDescription", _text),
    ("ProtocolName", "ProtocolName", _text),
    ("ScanningSequence", "ScanningSequence", _text),
    ("SequenceVariant", "SequenceVariant", _text),
    ("ScanOptions", "ScanOptions", _text),
    ("SequenceName", "SequenceName", _text),
    ("ImageType", "ImageType", _strings),
    ("SeriesNumber", "SeriesNumber", _integer),
    ("AcquisitionTime", "AcquisitionTime", _time),
    ("AcquisitionNumber", "AcquisitionNumber", _integer),
    ("SliceThickness", "SliceThickness", _number),
    ("SpacingBetweenSlices", "SpacingBetweenSlices", _number),
    ("EchoTime", "EchoTime", _seconds),
    ("RepetitionTime", "RepetitionTime", _seconds),
    ("InversionTime", "InversionTime", _seconds),
    ("FlipAngle", "FlipAngle", _number),
    ("ConvolutionKernel", "ConvolutionKernel", _text),
    ("ImageOrientationPatientDICOM", "ImageOrientationPatient", _numbers),
]
# enhanced multi-frame files: keywords of the functional groups that stand for a top-level keyword
ENHANCED_KEYWORDS = {"EchoTime": "EffectiveEchoTime"}


def _find(ds: Dataset, keyword: str):
    """The value of ``keyword`` at the top level, else in the functional groups (shared, then first frame)."""
    value = ds.get(keyword)
    if value not in (None, ""):
        return value
    wanted = (keyword, ENHANCED_KEYWORDS.get(keyword, keyword))
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        sequence = ds.get(groups)
        if not sequence:
            continue
        for macro in sequence[0]:
            if macro.VR != "SQ" or not macro.value:
                continue
            for name in wanted:
                value = macro.value[0].get(name)
                if value not in (None, ""):
                    return value
    return None


def bids_sidecar(ds: Dataset) -> dict:
    """The BIDS fields of ``ds`` (a pydicom dataset, pixel data not needed) as dcm2niix names them; times in
    seconds, lengths in mm, angles in degrees."""
    sidecar: dict = {}
    for key, keyword, convert in FIELDS:
        value = _find(ds, keyword)
        if value in (None, ""):
            continue
        converted = convert(value)
        if converted is not None:
            sidecar[key] = converted
    return sidecar


def read_bids_sidecar(path: str) -> dict:
    """:func:`bids_sidecar` of the DICOM file at ``path`` (read without its pixel data)."""
    return bids_sidecar(pydicom.dcmread(path, stop_before_pixels=True, force=True))
