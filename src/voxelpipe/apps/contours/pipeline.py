"""`contours`: text polygon contours (cardiac MRI challenge layout) paired with their DICOM images, filled into
masks, written as image/mask pairs (one npz per pair, or one Zarr group per patient), optionally with PNG
overlays.

Input layout::

    link.csv                          patient_id,original_id  (DICOM folder name, contour folder name)
    DICOM_DIR/<patient_id>/...        the patient's DICOM images (any names, any depth)
    CONTOUR_DIR/<original_id>/<kind>-contours/IM-<series>-<NNNN>-<kind>contour-<anything>.txt

A contour file holds one polygon, a line ``x y`` per vertex in pixel coordinates (x = column, y = row, pixel
centres at integers) of the image whose InstanceNumber (read from the DICOM header, never from a file name) is
``NNNN``. Masks follow the pixel-centre rule of ``voxelpipe.ops.polygon.fill_polygons`` (= skimage's polygon2mask).

Output (``patient_key`` = ``keys.series_key(patient_id)``; no patient ID in any path)::

    OUT/<patient_key>/<InstanceNumber:04d>.npz     fmt="npz": image, mask_<kind>..., meta_json
    OUT/<patient_key>.zarr                         fmt="zarr": image, masks/<kind>, instance_numbers, has_<kind>
    OUT/overlays/<patient_key>/<NNNN>.png          overlay=True
    OUT/filelist.txt                               the data files of this run's pairs (written or kept), sorted
    OUT/overlays/filelist.txt                      the overlay PNGs likewise
    OUT/pairs.csv                                  one row per pair: key, instance, kinds, path, status
    OUT/problems.csv                               everything that could not be paired, parsed or written

Rules: a pair is one image with every requested contour kind found for it; a pair with any contour that cannot
be used (malformed, duplicated, ambiguous image) is not written at all, so it can never pass for an image
without that contour; the problem names the file (and line). One bad file never stops the batch. Every output
is written under a temporary name and renamed; a rerun keeps an output that is complete for the current input
(npz: has the mask of every kind the pair has now; zarr: holds exactly the current pairs and kinds) and redoes
the rest. Contours are parsed and paired on every run, so problems.csv always describes the current input.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from voxelpipe._version import __version__
from voxelpipe.core.errors import InputError
from voxelpipe.core.keys import series_key
from voxelpipe.execution import default_workers, imap
from voxelpipe.core.progress import Progress
from voxelpipe.stores.tables import atomic_path, read_csv, write_csv

log = logging.getLogger("voxelpipe")

FORMATS = ("npz", "zarr")
CONTOUR_NAME = re.compile(r"^IM-(?P<series>\d+)-(?P<instance>\d+)-(?P<kind>[A-Za-z0-9]+)contour-.*\.txt$")
KIND_PATTERN = re.compile(r"^[A-Za-z0-9]+$")
PROBLEM_COLUMNS = ["patient_key", "category", "path", "line", "instance_number", "kind", "reason"]
PAIR_COLUMNS = ["patient_key", "instance_number", "kinds", "path", "status", "overlay", "overlay_status"]
ZARR_CLEVEL = 5
PATIENTS_PER_WORKER = 4


class ContourParseError(InputError):
    """A contour file that is not a polygon of ``x y`` lines; ``line`` is 1-based (None: the whole file)."""

    def __init__(self, path: str | os.PathLike, line: int | None, reason: str):
        self.path = os.fspath(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


# ----------------------------------------------------------------------------------------------------------
# values
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Problem:
    """Something that could not be paired, parsed or written. ``category``: not_in_link, missing_folder,
    bad_name, duplicate_contour, not_dicom, no_instance_number, ambiguous_instance, no_image, parse_error,
    image_error, write_error."""

    patient_key: str
    category: str
    path: str
    reason: str
    line: int | None = None
    instance_number: int | None = None
    kind: str = ""

    def row(self) -> dict:
        return {"patient_key": self.patient_key, "category": self.category, "path": self.path,
                "line": "" if self.line is None else self.line,
                "instance_number": "" if self.instance_number is None else self.instance_number,
                "kind": self.kind, "reason": self.reason}


@dataclass
class Pair:
    """One image with its masks. ``path``: the data file (npz) or store (zarr) relative to OUT; ``status``:
    written (this run) or skipped (a complete output was there); overlay likewise ("" when not asked)."""

    patient_key: str
    instance_number: int
    kinds: tuple[str, ...]
    path: str
    status: str
    overlay: str = ""
    overlay_status: str = ""

    def row(self) -> dict:
        return {"patient_key": self.patient_key, "instance_number": self.instance_number,
                "kinds": ";".join(self.kinds), "path": self.path, "status": self.status, "overlay": self.overlay,
                "overlay_status": self.overlay_status}


@dataclass
class ContoursResult:
    """What ``convert_contours`` did: every pair (written or kept), every problem, the files listed in
    ``filelist.txt`` (relative to ``out``)."""

    out: str
    fmt: str
    pairs: list[Pair]
    problems: list[Problem]
    files: list[str]
    overlays: list[str]
    patients: int
    seconds: float

    @property
    def written(self) -> list[Pair]:
        return [p for p in self.pairs if p.status == "written"]

    @property
    def skipped(self) -> list[Pair]:
        return [p for p in self.pairs if p.status == "skipped"]


@dataclass
class PatientTask:
    """One patient: everything a worker needs (picklable)."""

    patient_id: str
    original_id: str
    dicom_folder: str
    contour_folder: str
    out: str
    kinds: tuple[str, ...]
    fmt: str
    overlay: bool
    overwrite: bool

    @property
    def key(self) -> str:
        return series_key(self.patient_id)


@dataclass
class PatientOutcome:
    pairs: list[Pair] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class _Candidate:
    """An image and its contour polygons, ready to fill."""

    instance_number: int
    dicom_path: str
    contours: dict[str, str]              # kind -> contour file
    polygons: dict[str, np.ndarray]       # kind -> (K, 2) vertices as in the file: x (column), y (row)
    overlay_done: bool = False


# ----------------------------------------------------------------------------------------------------------
# parsing
# ----------------------------------------------------------------------------------------------------------
def read_contour(path: str | os.PathLike) -> np.ndarray:
    """The polygon of a contour file: float64 (K, 2), columns x (image column) and y (image row), in file order.

    Blank lines are ignored; any other line must be two finite numbers. Raises ContourParseError naming the
    file and line; a file with fewer than 3 vertices is an error too."""
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


def polygon_rows_cols(points: np.ndarray) -> np.ndarray:
    """File vertices (x = column, y = row) as (row, column) vertices for the polygon kernel."""
    return np.ascontiguousarray(points[:, ::-1])


def fill_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """uint8 (rows, cols) mask of one contour polygon (file order x, y) by the polygon kernel."""
    from voxelpipe.ops.polygon import fill_polygons

    return fill_polygons([polygon_rows_cols(points)], shape)


def parse_kinds(kinds: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"i,o"`` or ``["i", "o"]`` -> ("i", "o"); names must be letters/digits, at least one, no repeats."""
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
    """Rows of link.csv (columns patient_id, original_id; others ignored)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: link CSV not found")
    try:
        rows = read_csv(path)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: not a readable CSV: {exc}") from None
    if rows and not {"patient_id", "original_id"} <= set(rows[0]):
        raise InputError(f"{path}: needs columns patient_id,original_id; has {','.join(rows[0])}")
    if not rows:
        with open(path, encoding="utf-8") as fh:
            header = fh.readline().strip()
        if not {"patient_id", "original_id"} <= set(header.split(",")):
            raise InputError(f"{path}: needs columns patient_id,original_id; has {header!r}")
    return rows


# ----------------------------------------------------------------------------------------------------------
# the library call
# ----------------------------------------------------------------------------------------------------------
def convert_contours(link: str | os.PathLike, dicom_dir: str | os.PathLike, contour_dir: str | os.PathLike,
                     out: str | os.PathLike, kinds: str | tuple[str, ...] = ("i", "o"), fmt: str = "npz",
                     overlay: bool = False, workers: int | None = None, progress: bool = True,
                     overwrite: bool = False) -> ContoursResult:
    """Pair every contour file with its image, fill the masks and write the pairs; returns a ContoursResult.

    ``kinds``: contour kinds to read (``i`` inner/endocardium, ``o`` outer/epicardium). ``fmt``: ``npz`` (one
    file per pair) or ``zarr`` (one group per patient). ``overlay``: also a PNG per pair. ``workers``: processes,
    one patient per task (default ``auto_workers``: serial below 8 patients, else up to the cores; 1 = this
    process). ``overwrite``: redo complete outputs too.
    Problems never raise: they are returned, logged and written to ``out/problems.csv``. Raises InputError /
    FileNotFoundError only for a bad call (options, link.csv, folders)."""
    started = time.perf_counter()
    kinds = parse_kinds(kinds)
    if fmt not in FORMATS:
        raise InputError(f"contours: format {fmt!r}: choose {' or '.join(FORMATS)}")
    link, dicom_dir, contour_dir, out = (os.path.abspath(os.fspath(p)) for p in (link, dicom_dir, contour_dir, out))
    for name, folder in (("DICOM", dicom_dir), ("contour", contour_dir)):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{folder}: {name} folder not found")
    tasks, problems = _tasks(read_link(link), link, dicom_dir, contour_dir, out, kinds, fmt, overlay, overwrite)
    os.makedirs(out, exist_ok=True)
    workers = auto_workers(len(tasks)) if workers is None else min(max(1, int(workers)), max(1, len(tasks)))
    log.info("contours: %d patient(s) -> %s (%s%s), %d worker(s)", len(tasks), out, fmt,
             ", overlays" if overlay else "", workers)
    pairs: list[Pair] = []
    with Progress(len(tasks), "contours", unit="patients", enabled=progress) as bar:
        for outcome in imap(run_patient, tasks, workers):
            pairs.extend(outcome.pairs)
            problems.extend(outcome.problems)
            bar.update()
    for problem in problems:
        log.warning("contours: %s: %s", problem.category, problem.reason)
    files = sorted({p.path for p in pairs})
    overlays = sorted(p.overlay for p in pairs if p.overlay)
    _write_list(os.path.join(out, "filelist.txt"), files)
    if overlay:
        _write_list(os.path.join(out, "overlays", "filelist.txt"), overlays)
    write_csv(os.path.join(out, "pairs.csv"), [p.row() for p in pairs], PAIR_COLUMNS)
    write_csv(os.path.join(out, "problems.csv"), [p.row() for p in problems], PROBLEM_COLUMNS)
    result = ContoursResult(out=out, fmt=fmt, pairs=pairs, problems=problems, files=files, overlays=overlays,
                            patients=len(tasks), seconds=time.perf_counter() - started)
    log.info("contours: %d pair(s) written, %d kept, %d problem(s) in %.1f s", len(result.written),
             len(result.skipped), len(problems), result.seconds)
    return result


def auto_workers(patients: int) -> int:
    """Default worker count: one process per PATIENTS_PER_WORKER patients, at most the cores. A worker costs
    ~1.5-3 s to start here (numba import and the polygon kernel's cache load) while a patient of the cardiac set
    takes ~0.5-1 s, so a pool only pays from a handful of patients per worker; the two shipped patients run
    serially (measured: 3.2 s serial vs 5.6 s with 2 workers on the 2-core VM)."""
    return max(1, min(default_workers(), patients // PATIENTS_PER_WORKER))


def contours_command(args) -> int:
    """CLI entry: run, print a one-line summary. Exit 0 when every contour file was paired and written (or
    kept), 1 when any problem was logged (the rest is written; see OUT/problems.csv); cli.main turns a bad call
    (VoxelpipeError, missing link/folder) into 2."""
    result = convert_contours(args.link, args.dicom_dir, args.contour_dir, args.out, kinds=args.contours,
                              fmt=args.fmt, overlay=args.overlay, workers=args.workers,
                              progress=not getattr(args, "no_progress", False),
                              overwrite=args.overwrite)
    note = f" (see {os.path.join(args.out, 'problems.csv')})" if result.problems else ""
    print(f"contours: {len(result.written)} pair(s) written, {len(result.skipped)} kept, "
          f"{len(result.problems)} problem(s){note}, {result.patients} patient(s) in {result.seconds:.1f} s "
          f"-> {args.out}")
    return 1 if result.problems else 0


def _write_list(path: str, lines: list[str]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.writelines(line + "\n" for line in lines)


def _tasks(rows: list[dict[str, str]], link: str, dicom_dir: str, contour_dir: str, out: str,
           kinds: tuple[str, ...], fmt: str, overlay: bool, overwrite: bool) -> tuple[list[PatientTask], list[Problem]]:
    tasks: list[PatientTask] = []
    problems: list[Problem] = []
    seen_patients: set[str] = set()
    seen_originals: set[str] = set()
    for number, row in enumerate(rows, 2):
        patient_id = (row.get("patient_id") or "").strip()
        original_id = (row.get("original_id") or "").strip()
        key = series_key(patient_id) if patient_id else ""
        where = f"{link}, line {number}"
        if not patient_id or not original_id:
            problems.append(Problem(key, "bad_link_row", link, f"{where}: patient_id or original_id empty",
                                    line=number))
            continue
        if patient_id in seen_patients or original_id in seen_originals:
            problems.append(Problem(key, "bad_link_row", link, f"{where}: patient {patient_id!r} or contour "
                                    f"folder {original_id!r} already linked on an earlier line", line=number))
            continue
        seen_patients.add(patient_id)
        seen_originals.add(original_id)
        dicom_folder = os.path.join(dicom_dir, patient_id)
        contour_folder = os.path.join(contour_dir, original_id)
        missing = [f for f in (dicom_folder, contour_folder) if not os.path.isdir(f)]
        if missing:
            for folder in missing:
                problems.append(Problem(key, "missing_folder", folder, f"{folder}: folder not found ({where})"))
            continue
        tasks.append(PatientTask(patient_id, original_id, dicom_folder, contour_folder, out, kinds, fmt, overlay,
                                 overwrite))
    for name in sorted(os.listdir(contour_dir)):
        folder = os.path.join(contour_dir, name)
        if os.path.isdir(folder) and not name.startswith(".") and name not in seen_originals:
            problems.append(Problem("", "not_in_link", folder, f"{folder}: contour folder not named in {link}"))
    return tasks, problems


# ----------------------------------------------------------------------------------------------------------
# one patient (runs in a worker)
# ----------------------------------------------------------------------------------------------------------
def run_patient(task: PatientTask) -> PatientOutcome:
    """Pair, fill and write one patient's contours; never raises for bad input (it becomes a Problem)."""
    started = time.perf_counter()
    outcome = PatientOutcome()
    try:
        _run_patient(task, outcome)
    except Exception as exc:  # a bug or an unexpected I/O failure: the batch goes on, the patient is reported
        log.debug("contours: patient %s failed", task.key, exc_info=True)
        outcome.problems.append(Problem(task.key, "write_error", task.dicom_folder,
                                        f"{task.dicom_folder}: {type(exc).__name__}: {exc}"))
    outcome.seconds = time.perf_counter() - started
    return outcome


def _run_patient(task: PatientTask, outcome: PatientOutcome) -> None:
    key = task.key
    problems = outcome.problems
    contours = _find_contours(task, problems)
    if not contours:
        return
    images, ambiguous = _index_images(task, problems)
    candidates: list[_Candidate] = []
    for instance in sorted(contours):
        files = contours[instance]
        if instance in ambiguous:
            for kind, path in files.items():
                problems.append(Problem(key, "ambiguous_instance", path, f"{path}: {len(ambiguous[instance])} DICOM "
                                        f"files have InstanceNumber {instance}: {', '.join(ambiguous[instance])}",
                                        instance_number=instance, kind=kind))
            continue
        if instance not in images:
            for kind, path in files.items():
                problems.append(Problem(key, "no_image", path, f"{path}: no DICOM image with InstanceNumber "
                                        f"{instance} in {task.dicom_folder}", instance_number=instance, kind=kind))
            continue
        polygons: dict[str, np.ndarray] = {}
        for kind, path in files.items():
            try:
                polygons[kind] = read_contour(path)
            except ContourParseError as exc:
                problems.append(Problem(key, "parse_error", path, str(exc), line=exc.line, instance_number=instance,
                                        kind=kind))
            except OSError as exc:
                problems.append(Problem(key, "parse_error", path, f"{path}: {exc}", instance_number=instance,
                                        kind=kind))
        if len(polygons) == len(files):
            candidates.append(_Candidate(instance, images[instance], dict(files), polygons))
    if task.fmt == "npz":
        _write_npz_pairs(task, candidates, outcome)
    else:
        _write_zarr_patient(task, candidates, outcome)


def _find_contours(task: PatientTask, problems: list[Problem]) -> dict[int, dict[str, str]]:
    """instance number -> {kind: contour file}, in kind order; bad names and duplicates become problems."""
    key = task.key
    found: dict[int, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for kind in task.kinds:
        folder = os.path.join(task.contour_folder, f"{kind}-contours")
        if not os.path.isdir(folder):
            problems.append(Problem(key, "missing_folder", folder, f"{folder}: no {kind}-contours folder", kind=kind))
            continue
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if name.startswith(".") or not os.path.isfile(path):
                continue
            match = CONTOUR_NAME.match(name)
            if match is None:
                problems.append(Problem(key, "bad_name", path, f"{path}: not a contour file name "
                                        f"IM-<series>-<NNNN>-{kind}contour-....txt", kind=kind))
                continue
            if match["kind"] != kind:
                problems.append(Problem(key, "bad_name", path, f"{path}: a {match['kind']!r} contour in the "
                                        f"{kind}-contours folder", kind=kind))
                continue
            found[int(match["instance"])][kind].append(path)
    contours: dict[int, dict[str, str]] = {}
    for instance, by_kind in found.items():
        duplicated = {k: paths for k, paths in by_kind.items() if len(paths) > 1}
        for kind, paths in duplicated.items():
            for path in paths:
                problems.append(Problem(key, "duplicate_contour", path, f"{path}: {len(paths)} {kind} contour files "
                                        f"for InstanceNumber {instance}: {', '.join(paths)}",
                                        instance_number=instance, kind=kind))
        if duplicated:
            continue  # the pair cannot be told apart: none of its files is used
        contours[instance] = {k: by_kind[k][0] for k in task.kinds if k in by_kind}
    return contours


def _index_images(task: PatientTask, problems: list[Problem]) -> tuple[dict[int, str], dict[int, list[str]]]:
    """InstanceNumber -> DICOM file of the patient's folder (headers only, by the scan's fast header reader);
    numbers held by several files are returned apart (ambiguous). Files that are not DICOM or have no usable
    InstanceNumber become problems."""
    from voxelpipe.dicom.files import read_header
    from voxelpipe.dicom.flatten import column_name
    from voxelpipe.core.errors import DicomReadError

    instance_column = column_name(0x00200013)

    by_number: dict[int, list[str]] = defaultdict(list)
    for root, dirs, names in os.walk(task.dicom_folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            try:
                row = read_header(path).row
            except DicomReadError as exc:
                problems.append(Problem(task.key, "not_dicom", path, str(exc)))
                continue
            text = row.get(instance_column, "").strip()
            try:
                number = int(text)
            except ValueError:
                problems.append(Problem(task.key, "no_instance_number", path, f"{path}: no usable InstanceNumber "
                                        f"({text!r}); it cannot be paired"))
                continue
            by_number[number].append(path)
    images = {n: paths[0] for n, paths in by_number.items() if len(paths) == 1}
    ambiguous = {n: paths for n, paths in by_number.items() if len(paths) > 1}
    return images, ambiguous


def _read_image(path: str) -> tuple[np.ndarray, dict, tuple[float, float] | None, tuple[float, float] | None]:
    """Stored pixel array (rows, cols), meta entries, window (centre, width) or None, rescale or None."""
    import pydicom

    ds = pydicom.dcmread(path)
    image = ds.pixel_array
    if image.ndim != 2:
        raise InputError(f"{path}: pixel array of shape {image.shape}; a single-frame greyscale image is needed")
    meta: dict = {"sop_instance_uid": _raw_text(ds, "SOPInstanceUID"),
                  "rows": int(image.shape[0]), "columns": int(image.shape[1]), "dtype": str(image.dtype)}
    spacing = ds.get("PixelSpacing")
    meta["pixel_spacing"] = [float(v) for v in spacing] if spacing else None
    rescale = None
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        meta["rescale_slope"], meta["rescale_intercept"] = slope, intercept
        rescale = (slope, intercept)
    window = None
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        centre, width = (_first(ds.WindowCenter), _first(ds.WindowWidth))
        meta["window_center"], meta["window_width"] = centre, width
        if width >= 1:
            window = (centre, width)
    return image, meta, window, rescale


def _raw_text(ds, keyword: str) -> str:
    """An element's text from its raw bytes: pydicom would warn on every non-conformant UID (these scanners
    write components with leading zeros), and the value is kept as written anyway."""
    element = ds.get_item(keyword)
    if element is None:
        return ""
    value = element.value
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip("\0 ")
    return "" if value is None else str(value)


def _first(value) -> float:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _build(task: PatientTask, cand: _Candidate, problems: list[Problem]):
    """Read the image and fill the masks of a candidate; None (and a problem) when the image is unusable."""
    try:
        image, meta, window, rescale = _read_image(cand.dicom_path)
    except Exception as exc:
        problems.append(Problem(task.key, "image_error", cand.dicom_path, f"{cand.dicom_path}: "
                                f"{exc if isinstance(exc, InputError) else f'{type(exc).__name__}: {exc}'}",
                                instance_number=cand.instance_number))
        return None
    shape = (image.shape[0], image.shape[1])
    masks = {kind: np.ascontiguousarray(fill_mask(points, shape), dtype=np.uint8)
             for kind, points in cand.polygons.items()}
    meta = {"patient_key": task.key, "instance_number": cand.instance_number, **meta,
            "source_dicom": cand.dicom_path, "contour_files": dict(cand.contours), "kinds": list(cand.polygons),
            "voxelpipe_version": __version__}
    return image, masks, meta, window, rescale


def _overlay_rel(task: PatientTask, instance: int) -> str:
    return f"overlays/{task.key}/{instance:04d}.png"


def _write_overlay(task: PatientTask, image, masks, window, rescale, rel: str) -> None:
    from voxelpipe.ops.overlay import overlay_png

    shown = image if rescale is None else image.astype(np.float64) * rescale[0] + rescale[1]
    overlay_png(shown, masks, os.path.join(task.out, rel), window=window)


def _npz_complete(path: str, kinds: tuple[str, ...]) -> bool:
    """An npz with image, meta_json and exactly a mask for each of ``kinds`` (reads only its zip directory)."""
    try:
        with np.load(path) as data:
            names = set(data.files)
    except Exception:
        return False
    masks = {n for n in names if n.startswith("mask_")}
    return {"image", "meta_json"} <= names and masks == {f"mask_{k}" for k in kinds}


def _write_npz_pairs(task: PatientTask, candidates: list[_Candidate], outcome: PatientOutcome) -> None:
    for cand in candidates:
        rel = f"{task.key}/{cand.instance_number:04d}.npz"
        path = os.path.join(task.out, rel)
        kinds = tuple(cand.polygons)
        overlay_rel = _overlay_rel(task, cand.instance_number) if task.overlay else ""
        need_data = task.overwrite or not _npz_complete(path, kinds)
        need_overlay = bool(overlay_rel) and (task.overwrite or not os.path.isfile(os.path.join(task.out, overlay_rel)))
        if need_data or need_overlay:
            built = _build(task, cand, outcome.problems)
            if built is None:
                continue
            image, masks, meta, window, rescale = built
            if need_data:
                arrays = {"image": image, **{f"mask_{k}": m for k, m in masks.items()},
                          "meta_json": np.array(json.dumps(meta))}
                with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                    np.savez_compressed(fh, **arrays)
            if need_overlay:
                _write_overlay(task, image, masks, window, rescale, overlay_rel)
        outcome.pairs.append(Pair(task.key, cand.instance_number, kinds, rel, "written" if need_data else "skipped",
                                  overlay_rel, ("written" if need_overlay else "skipped") if overlay_rel else ""))


def _zarr_complete(path: str, candidates: list[_Candidate], kinds: tuple[str, ...]) -> bool:
    """A Zarr group holding exactly the candidates' instance numbers, with the same kinds per image."""
    import zarr

    if not os.path.isdir(path):
        return False
    try:
        group = zarr.open_group(store=zarr.storage.LocalStore(path, read_only=True), mode="r")
        if list(group.attrs.get("kinds", [])) != list(kinds):
            return False
        numbers = [int(n) for n in group["instance_numbers"][...]]
        if numbers != [c.instance_number for c in candidates]:
            return False
        for kind in kinds:
            expected = [kind in c.polygons for c in candidates]
            if f"has_{kind}" not in group or [bool(v) for v in group[f"has_{kind}"][...]] != expected:
                return False
            if f"masks/{kind}" not in group:
                return False
        return "image" in group
    except Exception:
        return False


def _write_zarr_patient(task: PatientTask, candidates: list[_Candidate], outcome: PatientOutcome) -> None:
    rel = f"{task.key}.zarr"
    path = os.path.join(task.out, rel)
    data_done = not task.overwrite and _zarr_complete(path, candidates, task.kinds)
    built: list[tuple[_Candidate, tuple]] = []
    for cand in candidates:
        overlay_rel = _overlay_rel(task, cand.instance_number) if task.overlay else ""
        need_overlay = bool(overlay_rel) and (task.overwrite or not os.path.isfile(os.path.join(task.out, overlay_rel)))
        if data_done and not need_overlay:
            built.append((cand, ()))
            continue
        parts = _build(task, cand, outcome.problems)
        if parts is None:
            continue
        if need_overlay:
            image, masks, _, window, rescale = parts
            _write_overlay(task, image, masks, window, rescale, overlay_rel)
        built.append((cand, parts if not data_done else ()))
        cand.overlay_done = need_overlay
    if not data_done:
        built = _same_shape(task, built, outcome.problems)
        if built:
            _write_zarr(path, task, [parts for _, parts in built])
    for cand, _ in built:
        overlay_rel = _overlay_rel(task, cand.instance_number) if task.overlay else ""
        outcome.pairs.append(Pair(task.key, cand.instance_number, tuple(cand.polygons), rel,
                                  "skipped" if data_done else "written", overlay_rel,
                                  ("written" if cand.overlay_done else "skipped") if overlay_rel else ""))


def _same_shape(task: PatientTask, built: list, problems: list[Problem]) -> list:
    """Keep the images of the patient's most common (shape, dtype); the others become problems."""
    if not built:
        return built
    counts: dict[tuple, int] = defaultdict(int)
    for _, parts in built:
        counts[(parts[0].shape, parts[0].dtype.str)] += 1
    common = max(counts, key=lambda k: counts[k])
    kept = []
    for cand, parts in built:
        if (parts[0].shape, parts[0].dtype.str) == common:
            kept.append((cand, parts))
        else:
            problems.append(Problem(task.key, "image_error", cand.dicom_path, f"{cand.dicom_path}: image "
                                    f"{parts[0].shape} {parts[0].dtype} differs from the patient's other images "
                                    f"{common[0]} {np.dtype(common[1])}; one Zarr group needs one grid",
                                    instance_number=cand.instance_number))
    return kept


def _write_zarr(path: str, task: PatientTask, items: list[tuple]) -> None:
    """One Zarr group per patient, written as ``<path>.partial`` and renamed."""
    import zarr
    from zarr.codecs import BloscCodec

    n = len(items)
    rows, cols = items[0][0].shape
    partial = path + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    compressors = [BloscCodec(cname="zstd", clevel=ZARR_CLEVEL, shuffle="bitshuffle")]
    try:
        group = zarr.open_group(store=zarr.storage.LocalStore(partial), mode="w", zarr_format=3)
        group.attrs.update(json.loads(json.dumps({
            "patient_key": task.key, "kinds": list(task.kinds), "format": "voxelpipe contours 1",
            "voxelpipe_version": __version__, "pairs": [meta for _, _, meta, _, _ in items]})))
        image = group.create_array("image", shape=(n, rows, cols), dtype=items[0][0].dtype, chunks=(1, rows, cols),
                                   compressors=compressors, dimension_names=["image", "row", "column"])
        image[...] = np.stack([img for img, _, _, _, _ in items])
        numbers = np.array([meta["instance_number"] for _, _, meta, _, _ in items], dtype=np.int32)
        group.create_array("instance_numbers", shape=(n,), dtype=np.int32, compressors=compressors)[...] = numbers
        masks_group = group.require_group("masks")
        for kind in task.kinds:
            has = np.array([kind in masks for _, masks, _, _, _ in items], dtype=bool)
            group.create_array(f"has_{kind}", shape=(n,), dtype=bool, compressors=compressors)[...] = has
            stack = np.zeros((n, rows, cols), np.uint8)
            for index, (_, masks, _, _, _) in enumerate(items):
                if kind in masks:
                    stack[index] = masks[kind]
            masks_group.create_array(kind, shape=(n, rows, cols), dtype=np.uint8, chunks=(1, rows, cols),
                                     fill_value=0, compressors=compressors,
                                     dimension_names=["image", "row", "column"])[...] = stack
        if os.path.isdir(path):  # overwrite or an incomplete earlier group: swap it out
            old = path + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(partial, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(partial, path)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
