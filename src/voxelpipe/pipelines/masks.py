"""`masks`: rasterise RTSTRUCT and SEG objects onto converted volumes as NGFF labels ``labels/<name>`` (uint8
arrays; Zarr volumes) or ``<key>_<name>.nii.gz`` label files beside a NIfTI volume (``.nii`` beside a ``.nii``),
with the volume's header geometry.

Two forms::

    python -m voxelpipe masks --volume OUT/data/<key>.zarr (--rtstruct FILE | --seg FILE) [--roi NAME ...]
    python -m voxelpipe masks --manifest SCAN_DIR_or_objects.csv --out CONVERT_OUT [--roi NAME ...]

The manifest form takes every RTSTRUCT / SEG row of scan's ``objects.csv`` and puts it onto the volume of each
series it references (``referenced_series_keys``) found as ``OUT/data/<key>.zarr`` (``.zarr.zip``,
``.zarr.sqlite``, ``.nii.gz``, ``.nii``). Objects are grouped by volume, one volume per task (so each volume has
exactly one writer), tasks run in the process pool of :mod:`voxelpipe.execution.pool`; one bad object or volume
never stops the batch.

Every ROI / segment gets a report row (``REPORT_COLUMNS``; status ``done`` for a mask written (``voxels`` 0 for
an empty one), ``skipped`` for an ROI without a mask or an object without a volume, ``failed``; why in ``note``),
built here from the parsers' plain :class:`~voxelpipe.core.masks.PlacedRoi` results, written as CSV
(``--report``; default ``masks_report.csv`` in the convert output folder, i.e. beside the volume's ``data``
folder). Rows of an earlier report for other volumes or objects are kept; rows for the same volume and object
are replaced, like the masks themselves. Errors about the request itself (no such volume, a ``--roi`` name the
file does not have, a file that is not an RTSTRUCT / SEG, another frame of reference) stop the single-volume
form with the message; in the manifest form they become ``failed`` rows.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from voxelpipe.core import defaults
from voxelpipe.core.errors import InputError, RoiNotFoundError, VoxelpipeError, lost_task_reason
from voxelpipe.core.geometry import Geometry
from voxelpipe.core.masks import Mask, PlacedRoi
from voxelpipe.core.progress import Progress
from voxelpipe.core.rows import failed_row, skipped_row
from voxelpipe.core.types import Executor, Status
from voxelpipe.dicom.rtstruct import RTSTRUCT_SOP_CLASS, iter_rtstruct_masks
from voxelpipe.dicom.seg import SEG_SOP_CLASSES, read_seg_masks
from voxelpipe.execution import check_executor, default_workers, imap, init_worker, threads_per_worker
from voxelpipe.stores.lock import locks_output
from voxelpipe.stores.masks import write_masks
from voxelpipe.stores.nifti import write_nifti_masks
from voxelpipe.stores.registry import NIFTI_SUFFIXES
from voxelpipe.stores.tables import PATH_BYTES, read_csv, write_csv
from voxelpipe.stores.volumes import open_volume
from voxelpipe.stores.zarr_store import STORE_SUFFIXES

log = logging.getLogger("voxelpipe")

REPORT_COLUMNS = ["volume", "source", "source_kind", "roi_name", "mask_name", "roi_number", "status", "voxels",
                  "volume_ml", "contours", "contours_unmatched", "contours_skipped", "note"]
REPORT_NAME = "masks_report.csv"
MAX_PENDING_BYTES = 512 << 20  # masks held before they are written (a structure set with 50 ROIs on a big CT)


@dataclass
class MaskSource:
    kind: str  # RTSTRUCT | SEG
    path: str


@dataclass
class VolumeTask:
    """Everything a worker needs to put masks onto one volume (picklable)."""

    volume: str
    sources: list[MaskSource] = field(default_factory=list)
    rois: list[str] | None = None
    strict: bool = False  # single-volume form: errors reading an object propagate


def object_row(volume: str, source: str, kind: str) -> dict:
    """The report row of a whole object (no ROI): the base of its skipped and failed rows."""
    return {"volume": volume, "source": source, "source_kind": kind, "roi_name": "", "mask_name": "",
            "roi_number": "", "voxels": "", "volume_ml": "", "contours": "", "contours_unmatched": "",
            "contours_skipped": "", "note": ""}


def report_row(placed: PlacedRoi, volume: str = "") -> dict:
    """The report row (``REPORT_COLUMNS``) of one ROI / segment placed on ``volume``: status ``done`` when it got
    a mask (``voxels`` 0 for an empty one), else ``skipped``; the notes joined in ``note``."""
    def count(value: int | None) -> int | str:
        return "" if value is None else value

    return {"volume": volume, "source": placed.source, "source_kind": placed.source_kind,
            "roi_name": placed.roi_name, "mask_name": placed.mask_name, "roi_number": placed.roi_number,
            "status": Status.DONE if placed.mask is not None else Status.SKIPPED, "voxels": placed.voxels,
            "volume_ml": placed.volume_ml, "contours": count(placed.contours),
            "contours_unmatched": count(placed.contours_unmatched),
            "contours_skipped": count(placed.contours_skipped), "note": "; ".join(placed.notes)}


def report_rows(placed: Iterable[PlacedRoi], volume: str = "") -> list[dict]:
    """:func:`report_row` of every ROI / segment."""
    return [report_row(p, volume) for p in placed]


def load_slice_uids(volume_path: str | os.PathLike) -> list[str] | None:
    """SOPInstanceUID of every slice index of a converted volume (``OUT/data/<key>.zarr``, ``.zarr.zip``,
    ``.zarr.sqlite``, ``.npz``, ``.nii.gz`` or ``.nii``), from ``OUT/meta/<key>.slices.csv``; None when that file
    is absent.

    For a 4-D volume (repeated positions) the UIDs of the first frame (phase) are returned. A multi-frame
    source gives the same UID on several slices; such UIDs place nothing (ambiguous)."""
    path = os.fspath(volume_path).rstrip("/\\")
    folder, name = os.path.split(path)
    suffixes = sorted((*STORE_SUFFIXES.values(), ".npz", *NIFTI_SUFFIXES), key=len, reverse=True)
    key = next((name[: -len(s)] for s in suffixes if name.endswith(s)), None)
    if not key:
        return None
    meta = os.path.join(os.path.dirname(folder), "meta")
    slices_csv = os.path.join(meta, f"{key}.slices.csv")
    if not os.path.isfile(slices_csv):
        return None
    with open(slices_csv, newline="", encoding="utf-8", errors=PATH_BYTES) as fh:
        rows = list(csv.DictReader(fh))
    n_slices = len(rows)
    series_json = os.path.join(meta, f"{key}.series.json")
    if os.path.isfile(series_json):
        try:
            with open(series_json, encoding="utf-8") as fh:
                n_slices = int(json.load(fh)["shape"][0])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            pass
    uids = [""] * min(n_slices, len(rows))
    for position, row in enumerate(rows):
        index = int(row.get("index") or position)
        if index < len(uids):
            uids[index] = row.get("sop_instance_uid", "")
    return uids


def _check_zarr(path: str) -> None:
    if not path.endswith((*STORE_SUFFIXES.values(), *NIFTI_SUFFIXES)):
        raise InputError(f"{path}: masks are stored in converted Zarr volumes ("
                         f"{', '.join(STORE_SUFFIXES.values())}) or beside NIfTI volumes "
                         f"({', '.join(NIFTI_SUFFIXES)}); convert with --format zarr or nifti")
    if not os.path.exists(path):
        raise InputError(f"{path}: no such volume")


def _missing_names(placed: list[PlacedRoi], wanted: Sequence[str]) -> list[str]:
    have = {str(p.roi_name).strip().casefold() for p in placed} | {str(p.roi_number) for p in placed}
    return [w for w in dict.fromkeys(wanted) if str(w).strip().casefold() not in have]


def _read_source(task: VolumeTask, source: MaskSource, geometry: Geometry, frame_uid: str | None,
                 taken: set[str]) -> Iterator[PlacedRoi]:
    """Every ROI / segment of one object placed on the task's volume."""
    if source.kind == "RTSTRUCT":
        yield from iter_rtstruct_masks(source.path, geometry, task.rois, frame_of_reference_uid=frame_uid,
                                       taken=taken)
        return
    _, placed = read_seg_masks(source.path, geometry, slice_uids=load_slice_uids(task.volume),
                               segments=task.rois, frame_of_reference_uid=frame_uid, taken=taken)
    if task.rois:
        missing = _missing_names(placed, task.rois)
        if missing:
            raise RoiNotFoundError(source.path, missing, [p.roi_name for p in placed],
                                   where="SegmentSequence (0062,0002) SegmentLabel (0062,0005)")
    yield from placed


