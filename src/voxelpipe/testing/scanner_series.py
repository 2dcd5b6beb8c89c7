"""Synthetic CT series with scanner geometry quirks: gantry tilt and uneven slice spacing.

Every pixel holds :func:`smooth_hu` evaluated at the pixel centre's patient position (LPS mm), so the true value
of any point in space is known and a regridded volume can be checked against it. Files are written with pydicom
(explicit VR little endian, int16, RescaleIntercept -1024). Arrays are (slice, row, column).
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from voxelpipe.testing.synthetic import ROOT_UID, image_dataset

__all__ = ["smooth_hu", "slice_points", "write_slices", "write_tilted_series", "write_uneven_series",
           "tilted_positions"]

BLOBS = (  # (centre LPS mm, sigma mm, amplitude HU)
    ((-6.0, 4.0, 12.0), 9.0, 900.0),
    ((8.0, -5.0, 30.0), 7.0, -600.0),
    ((2.0, 6.0, 45.0), 11.0, 500.0),
)


def smooth_hu(points: np.ndarray) -> np.ndarray:
    """A smooth HU field at LPS points ``(..., 3)`` (mm): a few Gaussian blobs on a gentle ramp along z."""
    points = np.asarray(points, dtype=np.float64)
    value = 40.0 + 4.0 * points[..., 2] + 2.0 * points[..., 0]
    for centre, sigma, amplitude in BLOBS:
        d2 = np.sum((points - np.asarray(centre)) ** 2, axis=-1)
        value = value + amplitude * np.exp(-d2 / (2.0 * sigma * sigma))
    return value


def slice_points(ipp: Sequence[float], iop: Sequence[float], rows: int, columns: int,
                 pixel_spacing: Sequence[float]) -> np.ndarray:
    """LPS centre of every pixel of one slice, shape (rows, columns, 3): ``ipp + c·Δc·row_cos + r·Δr·col_cos``."""
    row_cos = np.asarray(iop[:3], dtype=np.float64)
    col_cos = np.asarray(iop[3:6], dtype=np.float64)
    r = np.arange(rows, dtype=np.float64)[:, None, None] * float(pixel_spacing[0])
    c = np.arange(columns, dtype=np.float64)[None, :, None] * float(pixel_spacing[1])
    return np.asarray(ipp, dtype=np.float64) + c * row_cos + r * col_cos


INTERCEPT = -1024.0


def _ct_dataset(rows: int, columns: int, pixel_spacing: Sequence[float], description: str) -> Dataset:
    """The tags every slice of one synthetic CT series shares (new study and series UIDs)."""
    ds = image_dataset("CT")
    ds.StudyTime = "120000"
    ds.SeriesDescription = description
    ds.ProtocolName = description.replace(" ", "_")
    ds.PatientName = "Synthetic^Scanner"
    ds.PatientID = "VP-SCANNER-001"
    ds.StudyInstanceUID = generate_uid(ROOT_UID)
    ds.SeriesInstanceUID = generate_uid(ROOT_UID)
    ds.StudyID = "1"
    ds.SeriesNumber = 3
    ds.FrameOfReferenceUID = generate_uid(ROOT_UID)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.PixelSpacing = [f"{float(v):g}" for v in pixel_spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = "1"
    ds.RescaleIntercept = f"{INTERCEPT:g}"
    ds.RescaleType = "HU"
    return ds


def write_slices(folder: str | os.PathLike, ipps: Sequence[Sequence[float]], iop: Sequence[float], *,
                 rows: int = 40, columns: int = 40, pixel_spacing: Sequence[float] = (1.0, 1.0),
                 tags: dict | None = None, description: str = "synthetic CT") -> list[str]:
    """One CT series, one file per ImagePositionPatient of ``ipps`` (in that order), orientation ``iop``.

    Pixel values are :func:`smooth_hu` at every pixel centre, rounded to integers (HU). ``tags``: extra keyword
    -> value set on every file (e.g. ``GantryDetectorTilt``). Returns the paths.
    """
    os.makedirs(folder, exist_ok=True)
    base = _ct_dataset(rows, columns, pixel_spacing, description)
    for keyword, value in (tags or {}).items():
        setattr(base, keyword, value)
    paths = []
    for number, ipp in enumerate(ipps, start=1):
        ds = base.copy()
        ds.file_meta = base.file_meta.copy()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(ROOT_UID)
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
        hu = np.round(smooth_hu(slice_points(ipp, iop, rows, columns, pixel_spacing)))
        ds.PixelData = (hu - INTERCEPT).astype(np.int16).tobytes()
        path = os.path.join(folder, f"IM{number:04d}.dcm")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def tilted_positions(tilt_deg: float, n_slices: int, table_step_mm: float,
                     origin: Sequence[float] = (-20.0, -20.0, 0.0)) -> tuple[np.ndarray, list[float]]:
    """ImagePositionPatient (n, 3) and ImageOrientationPatient of a gantry tilted about the patient x axis.

    The table moves along +z (S) by ``table_step_mm`` per slice; the image planes are tilted by ``tilt_deg``
    about x: column cosine (0, cos t, -sin t), so the plane normal is (0, sin t, cos t) and the slice stack
    leans by ``tilt_deg`` from the normal.
    """
    t = math.radians(tilt_deg)
    iop = [1.0, 0.0, 0.0, 0.0, math.cos(t), -math.sin(t)]
    ipps = np.asarray(origin, dtype=np.float64) + np.outer(np.arange(n_slices), [0.0, 0.0, table_step_mm])
    return ipps, iop


def write_tilted_series(folder: str | os.PathLike, tilt_deg: float = 15.0, *, n_slices: int = 24,
                        table_step_mm: float = 2.5, rows: int = 40, columns: int = 40,
                        pixel_spacing: Sequence[float] = (1.0, 1.0), gantry_tag: float | None = None) -> list[str]:
    """A gantry-tilted axial CT series (see :func:`tilted_positions`); ``gantry_tag`` writes GantryDetectorTilt
    (0018,1120) with that value (degrees) when given."""
    ipps, iop = tilted_positions(tilt_deg, n_slices, table_step_mm)
    tags = {} if gantry_tag is None else {"GantryDetectorTilt": f"{gantry_tag:g}"}
    return write_slices(folder, ipps, iop, rows=rows, columns=columns, pixel_spacing=pixel_spacing, tags=tags,
                        description=f"tilted CT {tilt_deg:g} deg")


def write_uneven_series(folder: str | os.PathLike, positions_mm: Sequence[float], *, rows: int = 40,
                        columns: int = 40, pixel_spacing: Sequence[float] = (1.0, 1.0),
                        origin_xy: Sequence[float] = (-20.0, -20.0)) -> list[str]:
    """An axial CT series with slices at z = ``positions_mm`` (ascending; steps may differ)."""
    ipps = [(float(origin_xy[0]), float(origin_xy[1]), float(z)) for z in positions_mm]
    return write_slices(folder, ipps, [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], rows=rows, columns=columns,
                        pixel_spacing=pixel_spacing, description="uneven CT")
