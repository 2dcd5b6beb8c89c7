"""``project-2d``: rotated maximum intensity projections of every subject of a subject file, for augmentation.

For every complete subject of ``source`` (``voxelpipe.stores.subject_store`` layout, arrays on the grid of
``attrs["geometry"]``) and every angle, the PET and CT channels are projected by max with
:func:`voxelpipe.ops.projection.project` about the patient ``axis`` (all angles in one pass per channel), the mask
in the PET pass and ``mask_iso`` in the CT pass (``mask=``: max projection, labels kept, nearest sampling).
Every projection is its own entry of the 2-D file (same layout, 2-D arrays)::

    image/<s>_a<angle>      float32 [2, H, W]   0 = PET MIP, 1 = CT MIP; rows along the axis, columns across
    mask/<s>_a<angle>       uint8   [1, H, W]   max projection of mask
    mask_iso/<s>_a<angle>   uint8   [1, H, W]   max projection of mask_iso

``<angle>``: the integer part with 3 digits (``000``, ``045``, ``315``), plus the fraction when there is one
(``022.5``). Attributes of ``image/<key>``: subject, angle, axis, kind, pixel_spacing (mm between rows, between
columns), source, the projection geometry (centre, axis_direction, ray_direction, column_direction,
row_positions in LPS mm) and the fill value of each channel (pixels whose ray misses the volume).

Workers (``voxelpipe.execution.imap``, one subject per task) read the source and project; the main process
alone writes the 2-D file. A rerun skips subjects whose projections are all complete (status ``skipped``) and
redoes the others (``done``, or ``failed`` with the reason).
"""
from __future__ import annotations

import logging
import math
import os
import time

import numpy as np

from voxelpipe.core import defaults
from voxelpipe.core.errors import InputError, VoxelpipeError
from voxelpipe.core.geometry import Geometry
from voxelpipe.core.progress import Progress
from voxelpipe.core.rows import done_row, failed_row, skipped_row
from voxelpipe.core.types import Status
from voxelpipe.core.volume import Volume
from voxelpipe.execution import default_workers, imap
from voxelpipe.ops.projection import project
from voxelpipe.pipelines.transform import parse_angles
from voxelpipe.stores.subject_store import LAYOUT_2D, open_subject_store

log = logging.getLogger("voxelpipe")

__all__ = ["project_2d", "angle_key", "projection_key"]


def angle_key(angle: float) -> str:
    """``45`` → ``"045"``, ``22.5`` → ``"022.5"``, ``-90`` → ``"-090"``."""
    angle = float(angle)
    if not math.isfinite(angle):
        raise InputError(f"angle {angle!r} is not finite")
    sign = "-" if angle < 0 else ""
    value = abs(angle)
    whole = int(math.floor(value))
    if value == whole:
        return f"{sign}{whole:03d}"
    fraction = repr(value).split(".")[1] if "e" not in repr(value) else f"{value - whole:.6f}"[2:].rstrip("0")
    return f"{sign}{whole:03d}.{fraction}"


def projection_key(subject: str, angle: float) -> str:
    return f"{subject}_a{angle_key(angle)}"


def _project_subject(task: tuple) -> dict:
    """Worker: read one subject, project both channels and both masks at every angle."""
    source, subject, angles, axis = task
    started = time.perf_counter()
    try:
        with open_subject_store(source, "r") as store:
            data = store.read(subject)
        attrs = data["attrs"]
        if "geometry" not in attrs:
            raise InputError(f"{source}: subject {subject}: attrs hold no 'geometry' (Geometry.to_attrs of the "
                             "grid); cannot place the projections")
        geometry = Geometry.from_attrs(attrs["geometry"])
        image = data["image"]
        pet = project(Volume(image[0], geometry), angles, axis=axis, kind="max", mask=data["mask"][0])
        ct = project(Volume(image[1], geometry), angles, axis=axis, kind="max", mask=data["mask_iso"][0])
    except (VoxelpipeError, KeyError, OSError, ValueError) as exc:
        return failed_row({"subject": subject}, f"{source}: subject {subject}: {exc}",
                          seconds=round(time.perf_counter() - started, 3))
    return {
        "subject": subject, "status": Status.DONE,
        "images": np.stack([pet.images, ct.images], axis=1),  # (angle, channel, H, W)
        "mask": pet.mask_images[:, None], "mask_iso": ct.mask_images[:, None],
        "geometry": {
            "pixel_spacing": [float(v) for v in pet.pixel_spacing], "centre": pet.centre.tolist(),
            "axis_direction": pet.axis_direction.tolist(), "ray_directions": pet.ray_directions.tolist(),
            "column_directions": pet.column_directions.tolist(), "row_positions": pet.row_positions.tolist(),
            "fill": [float(pet.fill), float(ct.fill)], "array_axis": int(pet.array_axis),
            "source_shape": list(image.shape),
        },
        "seconds": round(time.perf_counter() - started, 3),
    }


