"""One series' section of the report: its facts, checks and pictures, read from its volume.

A failed series shows its reason and the scan's facts (no pictures); 2-D mode output shows no volume pictures;
a volume that cannot be read becomes the section's ``problem``, never an exception.
"""
from __future__ import annotations

import logging
import os

from voxelpipe.apps.report.checks import series_checks
from voxelpipe.apps.report.html import SeriesSection
from voxelpipe.apps.report.pictures import mip_picture, overlay_pictures, view_pictures, window_of
from voxelpipe.core.errors import InputError, failure_reason
from voxelpipe.core.geometry import mean_step_geometry
from voxelpipe.core.types import Status
from voxelpipe.core.volume import Volume
from voxelpipe.ops.reorient import axis_codes
from voxelpipe.stores import remote
from voxelpipe.stores.masks import open_masks
from voxelpipe.stores.volumes import open_volume
from voxelpipe.stores.zarr_store import STORE_SUFFIXES

log = logging.getLogger("voxelpipe")

HDF5_SUFFIXES = (".h5", ".hdf5")
MANIFEST_FACTS = ["modality", "series_description", "n_files", "rows", "columns", "n_slices", "spacing_median",
                  "pixel_spacing", "orientation", "first_position_mm", "last_position_mm", "transfer_syntaxes"]


def locate_volume(out: str, row: dict) -> str:
    """The volume of a summary row, looked for under ``OUT/data`` only.

    Its ``path`` may point into the folder before it was moved or copied: the file name of ``path`` is tried,
    then ``<key>`` with any store suffix.

    Raises:
        InputError: No such volume.
    """
    path = (row.get("path") or "").rstrip("/\\")
    key = row["series_key"]
    name = path.replace("\\", "/").rsplit("/", 1)[-1] if remote.is_url(out) else os.path.basename(path)
    candidates = [remote.join(out, "data", name)] if path else []
    candidates += [remote.join(out, "data", key + s) for s in (*STORE_SUFFIXES.values(), ".npz")]
    for candidate in candidates:
        if candidate and remote.volume_exists(candidate):
            return candidate
    raise InputError(f"{path or remote.join(out, 'data', key)}: volume not found")


def close_arrays(*arrays) -> None:
    """Close the file or store behind lazy arrays (h5py datasets, zarr arrays); best effort."""
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
    return [(f"{n} (scan)", str(row.get(n, ""))) for n in MANIFEST_FACTS if row.get(n, "") != ""]


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
        ("orientation code", axis_codes(geometry if geometry.uniform else mean_step_geometry(geometry))),
        ("slice positions (mm)", f"{geometry.slice_positions[0]:.4g} … {geometry.slice_positions[-1]:.4g}"
         if len(geometry.slice_positions) else ""),
        ("files", str(row.get("n_files", ""))),
        ("bytes in / out", f"{row.get('bytes_in', '')} / {row.get('bytes_out', '')} (ratio {row.get('ratio', '')})"),
        ("verification", str(row.get("verification", ""))),
        ("regridded", str((attrs.get("regrid") or {}).get("rule", ""))),
        ("uneven slices kept", "uniform: false (slice positions place the slices)"
         if attrs.get("uniform") is False else ""),
        ("gantry tilt kept", f"sheared: true ({attrs.get('gantry_tilt_deg', '')} deg)"
         if attrs.get("sheared") is True else ""),
        ("volume", remote.relative(path, out) + (f" [{row['series_key']}]" if path.endswith(HDF5_SUFFIXES)
                                                 else "")),
    ]
    mosaic = attrs.get("mosaic")
    if isinstance(mosaic, dict):
        facts.append(("mosaic", f"{mosaic.get('n_images', '')} tiles per file in a {mosaic.get('grid', '')}×"
                                f"{mosaic.get('grid', '')} grid, stored {mosaic.get('storage_order', '')}, unpacked"))
    if len(volume.shape) == 4:
        facts.append(("frames", f"{volume.shape[0]} by {attrs.get('frame_tag', '')} (pictures: frame 0)"))
    return [(k, v) for k, v in facts if v != ""]


def build_section(out: str, row: dict, manifest_row: dict | None, roles: list[str], mode: str) -> SeriesSection:
    """One series' section.

    Args:
        out: The convert output folder.
        row: The series' summary row (``series_key``, ``status``, ``reason``, ``path`` ...).
        manifest_row: Its scan manifest row, or None.
        roles: Why it is shown: "failed", "flagged", "sampled".
        mode: "3d", or "2d" for 2-D mode output (no volume pictures).

    Returns:
        The section; a volume that cannot be read becomes ``problem``, never an exception.
    """
    section = SeriesSection(key=row["series_key"], status=row["status"], roles=roles, reason=row.get("reason", ""))
    if manifest_row:
        section.checks = series_checks(manifest_row)
    if row["status"] == Status.FAILED or (row["status"] == Status.SKIPPED and not row.get("path")):  # no volume
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
        volume = open_volume(path, row["series_key"] if path.endswith(HDF5_SUFFIXES) else None)
        section.facts = _volume_facts(volume, row, out, path)
        if not volume.geometry.uniform:  # pictures only: unevenly spaced slices drawn at their mean step
            volume = Volume(volume.array, mean_step_geometry(volume.geometry), volume.attrs, volume.path)
        if volume.array.ndim not in (3, 4):
            raise InputError(f"{path}: image array has {volume.array.ndim} dimensions, expected 3 or 4")
        lead = (0,) * (volume.array.ndim - 3)
        window = window_of(volume.attrs)
        section.pictures = view_pictures(volume, lead, window, section.notes)
        try:
            section.pictures.append(mip_picture(volume, lead))
        except InputError as exc:  # 1 voxel thick, fewer than 2 voxels across: said, not a problem
            section.notes.append(f"no MIP: {exc}")
        if not path.endswith((".npz", *HDF5_SUFFIXES)):
            masks = open_masks(path)
            if masks:
                section.pictures += overlay_pictures(volume, masks, lead, window, section)
    except Exception as exc:  # noqa: BLE001 - one unreadable volume never stops the report
        reason = failure_reason(exc)
        section.problem = reason if not path or path in reason else f"{remote.relative(path, out)}: {reason}"
        section.facts = section.facts or _manifest_facts(manifest_row or {})
        log.warning("report: %s: %s", row["series_key"], section.problem)
    finally:
        if volume is not None:
            close_arrays(volume.array)
        if masks:
            close_arrays(next(iter(masks.values())))
    return section


__all__ = ["build_section", "close_arrays", "locate_volume"]
