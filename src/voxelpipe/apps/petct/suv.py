"""The PET series below some paths and the JSON record of each one's body-weight SUV factor and its audit (the
``suv`` command, :mod:`voxelpipe.cli.suv`, prints one record per series)."""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import pydicom

from voxelpipe.core.errors import InputError
from voxelpipe.dicom.files import iter_files, sniff
from voxelpipe.dicom.suv import SuvResult

log = logging.getLogger("voxelpipe.suv")


class NoPetError(InputError):
    """No PET (Modality PT) DICOM file among the inputs."""


def find_pet_series(paths: Sequence[str]) -> dict[str, list[pydicom.Dataset]]:
    """SeriesInstanceUID -> headers (no pixels) of the PT files below ``paths``, ordered by InstanceNumber then
    file name. Files that are not DICOM or cannot be read are skipped (logged at debug level)."""
    series: dict[str, list[pydicom.Dataset]] = {}
    for path in iter_files(paths):
        try:
            with open(path, "rb") as fh:
                if not sniff(fh.read(132)):
                    continue
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception as exc:  # unreadable or corrupt: not ours to judge here
            log.debug("suv: %s skipped: %s", path, exc)
            continue
        if str(ds.get("Modality", "")).strip().upper() != "PT":
            continue
        series.setdefault(str(ds.get("SeriesInstanceUID", "")).strip(), []).append(ds)
    for datasets in series.values():
        datasets.sort(key=lambda d: (_instance_number(d), str(d.filename)))
    return series


def _instance_number(ds: pydicom.Dataset) -> int:
    try:
        return int(ds.get("InstanceNumber") or 0)
    except (TypeError, ValueError):
        return 0


def series_record(uid: str, datasets: list[pydicom.Dataset], result: SuvResult) -> dict:
    """The JSON object printed for one series."""
    files = [str(ds.filename) for ds in datasets]
    record = {
        "series_instance_uid": uid,
        "folder": os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files]),
        "n_files": len(files),
        "factor": result.audit.get("factor"),
        "factor_min": result.audit.get("factor_min"),
        "factor_max": result.audit.get("factor_max"),
        "audit": result.audit,
    }
    if record["factor"] is None:  # differs per slice (DecayCorrection NONE): list them
        record["slice_factors"] = [{"file": f, "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
                                    "factor": float(v)} for f, ds, v in zip(files, datasets, result.factors)]
    return record


__all__ = ["find_pet_series", "series_record", "NoPetError"]

