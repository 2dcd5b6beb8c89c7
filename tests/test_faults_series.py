"""Per-series `convert` under bad input: duplicate SOPInstanceUIDs, frames too big to decode, invalid geometry
and rescale values, truncated compressed pixel data, files without the DICOM preamble.

Every malformed input is built here from pydicom's test files or synthetic series; every expectation comes from
the bytes written or from pydicom's own reading, never from voxelpipe's output.
"""
from __future__ import annotations

import csv
import os
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import RLELossless, generate_uid

import voxelpipe
from voxelpipe.core.types import Status
from voxelpipe.testing.synthetic import ROOT_UID, SeriesSpec, write_series

PEAK_RSS_LIMIT_KIB = 500 * 1024  # 500 MB


def _convert(folder, out, **options) -> list[dict]:
    return voxelpipe.convert([str(folder)], out=str(out), workers=1, progress=False, **options)


def _only_row(rows: list[dict]) -> dict:
    assert len(rows) == 1, rows
    return rows[0]


def _resave(path: str, edit, target: str | None = None) -> str:
    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(target or path, enforce_file_format=True)
    return target or path


def _small_series(folder, n_slices: int = 3, **tags) -> list[str]:
    return write_series(folder, SeriesSpec(n_slices=n_slices, rows=16, columns=16), tags=tags or None)


def _read_volume(row: dict) -> np.ndarray:
    return voxelpipe.open_volume(row["path"]).array[...]


# --- A: duplicate SOPInstanceUID ------------------------------------------------------------------------------


def _mr_small_primary(path: str) -> str:
    """MR_small.dcm saved as an ORIGINAL\\PRIMARY image (a plain one-slice series)."""
    def edit(ds):
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    return _resave(get_testdata_file("MR_small.dcm"), edit, path)


def test_duplicate_uid_with_different_pixels_fails_the_series_naming_both_files(tmp_path):
    """Two files with one SOPInstanceUID but different pixel data fail the series; the reason names the UID and
    both files (no copy is kept silently)."""
    folder = tmp_path / "d" / "s"
    folder.mkdir(parents=True)
    b = _mr_small_primary(str(folder / "B.dcm"))

    def plus_seven(ds):
        ds.PixelData = (ds.pixel_array + 7).astype(ds.pixel_array.dtype).tobytes()
    a = _resave(b, plus_seven, str(folder / "A.dcm"))
    uid = pydicom.dcmread(b).SOPInstanceUID
    assert pydicom.dcmread(a).SOPInstanceUID == uid
    row = _only_row(_convert(tmp_path / "d", tmp_path / "out"))
    assert row["status"] == Status.FAILED
    assert uid in row["reason"] and a in row["reason"] and b in row["reason"]
    assert "SOPInstanceUID" in row["reason"]
    assert not os.path.exists(row["path"])


def test_duplicate_uid_recipe_with_pydicom_mr_small_fails_not_skipped(tmp_path):
    """The recipe as reported: pydicom's MR_small.dcm (DERIVED\\SECONDARY, one position) copied to B.dcm and a
    copy with pixel_array + 7 saved as A.dcm. Two copies of one image are not a stack of screen captures: the
    series fails naming the UID and both files instead of being skipped or converted from one of them."""
    folder = tmp_path / "d" / "s"
    folder.mkdir(parents=True)
    source = get_testdata_file("MR_small.dcm")
    b = str(folder / "B.dcm")
    shutil.copy(source, b)
    ds = pydicom.dcmread(source)
    ds.PixelData = (ds.pixel_array + 7).astype(ds.pixel_array.dtype).tobytes()
    a = str(folder / "A.dcm")
    ds.save_as(a)
    row = _only_row(_convert(tmp_path / "d", tmp_path / "out"))
    assert row["status"] == Status.FAILED, row
    assert ds.SOPInstanceUID in row["reason"] and a in row["reason"] and b in row["reason"]


def test_exact_duplicate_files_are_dropped_and_counted(tmp_path):
    """A byte-identical copy of a file (same SOPInstanceUID, same pixel data) is dropped; the volume equals the
    series without it and the summary reason counts the dropped copy."""
    paths = _small_series(tmp_path / "d" / "s", 3)
    shutil.copy(paths[1], tmp_path / "d" / "s" / "copy_of_IM0002.dcm")
    row = _only_row(_convert(tmp_path / "d", tmp_path / "out"))
    assert row["status"] == Status.DONE, row["reason"]
    assert "1 exact duplicate" in row["reason"]
    volume = _read_volume(row)
    expected = np.stack([apply_modality_lut(pydicom.dcmread(p).pixel_array, pydicom.dcmread(p)) for p in paths])
    assert volume.shape == (3, 16, 16)
    np.testing.assert_array_equal(volume, expected)


