"""Small helpers shared by the test modules (independent of voxelpipe's own code)."""
from __future__ import annotations

import hashlib

import pydicom
from pydicom.uid import generate_uid

from voxelpipe.testing.synthetic import ROOT_UID


def sha_key(series_uid: str) -> str:
    """The series key voxelpipe documents: SHA-256 of the SeriesInstanceUID, first 16 hex characters."""
    return hashlib.sha256(series_uid.encode("ascii")).hexdigest()[:16]


def resave(path: str, edit, new_path: str | None = None, new_uid: bool = False, **save_kwargs) -> str:
    """Read ``path`` with pydicom, apply ``edit(ds)``, save (to ``new_path`` when given); returns the path."""
    ds = pydicom.dcmread(path)
    if new_uid:
        uid = generate_uid(ROOT_UID)
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
    edit(ds)
    target = new_path or path
    ds.save_as(target, enforce_file_format=True, **save_kwargs)
    return target
