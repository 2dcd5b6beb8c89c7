"""Pixel decoding of one 512x512 16-bit image: ``voxelpipe.dicom.pixels.decode_into`` vs pydicom's ``pixel_array``.

Peers, timed in the same run on the same files:

* ``voxelpipe``: ``decode_into(path, fmt, out, pixel_offset)`` with the auto-chosen backend (``decoder_for``:
  imagecodecs for JPEG lossless and JPEG-LS when installed, ``readinto`` for uncompressed data) into a
  preallocated, already-touched buffer. The header was read beforehand (as in convert, where scan or the worker
  has it), so the time is pixel reading and decoding only.
* ``pydicom``: ``pydicom.dcmread(path).pixel_array`` (pydicom 3 with pylibjpeg-libjpeg), the usual way; it
  includes parsing the header (~1 ms here, small next to the decoders).

Data, written once per session into pytest's tmp folder: a CT-like 512x512 image (12-bit values, smooth
structure plus noise, BitsAllocated 16, BitsStored 12), stored as JPEG Lossless SV1, JPEG-LS lossless and
uncompressed. pydicom 3 has no JPEG lossless encoder and its JPEG-LS encoder needs pyjpegls, so the codestreams
are made with imagecodecs (libjpeg-turbo / CharLS) and encapsulated with ``pydicom.encaps.encapsulate``.

Decoding against pydicom (and the JPEG lossless / JPEG-LS codestreams made with imagecodecs) is tested in
``tests/test_pixels.py``; here each case only checks the shape and dtype of what it timed.

Run:

* smoke test (pyproject addopts ``--benchmark-disable``: every case runs once, with the checks)::

    python -m pytest benches/bench_decode.py -q

* timed, with the ratio table in the terminal summary::

    python -m pytest benches/bench_decode.py --benchmark-enable -q -s
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, generate_uid

from voxelpipe.dicom.files import read_header
from voxelpipe.dicom.pixels import PixelFormat, decode_into, decoder_for

from _common import Column, RatioTable

imagecodecs = pytest.importorskip("imagecodecs", reason="the compressed test images are encoded with imagecodecs")

SHAPE = (512, 512)
ROUNDS = 15
IMPLS = ["voxelpipe", "pydicom"]
CODECS = {
    "jpeg-lossless": "1.2.840.10008.1.2.4.70",
    "jpeg-ls": "1.2.840.10008.1.2.4.80",
    "uncompressed": "1.2.840.10008.1.2.1",
}
TABLE = RatioTable(
    "decode: voxelpipe decode_into vs pydicom pixel_array", unit="ms", order=IMPLS,
    header=lambda: [f"one {SHAPE[0]}x{SHAPE[1]} 16-bit image, median of {ROUNDS} rounds"],
    columns=[Column("backend", "backend", "", align="<")])


def _image() -> np.ndarray:
    rng = np.random.default_rng(20240601)
    y, x = np.mgrid[: SHAPE[0], : SHAPE[1]]
    body = (x - 256) ** 2 + (y - 256) ** 2 < 230**2
    values = np.where(body, 1040 + 300 * np.sin(x / 37.0) * np.cos(y / 23.0), 24.0)
    values += rng.normal(0, 12, SHAPE)
    return values.clip(0, 4095).astype(np.uint16)


def _write(path: Path, syntax: str, image: np.ndarray) -> str:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = SHAPE
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    if syntax == CODECS["jpeg-lossless"]:
        frame = imagecodecs.jpeg8_encode(image, lossless=True, predictor=1, bitspersample=12)
    elif syntax == CODECS["jpeg-ls"]:
        frame = imagecodecs.jpegls_encode(image)
    else:
        frame = None
    if frame is None:
        ds.PixelData = image.tobytes()
        ds["PixelData"].VR = "OW"
    else:
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
    assert UID(syntax).is_encapsulated == (frame is not None)
    ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return str(path)


@pytest.fixture(scope="module")
def decode_files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("bench_decode")
    image = _image()
    return {codec: _write(folder / f"{codec}.dcm", syntax, image) for codec, syntax in CODECS.items()}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("codec", list(CODECS))
def test_decode(benchmark, decode_files, codec, impl):
    """Decode one image."""
    path = decode_files[codec]
    TABLE.begin(benchmark, f"decode-{codec}", impl)
    header = read_header(path)
    fmt = PixelFormat.from_row(header.row, header.transfer_syntax, path)
    out = np.zeros((1, *fmt.frame_shape), fmt.stored_dtype)  # preallocated and touched, as in convert
    offset = header.pixel.value_offset

    def ours() -> np.ndarray:
        decode_into(path, fmt, out, offset)
        return out[0]

    def theirs() -> np.ndarray:
        return pydicom.dcmread(path).pixel_array

    fn = ours if impl == "voxelpipe" else theirs
    t0 = time.perf_counter()
    result = benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    benchmark.extra_info["seconds_when_disabled"] = time.perf_counter() - t0
    benchmark.extra_info["backend"] = decoder_for(fmt.transfer_syntax) if impl == "voxelpipe" else "pydicom"
    assert result.shape == SHAPE and result.dtype == np.uint16, (impl, result.shape, result.dtype)
    TABLE.record(benchmark, ROUNDS, backend=benchmark.extra_info["backend"])
