"""One series → one volume: read headers, order frames, stream decoded slabs through the rescale kernel into
a store. Runs inside a pool worker (one series per task) or in the calling process.

Repeated positions (cine phases, echoes, dynamics): when every position holds the same number k > 1 of
images, the volume is 4-D ``(frame, slice, row, column)`` with frames ordered by the tag that varies
(``frame_tag`` in the attrs); other irregular repeats fail the series with the reason. Files sharing a
SOPInstanceUID are compared by their pixel data (SHA-256 of the Pixel Data value, read only for such files):
exact duplicates are dropped and counted (``duplicate_files_dropped`` in the attrs, a note in the summary's
reason); copies with different pixel data fail the series, naming the UID and both files.

Before any pixel is decoded the plan refuses what no volume can be made of: a frame larger than
``max_frame_bytes`` (``convert --max-frame-bytes``), non-finite or absurd geometry (``check_geometry``,
``pixel_spacing_mm``) and rescale values that are not finite or overflow float32 (``check_rescale``).

Uneven slice steps and gantry tilt (``convert --uneven`` / ``--tilt``, decided by ``series_regrid.decide``): a
series kept as acquired streams as above with a geometry that says so (``uniform: false`` / ``sheared: true``); a
series to regrid is decoded whole, verified, regridded (float32) and written in one piece. Plain series take
the streaming path unchanged.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import apply_modality_lut, pixel_array
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from voxelpipe._version import __version__
from voxelpipe.core import defaults
from voxelpipe.core.errors import DicomReadError, InputError, ValuesDoNotFitError
from voxelpipe.core.geometry import Geometry, cluster_positions, geometry_from_slices, slice_normal
from voxelpipe.core.rows import ALREADY_COMPLETE, done_row, failed_row, lost_row, skipped_row
from voxelpipe.core.types import Format, Phi, PhilipsScaling, StoreKind, TiltPolicy, UnevenPolicy
from voxelpipe.dicom.bids import FIELDS as BIDS_FIELDS
from voxelpipe.dicom.bids import read_bids_sidecar
from voxelpipe.dicom.deidentify import (
    FIELD_TEXT,
    FIELD_UID,
    deidentify_fields,
    is_profile_tag,
    pseudonymise_value,
    scrub_uids,
)
from voxelpipe.dicom.files import read_header
from voxelpipe.dicom.mosaic import decode_tiles, tile, tile_format
from voxelpipe.dicom.philips import applied_pair, is_philips
from voxelpipe.dicom.pixels import PixelFormat, check_frame_bytes, decode_into
from voxelpipe.dicom.records import PHASE_TAGS, FileRecord, check_geometry, make_record, pixel_spacing_mm
from voxelpipe.ops.regrid import regrid
from voxelpipe.ops.rescale import check_rescale, output_dtype, rescale
from voxelpipe.pipelines.series_instances import convert_instances, volume_path
from voxelpipe.pipelines.series_regrid import GeometryDecision, decide
from voxelpipe.stores.tables import PATH_BYTES, atomic_path, write_json
from voxelpipe.stores.writer import VolumeWriter, writer_for

INT16 = np.dtype(np.int16)
FLOAT32 = np.dtype(np.float32)
DEFAULT_CHUNKS = defaults.VOLUME_CHUNKS
DUPLICATES_NOTE = "{} exact duplicate file(s) dropped (same SOPInstanceUID and pixel data)"
HASH_PIECE = 1 << 20  # bytes read at a time when hashing pixel data
# the attributes of a volume, and the BIDS sidecar fields, that hold values of the confidentiality profile
VOLUME_PHI = {"series_instance_uid": FIELD_UID, "study_instance_uid": FIELD_UID,
              "frame_of_reference_uid": FIELD_UID, "series_description": FIELD_TEXT}
SIDECAR_PHI = {key: FIELD_TEXT for key, keyword, _ in BIDS_FIELDS
               if is_profile_tag(pydicom.datadict.tag_for_keyword(keyword) or 0)}


@dataclass
class SeriesTask:
    """Everything a worker needs to convert one series (picklable)."""

    key: str
    paths: list[str]
    out: str
    fmt: Format = defaults.CONVERT_FORMAT
    mode: str = defaults.CONVERT_MODE  # 3d: one volume per series; 2d: one array per file
    store: StoreKind = defaults.CONVERT_STORE  # zarr only
    chunks: tuple[int, int, int] | None = None  # plain chunks; when given they win over ``layout``
    layout: str = defaults.VOLUME_LAYOUT  # a name of defaults.VOLUME_LAYOUTS (chunks and shards)
    clevel: int = defaults.VOLUME_CLEVEL
    levels: int = defaults.VOLUME_LEVELS  # OME-Zarr pyramid levels (Zarr only)
    verify_slices: int = defaults.CONVERT_VERIFY_SLICES
    overwrite: bool = False
    uneven: UnevenPolicy = defaults.CONVERT_UNEVEN
    tilt: TiltPolicy = defaults.CONVERT_TILT
    philips_scaling: PhilipsScaling = defaults.CONVERT_PHILIPS_SCALING
    nifti_gzip: bool = defaults.NIFTI_GZIP
    max_frame_bytes: int = defaults.CONVERT_MAX_FRAME_BYTES  # larger frames fail the series before decoding
    phi: Phi = Phi.KEEP  # confidentiality profile values in attrs, meta/ and sidecars: keep, pseudonymise, drop
    secret: str | None = field(default=None, repr=False)  # the key of pseudonyms (phi pseudonymise)
    options: dict | None = None  # recorded in provenance
    records: list[FileRecord] | None = None  # the scan's records of ``paths`` when at hand (no second parse)


@dataclass
class Frame:
    record: FileRecord
    fmt: PixelFormat
    frame: int  # frame index inside its file
    ipp: np.ndarray
    slope: float
    intercept: float
    position: float = 0.0
    phase: tuple = ()
    display: tuple[float, float] = (1.0, 0.0)  # the DICOM rescale pair; (slope, intercept) is the one applied
    scale_slope: float = 0.0  # Philips MR Scale Slope (2005,100E), 0 when absent


def convert_series(task: SeriesTask) -> dict:
    """Convert one series; never raises for bad input: the summary row says what happened (status ``done``,
    ``skipped`` when its volume exists and ``overwrite`` is off, else ``failed`` with the reason)."""
    started = time.perf_counter()
    base = series_row(task)
    try:
        if os.path.exists(base["path"]) and not task.overwrite:
            row = skipped_row(base, ALREADY_COMPLETE)
        else:
            result = convert_instances(task) if task.mode == "2d" else _convert(task)
            dropped = result.pop("dropped", 0)
            row = done_row(base, **result)
            if dropped:
                row["reason"] = DUPLICATES_NOTE.format(dropped)
            row["ratio"] = round(row["bytes_in"] / row["bytes_out"], 3) if row["bytes_out"] else ""
    except Exception as exc:  # noqa: BLE001 - one task's failure never stops the batch
        row = failed_row(base, exc)
    row["reason"] = scrub_uids(row.get("reason", ""), task.phi, task.secret)
    row["seconds"] = round(time.perf_counter() - started, 3)
    return row


def series_row(task: SeriesTask) -> dict:
    """The summary row of ``task`` before its conversion (no status yet)."""
    return {"series_key": task.key, "reason": "", "n_files": len(task.paths),
            "bytes_in": sum(_size(p) for p in task.paths), "bytes_out": 0, "shape": "", "dtype": "",
            "ratio": "", "seconds": 0.0, "verification": "", "path": volume_path(task)}


def lost_series(task: SeriesTask, exc: Exception) -> dict:
    """The failed row of a task that never returned its own (its worker died, the cluster lost it)."""
    return lost_row(series_row(task), exc)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


@dataclass
class SeriesPlan:
    """A series read and ordered, before any pixel is decoded: what convert writes and read_series loads."""

    ordered: list[Frame]  # frame-major for 4-D: all slices of frame 0, then frame 1, ...
    n_frames: int
    n_slices: int
    frame_tag: str
    dropped: int
    geometry: Geometry
    shape: tuple[int, ...]
    spacing_source: str
    dtypes: list[np.dtype]  # output dtypes to try in turn (int16 first when it may fit, then float32)
    philips: dict | None = None  # Philips scaling attrs (None for other manufacturers)


def plan_series(paths: list[str], records: list[FileRecord] | None = None,
                philips_scaling: PhilipsScaling = defaults.CONVERT_PHILIPS_SCALING,
                max_frame_bytes: int = defaults.CONVERT_MAX_FRAME_BYTES) -> SeriesPlan:
    """Read the headers of one series, order its frames and work out its geometry and output dtype
    (``philips_scaling``: display or precise values for Philips MR, see :mod:`voxelpipe.dicom.philips`).

    Raises (before any pixel is decoded) for a frame larger than ``max_frame_bytes`` (Rows x Columns x
    SamplesPerPixel x BitsAllocated / 8), duplicate SOPInstanceUIDs with different pixel data, geometry or
    rescale values no volume can have."""
    frames, dropped = _read_frames(paths, records, philips_scaling, max_frame_bytes)
    check_geometry([f.record.path for f in frames], [f.record.slices[f.frame] for f in frames])
    stored_range = _stored_range(frames[0].fmt)
    check_rescale(stored_range, [(f.slope, f.intercept) for f in frames], [f.record.path for f in frames])
    ordered, n_frames, n_slices, frame_tag = _layout(frames)
    first = ordered[0]
    fmt = first.fmt
    ipps = np.array([f.ipp for f in ordered[:n_slices]])  # frame-major order: the first n_slices are frame 0
    pixel_spacing, spacing_source = pixel_spacing_mm(first.record)
    geometry = geometry_from_slices(ipps, first.record.slices[0].iop, pixel_spacing,
                                    (n_slices, fmt.rows, fmt.columns))
    slopes = np.array([f.slope for f in ordered])
    intercepts = np.array([f.intercept for f in ordered])
    shape = (n_slices, fmt.rows, fmt.columns) if n_frames == 1 else (n_frames, n_slices, fmt.rows, fmt.columns)
    exact = output_dtype(*stored_range, slopes, intercepts)
    integral = bool(np.all(slopes == np.round(slopes)) and np.all(intercepts == np.round(intercepts)))
    dtypes = [INT16, FLOAT32] if exact == FLOAT32 and integral else [exact]
    return SeriesPlan(ordered, n_frames, n_slices, frame_tag, dropped, geometry, shape, spacing_source, dtypes,
                      philips_attrs(ordered, philips_scaling))


def philips_attrs(ordered: list[Frame], mode: PhilipsScaling) -> dict | None:
    """``philips_scaling`` (the scaling applied: precise or display) and ``philips_tags`` (the distinct values
    of the tags it uses) of a Philips series; None for other manufacturers."""
    if not is_philips(ordered[0].record.manufacturer):
        return None
    precise = any((f.slope, f.intercept) != f.display for f in ordered)
    return {
        "philips_scaling": str(PhilipsScaling.PRECISE if precise else PhilipsScaling.DISPLAY),
        "philips_scaling_requested": str(mode),
        "philips_tags": {
            "RescaleSlope (0028,1053)": sorted({f.display[0] for f in ordered}),
            "RescaleIntercept (0028,1052)": sorted({f.display[1] for f in ordered}),
            "MRScaleSlope (2005,100E)": sorted({f.scale_slope for f in ordered}),
            "MRScaleIntercept (2005,100D)": sorted({f.record.scale_intercept for f in ordered}),
        },
    }


def series_attrs(task: SeriesTask, plan: SeriesPlan) -> dict:
    """The attrs convert stores with the volume (geometry, series tags, rescale values, provenance)."""
    attrs = _attrs(task, plan.geometry, plan.ordered[0], plan.ordered, plan.n_frames, plan.frame_tag, plan.dropped)
    attrs["pixel_spacing_source"] = plan.spacing_source
    mosaic = plan.ordered[0].record.mosaic
    if mosaic is not None:
        attrs["mosaic"] = mosaic.to_attrs()
    attrs.update(plan.philips or {})
    return attrs


def _convert(task: SeriesTask) -> dict:
    plan = plan_series(task.paths, task.records, task.philips_scaling, task.max_frame_bytes)
    decision = _geometry_decision(task, plan)  # uneven steps / gantry tilt: keep, fail or regrid (whole stack)
    attrs = dict(series_attrs(task, plan), **decision.attrs)
    if decision.regrid is not None:
        return dict(_write_regridded(task, plan, decision, attrs), **decision.row, dropped=plan.dropped)
    return dict(_convert_streamed(task, plan, attrs), **decision.row, dropped=plan.dropped)


def _geometry_decision(task: SeriesTask, plan: SeriesPlan) -> GeometryDecision:
    """``decide`` on the plan's slices; a kept (uneven or sheared) geometry replaces the plan's."""
    first = plan.ordered[0]
    ipps = np.array([f.ipp for f in plan.ordered[:plan.n_slices]])
    pixel_spacing = (plan.geometry.spacing[1], plan.geometry.spacing[2])
    decision = decide(ipps, first.record.slices[0].iop, pixel_spacing, plan.geometry, task.uneven, task.tilt)
    if decision.regrid is None:
        plan.geometry = decision.geometry
    return decision


def _write_regridded(task: SeriesTask, plan: SeriesPlan, decision: GeometryDecision, attrs: dict) -> dict:
    """Decode the whole stack (every frame), rescale to float32, verify it against pydicom, regrid it and write
    the float32 result in one piece with the regridded geometry."""
    fmt = plan.ordered[0].fmt
    n = len(plan.ordered)
    raw = np.empty((n, fmt.rows, fmt.columns), dtype=fmt.stored_dtype)
    decode_batch(plan.ordered, raw)
    stack = np.empty(raw.shape, dtype=FLOAT32)
    rescale(raw, np.array([f.slope for f in plan.ordered]), np.array([f.intercept for f in plan.ordered]), out=stack)
    del raw
    verification = _verify(task, plan.ordered, _StackReader(stack, plan.n_slices), plan.n_frames, plan.n_slices,
                           FLOAT32)
    if verification.startswith("mismatch"):
        raise InputError(f"verification failed: {verification}")
    frames = [regrid(stack[t * plan.n_slices:(t + 1) * plan.n_slices], decision.regrid)
              for t in range(plan.n_frames)]
    del stack
    volume = frames[0] if plan.n_frames == 1 else np.stack(frames)
    geometry = decision.geometry
    attrs = dict(attrs, **geometry.to_attrs(), dtype=str(FLOAT32))
    if plan.n_frames > 1:
        attrs["axes"] = ["frame", "slice", "row", "column"]
    chunks = _chunks(task, volume.shape)
    writer: VolumeWriter = _writer(task, volume.shape, FLOAT32, chunks, attrs, plan.ordered[0].record.path,
                                   _shards(task, volume.shape))
    try:
        if plan.n_frames == 1:
            writer.write(0, volume)
        else:
            for t in range(plan.n_frames):
                writer.write_at((t, slice(0, volume.shape[1])), volume[t])
        _write_meta(task, attrs, plan.ordered)
        bytes_out = writer.finish()
    except BaseException:
        writer.abort()
        raise
    return {"shape": "x".join(map(str, volume.shape)), "dtype": str(FLOAT32), "bytes_out": bytes_out,
            "verification": f"{verification} (source slices, before regridding)"}


class _StackReader:
    """``read((z,))`` / ``read((t, z))`` over a decoded in-memory stack, for ``_verify``."""

    def __init__(self, stack: np.ndarray, n_slices: int):
        self.stack = stack
        self.n_slices = n_slices

    def read(self, index: tuple) -> np.ndarray:
        z = index[-1] + (index[0] * self.n_slices if len(index) == 2 else 0)
        return self.stack[z]


def _convert_streamed(task: SeriesTask, plan: SeriesPlan, attrs: dict) -> dict:
    for dtype in plan.dtypes[:-1]:  # optimistic int16 output: redone as float32 when a value does not fit
        try:
            return _write(task, plan.ordered, plan.shape, plan.n_frames, dtype, attrs, plan.geometry)
        except ValuesDoNotFitError:
            continue
    return _write(task, plan.ordered, plan.shape, plan.n_frames, plan.dtypes[-1], attrs, plan.geometry)


def _stored_range(fmt: PixelFormat) -> tuple[int, int]:
    bits = fmt.bits_stored
    if fmt.pixel_representation == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _records(paths: list[str], known: list[FileRecord] | None):
    """The record of every file: the scan's when given and complete, else read from the header."""
    by_path = {r.path: r for r in known or []}
    for path in paths:
        record = by_path.get(path)
        if record is None or record.pixel_format is None:
            record = make_record(read_header(path))
        yield path, record