# --- B: frames too big to decode ------------------------------------------------------------------------------


PEAK_WRAPPER = ("import resource, subprocess, sys\n"
                "done = subprocess.run([sys.executable, *sys.argv[1:]], capture_output=True, text=True)\n"
                "print(done.stdout + done.stderr)\n"
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
                "sys.exit(0 if done.returncode in (0, 1) else done.returncode)\n")


def _peak(*args: str) -> tuple[int, str]:
    """Run ``python ARGS`` as the only child of a fresh wrapper process: its peak RSS (KiB) and its output."""
    done = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    return int(lines[-1]), "\n".join(lines[:-1])


def _peak_convert(folder, out, *options: str) -> tuple[int, list[dict]]:
    """Run ``python -m voxelpipe convert`` in a child process; its peak RSS (KiB) and the summary rows."""
    peak, _ = _peak("-m", "voxelpipe", "convert", str(folder), "--out", str(out), "--workers", "1", *options)
    with open(os.path.join(out, "summary_run.csv"), newline="") as fh:
        return peak, list(csv.DictReader(fh))


def _rle_claiming(path: str, rows: int, columns: int) -> str:
    """A small RLE file (synthetic slice compressed by pydicom) whose header claims ``rows`` x ``columns``."""
    folder = os.path.dirname(path)
    source = _small_series(os.path.join(folder, "src"), 1)[0]
    ds = pydicom.dcmread(source)
    ds.compress(RLELossless)
    ds.Rows, ds.Columns = rows, columns
    ds.save_as(path, enforce_file_format=True)
    shutil.rmtree(os.path.join(folder, "src"))
    return path


def test_rle_frame_claiming_65535_squared_is_refused_before_decoding(tmp_path):
    """An RLE file of a few KB claiming Rows=Columns=65535 fails its series with a reason naming the file, the
    tags, the values and the --max-frame-bytes limit, and convert's peak memory stays under 500 MB."""
    (tmp_path / "d").mkdir()
    path = _rle_claiming(str(tmp_path / "d" / "big.dcm"), 65535, 65535)
    assert os.path.getsize(path) < 100_000
    peak, rows = _peak_convert(tmp_path / "d", tmp_path / "out")
    row = _only_row(rows)
    assert row["status"] == "failed"
    reason = row["reason"]
    assert path in reason and "Rows" in reason and "Columns" in reason and "65535" in reason
    assert "--max-frame-bytes" in reason and str(65535 * 65535 * 2) in reason
    assert peak < PEAK_RSS_LIMIT_KIB, f"peak RSS {peak} KiB"


def test_encapsulated_file_claiming_a_billion_frames_is_refused_by_its_header(tmp_path):
    """An RLE file claiming NumberOfFrames 10**9 (more frames than its encapsulated data has room for items) is
    refused when its header is read, naming the tag and the value, before a record of a billion frames is built."""
    (tmp_path / "d").mkdir()
    path = _rle_claiming(str(tmp_path / "d" / "frames.dcm"), 16, 16)

    def many_frames(ds):
        ds.NumberOfFrames = 10 ** 9
    _resave(path, many_frames)
    rows = _convert(tmp_path / "d", tmp_path / "out")
    assert all(row["status"] != Status.DONE for row in rows)
    with open(tmp_path / "out" / "manifest" / "unreadable_files.csv", newline="") as fh:
        entries = {entry["path"]: entry["reason"] for entry in csv.DictReader(fh)}
    assert "NumberOfFrames (0028,0008)" in entries[path] and str(10 ** 9) in entries[path]


def test_max_frame_bytes_option_sets_the_limit(tmp_path):
    """--max-frame-bytes below a series' frame size fails it with the limit in the reason; at the frame size it
    converts."""
    _small_series(tmp_path / "d" / "s", 2)  # 16 x 16 x 16 bits = 512 bytes per frame
    row = _only_row(_convert(tmp_path / "d", tmp_path / "o1", max_frame_bytes=511))
    assert row["status"] == Status.FAILED and "511" in row["reason"] and "512" in row["reason"]
    row = _only_row(_convert(tmp_path / "d", tmp_path / "o2", max_frame_bytes=512))
    assert row["status"] == Status.DONE, row["reason"]


