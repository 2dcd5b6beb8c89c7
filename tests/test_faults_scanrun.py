"""Faults around `scan`: series keys of non-ASCII and clashing SeriesInstanceUIDs, a full disk while the manifest is
written, and a scan killed mid-run.

Expectations come from what the tests wrote (the UIDs, the files, the pixels read back with pydicom) and from
hashlib / hmac directly, never from voxelpipe's own output.
"""
from __future__ import annotations

import csv
import errno
import glob
import hashlib
import hmac
import logging
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

import voxelpipe
import voxelpipe.dicom.series as series_module
import voxelpipe.stores.tables as tables_module
from voxelpipe import scan
from voxelpipe.cli.app import main
from voxelpipe.core.keys import series_key, series_number_key
from voxelpipe.pipelines.convert import convert
from voxelpipe.stores.tables import RowSpool, atomic_path
from voxelpipe.testing.synthetic import SeriesSpec, write_series

UID_ROOT = "1.2.826.0.1.3680043.8.498.77"


def uid_bytes_key(uid: str, secret: str | None = None) -> str:
    """The documented key: SHA-256 (HMAC-SHA-256 with a secret) of the UID's UTF-8 bytes, 16 hex digits."""
    data = uid.encode("utf-8")
    if secret:
        return hmac.new(secret.encode("utf-8"), data, hashlib.sha256).hexdigest()[:16]
    return hashlib.sha256(data).hexdigest()[:16]


def leftovers(folder: str) -> list[str]:
    """Temporary files of a scan (spool, not-yet-renamed tables) anywhere under ``folder``."""
    found = []
    for root, _, names in os.walk(folder):
        found += [os.path.join(root, n) for n in names if n.startswith((".spool-", ".tmp-"))]
    return sorted(found)


def dicom_files(folder: str) -> list[str]:
    return sorted(p for p in glob.glob(os.path.join(folder, "**", "*.dcm"), recursive=True))


def metadata_paths(manifest: str) -> list[str]:
    with open(os.path.join(manifest, "metadata.csv"), newline="", encoding="utf-8") as fh:
        return [os.path.realpath(row["path"]) for row in csv.DictReader(fh)]


def scan_command(data: str, out: str, workers: int) -> list[str]:
    return [sys.executable, "-m", "voxelpipe", "--no-progress", "--log-level", "WARNING", "scan", data,
            "--out", out, "--workers", str(workers)]


@pytest.fixture(scope="module")
def many_small(tmp_path_factory) -> str:
    """300 small files: 10 series of 30 slices of 8 x 8 pixels."""
    folder = str(tmp_path_factory.mktemp("many_small"))
    for index in range(10):
        write_series(os.path.join(folder, f"series{index:02d}"),
                     SeriesSpec(n_slices=30, rows=8, columns=8, seed=index, series_uid=f"{UID_ROOT}.{index + 1}"))
    return folder


# ----------------------------------------------------------------------------------------------------------
# A. series keys: exact bytes of the UID, clashes detected
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("secret", [None, "s3cret"])
def test_ascii_series_keys_are_unchanged_sha256_of_the_uid_bytes(secret):
    """The key of an ASCII SeriesInstanceUID (every valid UID) is still SHA-256 / HMAC-SHA-256 of its ASCII bytes,
    so outputs written before keep their names."""
    for uid in ("1.2.840.113619.2.55.3.604688119.969.1268071029.320", "1.2.3", "2.25.1234567890123456789"):
        data = uid.encode("ascii")
        expected = (hmac.new(secret.encode(), data, hashlib.sha256) if secret else hashlib.sha256(data)).hexdigest()
        assert series_key(uid, secret) == expected[:16]
        number_data = f"{uid}\\7".encode("ascii")
        number_expected = (hmac.new(secret.encode(), number_data, hashlib.sha256) if secret
                           else hashlib.sha256(number_data)).hexdigest()
        assert series_number_key(uid, "7", secret) == number_expected[:16]


@pytest.mark.parametrize("secret", [None, "s3cret"])
def test_uids_differing_only_in_a_non_ascii_character_get_different_keys(secret):
    """Two SeriesInstanceUIDs that differ only in a non-ASCII character get different keys: the key is the hash of
    the UID's exact UTF-8 bytes, not of a lossy ASCII copy."""
    first, second = f"{UID_ROOT}.1\u00e4", f"{UID_ROOT}.1\u00f6"
    assert series_key(first, secret) != series_key(second, secret)
    assert series_key(first, secret) == uid_bytes_key(first, secret)
    assert series_key(second, secret) == uid_bytes_key(second, secret)
    assert series_number_key(first, "2", secret) != series_number_key(second, "2", secret)