def _read_frames(paths: list[str], known: list[FileRecord] | None = None,
                 philips_scaling: PhilipsScaling = defaults.CONVERT_PHILIPS_SCALING,
                 max_frame_bytes: int = defaults.CONVERT_MAX_FRAME_BYTES) -> tuple[list[Frame], int]:
    """Headers of every file as frames; exact duplicate files (same SOPInstanceUID and pixel data) dropped and
    counted, a frame above ``max_frame_bytes`` refused."""
    frames: list[Frame] = []
    seen: dict[str, FileRecord] = {}
    dropped = 0
    reference: tuple | None = None
    for path, record in _records(paths, known):
        if record.kind != "image":
            raise DicomReadError(path, f"not an image ({record.modality or record.sop_class_uid})")
        if record.is_localizer or record.is_screen_capture:
            continue
        if record.sop_instance_uid and record.sop_instance_uid in seen:
            check_same_pixels(seen[record.sop_instance_uid], record)
            dropped += 1
            continue
        seen[record.sop_instance_uid] = record
        fmt = record.pixel_format
        if fmt is None:
            fmt = PixelFormat.from_row(read_header(path).row, record.transfer_syntax, path)  # raises the reason
        check_frame_bytes(path, fmt, max_frame_bytes)  # before any buffer is allocated or byte decoded
        if record.mosaic is not None:
            fmt = tile_format(fmt, record.mosaic)  # frames are the tiles
        signature = (fmt.rows, fmt.columns, fmt.samples_per_pixel, fmt.bits_allocated, fmt.pixel_representation)
        if reference is None:
            reference = signature
        elif signature != reference:
            raise InputError(f"{path}: inconsistent image format inside the series: rows, columns, samples, bits, "
                             f"representation {signature} differ from the first file's {reference}")
        if fmt.samples_per_pixel != 1:
            raise DicomReadError(path, f"SamplesPerPixel (0028,0002) is {fmt.samples_per_pixel}: 3-D volumes "
                                       "need single-sample (grey) images; use --mode 2d")
        for index, s in enumerate(record.slices):
            slope, intercept = applied_pair(record.manufacturer, s.slope, s.intercept, s.scale_slope, philips_scaling)
            frames.append(Frame(record, fmt, index, np.asarray(s.ipp, dtype=np.float64), slope, intercept,
                                phase=_phase_key(record), display=(s.slope, s.intercept), scale_slope=s.scale_slope))
    if not frames:
        raise InputError(f"series has no image to convert ({len(paths)} files, localizers only?)")
    return frames, dropped


