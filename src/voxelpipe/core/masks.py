"""A named mask on a volume's grid, what placing one ROI / segment gave, and the store-safe name rule for mask
arrays."""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Mask:
    """One named mask on a volume's grid: ``array`` uint8 (slice, row, column), 0 = outside; ``attrs`` is
    JSON-ready metadata (``roi_name``, ``roi_number``, ``color``, ``source``, ``source_kind``, ...)."""

    name: str
    array: np.ndarray
    attrs: dict = field(default_factory=dict)


@dataclass
class PlacedRoi:
    """What placing one ROI (RTSTRUCT) or segment (SEG) on a volume's grid gave, as plain data.

    ``mask`` is None when no mask was made (not among the requested ROIs, nothing to fill, another frame of
    reference; ``notes`` say why) and may hold no voxel at all (an empty mask is still a mask). ``contours``:
    contours (RTSTRUCT) or frames (SEG) of the ROI; ``contours_unmatched``: those placed on no slice;
    ``contours_skipped``: those not used. A count is None when it was not worked out (an ROI left out by the
    selection). ``voxels`` and ``volume_ml`` (mL) describe ``mask``.
    """

    source: str  # absolute path of the RTSTRUCT / SEG file
    source_kind: str  # RTSTRUCT | SEG
    roi_name: str
    roi_number: int
    mask: Mask | None = None
    contours: int | None = 0
    contours_unmatched: int | None = 0
    contours_skipped: int | None = 0
    voxels: int = 0
    volume_ml: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def mask_name(self) -> str:
        """The mask's array name ('' without a mask)."""
        return self.mask.name if self.mask is not None else ""


def mask_array_name(name: str, taken: Iterable[str] = ()) -> str:
    """A store-safe array name for ROI ``name``: runs of characters outside ``[A-Za-z0-9._-]`` become ``_``;
    a name already in ``taken`` gets ``_2``, ``_3``, ... ."""
    base = _UNSAFE.sub("_", name.strip()).strip("._") or "mask"
    taken = set(taken)
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}_{n}", n + 1
    return candidate