def _non_ascii_pair(folder: str) -> dict[str, list[str]]:
    """Two series whose SeriesInstanceUIDs differ only in a non-ASCII character (different pixels each)."""
    paths = {}
    for index, letter in enumerate("\u00e4\u00f6"):
        uid = f"{UID_ROOT}.1{letter}"
        paths[uid] = write_series(os.path.join(folder, f"series{index}"),
                                  SeriesSpec(n_slices=5, rows=8, columns=8, seed=10 + index, series_uid=uid),
                                  tags={"SpecificCharacterSet": "ISO_IR 100"})
    return paths


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom writes and reads such UIDs all the same
def test_non_ascii_uid_series_convert_to_two_volumes_each_with_its_own_pixels(tmp_path):
    """Series whose UIDs differ only in a non-ASCII character become two volumes under two distinct keys, each
    holding its own pixels (not one merged volume and a 'skipped' row)."""
    paths = _non_ascii_pair(str(tmp_path / "dicom"))
    # what pydicom reads back is the UID the files hold
    read_back = {uid: pydicom.dcmread(files[0]).SeriesInstanceUID for uid, files in paths.items()}
    assert len(set(read_back.values())) == 2
    rows = convert(str(tmp_path / "dicom"), out=str(tmp_path / "out"), fmt="npz", workers=1, progress=False)
    by_key = {row["series_key"]: row for row in rows}
    expected_keys = {uid_bytes_key(str(read_back[uid])): uid for uid in paths}
    assert set(by_key) == set(expected_keys), rows
    for key, uid in expected_keys.items():
        assert by_key[key]["status"] == "done", by_key[key]
        hu = np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in map(pydicom.dcmread, paths[uid])])
        with np.load(tmp_path / "out" / "data" / f"{key}.npz") as volume:
            np.testing.assert_array_equal(volume["image"], hu)


def test_series_key_clash_fails_both_series_naming_both_uids(tmp_path, monkeypatch):
    """Two SeriesInstanceUIDs that map to one key (forced here) are never merged: neither becomes a series, each
    of their files is listed in unreadable_files.csv with a reason naming both UIDs, other series are unaffected."""
    folder = tmp_path / "dicom"
    uids = [f"{UID_ROOT}.{n}" for n in (1, 2, 3)]
    paths = {uid: write_series(folder / f"s{i}", SeriesSpec(n_slices=4, rows=8, columns=8, seed=i, series_uid=uid))
             for i, uid in enumerate(uids)}
    clash = "c" * 16
    real_key = series_module.series_key
    monkeypatch.setattr(series_module, "series_key",
                        lambda uid, secret=None: clash if uid in uids[:2] else real_key(uid, secret))
    manifest = tmp_path / "manifest"
    result = scan(str(folder), out=str(manifest), workers=1, progress=False)
    assert [row["series_key"] for row in result.series] == [uid_bytes_key(uids[2])]
    assert {row["series_key"] for row in result.series_files} == {uid_bytes_key(uids[2])}
    with open(manifest / "unreadable_files.csv", newline="", encoding="utf-8") as fh:
        listed = {os.path.realpath(row["path"]): row for row in csv.DictReader(fh)}
    clashing = [os.path.realpath(p) for uid in uids[:2] for p in paths[uid]]
    assert sorted(listed) == sorted(clashing)
    for row in listed.values():
        assert row["kind"] == "key_clash"
        assert uids[0] in row["reason"] and uids[1] in row["reason"] and clash in row["reason"], row
    rows = convert(manifest=str(manifest / "series_all.csv"), out=str(tmp_path / "out"), fmt="npz", workers=1,
                   progress=False)
    assert [row["series_key"] for row in rows] == [uid_bytes_key(uids[2])]
    assert not (tmp_path / "out" / "data" / f"{clash}.npz").exists()


# ----------------------------------------------------------------------------------------------------------
# B. a full disk while scanning
# ----------------------------------------------------------------------------------------------------------
def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG
    return apply


