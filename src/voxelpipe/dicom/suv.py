"""Body-weight SUV factors from PET headers, following the QIBA vendor-neutral SUV pseudo-code.

For the datasets of one PET series, :func:`suv_factors` returns one factor per dataset (in the order given) and an
audit record of where every number came from. The SUV of a slice is

    SUVbw = (stored × RescaleSlope + RescaleIntercept of that slice) × factors[i]

Branches (Units (0054,1001), Decay Correction (0054,1102)):

- ``BQML`` + ``START``: the images are decay corrected to the scan start, so the injected dose is decayed to that
  time: ``factor = weight_g / (dose × 2^(−Δt / T½))``, Δt = reference time − injection time. The reference time
  (QIBA): Series Date/Time (0008,0021/0031) when it is not after the earliest Acquisition Date/Time (0008,0022/0032)
  of the series; otherwise the series may be post-processed and the GE private scan date/time (0009,100D,
  creator ``GEMS_PETD_01``) is used, or, without it, the earliest Acquisition Date/Time.
- ``BQML`` + ``ADMIN``: decay corrected to the injection already: ``factor = weight_g / dose``.
- ``BQML`` + ``NONE``: not decay corrected: every slice's dose is decayed to its own Acquisition Date/Time, so the
  factors differ per slice.
- ``CNTS`` (Philips): the private SUV scale factor (7053,1000) is the factor; without it, the activity
  concentration scale factor (7053,1009) turns the rescaled values into Bq/ml and the BQML formula follows.
- ``GML``: the values are SUVbw already: factor 1.
- anything else, or a missing / unusable input: a :class:`SuvError` naming the file, the tag and the value.

Injection time: Radiopharmaceutical Start DateTime (0018,1078) when present; otherwise Series Date +
Radiopharmaceutical Start Time (0018,1072). The date is then only assumed, so an injection that seems to come after
the reference time by less than a day while the previous day gives an uptake of at most 12 h is taken as an
injection before midnight (the audit says so).
"""
from __future__ import annotations

import datetime as dt
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from voxelpipe.core.errors import BadTagValueError, DicomReadError, MissingTagError

# tags as they are named in messages and in the audit record
T_UNITS = "Units (0054,1001)"
T_DECAY = "DecayCorrection (0054,1102)"
T_WEIGHT = "PatientWeight (0010,1030)"
T_RADIO_SEQ = "RadiopharmaceuticalInformationSequence (0054,0016)"
T_DOSE = "RadionuclideTotalDose (0018,1074)"
T_HALF_LIFE = "RadionuclideHalfLife (0018,1075)"
T_START_DT = "RadiopharmaceuticalStartDateTime (0018,1078)"
T_START_TIME = "RadiopharmaceuticalStartTime (0018,1072)"
T_SERIES_DATE = "SeriesDate (0008,0021)"
T_SERIES_TIME = "SeriesTime (0008,0031)"
T_ACQ_DATE = "AcquisitionDate (0008,0022)"
T_ACQ_TIME = "AcquisitionTime (0008,0032)"
T_GE_SCAN = "GE private scan DateTime (0009,100D, GEMS_PETD_01)"
T_PHILIPS_SUV = "Philips SUV scale factor (7053,1000)"
T_PHILIPS_ACT = "Philips activity concentration scale factor (7053,1009)"

PHILIPS_CREATOR = "Philips PET Private Group"
GE_CREATOR = "GEMS_PETD_01"
MIDNIGHT_LIMIT_S = 12 * 3600.0  # a previous-day injection is accepted only with an uptake up to this


class SuvError(DicomReadError):
    """No SUV factor can be computed from these headers."""


class SuvMissingTagError(SuvError, MissingTagError):
    """A tag the SUV factor needs is absent or empty."""

    def __init__(self, path: str | os.PathLike, tags: list[str], why: str = ""):
        self.tags = list(tags)
        reason = "missing tag(s) needed for the SUV factor: " + ", ".join(self.tags)
        DicomReadError.__init__(self, path, reason + (f" ({why})" if why else ""))


