"""The ``pydicom`` backend: everything pydicom can decode, through its own plugins (pylibjpeg, ...).

Used for JPEG baseline/extended, JPEG 2000 / HTJ2K, colour images in compressed syntaxes, deflated files, and
as the fallback when a fast backend declines a file. The result is ``Dataset.pixel_array`` (pydicom 3 defaults).
Files are read as pydicom's ``force=True`` reads them (no preamble needed). A deflated file is inflated as a
stream and refused once it inflates to more than its declared pixel data plus ``DEFLATED_HEADER_ALLOWANCE``
(pydicom alone would inflate the whole file in memory, however large).
"""
from __future__ import annotations

import io
import math
import struct
import zlib
from functools import cache

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_file_meta_info
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import AllTransferSyntaxes, ExplicitVRLittleEndian

from voxelpipe.core.errors import DicomReadError
from voxelpipe.dicom.pixels.format import PixelFormat
from voxelpipe.dicom.pixels.job import DecodeJob
from voxelpipe.dicom.pixels.syntaxes import DEFLATED_LE, syntax_name

DEFLATED_HEADER_ALLOWANCE = 64 << 20  # bytes a deflated dataset may hold besides its declared pixel data
INFLATE_PIECE = 1 << 20  # compressed bytes read at a time
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})

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
    deflated = fmt.transfer_syntax == DEFLATED_LE
    try:
        if job.frames == list(range(fmt.frames)):
            source = inflated_dataset(job.path, fmt) if deflated else pydicom.dcmread(job.path, force=True)
            arrays = [pixel_array(source)]  # = Dataset.pixel_array
            shape = out.shape
        else:
            source = inflated_dataset(job.path, fmt) if deflated else job.path
            arrays = [pixel_array(source, index=i) for i in job.frames]
            shape = fmt.frame_shape
    except DicomReadError:
        raise
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


def _meta_end(fp) -> int:
    """Offset of the first byte after the preamble and the file meta group (0002) of the file ``fp``."""
    head = fp.read(132)
    pos = 132 if head[128:132] == b"DICM" else 0
    while True:
        fp.seek(pos)
        element = fp.read(12)
        if len(element) < 8 or struct.unpack_from("<H", element)[0] != 0x0002:
            return pos
        if element[4:6] in LONG_VRS:
            pos += 12 + struct.unpack_from("<I", element, 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", element, 6)[0]


def inflated_dataset(path: str, fmt: PixelFormat) -> Dataset:
    """The dataset of a deflated file (1.2.840.10008.1.2.1.99), inflated piece by piece and read as explicit VR
    little endian.

    Raises:
        DicomReadError: The data inflates to more than the declared pixel data (``fmt``: frames x frame bytes)
            plus ``DEFLATED_HEADER_ALLOWANCE``, or is not valid deflate data.
    """
    limit = int(math.ceil(fmt.native_frame_bytes * fmt.frames)) + DEFLATED_HEADER_ALLOWANCE
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = bytearray()
    try:
        with open(path, "rb") as fp:
            fp.seek(_meta_end(fp))
            while not inflater.eof:
                data = fp.read(INFLATE_PIECE)
                if not data:
                    break
                while data and not inflater.eof:
                    inflated += inflater.decompress(data, limit + 1 - len(inflated))
                    if len(inflated) > limit:
                        raise DicomReadError(path, f"deflated data inflates to more than {limit} bytes: more than "
                                                   f"{fmt.frames} frame(s) of {fmt.rows}x{fmt.columns}x"
                                                   f"{fmt.samples_per_pixel} at {fmt.bits_allocated} bits and "
                                                   f"{DEFLATED_HEADER_ALLOWANCE} bytes of header")
                    data = inflater.unconsumed_tail
    except zlib.error as exc:
        raise DicomReadError(path, f"corrupt deflated data: {exc}") from None
    ds = read_dataset(io.BytesIO(inflated), is_implicit_VR=False, is_little_endian=True)
    del inflated
    ds.file_meta = read_file_meta_info(path)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # what the inflated bytes are
    return ds


__all__ = ["COLOUR", "DEFLATED_HEADER_ALLOWANCE", "NAME", "NEEDS_OFFSET", "decode", "inflated_dataset",
           "is_available", "syntaxes"]