def _failed_rows(task: VolumeTask, problem: BaseException | str) -> list[dict]:
    """A failed report row for every source of ``task``."""
    return [failed_row(object_row(task.volume, os.path.abspath(s.path), s.kind), problem, key="note")
            for s in task.sources]


def _lost(task: VolumeTask, exc: Exception) -> list[dict]:
    """The rows of a volume whose task never returned its own (its worker died, the cluster lost it)."""
    log.warning("masks: %s: %s", task.volume, lost_task_reason(exc))
    return _failed_rows(task, lost_task_reason(exc))


def masks_for_volume(task: VolumeTask) -> list[dict]:
    """Rasterise every source of ``task`` onto its volume and write the masks; returns the report rows.

    Never raises for a bad object or volume unless ``task.strict`` (then errors reading an object propagate)."""
    rows: list[dict] = []
    try:
        _check_zarr(task.volume)
        volume = open_volume(task.volume)
    except (VoxelpipeError, OSError, ValueError, KeyError) as exc:
        if task.strict:
            raise
        return _failed_rows(task, f"volume unusable: {exc}")
    geometry = volume.geometry
    frame_uid = str(volume.attrs.get("frame_of_reference_uid", "") or "")
    if hasattr(volume.array, "store"):
        volume.array.store.close()  # only the geometry is needed; write_masks may replace the store file
    write = write_nifti_masks if task.volume.endswith(NIFTI_SUFFIXES) else write_masks
    taken: set[str] = set()
    pending: list[tuple[Mask, dict]] = []

    def flush() -> None:
        if not pending:
            return
        try:
            write(task.volume, [m for m, _ in pending])
        except (VoxelpipeError, OSError, ValueError) as exc:
            log.warning("masks: writing %d mask(s) into %s failed: %s", len(pending), task.volume, exc)
            for _, row in pending:
                row.update(failed_row(row, "; ".join(filter(None, [row["note"], f"not written: {exc}"])),
                                      key="note"))
        pending.clear()

    for source in task.sources:
        source_rows: list[dict] = []
        try:
            for placed in _read_source(task, source, geometry, frame_uid, taken):
                row = report_row(placed, task.volume)
                row["source"] = os.path.abspath(source.path)
                source_rows.append(row)
                if placed.mask is not None:
                    taken.add(placed.mask.name)
                    pending.append((placed.mask, row))
                    if sum(m.array.nbytes for m, _ in pending) >= MAX_PENDING_BYTES:
                        flush()
        except Exception as exc:  # one bad object never stops the others
            if task.strict and isinstance(exc, (VoxelpipeError, OSError)):
                raise
            known = isinstance(exc, (VoxelpipeError, OSError))
            reason = str(exc) if known else f"unexpected {type(exc).__name__}: {exc}"
            log.warning("masks: %s on %s failed: %s", source.path, task.volume, reason)
            mine = {id(r) for r in source_rows}
            lost = {id(r) for _, r in pending if id(r) in mine}  # read but not written: dropped
            pending[:] = [(m, r) for m, r in pending if id(r) not in mine]
            source_rows = [r for r in source_rows if id(r) not in lost]
            source_rows.append(failed_row(object_row(task.volume, os.path.abspath(source.path), source.kind),
                                          reason, key="note"))
        rows.extend(source_rows)
    flush()
    return rows


