"""decode_into against pydicom's own decoding (``pydicom.dcmread(f).pixel_array``), the independent reference.

Every file with pixel data in pydicom's bundled test files and in pydicom-data (``get_testdata_files()`` covers
both when pydicom-data is installed), compressed and uncompressed, is decoded with the auto-chosen backend and
compared exactly (values and dtype). Syntaxes with more than one backend are decoded by each backend explicitly.
Synthetic files cover what the bundled files lack: every JPEG lossless predictor, signed data with garbage in the
unused high bits, frame subsets, slab views, truncation and unsupported syntaxes.
"""
from __future__ import annotations

import os
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, generate_uid

from voxelpipe.core.errors import DicomReadError, InputError
from voxelpipe.dicom.files import read_header
from voxelpipe.dicom.pixels import (
    DECODERS,
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMAGECODECS_FUNCTIONS,
    IMPLICIT_LE,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEGLS_LOSSLESS,
    RLE_LOSSLESS,
    PixelFormat,
    available_decoders,
    decode_into,
    decoder_for,
)

try:
    import imagecodecs
except ImportError:  # the imagecodecs tests skip; the pydicom and raw paths are still tested
    imagecodecs = None

HAS_IMAGECODECS = DECODERS["imagecodecs"].is_available(JPEG_LOSSLESS_SV1)
needs_imagecodecs = pytest.mark.skipif(not HAS_IMAGECODECS, reason="imagecodecs not installed")


# ----------------------------------------------------------------------------------------------------------
# the bundled test files
# ----------------------------------------------------------------------------------------------------------
def _pixel_files() -> dict[str, str]:
    """id -> path for every test file with a pixel data element (ids: file names, made unique)."""
    from pydicom.data import get_testdata_files

    found: dict[str, str] = {}
    for path in sorted(get_testdata_files()):
        if not os.path.isfile(path):
            continue
        try:
            header = read_header(path)
        except DicomReadError:
            continue
        deflated = header.transfer_syntax == "1.2.840.10008.1.2.1.99"
        if header.pixel is None and not deflated:
            continue
        name = os.path.basename(path)
        if name in found:
            name = f"{Path(path).parent.name}/{name}"
        found[name] = path
    return found


FILES = _pixel_files()


@cache
def _header(path: str):
    return read_header(path)


_REFERENCE_ERRORS: dict[str, str] = {}  # path -> why pydicom cannot decode it
_REFERENCE_OK: set[str] = set()


def _reference_or_error(path: str) -> tuple[np.ndarray | None, str]:
    """pydicom's pixel_array, or None and the reason pydicom cannot read or decode the file."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        reason = f"pydicom cannot read the file: {type(exc).__name__}: {str(exc)[:100]}"
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr = ds.pixel_array
            _REFERENCE_OK.add(path)
            return arr, ""
        except Exception as exc:
            reason = f"pydicom cannot decode the pixels: {type(exc).__name__}: {str(exc)[:100]}"
    _REFERENCE_ERRORS[path] = reason
    return None, reason


def _reference(path: str) -> np.ndarray:
    """pydicom's pixel_array; skip the test when pydicom itself cannot read or decode the file."""
    arr, reason = _reference_or_error(path)
    if arr is None:
        pytest.skip(reason)
    return arr


def _format(path: str) -> PixelFormat:
    header = _header(path)
    return PixelFormat.from_row(header.row, header.transfer_syntax, path)


def _offset(path: str) -> int:
    pixel = _header(path).pixel
    return pixel.value_offset if pixel is not None else -1


def _decode(path: str, frames=None, backend=None) -> np.ndarray:
    fmt = _format(path)
    n = fmt.frames if frames is None else len(frames)
    out = np.empty((n, *fmt.frame_shape), fmt.stored_dtype)
    out.reshape(-1).view(np.uint8).fill(0xA5)  # garbage: every value must be written
    decode_into(path, fmt, out, _offset(path), frames, backend=backend)
    return out


def _assert_same(out: np.ndarray, ref: np.ndarray, frames: int) -> None:
    expected_shape = out.shape[1:] if frames == 1 else out.shape
    assert ref.shape == expected_shape
    assert out.dtype == ref.dtype.newbyteorder("=")
    np.testing.assert_array_equal(out, ref.reshape(out.shape))


