"""`resample` and `project` over converted volumes.

Inputs are what `convert` wrote: an output folder (every volume under ``data/``, or one with ``key``) or a single
volume path. Results are volumes again, written under ``OUT/data/<series_key>.zarr`` with their geometry, so
every stage reads and writes the same kind of store. Each run writes ``OUT/<resample|project>_summary.csv``: one
row per volume, status ``done`` or ``failed`` with the reason.
"""
from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import Callable

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from voxelpipe.core import defaults
from voxelpipe.core.errors import InputError
from voxelpipe.core.progress import Progress
from voxelpipe.core.rows import done_row, failed_row
from voxelpipe.core.volume import Volume
from voxelpipe.ops.projection import project
from voxelpipe.ops.reorient import reorient
from voxelpipe.ops.resample import resample, resample_to
from voxelpipe.stores.lock import locks_output
from voxelpipe.stores.masks import open_masks
from voxelpipe.stores.ngff import check_levels
from voxelpipe.stores.tables import write_csv
from voxelpipe.stores.volumes import open_volume, save_volume
from voxelpipe.stores.zarr_store import PARTIAL, STORE_SUFFIXES, open_store, remove

log = logging.getLogger("voxelpipe")
SUMMARY_COLUMNS = ["series_key", "status", "reason", "source", "path", "shape", "spacing", "seconds"]


def find_volumes(source: str, key: str | None = None) -> list[str]:
    """Volume paths of a convert output folder (``data/*.zarr*``, ``*.npz``), or ``source`` itself."""
    if any(source.rstrip("/").endswith(suffix) for suffix in (*STORE_SUFFIXES.values(), ".npz")):
        return [source.rstrip("/")]
    folder = os.path.join(source, "data") if os.path.isdir(os.path.join(source, "data")) else source
    found = sorted(p for suffix in (*STORE_SUFFIXES.values(), ".npz")
                   for p in glob.glob(os.path.join(folder, "*" + suffix)))
    if key is not None:
        found = [p for p in found if os.path.basename(p).split(".")[0] == key]
    if not found:
        raise InputError(f"{source}: no converted volume found" + (f" with key {key}" if key else ""))
    return found


def _key(path: str) -> str:
    return os.path.basename(path.rstrip("/")).split(".")[0]


def _apply_per_frame(volume: Volume, operation) -> Volume:
    """Run a 3-D ``operation`` on every frame of a 4-D volume (or once on a 3-D one)."""
    array = np.asarray(volume.array[...])
    if array.ndim == 3:
        return operation(Volume(array, volume.geometry, volume.attrs, volume.path))
    results = [operation(Volume(array[t], volume.geometry, volume.attrs, volume.path)) for t in range(array.shape[0])]
    return Volume(np.stack([r.array for r in results]), results[0].geometry, results[0].attrs, volume.path)


def _for_each_volume(paths: list[str], out: str, label: str,
                     operation: Callable[[str, str], tuple[tuple[int, ...], tuple[float, ...]]],
                     progress: bool = True) -> list[dict]:
    """Run ``operation(path, target) -> (shape, spacing)`` on every volume; a failure fails that volume only.
    Writes ``OUT/<label>_summary.csv``."""
    rows = []
    with Progress(len(paths), label, unit="volumes", enabled=progress) as bar:
        for path in paths:
            started = time.perf_counter()
            base = {"series_key": _key(path), "source": path}
            target = os.path.join(out, "data", base["series_key"] + ".zarr")
            try:
                shape, spacing = operation(path, target)
                row = done_row(base, path=target, shape="x".join(map(str, shape)),
                               spacing="x".join(f"{s:g}" for s in spacing))
            except (InputError, OSError, ValueError) as exc:
                row = failed_row(base, str(exc))
                log.warning("%s: %s failed: %s", label, path, exc)
            row["seconds"] = round(time.perf_counter() - started, 3)
            rows.append(row)
            bar.update()
    write_csv(os.path.join(out, f"{label}_summary.csv"), rows, SUMMARY_COLUMNS)
    return rows


