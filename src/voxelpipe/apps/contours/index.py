"""Pairing: the patients of ``link.csv`` as tasks, each patient's contour files by InstanceNumber and kind, its
DICOM images by InstanceNumber (read from the header, never from a file name), and the candidates (an image
with a parsed polygon for each contour kind found for it)."""
from __future__ import annotations

import os
from collections import defaultdict

import numpy as np

from voxelpipe.apps.contours.parse import CONTOUR_NAME, ContourParseError, read_contour
from voxelpipe.apps.contours.records import Candidate, PatientTask, Problem
from voxelpipe.core.errors import DicomReadError
from voxelpipe.core.keys import series_key
from voxelpipe.core.types import Format
from voxelpipe.dicom.files import read_header
from voxelpipe.dicom.flatten import column_name

__all__ = ["find_candidates", "find_contours", "index_images", "link_tasks"]

INSTANCE_NUMBER = 0x00200013


def link_tasks(rows: list[dict[str, str]], link: str, dicom_dir: str, contour_dir: str, out: str,
               kinds: tuple[str, ...], fmt: Format, overlay: bool, overwrite: bool
               ) -> tuple[list[PatientTask], list[Problem]]:
    """One task per usable row of ``link.csv``; bad rows, missing folders and contour folders the link does not
    name become problems."""
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


def find_contours(task: PatientTask, problems: list[Problem]) -> dict[int, dict[str, str]]:
    """InstanceNumber -> {kind: contour file}, in kind order; bad names and duplicates become problems (a
    duplicated instance is left out altogether)."""
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


def index_images(task: PatientTask, problems: list[Problem]) -> tuple[dict[int, str], dict[int, list[str]]]:
    """The patient's DICOM files by InstanceNumber (headers only, by the scan's fast header reader).

    Returns:
        ``(images, ambiguous)``: InstanceNumber -> the one file holding it, and InstanceNumber -> the files when
        several hold it. Files that are not DICOM or have no usable InstanceNumber become problems.
    """
    instance_column = column_name(INSTANCE_NUMBER)
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


def find_candidates(task: PatientTask, problems: list[Problem]) -> list[Candidate]:
    """The patient's images that have every contour found for them usable, in InstanceNumber order.

    A contour whose image is missing or ambiguous, or that cannot be parsed, becomes a problem, and its image is
    not a candidate at all (it could otherwise pass for an image without that contour).
    """
    key = task.key
    contours = find_contours(task, problems)
    if not contours:
        return []
    images, ambiguous = index_images(task, problems)
    candidates: list[Candidate] = []
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
            candidates.append(Candidate(instance, images[instance], dict(files), polygons))
    return candidates
