"""Philips MR private intensity scaling: display values or precise floating-point values.

Philips MR images carry two scalings of the stored pixel value PV (the names of the PAR/REC header):

- display value ``DV = PV * RS + RI``, with RS / RI the DICOM RescaleSlope (0028,1053) / RescaleIntercept
  (0028,1052) (in enhanced files: of the frame's Pixel Value Transformation functional group);
- precise ("floating-point") value ``FP = DV / (RS * SS)``, with SS the private MR Scale Slope (2005,100E),
  private creator ``Philips MR Imaging DD 001`` (in enhanced files: per frame, inside the private per-frame
  sequence (2005,140F)).

So ``FP = PV / SS + RI / (RS * SS)``: one more slope/intercept pair per slice, applied by the same rescale
kernel. This is what dcm2niix writes by default (``-p y``); ``-p n`` gives the display values. As in
dcm2niix, the private MR Scale Intercept (2005,100D) is recorded but takes no part, and nothing changes when
SS is absent or zero, RS is zero, or the Manufacturer (0008,0070) is not Philips.
"""
from __future__ import annotations

from pydicom.dataset import Dataset

from voxelpipe.core.types import PhilipsScaling
from voxelpipe.dicom.flatten import column_name

__all__ = ["PHILIPS_CREATOR", "SCALE_SLOPE_TAG", "SCALE_INTERCEPT_TAG", "is_philips", "scale_tags",
           "enhanced_scale_slope", "precise_pair", "applied_pair"]

PHILIPS_CREATOR = "Philips MR Imaging DD 001"  # private creator of the (2005,10xx) block
PER_FRAME_CREATOR = "Philips MR Imaging DD 005"  # private creator of the (2005,14xx) block
SCALE_SLOPE_TAG = 0x2005100E  # MR Scale Slope, FL
SCALE_INTERCEPT_TAG = 0x2005100D  # MR Scale Intercept, FL
CREATOR_TAG = 0x20050010
MANUFACTURER_TAG = 0x00080070


def is_philips(manufacturer: str) -> bool:
    """True when the Manufacturer (0008,0070) text names Philips (any case)."""
    return "PHILIPS" in manufacturer.upper()


def _number(text: str) -> float:
    try:
        return float(text.split("\\")[0])
    except ValueError:
        return 0.0


def scale_tags(row: dict[str, str]) -> tuple[float, float]:
    """(MR Scale Slope, MR Scale Intercept) from a flattened header row; (0, 0) when the (2005,10xx) block is
    not Philips' or the tags are absent or not numbers."""
    if row.get(column_name(CREATOR_TAG), "").strip() != PHILIPS_CREATOR:
        return 0.0, 0.0
    return _number(row.get(column_name(SCALE_SLOPE_TAG), "")), _number(row.get(column_name(SCALE_INTERCEPT_TAG), ""))


def enhanced_scale_slope(item: Dataset, default: float = 0.0) -> float:
    """MR Scale Slope of one per-frame functional group item of an enhanced file (inside the private
    sequence (2005,140F)); ``default`` when absent."""
    try:
        sequence = item.private_block(0x2005, PER_FRAME_CREATOR)[0x0F].value
        value = sequence[0].private_block(0x2005, PHILIPS_CREATOR)[0x0E].value
        return float(value[0] if isinstance(value, (list, tuple)) else value)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return default


def precise_pair(slope: float, intercept: float, scale_slope: float) -> tuple[float, float]:
    """The (slope, intercept) that maps stored values to precise values: ``FP = (PV * RS + RI) / (RS * SS)``
    = ``PV * (1 / SS) + RI / (RS * SS)``; ``(slope, intercept)`` unchanged when ``RS * SS`` is zero."""
    if slope * scale_slope == 0:
        return slope, intercept
    return 1.0 / scale_slope, intercept / (slope * scale_slope)


def applied_pair(manufacturer: str, slope: float, intercept: float, scale_slope: float,
                 mode: PhilipsScaling) -> tuple[float, float]:
    """The (slope, intercept) to apply to one slice under ``mode``: the precise pair for a Philips slice
    with a scale slope when ``mode`` is precise, else the DICOM rescale pair as given."""
    if mode == PhilipsScaling.PRECISE and scale_slope and is_philips(manufacturer):
        return precise_pair(slope, intercept, scale_slope)
    return slope, intercept
