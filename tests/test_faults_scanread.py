"""Fault tests of the file-reading side of `scan`: headers of deflated files read without inflating the pixels,
truncated and corrupt files listed in unreadable_files.csv as `unreadable` with the offset and byte counts, and
folders or links that cannot be read given a row instead of vanishing.

Every malformed input is built here from bytes pydicom wrote; expectations come from pydicom's own reading of the
intact data (or from the bytes written), never from voxelpipe's output.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.filereader import data_element_generator
from pydicom.uid import DeflatedExplicitVRLittleEndian

from voxelpipe.dicom.files import read_header
from voxelpipe.pipelines.scan import scan
from voxelpipe.testing.synthetic import SeriesSpec, slice_dataset, write_series

PIXEL_TAG = b"\xe0\x7f\x10\x00"
NOBODY = 65534
ZERO_BLOCK = 1 << 24  # 16 MiB of zeros, deflated once and repeated


def _real(path) -> str:
    return os.path.realpath(path)


def _unreadable(result) -> dict[str, dict]:
    return {_real(r["path"]): r for r in result.unreadable}


def _meta_end(data: bytes) -> int:
    """End of the file meta group of a file pydicom wrote (preamble, DICM, then group 0002 with its length)."""
    assert data[128:132] == b"DICM"
    group, element, vr, length = struct.unpack_from("<HH2sH", data, 132)
    assert (group, element, vr) == (0x0002, 0x0000, b"UL") and length == 4
    return 132 + 12 + struct.unpack_from("<I", data, 140)[0]


# ----------------------------------------------------------------------------------------------------------
# A: deflated files at scan time
# ----------------------------------------------------------------------------------------------------------
def _deflated_header_only(rows: int, columns: int) -> bytes:
    """A CT slice header (no pixel data) as pydicom writes it in Deflated Explicit VR Little Endian."""
    ds = slice_dataset(SeriesSpec(n_slices=1, rows=rows, columns=columns), 0, 1)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _write_deflated(path: Path, pixel_bytes: int) -> pydicom.Dataset:
    """A CT slice in Deflated Explicit VR Little Endian whose PixelData holds ``pixel_bytes`` zero bytes.

    pydicom writes the header (meta and deflated dataset) without pixel data; the dataset is inflated back and
    deflated again as one stream with the PixelData element appended, the zeros deflated 16 MiB at a time (a full
    flush resets the compressor, so one deflated block of zeros is repeated). Returns pydicom's reading of the
    header-only file, the reference for the header fields."""
    header_only = _deflated_header_only(16384, pixel_bytes // (2 * 16384))
    meta_end = _meta_end(header_only)
    body = zlib.decompress(header_only[meta_end:], -15)
    assert PIXEL_TAG not in body
    pixel_element = PIXEL_TAG + b"OW\x00\x00" + struct.pack("<I", pixel_bytes)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = packer.compress(body + pixel_element) + packer.flush(zlib.Z_FULL_FLUSH)
    block = packer.compress(bytes(min(ZERO_BLOCK, pixel_bytes))) + packer.flush(zlib.Z_FULL_FLUSH)
    assert pixel_bytes % ZERO_BLOCK == 0 or pixel_bytes < ZERO_BLOCK
    with open(path, "wb") as fh:
        fh.write(header_only[:meta_end] + head)
        for _ in range(max(1, pixel_bytes // ZERO_BLOCK)):
            fh.write(block)
        fh.write(packer.flush())
    return pydicom.dcmread(io.BytesIO(header_only))


def _check_deflated_listing(out: Path, path: Path, reference: pydicom.Dataset, pixel_bytes: int) -> None:
    """The file is listed as a DICOM image of its series with pydicom's header values and its declared length."""
    with open(out / "unreadable_files.csv", newline="") as fh:
        assert not [r for r in csv.DictReader(fh) if _real(r["path"]) == _real(path)]
    with open(out / "series_files.csv", newline="") as fh:
        files = [r for r in csv.DictReader(fh) if _real(r["path"]) == _real(path)]
    assert len(files) == 1
    assert files[0]["transfer_syntax"] == DeflatedExplicitVRLittleEndian
    assert files[0]["sop_instance_uid"] == reference.SOPInstanceUID
    assert int(files[0]["pixel_length"]) == pixel_bytes
    with open(out / "series_all.csv", newline="") as fh:
        series = list(csv.DictReader(fh))
    assert [(s["series_instance_uid"], int(s["rows"]), int(s["columns"])) for s in series] == [
        (reference.SeriesInstanceUID, reference.Rows, reference.Columns)]
    with open(out / "metadata.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if _real(r["path"]) == _real(path)]
    assert len(rows) == 1
    row = rows[0]
    expected = {
        "Transfer Syntax UID (0002, 0010)": DeflatedExplicitVRLittleEndian,
        "Patient ID (0010, 0020)": reference.PatientID,
        "SOP Instance UID (0008, 0018)": reference.SOPInstanceUID,
        "Series Instance UID (0020, 000E)": reference.SeriesInstanceUID,
        "Rows (0028, 0010)": str(reference.Rows),
        "Columns (0028, 0011)": str(reference.Columns),
        "Image Position (Patient) (0020, 0032)": "\\".join(str(v) for v in reference.ImagePositionPatient),
        "Series Description (0008, 103E)": reference.SeriesDescription,
    }
    assert {k: row[k] for k in expected} == expected
    assert not any("Pixel Data" in column and row[column] for column in row)


def test_deflated_header_is_read_without_inflating_pixel_data(tmp_path):
    """Reading the header of a deflated file allocates a bounded amount, whatever its pixel data inflates to."""
    pixel_bytes = 32 << 20
    path = tmp_path / "in" / "deflated.dcm"
    path.parent.mkdir()
    reference = _write_deflated(path, pixel_bytes)
    assert path.stat().st_size < pixel_bytes // 100
    full = pydicom.dcmread(path)  # the builder makes a valid file: pydicom inflates it whole
    assert len(full.PixelData) == pixel_bytes and full.SOPInstanceUID == reference.SOPInstanceUID
    del full
    tracemalloc.start()
    try:
        header = read_header(str(path))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        dataset = header.dataset()  # pydicom's reading, for the paths that need a Dataset
        dataset_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"reading the header allocated {peak} bytes"
    assert dataset_peak < 8 << 20, f"reading the header as a Dataset allocated {dataset_peak} bytes"
    assert header.pixel is not None and header.pixel.value_length == pixel_bytes
    assert "PixelData" not in dataset
    assert [(e.tag, e.value) for e in dataset] == [(e.tag, e.value) for e in reference]
    assert dataset.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    out = tmp_path / "manifest"
    scan(tmp_path / "in", out=out, workers=1, progress=False)
    _check_deflated_listing(out, path, reference, pixel_bytes)


def test_deflated_file_cut_in_its_header_is_truncated(tmp_path):
    """A deflated file cut inside its compressed header is `unreadable` as truncated, at every cut tried."""
    data = _deflated_header_only(16, 16)
    meta_end = _meta_end(data)
    folder = tmp_path / "in"
    folder.mkdir()
    cuts = list(range(meta_end + 1, len(data), max(1, (len(data) - meta_end) // 20)))
    for end in cuts:
        (folder / f"cut_{end:06d}.dcm").write_bytes(data[:end])
    result = scan(folder, out=None, workers=1, progress=False)
    assert result.objects == [] and result.series == []
    unreadable = _unreadable(result)
    for end in cuts:
        row = unreadable[_real(folder / f"cut_{end:06d}.dcm")]
        assert row["kind"] == "unreadable" and "truncated" in row["reason"], (end, row)


def test_scan_of_a_deflated_gigabyte_stays_small(tmp_path):
    """`voxelpipe scan` of a ~1 MB deflated file whose pixel data inflates to 1 GiB peaks under 500 MB."""
    pixel_bytes = 1 << 30
    path = tmp_path / "in" / "bomb.dcm"
    path.parent.mkdir()
    reference = _write_deflated(path, pixel_bytes)
    assert path.stat().st_size < 8 << 20
    out = tmp_path / "manifest"
    # a fresh parent process, so that RUSAGE_CHILDREN holds the scan alone
    probe = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:])\n"
        "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    command = [sys.executable, "-c", probe, sys.executable, "-m", "voxelpipe", "scan", str(path.parent),
               "--out", str(out), "--workers", "1"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    code, peak_kib = map(int, done.stdout.split()[-2:])
    assert code == 0, done.stderr
    assert peak_kib < 500 * 1024, f"scan peaked at {peak_kib / 1024:.0f} MiB"
    _check_deflated_listing(out, path, reference, pixel_bytes)


# ----------------------------------------------------------------------------------------------------------
# B: truncated native pixel data
# ----------------------------------------------------------------------------------------------------------
def test_truncated_native_pixel_data_is_unreadable_with_byte_counts(tmp_path):
    """A file cut inside its uncompressed pixel data is `unreadable`, the reason naming it, the bytes declared and
    the bytes present."""
    paths = write_series(tmp_path / "in", SeriesSpec(n_slices=3, rows=16, columns=16, seed=3))
    data = Path(paths[1]).read_bytes()
    ds = pydicom.dcmread(paths[1])
    declared = len(ds.PixelData)
    assert declared == 16 * 16 * 2 and data.endswith(ds.PixelData)
    value_offset = len(data) - declared
    cut = data[: value_offset + declared // 3]
    Path(paths[1]).write_bytes(cut)
    present = len(cut) - value_offset
    result = scan(tmp_path / "in", out=tmp_path / "manifest", workers=1, progress=False)
    row = _unreadable(result)[_real(paths[1])]
    assert row["kind"] == "unreadable", row
    reason = row["reason"]
    assert "truncated" in reason and paths[1] in reason, reason
    assert f"{declared} bytes" in reason and f"{present} " in reason, reason
    assert [int(s["n_files"]) for s in result.series] == [2]  # the other slices still make their series


# ----------------------------------------------------------------------------------------------------------
# C: garbage after a valid file meta
# ----------------------------------------------------------------------------------------------------------
def test_garbage_after_valid_file_meta_is_unreadable_not_an_object(tmp_path):
    """A file whose file meta parses but whose dataset is random or zero bytes is listed as corrupt, never as an
    object or image."""
    source = get_testdata_file("CT_small.dcm")
    data = Path(source).read_bytes()
    meta = data[: _meta_end(data)]
    folder = tmp_path / "in"
    folder.mkdir()
    bodies = {f"random{seed}.dcm": np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes()
              for seed in range(8)}
    bodies["zeros.dcm"] = bytes(4096)
    for name, body in bodies.items():
        (folder / name).write_bytes(meta + body)
    deflated = _deflated_header_only(16, 16)
    deflated_meta = deflated[: _meta_end(deflated)]
    for seed in range(4):  # a file meta saying deflated, then bytes that are no deflate stream of a data set
        name = f"deflated_random{seed}.dcm"
        bodies[name] = np.random.default_rng(100 + seed).integers(0, 256, 4096, dtype=np.uint8).tobytes()
        (folder / name).write_bytes(deflated_meta + bodies[name])
    result = scan(folder, out=tmp_path / "manifest", workers=1, progress=False)
    assert result.objects == [] and result.series == []
    unreadable = _unreadable(result)
    for name in bodies:
        row = unreadable.get(_real(folder / name))
        assert row is not None, f"{name} not listed in unreadable_files.csv"
        assert row["kind"] == "unreadable" and "corrupt" in row["reason"], row


# ----------------------------------------------------------------------------------------------------------
# D: a header cut on an element boundary
# ----------------------------------------------------------------------------------------------------------
def _element_ends(path: str) -> list[int]:
    """File offsets where top-level elements before PixelData end (pydicom's element reader), file meta end
    first."""
    data = Path(path).read_bytes()
    meta_end = _meta_end(data)
    ends = [meta_end]
    with open(path, "rb") as fp:
        fp.seek(meta_end)
        for elem in data_element_generator(fp, False, True, stop_when=lambda tag, vr, length: tag == 0x7FE00010):
            assert elem.length != 0xFFFFFFFF
            ends.append(elem.value_tell + elem.length)
    assert ends[-1] == data.index(PIXEL_TAG + b"OW")
    return ends


def test_image_cut_on_an_element_boundary_is_truncated(tmp_path):
    """An image file (image storage SOP class) cut at any element boundary of its header is `unreadable` as
    truncated, with the offset where it ends."""
    source = get_testdata_file("CT_small.dcm")
    data = Path(source).read_bytes()
    folder = tmp_path / "in"
    folder.mkdir()
    cuts = _element_ends(source)
    assert len(cuts) > 50
    for end in cuts:
        (folder / f"cut_{end:06d}.dcm").write_bytes(data[:end])
    result = scan(folder, out=tmp_path / "manifest", workers=1, progress=False)
    assert result.objects == [] and result.series == []
    unreadable = _unreadable(result)
    for end in cuts:
        row = unreadable.get(_real(folder / f"cut_{end:06d}.dcm"))
        assert row is not None, f"cut at {end} not listed"
        assert row["kind"] == "unreadable" and "truncated" in row["reason"], (end, row)
        assert f"byte {end}" in row["reason"], (end, row)


# ----------------------------------------------------------------------------------------------------------
# E: folders and links that cannot be read
# ----------------------------------------------------------------------------------------------------------
def _scan_as_nobody(root: str, out: str) -> int:
    """Run ``scan(root, out)`` in a forked child that drops to uid 65534; returns its exit status."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            scan(root, out=out, workers=1, progress=False)
            status = 0
        except BaseException as exc:  # noqa: BLE001 - reported through a file, the child must exit
            with open(os.path.join(root, "child_error.txt"), "w") as fh:
                fh.write(f"{type(exc).__name__}: {exc}")
        finally:
            os._exit(status)
    return os.waitpid(pid, 0)[1]


@pytest.mark.skipif(not hasattr(os, "fork") or os.geteuid() != 0,
                    reason="needs root to drop to another user (a normal user cannot make itself unable to read)")
def test_unreadable_folder_and_dangling_link_get_rows():
    """A folder that cannot be listed, the files of a folder that cannot be entered and a dangling symlink each
    get an `unreadable` row naming the path and the OS error; the readable series is still scanned."""
    root = tempfile.mkdtemp(prefix="scanread-perm-")
    try:
        os.chmod(root, 0o777)
        good = write_series(os.path.join(root, "good"), SeriesSpec(n_slices=3, rows=8, columns=8, seed=5))
        locked = os.path.join(root, "locked")
        write_series(locked, SeriesSpec(n_slices=2, rows=8, columns=8, seed=6))
        listable = os.path.join(root, "listable")
        hidden = write_series(listable, SeriesSpec(n_slices=2, rows=8, columns=8, seed=7))
        dangling = os.path.join(root, "good", "dangling.dcm")
        os.symlink(os.path.join(root, "gone.dcm"), dangling)
        out = os.path.join(root, "manifest")
        for folder, _, names in os.walk(root):
            os.chmod(folder, 0o755)
            for name in names:
                if not os.path.islink(os.path.join(folder, name)):
                    os.chmod(os.path.join(folder, name), 0o644)
        os.chmod(root, 0o777)
        os.chmod(locked, 0)  # cannot be listed
        os.chmod(listable, 0o444)  # names can be listed, files cannot be opened or even stat'ed
        status = _scan_as_nobody(root, out)
        error = Path(root, "child_error.txt")
        assert status == 0, error.read_text() if error.exists() else status
        with open(os.path.join(out, "unreadable_files.csv"), newline="") as fh:
            rows = {r["path"]: r for r in csv.DictReader(fh)}
        expected = {locked: "Permission denied", dangling: "No such file or directory",
                    **{path: "Permission denied" for path in hidden}}
        assert set(rows) == set(expected), rows
        for path, error_text in expected.items():
            assert rows[path]["kind"] == "unreadable", rows[path]
            assert path in rows[path]["reason"] and error_text in rows[path]["reason"], rows[path]
        with open(os.path.join(out, "series_files.csv"), newline="") as fh:
            assert [r["path"] for r in csv.DictReader(fh)] == good
    finally:
        for folder in (os.path.join(root, "locked"), os.path.join(root, "listable")):
            if os.path.isdir(folder):
                os.chmod(folder, 0o755)
        shutil.rmtree(root, ignore_errors=True)
