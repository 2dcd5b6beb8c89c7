"""A synthetic Enhanced CT multi-frame file, written frame by frame (large files without holding them in memory).

Used by the verification tests and ``benches/bench_cli.py``.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from voxelpipe.testing.synthetic import ROOT_UID, image_dataset

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
SPACING = (1.25, 0.7, 0.7)  # mm: slice, row, column


def frame_pixels(index: int, rows: int, columns: int) -> np.ndarray:
    """The stored values (int16, rows x columns) of file frame ``index``: a ramp that compresses well."""
    ramp = (np.arange(rows, dtype=np.int32)[:, None] * 3 + np.arange(columns, dtype=np.int32)[None, :]) % 1500
    return (ramp + 7 * index).astype(np.int16)


def write_enhanced_ct(path: Path, order: list[int], rows: int, columns: int) -> dict:
    """One Enhanced CT file of ``len(order)`` frames (explicit VR little endian, int16): file frame ``i`` lies at
    slice position ``order[i]`` and holds ``frame_pixels(i)``, rescaled by slope 1 and its own intercept
    ``-1024 + i % 3`` (per-frame functional groups). Returns the facts written: the intercepts by frame."""
    ds = image_dataset("CT")
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT
    sop_uid = generate_uid(ROOT_UID)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID, ds.SOPInstanceUID = ENHANCED_CT, sop_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.PatientName, ds.PatientID = "Synthetic^Multiframe", "VP-MF-001"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(ROOT_UID), generate_uid(ROOT_UID)
    ds.FrameOfReferenceUID = generate_uid(ROOT_UID)
    ds.SeriesNumber, ds.InstanceNumber = 3, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, len(order)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    measures = Dataset()
    measures.PixelSpacing = [f"{SPACING[1]:g}", f"{SPACING[2]:g}"]
    measures.SliceThickness = f"{SPACING[0]:g}"
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    intercepts = [-1024 + i % 3 for i in range(len(order))]
    per_frame = []
    for i, z in enumerate(order):
        position = Dataset()
        position.ImagePositionPatient = [-100.0, -80.0, f"{-50.0 + z * SPACING[0]:g}"]
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, intercepts[i], "HU"
        item = Dataset()
        item.PlanePositionSequence = DicomSequence([position])
        item.PixelValueTransformationSequence = DicomSequence([transform])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.save_as(path, enforce_file_format=True)  # no Pixel Data yet: appended below, frame by frame
    n_bytes = len(order) * rows * columns * 2
    with open(path, "ab") as fh:
        fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, n_bytes))
        for i in range(len(order)):
            fh.write(frame_pixels(i, rows, columns).astype("<i2").tobytes())
    return {"intercepts": intercepts}


__all__ = ["ENHANCED_CT", "SPACING", "frame_pixels", "write_enhanced_ct"]