def pixel_digest(record: FileRecord) -> str:
    """SHA-256 of the Pixel Data value of ``record``'s file (to its end when the length is undefined; the whole
    file when the value has no byte offset, as in deflated files)."""
    digest = hashlib.sha256()
    start = max(record.pixel_offset, 0)
    with open(record.path, "rb") as fp:
        fp.seek(start)
        left = record.pixel_length if record.pixel_offset >= 0 and record.pixel_length >= 0 else -1
        while left != 0:
            piece = fp.read(HASH_PIECE if left < 0 else min(left, HASH_PIECE))
            if not piece:
                break
            digest.update(piece)
            left = left - len(piece) if left > 0 else left
    return digest.hexdigest()


def check_same_pixels(kept: FileRecord, other: FileRecord) -> None:
    """Accept ``other`` as an exact duplicate of ``kept`` (same SOPInstanceUID) when its pixel data is the same.

    Raises:
        InputError: The pixel data differ; naming the UID and both files.
    """
    if pixel_digest(kept) == pixel_digest(other):
        return
    raise InputError(f"SOPInstanceUID (0008,0018) {kept.sop_instance_uid} is shared by {kept.path} and "
                     f"{other.path} with different pixel data: no copy can be trusted; no volume written")


def _phase_key(record: FileRecord) -> tuple:
    key = []
    for name in PHASE_TAGS:
        text = record.phase.get(name, "")
        try:
            key.append(float(text.split("\\")[0]))
        except ValueError:
            key.append(0.0)
    key.append(record.instance_number if record.instance_number is not None else 0)
    return tuple(key)


