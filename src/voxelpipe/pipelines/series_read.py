"""One DICOM series into memory as a :class:`~voxelpipe.core.volume.Volume` (no store), with convert's rules.

``read_series`` runs exactly the steps of convert (``pipelines.series_volume``: header records, duplicate
drop, slice order, geometry, pixel decoding, per-slice rescale kernel, int16 when every value is integral and
fits, else float32), only the output is an in-memory array instead of a store.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from voxelpipe.core.errors import InputError, ValuesDoNotFitError
from voxelpipe.core.keys import series_key
from voxelpipe.core.volume import Volume
from voxelpipe.ops.rescale import rescale
from voxelpipe.pipelines.series_volume import SeriesTask, decode_batch, plan_series, series_attrs

__all__ = ["read_series"]


def _expand(paths: Sequence[str] | str | os.PathLike) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        path = os.fspath(paths)
        if os.path.isdir(path):
            return sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
        return [path]
    return [os.fspath(p) for p in paths]


def read_series(paths: Sequence[str] | str | os.PathLike, records=None) -> Volume:
    """Read one 3-D (or 4-D, repeated positions) series into memory.

    ``paths``: the files of ONE series (a folder is expanded to every file under it). ``records``: the scan's
    :class:`~voxelpipe.dicom.records.FileRecord` of those files when at hand (no second header parse).

    Returns a Volume with the rescaled array (int16 or float32, as convert stores it), its Geometry and attrs
    like convert's (geometry, series tags, rescale values) plus ``slice_files`` / ``sop_instance_uids`` /
    ``slice_frames`` (the file, SOPInstanceUID and frame index inside the file of each slice, in slice order;
    frame-major for 4-D), ``rescale_slopes`` / ``rescale_intercepts`` per slice and ``dtype``.
    Raises the errors convert reports for a failed series (DicomReadError, InputError, ...)."""
    files = _expand(paths)
    if not files:
        raise InputError("read_series: no files given")
    plan = plan_series(files, records)
    ordered = plan.ordered
    first = ordered[0]
    key = series_key(first.record.series_uid or first.record.path)
    attrs = series_attrs(SeriesTask(key=key, paths=files, out=""), plan)
    fmt = first.fmt
    raw = np.empty((len(ordered), fmt.rows, fmt.columns), dtype=fmt.stored_dtype)
    decode_batch(ordered, raw)
    slopes = np.array([f.slope for f in ordered], dtype=np.float64)
    intercepts = np.array([f.intercept for f in ordered], dtype=np.float64)
    array = None
    for dtype in plan.dtypes[:-1]:  # optimistic int16 output: float32 when a value does not fit
        try:
            array = rescale(raw, slopes, intercepts, out=np.empty(raw.shape, dtype=dtype))
            break
        except ValuesDoNotFitError:
            continue
    if array is None:
        array = rescale(raw, slopes, intercepts, out=np.empty(raw.shape, dtype=plan.dtypes[-1]))
    array = array.reshape(plan.shape)
    attrs.update({
        "dtype": str(array.dtype),
        "slice_files": [f.record.path for f in ordered],
        "sop_instance_uids": [f.record.sop_instance_uid for f in ordered],
        "slice_frames": [int(f.frame) for f in ordered],
        "rescale_slopes": slopes.tolist(),
        "rescale_intercepts": intercepts.tolist(),
    })
    return Volume(array, plan.geometry, attrs, "")