@pytest.mark.parametrize("workers", [1, 2])
def test_disk_full_during_scan_exits_1_with_one_line_and_leaves_no_temporary_file(many_small, tmp_path, workers):
    """A scan whose manifest cannot be written (files limited to 64 KiB: EFBIG, like a full disk) exits 1 with one
    error line naming the manifest folder and the OS error, no traceback, no spool or temporary file, no scan.json."""
    out = str(tmp_path / "manifest")
    done = subprocess.run(scan_command(many_small, out, workers), capture_output=True, text=True, timeout=120,
                          preexec_fn=_limit_file_size(64 * 1024))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, done.stderr
    assert out in errors[0] and "File too large" in errors[0], errors[0]
    assert leftovers(out) == []
    assert not os.path.exists(os.path.join(out, "scan.json"))


@pytest.mark.parametrize("failing", ["metadata.csv", "series_all.csv", os.path.join("shards", "series_shard_00.csv"),
                                     "scan.json"])
def test_disk_full_while_writing_a_manifest_table_exits_1_naming_the_table(many_small, tmp_path, monkeypatch,
                                                                           caplog, failing):
    """No space left while one manifest table is renamed into place: exit 1, one error naming that table and the
    OS error, no temporary file left, no scan.json (the manifest reads as incomplete)."""
    out = str(tmp_path / "manifest")
    target = os.path.join(out, failing)
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if os.fspath(dst) == target:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(tables_module.os, "replace", replace)
    with caplog.at_level(logging.ERROR, logger="voxelpipe"):
        status = main(["--no-progress", "scan", many_small, "--out", out, "--workers", "1", "--shards", "1"])
    assert status == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and target in errors[0] and "No space left on device" in errors[0], errors
    assert leftovers(out) == []
    assert not os.path.exists(os.path.join(out, "scan.json"))


class _ErrorLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _scan_as_nobody(argv: list[str]) -> tuple[int, list[str]]:
    """Run ``main(argv)`` in a forked child that dropped root (uid/gid 65534) after the imports; returns the exit
    status and the error lines it logged."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            handler = _ErrorLines()
            logging.getLogger("voxelpipe").addHandler(handler)
            status = main(argv)
            os.write(write_end, "\n".join([str(status), *handler.lines]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        lines = fh.read().decode().splitlines()
    os.waitpid(pid, 0)
    assert lines, "the child reported nothing"
    return int(lines[0]), lines[1:]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="needs root to drop to another user")
def test_unwritable_manifest_folder_exits_2_naming_it(tmp_path):
    """A manifest folder the user may not create (EACCES) is refused before anything is read: exit 2, one error
    naming the folder and the OS error."""
    data = tempfile.mkdtemp(prefix="vp-data-")
    locked = tempfile.mkdtemp(prefix="vp-locked-")
    try:
        os.chmod(data, 0o777)
        os.chmod(locked, 0o755)  # root's: nobody cannot create the manifest folder in it
        write_series(os.path.join(data, "s"), SeriesSpec(n_slices=3, rows=8, columns=8))
        out = os.path.join(locked, "manifest")
        status, errors = _scan_as_nobody(["--no-progress", "scan", data, "--out", out, "--workers", "1"])
        assert status == 2, errors
        assert len(errors) == 1 and out in errors[0] and "Permission denied" in errors[0], errors
        assert not os.path.exists(out)
    finally:
        shutil.rmtree(data)
        shutil.rmtree(locked)


# ----------------------------------------------------------------------------------------------------------
# C. temporaries: private while they exist, cleaned by a rerun after a kill
# ----------------------------------------------------------------------------------------------------------
def test_temporary_files_of_a_scan_are_private(tmp_path):
    """The metadata spool never has a name anyone could open (it holds patient data), and a table's temporary file
    is 0600 until it is renamed; the final table gets the usual permissions."""
    spool = RowSpool(str(tmp_path), ["path"])
    try:
        spool.add({"path": "a", "PatientName": "Doe^Jane"})
        assert os.listdir(tmp_path) == []
    finally:
        spool.close()
    final = tmp_path / "table.csv"
    with atomic_path(final) as tmp:
        assert os.stat(tmp).st_mode & 0o777 == 0o600
        with open(tmp, "w") as fh:
            fh.write("x\n")
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(final).st_mode & 0o777 == 0o666 & ~umask
    assert os.listdir(tmp_path) == ["table.csv"]


def _kill_scan(command: list[str], out: str, rng: random.Random, at_first_temporary: bool) -> None:
    """Start ``command`` in its own process group and SIGKILL the group (workers too): as soon as a temporary file
    shows in ``out``, or after a random delay."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        if at_first_temporary:
            while process.poll() is None and not leftovers(out):
                time.sleep(0.0005)
        else:
            time.sleep(rng.uniform(0.2, 1.2))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)


