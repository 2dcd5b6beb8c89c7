"""`convert`'s verification of enhanced multi-frame files: it reads and decodes only the frames it samples (the
peak memory of a conversion with the default verification stays close to the same conversion with
``--verify-slices 0``), and a sampled frame whose stored pixels differ from the source fails the series, naming
the file and the frame; the frames of the file re-saved implicit VR, deflated and RLE-compressed verify too.

The files are written here with pydicom (header) and raw bytes (the native pixel data, frame by frame, so a
256 MiB file never sits in the test's memory); references are the arrays written, never convert's output.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

import voxelpipe
from voxelpipe.core.types import Status
from voxelpipe.pipelines import series_volume
from voxelpipe.testing.measured import run_measured
from voxelpipe.testing.multiframe import frame_pixels, write_enhanced_ct

MEMORY_RATIO = 1.3  # peak RSS with the default verification / peak RSS with --verify-slices 0


def expected_volume(order: list[int], rows: int, columns: int, intercepts: list[int]) -> np.ndarray:
    """The volume (slice, row, column) the written frames make: frame ``i`` rescaled, at slice ``order[i]``."""
    volume = np.empty((len(order), rows, columns), np.int16)
    for i, z in enumerate(order):
        volume[z] = frame_pixels(i, rows, columns) + intercepts[i]
    return volume


def peak_rss_kib(args: list[str], log: Path) -> int:
    """Run ``python -m voxelpipe ARGS`` and return its own peak RSS in KiB (with the children it waited for,
    not this test process's memory: see ``voxelpipe.testing.measured``); the run must succeed."""
    done = run_measured([sys.executable, "-m", "voxelpipe", *args])
    log.write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stderr
    assert done.peak_bytes > 0, done.stderr
    return done.peak_bytes // 1024


def test_default_verification_of_a_multiframe_file_costs_little_memory(tmp_path):
    """256 MiB of pixels in one file: the default verification (2 sampled frames) adds at most 30 % to the peak
    RSS of the same conversion unverified (it decoded the whole file twice before)."""
    frames, rows, columns = 512, 512, 512
    folder = tmp_path / "mf"
    folder.mkdir()
    write_enhanced_ct(folder / "mf.dcm", list(range(frames)), rows, columns)
    assert os.path.getsize(folder / "mf.dcm") > 256 * 2 ** 20
    peaks = {}
    for name, extra in (("off", ["--verify-slices", "0"]), ("default", [])):
        out = tmp_path / f"out_{name}"
        peaks[name] = peak_rss_kib(["convert", str(folder), "--out", str(out), "--workers", "1", *extra],
                                   tmp_path / f"{name}.log")
        summary = (out / "summary_run.csv").read_text()
        assert ("ok 2/2" in summary) == (name == "default"), summary
        shutil.rmtree(out)  # disk: one output at a time
    assert peaks["default"] <= MEMORY_RATIO * peaks["off"], peaks


def test_a_corrupted_multiframe_frame_fails_the_series_naming_file_and_frame(tmp_path, monkeypatch):
    """Every frame sampled; the one stored wrong is named (its slice, the file, its frame index in the file)."""
    rows, columns = 24, 20
    order = [3, 0, 5, 1, 4, 2]  # file frame i lies at slice order[i]
    folder = tmp_path / "mf"
    folder.mkdir()
    path = folder / "mf.dcm"
    facts = write_enhanced_ct(path, order, rows, columns)
    reference = expected_volume(order, rows, columns, facts["intercepts"])
    np.testing.assert_array_equal(pydicom.dcmread(path).pixel_array[4], frame_pixels(4, rows, columns))

    (row,) = voxelpipe.convert([str(folder)], out=str(tmp_path / "good"), workers=1, progress=False,
                               verify_slices=len(order))
    assert row["status"] == Status.DONE and row["verification"] == f"ok {len(order)}/{len(order)}", row
    np.testing.assert_array_equal(voxelpipe.open_volume(row["path"]).numpy(), reference)

    bad_frame = 4
    bad_slice = order[bad_frame]
    real_decode = series_volume.decode_batch

    def corrupting_decode(batch, raw):  # the stored values of one file frame come out one higher
        real_decode(batch, raw)
        for j, frame in enumerate(batch):
            if frame.frame == bad_frame:
                raw[j] += 1

    monkeypatch.setattr(series_volume, "decode_batch", corrupting_decode)
    (row,) = voxelpipe.convert([str(folder)], out=str(tmp_path / "bad"), workers=1, progress=False,
                               verify_slices=len(order))
    assert row["status"] == Status.FAILED
    reason = row["reason"]
    assert "verification failed" in reason and f"mismatch at slice {bad_slice} " in reason, reason
    assert str(path) in reason and f"frame index {bad_frame} of the file" in reason, reason
    assert not os.path.exists(row["path"])


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless])
def test_every_frame_verifies_in_other_encodings(tmp_path, syntax):
    """The small file re-saved implicit VR, deflated and RLE-compressed: every frame sampled verifies ok and the
    volume is the one written."""
    rows, columns = 24, 20
    order = [3, 0, 5, 1, 4, 2]
    folder = tmp_path / "mf"
    folder.mkdir()
    path = folder / "mf.dcm"
    facts = write_enhanced_ct(path, order, rows, columns)
    ds = pydicom.dcmread(path)
    if syntax == RLELossless:
        ds.compress(RLELossless)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True, enforce_file_format=True)
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    (row,) = voxelpipe.convert([str(folder)], out=str(tmp_path / "out"), workers=1, progress=False,
                               verify_slices=len(order))
    assert row["status"] == Status.DONE and row["verification"] == f"ok {len(order)}/{len(order)}", row
    np.testing.assert_array_equal(voxelpipe.open_volume(row["path"]).numpy(),
                                  expected_volume(order, rows, columns, facts["intercepts"]))