@pytest.mark.parametrize("name", list(FILES))
def test_matches_pydicom(name):
    path = FILES[name]
    ref = _reference(path)
    fmt = _format(path)
    out = _decode(path)
    _assert_same(out, ref, fmt.frames)
    if fmt.frames > 1 and ref.shape[0] == fmt.frames:  # a subset, out of order
        frames = [fmt.frames - 1, 0] if fmt.frames > 2 else [1]
        np.testing.assert_array_equal(_decode(path, frames=frames), ref[frames])


def _backend_cases() -> list:
    cases = []
    for name, path in FILES.items():
        syntax = _header(path).transfer_syntax
        if syntax in (IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE):
            cases.append(pytest.param(name, "raw", id=f"{name}-raw"))
        elif syntax in IMAGECODECS_FUNCTIONS:
            cases.append(pytest.param(name, "imagecodecs", id=f"{name}-imagecodecs", marks=needs_imagecodecs))
    return cases


@pytest.mark.parametrize(("name", "backend"), _backend_cases())
def test_backends_agree(name, backend):
    """The fast backend, forced (no silent fallback), gives exactly pydicom's backend output."""
    path = FILES[name]
    ref = _reference(path)
    fmt = _format(path)
    if backend == "imagecodecs" and fmt.samples_per_pixel > 1:
        assert decoder_for(fmt.transfer_syntax, fmt.samples_per_pixel) == "pydicom"
        pytest.skip("imagecodecs backend decodes one-sample images only; colour goes through pydicom")
    fast = _decode(path, backend=backend)
    slow = _decode(path, backend="pydicom")
    np.testing.assert_array_equal(fast, slow)
    _assert_same(fast, ref, fmt.frames)
    if fmt.frames > 1:
        frames = [fmt.frames - 1, 0]
        np.testing.assert_array_equal(_decode(path, frames, backend), _decode(path, frames, "pydicom"))


def test_decoder_choice():
    assert decoder_for(EXPLICIT_LE) == "raw"
    assert decoder_for(IMPLICIT_LE) == "raw"
    assert decoder_for(EXPLICIT_BE) == "raw"
    assert decoder_for("1.2.840.10008.1.2.1.99") == "pydicom"
    assert decoder_for("1.2.840.10008.1.2.4.50") == "pydicom"  # lossy JPEG: libjpeg-turbo differs from libjpeg
    assert decoder_for("1.2.840.10008.1.2.4.90") == "pydicom"
    expected = "imagecodecs" if HAS_IMAGECODECS else "pydicom"
    for syntax in (JPEG_LOSSLESS, JPEG_LOSSLESS_SV1, JPEGLS_LOSSLESS, RLE_LOSSLESS):
        assert decoder_for(syntax) == expected
        assert decoder_for(syntax, samples_per_pixel=3) == "pydicom"
    with pytest.raises(InputError, match=r"1\.2\.840\.10008\.1\.2\.4\.100"):
        decoder_for("1.2.840.10008.1.2.4.100")
    table = available_decoders()
    assert table["1.2.840.10008.1.2.1 (Explicit VR Little Endian)"].startswith("raw")


# ----------------------------------------------------------------------------------------------------------
# synthetic files
# ----------------------------------------------------------------------------------------------------------
def _dataset(syntax: str, rows: int, columns: int, frames: int, bits_allocated: int, bits_stored: int,
             signed: bool, samples: int = 1, photometric: str = "MONOCHROME2") -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rows, columns
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    return ds


def _save(ds: Dataset, path: Path) -> str:
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    ds.save_as(path, implicit_vr=syntax.is_implicit_VR if not syntax.is_encapsulated else False,
               little_endian=syntax.is_little_endian if not syntax.is_encapsulated else True,
               enforce_file_format=True)
    return str(path)


def _native_file(tmp_path: Path, name: str, syntax: str, stored: np.ndarray, bits_stored: int,
                 signed: bool) -> str:
    """Write ``stored`` (frames, rows, columns) uncompressed, high bits as given (may hold garbage)."""
    frames, rows, columns = stored.shape
    ds = _dataset(syntax, rows, columns, frames, stored.dtype.itemsize * 8, bits_stored, signed)
    order = ">" if syntax == EXPLICIT_BE else "<"
    ds.PixelData = stored.astype(stored.dtype.newbyteorder(order)).tobytes()
    ds["PixelData"].VR = "OB" if stored.dtype.itemsize == 1 else "OW"
    return _save(ds, tmp_path / name)