def _layout(frames: list[Frame]) -> tuple[list[Frame], int, int, str]:
    """Order frames by position (then phase); returns (ordered frames, frames per position, positions, tag).

    For 4-D output the list is frame-major: all slices of phase 0, then phase 1, ..."""
    normal = slice_normal(frames[0].record.slices[0].iop)
    positions = np.array([f.ipp @ normal for f in frames])
    for f, p in zip(frames, positions):
        f.position = float(p)
    unique, groups = cluster_positions(positions)
    counts = np.bincount(groups)
    by_position: list[list[Frame]] = [[] for _ in unique]
    for f, g in zip(frames, groups):
        by_position[g].append(f)
    for members in by_position:
        members.sort(key=lambda f: (f.phase, f.record.path, f.frame))
    if counts.min() != counts.max():
        extra = int(np.sum(counts - counts.min()))
        raise InputError(f"slice positions hold different numbers of images ({counts.min()} to {counts.max()}; "
                         f"{extra} extra): duplicated or incomplete slices; no volume written")
    k = int(counts[0])
    if k == 1:
        return [m[0] for m in by_position], 1, len(unique), ""
    frame_tag = _varying_tag(by_position[0])
    ordered = [by_position[p][t] for t in range(k) for p in range(len(unique))]
    return ordered, k, len(unique), frame_tag