# ----------------------------------------------------------------------------------------------------------
# the two forms
# ----------------------------------------------------------------------------------------------------------
def add_masks(volume: str | os.PathLike, *, rtstruct: str | os.PathLike | None = None,
              seg: str | os.PathLike | None = None, rois: Sequence[str] | None = None,
              report: str | os.PathLike | None = None) -> list[dict]:
    """Rasterise one RTSTRUCT or SEG onto the converted volume ``volume`` and add the masks to it; returns the
    report rows (also written to ``report``, default ``masks_report.csv`` beside the volume's data folder)."""
    if (rtstruct is None) == (seg is None):
        raise InputError("give exactly one of rtstruct= (--rtstruct) or seg= (--seg) with a volume")
    volume = os.path.abspath(os.fspath(volume).rstrip("/\\"))
    source = MaskSource("RTSTRUCT", os.fspath(rtstruct)) if rtstruct is not None else MaskSource("SEG", os.fspath(seg))
    if not os.path.isfile(source.path):
        raise InputError(f"{source.path}: no such {source.kind} file")
    _check_zarr(volume)
    init_worker(threads_per_worker(1))  # this process does the work: every core for the kernel and Blosc
    rows = masks_for_volume(VolumeTask(volume, [source], list(rois) if rois else None, strict=True))
    write_report(os.fspath(report) if report else default_report(volume), rows)
    return rows


