"""`report`: one self-contained HTML verification report of a `convert` output folder (layout: voxelpipe.apps.report.html).

Reads, never writes, the output folder OUT:

- the summaries: ``summary_all.csv`` (from `aggregate`) when it is at least as new as every other
  ``summary_<suffix>.csv``, else those merged by aggregate's rule (a later row of a series wins, except that a
  ``skipped`` row does not replace a converted one); run times from the ``summary_<suffix>.json`` beside each;
- the scan manifest named in the json (``options.manifest``; else ``OUT/manifest/series_all.csv``) for the
  geometry checks, and its ``unreadable_files.csv``;
- the volumes of the series shown: every failed one (reason, no pictures), every flagged one (a check of the
  manifest says something is off) and ``samples`` converted ones drawn with ``random.Random(seed)``.

Pictures, per volume shown: the middle array plane across each patient axis (axial, coronal, sagittal: the
array axis closest to S, A/P, L/R, by nibabel's ``io_orientation`` rule, so oblique volumes give their nearest
array planes), windowed W400/L40 for CT and 1st-99th percentile otherwise, resampled with Pillow (bilinear) to
square millimetre pixels at most ``MAX_SIDE`` pixels long; an anterior MIP (``voxelpipe.ops.projection.project``,
axis S, 0°, 1st-99th percentile); for Zarr volumes with masks, one axial plane through each mask's centroid with
the outlines of every mask (``overlay_rgb``). 4-D volumes show frame 0.

Memory: slices are read one plane at a time (zarr and h5py index lazily; an NPZ volume is loaded whole); a mask's
centroid is summed one chunk slab at a time; the MIP reads the whole volume, strided by the smallest integer step
on every axis that leaves at most ``MIP_MAX_VOXELS`` voxels.
"""
from __future__ import annotations

import glob
import json
import logging
import math
import os
import random
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import product

import numpy as np

from voxelpipe._version import __version__
from voxelpipe.core.errors import InputError, failure_reason
from voxelpipe.core.geometry import Geometry
from voxelpipe.ops.overlay import mask_colors, overlay_rgb, window_to_uint8
from voxelpipe.core.progress import Progress
from voxelpipe.apps.report.html import Picture, ReportData, SeriesSection, render
from voxelpipe.ops.reorient import axis_codes, orientation
from voxelpipe.stores.zarr_store import STORE_SUFFIXES
from voxelpipe.stores.tables import atomic_path, read_csv
from voxelpipe.core.volume import Volume
from voxelpipe.stores.volumes import open_volume
from voxelpipe.pipelines.convert import merge_summaries, unreadable_csv

log = logging.getLogger("voxelpipe")

MAX_SIDE = 256  # longest side of a picture, pixels
CT_WINDOW = (40.0, 400.0)  # soft tissue (centre, width), HU
MIP_MAX_VOXELS = 16 * 1024 * 1024  # larger volumes are strided for the MIP
MAX_OVERLAYS = 6  # masks per series drawn through their centroid (all are listed in the legend)
GANTRY_TILT_TOLERANCE_DEG = 0.05
SPACING_TOLERANCE_MM = 0.01  # uneven spacing: max - min step above this and above 1 % of the median step
MAX_UNREADABLE_GROUPS = 50
ALL_SUMMARY = "summary_all.csv"