def _write_deflated_zeros(path: str, rows: int, columns: int) -> int:
    """A Deflated Explicit VR Little Endian file whose one 16-bit frame of zeros is ``rows`` x ``columns``,
    deflated as a stream (never held whole in memory). Returns the pixel data length."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid(ROOT_UID)
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    meta.ImplementationClassUID = generate_uid(ROOT_UID)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.StudyInstanceUID = generate_uid(ROOT_UID)
    ds.SeriesInstanceUID = generate_uid(ROOT_UID)
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    # the dataset body (explicit VR LE), then the Pixel Data element written by hand
    body = pydicom.filebase.DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(body, ds)
    length = rows * columns * 2
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length)
    head = pydicom.filebase.DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    pydicom.filewriter.write_file_meta_info(head, meta, enforce_standard=True)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    with open(path, "wb") as fp:
        fp.write(b"\0" * 128 + b"DICM" + head.getvalue())
        fp.write(deflater.compress(body.getvalue() + pixel_header))
        left = length
        while left:
            n = min(left, len(zeros))
            fp.write(deflater.compress(zeros[:n]))
            left -= n
        fp.write(deflater.flush())
    return length


@pytest.mark.slow
def test_deflated_gigabyte_of_zeros_is_refused_within_bounded_memory(tmp_path):
    """A deflated file (1.2.840.10008.1.2.1.99) of 1 GiB of zero pixels fails its series with the frame-size
    reason and convert's peak memory stays under 500 MB."""
    (tmp_path / "d").mkdir()
    path = str(tmp_path / "d" / "deflated.dcm")
    length = _write_deflated_zeros(path, 32768, 16384)
    assert length == 1 << 30 and os.path.getsize(path) < 4 << 20
    peak, rows = _peak_convert(tmp_path / "d", tmp_path / "out")
    row = _only_row(rows)
    assert row["status"] == "failed"
    assert path in row["reason"] and "--max-frame-bytes" in row["reason"] and str(length) in row["reason"]
    assert peak < PEAK_RSS_LIMIT_KIB, f"peak RSS {peak} KiB"


DECODE_SCRIPT = """
import sys
import numpy as np
from voxelpipe.core.errors import DicomReadError
from voxelpipe.dicom.pixels import DEFLATED_LE, PixelFormat, decode_into
fmt = PixelFormat(16, 16, 1, 1, 16, 16, 15, 0, "MONOCHROME2", 0, DEFLATED_LE)
try:
    decode_into(sys.argv[1], fmt, np.empty((1, 16, 16), np.uint16))
except DicomReadError as exc:
    print(exc)
"""


@pytest.mark.slow
def test_deflated_decoding_inflates_no_more_than_the_declared_pixel_data(tmp_path):
    """Decoding a deflated file whose data inflates far beyond its declared frames (a 16 x 16 frame, 1 GiB of
    data) stops inflating past the declared pixel data plus a header allowance: the file is refused with the
    reason and the decoder's peak memory stays under 500 MB."""
    path = str(tmp_path / "deflated.dcm")
    _write_deflated_zeros(path, 32768, 16384)
    peak, output = _peak("-c", DECODE_SCRIPT, path)
    assert path in output and "inflates to more than" in output
    assert peak < PEAK_RSS_LIMIT_KIB, f"peak RSS {peak} KiB"


def test_deflated_file_converts_with_its_pixels(tmp_path):
    """A small deflated file converts to the voxels pydicom reads from it (the bounded inflate loses nothing)."""
    (tmp_path / "d").mkdir()
    path = str(tmp_path / "d" / "deflated.dcm")
    source = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    source.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    source.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    source.save_as(path, enforce_file_format=True)
    row = _only_row(_convert(tmp_path / "d", tmp_path / "out"))
    assert row["status"] == Status.DONE, row["reason"]
    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(_read_volume(row)[0], apply_modality_lut(ds.pixel_array, ds))


# --- C: invalid geometry and rescale --------------------------------------------------------------------------


def _edit_all(paths: list[str], edit) -> None:
    for path in paths:
        _resave(path, edit)