def default_report(volume: str) -> str:
    """``masks_report.csv`` in the convert output folder (the parent of ``data/``), else beside the volume."""
    folder = os.path.dirname(os.path.abspath(volume))
    if os.path.basename(folder) == "data":
        folder = os.path.dirname(folder)
    return os.path.join(folder, REPORT_NAME)


def load_objects(manifest: str | os.PathLike) -> tuple[str, list[dict]]:
    """The objects.csv of a scan folder (or the file itself) and its rows."""
    path = os.fspath(manifest)
    if os.path.isdir(path):
        path = os.path.join(path, "objects.csv")
    if not os.path.isfile(path):
        raise InputError(f"{path}: objects.csv not found (give scan's output folder or its objects.csv)")
    rows = read_csv(path)
    if rows and "referenced_series_keys" not in rows[0]:
        raise InputError(f"{path}: not scan's objects.csv (no referenced_series_keys column)")
    return path, rows


def object_kind(row: dict) -> str:
    """RTSTRUCT, SEG, or '' for other objects."""
    sop_class = row.get("sop_class_uid", "")
    modality = row.get("modality", "").upper()
    if sop_class == RTSTRUCT_SOP_CLASS or modality == "RTSTRUCT":
        return "RTSTRUCT"
    if sop_class in SEG_SOP_CLASSES or modality == "SEG":
        return "SEG"
    return ""


def find_volume(out: str, key: str) -> str | None:
    for suffix in (*STORE_SUFFIXES.values(), *NIFTI_SUFFIXES):
        path = os.path.join(out, "data", key + suffix)
        if os.path.exists(path):
            return path
    return None