def _varying_tag(members: list[Frame]) -> str:
    for index, name in enumerate(PHASE_TAGS):
        if len({m.phase[index] for m in members}) == len(members):
            return name
    return "InstanceNumber"


def _attrs(task: SeriesTask, geometry: Geometry, first: Frame, ordered: list[Frame], n_frames: int,
           frame_tag: str, dropped: int) -> dict:
    row = first.record
    attrs = geometry.to_attrs()
    attrs.update({
        "series_key": task.key,
        "series_instance_uid": row.series_uid,
        "study_instance_uid": row.study_uid,
        "frame_of_reference_uid": row.frame_of_reference_uid,
        "modality": row.modality,
        "series_description": row.series_description,
        "series_number": row.series_number,
        "image_orientation_patient": list(row.slices[0].iop),
        "n_frames_per_position": n_frames,
        "frame_tag": frame_tag,
        "duplicate_files_dropped": dropped,
        "rescale_slope": sorted({f.slope for f in ordered}),
        "rescale_intercept": sorted({f.intercept for f in ordered}),
        "transfer_syntax": first.fmt.transfer_syntax,
        "provenance": {
            "voxelpipe_version": __version__,
            "options": task.options or {},
            "input_files": len(task.paths),
            "input_bytes": sum(_size(p) for p in task.paths),
        },
    })
    if n_frames > 1:
        attrs["axes"] = ["frame", "slice", "row", "column"]
    return deidentify_fields(attrs, VOLUME_PHI, task.phi, task.secret)