class SuvTagValueError(SuvError, BadTagValueError):
    """A tag the SUV factor needs holds an unusable value."""

    def __init__(self, path: str | os.PathLike, tag: str, value: object, why: str):
        BadTagValueError.__init__(self, path, tag, value, why)


class UnsupportedUnitsError(SuvTagValueError):
    """Units (or Units with Decay Correction) for which no body-weight SUV factor is defined."""


class NegativeUptakeError(SuvTagValueError):
    """The reference (scan) time comes before the injection time."""


@dataclass
class SuvResult:
    factors: np.ndarray  # float64, one per input dataset/file, in the order given
    audit: dict  # JSON-ready


# ----------------------------------------------------------------------------------------------------------
# small readers
# ----------------------------------------------------------------------------------------------------------
def _where(ds: Dataset, path: str) -> str:
    return path or str(getattr(ds, "filename", "") or "") or "<dataset>"


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def _positive_number(text: str, tag: str, where: str) -> float:
    """``text`` as a finite positive float, else SuvTagValueError naming ``tag``."""
    try:
        value = float(text)
    except ValueError:
        raise SuvTagValueError(where, tag, text, "not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise SuvTagValueError(where, tag, text, "must be a positive number")
    return value


def _positive(ds: Dataset, keyword: str, tag: str, where: str, required_for: str) -> float:
    text = _text(ds, keyword)
    if not text:
        raise SuvMissingTagError(where, [tag], required_for)
    return _positive_number(text, tag, where)


_TM = re.compile(r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?$")
_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_DT = re.compile(r"^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?$")


def parse_date(text: str, tag: str, where: str) -> dt.date:
    match = _DA.match(text.replace(".", "").strip())
    if not match:
        raise SuvTagValueError(where, tag, text, "not a DICOM date YYYYMMDD")
    try:
        return dt.date(*(int(g) for g in match.groups()))
    except ValueError:
        raise SuvTagValueError(where, tag, text, "not a valid date") from None


def parse_time(text: str, tag: str, where: str) -> dt.time:
    match = _TM.match(text.strip())
    if not match:
        raise SuvTagValueError(where, tag, text, "not a DICOM time HHMMSS.FFFFFF")
    hh, mm, ss, frac = match.groups()
    try:
        return dt.time(int(hh), int(mm or 0), min(int(ss or 0), 59), int((frac or "0").ljust(6, "0")))
    except ValueError:
        raise SuvTagValueError(where, tag, text, "not a valid time") from None


def parse_datetime(text: str, tag: str, where: str) -> dt.datetime:
    """A DICOM DT value as a naive local datetime (a UTC offset suffix, if any, is dropped like the other times'
    implicit zone)."""
    match = _DT.match(text.strip())
    if not match:
        raise SuvTagValueError(where, tag, text, "not a DICOM date-time YYYYMMDDHHMMSS.FFFFFF")
    y, mo, d, hh, mm, ss, frac, _offset = match.groups()
    try:
        return dt.datetime(int(y), int(mo), int(d), int(hh), int(mm or 0), min(int(ss or 0), 59),
                           int((frac or "0").ljust(6, "0")))
    except ValueError:
        raise SuvTagValueError(where, tag, text, "not a valid date-time") from None


def _date_time(ds: Dataset, date_kw: str, time_kw: str, date_tag: str, time_tag: str, where: str,
               default_date: dt.date | None = None) -> dt.datetime | None:
    """Date + time of two tags; None when the time is absent; the date may default."""
    time_text = _text(ds, time_kw)
    if not time_text:
        return None
    date_text = _text(ds, date_kw)
    if date_text:
        day = parse_date(date_text, date_tag, where)
    elif default_date is not None:
        day = default_date
    else:
        raise SuvMissingTagError(where, [date_tag])
    return dt.datetime.combine(day, parse_time(time_text, time_tag, where))


def _private(ds: Dataset, group: int, creator: str, offset: int):
    """The value of private element (group, creator block, offset), or None."""
    try:
        block = ds.private_block(group, creator)
        return block[offset].value
    except (KeyError, ValueError):
        return None


def _private_float(ds: Dataset, group: int, creator: str, offset: int, tag: str, where: str) -> float | None:
    """A private numeric value (also when stored as UN bytes / a string), or None when absent or empty."""
    value = _private(ds, group, creator, offset)
    if value is None:
        # without the creator element some writers still put the value in block 0x10
        element = ds.get((group, 0x1000 | offset))
        value = element.value if element is not None else None
    if value is None:
        return None
    if isinstance(value, bytes):  # UN (implicit VR without a private dictionary entry)
        if not value.strip(b"0123456789.+-eE \x00"):
            value = value.decode("ascii")  # DS text
        elif len(value) == 8:
            value = float(np.frombuffer(value, "<f8")[0])  # FD
        elif len(value) == 4:
            value = float(np.frombuffer(value, "<f4")[0])  # FL
        else:
            value = value.decode("ascii", "replace")
    if isinstance(value, (list, pydicom.multival.MultiValue)):
        value = value[0] if len(value) else None
        if value is None:
            return None
    text = str(value).strip().strip("\x00")
    if not text:
        return None
    return _positive_number(text, tag, where)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# ----------------------------------------------------------------------------------------------------------
# the factor
# ----------------------------------------------------------------------------------------------------------
def _series_value(datasets: Sequence[Dataset], keyword: str, tag: str, path: str) -> str:
    """A tag that must be the same on every dataset of the series (upper-cased text)."""
    values = {}
    for ds in datasets:
        values.setdefault(_text(ds, keyword).upper(), _where(ds, path))
    if len(values) > 1:
        (first, _), (other, where) = list(values.items())[:2]
        raise SuvTagValueError(where, tag, other, f"differs within the series (also {first!r})")
    return next(iter(values))


def _radiopharmaceutical(ds: Dataset, where: str) -> Dataset:
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    if not seq:
        raise SuvMissingTagError(where, [T_RADIO_SEQ])
    return seq[0]


def _injection(ds: Dataset, item: Dataset, where: str) -> tuple[dt.datetime, str, bool]:
    """(injection datetime, source tag(s), date assumed from SeriesDate)."""
    text = _text(item, "RadiopharmaceuticalStartDateTime")
    if text:
        return parse_datetime(text, T_START_DT, where), T_START_DT, False
    time_text = _text(item, "RadiopharmaceuticalStartTime")
    if not time_text:
        raise SuvMissingTagError(where, [f"{T_START_DT} or {T_START_TIME}"], "no injection time")
    date_text = _text(ds, "SeriesDate")
    if not date_text:
        raise SuvMissingTagError(where, [T_SERIES_DATE], f"the date of {T_START_TIME}")
    injection = dt.datetime.combine(parse_date(date_text, T_SERIES_DATE, where),
                                    parse_time(time_text, T_START_TIME, where))
    return injection, f"{T_SERIES_DATE} + {T_START_TIME}", True


def _uptake(injection: dt.datetime, reference: dt.datetime, assumed_date: bool, injection_tag: str,
            injection_text: str, where: str) -> tuple[float, dt.datetime, bool]:
    """Seconds from injection to reference; (seconds, injection used, moved back a day over midnight)."""
    seconds = (reference - injection).total_seconds()
    if seconds >= 0:
        return seconds, injection, False
    if assumed_date and seconds > -86400:
        earlier = injection - dt.timedelta(days=1)
        moved = (reference - earlier).total_seconds()
        if 0 <= moved <= MIDNIGHT_LIMIT_S:
            return moved, earlier, True
    raise NegativeUptakeError(where, injection_tag, injection_text,
                              f"injection at {injection.isoformat()} is {-seconds:.0f} s after the reference time "
                              f"{reference.isoformat()} (negative uptake time)")


def suv_factors(datasets: Sequence[Dataset], path: str = "") -> SuvResult:
    """Body-weight SUV factors of the datasets of ONE PET series (order kept) and the audit record.

    ``path`` names the series in error messages (default: each dataset's file name)."""
    datasets = list(datasets)
    if not datasets:
        raise SuvMissingTagError(path or "<no datasets>", ["(no PET datasets given)"])
    first = datasets[0]
    where = _where(first, path)
    n = len(datasets)
    units = _series_value(datasets, "Units", T_UNITS, path)
    decay = _series_value(datasets, "DecayCorrection", T_DECAY, path)
    audit: dict = {
        "series_instance_uid": _text(first, "SeriesInstanceUID"),
        "manufacturer": _text(first, "Manufacturer"),
        "units": units,
        "decay_correction": decay,
        "corrected_image": _text(first, "CorrectedImage"),
        "method": None,
        "injection_time": None, "injection_time_source": None,
        "reference_time": None, "reference_time_source": None,
        "uptake_seconds": None,
        "injected_dose_bq": None, "injected_dose_tag": None,
        "decayed_dose_bq": None,
        "half_life_s": None, "half_life_tag": None,
        "weight_kg": None, "weight_tag": None,
        "radionuclide": None,
        "activity_scale": None, "activity_scale_tag": None,
        "factor": None, "factor_min": None, "factor_max": None,
        "n_slices": n,
    }
    if not units:
        raise SuvMissingTagError(where, [T_UNITS])
    corrections = set(audit["corrected_image"].upper().split("\\")) if audit["corrected_image"] else set()
    notes = []
    if corrections and "ATTN" not in corrections:
        notes.append("CorrectedImage (0028,0051) lacks ATTN: not attenuation corrected, SUV not quantitative")
    if corrections and decay in ("START", "ADMIN") and "DECY" not in corrections:
        notes.append(f"CorrectedImage (0028,0051) lacks DECY although DecayCorrection is {decay}")
    audit["notes"] = notes

    if units == "GML":
        factors = np.ones(n, dtype=np.float64)
        audit["method"] = "GML: values are SUVbw already (factor 1)"
        return _finish(factors, audit)

    activity_scale = np.ones(n, dtype=np.float64)
    if units == "CNTS":
        suv_scale = [_private_float(ds, 0x7053, PHILIPS_CREATOR, 0x00, T_PHILIPS_SUV, _where(ds, path))
                     for ds in datasets]
        if all(v is not None for v in suv_scale):
            factors = np.asarray(suv_scale, dtype=np.float64)
            audit["method"] = f"CNTS: Philips private SUV scale factor {T_PHILIPS_SUV}"
            audit["activity_scale_tag"] = T_PHILIPS_SUV
            weight = _text(first, "PatientWeight")
            audit["weight_kg"] = float(weight) if _is_number(weight) else None
            audit["weight_tag"] = T_WEIGHT
            return _finish(factors, audit)
        act_scale = [_private_float(ds, 0x7053, PHILIPS_CREATOR, 0x09, T_PHILIPS_ACT, _where(ds, path))
                     for ds in datasets]
        if not all(v is not None for v in act_scale):
            missing = next(i for i, v in enumerate(act_scale) if v is None)
            raise UnsupportedUnitsError(_where(datasets[missing], path), T_UNITS, units,
                                        f"CNTS needs the Philips private {T_PHILIPS_SUV} or {T_PHILIPS_ACT} "
                                        f"(creator {PHILIPS_CREATOR!r}); neither is present")
        activity_scale = np.asarray(act_scale, dtype=np.float64)
        audit["activity_scale"] = _finish_values(activity_scale)
        audit["activity_scale_tag"] = T_PHILIPS_ACT
        method_prefix = f"CNTS × {T_PHILIPS_ACT} → BQML, then "
    elif units == "BQML":
        method_prefix = ""
    else:
        raise UnsupportedUnitsError(where, T_UNITS, units, "no body-weight SUV for these units (supported: BQML, "
                                    "CNTS with the Philips private scale factors, GML)")

    if decay not in ("START", "ADMIN", "NONE"):
        if not decay:
            raise SuvMissingTagError(where, [T_DECAY])
        raise UnsupportedUnitsError(where, T_DECAY, decay, "expected START, ADMIN or NONE")

    weight_kg = _positive(first, "PatientWeight", T_WEIGHT, where, "body weight")
    item = _radiopharmaceutical(first, where)
    dose = _positive(item, "RadionuclideTotalDose", f"{T_RADIO_SEQ} > {T_DOSE}", where, "injected dose")
    audit.update(weight_kg=weight_kg, weight_tag=T_WEIGHT, injected_dose_bq=dose,
                 injected_dose_tag=f"{T_RADIO_SEQ} > {T_DOSE}")
    codes = item.get("RadionuclideCodeSequence")
    if codes:
        audit["radionuclide"] = _text(codes[0], "CodeMeaning") or None
    weight_g = weight_kg * 1000.0

    if decay == "ADMIN":
        factors = activity_scale * (weight_g / dose)
        audit["method"] = method_prefix + "BQML, ADMIN: decay corrected to the injection, factor = weight_g / dose"
        audit["decayed_dose_bq"] = dose
        injection, source, _assumed = _injection_or_none(first, item, where)
        audit["injection_time"], audit["injection_time_source"] = _iso(injection), source
        return _finish(factors, audit)

    half_life = _positive(item, "RadionuclideHalfLife", f"{T_RADIO_SEQ} > {T_HALF_LIFE}", where, "half-life")
    audit.update(half_life_s=half_life, half_life_tag=f"{T_RADIO_SEQ} > {T_HALF_LIFE}")
    injection, injection_source, assumed = _injection(first, item, where)
    injection_text = _text(item, "RadiopharmaceuticalStartDateTime") or _text(item, "RadiopharmaceuticalStartTime")
    injection_tag = T_START_DT if not assumed else T_START_TIME

    if decay == "START":
        reference, reference_source = _start_reference(datasets, path)
        uptake, injection, moved = _uptake(injection, reference, assumed, injection_tag, injection_text, where)
        decayed = dose * 2.0 ** (-uptake / half_life)
        factors = activity_scale * (weight_g / decayed)
        audit["method"] = (method_prefix + "BQML, START: dose decayed to the reference time, "
                           "factor = weight_g / (dose × 2^(−Δt/T½))")
        audit.update(reference_time=_iso(reference), reference_time_source=reference_source,
                     uptake_seconds=uptake, decayed_dose_bq=decayed)
    else:  # NONE: every slice decayed from the injection to its own acquisition time
        factors = np.empty(n, dtype=np.float64)
        uptakes = np.empty(n, dtype=np.float64)
        references = []
        any_moved = False
        series_date = _series_date(first, where)
        for i, ds in enumerate(datasets):
            w = _where(ds, path)
            reference = _date_time(ds, "AcquisitionDate", "AcquisitionTime", T_ACQ_DATE, T_ACQ_TIME, w,
                                   default_date=series_date)
            if reference is None:
                raise SuvMissingTagError(w, [T_ACQ_TIME], "DecayCorrection NONE decays every slice to its own "
                                                          "acquisition time")
            uptakes[i], used, moved = _uptake(injection, reference, assumed, injection_tag, injection_text, w)
            references.append(reference)
            any_moved = any_moved or moved
            factors[i] = activity_scale[i] * weight_g / (dose * 2.0 ** (-uptakes[i] / half_life))
        injection, moved = used, any_moved
        audit["method"] = (method_prefix + "BQML, NONE: dose decayed to each slice's acquisition time, "
                           "factor_i = weight_g / (dose × 2^(−Δt_i/T½))")
        audit.update(reference_time=_iso(min(references)),
                     reference_time_source=f"{T_ACQ_DATE} + {T_ACQ_TIME} of each slice (earliest shown)",
                     reference_time_max=_iso(max(references)),
                     uptake_seconds=float(uptakes.min()), uptake_seconds_max=float(uptakes.max()))
    if assumed and moved:
        injection_source += " (date assumed one day before SeriesDate: injection before midnight)"
    audit.update(injection_time=_iso(injection), injection_time_source=injection_source)
    return _finish(factors, audit)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _injection_or_none(ds: Dataset, item: Dataset, where: str):
    try:
        return _injection(ds, item, where)
    except SuvError:
        return None, None, False


def _series_date(ds: Dataset, where: str) -> dt.date | None:
    text = _text(ds, "SeriesDate")
    return parse_date(text, T_SERIES_DATE, where) if text else None


def _start_reference(datasets: Sequence[Dataset], path: str) -> tuple[dt.datetime, str]:
    """QIBA: Series Date/Time unless it is after the (earliest) Acquisition Date/Time; then the GE private scan
    date/time when present, else the earliest Acquisition Date/Time."""
    first = datasets[0]
    where = _where(first, path)
    series = _date_time(first, "SeriesDate", "SeriesTime", T_SERIES_DATE, T_SERIES_TIME, where)
    acquisitions = []
    series_date = series.date() if series is not None else None
    for ds in datasets:
        value = _date_time(ds, "AcquisitionDate", "AcquisitionTime", T_ACQ_DATE, T_ACQ_TIME, _where(ds, path),
                           default_date=series_date)
        if value is not None:
            acquisitions.append(value)
    earliest = min(acquisitions) if acquisitions else None
    if series is not None and (earliest is None or series <= earliest):
        return series, f"{T_SERIES_DATE} + {T_SERIES_TIME}"
    ge = _private(first, 0x0009, GE_CREATOR, 0x0D)
    if isinstance(ge, bytes):
        ge = ge.decode("ascii", "replace")
    ge_text = str(ge).strip().strip("\x00") if ge is not None else ""
    if ge_text:
        return parse_datetime(ge_text, T_GE_SCAN, where), T_GE_SCAN + " (series time after acquisition time)"
    if earliest is not None:
        why = "series time after acquisition time" if series is not None else "no series time"
        return earliest, f"{T_ACQ_DATE} + {T_ACQ_TIME}, earliest of the series ({why})"
    raise SuvMissingTagError(where, [f"{T_SERIES_DATE} + {T_SERIES_TIME}", f"{T_ACQ_DATE} + {T_ACQ_TIME}"],
                             "DecayCorrection START needs the scan start time")


def _finish_values(values: np.ndarray):
    return float(values[0]) if np.all(values == values[0]) else [float(v) for v in values]


def _finish(factors: np.ndarray, audit: dict) -> SuvResult:
    factors = np.asarray(factors, dtype=np.float64)
    audit["factor_min"] = float(factors.min())
    audit["factor_max"] = float(factors.max())
    audit["factor"] = float(factors[0]) if np.all(factors == factors[0]) else None
    return SuvResult(factors=factors, audit=audit)


def read_headers(paths: Sequence[str]) -> list[Dataset]:
    """PET headers of ``paths`` (no pixels), as pydicom datasets (``filename`` set)."""
    datasets = []
    for path in paths:
        try:
            datasets.append(pydicom.dcmread(path, stop_before_pixels=True, force=True))
        except Exception as exc:  # pydicom raises many types on corrupt input
            raise DicomReadError(path, f"cannot read the header: {type(exc).__name__}: {exc}") from None
    return datasets


def suv_for_files(paths: Sequence[str]) -> SuvResult:
    """:func:`suv_factors` of the files of one PET series (headers read without pixels), in the order given."""
    paths = [os.fspath(p) for p in paths]
    result = suv_factors(read_headers(paths))
    return result


__all__ = ["SuvResult", "SuvError", "SuvMissingTagError", "SuvTagValueError", "UnsupportedUnitsError",
           "NegativeUptakeError", "suv_factors", "suv_for_files", "read_headers"]
