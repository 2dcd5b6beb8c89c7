"""Small helpers shared by the test modules (independent of voxelpipe's own code)."""
from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import sys

import numpy as np
import pydicom
from PIL import Image
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


def dcm2niix_executable() -> str | None:
    """The dcm2niix binary: on PATH, beside the running interpreter (the ``dcm2niix`` pip package installs it into
    the venv's bin folder), or the package's own copy; None when there is none."""
    found = shutil.which("dcm2niix") or shutil.which("dcm2niix", path=os.path.dirname(sys.executable))
    if found:
        return found
    try:
        import dcm2niix  # optional: the PyPI package ships the binary
    except ImportError:
        return None
    path = getattr(dcm2niix, "bin", None) or getattr(dcm2niix, "bin_path", None)
    return str(path) if path and os.path.isfile(path) else None


def decode_png_data_uri(src: str) -> Image.Image:
    """The PNG image of a ``data:image/png;base64,...`` URI (as the HTML report embeds its pictures), loaded."""
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    image = Image.open(io.BytesIO(base64.b64decode(src[len(prefix):], validate=True)))
    assert image.format == "PNG"
    image.load()
    return image


CT_CENTRE, CT_WIDTH = 40.0, 400.0  # the report's CT window (HU)


def ct_window(x: np.ndarray) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 linear VOI function, output 0..255, W400/L40 (the reference for the report's
    CT pictures)."""
    x = x.astype(np.float64)
    c, w = CT_CENTRE, CT_WIDTH
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    y = np.where(x <= c - 0.5 - (w - 1) / 2, 0.0, np.where(x > c - 0.5 + (w - 1) / 2, 255.0, y))
    return np.rint(y).astype(np.uint8)