def _writer(task: SeriesTask, shape, dtype, chunks, attrs, source: str = "",
            shards: tuple[int, ...] | None = None) -> VolumeWriter:
    if task.fmt == Format.NIFTI:  # the JSON sidecar beside <key>.nii.gz: BIDS fields of the first file
        sidecar = nifti_sidecar(source or (task.paths[0] if task.paths else ""))
        attrs = dict(attrs, sidecar=deidentify_fields(sidecar, SIDECAR_PHI, task.phi, task.secret))
    factory = writer_for(task.fmt, task.store, levels=task.levels, shards=shards)
    return factory(volume_path(task), shape, dtype, chunks, attrs, task.clevel)


def nifti_sidecar(path: str) -> dict:
    """The BIDS JSON sidecar of a NIfTI volume from the DICOM file ``path`` (dcm2niix's field names, seconds);
    only the conversion software fields when ``path`` is ''."""
    fields = read_bids_sidecar(path) if path else {}
    return {**fields, "ConversionSoftware": "voxelpipe", "ConversionSoftwareVersion": __version__}


def layout_grid(layout: str, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """(chunk shape, shard shape or None) of ``layout`` (a name of ``defaults.VOLUME_LAYOUTS``) for a volume of
    ``shape`` (slice, row, column) or (frame, slice, row, column; one frame per chunk and shard).

    Chunks are clipped to the array; a 0 in the layout means the whole extent of that axis. A shard holds whole
    chunks (zarr requires it): its extent is rounded up to a multiple of the chunk, and it is dropped when it
    would hold one chunk only.

    Raises:
        InputError: an unknown layout name.
    """
    try:
        chunks, shards = defaults.VOLUME_LAYOUTS[layout]
    except KeyError:
        raise InputError(f"unknown layout {layout!r}; choose {', '.join(defaults.VOLUME_LAYOUTS)}") from None
    spatial = shape[-3:]
    inner = tuple(max(1, min(c or s, s)) for c, s in zip(chunks, spatial))
    outer = None
    if shards is not None:
        outer = tuple(-(-min(b or s, s) // c) * c for b, c, s in zip(shards, inner, spatial))
        outer = tuple(max(o, c) for o, c in zip(outer, inner))
        if outer == inner:
            outer = None
    lead = () if len(shape) == 3 else (1,)
    return lead + inner, None if outer is None else lead + outer


def _chunks(task: SeriesTask, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The chunk shape (inner chunks of a sharded layout): ``task.chunks`` when given, else the layout's."""
    if task.chunks is None:
        return layout_grid(task.layout, shape)[0]
    spatial = tuple(max(1, min(c, s)) for c, s in zip(task.chunks, shape[-3:]))
    return spatial if len(shape) == 3 else (1,) + spatial


def _shards(task: SeriesTask, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The shard shape of a Zarr volume (None: plain chunks, as with ``task.chunks`` or another format)."""
    if task.chunks is not None or task.fmt != Format.ZARR:
        return None
    return layout_grid(task.layout, shape)[1]


def _write(task: SeriesTask, ordered: list[Frame], shape, n_frames: int, dtype: np.dtype, attrs: dict,
           geometry: Geometry) -> dict:
    """Stream slabs of ``chunks[0]`` slices (a shard's depth when sharded): decode → raw slab → rescale kernel →
    output slab → store."""
    chunks = _chunks(task, shape)
    shards = _shards(task, shape)
    depth = (shards or chunks)[-3]
    fmt = ordered[0].fmt
    raw = np.empty((depth, fmt.rows, fmt.columns), dtype=fmt.stored_dtype)
    out = np.empty((depth, fmt.rows, fmt.columns), dtype=dtype)
    attrs = dict(attrs, dtype=str(dtype))
    writer: VolumeWriter = _writer(task, shape, dtype, chunks, attrs, ordered[0].record.path, shards)
    n_slices = shape[-3]
    try:
        for t in range(n_frames):
            for z0 in range(0, n_slices, depth):
                n = min(depth, n_slices - z0)
                batch = ordered[t * n_slices + z0:t * n_slices + z0 + n]
                decode_batch(batch, raw)
                slopes = np.array([f.slope for f in batch])
                intercepts = np.array([f.intercept for f in batch])
                rescale(raw[:n], slopes, intercepts, out=out[:n])  # ValuesDoNotFitError: _convert tries float32
                if n_frames == 1:
                    writer.write(z0, out[:n])
                else:
                    writer.write_at((t, slice(z0, z0 + n)), out[:n])
        verification = _verify(task, ordered, writer, n_frames, n_slices, dtype)
        if verification.startswith("mismatch"):
            raise InputError(f"verification failed: {verification}")
        _write_meta(task, attrs, ordered)
        bytes_out = writer.finish()
    except BaseException:
        writer.abort()
        raise
    return {"shape": "x".join(map(str, shape)), "dtype": str(dtype), "bytes_out": bytes_out,
            "verification": verification, "mosaic": attrs.get("mosaic", {}).get("n_images", "")}


def decode_batch(batch: list[Frame], raw: np.ndarray) -> None:
    """Decode the frames of ``batch`` into ``raw[:len(batch)]``; runs of frames from one file (enhanced
    multi-frame) are decoded in one call so the file is opened and parsed once per slab."""
    j = 0
    while j < len(batch):
        f = batch[j]
        end = j + 1
        while end < len(batch) and batch[end].record is f.record:
            end += 1
        if f.record.mosaic is not None:  # the whole mosaic decoded once, its tiles copied into the slab
            decode_tiles(f.record.path, f.fmt, f.record.mosaic, raw[j:end],
                         f.record.pixel_offset, [g.frame for g in batch[j:end]])
        else:
            decode_into(f.record.path, f.fmt, raw[j:end], f.record.pixel_offset,
                        frames=[g.frame for g in batch[j:end]])
        j = end


def _verify(task: SeriesTask, ordered: list[Frame], writer: VolumeWriter, n_frames: int, n_slices: int, dtype) -> str:
    """MD5 of K sampled source slices (pydicom decode + apply_modality_lut) against the stored slices; only the
    sampled frames are read and decoded (a multi-frame file is never decoded whole)."""
    k = min(task.verify_slices, len(ordered))
    if k <= 0:
        return "not verified"
    rng = np.random.default_rng(int(hashlib.sha256(task.key.encode()).hexdigest()[:8], 16))
    picks = sorted(rng.choice(len(ordered), size=k, replace=False).tolist())
    for index in picks:
        f = ordered[index]
        reference = reference_slice(f).astype(dtype)
        t, z = divmod(index, n_slices)
        stored = writer.read((z,) if n_frames == 1 else (t, z))
        digest = hashlib.md5(np.ascontiguousarray(stored).tobytes()).hexdigest()
        if hashlib.md5(reference.tobytes()).hexdigest() != digest:
            in_file = f", frame index {f.frame} of the file" if f.record.frames > 1 else ""  # multi-frame, mosaic
            return f"mismatch at slice {z} (frame {t}) from {f.record.path}{in_file}"
    return f"ok {k}/{k}"


def reference_slice(f: Frame) -> np.ndarray:
    """pydicom's own decode of the frame ``f`` (``pixel_array`` of that frame only, then ``apply_modality_lut``
    with the frame's rescale pair): the independent reference of verification, shape (row, column).

    Only the frame's bytes are read and decoded (``pydicom.pixels.pixel_array(path, index=...)``), so checking
    one frame of a large multi-frame file costs one frame of memory, not the file. A file that reader cannot
    take (deflated: its pixel data is at no byte offset of the file; or an encoding only ``dcmread`` corrects,
    such as a wrong transfer syntax in the file meta) is read whole by ``dcmread`` and only its frame decoded."""
    path = f.record.path
    ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)  # force: no preamble or file meta too
    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    index = f.frame if f.record.mosaic is None and f.record.frames > 1 else None  # a mosaic is one frame
    declared = UID(syntax or f.fmt.transfer_syntax)  # no file meta: the encoding read from the file
    pixels = None
    if declared != DeflatedExplicitVRLittleEndian and declared.is_transfer_syntax \
            and (declared.is_implicit_VR, declared.is_little_endian) == ds.original_encoding:
        try:
            pixels = pixel_array(path, index=index, **({} if syntax else {"transfer_syntax_uid": declared}))
        except Exception:  # noqa: BLE001 - any failure of the frame reader: dcmread's whole-file read below
            pixels = None
    if pixels is None:
        whole = pydicom.dcmread(path, force=True)
        if not syntax:
            whole.file_meta = getattr(whole, "file_meta", None) or FileMetaDataset()
            whole.file_meta.TransferSyntaxUID = f.fmt.transfer_syntax
        pixels = pixel_array(whole, index=index)
        del whole
    if f.record.mosaic is not None:
        pixels = tile(pixels, f.record.mosaic, f.frame)
    if f.record.frames > 1 or (f.slope, f.intercept) != f.display:  # per-frame or Philips precise pair
        ds.RescaleSlope, ds.RescaleIntercept = f.slope, f.intercept
    return apply_modality_lut(pixels, ds)


def _write_meta(task: SeriesTask, attrs: dict, ordered: list[Frame]) -> None:
    meta = os.path.join(task.out, "meta")
    os.makedirs(meta, exist_ok=True)
    write_json(os.path.join(meta, f"{task.key}.series.json"), attrs)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    uids = task.phi != Phi.DROP  # drop: no sop_instance_uid column; pseudonymise: its pseudonyms
    writer.writerow(["index", *(["sop_instance_uid"] if uids else []), "instance_number", "frame", "position_mm",
                     "slope", "intercept", "file"])
    for i, f in enumerate(ordered):
        uid = f.record.sop_instance_uid
        if task.phi == Phi.PSEUDONYMISE:
            uid = pseudonymise_value(uid, task.secret, uid=True)
        writer.writerow([i, *([uid] if uids else []), f.record.instance_number, f.frame, round(f.position, 4),
                         f.slope, f.intercept, f.record.path])
    with atomic_path(os.path.join(meta, f"{task.key}.slices.csv")) as tmp, \
            open(tmp, "w", newline="", encoding="utf-8", errors=PATH_BYTES) as fh:
        fh.write(buffer.getvalue())
