"""2-D mode: every image file of a series (images without ImagePositionPatient included: scan lists them as
``no_geometry``) becomes its own array ``(frame, row, column)`` (``(frame, row,
column, sample)`` for colour), keyed by a hash of its SOPInstanceUID, with one metadata row per file.

Layout: Zarr — one store per series ``data/<series_key>.zarr`` holding an array per instance; HDF5 — one
dataset per instance in the run file; NPZ — one ``<series_key>.npz`` holding an array per instance.
Monochrome pixels are rescaled (int16 when exact, else float32); colour pixels are stored as they are.
"""
from __future__ import annotations

import json
import os

import h5py
import numpy as np
import zarr
from zarr.codecs import BloscCodec

from voxelpipe.core.errors import DicomReadError
from voxelpipe.core.keys import series_key as hash_key
from voxelpipe.core.types import Format
from voxelpipe.dicom.files import read_header
from voxelpipe.dicom.mosaic import decode_tiles, tile_format
from voxelpipe.dicom.pixels import PixelFormat, check_frame_bytes, decode_into
from voxelpipe.dicom.records import make_record, pixel_transfer_syntax
from voxelpipe.ops.rescale import rescale
from voxelpipe.stores.hdf5_store import write_attrs
from voxelpipe.stores.registry import volume_path as registry_volume_path
from voxelpipe.stores.tables import write_csv
from voxelpipe.stores.zarr_store import PARTIAL, disk_size, open_store, remove

INSTANCE_COLUMNS = ["series_key", "instance_key", "sop_instance_uid", "instance_number", "shape", "dtype", "path"]


def volume_path(task) -> str:
    """Final output path of a series task (``SeriesTask``: 3-D volume or 2-D instances; the HDF5 per-series
    file is merged into the run file afterwards)."""
    return registry_volume_path(os.path.join(task.out, "data"), task.key, task.fmt, task.store,
                                task.nifti_gzip)


def convert_instances(task) -> dict:
    """Write every file of ``task`` as its own array; returns the summary fields (shape = instance count)."""
    path = volume_path(task)
    partial = path + PARTIAL + (".npz" if task.fmt == Format.NPZ else "")
    remove(partial)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rows = []
    sink = _Sink(task, partial)
    try:
        for source in task.paths:
            array, attrs = _read_instance(source, task.max_frame_bytes)
            name = hash_key(attrs["sop_instance_uid"] or source)
            if name in sink.names:  # two files with one SOPInstanceUID (copies): keep both, told apart by path
                name = hash_key(f"{attrs['sop_instance_uid']}|{source}")
            sink.names.add(name)
            sink.add(name, array, attrs)
            rows.append({"series_key": task.key, "instance_key": name, "sop_instance_uid": attrs["sop_instance_uid"],
                         "instance_number": attrs["instance_number"], "shape": "x".join(map(str, array.shape)),
                         "dtype": str(array.dtype), "path": source})
        sink.close()
        write_csv(os.path.join(task.out, "meta", f"{task.key}.instances.csv"), rows, INSTANCE_COLUMNS)
        os.replace(partial, path)
    except BaseException:
        sink.abort()
        remove(partial)
        raise
    return {"shape": f"{len(rows)} instances", "dtype": ",".join(sorted({r["dtype"] for r in rows})),
            "bytes_out": disk_size(path), "verification": "not verified (2d)"}


def _read_instance(path: str, max_frame_bytes: int) -> tuple[np.ndarray, dict]:
    header = read_header(path)
    record = make_record(header, require_geometry=False)
    if record.kind != "image":
        raise DicomReadError(path, f"not an image ({record.modality or record.sop_class_uid})")
    fmt = PixelFormat.from_row(header.row, pixel_transfer_syntax(header), path)
    check_frame_bytes(path, fmt, max_frame_bytes)  # before the frames are allocated
    if record.mosaic is not None:  # Siemens MOSAIC: one frame per tile, like its 3-D volume
        mosaic_fmt, fmt = fmt, tile_format(fmt, record.mosaic)
        stored = np.empty((fmt.frames, *fmt.frame_shape), dtype=fmt.stored_dtype)
        decode_tiles(path, mosaic_fmt, record.mosaic, stored, record.pixel_offset, range(fmt.frames))
    else:
        stored = np.empty((fmt.frames, *fmt.frame_shape), dtype=fmt.stored_dtype)
        decode_into(path, fmt, stored, record.pixel_offset)
    attrs = {"sop_instance_uid": record.sop_instance_uid, "instance_number": record.instance_number,
             "modality": record.modality, "pixel_spacing": record.pixel_spacing, "source": path,
             "axes": ["frame", "row", "column"] + (["sample"] if fmt.samples_per_pixel > 1 else [])}
    if record.slices:
        attrs["image_position_patient"] = [list(s.ipp) for s in record.slices]
        attrs["image_orientation_patient"] = list(record.slices[0].iop)
    if fmt.samples_per_pixel > 1:
        return stored, attrs
    slopes = [s.slope for s in record.slices] if record.slices else [record.slope] * fmt.frames
    intercepts = [s.intercept for s in record.slices] if record.slices else [record.intercept] * fmt.frames
    attrs.update(rescale_slope=slopes, rescale_intercept=intercepts)
    return rescale(stored, slopes, intercepts), attrs


class _Sink:
    """Where instance arrays go while a series is written (under a partial name)."""

    def __init__(self, task, partial: str):
        self.task = task
        self.partial = partial
        self.names: set[str] = set()
        self.arrays: dict[str, np.ndarray] = {}
        self.attrs: dict[str, dict] = {}
        self.store = None
        if task.fmt == Format.ZARR:
            self.store = open_store(partial, task.store, "w")
            self.group = zarr.create_group(store=self.store, zarr_format=3,
                                           attributes={"series_key": task.key, "mode": "2d"})
        elif task.fmt == Format.HDF5:
            self.file = h5py.File(partial, "w")

    def add(self, name: str, array: np.ndarray, attrs: dict) -> None:
        if self.task.fmt == Format.ZARR:
            codec = BloscCodec(cname="zstd", clevel=self.task.clevel, shuffle="bitshuffle",
                               typesize=array.dtype.itemsize)
            self.group.create_array(name, data=array, chunks=(1, *array.shape[1:]), compressors=[codec],
                                    attributes=attrs)
        elif self.task.fmt == Format.HDF5:
            dataset = self.file.create_dataset(name, data=array, chunks=(1, *array.shape[1:]), compression="gzip",
                                               compression_opts=1, shuffle=True)
            write_attrs(dataset, attrs)
        else:
            self.arrays[name] = array
            self.attrs[name] = attrs

    def close(self) -> None:
        if self.task.fmt == Format.ZARR:
            self.store.close()
        elif self.task.fmt == Format.HDF5:
            self.file.close()
        else:
            np.savez(self.partial, attrs_json=np.array(json.dumps(self.attrs, default=str)), **self.arrays)

    def abort(self) -> None:
        try:
            if self.task.fmt == Format.ZARR:
                self.store.close()
            elif self.task.fmt == Format.HDF5:
                self.file.close()
        except Exception:
            pass
