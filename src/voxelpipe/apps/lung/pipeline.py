"""`lung`: lung CT preprocessing (Kaggle Data Science Bowl 2017 style) as one command.

``python -m voxelpipe lung (DIR ... | --manifest CSV) --out ROOT [--spacing S0,S1,S2] [--model module:function]``

Per CT series (one worker task each; ``<tag>`` = the spacing, e.g. ``2x2x2``)::

    ROOT/stage1_<tag>/<id>.npz                 HU resampled to the spacing (linear, field of view kept), int16
    ROOT/stage1_segmented_<tag>/<id>.npz       lung mask (voxelpipe.apps.lung.segment.segment_lungs) on that grid,
                                               uint8 0/1
    ROOT/stage1_segmented_<tag>_crop/<id>.npz  HU and mask cropped to the lungs' box + 10 mm (also ``mask``, ``box``)
    ROOT/nodules/<id>.json, <id>.csv           per-series cache: figures + features (json), nodule rows (csv, last)
    ROOT/nodules.csv                           every nodule of every complete series in ROOT (patient column first)
    ROOT/patient_features.csv                  one row per complete series: count, largest diameter, volumes, ...
    ROOT/summary.csv                           this run: one row per series (done / skipped / failed, reason)

Every npz holds ``array``, ``spacing``, ``origin``, ``direction``, ``affine``, ``slice_positions`` and
``geometry_json`` (``Geometry.to_attrs()`` as JSON): index (i, j, k) of ``array`` lies at LPS
``affine @ (i, j, k, 1)``. The crop's box is ``box`` = [[start, stop] per axis] in the uncropped grid.

Series: DIR inputs are scanned (``voxelpipe.scan``); ``--manifest`` reads scan's ``series_all.csv`` (or a shard)
and ``series_files.csv``. Only axial CT volumes with at least ``MIN_SLICES`` slices are processed; other series
(other modalities, localizers only, 4-D, coronal/sagittal reconstructions, too few slices) get a ``skipped`` row
with the reason; image files the scan could not use get a ``failed`` row for their folder when that folder gave
no series at all, else a ``skipped`` row.

Ids: the patient is the DIR's basename when the series' files lie directly in DIR, else the series' top folder
under DIR (DIR holding one folder per patient); with ``--manifest`` it is the PatientID (DICOM header of the
series' first file; its folder name when empty). Characters outside ``[A-Za-z0-9._-]`` become ``_``. With
``--pseudonymise`` the id is ``keys.series_key(patient)`` (HMAC-SHA-256 with ``VOXELPIPE_KEY_SECRET``; plain
SHA-256 without it -- a warning says so), and no folder name or path is written anywhere in ROOT. A patient with
several CT series gets one output per series: id = patient + ``_`` + the first 8 characters of the series key
(plus the part number of a series the scan split).

Resume: a series is complete when its three npz files, ``nodules/<id>.json`` written with the same spacing,
model and threshold, and ``nodules/<id>.csv`` (written last) exist; a rerun keeps it (status ``skipped``, reason
``already complete``) unless ``overwrite``. Every file is written under a temporary name and renamed.
``nodules.csv`` and ``patient_features.csv`` are rebuilt on every run from the per-series caches of every complete
series in ROOT, so runs over different inputs (or shards) into one ROOT add up; use one ROOT per
spacing/model/threshold.

Output voxels of the resampled grid whose centre lies outside the input's voxel centres (the outer half input voxel
of a refined axis) take the value of the nearest inside voxel along that axis (edge extension, as SimpleITK does):
a fill with air there would put an air slab on the first/last slice, and lungs cut by the scan's first or last
slice would then touch "outside air" and be removed.

The built-in model (``--model`` not given) is ``voxelpipe.apps.lung.nodules.blob_model`` called with the pipeline's
cropped lung mask; a user model ``module:function`` is loaded in the worker and called as ``f(hu_crop float32,
geometry_crop)``; connected components of its map >= ``threshold`` are the nodules (``nodules.find_nodules``).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pydicom

from voxelpipe.apps.lung.nodules import (
    NODULE_COLUMNS,
    PATIENT_FEATURE_COLUMNS,
    Model,
    blob_model,
    find_nodules,
    load_model,
    patient_features,
)
from voxelpipe.apps.lung.segment import crop, lung_box, segment_lungs
from voxelpipe.core import defaults
from voxelpipe.core.errors import InputError
from voxelpipe.core.geometry import Geometry
from voxelpipe.core.keys import check_series_key, series_key
from voxelpipe.core.progress import Progress
from voxelpipe.core.rows import ALREADY_COMPLETE, done_row, failed_row, lost_row, skipped_row, warn_if_failed
from voxelpipe.core.types import Status
from voxelpipe.core.volume import Volume
from voxelpipe.dicom.files import iter_files
from voxelpipe.execution import check_executor, default_workers, imap
from voxelpipe.ops.resample import resample
from voxelpipe.pipelines.convert import load_manifest
from voxelpipe.pipelines.scan import scan
from voxelpipe.pipelines.series_read import read_series
from voxelpipe.stores.tables import atomic_path, read_csv, write_csv

log = logging.getLogger("voxelpipe")

__all__ = ["run_lung", "stage_dirs", "SUMMARY_COLUMNS", "MIN_SLICES"]

MIN_SLICES = 10  # fewer slices than this is not a chest CT volume
SCAN_POOL_FILES = 1000  # fewer files than this are scanned in this process
SHORT_KEY = 8  # characters of the series key added to the id of a patient with several CT series
SUMMARY_COLUMNS = ["id", "series_key", "status", "reason", "source", "modality", "n_slices", "shape_in",
                   "spacing_in", "shape", "lung_volume_ml", "crop_shape", "n_nodules", "largest_diameter_mm",
                   "seconds", "t_read", "t_resample", "t_segment", "t_crop", "t_model", "t_write"]
CACHE_COLUMNS = ["patient", "series_key"]


def _tag(spacing: Sequence[float]) -> str:
    return "x".join(f"{float(v):g}" for v in spacing)


def stage_dirs(root: str | os.PathLike, spacing: Sequence[float] = defaults.LUNG_SPACING) -> dict[str, str]:
    """The three stage folders of ``root`` for ``spacing``: keys ``resampled``, ``segmented``, ``crop``."""
    root, tag = os.fspath(root), _tag(spacing)
    return {"resampled": os.path.join(root, f"stage1_{tag}"),
            "segmented": os.path.join(root, f"stage1_segmented_{tag}"),
            "crop": os.path.join(root, f"stage1_segmented_{tag}_crop")}


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "unknown"


# ---------------------------------------------------------------------------------------------------------
# finding series
# ---------------------------------------------------------------------------------------------------------
@dataclass
class _Candidate:
    patient: str  # folder name or PatientID (before pseudonymisation)
    series_key: str
    source: str  # folder of the series' files
    row: dict
    paths: list[str] = field(default_factory=list)
    records: list | None = None


def _not_a_ct_volume(row: dict) -> str:
    """Why a series row is not processed ('' when it is an axial CT volume)."""
    modality = str(row.get("modality") or "")
    n = int(float(row.get("n_slices") or 0))
    if modality.upper() != "CT":
        return f"modality {modality or '?'}: not CT"
    if n == 0:
        return f"no image with geometry ({row.get('split_reason') or 'localizers only'})"
    frames = int(float(row.get("frames_per_position") or 1))
    if frames > 1:
        return f"{frames} images per position (4-D): not one CT volume"
    orientation = str(row.get("orientation") or "axial")
    if orientation != "axial":
        return f"{orientation} slices: the lung pipeline needs an axial CT"
    if n < MIN_SLICES:
        return f"{n} slices: too few for a chest CT volume (< {MIN_SLICES})"
    return ""


def _dir_patient(path: str, dirs: list[str]) -> tuple[str, str]:
    """(input DIR, patient name) of a file: DIR's basename when the file lies directly in it, else its top folder
    under DIR."""
    path = os.path.abspath(path)
    best = ""
    for d in dirs:
        if (path == d or path.startswith(d.rstrip(os.sep) + os.sep)) and len(d) > len(best):
            best = d
    if not best:
        return "", os.path.basename(os.path.dirname(path))
    rel = os.path.relpath(os.path.dirname(path), best)
    if rel in (".", ""):
        return best, os.path.basename(best.rstrip(os.sep)) or "root"
    return best, rel.split(os.sep)[0]


def _from_dirs(dirs: Sequence[str], workers: int, progress: bool) -> tuple[list[_Candidate], list[dict]]:
    dirs = [os.path.abspath(os.fspath(d)) for d in dirs]
    for d in dirs:
        if not os.path.exists(d):
            raise InputError(f"{d}: no such folder")
    # a pool costs seconds to start; headers of a few hundred files take a fraction of that in this process
    n_files = sum(1 for _ in iter_files(dirs))
    result = scan(dirs, out=None, workers=workers if n_files >= SCAN_POOL_FILES else 1, progress=progress)
    candidates = []
    for row in result.series:
        key = row["series_key"]
        records = result.records.get(key) or []
        paths = [r.path for r in records] or [f["path"] for f in result.series_files if f["series_key"] == key]
        first = paths[0] if paths else ""
        _, patient = _dir_patient(first, dirs) if first else ("", "unknown")
        candidates.append(_Candidate(patient, key, os.path.dirname(os.path.abspath(first)) if first else "", row,
                                     paths, records or None))
    # image files the scan could not use (no geometry, unreadable, ...): one row per folder and kind
    unusable: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for entry in result.unreadable:
        if entry.get("kind") == "not_dicom":
            continue
        _, patient = _dir_patient(entry["path"], dirs)
        unusable[(patient, entry.get("kind", ""))].append(entry)
    with_series = {c.patient for c in candidates}
    problems = []
    for (patient, kind), entries in sorted(unusable.items()):
        first = entries[0]
        base = {"patient": patient, "series_key": "", "source": os.path.dirname(os.path.abspath(first["path"]))}
        reason = f"{len(entries)} DICOM file(s) not usable ({kind}), e.g. {first['path']}: {first.get('reason', '')}"
        problems.append(skipped_row(base, reason) if patient in with_series else failed_row(base, reason))
    return candidates, problems


def _patient_id_of(path: str) -> str:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
        return str(ds.get("PatientID", "") or "").strip()
    except Exception:  # noqa: BLE001 - unreadable: the worker reports it
        return ""


def _from_manifest(manifest: str) -> list[_Candidate]:
    rows, files = load_manifest(os.fspath(manifest))
    candidates = []
    for number, row in enumerate(rows, start=1):  # a key names output files: an edited one is refused
        key = check_series_key(row.get("series_key") or "", f"{manifest}, row {number}")
        paths = files.get(key, [])
        patient = ""
        if paths and not _not_a_ct_volume(row):
            patient = _patient_id_of(paths[0]) or os.path.basename(os.path.dirname(os.path.abspath(paths[0])))
        candidates.append(_Candidate(patient or "unknown", key,
                                     os.path.dirname(os.path.abspath(paths[0])) if paths else "", row, paths))
    return candidates


def _assign_ids(candidates: list[_Candidate], pseudonymise: bool) -> dict[str, str]:
    """series key -> output id (see the module docstring)."""
    base = {c.series_key: (series_key(c.patient) if pseudonymise else _safe(c.patient)) for c in candidates}
    count = defaultdict(int)
    for c in candidates:
        count[base[c.series_key]] += 1
    ids = {}
    for c in candidates:
        b = base[c.series_key]
        if count[b] > 1:
            head, _, part = c.series_key.partition("_")
            b = f"{b}_{head[:SHORT_KEY]}" + (f"_{part}" if part else "")
        ids[c.series_key] = b
    return ids


# ---------------------------------------------------------------------------------------------------------
# the worker
# ---------------------------------------------------------------------------------------------------------
@dataclass
class _Task:
    id: str
    series_key: str
    paths: list[str]
    records: list | None
    root: str
    spacing: tuple[float, float, float]
    model: str | None
    threshold: float
    patient: str  # the value of the ``patient`` column (the id)
    source: str = ""


def _options(spacing, model, threshold) -> dict:
    return {"spacing": [float(v) for v in spacing], "model": model or "", "threshold": float(threshold)}


def _cache_paths(root: str, id_: str) -> tuple[str, str]:
    folder = os.path.join(root, "nodules")
    return os.path.join(folder, f"{id_}.json"), os.path.join(folder, f"{id_}.csv")


def _outputs(root: str, spacing, id_: str) -> list[str]:
    return [os.path.join(d, f"{id_}.npz") for d in stage_dirs(root, spacing).values()]


def _complete(root: str, spacing, id_: str, options: dict) -> bool:
    meta, rows = _cache_paths(root, id_)
    if not all(os.path.isfile(p) for p in [*_outputs(root, spacing, id_), meta, rows]):
        return False
    try:
        with open(meta, encoding="utf-8") as fh:
            return json.load(fh).get("options") == options
    except (OSError, ValueError):
        return False


def _geometry_arrays(geometry: Geometry) -> dict[str, np.ndarray]:
    return {"spacing": np.asarray(geometry.spacing, np.float64), "origin": np.asarray(geometry.origin, np.float64),
            "direction": np.asarray(geometry.direction, np.float64),
            "affine": np.asarray(geometry.affine, np.float64),
            "slice_positions": np.asarray(geometry.slice_positions, np.float64),
            "geometry_json": np.array(json.dumps(geometry.to_attrs()))}


def _save_npz(path: str, **arrays) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def _write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)


def _nodule_columns(rows: list[dict]) -> list[str]:
    columns = CACHE_COLUMNS + list(NODULE_COLUMNS)
    for row in rows:
        columns += [k for k in row if k not in columns]
    return columns


@functools.lru_cache(maxsize=4)
def _user_model(spec: str) -> Model:
    return load_model(spec)


def _extend_edges(array: np.ndarray, in_geometry: Geometry, out_geometry: Geometry) -> np.ndarray:
    """In place: along each axis, output slabs whose input index lies outside [0, n_in - 1] copy the nearest
    slab inside (``resample``'s convention: output index o reads input index scale·o + (scale - 1)/2 with
    scale = new spacing / input spacing)."""
    in_shape = in_geometry.shape
    scales = np.asarray(out_geometry.spacing, np.float64) / np.asarray(in_geometry.spacing, np.float64)
    for axis in range(3):
        scale, n_out = float(scales[axis]), array.shape[axis]
        offset = (scale - 1.0) / 2.0
        if scale <= 0:
            continue
        lo = max(0, int(np.ceil((0.0 - offset) / scale - 1e-9)))
        hi = min(n_out - 1, int(np.floor((in_shape[axis] - 1 - offset) / scale + 1e-9)))
        if lo > hi:
            continue
        view = np.moveaxis(array, axis, 0)
        if lo > 0:
            view[:lo] = view[lo]
        if hi < n_out - 1:
            view[hi + 1:] = view[hi]
    return array


def _to_hu16(array: np.ndarray) -> np.ndarray:
    out = np.rint(array)
    np.clip(out, -32768, 32767, out=out)
    return out.astype(np.int16)


def _base(task: _Task) -> dict:
    """The summary row of ``task`` before its work (no status yet)."""
    return {"id": task.id, "series_key": task.series_key, "reason": "", "source": task.source}


def _lost(task: _Task, exc: Exception) -> dict:
    """The row of a task that never returned its own (its worker died, the cluster lost it)."""
    return lost_row(_base(task), exc)


def _work(task: _Task) -> dict:
    """Worker: one series from DICOM files to the three npz files and the nodule cache; never raises."""
    started = time.perf_counter()
    status = _base(task)
    clock = started

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        status[name] = round(now - clock, 3)
        clock = now

    try:
        meta_path, rows_path = _cache_paths(task.root, task.id)
        if os.path.exists(rows_path):  # redoing: the old outputs stop counting as complete first
            os.remove(rows_path)
        volume = read_series(task.paths, task.records)
        array = np.asarray(volume.array)
        if array.ndim != 3:
            raise InputError(f"series is not one 3-D volume (array shape {array.shape})")
        status.update(modality=volume.attrs.get("modality", ""), n_slices=array.shape[0],
                      shape_in="x".join(map(str, array.shape)),
                      spacing_in="x".join(f"{v:.4g}" for v in volume.geometry.spacing))
        lap("t_read")
        resampled = resample(volume, spacing=task.spacing, order="linear", fill=-1024.0)
        geometry = resampled.geometry
        hu = _extend_edges(_to_hu16(np.asarray(resampled.array)), volume.geometry, geometry)
        del volume, array, resampled
        lap("t_resample")
        mask = np.asarray(segment_lungs(hu, geometry.spacing), dtype=np.uint8)
        voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
        lung_ml = float(np.count_nonzero(mask)) * voxel_ml
        if not mask.any():
            raise InputError("no lungs found (is this a chest CT?)")
        lap("t_segment")
        box = tuple(lung_box(mask, geometry.spacing))
        hu_crop = crop(Volume(hu, geometry), box)
        mask_crop = np.asarray(crop(Volume(mask, geometry), box).array)
        hu_c = np.ascontiguousarray(hu_crop.array)
        box_array = np.array([[s.start, s.stop] for s in box], dtype=np.int64)
        lap("t_crop")
        if task.model:
            model = _user_model(task.model)
        else:
            model = Model(functools.partial(blob_model, lung_mask=mask_crop), "voxelpipe.apps.lung.nodules:blob_model")
        hu_f = hu_c.astype(np.float32)
        prob = model(hu_f, hu_crop.geometry)
        nodules = find_nodules(prob, hu_f, hu_crop.geometry, threshold=task.threshold)
        features = patient_features(nodules)
        lap("t_model")
        paths = _outputs(task.root, task.spacing, task.id)
        _save_npz(paths[0], array=hu, **_geometry_arrays(geometry))
        _save_npz(paths[1], array=mask, **_geometry_arrays(geometry))
        _save_npz(paths[2], array=hu_c, mask=np.ascontiguousarray(mask_crop), box=box_array,
                  **_geometry_arrays(hu_crop.geometry))
        rows = [{"patient": task.patient, "series_key": task.series_key, **n} for n in nodules]
        figures = {"lung_volume_ml": round(lung_ml, 2), "shape": "x".join(map(str, hu.shape)),
                   "crop_shape": "x".join(map(str, hu_c.shape)), "box": box_array.tolist()}
        meta = {"id": task.id, "patient": task.patient, "series_key": task.series_key,
                "options": _options(task.spacing, task.model, task.threshold), "features": features,
                "figures": figures, "nodule_columns": _nodule_columns(rows)}
        _write_text(meta_path, json.dumps(meta, indent=1, default=float) + "\n")
        write_csv(rows_path, rows, _nodule_columns(rows))  # last: marks the series complete
        lap("t_write")
        status = done_row(status, shape=figures["shape"], lung_volume_ml=figures["lung_volume_ml"],
                          crop_shape=figures["crop_shape"], n_nodules=features.get("n_nodules", len(nodules)),
                          largest_diameter_mm=_round(features.get("largest_diameter_mm")))
    except Exception as exc:  # noqa: BLE001 - one task's failure never stops the batch
        status = failed_row(status, exc)
    status["seconds"] = round(time.perf_counter() - started, 3)
    return status


def _round(value, digits: int = 2):
    try:
        return round(float(value), digits)
    except (TypeError, ValueError):
        return ""


# ---------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------
def _kept_row(task: _Task) -> dict:
    meta_path, _ = _cache_paths(task.root, task.id)
    with open(meta_path, encoding="utf-8") as fh:
        meta = json.load(fh)
    figures, features = meta.get("figures", {}), meta.get("features", {})
    return skipped_row(_base(task), ALREADY_COMPLETE, shape=figures.get("shape", ""),
                       lung_volume_ml=figures.get("lung_volume_ml", ""), crop_shape=figures.get("crop_shape", ""),
                       n_nodules=features.get("n_nodules", ""),
                       largest_diameter_mm=_round(features.get("largest_diameter_mm")))


def _rebuild_tables(root: str) -> tuple[int, int]:
    """nodules.csv and patient_features.csv from the caches of every complete series in ROOT."""
    folder = os.path.join(root, "nodules")
    names = sorted(n[:-4] for n in os.listdir(folder) if n.endswith(".csv")) if os.path.isdir(folder) else []
    nodules, patients, columns = [], [], _nodule_columns([])
    for id_ in names:
        meta_path, rows_path = _cache_paths(root, id_)
        try:
            with open(meta_path, encoding="utf-8") as fh:
                meta = json.load(fh)
            rows = read_csv(rows_path)
        except (OSError, ValueError):
            continue
        for row in rows:
            columns += [k for k in row if k not in columns]
        nodules += rows
        patients.append({"patient": meta.get("patient", id_), "series_key": meta.get("series_key", ""),
                         **meta.get("features", {}),
                         "lung_volume_ml": meta.get("figures", {}).get("lung_volume_ml", "")})
    write_csv(os.path.join(root, "nodules.csv"), nodules, columns)
    write_csv(os.path.join(root, "patient_features.csv"), patients,
              CACHE_COLUMNS + list(PATIENT_FEATURE_COLUMNS) + ["lung_volume_ml"])
    return len(nodules), len(patients)


def _scrub(rows: list[dict], secrets: list[str]) -> None:
    """Pseudonymised runs: no folder name or path in the summary."""
    secrets = sorted({s for s in secrets if s and len(s) > 2}, key=len, reverse=True)
    paths = re.compile("|".join(re.escape(s) + r"[^\s:,;'\"]*" for s in secrets if os.path.isabs(s)) or "(?!)")
    for row in rows:
        row["source"] = ""
        text = paths.sub("<input file>", str(row.get("reason") or ""))
        for s in secrets:
            text = text.replace(s, "<input>")
        row["reason"] = text


def run_lung(dirs: Sequence[str | os.PathLike] | None = None, out: str | os.PathLike = "voxelpipe-lung",
             manifest: str | os.PathLike | None = None, spacing: Sequence[float] = defaults.LUNG_SPACING,
             model: str | None = None, threshold: float = defaults.LUNG_THRESHOLD, pseudonymise: bool = False,
             overwrite: bool = False,
             workers: int | None = None, progress: bool = True, executor: str = defaults.EXECUTOR,
             scheduler: str | None = None) -> list[dict]:
    """Run the lung pipeline over DICOM folders ``dirs`` or a scan ``manifest`` into ``out`` (see the module
    docstring). Returns this run's summary rows (``SUMMARY_COLUMNS``; status done / skipped (not a CT volume, or
    already complete) / failed), also written to ``out/summary.csv``. A failing series never stops the others.
    ``executor``/``scheduler``: where the per-series tasks run (:func:`voxelpipe.execution.imap`)."""
    check_executor(executor, scheduler)
    if isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    dirs = [os.fspath(d) for d in (dirs or [])]
    if bool(dirs) == (manifest is not None):
        raise InputError("give DICOM folders or --manifest (not both)")
    spacing = tuple(float(v) for v in spacing)
    if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise InputError(f"spacing must be 3 numbers > 0 mm, got {spacing!r}")
    threshold = float(threshold)
    if not np.isfinite(threshold):
        raise InputError(f"threshold must be a finite number, got {threshold!r}")
    model = model.strip() if isinstance(model, str) and model.strip() else None
    if model is not None and ":" not in model:
        raise InputError(f"nodule model {model!r}: expected 'module:function'")
    if pseudonymise and not os.environ.get("VOXELPIPE_KEY_SECRET"):
        log.warning("lung: --pseudonymise without VOXELPIPE_KEY_SECRET: ids are plain SHA-256 of the patient "
                    "names, which anyone with a list of names can recompute")
    root = os.path.abspath(os.fspath(out))
    workers = default_workers() if workers is None else max(1, int(workers))

    rows: list[dict] = []
    if dirs:
        candidates, problems = _from_dirs(dirs, workers, progress)
    else:
        candidates, problems = _from_manifest(os.fspath(manifest)), []
    usable = []
    for c in candidates:
        why = _not_a_ct_volume(c.row)
        if not why and not c.paths:
            why = "no files listed for the series"
        if why:
            rows.append(skipped_row({"id": "", "series_key": c.series_key, "source": c.source}, why,
                                    modality=c.row.get("modality", ""), n_slices=c.row.get("n_slices", "")))
        else:
            usable.append(c)
    ids = _assign_ids(usable, pseudonymise)
    names = [c.patient for c in candidates] + [p["patient"] for p in problems]
    if pseudonymise:
        for p in problems:
            p["id"] = series_key(p.pop("patient"))
    else:
        for p in problems:
            p["id"] = _safe(p.pop("patient"))
    rows += problems

    options = _options(spacing, model, threshold)
    for d in stage_dirs(root, spacing).values():
        os.makedirs(d, exist_ok=True)
    os.makedirs(os.path.join(root, "nodules"), exist_ok=True)
    todo = []
    for c in usable:
        id_ = ids[c.series_key]
        task = _Task(id_, c.series_key, c.paths, c.records, root, spacing, model, threshold, id_, c.source)
        if not overwrite and _complete(root, spacing, id_, options):
            try:
                rows.append(_kept_row(task))
                continue
            except (OSError, ValueError):
                pass
        todo.append(task)
    workers = min(workers, max(1, len(todo)))
    kept = sum(r["status"] == Status.SKIPPED and r["reason"] == ALREADY_COMPLETE for r in rows)
    log.info("lung: %d series to do, %d already complete, %d skipped/unusable, %d worker(s) -> %s", len(todo),
             kept, len(rows) - kept, workers, root)
    bar = Progress(len(todo), "lung", unit="series", enabled=progress)
    try:
        for status in imap(_work, todo, workers, executor=executor, scheduler=scheduler, on_error=_lost):
            warn_if_failed(status, "lung", "id")
            rows.append(status)
            bar.update()
    finally:
        bar.close()
    if pseudonymise:
        _scrub(rows, [os.path.abspath(d) for d in dirs] + [os.fspath(d) for d in dirs]
               + names + [c.source for c in candidates]
               + ([os.fspath(manifest), os.path.abspath(os.fspath(manifest))] if manifest else []))
    write_csv(os.path.join(root, "summary.csv"), rows, SUMMARY_COLUMNS)
    _rebuild_tables(root)
    return rows