def _angle_list(angles) -> list[float]:
    if isinstance(angles, str):
        angles = parse_angles(angles)
    try:
        values = [float(a) for a in np.atleast_1d(np.asarray(angles, dtype=np.float64))]
    except (TypeError, ValueError) as exc:
        raise InputError(f"angles must be numbers, got {angles!r}") from exc
    if not values:
        raise InputError("angles: give at least one angle")
    keys = [angle_key(a) for a in values]
    if len(set(keys)) != len(keys):
        raise InputError(f"angles {values} name the same projection twice ({sorted(keys)})")
    return values


def project_2d(source, out, angles, axis: str = defaults.PROJECTION_AXIS, workers: int | None = None,
               progress: bool = True) -> list[dict]:
    """MIPs of every complete subject of ``source`` at ``angles`` (degrees; a list or ``"0:360:45"``) about
    ``axis`` into the 2-D file ``out`` (``.h5`` / ``.zarr``). Returns one row per subject: subject, status
    (done | skipped | failed), reason, projections, seconds."""
    source = os.fspath(source).rstrip("/")
    out = os.fspath(out).rstrip("/")
    if os.path.realpath(source) == os.path.realpath(out):
        raise InputError(f"{out}: the 2-D output must differ from the source")
    if not isinstance(axis, str) or axis.upper() not in ("S", "I", "A", "P", "L", "R"):
        raise InputError(f"axis must be one of S, I, A, P, L, R, got {axis!r}")
    axis = axis.upper()
    angles = _angle_list(angles)
    with open_subject_store(source, "r") as store:
        subjects = store.subjects()
    rows: list[dict] = []
    with open_subject_store(out, "a", layout=LAYOUT_2D, content="projections-2d") as target:
        todo = []
        for subject in subjects:
            if all(target.has(projection_key(subject, a)) for a in angles):
                rows.append(skipped_row({"subject": subject}, "projections complete", projections=len(angles)))
            else:
                todo.append((source, subject, angles, axis))
        n_workers = max(1, min(workers or default_workers(), len(todo) or 1))
        with Progress(len(todo), "project-2d", unit="subjects", enabled=progress) as bar:
            for result in imap(_project_subject, todo, n_workers):
                subject = result["subject"]
                if result["status"] != Status.DONE:
                    log.warning("project-2d: %s", result["reason"])
                    rows.append({k: result[k] for k in ("subject", "status", "reason", "seconds")})
                    bar.update()
                    continue
                geometry = result["geometry"]
                for n, angle in enumerate(angles):
                    attrs = {
                        "subject": subject, "angle": angle, "axis": axis, "kind": "max",
                        "channels": ["PET", "CT"], "source": source,
                        "pixel_spacing": geometry["pixel_spacing"],
                        "ray_direction": geometry["ray_directions"][n],
                        "column_direction": geometry["column_directions"][n],
                        "axis_direction": geometry["axis_direction"], "centre": geometry["centre"],
                        "row_positions": geometry["row_positions"], "fill": geometry["fill"],
                        "array_axis": geometry["array_axis"], "source_shape": geometry["source_shape"],
                        "axes": ["channel", "row (along axis_direction)", "column (along column_direction)"],
                        "coordinate_system": "LPS", "units": "mm",
                    }
                    target.write(projection_key(subject, angle), result["images"][n], result["mask"][n],
                                 result["mask_iso"][n], attrs)
                rows.append(done_row({"subject": subject}, projections=len(angles), seconds=result["seconds"]))
                bar.update()
    return rows
