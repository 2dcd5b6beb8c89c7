"""`petct-index`: find the PET/CT studies of a project folder that have everything the PET/CT pipeline needs.

A project is ``PROJECT/<patient>/<study>/`` with DICOM series in the study folder or in sub-folders of it, at any
depth. Every study folder is scanned on its own (``voxelpipe.scan``; series are grouped within the folder) and
the four parts are picked by stated rules:

- **CT**: image series with Modality CT (not a label volume, at least 2 slices); several → the axial one, then the
  one with most slices, then a series not split by scan, then the smallest SeriesInstanceUID. The choice is noted.
- **PET**: Modality PT (same exclusions); several → attenuation-corrected first (CorrectedImage (0028,0051)
  contains ATTN), then axial, then most slices, then unsplit, then smallest UID. The PET series is also the PET
  header the SUV needs.
- **mask**: an RTSTRUCT or SEG object in the study folder, preferring one that references the chosen CT or PET
  series, then one that references any series of the study, then RTSTRUCT before SEG, then by path. Without such
  an object, a **LABEL volume**: an image series whose SeriesDescription contains ``mask``, ``label`` or
  ``segmentation`` (case-insensitive); such series are never taken as the CT or the PET.
- **subject_id** = ``keys.subject_id(patient, study_uid)`` with patient = PatientID of the PET series (else
  PatientName, else the patient folder name) and study_uid = StudyInstanceUID of the PET series (else the CT's,
  else the study folder name); keyed with ``VOXELPIPE_KEY_SECRET`` when set.

Outputs (all atomic): ``INDEX.csv`` (complete studies, :data:`INDEX_COLUMNS`; the folder and mask paths are
absolute), ``<INDEX stem>_incomplete.csv`` (:data:`INCOMPLETE_COLUMNS`, what is missing and why), the private
mapping (:data:`MAPPING_COLUMNS`) only when ``mapping`` is given, and with ``export_zip`` the zipped NIfTI form
``<subject_id>/<subject_id>_ct.nii.gz`` (CT, HU), ``_petsuv.nii.gz`` (PET in SUV, float32) and ``_mask.nii.gz``
(uint8, on the grid ``petct.load_subject`` gives it), each with its own affine.
"""
from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass, field

from voxelpipe.apps.petct.pipeline import load_subject
from voxelpipe.core.errors import InputError
from voxelpipe.core.keys import subject_id as make_subject_id
from voxelpipe.core.progress import Progress
from voxelpipe.dicom.flatten import column_name
from voxelpipe.execution import default_workers, imap
from voxelpipe.pipelines.scan import scan
from voxelpipe.stores.nifti import nifti_bytes, require_nibabel
from voxelpipe.stores.tables import atomic_path, write_csv

log = logging.getLogger("voxelpipe")

INDEX_COLUMNS = [
    "subject_id", "patient_dir", "study_dir", "study_instance_uid", "ct_series_uid", "pet_series_uid", "mask_kind",
    "mask_path", "mask_series_uid", "n_ct_files", "n_pet_files",
]
INCOMPLETE_COLUMNS = ["patient_dir", "study_dir", "has_ct", "has_pet", "has_mask", "missing", "note"]
MAPPING_COLUMNS = ["subject_id", "patient_dir", "study_dir", "patient_id", "study_instance_uid"]
LABEL_WORDS = ("mask", "label", "segmentation")
MASK_OBJECT_MODALITIES = ("RTSTRUCT", "SEG")

_PATIENT_ID = column_name(0x00100020)
_PATIENT_NAME = column_name(0x00100010)
_CORRECTED_IMAGE = column_name(0x00280051)


@dataclass
class StudyFolder:
    """One ``<patient>/<study>`` folder and what scan found in it."""

    patient_dir: str  # absolute
    study_dir: str  # absolute
    series: list[dict] = field(default_factory=list)  # scan series rows + paths, patient_id, patient_name, ...
    objects: list[dict] = field(default_factory=list)  # scan object rows
    n_files: int = 0
    n_unreadable: int = 0

    @property
    def name(self) -> str:
        return os.path.join(os.path.basename(self.patient_dir), os.path.basename(self.study_dir))