def plan_manifest(manifest: str | os.PathLike, out: str | os.PathLike,
                  rois: Sequence[str] | None = None) -> tuple[list[VolumeTask], list[dict]]:
    """Tasks (one per volume, its objects in objects.csv order) and the rows of objects that reference no
    converted volume."""
    out = os.fspath(out)
    _, objects = load_objects(manifest)
    tasks: dict[str, VolumeTask] = {}
    rows: list[dict] = []
    for obj in objects:
        kind = object_kind(obj)
        if not kind:
            continue
        source = os.path.abspath(obj["path"])
        keys = [k for k in obj.get("referenced_series_keys", "").split(";") if k]
        if not keys:
            refs = obj.get("referenced_series_uids", "")
            rows.append(skipped_row(object_row("", source, kind), "references no series found by the scan"
                                    + (f" (ReferencedSeriesInstanceUID {refs})" if refs else " (no series reference)"),
                                    key="note"))
            continue
        for key in keys:
            volume = find_volume(os.path.abspath(out), key)
            if volume is None:
                other = [p for p in (os.path.join(out, "data", key + s) for s in (".npz", ".h5")) if os.path.exists(p)]
                rows.append(skipped_row(object_row("", source, kind),
                                        f"series {key} has no converted Zarr or NIfTI volume in "
                                        f"{os.path.join(out, 'data')}"
                                        + (f" (found {os.path.basename(other[0])}: masks need Zarr or NIfTI)"
                                           if other else ""),
                                        key="note"))
                continue
            task = tasks.setdefault(volume, VolumeTask(volume, [], list(rois) if rois else None))
            if all(s.path != source for s in task.sources):
                task.sources.append(MaskSource(kind, source))
    return [tasks[v] for v in sorted(tasks)], rows


@locks_output("masks")  # writes into the convert output folder: not beside a convert or another masks run
def add_masks_from_manifest(manifest: str | os.PathLike, out: str | os.PathLike, *,
                            rois: Sequence[str] | None = None, workers: int | None = None,
                            report: str | os.PathLike | None = None, progress: bool = True,
                            executor: str = defaults.EXECUTOR, scheduler: str | None = None) -> list[dict]:
    """Every RTSTRUCT / SEG of scan's objects.csv onto the converted volumes of the series it references (under
    ``out``); returns the report rows (also written to ``report``, default ``out/masks_report.csv``).
    ``executor``/``scheduler``: where the per-volume tasks run (:func:`voxelpipe.execution.imap`)."""
    check_executor(executor, scheduler)
    out = os.fspath(out)
    if not os.path.isdir(out):
        raise InputError(f"{out}: no such convert output folder")
    tasks, rows = plan_manifest(manifest, out, rois)
    workers = min(default_workers() if workers is None else max(1, workers), max(1, len(tasks)))
    if workers == 1 and executor == Executor.POOL:
        init_worker(threads_per_worker(1))
    log.info("masks: %d object(s) onto %d volume(s), %d worker(s)", sum(len(t.sources) for t in tasks),
             len(tasks), workers)
    with Progress(len(tasks), "masks", unit="volumes", enabled=progress) as bar:
        for result in imap(masks_for_volume, tasks, workers, executor=executor, scheduler=scheduler, on_error=_lost):
            rows.extend(result)
            bar.update()
    write_report(os.fspath(report) if report else os.path.join(out, REPORT_NAME), rows)
    return rows


def write_report(path: str, rows: list[dict]) -> None:
    """Write ``rows`` as CSV, atomically. Rows of an existing report are kept unless this run redid them: the
    same volume and object, the same volume and mask name (the mask was replaced), or an object that this run
    placed (rows without a volume: it found none before)."""
    kept: list[dict] = []
    if os.path.isfile(path):
        pairs = {(r["volume"], r["source"]) for r in rows}
        names = {(r["volume"], r["mask_name"]) for r in rows if r["mask_name"] and r["status"] != Status.FAILED}
        sources = {r["source"] for r in rows}
        try:
            old = read_csv(path)
        except (OSError, UnicodeDecodeError, ValueError):
            old = []
        kept = [r for r in old if (r.get("volume", ""), r.get("source", "")) not in pairs
                and (r.get("volume", ""), r.get("mask_name", "")) not in names
                and not (not r.get("volume") and r.get("source", "") in sources)]
    write_csv(path, kept + rows, REPORT_COLUMNS)


__all__ = ["add_masks", "add_masks_from_manifest", "masks_for_volume", "plan_manifest",
           "load_objects", "default_report", "write_report", "VolumeTask", "MaskSource", "REPORT_COLUMNS"]
