"""Overlay PNGs of contour pairs: the image (rescaled, DICOM window) with the outline of each mask, drawn by
``voxelpipe.ops.overlay`` and written by ``voxelpipe.stores.images``."""
from __future__ import annotations

import os

import numpy as np

from voxelpipe.apps.contours.records import PairData, PatientTask
from voxelpipe.ops.overlay import overlay_rgb
from voxelpipe.stores.images import write_png

__all__ = ["needs_overlay", "overlay_rel", "write_overlay"]


def overlay_rel(task: PatientTask, instance: int) -> str:
    """The overlay of a pair relative to the output folder (``overlays/<patient_key>/<NNNN>.png``), "" when
    overlays are not asked for."""
    return f"overlays/{task.key}/{instance:04d}.png" if task.overlay else ""


def needs_overlay(task: PatientTask, rel: str) -> bool:
    """True when overlay ``rel`` is asked for and must be written (absent, or ``overwrite``)."""
    return bool(rel) and (task.overwrite or not os.path.isfile(os.path.join(task.out, rel)))


def write_overlay(task: PatientTask, data: PairData, rel: str) -> None:
    """Write the overlay PNG of ``data`` at ``rel``: rescaled image (slope × stored + intercept), the header's
    window when it has one, mask outlines in the default colours."""
    image = data.image
    shown = image if data.rescale is None else image.astype(np.float64) * data.rescale[0] + data.rescale[1]
    write_png(os.path.join(task.out, rel), overlay_rgb(shown, data.masks, window=data.window))
