"""Synthetic DICOM studies written with pydicom: real files for the demo, tests and benchmarks.

The phantom is a CT-like body: an elliptic cylinder of soft tissue (40 HU) with two lungs (-800 HU), a spine
(700 HU) and noise, in air (-1000 HU). Arrays are (slice, row, column); positions are LPS millimetres.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

ROOT_UID = "1.2.826.0.1.3680043.10.1492."  # voxelpipe synthetic data


@dataclass
class SeriesSpec:
    """What to write. ``spacing`` is (slice, row, column) in mm; ``tilt_deg`` tilts the gantry about x."""

    n_slices: int = 40
    rows: int = 64
    columns: int = 64
    spacing: tuple[float, float, float] = (2.5, 0.8, 0.8)
    origin: tuple[float, float, float] = (-25.6, -25.6, -50.0)
    slope: float = 1.0
    intercept: float = -1024.0
    tilt_deg: float = 0.0
    modality: str = "CT"
    series_description: str = "synthetic body CT"
    series_number: int = 2
    patient_id: str = "VP-DEMO-001"
    study_uid: str = field(default_factory=lambda: generate_uid(ROOT_UID))
    series_uid: str = field(default_factory=lambda: generate_uid(ROOT_UID))
    seed: int = 0


def phantom_hu(n_slices: int, rows: int, columns: int, seed: int = 0) -> np.ndarray:
    """CT-like phantom in HU, int16, shape (slice, row, column)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns]
    y = (y - rows / 2) / (rows / 2)
    x = (x - columns / 2) / (columns / 2)
    body = (x / 0.9) ** 2 + (y / 0.7) ** 2 <= 1
    lungs = (((x - 0.4) / 0.3) ** 2 + (y / 0.45) ** 2 <= 1) | (((x + 0.4) / 0.3) ** 2 + (y / 0.45) ** 2 <= 1)
    spine = (x / 0.12) ** 2 + ((y - 0.45) / 0.12) ** 2 <= 1
    image = np.full((rows, columns), -1000.0)
    image[body] = 40
    image[lungs & body] = -800
    image[spine] = 700
    volume = np.repeat(image[None], n_slices, axis=0)
    volume += rng.normal(0, 10, volume.shape)
    return np.clip(np.round(volume), -1024, 3071).astype(np.int16)


def _base_dataset(spec: SeriesSpec) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = "20260101"
    ds.Modality = spec.modality
    ds.Manufacturer = "voxelpipe synthetic"
    ds.SeriesDescription = spec.series_description
    ds.PatientName = "Synthetic^Phantom"
    ds.PatientID = spec.patient_id
    ds.SliceThickness = f"{spec.spacing[0]:g}"
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = spec.series_number
    ds.FrameOfReferenceUID = generate_uid(ROOT_UID, entropy_srcs=[spec.study_uid, "frame of reference"])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.PixelSpacing = [f"{spec.spacing[1]:g}", f"{spec.spacing[2]:g}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = f"{spec.slope:g}"
    ds.RescaleIntercept = f"{spec.intercept:g}"
    ds.RescaleType = "HU"
    return ds


def slice_geometry(spec: SeriesSpec, index: int) -> tuple[list[float], list[float]]:
    """ImagePositionPatient and ImageOrientationPatient of slice ``index`` (gantry tilt about the x axis)."""
    t = math.radians(spec.tilt_deg)
    iop = [1.0, 0.0, 0.0, 0.0, math.cos(t), -math.sin(t)]
    normal = np.cross(iop[:3], iop[3:])
    # With tilt the table moves along z while the image plane is tilted: step = spacing / cos(t) along z.
    step = np.array([0.0, 0.0, spec.spacing[0] / math.cos(t)]) if t else normal * spec.spacing[0]
    ipp = np.asarray(spec.origin, dtype=np.float64) + index * step
    return [round(float(v), 6) for v in ipp], iop


def write_series(folder: str | os.PathLike, spec: SeriesSpec | None = None, *, names: str = "instance",
                 skip: Sequence[int] = (), duplicate: Sequence[int] = (), hu: np.ndarray | None = None) -> list[str]:
    """Write one series as single-frame DICOM files into ``folder``; return the paths in slice order.

    ``names``: ``instance`` (IM0001.dcm ...) or ``shuffled`` (random names, no extension).
    ``skip``: slice indices left out (missing slices); ``duplicate``: slice indices written twice.
    ``hu``: the HU volume to store (default: the phantom).
    """
    spec = spec or SeriesSpec()
    os.makedirs(folder, exist_ok=True)
    volume = phantom_hu(spec.n_slices, spec.rows, spec.columns, spec.seed) if hu is None else hu
    stored = np.round((volume.astype(np.float64) - spec.intercept) / spec.slope).astype(np.int16)
    rng = np.random.default_rng(spec.seed + 1)
    base = _base_dataset(spec)
    paths = []
    copies = [i for i in range(spec.n_slices) if i not in set(skip)] + list(duplicate)
    for number, index in enumerate(sorted(copies), start=1):
        ds = base.copy()
        ds.file_meta = base.file_meta.copy()
        sop_uid = generate_uid(ROOT_UID)
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = number
        ipp, iop = slice_geometry(spec, index)
        ds.ImagePositionPatient = [f"{v:g}" for v in ipp]
        ds.ImageOrientationPatient = [f"{v:.6g}" for v in iop]
        ds.SliceLocation = f"{ipp[2]:g}"
        ds.PixelData = stored[index].tobytes()
        name = f"IM{number:04d}.dcm" if names == "instance" else f"{rng.integers(1 << 40):010x}"
        path = os.path.join(folder, name)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_localizer(folder: str | os.PathLike, spec: SeriesSpec, name: str = "LOCALIZER.dcm") -> str:
    """A LOCALIZER image (coronal) in the series of ``spec``."""
    ds = _base_dataset(spec)
    sop_uid = generate_uid(ROOT_UID)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.InstanceNumber = 1000
    ds.ImagePositionPatient = ["-25.6", "0", "50"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
    ds.PixelData = np.zeros((spec.rows, spec.columns), np.int16).tobytes()
    path = os.path.join(folder, name)
    os.makedirs(folder, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_demo_study(folder: str | os.PathLike) -> dict[str, list[str]]:
    """The demo study: a 40-slice body CT with a localizer, and a second 2.5 mm-thick reconstruction."""
    study = generate_uid(ROOT_UID)
    ct = SeriesSpec(study_uid=study)
    thick = SeriesSpec(study_uid=study, n_slices=20, spacing=(5.0, 0.8, 0.8), series_number=3,
                       series_description="synthetic body CT 5 mm", seed=7)
    files = {"ct": write_series(os.path.join(folder, "ct"), ct),
             "ct_5mm": write_series(os.path.join(folder, "ct_5mm"), thick)}
    files["localizer"] = [write_localizer(os.path.join(folder, "ct"), ct)]
    return files