def _failed_reason(tmp_path, edit, which: slice = slice(None)) -> str:
    """Convert a 3-slice series with ``edit`` applied to ``paths[which]``; every row must fail (a NaN
    orientation may split the series into parts at scan time): the first row's reason."""
    paths = _small_series(tmp_path / "d" / "s", 3)
    _edit_all(paths[which], edit)
    rows = _convert(tmp_path / "d", tmp_path / "out")
    assert rows
    for row in rows:
        assert row["status"] == Status.FAILED, row
        assert not os.path.exists(row["path"])
    return rows[0]["reason"]


def _names_value(value: str, reason: str) -> bool:
    """The reason shows ``value`` as written or as a number (1e300 may read 1e+300)."""
    return value in reason or f"{float(value):g}" in reason


@pytest.mark.parametrize("value", ["nan", "inf", "1e300"])
def test_pixel_spacing_not_finite_or_absurd_fails_naming_tag_and_value(tmp_path, value):
    """PixelSpacing NaN, inf or 1e300 fails the series; the reason names PixelSpacing (0028,0030) and the value."""
    def edit(ds):
        ds["PixelSpacing"] = pydicom.DataElement(0x00280030, "DS", f"{value}\\{value}", validation_mode=0)
    reason = _failed_reason(tmp_path, edit)
    assert "PixelSpacing (0028,0030)" in reason and _names_value(value, reason)


@pytest.mark.parametrize("value", ["nan\\0\\0\\0\\1\\0", "1\\0\\0\\1\\0\\0", "1\\0\\0\\0.2\\0.9797959\\0"])
def test_orientation_nan_parallel_or_skewed_fails_naming_tag_and_value(tmp_path, value):
    """ImageOrientationPatient with NaN, parallel row/column vectors or vectors far from orthogonal fails the
    series (no fake 4-D volume); the reason names ImageOrientationPatient (0020,0037) and the value."""
    def edit(ds):
        ds["ImageOrientationPatient"] = pydicom.DataElement(0x00200037, "DS", value, validation_mode=0)
    reason = _failed_reason(tmp_path, edit)
    assert "ImageOrientationPatient (0020,0037)" in reason
    assert value.split("\\")[0] in reason and value.split("\\")[3] in reason


@pytest.mark.parametrize("value", ["nan", "inf", "1e300"])
def test_position_not_finite_or_absurd_fails_naming_tag_and_value(tmp_path, value):
    """ImagePositionPatient NaN, inf or 1e300 in one file fails the series; the reason names
    ImagePositionPatient (0020,0032), the value and the file (not 'different numbers of images')."""
    def edit(ds):
        ds["ImagePositionPatient"] = pydicom.DataElement(0x00200032, "DS", f"0\\0\\{value}", validation_mode=0)
    reason = _failed_reason(tmp_path, edit, slice(1, 2))
    assert "ImagePositionPatient (0020,0032)" in reason and _names_value(value, reason)
    assert "IM0002.dcm" in reason
    assert "different numbers" not in reason


@pytest.mark.parametrize("tag, value", [("RescaleSlope", "1e308"), ("RescaleSlope", "inf"),
                                        ("RescaleIntercept", "nan"), ("RescaleSlope", "1e35")])
def test_rescale_not_finite_or_overflowing_float32_fails_naming_tag_and_value(tmp_path, tag, value):
    """RescaleSlope / RescaleIntercept that are not finite, or that overflow float32 for the stored value range,
    fail the series (no inf voxels verified 'ok'); the reason names the tag and the value."""
    number = {"RescaleSlope": 0x00281053, "RescaleIntercept": 0x00281052}[tag]

    def edit(ds):
        ds[tag] = pydicom.DataElement(number, "DS", value, validation_mode=0)
    reason = _failed_reason(tmp_path, edit)
    assert tag in reason and _names_value(value, reason)


def test_slightly_off_orientation_of_real_scanners_still_converts(tmp_path):
    """Direction cosines a scanner rounds to 6 decimals (dot product about 1e-6) still convert."""
    def edit(ds):
        ds.ImageOrientationPatient = ["0.999999", "0.001", "0", "-0.001", "0.999999", "0.000001"]
    paths = _small_series(tmp_path / "d" / "s", 3)
    _edit_all(paths, edit)
    row = _only_row(_convert(tmp_path / "d", tmp_path / "out"))
    assert row["status"] == Status.DONE, row["reason"]