@pytest.mark.slow
def test_kill_during_scan_leaves_temporaries_that_a_rerun_removes(many_small, tmp_path):
    """A scan killed with SIGKILL at any moment (1 or 2 workers) may leave temporary tables (0600, never a named
    spool), and the next scan of that folder removes them and writes a metadata.csv with every file exactly once."""
    rng = random.Random(16)
    files = [os.path.realpath(p) for p in dicom_files(many_small)]
    out = str(tmp_path / "manifest")
    seen = []
    for attempt in range(8):
        workers = 1 + attempt % 2
        _kill_scan(scan_command(many_small, out, workers), out, rng, at_first_temporary=attempt < 4)
        left = {path: os.stat(path).st_mode & 0o777 for path in leftovers(out)}
        seen += left
        subprocess.run(scan_command(many_small, out, workers), check=True, capture_output=True, timeout=120)
        assert leftovers(out) == []
        assert os.path.exists(os.path.join(out, "scan.json"))
        assert sorted(metadata_paths(out)) == sorted(files)
        assert all(mode == 0o600 for mode in left.values()), left
        assert not [p for p in left if os.path.basename(p).startswith(".spool-")], left
    assert seen, "no kill left a temporary file: the test did not exercise the cleanup"


@pytest.mark.skipif(sys.platform != "linux", reason="file names that are not UTF-8 exist only on Linux-like systems")
def test_file_names_that_are_not_utf8_are_listed_and_converted(tmp_path, capsys):
    """A DICOM file and a non-DICOM file whose names are not valid UTF-8 (bytes 0xFF 0xFE): scan lists both,
    convert converts the image to pydicom's voxels, and every path in the tables opens the file it names."""
    from pydicom.data import get_testdata_file

    folder = os.path.join(os.fsencode(tmp_path), b"d")
    os.makedirs(folder)
    image = os.path.join(folder, b"bad\xff\xfe.dcm")
    shutil.copy(get_testdata_file("CT_small.dcm"), image)
    other = os.path.join(folder, b"notes\xff.txt")
    with open(other, "wb") as fh:
        fh.write(b"not dicom")
    out = str(tmp_path / "out")
    assert main(["--no-progress", "convert", os.fsdecode(folder), "--out", out]) == 0
    capsys.readouterr()
    files = list(csv.DictReader(open(os.path.join(out, "manifest", "series_files.csv"), newline="",
                                     encoding="utf-8", errors="surrogateescape")))
    assert [os.fsencode(r["path"]) for r in files] == [image]
    unreadable = list(csv.DictReader(open(os.path.join(out, "manifest", "unreadable_files.csv"), newline="",
                                          encoding="utf-8", errors="surrogateescape")))
    assert [os.fsencode(r["path"]) for r in unreadable] == [other]
    summary = list(csv.DictReader(open(os.path.join(out, "summary_run.csv"), newline="", encoding="utf-8")))
    assert [r["status"] for r in summary] == ["done"], summary
    ds = pydicom.dcmread(os.fsdecode(image))
    volume = np.asarray(voxelpipe.open_volume(summary[0]["path"]).array)
    np.testing.assert_array_equal(volume[0], apply_modality_lut(ds.pixel_array, ds))


def test_output_folder_inside_the_input_is_not_scanned(tmp_path, capsys):
    """`convert DIR --out DIR/out` run twice: the output folder (its lock, manifest, volumes) is never read as
    input, so the second run lists no unreadable file and skips the series as complete."""
    paths = write_series(str(tmp_path / "s"), SeriesSpec(n_slices=3, rows=8, columns=8))
    out = str(tmp_path / "out")
    for _ in range(2):
        assert main(["--no-progress", "convert", str(tmp_path), "--out", out, "--workers", "1"]) == 0
        capsys.readouterr()
        with open(os.path.join(out, "manifest", "series_files.csv"), newline="") as fh:
            assert sorted(r["path"] for r in csv.DictReader(fh)) == sorted(paths)
        with open(os.path.join(out, "manifest", "unreadable_files.csv"), newline="") as fh:
            assert list(csv.DictReader(fh)) == []
    with open(os.path.join(out, "summary_run.csv"), newline="") as fh:
        assert [r["status"] for r in csv.DictReader(fh)] == ["skipped"]
