"""The values the contours app passes around: a patient's task, the image/contour candidates, the pairs and
problems it reports, and the result of a run."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from voxelpipe.core.keys import series_key
from voxelpipe.core.types import Format, Status

__all__ = [
    "PAIR_COLUMNS",
    "PROBLEM_COLUMNS",
    "Candidate",
    "ContoursResult",
    "Pair",
    "PairData",
    "PatientOutcome",
    "PatientTask",
    "Problem",
]

PROBLEM_COLUMNS = ["patient_key", "category", "path", "line", "instance_number", "kind", "reason"]
PAIR_COLUMNS = ["patient_key", "instance_number", "kinds", "path", "status", "overlay", "overlay_status"]


@dataclass
class Problem:
    """Something that could not be paired, parsed or written.

    ``category``: bad_link_row, not_in_link, missing_folder, bad_name, duplicate_contour, not_dicom,
    no_instance_number, ambiguous_instance, no_image, parse_error, image_error, write_error.
    """

    patient_key: str
    category: str
    path: str
    reason: str
    line: int | None = None
    instance_number: int | None = None
    kind: str = ""

    def row(self) -> dict:
        """The ``problems.csv`` row."""
        return {"patient_key": self.patient_key, "category": self.category, "path": self.path,
                "line": "" if self.line is None else self.line,
                "instance_number": "" if self.instance_number is None else self.instance_number,
                "kind": self.kind, "reason": self.reason}


@dataclass
class Pair:
    """One image with its masks.

    Attributes:
        path: the data file (npz) or store (zarr), relative to the output folder.
        status: ``Status.DONE`` (written by this run) or ``Status.SKIPPED`` (a complete output was there).
        overlay: the overlay PNG relative to the output folder, "" when overlays were not asked for.
        overlay_status: like ``status`` for the overlay, "" when overlays were not asked for.
    """

    patient_key: str
    instance_number: int
    kinds: tuple[str, ...]
    path: str
    status: Status
    overlay: str = ""
    overlay_status: Status | str = ""

    def row(self) -> dict:
        """The ``pairs.csv`` row."""
        return {"patient_key": self.patient_key, "instance_number": self.instance_number,
                "kinds": ";".join(self.kinds), "path": self.path, "status": str(self.status),
                "overlay": self.overlay, "overlay_status": str(self.overlay_status)}


@dataclass
class ContoursResult:
    """What ``convert_contours`` did: every pair (written or kept), every problem, the files listed in
    ``filelist.txt`` (relative to ``out``), the number of patients and the run's duration in seconds."""

    out: str
    fmt: Format
    pairs: list[Pair]
    problems: list[Problem]
    files: list[str]
    overlays: list[str]
    patients: int
    seconds: float

    @property
    def written(self) -> list[Pair]:
        """The pairs written by this run (status done)."""
        return [p for p in self.pairs if p.status == Status.DONE]

    @property
    def skipped(self) -> list[Pair]:
        """The pairs whose complete output was kept (status skipped)."""
        return [p for p in self.pairs if p.status == Status.SKIPPED]


@dataclass
class PatientTask:
    """One patient: everything a worker needs (picklable)."""

    patient_id: str
    original_id: str
    dicom_folder: str
    contour_folder: str
    out: str
    kinds: tuple[str, ...]
    fmt: Format
    overlay: bool
    overwrite: bool

    @property
    def key(self) -> str:
        """The patient's key in output paths (``series_key`` of the patient ID; no ID in any path)."""
        return series_key(self.patient_id)


@dataclass
class PatientOutcome:
    """What one patient's task returns: its pairs, its problems, its duration in seconds."""

    pairs: list[Pair] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Candidate:
    """An image and its contour polygons, ready to fill.

    Attributes:
        contours: kind -> contour file.
        polygons: kind -> (K, 2) vertices as in the file: x (column), y (row), in pixels.
        overlay_done: its overlay was written by this run.
    """

    instance_number: int
    dicom_path: str
    contours: dict[str, str]
    polygons: dict[str, np.ndarray]
    overlay_done: bool = False


@dataclass
class PairData:
    """A candidate read and filled.

    Attributes:
        image: the stored pixel array (rows, columns), as in the file (no rescale).
        masks: kind -> uint8 (rows, columns) mask.
        meta: JSON-ready metadata of the pair.
        window: the DICOM window (centre, width) in rescaled units, or None.
        rescale: (slope, intercept) of the image, or None.
    """

    image: np.ndarray
    masks: dict[str, np.ndarray]
    meta: dict
    window: tuple[float, float] | None
    rescale: tuple[float, float] | None