@locks_output("resample")  # one run per output folder
def resample_volumes(source: str, out: str, *, spacing=None, shape=None, like: str | None = None,
                     order: str = defaults.RESAMPLE_ORDER, orientation: str | None = None, key: str | None = None,
                     levels: int = defaults.VOLUME_LEVELS, progress: bool = True) -> list[dict]:
    """Reorient (optional) and resample every volume of ``source``; one of ``spacing``, ``shape``, ``like``.
    ``levels``: OME-Zarr pyramid levels of the outputs (1 = full resolution only)."""
    check_levels(levels)
    if sum(v is not None for v in (spacing, shape, like)) != 1:
        raise InputError("give exactly one of --spacing, --shape or --like")
    reference = open_volume(like) if like else None

    def one(path: str, target: str):
        volume = open_volume(path)
        if orientation:
            volume = reorient(volume, orientation)
        if reference is not None:
            result = _apply_per_frame(volume, lambda v: resample_to(v, reference, order=order))
        else:
            result = _apply_per_frame(volume, lambda v: resample(v, spacing=spacing, shape=shape, order=order))
        save_volume(result, target, attrs={"resampled_from": path, "resample_order": order,
                                           "orientation": orientation or ""}, levels=levels)
        return result.array.shape, result.geometry.spacing

    return _for_each_volume(find_volumes(source, key), out, "resample", one, progress)


@locks_output("project")  # one run per output folder
def project_volumes(source: str, out: str, *, angles: list[float], axis: str = defaults.PROJECTION_AXIS,
                    kind: str = defaults.PROJECTION_KIND,
                    with_masks: bool = False, key: str | None = None, progress: bool = True) -> list[dict]:
    """Rotated projections of every volume of ``source``, written as ``OUT/data/<key>.zarr`` holding ``image``
    (angle, along-axis, across) float32 and, with ``with_masks``, ``masks/<name>`` projections (max). A volume
    kept sheared (``convert --tilt keep``) is projected from a patient-axis aligned copy (``project`` does it)."""
    def one(path: str, target: str):
        volume = open_volume(path)
        if np.asarray(volume.array).ndim != 3:
            raise InputError(f"{path}: projections need a 3-D volume, got shape {volume.shape}")
        masks = _masks(path) if with_masks else {}
        result = project(volume, angles, axis=axis, kind=kind, mask=next(iter(masks.values()), None))
        _write_projections(target, result, masks, volume, angles, axis, kind)
        return result.images.shape, result.pixel_spacing

    return _for_each_volume(find_volumes(source, key), out, "project", one, progress)


def _masks(path: str) -> dict[str, np.ndarray]:
    """``masks/<name>`` arrays stored beside ``image`` in a Zarr volume, in memory (none for other formats)."""
    if path.endswith((".npz", ".h5", ".hdf5")):
        return {}
    return {name: np.asarray(array[...]) for name, array in open_masks(path).items()}


def _write_projections(target: str, result, masks: dict, volume: Volume, angles, axis: str, kind: str) -> None:
    """The projections as a Zarr group, published by rename; masks after the first are projected here."""
    partial = target + PARTIAL
    remove(partial)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    store = open_store(partial, "dir", "w")
    attrs = {"angles_deg": [float(a) for a in angles], "axis": axis, "kind": kind,
             "pixel_spacing": [float(s) for s in result.pixel_spacing], "source_spacing":
             volume.geometry.spacing.tolist(), "axes": ["angle", "along_axis", "across"]}
    group = zarr.create_group(store=store, zarr_format=3, attributes=attrs)
    codec = BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle", typesize=4)
    group.create_array("image", data=np.ascontiguousarray(result.images), compressors=[codec])
    for index, (name, mask) in enumerate(masks.items()):
        images = result.mask_images if index == 0 else project(volume, angles, axis=axis, mask=mask).mask_images
        group.create_array(f"masks/{name}", data=np.ascontiguousarray(images),
                           compressors=[BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle", typesize=1)])
    store.close()
    remove(target)
    os.replace(partial, target)


def parse_angles(text: str) -> list[float]:
    """``start:stop:step`` (stop excluded, like range) or a comma list, in degrees."""
    problem = InputError(f"--angles {text!r}: expected start:stop:step (e.g. 0:360:45) or a comma list")
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if step <= 0:
                raise problem
            return [float(a) for a in np.arange(start, stop, step)]
        return [float(v) for v in text.split(",")]
    except ValueError:  # not numbers, or not three of them
        raise problem from None


__all__ = ["resample_volumes", "project_volumes", "parse_angles", "find_volumes"]
