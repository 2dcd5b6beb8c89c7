"""``convert_contours``: pair every contour file with its image, fill the masks, write the pairs; one patient per
task (:func:`run_patient`), in this process or a pool.

Rules: a pair is one image with every requested contour kind found for it; a pair with any contour that cannot
be used (malformed, duplicated, ambiguous image) is not written at all, so it can never pass for an image
without that contour; the problem names the file (and line). One bad file never stops the batch. Every output
is written under a temporary name and renamed; a rerun keeps an output that is complete for the current input
(npz: has the mask of every kind the pair has now; zarr: holds exactly the current pairs and kinds) and redoes
the rest. Contours are parsed and paired on every run, so problems.csv always describes the current input.
"""
from __future__ import annotations

import logging
import os
import time

from voxelpipe.apps.contours.index import find_candidates, link_tasks
from voxelpipe.apps.contours.parse import parse_kinds, read_link
from voxelpipe.apps.contours.records import (
    PAIR_COLUMNS,
    PROBLEM_COLUMNS,
    ContoursResult,
    Pair,
    PatientOutcome,
    PatientTask,
    Problem,
)
from voxelpipe.apps.contours.write import write_npz_pairs, write_zarr_patient
from voxelpipe.core import defaults
from voxelpipe.core.errors import InputError
from voxelpipe.core.progress import Progress
from voxelpipe.core.types import Format
from voxelpipe.execution import default_workers, imap
from voxelpipe.stores.tables import write_csv, write_lines

__all__ = ["FORMATS", "PATIENTS_PER_WORKER", "auto_workers", "convert_contours", "run_patient"]

log = logging.getLogger("voxelpipe")

FORMATS = (Format.NPZ, Format.ZARR)
PATIENTS_PER_WORKER = 4


def convert_contours(link: str | os.PathLike, dicom_dir: str | os.PathLike, contour_dir: str | os.PathLike,
                     out: str | os.PathLike, kinds: str | tuple[str, ...] = defaults.CONTOUR_KINDS,
                     fmt: Format | str = defaults.CONTOUR_FORMAT,
                     overlay: bool = False, workers: int | None = None, progress: bool = True,
                     overwrite: bool = False) -> ContoursResult:
    """Pair every contour file with its image, fill the masks and write the pairs.

    Problems never raise: they are returned, logged and written to ``out/problems.csv``.

    Args:
        link: ``link.csv`` (columns patient_id, original_id).
        dicom_dir: folder of one DICOM folder per patient_id.
        contour_dir: folder of one contour folder per original_id.
        out: output folder.
        kinds: contour kinds to read (``i`` inner/endocardium, ``o`` outer/epicardium), a list or ``"i,o"``.
        fmt: ``npz`` (one file per pair) or ``zarr`` (one group per patient).
        overlay: also write a PNG per pair.
        workers: processes, one patient per task (default :func:`auto_workers`; 1 = this process).
        progress: show a progress bar.
        overwrite: redo complete outputs too.

    Returns:
        The pairs (status done or skipped), the problems, the file lists, the patient count and the seconds taken.

    Raises:
        InputError: bad options or link.csv.
        FileNotFoundError: link.csv or a folder is missing.
    """
    started = time.perf_counter()
    kinds = parse_kinds(kinds)
    if fmt not in FORMATS:
        raise InputError(f"contours: format {fmt!r}: choose {' or '.join(FORMATS)}")
    fmt = Format(fmt)
    link, dicom_dir, contour_dir, out = (os.path.abspath(os.fspath(p)) for p in (link, dicom_dir, contour_dir, out))
    for name, folder in (("DICOM", dicom_dir), ("contour", contour_dir)):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{folder}: {name} folder not found")
    tasks, problems = link_tasks(read_link(link), link, dicom_dir, contour_dir, out, kinds, fmt, overlay, overwrite)
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
    write_lines(os.path.join(out, "filelist.txt"), files)
    if overlay:
        write_lines(os.path.join(out, "overlays", "filelist.txt"), overlays)
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


def run_patient(task: PatientTask) -> PatientOutcome:
    """Pair, fill and write one patient's contours; never raises for bad input (it becomes a Problem)."""
    started = time.perf_counter()
    outcome = PatientOutcome()
    try:
        candidates = find_candidates(task, outcome.problems)
        if candidates:
            if task.fmt == Format.NPZ:
                write_npz_pairs(task, candidates, outcome)
            else:
                write_zarr_patient(task, candidates, outcome)
    except Exception as exc:  # a bug or an unexpected I/O failure: the batch goes on, the patient is reported
        log.debug("contours: patient %s failed", task.key, exc_info=True)
        outcome.problems.append(Problem(task.key, "write_error", task.dicom_folder,
                                        f"{task.dicom_folder}: {type(exc).__name__}: {exc}"))
    outcome.seconds = time.perf_counter() - started
    return outcome
