"""The ``pydicom`` backend: everything pydicom can decode, through its own plugins (pylibjpeg, ...).

Used for JPEG baseline/extended, JPEG 2000 / HTJ2K, colour images in compressed syntaxes, deflated files, and
as the fallback when a fast backend declines a file. The result is ``Dataset.pixel_array`` (pydicom 3 defaults).
"""
from __future__ import annotations

from functools import cache

import numpy as np
import pydicom
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import AllTransferSyntaxes

from voxelpipe.core.errors import DicomReadError
from voxelpipe.dicom.pixels.job import DecodeJob
from voxelpipe.dicom.pixels.syntaxes import DEFLATED_LE, syntax_name

NAME = "pydicom"
COLOUR = True  # decodes colour images too
NEEDS_OFFSET = False  # pydicom parses the file itself


def is_available() -> bool:
    """Always True: pydicom is a dependency (which syntaxes it decodes depends on its plugins)."""
    return True


@cache
def syntaxes() -> dict[str, str]:
    """Transfer syntax UID -> pydicom's available plugins (``"native"`` for uncompressed) decodable here."""
    found = {}
    for uid in AllTransferSyntaxes:
        try:
            decoder = get_decoder(uid)
        except NotImplementedError:
            continue
        if decoder.is_available:
            plugins = ", ".join(decoder.available_plugins) if decoder.is_encapsulated else "native"
            found[str(uid)] = plugins
    return found


def decode(job: DecodeJob) -> None:
    """Fill ``job.out`` with pydicom's ``pixel_array`` of ``job.frames``.

    All frames are decoded from one dataset; a subset is decoded frame by frame from the path (group 0028 and
    the wanted frame only) unless the file is deflated.

    Raises:
        DicomReadError: pydicom cannot decode the file, or decodes a dtype or size other than expected.
    """
    fmt, out = job.fmt, job.out
    try:
        if job.frames == list(range(fmt.frames)):
            arrays = [pixel_array(pydicom.dcmread(job.path))]  # = Dataset.pixel_array
            shape = out.shape
        else:
            source = pydicom.dcmread(job.path) if fmt.transfer_syntax == DEFLATED_LE else job.path
            arrays = [pixel_array(source, index=i) for i in job.frames]
            shape = fmt.frame_shape
    except Exception as exc:  # pydicom and its plugins raise many types
        raise DicomReadError(job.path, f"cannot decode pixel data ({syntax_name(fmt.transfer_syntax)}) with "
                                       f"pydicom: {type(exc).__name__}: {exc}") from None
    for k, arr in enumerate(arrays):
        if arr.dtype.kind not in "ui" or arr.dtype.itemsize != out.itemsize:
            raise DicomReadError(job.path, f"pydicom decoded {arr.dtype} pixels, expected {out.dtype}")
        if arr.size != int(np.prod(shape)):
            raise DicomReadError(job.path, f"pixel data size mismatch: pydicom decoded shape {arr.shape}, "
                                           f"expected {shape}")
        target = out if len(arrays) == 1 and shape == out.shape else out[k]
        np.copyto(target, arr.reshape(target.shape), casting="unsafe")


__all__ = ["COLOUR", "NAME", "NEEDS_OFFSET", "decode", "is_available", "syntaxes"]