@pytest.mark.parametrize("syntax", [EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE], ids=["LE", "implicitLE", "BE"])
@pytest.mark.parametrize(("dtype", "bits_stored"), [("u1", 6), ("i1", 5), ("u2", 12), ("i2", 12), ("i2", 14),
                                                     ("u4", 20), ("i4", 24)])
def test_native_unused_bits_match_pydicom(tmp_path, syntax, dtype, bits_stored):
    """Garbage in the unused high bits: masked (unsigned) or sign-extended (signed) exactly as pydicom does."""
    rng = np.random.default_rng(bits_stored)
    info = np.iinfo(dtype)
    stored = rng.integers(info.min, info.max, (3, 7, 9), dtype=dtype, endpoint=True)
    path = _native_file(tmp_path, "garbage.dcm", syntax, stored, bits_stored, dtype.startswith("i"))
    ref = _reference(path)
    out = _decode(path)
    _assert_same(out, ref, 3)
    np.testing.assert_array_equal(_decode(path, frames=[2, 1]), ref[[2, 1]])


def test_big_endian_8bit_ow_odd_frames(tmp_path):
    """8-bit data in OW, big endian, odd frame length: pydicom swaps byte pairs across frame boundaries."""
    stored = np.arange(3 * 3 * 3, dtype=np.uint8).reshape(3, 3, 3)
    ds = _dataset(EXPLICIT_BE, 3, 3, 3, 8, 8, False)
    ds.PixelData = stored.tobytes() + b"\0"
    ds["PixelData"].VR = "OW"
    path = _save(ds, tmp_path / "be_ow.dcm")
    ref = _reference(path)
    _assert_same(_decode(path), ref, 3)
    for frames in ([1], [2, 0], [1, 2]):
        np.testing.assert_array_equal(_decode(path, frames=frames), ref[frames])


def _jpeg_lossless_file(tmp_path: Path, predictor: int, signed: bool) -> tuple[str, np.ndarray]:
    rng = np.random.default_rng(predictor)
    y, x = np.mgrid[:40, :56]
    values = (300 * np.sin(x / 7.0) * np.cos(y / 5.0) + rng.normal(0, 20, (40, 56))).astype(np.int64)
    if not signed:
        values += 1000
    stored = (values & 0xFFF).astype(np.uint16)  # 12-bit two's complement patterns when signed
    frames = [imagecodecs.jpeg8_encode(np.roll(stored, k, axis=1), lossless=True, predictor=predictor,
                                       bitspersample=12) for k in range(2)]
    syntax = JPEG_LOSSLESS_SV1 if predictor == 1 else JPEG_LOSSLESS
    ds = _dataset(syntax, 40, 56, 2, 16, 12, signed)
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return _save(ds, tmp_path / f"ljpeg_p{predictor}_{int(signed)}.dcm"), values


@needs_imagecodecs
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("predictor", range(1, 8))
def test_jpeg_lossless_predictors(tmp_path, predictor, signed):
    path, values = _jpeg_lossless_file(tmp_path, predictor, signed)
    ref = _reference(path)
    for backend in ("imagecodecs", "pydicom"):
        out = _decode(path, backend=backend)
        _assert_same(out, ref, 2)
    np.testing.assert_array_equal(out[0], values)  # the signed 12-bit values come back sign-extended
    np.testing.assert_array_equal(_decode(path, frames=[1], backend="imagecodecs"), ref[[1]])


@needs_imagecodecs
@pytest.mark.parametrize(("dtype", "bits_stored", "signed"), [("u1", 8, False), ("u2", 12, False),
                                                                ("u2", 16, True), ("u2", 12, True)])
def test_jpegls_synthetic(tmp_path, dtype, bits_stored, signed):
    rng = np.random.default_rng(bits_stored)
    stored = rng.integers(0, 1 << bits_stored, (2, 30, 20), dtype=dtype)
    ds = _dataset(JPEGLS_LOSSLESS, 30, 20, 2, np.dtype(dtype).itemsize * 8, bits_stored, signed)
    ds.PixelData = encapsulate([imagecodecs.jpegls_encode(frame) for frame in stored])
    ds["PixelData"].VR = "OB"
    path = _save(ds, tmp_path / "jls.dcm")
    ref = _reference(path)
    for backend in ("imagecodecs", "pydicom"):
        _assert_same(_decode(path, backend=backend), ref, 2)


