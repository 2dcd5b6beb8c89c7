"""Synthetic DICOM studies written with pydicom: real files for the demo, tests and benchmarks.

The phantom is a CT-like body: an elliptic cylinder of soft tissue (40 HU) with two lungs (-800 HU), a spine
(700 HU) and noise, in air (-1000 HU). Arrays are (slice, row, column); positions are LPS millimetres.
"""
from __future__ import annotations

import datetime
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from voxelpipe.core.geometry import Geometry
from voxelpipe.core.volume import Volume

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


def image_dataset(modality: str = "CT") -> Dataset:
    """A dataset (CT Image Storage, explicit VR little endian) with the tags every synthetic image shares:
    file meta, character set, ImageType ORIGINAL/PRIMARY/AXIAL, StudyDate, Modality, Manufacturer."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = "20260101"
    ds.Modality = modality
    ds.Manufacturer = "voxelpipe synthetic"
    return ds


def _base_dataset(spec: SeriesSpec) -> Dataset:
    ds = image_dataset(spec.modality)
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


def _new_instance(base: Dataset, number: int) -> Dataset:
    """A copy of ``base`` (file meta too) with a new SOP instance UID and InstanceNumber ``number``."""
    ds = base.copy()
    ds.file_meta = base.file_meta.copy()
    sop_uid = generate_uid(ROOT_UID)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = number
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


def slice_dataset(spec: SeriesSpec, index: int, number: int, base: Dataset | None = None) -> Dataset:
    """Slice ``index`` of ``spec``'s series as ``write_series`` writes it, without pixel data: the series' shared
    tags (``base``, default built from ``spec``), a new SOP instance UID, InstanceNumber ``number``, position."""
    ds = _new_instance(_base_dataset(spec) if base is None else base, number)
    ipp, iop = slice_geometry(spec, index)
    ds.ImagePositionPatient = [f"{v:g}" for v in ipp]
    ds.ImageOrientationPatient = [f"{v:.6g}" for v in iop]
    ds.SliceLocation = f"{ipp[2]:g}"
    return ds


def write_series(folder: str | os.PathLike, spec: SeriesSpec | None = None, *, names: str = "instance",
                 skip: Sequence[int] = (), duplicate: Sequence[int] = (), hu: np.ndarray | None = None,
                 tags: dict | None = None) -> list[str]:
    """Write one series as single-frame DICOM files into ``folder``; return the paths in slice order.

    ``names``: ``instance`` (IM0001.dcm ...) or ``shuffled`` (random names, no extension).
    ``skip``: slice indices left out (missing slices); ``duplicate``: slice indices written twice.
    ``hu``: the HU volume to store (default: the phantom). ``tags``: extra keyword → value set on every file.
    """
    spec = spec or SeriesSpec()
    os.makedirs(folder, exist_ok=True)
    volume = phantom_hu(spec.n_slices, spec.rows, spec.columns, spec.seed) if hu is None else hu
    stored = np.round((volume.astype(np.float64) - spec.intercept) / spec.slope).astype(np.int16)
    rng = np.random.default_rng(spec.seed + 1)
    base = _base_dataset(spec)
    for keyword, value in (tags or {}).items():
        setattr(base, keyword, value)
    paths = []
    copies = [i for i in range(spec.n_slices) if i not in set(skip)] + list(duplicate)
    for number, index in enumerate(sorted(copies), start=1):
        ds = slice_dataset(spec, index, number, base)
        ds.PixelData = stored[index].tobytes()
        name = f"IM{number:04d}.dcm" if names == "instance" else f"{rng.integers(1 << 40):010x}"
        path = os.path.join(folder, name)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_many_series(folder: str | os.PathLike, n_series: int, n_slices: int, rows: int = 64,
                      cols: int = 64) -> list[str]:
    """Write ``n_series`` CT series of ``n_slices`` slices of ``rows`` x ``cols`` pixels, one subfolder each
    (``series_000`` ...), all of one study; UIDs derive from the sizes, so a rewrite gives the same UIDs.
    Returns the series folders (scan and benchmark data: ``n_series * n_slices`` small files)."""
    key = f"{n_series}x{n_slices}x{rows}x{cols}"
    study = generate_uid(ROOT_UID, entropy_srcs=[key, "study"])
    folders = []
    for i in range(n_series):
        spec = SeriesSpec(n_slices=n_slices, rows=rows, columns=cols, seed=i, study_uid=study,
                          series_uid=generate_uid(ROOT_UID, entropy_srcs=[key, "series", str(i)]),
                          series_number=i + 1, series_description=f"many CT {i}")
        series_folder = os.path.join(os.fspath(folder), f"series_{i:03d}")
        write_series(series_folder, spec)
        folders.append(series_folder)
    return folders


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


# ----------------------------------------------------------------------------------------------------------
# PET/CT studies: a CT and a PET series of the same phantom with hot spheres, plus an RTSTRUCT or SEG mask
# ----------------------------------------------------------------------------------------------------------
PET_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
F18_HALF_LIFE_S = 6586.2

PET_ORIENTATIONS = {  # ImageOrientationPatient shortcuts for the PET
    "axial": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "flipped": (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0),  # rows run right→left and columns anterior←posterior
    "rotated": (math.cos(math.radians(15)), math.sin(math.radians(15)), 0.0,
                -math.sin(math.radians(15)), math.cos(math.radians(15)), 0.0),  # 15° in-plane rotation
}


def grid_lps(ipp0: Sequence[float], iop: Sequence[float], spacing: Sequence[float],
             shape: Sequence[int]) -> np.ndarray:
    """LPS centres (shape + (3,)) of the voxels of an evenly spaced series: slice k starts at
    ipp0 + k·spacing[0]·normal; row r adds r·spacing[1]·column cosine, column c adds c·spacing[2]·row cosine."""
    row_cos = np.asarray(iop[:3], dtype=np.float64)
    col_cos = np.asarray(iop[3:6], dtype=np.float64)
    normal = np.cross(row_cos, col_cos)
    k, r, c = (np.arange(n, dtype=np.float64) for n in shape)
    return (np.asarray(ipp0, dtype=np.float64)
            + (k * spacing[0])[:, None, None, None] * normal
            + (r * spacing[1])[None, :, None, None] * col_cos
            + (c * spacing[2])[None, None, :, None] * row_cos)


def body_masks(lps: np.ndarray, centre: Sequence[float], half_width: float, half_height: float) -> tuple:
    """(body, lungs, spine) boolean masks of the phantom at LPS points, as ``phantom_hu`` draws them for a
    grid centred on ``centre`` (x, y) with half extents ``half_width`` (x) and ``half_height`` (y)."""
    x = (lps[..., 0] - centre[0]) / half_width
    y = (lps[..., 1] - centre[1]) / half_height
    body = (x / 0.9) ** 2 + (y / 0.7) ** 2 <= 1
    lungs = (((x - 0.4) / 0.3) ** 2 + (y / 0.45) ** 2 <= 1) | (((x + 0.4) / 0.3) ** 2 + (y / 0.45) ** 2 <= 1)
    spine = (x / 0.12) ** 2 + ((y - 0.45) / 0.12) ** 2 <= 1
    return body, lungs & body, spine


def sphere_contours(centre: Sequence[float], radius: float, plane_z: Sequence[float],
                    n_points: int = 48) -> list[np.ndarray]:
    """Closed planar (N, 3) LPS contours of a sphere on axial planes at the given z (mm): one circle per plane
    that cuts the sphere; the polygon circumscribes the circle so the pixel-centre fill matches the sphere."""
    out = []
    angles = 2 * np.pi * np.arange(n_points) / n_points
    for z in plane_z:
        dz = float(z) - centre[2]
        if abs(dz) >= radius:
            continue
        r = math.sqrt(radius ** 2 - dz ** 2) / math.cos(math.pi / n_points)
        out.append(np.column_stack([centre[0] + r * np.cos(angles), centre[1] + r * np.sin(angles),
                                    np.full(n_points, float(z))]))
    return out


def object_dataset(sop_class: str, modality: str, *, sop_uid: str | None = None,
                   transfer_syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """A new instance of ``sop_class``: file meta (``transfer_syntax``, pydicom's implementation UID), SOP class
    and instance UIDs (``sop_uid``, default a new voxelpipe UID) and Modality."""
    sop_uid = sop_uid or generate_uid(ROOT_UID)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    return ds


def referenced_frame_sequence(frame_uid: str, study_uid: str, series_uid: str,
                              contour_images: Sequence[Dataset]) -> DicomSequence:
    """An RTSTRUCT's ReferencedFrameOfReferenceSequence: frame of reference → study (RT Study class) → series,
    whose ContourImageSequence holds ``contour_images``."""
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    series.ContourImageSequence = DicomSequence(contour_images)
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = study_uid
    study.RTReferencedSeriesSequence = DicomSequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_uid
    frame.RTReferencedStudySequence = DicomSequence([study])
    return DicomSequence([frame])


def _derived_object(sop_class: str, modality: str, ref: Dataset, series_number: int) -> Dataset:
    """A new object of ``sop_class`` in a new series of ``ref``'s study, with ``ref``'s patient."""
    ds = object_dataset(sop_class, modality)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = getattr(ref, "PatientName", "")
    ds.PatientID = getattr(ref, "PatientID", "")
    ds.StudyInstanceUID = ref.StudyInstanceUID
    ds.SeriesInstanceUID = generate_uid(ROOT_UID)
    ds.SeriesNumber = series_number
    return ds


def write_rtstruct(path: str | os.PathLike, ct_datasets_or_paths: Sequence, rois: dict[str, list[np.ndarray]],
                   *, label: str = "synthetic", colors: dict[str, tuple[int, int, int]] | None = None) -> str:
    """An RT Structure Set for the image series given as pydicom datasets or file paths: ``rois`` maps ROI name →
    list of closed planar (N, 3) LPS contours. Each contour references the image whose plane it lies in."""
    refs = [d if isinstance(d, Dataset) else _read_header(d) for d in ct_datasets_or_paths]
    ref = refs[0]
    iop = [float(v) for v in ref.ImageOrientationPatient]
    normal = np.cross(iop[:3], iop[3:6])
    positions = np.array([float(np.asarray([float(v) for v in d.ImagePositionPatient]) @ normal) for d in refs])
    frame_uid = str(ref.FrameOfReferenceUID)
    ds = _derived_object(RTSTRUCT_STORAGE, "RTSTRUCT", ref, series_number=99)
    ds.StudyDate = getattr(ref, "StudyDate", "")
    ds.StructureSetLabel = label
    images = []
    for d in refs:
        image = Dataset()
        image.ReferencedSOPClassUID = d.SOPClassUID
        image.ReferencedSOPInstanceUID = d.SOPInstanceUID
        images.append(image)
    ds.ReferencedFrameOfReferenceSequence = referenced_frame_sequence(frame_uid, ref.StudyInstanceUID,
                                                                      ref.SeriesInstanceUID, images)
    ds.StructureSetROISequence = DicomSequence()
    ds.ROIContourSequence = DicomSequence()
    ds.RTROIObservationsSequence = DicomSequence()
    for number, (name, contours) in enumerate(rois.items(), start=1):
        item = Dataset()
        item.ROINumber = number
        item.ReferencedFrameOfReferenceUID = frame_uid
        item.ROIName = name
        item.ROIGenerationAlgorithm = "MANUAL"
        ds.StructureSetROISequence.append(item)
        contour_item = Dataset()
        contour_item.ROIDisplayColor = list((colors or {}).get(name, (255, 0, 0)))
        contour_item.ReferencedROINumber = number
        contour_item.ContourSequence = DicomSequence()
        for points in contours:
            points = np.asarray(points, dtype=np.float64)
            nearest = int(np.argmin(np.abs(positions - float(points[0] @ normal))))
            contour = Dataset()
            image = Dataset()
            image.ReferencedSOPClassUID = refs[nearest].SOPClassUID
            image.ReferencedSOPInstanceUID = refs[nearest].SOPInstanceUID
            contour.ContourImageSequence = DicomSequence([image])
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points)
            contour.ContourData = [f"{v:.4f}" for v in points.ravel()]
            contour_item.ContourSequence.append(contour)
        ds.ROIContourSequence.append(contour_item)
        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = "GTV"
        observation.ROIInterpreter = ""
        ds.RTROIObservationsSequence.append(observation)
    ds.save_as(os.fspath(path), enforce_file_format=True)
    return os.fspath(path)


def write_seg(path: str | os.PathLike, ct_datasets_or_paths: Sequence, masks: dict[str, np.ndarray]) -> str:
    """A BINARY DICOM SEG on the grid of the image series (datasets or paths, in slice order): ``masks`` maps
    segment label → boolean (slice, row, column) array of that grid. One frame per segment per non-empty slice."""
    refs = [d if isinstance(d, Dataset) else _read_header(d) for d in ct_datasets_or_paths]
    ref = refs[0]
    ds = _derived_object(SEG_STORAGE, "SEG", ref, series_number=98)
    ds.FrameOfReferenceUID = ref.FrameOfReferenceUID
    ds.SegmentationType = "BINARY"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(ref.Rows), int(ref.Columns)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    referenced = Dataset()
    referenced.SeriesInstanceUID = ref.SeriesInstanceUID
    referenced.ReferencedInstanceSequence = DicomSequence()
    for d in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = d.SOPClassUID
        item.ReferencedSOPInstanceUID = d.SOPInstanceUID
        referenced.ReferencedInstanceSequence.append(item)
    ds.ReferencedSeriesSequence = DicomSequence([referenced])
    segments, per_frame, frames = [], [], []
    for number, (label, mask) in enumerate(masks.items(), start=1):
        item = Dataset()
        item.SegmentNumber = number
        item.SegmentLabel = label
        item.SegmentAlgorithmType = "MANUAL"
        for keyword, meaning in (("SegmentedPropertyCategoryCodeSequence", "Morphologically Altered Structure"),
                                 ("SegmentedPropertyTypeCodeSequence", "Neoplasm")):
            code = Dataset()
            code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "49755003", "SCT", meaning
            setattr(item, keyword, DicomSequence([code]))
        segments.append(item)
        for k in range(mask.shape[0]):
            if not mask[k].any():
                continue
            frame = Dataset()
            ident = Dataset()
            ident.ReferencedSegmentNumber = number
            frame.SegmentIdentificationSequence = DicomSequence([ident])
            position = Dataset()
            position.ImagePositionPatient = list(refs[k].ImagePositionPatient)
            frame.PlanePositionSequence = DicomSequence([position])
            source = Dataset()
            source.ReferencedSOPClassUID = refs[k].SOPClassUID
            source.ReferencedSOPInstanceUID = refs[k].SOPInstanceUID
            derivation = Dataset()
            derivation.SourceImageSequence = DicomSequence([source])
            frame.DerivationImageSequence = DicomSequence([derivation])
            per_frame.append(frame)
            frames.append(np.asarray(mask[k], dtype=bool))
    ds.SegmentSequence = DicomSequence(segments)
    orientation = Dataset()
    orientation.ImageOrientationPatient = list(ref.ImageOrientationPatient)
    measures = Dataset()
    measures.PixelSpacing = list(ref.PixelSpacing)
    measures.SliceThickness = ref.SliceThickness
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.NumberOfFrames = len(frames)
    stack = np.stack(frames) if frames else np.zeros((0, ds.Rows, ds.Columns), bool)
    data = np.packbits(stack.ravel(), bitorder="little").tobytes()
    ds.PixelData = data + b"\0" * (len(data) % 2)
    ds.save_as(os.fspath(path), enforce_file_format=True)
    return os.fspath(path)


def _read_header(path) -> Dataset:
    return pydicom.dcmread(os.fspath(path), stop_before_pixels=True)


def suv_factor_expected(weight_kg: float, dose_bq: float, uptake_s: float, half_life_s: float = F18_HALF_LIFE_S,
                        decay_correction: str = "START") -> float:
    """SUVbw factor (g/Bq → SUV = Bq/ml × factor, 1 ml = 1 g): START decays the dose to the series start,
    ADMIN does not decay it."""
    dose = dose_bq * (0.5 ** (uptake_s / half_life_s) if decay_correction.upper() == "START" else 1.0)
    return weight_kg * 1000.0 / dose


def write_petct_study(folder: str | os.PathLike, *, ct_shape: Sequence[int] = (40, 64, 64),
                      ct_spacing: Sequence[float] = (2.5, 0.8, 0.8), pet_shape: Sequence[int] = (30, 32, 32),
                      pet_spacing: Sequence[float] = (3.5, 2.0, 2.0), seed: int = 0, pet_units: str = "BQML",
                      decay_correction: str = "START", mask: str = "RTSTRUCT",
                      sphere_lps: Sequence[float] = (6.0, -3.0, 4.0), sphere_radius_mm: float = 7.0,
                      sphere_suv: float = 10.0, background_suv: float = 1.5, lung_suv: float = 0.4,
                      extra_spheres: Sequence[tuple[Sequence[float], float, float]] = (),
                      pet_offset: Sequence[float] = (3.3, -2.1, 1.7), pet_orientation: str | Sequence[float] = "axial",
                      pet_descending: bool = True, patient_id: str = "VP-PETCT-001",
                      patient_name: str = "Synthetic^PETCT", study_uid: str | None = None,
                      patient_weight: float | None = 75.0, dose_bq: float = 370e6, uptake_s: float = 3600.0,
                      half_life_s: float = F18_HALF_LIFE_S, roi_name: str = "GTV",
                      ct_sphere_hu: float = 120.0) -> dict:
    """Write a PET/CT study of the phantom with a hot sphere into ``folder``: ``CT/IM*.dcm``, ``PT/IM*.dcm`` and
    ``RTSTRUCT.dcm`` (``mask="RTSTRUCT"``: ROI ``roi_name`` with the spheres' contours on the CT slices),
    ``SEG.dcm`` (``mask="SEG"``: one segment on the CT grid) or no mask (``"none"``).

    The CT grid is centred on LPS (0, 0, 0) (axial, ``ct_shape`` (slices, rows, columns), ``ct_spacing``); the
    spheres (``sphere_lps``, ``sphere_radius_mm``; ``extra_spheres``: (lps, radius, suv) each) have
    ``ct_sphere_hu`` in the CT. The PET grid (``pet_shape``, ``pet_spacing``) is centred on the CT centre +
    ``pet_offset`` (mm), with ImageOrientationPatient ``pet_orientation`` (a key of ``PET_ORIENTATIONS`` or six
    cosines); ``pet_descending`` writes the PET files head first. PET voxels hold SUV ``sphere_suv`` in the
    sphere, ``background_suv`` in soft tissue, ``lung_suv`` in the lungs, 0 in air — evaluated at each voxel
    centre — stored as activity (Bq/ml for BQML) = SUV / factor with a per-slice RescaleSlope; ``pet_units``
    ``GML`` stores SUV itself, ``CNTS`` stores counts with the Philips private SUV scale factor (7053,1000) and
    activity scale (7053,1009); any other units string is written as is (for error tests).
    ``patient_weight=None`` leaves PatientWeight out. Times: injection 10:00:00, series start 10:00 + uptake.

    Returns a dict: folder, ct_dir, pet_dir, ct_files, pet_files (slice order as written), mask_kind,
    mask_path, study_uid, ct_series_uid, pet_series_uid, frame_of_reference_uid, patient_id, sphere_lps,
    sphere_radius_mm, sphere_suv, spheres (list of (lps, radius, suv)), suv_factor (expected SUV per Bq/ml),
    pet_iop, pet_ipp0, pet_spacing, pet_shape, ct_iop, ct_ipp0, ct_spacing, ct_shape, pet_slopes (per PET slice,
    ascending position), ct_sphere_mask (bool, CT grid: voxels at ``ct_sphere_hu``) and pet_suv (float64, PET
    grid in ascending slice position: the exact SUV of every voxel centre).
    """
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    study_uid = study_uid or generate_uid(ROOT_UID, entropy_srcs=[patient_id, str(seed), "petct study"])
    spheres = [(tuple(float(v) for v in sphere_lps), float(sphere_radius_mm), float(sphere_suv))]
    spheres += [(tuple(float(v) for v in c), float(r), float(s)) for c, r, s in extra_spheres]

    # CT: axial, centred on (0, 0, 0)
    n, rows, cols = (int(v) for v in ct_shape)
    ct_origin = (-(cols - 1) / 2 * ct_spacing[2], -(rows - 1) / 2 * ct_spacing[1], -(n - 1) / 2 * ct_spacing[0])
    ct_spec = SeriesSpec(n_slices=n, rows=rows, columns=cols, spacing=tuple(float(v) for v in ct_spacing),
                         origin=tuple(round(v, 6) for v in ct_origin), patient_id=patient_id, study_uid=study_uid,
                         series_uid=generate_uid(ROOT_UID), series_description="synthetic PET/CT CT", seed=seed)
    ct_iop = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    half = (cols / 2 * ct_spacing[2], rows / 2 * ct_spacing[1])
    centre_xy = (ct_origin[0] + cols / 2 * ct_spacing[2], ct_origin[1] + rows / 2 * ct_spacing[1])
    hu = phantom_hu(n, rows, cols, seed)
    # axial CT: voxel (k, r, c) at origin + (c·dx, r·dy, k·dz); distances are separable (no (n, rows, cols, 3))
    zs = ct_spec.origin[2] + np.arange(n) * ct_spec.spacing[0]
    ys = ct_spec.origin[1] + np.arange(rows) * ct_spec.spacing[1]
    xs = ct_spec.origin[0] + np.arange(cols) * ct_spec.spacing[2]
    ct_sphere_mask = np.zeros((n, rows, cols), dtype=bool)
    for centre, radius, _ in spheres:
        ct_sphere_mask |= (((zs - centre[2]) ** 2)[:, None, None] + ((ys - centre[1]) ** 2)[None, :, None]
                           + ((xs - centre[0]) ** 2)[None, None, :]) <= radius ** 2
    hu[ct_sphere_mask] = int(round(ct_sphere_hu))
    ct_files = write_series(os.path.join(folder, "CT"), ct_spec, hu=hu,
                            tags={"PatientName": patient_name, "StudyTime": "095000", "SeriesTime": "105500",
                                  "AcquisitionTime": "105500"})
    frame_uid = generate_uid(ROOT_UID, entropy_srcs=[study_uid, "frame of reference"])

    # PET grid
    iop = PET_ORIENTATIONS[pet_orientation] if isinstance(pet_orientation, str) else tuple(pet_orientation)
    iop = tuple(float(v) for v in iop)
    row_cos, col_cos = np.asarray(iop[:3]), np.asarray(iop[3:])
    normal = np.cross(row_cos, col_cos)
    pn, prow, pcol = (int(v) for v in pet_shape)
    ct_centre = np.asarray(ct_origin) + np.array([(cols - 1) / 2 * ct_spacing[2], (rows - 1) / 2 * ct_spacing[1],
                                                  (n - 1) / 2 * ct_spacing[0]])
    centre = ct_centre + np.asarray(pet_offset, dtype=np.float64)
    ipp0 = (centre - normal * (pn - 1) / 2 * pet_spacing[0] - col_cos * (prow - 1) / 2 * pet_spacing[1]
            - row_cos * (pcol - 1) / 2 * pet_spacing[2])
    ipp0 = np.round(ipp0, 4)
    suv = np.zeros((pn, prow, pcol), dtype=np.float64)
    for k in range(pn):  # one slice at a time: no (slices, rows, columns, 3) array for big grids
        lps = grid_lps(ipp0 + k * pet_spacing[0] * normal, iop, pet_spacing, (1, prow, pcol))[0]
        body, lungs, _ = body_masks(lps, centre_xy, half[0], half[1])
        plane = np.where(body, background_suv, 0.0)
        plane[lungs] = lung_suv
        for c, radius, value in spheres:
            plane[np.sum((lps - np.asarray(c)) ** 2, axis=-1) <= radius ** 2] = value
        z = lps[..., 2]  # z extent of the phantom: the CT's slab
        plane[(z < ct_origin[2] - ct_spacing[0] / 2) | (z > ct_origin[2] + (n - 0.5) * ct_spacing[0])] = 0.0
        suv[k] = plane

    weight = patient_weight if patient_weight is not None else 75.0
    units = pet_units.upper()
    if units == "GML":
        factor = 1.0
    else:
        factor = suv_factor_expected(weight, dose_bq, uptake_s, half_life_s, decay_correction)
    activity = suv / factor  # Bq/ml (or g/ml for GML)
    counts_scale = 0.25  # CNTS: Bq/ml = counts × this (activity scale factor)
    values = activity / counts_scale if units == "CNTS" else activity

    injection = datetime.datetime(2026, 1, 1, 10, 0, 0)
    start = injection + datetime.timedelta(seconds=uptake_s)
    pet_series_uid = generate_uid(ROOT_UID)
    pet_dir = os.path.join(folder, "PT")
    os.makedirs(pet_dir, exist_ok=True)
    spec = SeriesSpec(n_slices=pn, rows=prow, columns=pcol, spacing=tuple(float(v) for v in pet_spacing),
                      modality="PT", series_description="synthetic PET/CT PET", series_number=3,
                      patient_id=patient_id, study_uid=study_uid, series_uid=pet_series_uid)
    base = _base_dataset(spec)
    base.file_meta.MediaStorageSOPClassUID = PET_STORAGE
    base.SOPClassUID = PET_STORAGE
    base.ImageType = ["ORIGINAL", "PRIMARY"]
    base.PatientName = patient_name
    base.FrameOfReferenceUID = frame_uid
    del base.RescaleType
    base.StudyTime = "095000"
    base.SeriesDate = start.strftime("%Y%m%d")
    base.SeriesTime = start.strftime("%H%M%S")
    base.AcquisitionDate = start.strftime("%Y%m%d")
    base.AcquisitionTime = start.strftime("%H%M%S")
    if patient_weight is not None:
        base.PatientWeight = f"{patient_weight:g}"
    base.PatientSize = "1.75"
    base.PatientSex = "O"
    base.Units = pet_units
    base.DecayCorrection = decay_correction
    base.CorrectedImage = ["DECY", "ATTN", "SCAT"] if decay_correction.upper() != "NONE" else ["ATTN", "SCAT"]
    base.CountsSource = "EMISSION"
    base.SeriesType = ["WHOLE BODY", "IMAGE"]
    base.NumberOfSlices = pn
    base.ActualFrameDuration = 120000
    base.FrameReferenceTime = 0
    base.DecayFactor = "1"
    base.RescaleIntercept = "0"
    drug = Dataset()
    drug.Radiopharmaceutical = "Fluorodeoxyglucose"
    drug.RadiopharmaceuticalStartTime = injection.strftime("%H%M%S.%f")
    drug.RadiopharmaceuticalStartDateTime = injection.strftime("%Y%m%d%H%M%S.%f")
    drug.RadionuclideTotalDose = f"{dose_bq:.10g}"
    drug.RadionuclideHalfLife = f"{half_life_s:g}"
    drug.RadionuclidePositronFraction = "0.9673"
    nuclide = Dataset()
    nuclide.CodeValue, nuclide.CodingSchemeDesignator, nuclide.CodeMeaning = "C-111A1", "SRT", "^18^Fluorine"
    drug.RadionuclideCodeSequence = DicomSequence([nuclide])
    base.RadiopharmaceuticalInformationSequence = DicomSequence([drug])
    if units == "CNTS":
        block = base.private_block(0x7053, "Philips PET Private Group", create=True)
        block.add_new(0x00, "DS", f"{factor * counts_scale:.10g}")  # SUV scale factor: SUV = counts × this
        block.add_new(0x09, "DS", f"{counts_scale:g}")  # activity concentration scale factor: Bq/ml = counts × this
    pet_files, slopes = [], []
    order = range(pn - 1, -1, -1) if pet_descending else range(pn)
    for number, k in enumerate(order, start=1):
        ds = _new_instance(base, number)
        ds.ImageIndex = number
        ipp = ipp0 + k * pet_spacing[0] * normal
        ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
        ds.SliceLocation = f"{ipp[2]:.4f}"
        peak = float(values[k].max())
        slope = float(f"{peak / 32000.0:.8g}") if peak > 0 else 1.0
        ds.RescaleSlope = f"{slope:.8g}"
        ds.PixelData = np.round(values[k] / slope).astype(np.int16).tobytes()
        slopes.append(slope)
        path = os.path.join(pet_dir, f"IM{number:04d}.dcm")
        ds.save_as(path, enforce_file_format=True)
        pet_files.append(path)

    mask_kind = mask.upper() if mask else "NONE"
    mask_path = ""
    if mask_kind == "RTSTRUCT":
        plane_z = [float(ct_origin[2] + k * ct_spacing[0]) for k in range(n)]
        contours = [c for centre_, radius, _ in spheres for c in sphere_contours(centre_, radius, plane_z)]
        mask_path = write_rtstruct(os.path.join(folder, "RTSTRUCT.dcm"), ct_files, {roi_name: contours})
    elif mask_kind == "SEG":
        mask_path = write_seg(os.path.join(folder, "SEG.dcm"), ct_files, {roi_name: ct_sphere_mask})
    elif mask_kind != "NONE":
        raise ValueError(f"mask={mask!r}: expected RTSTRUCT, SEG or none")
    return {
        "folder": folder, "ct_dir": os.path.join(folder, "CT"), "pet_dir": pet_dir, "ct_files": ct_files,
        "pet_files": pet_files, "mask_kind": mask_kind, "mask_path": mask_path, "study_uid": study_uid,
        "ct_series_uid": ct_spec.series_uid, "pet_series_uid": pet_series_uid, "frame_of_reference_uid": frame_uid,
        "patient_id": patient_id, "patient_name": patient_name, "sphere_lps": spheres[0][0],
        "sphere_radius_mm": spheres[0][1], "sphere_suv": spheres[0][2], "spheres": spheres,
        "background_suv": background_suv, "suv_factor": factor, "pet_units": pet_units,
        "decay_correction": decay_correction, "patient_weight": patient_weight, "dose_bq": dose_bq,
        "uptake_s": uptake_s, "half_life_s": half_life_s, "pet_iop": iop, "pet_ipp0": ipp0.tolist(),
        "pet_spacing": tuple(float(v) for v in pet_spacing), "pet_shape": (pn, prow, pcol), "ct_iop": ct_iop,
        "ct_ipp0": list(ct_spec.origin), "ct_spacing": ct_spec.spacing, "ct_shape": (n, rows, cols),
        "pet_slopes": slopes[::-1] if pet_descending else slopes, "ct_sphere_mask": ct_sphere_mask,
        "pet_suv": suv,
    }


# ----------------------------------------------------------------------------------------------------------
# Chest CT phantom for the lung pipeline: lungs, trachea, ribs, spine, a hollow table, nodules
# ----------------------------------------------------------------------------------------------------------
CHEST_HU = {"air": -1000, "tissue": 20, "lung": -850, "bone": 700, "table": 200, "nodule": 40, "vessel": 30}


def _segment_distance2(z: np.ndarray, y: np.ndarray, x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distance (mm²) of the grid points (broadcast z, y, x) to the segment a→b (LPS mm, (x, y, z))."""
    d = b - a
    t = ((x - a[0]) * d[0] + (y - a[1]) * d[1] + (z - a[2]) * d[2]) / float(d @ d)
    t = np.clip(t, 0.0, 1.0)
    return (x - a[0] - t * d[0]) ** 2 + (y - a[1] - t * d[1]) ** 2 + (z - a[2] - t * d[2]) ** 2


def chest_phantom(shape: Sequence[int] = (80, 128, 128), spacing: Sequence[float] = (2.0, 2.0, 2.0),
                  nodules: Sequence | None = None, seed: int = 0):
    """A chest CT phantom in HU: ``(Volume (int16 HU, axial LPS geometry), truth dict)``.

    Axial grid (axis 0 → +z superior, axis 1 → +y posterior, axis 2 → +x patient left; no rotation),
    centred on LPS (0, 0, 0) in-plane and in z. Contents: an elliptic body of soft tissue (~20 HU) through every
    slice (the body touches the first and last slice) in air (-1000 HU); two lung ellipsoids (~-850 HU, noise
    sd 40) whose apices are cut by the top slice and with small vessels (+30 HU) inside; a trachea (air, Ø 16 mm)
    from the top slice down to the carina, then two main bronchi running down and out into the lungs (so the
    airways connect to the lungs, as in real scans); ribs and a spine (+700 HU); a stomach gas bubble under the
    left lung; a hollow table (200 HU shell with an air channel along z) under the body; spherical nodules
    (~+40 HU). Noise: Gaussian (sd 20 in tissue).

    ``nodules``: ``((centre, diameter_mm), ...)``; ``centre`` is a voxel index ``(slice, row, column)`` (3
    numbers, may be fractional) or ``{"lps": (x, y, z)}`` in mm. ``None`` → two defaults: a 10 mm nodule inside
    the right lung and a 12 mm juxtapleural nodule on the left lung's lateral wall (half in the chest wall).

    Truth dict: ``truth`` (uint8 lung mask: lung ellipsoids ∪ nodules touching them; airways outside the
    ellipsoids excluded), ``lungs`` (the ellipsoids alone, bool), ``trachea`` (the trachea above the carina,
    bool), ``bronchi`` (main bronchi outside the lungs, bool), ``body`` (bool), ``outside_air`` (bool),
    ``nodule_masks`` (int16 label map, nodule i → i+1), ``nodule_centres`` ((n, 3) LPS mm),
    ``nodule_centres_index`` ((n, 3) voxel index), ``diameters`` ((n,) mm), ``juxtapleural`` ((n,) bool: the
    nodule comes within one voxel of the lung ellipsoids' surface).
    """
    n, rows, cols = (int(v) for v in shape)
    s = np.asarray(spacing, dtype=np.float64)
    rng = np.random.default_rng(seed)
    origin = np.array([-(cols - 1) / 2 * s[2], -(rows - 1) / 2 * s[1], -(n - 1) / 2 * s[0]])
    # direction columns: axis 0 → +z, axis 1 → +y, axis 2 → +x (an axial series)
    geometry = Geometry((n, rows, cols), s, origin, np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    z = (origin[2] + np.arange(n) * s[0])[:, None, None]
    y = (origin[1] + np.arange(rows) * s[1])[None, :, None]
    x = (origin[0] + np.arange(cols) * s[2])[None, None, :]
    width, height, length = cols * s[2], rows * s[1], n * s[0]
    z_bottom = origin[2] - s[0] / 2

    # body: elliptic cylinder, a little anterior to leave room for the table
    ax, ay, cy = 0.42 * width, 0.30 * height, -0.05 * height
    body2d = (x / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1
    body = np.broadcast_to(body2d, (n, rows, cols))
    hu = np.full((n, rows, cols), float(CHEST_HU["air"]))
    hu[body] = CHEST_HU["tissue"]

    # lungs: ellipsoids, apices above the top slice, bases (diaphragm) near 12 % of the length
    lung_cx, lung_cy = 0.50 * ax, cy - 0.05 * ay
    lax, lay = 0.32 * ax, 0.70 * ay
    lz_c, lz_r = z_bottom + 0.75 * length, 0.63 * length
    lungs = np.zeros((n, rows, cols), dtype=bool)
    for sign in (-1.0, 1.0):
        lungs |= ((((x - sign * lung_cx) / lax) ** 2 + ((y - lung_cy) / lay) ** 2
                   + ((z - lz_c) / lz_r) ** 2) <= 1)
    hu[lungs] = CHEST_HU["lung"] + rng.normal(0, 40, int(lungs.sum()))

    # vessels: small spheres inside the lungs (holes for the segmentation to fill)
    lung_idx = np.argwhere(lungs)
    for k in rng.choice(len(lung_idx), size=min(40, len(lung_idx)), replace=False):
        r = rng.uniform(1.5, 3.0)
        box = tuple(slice(max(0, int(i - r / d) - 1), int(i + r / d) + 2) for i, d in zip(lung_idx[k], s))
        c = origin + lung_idx[k][::-1] * s[::-1]
        ball = (x[..., box[2]] - c[0]) ** 2 + (y[:, box[1]] - c[1]) ** 2 + (z[box[0]] - c[2]) ** 2 <= r * r
        hu[box][ball & lungs[box]] = CHEST_HU["vessel"]

    # airways: trachea down to the carina, main bronchi down and out into each lung
    ty, t_r, b_r = lung_cy - 0.25 * ay, 8.0, 5.0
    carina = np.array([0.0, ty, z_bottom + 0.62 * length])
    top = np.array([0.0, ty, z_bottom + length + 10.0])
    trachea = _segment_distance2(z, y, x, carina, top) <= t_r ** 2
    bronchi = np.zeros_like(trachea)
    for sign in (-1.0, 1.0):
        end = np.array([sign * 0.8 * lung_cx, lung_cy, carina[2] - 0.25 * length])
        bronchi |= _segment_distance2(z, y, x, carina, end) <= b_r ** 2
    airway = trachea | bronchi
    wall = (_segment_distance2(z, y, x, carina, top) <= (t_r + 2.5) ** 2) & ~airway & ~lungs
    hu[wall] = CHEST_HU["tissue"] + 40
    hu[airway] = CHEST_HU["air"] + 80
    trachea &= ~lungs & (z > carina[2])
    bronchi &= ~lungs & ~trachea

    # stomach gas bubble under the left lung
    gas_c = np.array([0.45 * ax, cy + 0.1 * ay, z_bottom + 0.06 * length])
    gas = ((x - gas_c[0]) ** 2 + (y - gas_c[1]) ** 2 + (z - gas_c[2]) ** 2 <= 9.0 ** 2) & body
    hu[gas] = CHEST_HU["air"] + 50

    # ribs: oblique bands of small bone discs inside the body wall; spine posterior
    angles = np.deg2rad(np.concatenate([np.arange(20, 161, 20), np.arange(200, 341, 20)]))
    rib_r = 0.88
    for a in angles:
        px, py = rib_r * ax * np.cos(a), cy + rib_r * ay * np.sin(a)
        disc = (x - px) ** 2 + (y - py) ** 2 <= 4.5 ** 2
        band = ((z - z_bottom + 0.3 * py) % 24.0) < 9.0
        hu[disc & band & body & ~lungs] = CHEST_HU["bone"]
    spine = ((x / 14.0) ** 2 + ((y - (cy + 0.72 * ay)) / 14.0) ** 2 <= 1) & body
    hu[np.broadcast_to(spine, hu.shape)] = CHEST_HU["bone"]

    # hollow table under the body: a shell with an air channel running along z (not connected to the outside
    # in-plane, like a real carbon-fibre table)
    t_top = cy + ay + 8.0
    shell = (np.abs(x) <= 0.45 * width) & (y >= t_top) & (y <= t_top + 14.0)
    cavity = (np.abs(x) <= 0.45 * width - 6.0) & (y >= t_top + 4.0) & (y <= t_top + 10.0)
    hu[np.broadcast_to(shell & ~cavity, hu.shape)] = CHEST_HU["table"]
    hu[np.broadcast_to(cavity, hu.shape)] = CHEST_HU["air"]

    # nodules
    if nodules is None:
        k_mid = 0.55 * (n - 1)
        z_mid = origin[2] + k_mid * s[0]
        half = lax * np.sqrt(max(0.0, 1 - ((z_mid - lz_c) / lz_r) ** 2))  # lung half width at that level
        right = {"lps": (-lung_cx, lung_cy + 0.2 * lay, z_mid)}
        left = {"lps": (lung_cx + half - 5.5, lung_cy, z_mid + 8.0)}  # touches the lateral wall (pleura)
        nodules = ((right, 10.0), (left, 12.0))
    centres, centres_index, diameters, juxta = [], [], [], []
    nodule_masks = np.zeros((n, rows, cols), dtype=np.int16)
    inv = np.linalg.inv(geometry.affine)
    for i, (centre, diameter) in enumerate(nodules):
        if isinstance(centre, dict):
            lps = np.asarray(centre["lps"], dtype=np.float64)
            index = (inv @ np.append(lps, 1.0))[:3]
        else:
            index = np.asarray(centre, dtype=np.float64)
            lps = (geometry.affine @ np.append(index, 1.0))[:3]
        r = float(diameter) / 2
        ball = (x - lps[0]) ** 2 + (y - lps[1]) ** 2 + (z - lps[2]) ** 2 <= r * r
        hu[ball] = CHEST_HU["nodule"]
        nodule_masks[ball] = i + 1
        centres.append(lps)
        centres_index.append(index)
        diameters.append(float(diameter))
        near = (x - lps[0]) ** 2 + (y - lps[1]) ** 2 + (z - lps[2]) ** 2 <= (r + float(s.max())) ** 2
        juxta.append(bool(np.any(near & ~lungs)))

    noise = rng.normal(0, 20, hu.shape)
    hu += np.where(lungs & (nodule_masks == 0), 0.0, noise)
    hu = np.clip(np.round(hu), -1024, 3071).astype(np.int16)

    truth = lungs.copy()
    for i in range(len(diameters)):
        ball = nodule_masks == i + 1
        if np.any(ball & lungs):
            truth |= ball
    outside_air = ~np.broadcast_to(body2d, hu.shape) & (hu < -320)
    info = {
        "truth": truth.astype(np.uint8), "lungs": lungs, "trachea": trachea, "bronchi": bronchi,
        "body": np.array(body),
        "outside_air": outside_air, "nodule_masks": nodule_masks,
        "nodule_centres": np.array(centres, dtype=np.float64).reshape(-1, 3),
        "nodule_centres_index": np.array(centres_index, dtype=np.float64).reshape(-1, 3),
        "diameters": np.array(diameters, dtype=np.float64), "juxtapleural": np.array(juxta, dtype=bool),
    }
    attrs = {"modality": "CT", "source": "voxelpipe.testing.synthetic.chest_phantom", "seed": int(seed)}
    return Volume(hu, geometry, attrs, ""), info
