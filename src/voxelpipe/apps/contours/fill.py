"""Masks from contour polygons (the pixel-centre rule of ``voxelpipe.ops.polygon.fill_polygons``, which equals
skimage's ``polygon2mask``), and a candidate read and filled into a :class:`PairData`."""
from __future__ import annotations

import numpy as np

from voxelpipe._version import __version__
from voxelpipe.apps.contours.image import read_image
from voxelpipe.apps.contours.records import Candidate, PairData, PatientTask, Problem
from voxelpipe.core.errors import InputError
from voxelpipe.ops.polygon import fill_polygons

__all__ = ["build_pair", "fill_mask", "polygon_rows_cols"]


def polygon_rows_cols(points: np.ndarray) -> np.ndarray:
    """File vertices (x = column, y = row) as (row, column) vertices for the polygon kernel."""
    return np.ascontiguousarray(points[:, ::-1])


def fill_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The mask of one contour polygon.

    Args:
        points: (K, 2) vertices in file order: x (column), y (row), in pixels.
        shape: (rows, columns) of the image.

    Returns:
        uint8 (rows, columns): 1 where the pixel centre is inside the polygon.
    """
    return fill_polygons([polygon_rows_cols(points)], shape)


def build_pair(task: PatientTask, cand: Candidate, problems: list[Problem]) -> PairData | None:
    """Read the image of ``cand`` and fill its masks; None (and an ``image_error`` problem) when the image is
    unusable."""
    try:
        image, meta, window, rescale = read_image(cand.dicom_path)
    except Exception as exc:  # pydicom raises many types for a bad file: each one is this pair's problem
        problems.append(Problem(task.key, "image_error", cand.dicom_path, f"{cand.dicom_path}: "
                                f"{exc if isinstance(exc, InputError) else f'{type(exc).__name__}: {exc}'}",
                                instance_number=cand.instance_number))
        return None
    shape = (image.shape[0], image.shape[1])
    masks = {kind: np.ascontiguousarray(fill_mask(points, shape), dtype=np.uint8)
             for kind, points in cand.polygons.items()}
    meta = {"patient_key": task.key, "instance_number": cand.instance_number, **meta,
            "source_dicom": cand.dicom_path, "contour_files": dict(cand.contours), "kinds": list(cand.polygons),
            "voxelpipe_version": __version__}
    return PairData(image, masks, meta, window, rescale)