@pytest.mark.parametrize(("dtype", "bits_stored"), [("u2", 12), ("i2", 12), ("i4", 20), ("u1", 7)])
def test_rle_unused_bits(tmp_path, dtype, bits_stored):
    """RLE with garbage in the unused high bits, both backends (pylibjpeg-rle's encoder makes the file)."""
    from rle.utils import encode_pixel_data

    rng = np.random.default_rng(7)
    info = np.iinfo(dtype)
    stored = rng.integers(info.min, info.max, (2, 16, 24), dtype=dtype, endpoint=True)
    bits = np.dtype(dtype).itemsize * 8
    ds = _dataset(RLE_LOSSLESS, 16, 24, 2, bits, bits_stored, dtype.startswith("i"))
    ds.PixelData = encapsulate([encode_pixel_data(frame.tobytes(), rows=16, columns=24, samples_per_pixel=1,
                                                  bits_allocated=bits, byteorder="<") for frame in stored])
    ds["PixelData"].VR = "OB"
    path = _save(ds, tmp_path / "rle.dcm")
    ref = _reference(path)
    backends = ["imagecodecs", "pydicom"] if HAS_IMAGECODECS else ["pydicom"]
    for backend in backends:
        _assert_same(_decode(path, backend=backend), ref, 2)


@needs_imagecodecs
def test_extended_offset_table(tmp_path):
    """Frames found through the Extended Offset Table, all and a subset, both backends."""
    from pydicom.encaps import encapsulate_extended

    rng = np.random.default_rng(3)
    stored = rng.integers(0, 4096, (3, 20, 30), dtype=np.uint16)
    ds = _dataset(JPEG_LOSSLESS_SV1, 20, 30, 3, 16, 12, False)
    data, offsets, lengths = encapsulate_extended(
        [imagecodecs.jpeg8_encode(frame, lossless=True, predictor=1, bitspersample=12) for frame in stored])
    ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = data, offsets, lengths
    ds["PixelData"].VR = "OB"
    path = _save(ds, tmp_path / "eot.dcm")
    assert _format(path).has_extended_offsets
    ref = _reference(path)
    for backend in ("imagecodecs", "pydicom"):
        _assert_same(_decode(path, backend=backend), ref, 3)
        np.testing.assert_array_equal(_decode(path, frames=[2, 1], backend=backend), ref[[2, 1]])
    np.testing.assert_array_equal(ref, stored)


def test_deflated_multiframe(tmp_path):
    stored = np.arange(3 * 10 * 12, dtype=np.int16).reshape(3, 10, 12) * 37 - 500
    ds = _dataset("1.2.840.10008.1.2.1.99", 10, 12, 3, 16, 16, True)
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"
    path = str(tmp_path / "deflated.dcm")
    ds.save_as(path, enforce_file_format=True)
    header = read_header(path)
    assert header.transfer_syntax == "1.2.840.10008.1.2.1.99"
    fmt = PixelFormat.from_row(header.row, header.transfer_syntax, path)
    ref = _reference(path)
    out = np.zeros((3, 10, 12), np.int16)
    decode_into(path, fmt, out)
    _assert_same(out, ref, 3)
    np.testing.assert_array_equal(out, stored)
    part = np.zeros((2, 10, 12), np.int16)
    decode_into(path, fmt, part, frames=[2, 0])
    np.testing.assert_array_equal(part, stored[[2, 0]])


def test_decode_into_slab_view(tmp_path):
    """Frames land in a view of a bigger slab; the rest of the slab is untouched."""
    stored = np.arange(4 * 6 * 5, dtype=np.int16).reshape(4, 6, 5) - 50
    path = _native_file(tmp_path, "slab.dcm", EXPLICIT_LE, stored, 16, True)
    fmt = _format(path)
    slab = np.full((8, 6, 5), 7, np.int16)
    decode_into(path, fmt, slab[2:6], _offset(path))
    np.testing.assert_array_equal(slab[2:6], stored)
    assert (slab[:2] == 7).all() and (slab[6:] == 7).all()
    decode_into(path, fmt, slab[6:8], -1, frames=[3, 1])  # offset found from the header
    np.testing.assert_array_equal(slab[6:8], stored[[3, 1]])


