"""A named mask on a volume's grid, and the store-safe name rule for mask arrays."""
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


def mask_array_name(name: str, taken: Iterable[str] = ()) -> str:
    """A store-safe array name for ROI ``name``: runs of characters outside ``[A-Za-z0-9._-]`` become ``_``;
    a name already in ``taken`` gets ``_2``, ``_3``, ... ."""
    base = _UNSAFE.sub("_", name.strip()).strip("._") or "mask"
    taken = set(taken)
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}_{n}", n + 1
    return candidate
