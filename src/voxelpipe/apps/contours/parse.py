"""Reading the contours app's inputs: contour text files (one polygon each), the contour kinds asked for, and
``link.csv`` (patient ↔ contour folder)."""
from __future__ import annotations

import math
import os
import re

import numpy as np

from voxelpipe.core.errors import InputError
from voxelpipe.stores.tables import read_csv

__all__ = [
    "CONTOUR_NAME",
    "KIND_PATTERN",
    "LINK_COLUMNS",
    "ContourParseError",
    "parse_kinds",
    "read_contour",
    "read_link",
]

CONTOUR_NAME = re.compile(r"^IM-(?P<series>\d+)-(?P<instance>\d+)-(?P<kind>[A-Za-z0-9]+)contour-.*\.txt$")
"""A contour file name: ``IM-<series>-<NNNN>-<kind>contour-<anything>.txt`` (NNNN = InstanceNumber)."""
KIND_PATTERN = re.compile(r"^[A-Za-z0-9]+$")
LINK_COLUMNS = ("patient_id", "original_id")


class ContourParseError(InputError):
    """A contour file that is not a polygon of ``x y`` lines.

    Attributes:
        path: the contour file.
        line: 1-based line number, None when the fault is the whole file.
        reason: what is wrong.
    """

    def __init__(self, path: str | os.PathLike, line: int | None, reason: str):
        self.path = os.fspath(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


def read_contour(path: str | os.PathLike) -> np.ndarray:
    """The polygon of a contour file, in file order.

    Blank lines are ignored; any other line must be two finite numbers ``x y``.

    Args:
        path: the contour text file.

    Returns:
        float64 (K, 2) vertices in pixels: column 0 = x (image column), column 1 = y (image row), pixel centres
        at integers.

    Raises:
        ContourParseError: a line that is not two finite ASCII numbers, or fewer than 3 vertices; names the file
            and line.
        OSError: the file cannot be read.
    """
    path = os.fspath(path)
    points: list[tuple[float, float]] = []
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                text = raw.decode("ascii").strip()
            except UnicodeDecodeError:
                raise ContourParseError(path, number, f"not ASCII text: {raw[:40]!r}") from None
            if not text:
                continue
            fields = text.split()
            if len(fields) != 2:
                raise ContourParseError(path, number, f"expected two numbers 'x y', got {len(fields)} field(s): "
                                                      f"{text[:60]!r}")
            try:
                x, y = float(fields[0]), float(fields[1])
            except ValueError:
                raise ContourParseError(path, number, f"not a number: {text[:60]!r}") from None
            if not (math.isfinite(x) and math.isfinite(y)):
                raise ContourParseError(path, number, f"not a finite coordinate: {text[:60]!r}")
            points.append((x, y))
    if len(points) < 3:
        raise ContourParseError(path, None, f"{len(points)} vertex line(s); a polygon needs at least 3")
    return np.asarray(points, dtype=np.float64)


def parse_kinds(kinds: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The contour kinds asked for: ``"i,o"`` or ``["i", "o"]`` -> ``("i", "o")``.

    Raises:
        InputError: no kind, a kind that is not letters/digits, or a repeated kind.
    """
    parts = [k.strip() for k in kinds.split(",")] if isinstance(kinds, str) else [str(k).strip() for k in kinds]
    parts = [k for k in parts if k]
    if not parts:
        raise InputError("contours: no contour kind given (e.g. --contours i,o)")
    for kind in parts:
        if not KIND_PATTERN.match(kind):
            raise InputError(f"contours: contour kind {kind!r} must be letters or digits (e.g. i, o)")
    if len(set(parts)) != len(parts):
        raise InputError(f"contours: contour kinds repeat: {','.join(parts)}")
    return tuple(parts)


def read_link(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of ``link.csv`` (columns ``patient_id``, ``original_id``; others ignored).

    Raises:
        FileNotFoundError: no such file.
        InputError: not a readable CSV, or the two columns are missing.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: link CSV not found")
    try:
        rows = read_csv(path)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: not a readable CSV: {exc}") from None
    if rows and not set(LINK_COLUMNS) <= set(rows[0]):
        raise InputError(f"{path}: needs columns patient_id,original_id; has {','.join(rows[0])}")
    if not rows:
        with open(path, encoding="utf-8") as fh:
            header = fh.readline().strip()
        if not set(LINK_COLUMNS) <= set(header.split(",")):
            raise InputError(f"{path}: needs columns patient_id,original_id; has {header!r}")
    return rows
