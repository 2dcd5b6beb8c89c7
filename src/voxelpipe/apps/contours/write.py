"""Writing contour pairs: one ``.npz`` per pair, or one Zarr group per patient (through ``voxelpipe.stores``), each
published atomically; a complete output for the current input is kept unless ``overwrite``.

npz (``<patient_key>/<NNNN>.npz``): ``image`` (rows, columns) as stored, ``mask_<kind>`` uint8 (rows, columns),
``meta_json``. Zarr (``<patient_key>.zarr``): ``image`` (image, row, column), ``masks/<kind>`` uint8 of the same
shape, ``instance_numbers`` int32 (image), ``has_<kind>`` bool (image), the pairs' meta in the attributes.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np

from voxelpipe._version import __version__
from voxelpipe.apps.contours.fill import build_pair
from voxelpipe.apps.contours.overlay import needs_overlay, overlay_rel, write_overlay
from voxelpipe.apps.contours.records import (
    Candidate,
    Pair,
    PairData,
    PatientOutcome,
    PatientTask,
    Problem,
)
from voxelpipe.core.types import Status
from voxelpipe.stores.npz_store import write_npz
from voxelpipe.stores.zarr_store import atomic_group, open_volume_group, put_array

__all__ = [
    "ZARR_CLEVEL",
    "ZARR_LAYOUT",
    "npz_complete",
    "same_shape",
    "write_npz_pairs",
    "write_zarr",
    "write_zarr_patient",
    "zarr_complete",
]

ZARR_CLEVEL = 5
ZARR_LAYOUT = "voxelpipe contours 1"
AXES = ("image", "row", "column")


def _status(done: bool) -> Status:
    return Status.DONE if done else Status.SKIPPED


def npz_complete(path: str, kinds: tuple[str, ...]) -> bool:
    """An npz with image, meta_json and exactly a mask for each of ``kinds`` (reads only its zip directory)."""
    try:
        with np.load(path) as data:
            names = set(data.files)
    except Exception:  # absent, truncated, not a zip: not complete
        return False
    masks = {n for n in names if n.startswith("mask_")}
    return {"image", "meta_json"} <= names and masks == {f"mask_{k}" for k in kinds}


def write_npz_pairs(task: PatientTask, candidates: list[Candidate], outcome: PatientOutcome) -> None:
    """Write (or keep) one npz and, when asked, one overlay per candidate; pairs and problems go to ``outcome``."""
    for cand in candidates:
        rel = f"{task.key}/{cand.instance_number:04d}.npz"
        path = os.path.join(task.out, rel)
        kinds = tuple(cand.polygons)
        overlay = overlay_rel(task, cand.instance_number)
        need_data = task.overwrite or not npz_complete(path, kinds)
        need_overlay = needs_overlay(task, overlay)
        if need_data or need_overlay:
            data = build_pair(task, cand, outcome.problems)
            if data is None:
                continue
            if need_data:
                write_npz(path, {"image": data.image, **{f"mask_{k}": m for k, m in data.masks.items()},
                                 "meta_json": np.array(json.dumps(data.meta))})
            if need_overlay:
                write_overlay(task, data, overlay)
        outcome.pairs.append(Pair(task.key, cand.instance_number, kinds, rel, _status(need_data), overlay,
                                  _status(need_overlay) if overlay else ""))


def zarr_complete(path: str, candidates: list[Candidate], kinds: tuple[str, ...]) -> bool:
    """A Zarr group holding exactly the candidates' instance numbers, with the same kinds per image."""
    if not os.path.isdir(path):
        return False
    try:
        group = open_volume_group(path)
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
    except Exception:  # unreadable or partial group: not complete
        return False


def write_zarr_patient(task: PatientTask, candidates: list[Candidate], outcome: PatientOutcome) -> None:
    """Write (or keep) the patient's Zarr group and, when asked, one overlay per candidate; pairs and problems go
    to ``outcome``."""
    rel = f"{task.key}.zarr"
    path = os.path.join(task.out, rel)
    data_done = not task.overwrite and zarr_complete(path, candidates, task.kinds)
    built: list[tuple[Candidate, PairData | None]] = []
    for cand in candidates:
        overlay = overlay_rel(task, cand.instance_number)
        need_overlay = needs_overlay(task, overlay)
        if data_done and not need_overlay:
            built.append((cand, None))
            continue
        data = build_pair(task, cand, outcome.problems)
        if data is None:
            continue
        if need_overlay:
            write_overlay(task, data, overlay)
        built.append((cand, None if data_done else data))
        cand.overlay_done = need_overlay
    if not data_done:
        built = same_shape(task, built, outcome.problems)
        if built:
            write_zarr(path, task, [data for _, data in built])
    for cand, _ in built:
        overlay = overlay_rel(task, cand.instance_number)
        outcome.pairs.append(Pair(task.key, cand.instance_number, tuple(cand.polygons), rel, _status(not data_done),
                                  overlay, _status(cand.overlay_done) if overlay else ""))


def same_shape(task: PatientTask, built: list[tuple[Candidate, PairData]], problems: list[Problem]
               ) -> list[tuple[Candidate, PairData]]:
    """Keep the images of the patient's most common (shape, dtype); the others become problems (one Zarr group
    holds one grid)."""
    if not built:
        return built
    counts: dict[tuple, int] = defaultdict(int)
    for _, data in built:
        counts[(data.image.shape, data.image.dtype.str)] += 1
    common = max(counts, key=lambda k: counts[k])
    kept = []
    for cand, data in built:
        if (data.image.shape, data.image.dtype.str) == common:
            kept.append((cand, data))
        else:
            problems.append(Problem(task.key, "image_error", cand.dicom_path, f"{cand.dicom_path}: image "
                                    f"{data.image.shape} {data.image.dtype} differs from the patient's other images "
                                    f"{common[0]} {np.dtype(common[1])}; one Zarr group needs one grid",
                                    instance_number=cand.instance_number))
    return kept


def write_zarr(path: str, task: PatientTask, items: list[PairData]) -> None:
    """One Zarr group per patient (all ``items`` of one shape and dtype), written as ``<path>.partial`` and
    published in place of any earlier group."""
    n = len(items)
    rows, cols = items[0].image.shape
    attrs = {"patient_key": task.key, "kinds": list(task.kinds), "format": ZARR_LAYOUT,
             "voxelpipe_version": __version__, "pairs": [item.meta for item in items]}
    with atomic_group(path, attrs) as group:
        put_array(group, "image", np.stack([item.image for item in items]), chunks=(1, rows, cols),
                  clevel=ZARR_CLEVEL, dimension_names=AXES)
        numbers = np.array([item.meta["instance_number"] for item in items], dtype=np.int32)
        put_array(group, "instance_numbers", numbers, clevel=ZARR_CLEVEL)
        masks_group = group.require_group("masks")
        for kind in task.kinds:
            has = np.array([kind in item.masks for item in items], dtype=bool)
            put_array(group, f"has_{kind}", has, clevel=ZARR_CLEVEL)
            stack = np.zeros((n, rows, cols), np.uint8)
            for index, item in enumerate(items):
                if kind in item.masks:
                    stack[index] = item.masks[kind]
            put_array(masks_group, kind, stack, chunks=(1, rows, cols), clevel=ZARR_CLEVEL, dimension_names=AXES)