def test_out_is_checked(tmp_path):
    stored = np.zeros((2, 4, 4), np.uint16)
    path = _native_file(tmp_path, "small.dcm", EXPLICIT_LE, stored, 12, False)
    fmt = _format(path)
    with pytest.raises(InputError, match="shape"):
        decode_into(path, fmt, np.zeros((1, 4, 4), np.uint16))
    with pytest.raises(InputError, match="dtype"):
        decode_into(path, fmt, np.zeros((2, 4, 4), np.int16))
    with pytest.raises(InputError, match="out of range"):
        decode_into(path, fmt, np.zeros((1, 4, 4), np.uint16), frames=[2])


# ----------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------
def test_truncated_uncompressed_raises(tmp_path):
    stored = np.arange(3 * 32 * 32, dtype=np.uint16).reshape(3, 32, 32)
    good = _native_file(tmp_path, "full.dcm", EXPLICIT_LE, stored, 16, False)
    data = Path(good).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 1000])
    header = read_header(str(cut))
    fmt = PixelFormat.from_row(header.row, header.transfer_syntax, str(cut))
    out = np.zeros((3, 32, 32), np.uint16)
    with pytest.raises(DicomReadError, match="truncated") as info:
        decode_into(str(cut), fmt, out, header.pixel.value_offset)
    assert info.value.path == str(cut) and str(cut) in str(info.value)
    # like pydicom, a file whose pixel data is cut short is refused even for the frames it still holds
    part = np.zeros((2, 32, 32), np.uint16)
    with pytest.raises(DicomReadError, match="truncated"):
        decode_into(str(cut), fmt, part, header.pixel.value_offset, frames=[0, 1])


def test_wrong_offset_raises(tmp_path):
    stored = np.zeros((1, 4, 4), np.uint16)
    path = _native_file(tmp_path, "offset.dcm", EXPLICIT_LE, stored, 16, False)
    fmt = _format(path)
    with pytest.raises(DicomReadError, match="Pixel Data element header"):
        decode_into(path, fmt, np.zeros((1, 4, 4), np.uint16), _offset(path) - 2)


def test_unsupported_syntax_raises(tmp_path):
    uid = "1.2.840.10008.1.2.4.100"  # MPEG2 Main Profile / Main Level
    ds = _dataset(uid, 8, 8, 1, 8, 8, False)
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    path = _save(ds, tmp_path / "mpeg.dcm")
    header = read_header(path)
    fmt = PixelFormat.from_row(header.row, header.transfer_syntax, path)
    with pytest.raises(DicomReadError, match=r"unsupported transfer syntax 1\.2\.840\.10008\.1\.2\.4\.100 "
                                             r"\(MPEG2") as info:
        decode_into(path, fmt, np.zeros((1, 8, 8), np.uint8), header.pixel.value_offset)
    assert info.value.path == path


@needs_imagecodecs
def test_corrupt_compressed_raises(tmp_path):
    """A broken codestream: imagecodecs declines, pydicom fails too -> DicomReadError (never garbage)."""
    path, _ = _jpeg_lossless_file(tmp_path, 1, False)
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + bytes(200), b"\xff\xd8" + bytes(50)])
    broken = _save(ds, tmp_path / "broken.dcm")
    fmt = _format(broken)
    with pytest.raises(DicomReadError, match="cannot decode pixel data"):
        decode_into(broken, fmt, np.zeros((2, 40, 56), np.uint16), _offset(broken))


def test_missing_tags_raise():
    with pytest.raises(DicomReadError, match="Rows"):
        PixelFormat.from_row({"Samples per Pixel (0028, 0002)": "1",
                              "Photometric Interpretation (0028, 0004)": "MONOCHROME2"}, EXPLICIT_LE, "x.dcm")


def test_files_pydicom_cannot_decode_raise():
    """Where pydicom fails (truncated, missing tags, broken codestreams), decode_into raises DicomReadError."""
    failing = []
    for name, path in FILES.items():
        if path not in _REFERENCE_ERRORS and path not in _REFERENCE_OK:
            _reference_or_error(path)
        if path in _REFERENCE_ERRORS:
            failing.append(name)
            with pytest.raises(DicomReadError) as info:
                header = _header(path)
                fmt = PixelFormat.from_row(header.row, header.transfer_syntax, path)
                decode_into(path, fmt, np.zeros((fmt.frames, *fmt.frame_shape), fmt.stored_dtype), _offset(path))
            assert info.value.path == path
    assert failing, "expected some test files pydicom cannot decode"