# view -> (patient axis of the plane normal, (axis, sign) growing down the rows, (axis, sign) growing rightward);
# patient axes are LPS indices 0 (L), 1 (P), 2 (S); sign +1 = toward L / P / S
VIEWS = {
    "axial": (2, (1, 1), (0, 1)),  # anterior up, patient left on the right
    "coronal": (1, (2, -1), (0, 1)),  # superior up, patient left on the right
    "sagittal": (0, (2, -1), (1, 1)),  # superior up, posterior on the right
}
_LETTER = {(0, 1): "L", (0, -1): "R", (1, 1): "P", (1, -1): "A", (2, 1): "S", (2, -1): "I"}
_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?(?:[\\/][^\\/\s:,;'\"()]+)+[\\/]?")


# ----------------------------------------------------------------------------------------------------------
# reading the output folder
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One ``summary_<suffix>.csv`` with its rows and its json (None when absent or unreadable)."""

    csv: str
    rows: list[dict]
    info: dict | None


def load_runs(out: str) -> tuple[list[dict], list[Run], str]:
    """The series rows to report (one per series key), every run, and where the rows came from."""
    if not os.path.isdir(out):
        raise InputError(f"{out}: no such folder (give the output folder of convert)")
    paths = sorted(p for p in glob.glob(os.path.join(out, "summary_*.csv")) if os.path.basename(p) != ALL_SUMMARY)
    merged = os.path.join(out, ALL_SUMMARY)
    if not paths and not os.path.isfile(merged):
        raise InputError(f"{out}: no summary_*.csv here: not an output folder of convert")
    runs = [Run(p, read_csv(p), _read_json(p[:-len(".csv")] + ".json")) for p in paths]
    if os.path.isfile(merged) and all(os.path.getmtime(merged) >= os.path.getmtime(p) for p in paths):
        return sorted(read_csv(merged), key=lambda r: r["series_key"]), runs, ALL_SUMMARY
    if os.path.isfile(merged):
        log.warning("report: %s is older than a shard summary; merging the shard summaries instead", merged)
    return merge_summaries([(run.csv, run.rows) for run in runs]), runs, ", ".join(os.path.basename(p) for p in paths)


def _read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        log.warning("report: %s unreadable (%s); its run time is left out", path, exc)
        return None


def manifest_paths(out: str, runs: list[Run]) -> list[str]:
    """The manifest CSVs the runs converted (``options.manifest``), else ``OUT/manifest/series_all.csv``."""
    found = []
    for run in runs:
        path = ((run.info or {}).get("options") or {}).get("manifest") or ""
        if path and os.path.isfile(path) and path not in found:
            found.append(path)
    fallback = os.path.join(out, "manifest", "series_all.csv")
    if not found and os.path.isfile(fallback):
        found.append(fallback)
    return found


def load_unreadable(out: str, runs: list[Run], manifests: list[str]) -> tuple[list[dict], str]:
    """Rows of the manifest's ``unreadable_files.csv`` (each file once) and the CSV paths read."""
    candidates = [(r.info or {}).get("unreadable_list") or "" for r in runs]
    candidates += [unreadable_csv(m) for m in manifests] + [os.path.join(out, "manifest", "unreadable_files.csv")]
    rows: dict[str, dict] = {}
    used: list[str] = []
    for path in candidates:
        path = os.path.abspath(path) if path else ""
        if path and os.path.isfile(path) and path not in used:
            used.append(path)
            for row in read_csv(path):
                rows.setdefault(row.get("path", ""), row)
    return list(rows.values()), ", ".join(used)


# ----------------------------------------------------------------------------------------------------------
# checks of the scan (columns of series_all.csv)
# ----------------------------------------------------------------------------------------------------------
def _number(text: object) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return 0.0


def series_checks(row: dict) -> list[tuple[str, str, str, str]]:
    """(column, value, verdict, meaning) for the geometry checks of one manifest row; verdict ``flag`` when the
    check says something is off, ``note`` for what is unusual but handled, else ``ok``."""
    def check(column: str, off: bool, meaning: str, verdict: str = "flag") -> tuple[str, str, str, str]:
        return column, str(row.get(column, "")), verdict if off else "ok", meaning

    lo, hi, median = (_number(row.get(c)) for c in ("spacing_min", "spacing_max", "spacing_median"))
    uneven = hi - lo > max(SPACING_TOLERANCE_MM, 0.01 * median)
    repeated = _number(row.get("frames_per_position")) > 1  # phases numbered one after another: not a fault
    return [
        check("missing_slices", _number(row.get("missing_slices")) > 0, "steps larger than 1.5 × the median step"),
        check("duplicate_positions", _number(row.get("duplicate_positions")) > 0,
              "images beyond the usual number at a position"),
        check("incomplete_positions", _number(row.get("incomplete_positions")) > 0,
              "positions with fewer images than the others"),
        ("spacing_min..spacing_max", f"{row.get('spacing_min', '')}..{row.get('spacing_max', '')}",
         "flag" if uneven else "ok", "uneven steps between slices (mm)"),
        check("gantry_tilt_deg", _number(row.get("gantry_tilt_deg")) > GANTRY_TILT_TOLERANCE_DEG,
              "slices not stacked along their normal (degrees)"),
        check("instance_order_matches_position", str(row.get("instance_order_matches_position")) == "False",
              "InstanceNumber order follows the positions", "note" if repeated else "flag"),
        check("orientation_consistent", str(row.get("orientation_consistent")) == "False",
              "one orientation in the series"),
        check("split_reason", bool(row.get("split_reason")), "why the series was split"),
        check("rescale_varies", str(row.get("rescale_varies")) == "True", "rescale differs between images "
              "(usual for PET)", "note"),
        check("frames_per_position", _number(row.get("frames_per_position")) > 1,
              "images per position (> 1: 4-D volume)", "note"),
        check("localizers_skipped", _number(row.get("localizers_skipped")) > 0, "localizer images left out",
              "note"),
    ]


def is_flagged(row: dict | None) -> bool:
    return bool(row) and any(verdict == "flag" for _, _, verdict, _ in series_checks(row))


# ----------------------------------------------------------------------------------------------------------
# pictures
# ----------------------------------------------------------------------------------------------------------
@dataclass
class ViewPlan:
    """How to cut one view out of a (slice, row, column) array: the array axis across the plane (``axis``), the
    array axes shown down the rows and across the columns, flips, their spacings (mm) and the patient
    directions at the top and on the left of the picture."""

    view: str
    axis: int
    row_axis: int
    col_axis: int
    flip_rows: bool
    flip_cols: bool
    spacing: tuple[float, float]
    up: str
    left: str


def view_plan(geometry: Geometry, view: str) -> ViewPlan:
    normal, (row_world, row_sign), (col_world, col_sign) = VIEWS[view]
    axes = orientation(geometry.affine)  # per array axis: (closest LPS axis, sign)
    world_to_axis = {world: (a, sign) for a, (world, sign) in enumerate(axes)}
    row_axis, row_dir = world_to_axis[row_world]
    col_axis, col_dir = world_to_axis[col_world]
    spacing = tuple(_spacing(geometry, a) for a in (row_axis, col_axis))
    return ViewPlan(view, world_to_axis[normal][0], row_axis, col_axis, row_dir != row_sign, col_dir != col_sign,
                    spacing, _LETTER[(row_world, -row_sign)], _LETTER[(col_world, -col_sign)])


def _spacing(geometry: Geometry, axis: int) -> float:
    value = abs(float(geometry.spacing[axis]))
    return value if math.isfinite(value) and value > 0 else 1.0


def read_plane(array, plan: ViewPlan, index: int, lead: tuple = ()) -> np.ndarray:
    """The plane ``index`` of array axis ``plan.axis`` as (rows, columns) of the picture; only that plane is
    read from a lazy array. ``lead``: indices of leading axes (the frame of a 4-D volume)."""
    selection = [slice(None)] * 3
    selection[plan.axis] = index
    return orient_plane(np.asarray(array[lead + tuple(selection)]), plan)


def orient_plane(plane: np.ndarray, plan: ViewPlan) -> np.ndarray:
    """A 2-D array over the two array axes other than ``plan.axis`` (in array order) turned and flipped to the
    picture's (rows, columns)."""
    remaining = [a for a in range(3) if a != plan.axis]
    if remaining[0] != plan.row_axis:
        plane = plane.T
    if plan.flip_rows:
        plane = plane[::-1]
    if plan.flip_cols:
        plane = plane[:, ::-1]
    return plane


def display_size(shape: tuple[int, int], spacing: tuple[float, float], max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(rows, columns) of a picture of ``shape`` pixels ``spacing`` mm apart with square pixels: the finer
    spacing kept unless the longer side would exceed ``max_side``."""
    extent = (shape[0] * spacing[0], shape[1] * spacing[1])
    pixel = max(min(spacing), max(extent) / max_side)
    return max(1, int(round(extent[0] / pixel))), max(1, int(round(extent[1] / pixel)))


def square_pixels(plane: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """``plane`` resampled (Pillow bilinear, float32) to :func:`display_size`; unchanged when it already is."""
    from PIL import Image

    rows, cols = display_size(plane.shape, spacing)
    if (rows, cols) == plane.shape:
        return plane
    image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))
    return np.asarray(image.resize((cols, rows), Image.Resampling.BILINEAR))


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    inside = np.ascontiguousarray(mask != 0, dtype=np.uint8)
    if inside.shape == shape:
        return inside
    return np.asarray(Image.fromarray(inside).resize((shape[1], shape[0]), Image.Resampling.NEAREST))


def window_of(attrs: dict) -> tuple[float, float] | None:
    """Soft-tissue window for CT, else None (1st-99th percentile)."""
    return CT_WINDOW if str(attrs.get("modality", "")).upper() == "CT" else None


def _caption(plan: ViewPlan, index: int, n: int, shape: tuple[int, ...], extra: str = "") -> str:
    return (f"{plan.view}{extra}: axis {plan.axis} index {index} of {n}; top {plan.up}, left {plan.left}; "
            f"{shape[1]}×{shape[0]} px")


def view_pictures(volume: Volume, lead: tuple, window) -> list[Picture]:
    """The middle plane across each patient axis."""
    pictures = []
    for view in VIEWS:
        plan = view_plan(volume.geometry, view)
        n = volume.shape[-3:][plan.axis]
        index = n // 2
        image = square_pixels(read_plane(volume.array, plan, index, lead), plan.spacing)
        pictures.append(Picture(view, _caption(plan, index, n, image.shape), window_to_uint8(image, window)))
    return pictures


def _strided(geometry: Geometry, shape: tuple[int, ...], step: int) -> Geometry:
    affine = np.array(geometry.affine, dtype=np.float64)
    affine[:3, :3] *= step
    positions = np.asarray(geometry.slice_positions)[::step] if len(geometry.slice_positions) else None
    return Geometry(shape, geometry.spacing * step, geometry.origin, geometry.direction, positions, affine)


def mip_picture(volume: Volume, lead: tuple) -> Picture:
    """Anterior maximum intensity projection (axis S, 0°: rays A→P), cropped to the volume's extent, superior
    up; the volume is strided when it has more than ``MIP_MAX_VOXELS`` voxels. A volume whose planes are not
    perpendicular to S (gantry tilt, oblique), which ``project`` refuses, gets the maximum along the array axis
    closest to A/P instead, laid out like the coronal view."""
    from voxelpipe.ops.projection import project

    shape = volume.shape[-3:]
    step = 1
    while math.prod(-(-n // step) for n in shape) > MIP_MAX_VOXELS:
        step += 1
    data = np.asarray(volume.array[lead + (slice(None, None, step),) * 3])
    geometry = _strided(volume.geometry, data.shape, step) if step > 1 else volume.geometry
    strided = f", strided by {step} on every axis" if step > 1 else ""
    try:
        result = project(Volume(data, geometry), [0.0], axis="S")
    except InputError as exc:
        if "oblique" not in str(exc):
            raise
        plan = view_plan(geometry, "coronal")
        image = square_pixels(orient_plane(data.max(axis=plan.axis), plan), plan.spacing)
        return Picture("mip", f"MIP along array axis {plan.axis} (top {plan.up}, left {plan.left}; planes oblique "
                              f"to S){strided}; {image.shape[1]}×{image.shape[0]} px", window_to_uint8(image, None))
    corners = np.array([geometry.affine @ (*c, 1.0) for c in product(*[(-0.5, n - 0.5) for n in data.shape])])
    half = float(np.max(np.abs((corners[:, :3] - result.centre) @ result.column_directions[0])))
    keep = np.abs(result.column_offsets()) <= half * (1 + 1e-9)
    image = result.images[0][:, keep][::-1]  # rows ascend toward S: superior at the top
    image = square_pixels(image, result.pixel_spacing)
    return Picture("mip", f"MIP, anterior view (top S, left R){strided}; {image.shape[1]}×{image.shape[0]} px",
                   window_to_uint8(image, None))


def mask_centroid(mask) -> tuple[np.ndarray, int]:
    """Centroid (array indices, axes 0, 1, 2) and voxel count of a (slice, row, column) mask, read one chunk
    slab at a time."""
    depth = int((getattr(mask, "chunks", None) or (8,))[0])
    n0, n1, n2 = mask.shape
    sums = np.zeros(3)
    total = 0
    for z0 in range(0, n0, depth):
        inside = np.asarray(mask[z0:z0 + depth]) != 0
        per_slice = inside.sum(axis=(1, 2))
        count = int(per_slice.sum())
        if not count:
            continue
        total += count
        sums[0] += float(per_slice @ np.arange(z0, z0 + len(per_slice)))
        sums[1] += float(inside.sum(axis=(0, 2)) @ np.arange(n1))
        sums[2] += float(inside.sum(axis=(0, 1)) @ np.arange(n2))
    return (sums / total if total else sums), total


def _colors(masks: dict) -> dict[str, tuple[int, int, int]]:
    """Each mask's stored colour (ROIDisplayColor) where usable, else the overlay defaults."""
    chosen = {}
    for name, array in masks.items():
        color = dict(array.attrs).get("color")
        if isinstance(color, (list, tuple)) and len(color) == 3:
            chosen[name] = color
    try:
        return mask_colors(list(masks), chosen)
    except InputError:
        return mask_colors(list(masks))


def overlay_pictures(volume: Volume, masks: dict, lead: tuple, window, section: SeriesSection) -> list[Picture]:
    """One axial plane through each mask's centroid (up to MAX_OVERLAYS) with every mask's outline."""
    plan = view_plan(volume.geometry, "axial")
    palette = _colors(masks)
    n = volume.shape[-3:][plan.axis]
    pictures = []
    for name, mask in masks.items():
        centroid, voxels = mask_centroid(mask)
        section.legend.append((name, palette[name], f"{voxels} voxels" if voxels else "empty"))
        if not voxels or len(pictures) >= MAX_OVERLAYS:
            continue
        index = int(round(float(centroid[plan.axis])))
        image = square_pixels(read_plane(volume.array, plan, index, lead), plan.spacing)
        planes = {m: _resize_mask(read_plane(array, plan, index), image.shape) for m, array in masks.items()}
        rgb = overlay_rgb(image, planes, window, palette)
        pictures.append(Picture("overlay", _caption(plan, index, n, image.shape, f" through the centroid of {name}"),
                                rgb))
    if len(masks) > MAX_OVERLAYS:
        section.notes.append(f"{len(masks)} masks: planes drawn for the first {MAX_OVERLAYS} non-empty ones")
    return pictures


# ----------------------------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------------------------
def locate_volume(out: str, row: dict) -> str:
    """The volume of a summary row, looked for under ``OUT/data`` only (its ``path`` may point into the folder
    before it was moved or copied): the file name of ``path``, else ``<key>`` with any store suffix."""
    path = (row.get("path") or "").rstrip("/\\")
    key = row["series_key"]
    candidates = [os.path.join(out, "data", os.path.basename(path))] if path else []
    candidates += [os.path.join(out, "data", key + s) for s in (*STORE_SUFFIXES.values(), ".npz")]
    for candidate in candidates:
        if candidate and os.path.exists(candidate):
            return candidate
    raise InputError(f"{path or os.path.join(out, 'data', key)}: volume not found")


def _close(*arrays) -> None:
    """Close the file or store behind lazy arrays (h5py datasets, zarr arrays)."""
    for array in arrays:
        try:
            if hasattr(array, "file"):
                array.file.close()
            elif hasattr(array, "store"):
                array.store.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass


def _fmt(values, digits: int = 4) -> str:
    return "(" + ", ".join(f"{round(float(v), 6) + 0.0:.{digits}g}" for v in values) + ")"


def _manifest_facts(row: dict) -> list[tuple[str, str]]:
    names = ["modality", "series_description", "n_files", "rows", "columns", "n_slices", "spacing_median",
             "pixel_spacing", "orientation", "first_position_mm", "last_position_mm", "transfer_syntaxes"]
    return [(f"{n} (scan)", str(row.get(n, ""))) for n in names if row.get(n, "") != ""]


def _volume_facts(volume: Volume, row: dict, out: str, path: str) -> list[tuple[str, str]]:
    attrs, geometry = volume.attrs, volume.geometry
    direction = "; ".join(f"axis {a} {_fmt(geometry.direction[:, a], 3)}" for a in range(3))
    facts = [
        ("modality", str(attrs.get("modality", ""))),
        ("description", str(attrs.get("series_description", ""))),
        ("shape", "×".join(map(str, volume.shape)) + (" (frame, slice, row, column)" if len(volume.shape) == 4
                                                       else " (slice, row, column)")),
        ("dtype", str(volume.dtype)),
        ("spacing (mm)", _fmt(geometry.spacing)),
        ("origin (LPS mm)", _fmt(geometry.origin, 5)),
        ("direction (LPS)", direction),
        ("orientation code", axis_codes(geometry)),
        ("slice positions (mm)", f"{geometry.slice_positions[0]:.4g} … {geometry.slice_positions[-1]:.4g}"
         if len(geometry.slice_positions) else ""),
        ("files", str(row.get("n_files", ""))),
        ("bytes in / out", f"{row.get('bytes_in', '')} / {row.get('bytes_out', '')} (ratio {row.get('ratio', '')})"),
        ("verification", str(row.get("verification", ""))),
        ("volume", os.path.relpath(path, out) + (f" [{row['series_key']}]" if path.endswith((".h5", ".hdf5"))
                                                 else "")),
    ]
    if len(volume.shape) == 4:
        facts.append(("frames", f"{volume.shape[0]} by {attrs.get('frame_tag', '')} (pictures: frame 0)"))
    return [(k, v) for k, v in facts if v != ""]


def build_section(out: str, row: dict, manifest_row: dict | None, roles: list[str], mode: str) -> SeriesSection:
    """One series' section; a volume that cannot be read becomes ``problem``, never an exception."""
    section = SeriesSection(key=row["series_key"], status=row["status"], roles=roles, reason=row.get("reason", ""))
    if manifest_row:
        section.checks = series_checks(manifest_row)
    if row["status"] == "failed":
        section.facts = _manifest_facts(manifest_row or {})
        return section
    if mode == "2d":
        section.notes.append("2-D mode output (one array per image file): no volume pictures")
        section.facts = _manifest_facts(manifest_row or {})
        return section
    volume = None
    masks: dict = {}
    path = ""
    try:
        path = locate_volume(out, row)
        volume = open_volume(path, row["series_key"] if path.endswith((".h5", ".hdf5")) else None)
        section.facts = _volume_facts(volume, row, out, path)
        if volume.array.ndim not in (3, 4):
            raise InputError(f"{path}: image array has {volume.array.ndim} dimensions, expected 3 or 4")
        lead = (0,) * (volume.array.ndim - 3)
        window = window_of(volume.attrs)
        section.pictures = view_pictures(volume, lead, window)
        try:
            section.pictures.append(mip_picture(volume, lead))
        except InputError as exc:  # oblique to S, fewer than 2 voxels across: said, not a problem
            section.notes.append(f"no MIP: {exc}")
        if not path.endswith((".npz", ".h5", ".hdf5")):
            from voxelpipe.stores.masks import open_masks

            masks = open_masks(path)
            if masks:
                section.pictures += overlay_pictures(volume, masks, lead, window, section)
    except Exception as exc:  # noqa: BLE001 - one unreadable volume never stops the report
        reason = failure_reason(exc)
        section.problem = reason if not path or path in reason else f"{os.path.relpath(path, out)}: {reason}"
        section.facts = section.facts or _manifest_facts(manifest_row or {})
        log.warning("report: %s: %s", row["series_key"], section.problem)
    finally:
        if volume is not None:
            _close(volume.array)
        if masks:
            _close(next(iter(masks.values())))
    return section


# ----------------------------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------------------------
def _int(text: object) -> int:
    return int(_number(text))


def _run_stats(run: Run) -> dict:
    converted = [r for r in run.rows if r["status"] == "converted"]
    files = sum(_int(r.get("n_files")) for r in converted)
    bytes_in = sum(_int(r.get("bytes_in")) for r in converted)
    bytes_out = sum(_int(r.get("bytes_out")) for r in converted)
    seconds = (run.info or {}).get("seconds")
    stats = {"summary": os.path.basename(run.csv), "series": len(run.rows), "converted": len(converted),
             "skipped": sum(r["status"] == "skipped" for r in run.rows),
             "failed": sum(r["status"] == "failed" for r in run.rows), "files": files,
             "MB in": f"{bytes_in / 1e6:.2f}", "MB out": f"{bytes_out / 1e6:.2f}",
             "ratio": f"{bytes_in / bytes_out:.2f}" if bytes_out else "",
             "seconds": "" if seconds is None else f"{float(seconds):.2f}", "files/s": "", "MB/s": "",
             "_files": files, "_bytes": bytes_in, "_seconds": seconds}
    if seconds:
        stats["files/s"] = f"{files / float(seconds):.1f}"
        stats["MB/s"] = f"{bytes_in / 1e6 / float(seconds):.2f}"
    return stats


def _run_facts(rows: list[dict], runs: list[Run], source: str, manifests: list[str],
               manifest_rows: dict[str, dict]) -> tuple[list[tuple[str, str]], list[dict]]:
    stats = [_run_stats(run) for run in runs]
    converted = [r for r in rows if r["status"] == "converted"]
    bytes_in = sum(_int(r.get("bytes_in")) for r in converted)
    bytes_out = sum(_int(r.get("bytes_out")) for r in converted)
    timed = [s for s in stats if s["_seconds"] is not None]
    seconds = sum(float(s["_seconds"]) for s in timed)
    files = sum(s["_files"] for s in timed)
    moved = sum(s["_bytes"] for s in timed)
    facts = [
        ("summary rows from", source),
        ("compression ratio (bytes in / bytes out, converted series)",
         f"{bytes_in / bytes_out:.3f} ({bytes_in / 1e6:.2f} MB → {bytes_out / 1e6:.2f} MB)" if bytes_out
         else "no converted series"),
        ("time (s, summed over runs)", f"{seconds:.2f} over {len(timed)} run(s)" if timed else "unknown (no json)"),
        ("throughput (converted series)",
         f"{files / seconds:.1f} files/s, {moved / 1e6 / seconds:.2f} MB/s ({files} files, {moved / 1e6:.2f} MB)"
         if seconds > 0 else "unknown"),
        ("manifest", ", ".join(manifests) or "not found: no checks"),
    ]
    if manifest_rows:
        keys = {r["series_key"] for r in rows}
        empty = sum(1 for r in manifest_rows.values() if _int(r.get("n_slices")) == 0)
        missing = sorted(k for k, r in manifest_rows.items() if _int(r.get("n_slices")) > 0 and k not in keys)
        facts.append(("manifest series without images (localizers only)", str(empty)))
        facts.append(("manifest series in no summary (not converted yet)",
                      str(len(missing)) + (": " + ", ".join(missing[:20]) if missing else "")))
    for s in stats:
        for k in ("_files", "_bytes", "_seconds"):
            s.pop(k)
    return facts, stats


def _failure_groups(rows: list[dict]) -> list[tuple[str, list[str]]]:
    """Failed series grouped by reason, file paths in the reason replaced by ``<file>``; largest group first."""
    groups: dict[str, list[str]] = {}
    for row in rows:
        if row["status"] == "failed":
            groups.setdefault(_PATH.sub("<file>", row.get("reason", "") or "(no reason)"), []).append(row["series_key"])
    return sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))


def _unreadable_groups(entries: list[dict]) -> list[tuple[str, str, int, list[str]]]:
    groups: dict[tuple[str, str], list[str]] = {}
    for entry in entries:
        reason = _PATH.sub("<file>", entry.get("reason", ""))
        groups.setdefault((entry.get("kind", ""), reason), []).append(entry.get("path", ""))
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    return [(kind, reason, len(paths), paths[:3]) for (kind, reason), paths in ordered[:MAX_UNREADABLE_GROUPS]]


def choose_series(rows: list[dict], manifest_rows: dict[str, dict], samples: int, seed: int
                  ) -> list[tuple[dict, list[str]]]:
    """(row, roles) of the series shown: failed, then flagged, then ``samples`` of the other converted (or
    already complete) ones drawn with ``random.Random(seed)`` from the keys in sorted order."""
    chosen: list[tuple[dict, list[str]]] = []
    pool = []
    for row in rows:
        roles = (["failed"] if row["status"] == "failed" else []) + \
                (["flagged"] if is_flagged(manifest_rows.get(row["series_key"])) else [])
        if roles:
            chosen.append((row, roles))
        elif row["status"] in ("converted", "skipped"):
            pool.append(row)
    chosen.sort(key=lambda item: ("failed" not in item[1], item[0]["series_key"]))
    picks = random.Random(seed).sample(pool, min(samples, len(pool)))
    chosen += [(row, ["sampled"]) for row in sorted(picks, key=lambda r: r["series_key"])]
    return chosen


def build_report(out: str | os.PathLike, samples: int = 8, seed: int = 0, progress: bool = True) -> ReportData:
    """Everything the page shows, read from the convert output folder ``out``."""
    out = os.fspath(out)
    if samples < 0:
        raise InputError(f"samples must be >= 0, got {samples}")
    rows, runs, source = load_runs(out)
    manifests = manifest_paths(out, runs)
    manifest_rows: dict[str, dict] = {}
    for path in manifests:
        for row in read_csv(path):
            manifest_rows.setdefault(row["series_key"], row)
    unreadable, unreadable_source = load_unreadable(out, runs, manifests)
    modes = {((r.info or {}).get("options") or {}).get("mode", "3d") for r in runs}
    mode = "2d" if modes == {"2d"} else "3d"
    facts, stats = _run_facts(rows, runs, source, manifests, manifest_rows)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    chosen = choose_series(rows, manifest_rows, samples, seed)
    log.info("report: %d series in %s; drawing %d", len(rows), out, len(chosen))
    sections = []
    with Progress(len(chosen), "report", unit="series", enabled=progress) as bar:
        for row, roles in chosen:
            sections.append(build_section(out, row, manifest_rows.get(row["series_key"]), roles, mode))
            bar.update()
    notes = [] if manifest_rows else ["The scan manifest was not found: no geometry checks and no flagged series."]
    return ReportData(
        out=os.path.abspath(out), generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        version=__version__, facts=facts, status_counts=dict(sorted(counts.items())),
        failure_groups=_failure_groups(rows), unreadable_total=len(unreadable),
        unreadable_groups=_unreadable_groups(unreadable), unreadable_source=unreadable_source, runs=stats,
        problems=[(s.key, s.problem) for s in sections if s.problem], sections=sections, notes=notes)


def write_html(data: ReportData, path: str) -> str:
    """Render ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(render(data))
    return path


def write_report(out: str, html: str | None = None, samples: int = 8, seed: int = 0, progress: bool = True) -> str:
    """Write the HTML report of the convert output folder ``out`` to ``html`` (default ``out/report.html``);
    returns its path."""
    data = build_report(out, samples, seed, progress)
    return write_html(data, html or os.path.join(os.fspath(out), "report.html"))


def report_command(args) -> int:
    """CLI entry (``python -m voxelpipe report``): 0, or 1 when a volume could not be read (listed in the
    report's problems)."""
    data = build_report(args.out, args.samples, args.seed, progress=not getattr(args, "no_progress", False))
    path = write_html(data, args.html or os.path.join(args.out, "report.html"))
    roles = [role for s in data.sections for role in s.roles]
    print(f"report: {len(data.sections)} series shown ({roles.count('failed')} failed, {roles.count('flagged')} "
          f"flagged, {roles.count('sampled')} sampled), {len(data.problems)} problem(s) -> {path}")
    for key, problem in data.problems:
        print(f"  problem {key}: {problem}")
    return 1 if data.problems else 0


__all__ = ["write_report", "build_report", "write_html", "report_command", "series_checks", "is_flagged", "view_plan",
           "read_plane", "display_size", "square_pixels", "mask_centroid", "choose_series", "MAX_SIDE", "CT_WINDOW"]