def is_label_series(row: dict) -> bool:
    """The LABEL-volume rule: an image series whose SeriesDescription names it a mask/label/segmentation."""
    text = str(row.get("series_description", "")).lower()
    return any(word in text for word in LABEL_WORDS)


def find_study_folders(project: str) -> tuple[list[StudyFolder], list[dict]]:
    """``<patient>/<study>`` folders (hidden names skipped, sorted) and incomplete rows for patient folders that
    hold DICOM-candidate files outside any study folder."""
    if not os.path.isdir(project):
        raise InputError(f"{project}: no such project folder (expected PROJECT/<patient>/<study>/)")
    studies: list[StudyFolder] = []
    loose: list[dict] = []
    for patient in sorted(os.scandir(project), key=lambda e: e.name):
        if patient.name.startswith(".") or not patient.is_dir():
            continue
        files = 0
        for entry in sorted(os.scandir(patient.path), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                studies.append(StudyFolder(os.path.abspath(patient.path), os.path.abspath(entry.path)))
            elif entry.is_file():
                files += 1
        if files:
            loose.append({"patient_dir": os.path.abspath(patient.path), "study_dir": "", "has_ct": False,
                          "has_pet": False, "has_mask": False, "missing": "study folder",
                          "note": f"{files} file(s) directly in the patient folder, not in a <study> sub-folder: "
                                  "not indexed"})
    return studies, loose


def scan_study(study: StudyFolder, workers: int | None = None) -> StudyFolder:
    """Fill ``series`` and ``objects`` of one study folder. Each folder is scanned on its own (the process pool
    is reused between calls) so a series is grouped within its study folder only: a copy of a study in another
    folder stays a separate study, and memory holds one study's headers at a time."""
    result = scan([study.study_dir], out=None, workers=workers, progress=False)
    meta = {row["path"]: row for row in result.metadata}
    study.n_files = len(result.metadata)
    study.n_unreadable = len(result.unreadable)
    study.series, study.objects = [], []
    for row in result.series:
        records = result.records.get(row["series_key"], [])
        if not records:
            continue  # localizer-only series: no volume
        first = meta.get(records[0].path, {})
        study.series.append({
            **row, "paths": [r.path for r in records],
            "patient_id": first.get(_PATIENT_ID, "").strip(),
            "patient_name": first.get(_PATIENT_NAME, "").strip(),
            "corrected_image": first.get(_CORRECTED_IMAGE, ""),
        })
    for row in result.objects:
        first = meta.get(row["path"], {})
        study.objects.append({**row, "patient_id": first.get(_PATIENT_ID, "").strip(),
                              "patient_name": first.get(_PATIENT_NAME, "").strip()})
    return study


def _volume_candidates(study: StudyFolder, modality: str) -> list[dict]:
    return [s for s in study.series if str(s["modality"]).upper() == modality and not is_label_series(s)
            and int(s["n_slices"] or 0) >= 2]


def _describe(series: dict) -> str:
    text = f"{series['series_instance_uid']} ({series['orientation'] or '?'}, {series['n_slices']} slices"
    if series.get("series_description"):
        text += f", {series['series_description']!r}"
    return text + ")"


def choose_ct(study: StudyFolder) -> tuple[dict | None, list[str]]:
    candidates = _volume_candidates(study, "CT")
    candidates.sort(key=lambda s: (s["orientation"] != "axial", -int(s["n_slices"]), bool(s["split_reason"]),
                                   s["series_instance_uid"], s["series_key"]))
    return _chosen("CT", candidates)


def choose_pet(study: StudyFolder) -> tuple[dict | None, list[str]]:
    candidates = _volume_candidates(study, "PT")
    candidates.sort(key=lambda s: ("ATTN" not in str(s["corrected_image"]).upper(), s["orientation"] != "axial",
                                   -int(s["n_slices"]), bool(s["split_reason"]), s["series_instance_uid"],
                                   s["series_key"]))
    chosen, notes = _chosen("PET", candidates)
    if chosen is not None and "ATTN" not in str(chosen["corrected_image"]).upper():
        notes.append(f"PET is not marked attenuation-corrected (CorrectedImage={chosen['corrected_image']!r})")
    return chosen, notes


def _chosen(what: str, candidates: list[dict]) -> tuple[dict | None, list[str]]:
    if not candidates:
        return None, []
    chosen = candidates[0]
    notes = []
    if len(candidates) > 1:
        notes.append(f"{what}: {len(candidates)} series, chose {_describe(chosen)} over "
                     + ", ".join(_describe(c) for c in candidates[1:]))
    if chosen["split_reason"]:
        notes.append(f"{what} series {chosen['series_instance_uid']} was {chosen['split_reason']}; "
                     f"the index names the largest part ({chosen['n_files']} files)")
    return chosen, notes


def choose_mask(study: StudyFolder, ct: dict | None, pet: dict | None) -> tuple[dict | None, list[str]]:
    """``{"kind", "path", "series_uid", ...}`` of the mask, or None; notes on the choice."""
    chosen_uids = {s["series_instance_uid"] for s in (ct, pet) if s is not None}
    study_uids = {s["series_instance_uid"] for s in study.series}
    objects = [o for o in study.objects if str(o["modality"]).upper() in MASK_OBJECT_MODALITIES]
    notes: list[str] = []
    if objects:
        def rank(obj):
            refs = set(filter(None, str(obj["referenced_series_uids"]).split(";")))
            return (not refs & chosen_uids, not refs & study_uids,
                    MASK_OBJECT_MODALITIES.index(str(obj["modality"]).upper()), obj["path"])

        objects.sort(key=rank)
        best = objects[0]
        refs = set(filter(None, str(best["referenced_series_uids"]).split(";")))
        if len(objects) > 1:
            notes.append(f"mask: {len(objects)} RTSTRUCT/SEG objects, chose {os.path.basename(best['path'])} "
                         f"({best['modality']})")
        if chosen_uids and not refs & chosen_uids:
            notes.append(f"mask {os.path.basename(best['path'])} references neither the chosen CT nor PET series")
        return {"kind": str(best["modality"]).upper(), "path": best["path"], "series_uid": ""}, notes
    labels = [s for s in study.series if is_label_series(s)]
    labels.sort(key=lambda s: (s["orientation"] != "axial", -int(s["n_slices"]), s["series_instance_uid"]))
    if not labels:
        return None, notes
    best = labels[0]
    if len(labels) > 1:
        notes.append(f"mask: {len(labels)} label volumes, chose {_describe(best)}")
    return {"kind": "LABEL", "path": "", "series_uid": best["series_instance_uid"]}, notes


def classify_study(study: StudyFolder, secret: str | None = None) -> tuple[dict | None, dict | None, dict]:
    """``(index_row, None, private)`` for a complete study, ``(None, incomplete_row, {})`` otherwise."""
    ct, ct_notes = choose_ct(study)
    pet, pet_notes = choose_pet(study)
    mask, mask_notes = choose_mask(study, ct, pet)
    notes = ct_notes + pet_notes + mask_notes
    missing = [name for name, part in (("CT", ct), ("PET", pet), ("mask", mask)) if part is None]
    if missing:
        if not study.n_files:
            notes.insert(0, "no files")
        elif not study.series and not study.objects:
            notes.insert(0, f"no usable DICOM among {study.n_files} DICOM file(s)")
        if study.n_unreadable:
            notes.append(f"{study.n_unreadable} file(s) unreadable or not DICOM")
        return None, {"patient_dir": study.patient_dir, "study_dir": study.study_dir, "has_ct": ct is not None,
                      "has_pet": pet is not None, "has_mask": mask is not None, "missing": ";".join(missing),
                      "note": "; ".join(notes)}, {}
    patient = pet["patient_id"] or pet["patient_name"] or ct["patient_id"] or ct["patient_name"] \
        or os.path.basename(study.patient_dir)
    study_uid = pet["study_instance_uid"] or ct["study_instance_uid"] or os.path.basename(study.study_dir)
    if ct["study_instance_uid"] and ct["study_instance_uid"] != study_uid:
        notes.append("CT and PET have different StudyInstanceUIDs; the PET's names the subject")
    if ct["patient_id"] and pet["patient_id"] and ct["patient_id"] != pet["patient_id"]:
        notes.append("CT and PET have different PatientIDs; the PET's names the subject")
    if notes:
        log.info("petct-index %s: %s", study.name, "; ".join(notes))
    sid = make_subject_id(patient, study_uid, secret)
    row = {
        "subject_id": sid, "patient_dir": study.patient_dir, "study_dir": study.study_dir,
        "study_instance_uid": study_uid, "ct_series_uid": ct["series_instance_uid"],
        "pet_series_uid": pet["series_instance_uid"], "mask_kind": mask["kind"], "mask_path": mask["path"],
        "mask_series_uid": mask["series_uid"], "n_ct_files": int(ct["n_files"]), "n_pet_files": int(pet["n_files"]),
    }
    private = {"subject_id": sid, "patient_dir": study.patient_dir, "study_dir": study.study_dir,
               "patient_id": patient, "study_instance_uid": study_uid}
    return row, None, private


def incomplete_path(out_csv: str) -> str:
    stem, _ = os.path.splitext(os.fspath(out_csv))
    return stem + "_incomplete.csv"


def index_project(project: str | os.PathLike, out_csv: str | os.PathLike, export_zip: str | os.PathLike | None = None,
                  mapping: str | os.PathLike | None = None, workers: int | None = None, secret: str | None = None,
                  progress: bool = True) -> tuple[list[dict], list[dict]]:
    """Index ``project`` into ``out_csv`` (complete studies) and ``<out stem>_incomplete.csv``; the private
    mapping only when ``mapping`` is given; the zipped NIfTI form with ``export_zip``. Returns
    ``(rows, incomplete_rows)``. Two study folders with the same subject_id (same patient and study UID, or a
    hash collision) keep the first; the second is listed as incomplete (``missing`` = ``unique subject_id``)."""
    project = os.fspath(project)
    out_csv = os.fspath(out_csv)
    studies, incomplete = find_study_folders(project)
    with Progress(len(studies), "petct-index", unit="studies", enabled=progress) as bar:
        for study in studies:
            scan_study(study, workers=workers)
            bar.update(1)
    rows: list[dict] = []
    private_rows: list[dict] = []
    seen: dict[str, dict] = {}
    for study in studies:
        row, bad, private = classify_study(study, secret)
        if row is None:
            incomplete.append(bad)
            continue
        first = seen.get(row["subject_id"])
        if first is not None:
            same = private["patient_id"] == first["patient_id"] and \
                private["study_instance_uid"] == first["study_instance_uid"]
            why = "the same PatientID and StudyInstanceUID as" if same else "a subject_id collision with"
            incomplete.append({"patient_dir": study.patient_dir, "study_dir": study.study_dir, "has_ct": True,
                               "has_pet": True, "has_mask": True, "missing": "unique subject_id",
                               "note": f"{why} {first['study_dir']} (subject {row['subject_id']}); not indexed"})
            continue
        seen[row["subject_id"]] = private
        rows.append(row)
        private_rows.append(private)
    incomplete.sort(key=lambda r: (r["patient_dir"], r["study_dir"]))
    write_csv(out_csv, rows, INDEX_COLUMNS)
    write_csv(incomplete_path(out_csv), incomplete, INCOMPLETE_COLUMNS)
    if mapping is not None:
        write_csv(os.fspath(mapping), private_rows, MAPPING_COLUMNS)
    if export_zip is not None:
        export_nifti_zip(rows, export_zip, workers=workers)
    return rows, incomplete


def _export_one(row: dict) -> tuple[str, dict[str, bytes]]:
    """Worker task: load one subject from DICOM and encode its three NIfTI members."""
    subject = load_subject(row)
    sid = row["subject_id"]
    return sid, {f"{sid}/{sid}_ct.nii.gz": nifti_bytes(subject.ct),
                 f"{sid}/{sid}_petsuv.nii.gz": nifti_bytes(subject.pet),
                 f"{sid}/{sid}_mask.nii.gz": nifti_bytes(subject.mask)}


def export_nifti_zip(rows: list[dict], path: str | os.PathLike, workers: int | None = None) -> str:
    """Write the zipped NIfTI form of the indexed studies (one subject loaded per task; only this process writes
    the zip, under a temporary name renamed at the end). Members are stored, not deflated: they are gzipped."""
    require_nibabel("--export-zip")  # fail before any work when nibabel is missing
    path = os.fspath(path)
    workers = default_workers() if workers is None else max(1, workers)
    workers = min(workers, max(1, len(rows)))
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for sid, members in imap(_export_one, rows, workers):
                for name, data in members.items():
                    archive.writestr(name, data)
                log.info("petct-index: exported %s", sid)
    return path