# --- D: truncated encapsulated pixel data ---------------------------------------------------------------------


def _cut_encapsulated_in_half(path: str) -> tuple[int, int]:
    """Cut the encapsulated Pixel Data of ``path`` in half; (bytes kept, bytes it had) of the value."""
    with open(path, "rb") as fp:  # pydicom stops at the Pixel Data element: its value starts 12 bytes on
        pydicom.dcmread(fp, stop_before_pixels=True)
        start = fp.tell() + 12
        fp.seek(0)
        data = fp.read()
    assert data[start - 4:start] == b"\xff\xff\xff\xff"  # undefined length: encapsulated
    total = len(data) - start
    kept = total // 2
    with open(path, "wb") as fp:
        fp.write(data[:start + kept])
    return kept, total


def _assert_truncated_row(row: dict, path: str, kept: int) -> None:
    assert row["status"] == Status.FAILED, row
    assert row["reason"].startswith(f"{path}: truncated pixel data: ")
    assert f"holds {kept} bytes" in row["reason"]
    assert "AttributeError" not in row["reason"]


def test_rle_pixel_data_cut_in_half_fails_as_truncated(tmp_path):
    """RLE pixel data cut in half fails its series with 'truncated pixel data' naming the file and the bytes of
    encapsulated data present."""
    paths = _small_series(tmp_path / "d" / "s", 3)

    def rle(ds):
        ds.compress(RLELossless)
    _edit_all(paths, rle)
    kept, _ = _cut_encapsulated_in_half(paths[1])
    _assert_truncated_row(_only_row(_convert(tmp_path / "d", tmp_path / "out")), paths[1], kept)


def test_jpeg2000_pixel_data_cut_in_half_fails_as_truncated(tmp_path):
    """JPEG 2000 pixel data cut in half fails its series with 'truncated pixel data' naming the file and the
    bytes of encapsulated data present."""
    (tmp_path / "d").mkdir()
    path = str(tmp_path / "d" / "jp2k.dcm")
    shutil.copy(get_testdata_file("MR_small_jp2klossless.dcm"), path)
    kept, _ = _cut_encapsulated_in_half(path)
    _assert_truncated_row(_only_row(_convert(tmp_path / "d", tmp_path / "out")), path, kept)


# --- E: files without the preamble ----------------------------------------------------------------------------


def _without_preamble(source: str, target: str, keep_meta: bool) -> str:
    """``source`` rewritten with no 128-byte preamble and no 'DICM': starting with its group 0002 file meta
    (``keep_meta``), or directly with its dataset in implicit VR little endian (no file meta)."""
    ds = pydicom.dcmread(source)
    ds.preamble = None
    if keep_meta:
        ds.save_as(target, enforce_file_format=False)
    else:
        del ds.file_meta
        ds.save_as(target, enforce_file_format=False, implicit_vr=True, little_endian=True)
    with open(target, "rb") as fp:
        head = fp.read(132)
    assert head[128:132] != b"DICM" and head[:2] == (b"\x02\x00" if keep_meta else b"\x08\x00")
    return target


@pytest.mark.parametrize("keep_meta", [True, False], ids=["starts-with-0002", "starts-with-0008"])
def test_file_without_preamble_converts_like_the_same_file_with_one(tmp_path, keep_meta):
    """A DICOM file with no preamble and no 'DICM' marker (starting with group 0002, or with group 0008 and no
    file meta) converts to the voxels pydicom's force=True reading gives (apply_modality_lut)."""
    for name in ("with", "without"):
        (tmp_path / name).mkdir()
    source = _mr_small_primary(str(tmp_path / "with" / "MR.dcm"))
    target = _without_preamble(source, str(tmp_path / "without" / "MR.dcm"), keep_meta)
    reference = pydicom.dcmread(target, force=True)
    if not keep_meta:
        reference.file_meta = FileMetaDataset()
        reference.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    expected = apply_modality_lut(reference.pixel_array, reference)
    volumes = []
    for name in ("with", "without"):
        row = _only_row(_convert(tmp_path / name, tmp_path / f"out_{name}"))
        assert row["status"] == Status.DONE, row["reason"]
        volumes.append(_read_volume(row))
    np.testing.assert_array_equal(volumes[1][0], expected)
    np.testing.assert_array_equal(volumes[0], volumes[1])



