"""`contours`: pairing, parsing, masks, npz/zarr output, overlays, problems, reruns and the CLI.

Real data (../shared/data/cardiac-mri, via the ``shared_data`` fixture): every shipped contour file is paired,
checked against an independent pairing (pydicom reads every header), masks against skimage's polygon2mask, and
anatomy (blood pool brighter than myocardium; the transposed masks are not). Synthetic pydicom studies cover what
the real data does not: lying file names, malformed lines, missing images, reruns, pools.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
import zarr
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from skimage.draw import polygon2mask

from voxelpipe.apps.contours import ContourParseError, convert_contours, read_contour
from voxelpipe.cli.app import main
from voxelpipe.core.errors import InputError
from voxelpipe.core.types import Status

from helpers import sha_key

NAME = re.compile(r"IM-\d+-(\d+)-([a-z])contour-manual\.txt$")


# ----------------------------------------------------------------------------------------------------------
# independent helpers
# ----------------------------------------------------------------------------------------------------------
def ref_outline(mask: np.ndarray) -> np.ndarray:
    """Inside pixels with a 4-neighbour outside the mask or beyond the image edge (pixel loop)."""
    rows, cols = mask.shape
    out = np.zeros(mask.shape, bool)
    for r, c in zip(*np.nonzero(mask)):
        for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if not (0 <= rr < rows and 0 <= cc < cols) or not mask[rr, cc]:
                out[r, c] = True
    return out


def ref_mask(contour_file: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """skimage's polygon2mask of the file's polygon; the file gives x (column), y (row)."""
    xy = np.loadtxt(contour_file, ndmin=2)
    return polygon2mask(shape, xy[:, ::-1])


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def load_npz(path: Path) -> dict:
    with np.load(path) as data:
        out = {k: data[k] for k in data.files}
    out["meta"] = json.loads(str(out.pop("meta_json")))
    return out


def files_under(root: Path, suffix: str) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob(f"*{suffix}")}


def run_cli(argv: list[str]) -> tuple[int, str]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(argv)
    return code, buffer.getvalue()


# ----------------------------------------------------------------------------------------------------------
# real data
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cardiac(shared_data) -> Path:
    root = shared_data / "cardiac-mri"
    if not (root / "link.csv").is_file():
        pytest.skip("cardiac-mri not in the shared data")
    return root


@pytest.fixture(scope="module")
def truth(cardiac) -> dict:
    """Independent facts: link rows, every contour file on disk, every DICOM header's InstanceNumber."""
    links = read_rows(cardiac / "link.csv")
    contours, images = {}, {}
    for row in links:
        pid, oid = row["patient_id"], row["original_id"]
        contours[pid] = sorted((cardiac / "contourfiles" / oid).glob("*-contours/*.txt"))
        images[pid] = {}
        for path in (cardiac / "dicoms" / pid).iterdir():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            assert int(ds.InstanceNumber) not in images[pid]
            images[pid][int(ds.InstanceNumber)] = path
    return {"links": links, "contours": contours, "images": images}


@pytest.fixture(scope="module")
def real_npz(cardiac, tmp_path_factory) -> dict:
    """The CLI on the real data: npz with overlays."""
    out = tmp_path_factory.mktemp("cardiac_npz")
    code, printed = run_cli(["--no-progress", "contours", "--link", str(cardiac / "link.csv"),
                             "--dicom-dir", str(cardiac / "dicoms"), "--contour-dir", str(cardiac / "contourfiles"),
                             "--out", str(out), "--overlay", "--workers", "1"])
    return {"out": out, "code": code, "printed": printed}


@pytest.fixture(scope="module")
def real_zarr(cardiac, tmp_path_factory):
    out = tmp_path_factory.mktemp("cardiac_zarr")
    result = convert_contours(cardiac / "link.csv", cardiac / "dicoms", cardiac / "contourfiles", out, fmt="zarr",
                              workers=1, progress=False)
    return out, result


def test_real_cli_pairs_every_contour_file(real_npz, truth):
    out = real_npz["out"]
    assert real_npz["code"] == 0
    n_files = sum(len(v) for v in truth["contours"].values())
    assert n_files == 54  # 2 patients x (18 i + 9 o) as shipped
    expected = {}  # (patient_key, instance) -> {kind: contour file}
    for pid, files in truth["contours"].items():
        for path in files:
            number, kind = NAME.search(path.name).groups()
            expected.setdefault((sha_key(pid), int(number)), {})[kind] = str(path)
    assert re.search(rf"contours: {len(expected)} pair\(s\) written, 0 kept, 0 problem\(s\)", real_npz["printed"])
    written = files_under(out, ".npz")
    assert written == {f"{key}/{n:04d}.npz" for key, n in expected}
    used = []
    for (key, number), kinds in expected.items():
        data = load_npz(out / key / f"{number:04d}.npz")
        assert data["meta"]["contour_files"] == kinds
        assert data["meta"]["instance_number"] == number and data["meta"]["patient_key"] == key
        assert {k for k in data if k.startswith("mask_")} == {f"mask_{k}" for k in kinds}
        used.extend(kinds.values())
    assert len(used) == n_files == len(set(used))
    assert read_rows(out / "problems.csv") == []


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # these scanner UIDs have leading zeros
def test_real_images_are_the_dicoms_with_that_instance_number(real_npz, truth):
    out = real_npz["out"]
    for pid, images in truth["images"].items():
        for path in sorted((out / sha_key(pid)).glob("*.npz")):
            data = load_npz(path)
            source = images[int(path.stem)]
            ds = pydicom.dcmread(source)
            assert data["image"].dtype == ds.pixel_array.dtype == np.int16
            np.testing.assert_array_equal(data["image"], ds.pixel_array)
            meta = data["meta"]
            assert Path(meta["source_dicom"]).resolve() == source.resolve()
            assert meta["sop_instance_uid"] == ds.SOPInstanceUID
            assert meta["pixel_spacing"] == [float(v) for v in ds.PixelSpacing]
            assert meta["window_center"] == float(ds.WindowCenter) and meta["window_width"] == float(ds.WindowWidth)
            assert "rescale_slope" not in meta  # these MR images carry none


def test_real_masks_equal_polygon2mask(real_npz):
    out = real_npz["out"]
    count = 0
    for path in sorted(out.rglob("*.npz")):
        data = load_npz(path)
        for kind, contour in data["meta"]["contour_files"].items():
            mask = data[f"mask_{kind}"]
            assert mask.dtype == np.uint8 and mask.shape == data["image"].shape
            np.testing.assert_array_equal(mask, ref_mask(contour, mask.shape).astype(np.uint8))
            assert 50 < mask.sum() < 5000
            count += 1
    assert count == 54


def test_real_inner_lies_inside_outer(real_npz):
    """The data itself has the inner contour 0.5 px outside the outer one at one vertex (SCD0000101, image 59):
    that single pixel is the only one allowed, and it is checked to come from the files, not the fill."""
    out = real_npz["out"]
    outside = {}
    for path in sorted(out.rglob("*.npz")):
        data = load_npz(path)
        if "mask_o" not in data:
            continue
        assert "mask_i" in data  # every o-contour image of these patients has an i contour
        crossing = (data["mask_i"] > 0) & (data["mask_o"] == 0)
        if crossing.any():
            outside[(path.parent.name, int(path.stem))] = list(zip(*np.nonzero(crossing)))
    assert outside == {(sha_key("SCD0000101"), 59): [(143, 119)]}
    data = load_npz(out / sha_key("SCD0000101") / "0059.npz")
    inner = np.loadtxt(data["meta"]["contour_files"]["i"])
    outer = np.loadtxt(data["meta"]["contour_files"]["o"])
    assert [119.0, 143.0] in inner.tolist()  # the i vertex sits on that pixel centre (x=119, y=143) ...
    assert [119.5, 143.0] in outer.tolist()  # ... where the o contour runs half a pixel further in


def test_real_blood_pool_brighter_than_myocardium(real_npz):
    """Cine SSFP: blood (inside i) is bright, myocardium (o minus i) dark. The transposed masks (x and y swapped)
    land partly off the heart: their contrast is lower on every image, so a swapped fill would be caught."""
    out = real_npz["out"]
    for patient in sorted(p for p in out.iterdir() if p.is_dir() and p.name != "overlays"):
        pooled = {"right": ([], []), "transposed": ([], [])}
        n = 0
        for path in sorted(patient.glob("*.npz")):
            data = load_npz(path)
            if "mask_o" not in data:
                continue
            image = data["image"].astype(float)
            contrast = {}
            for name, (inner, outer) in {"right": (data["mask_i"], data["mask_o"]),
                                         "transposed": (data["mask_i"].T, data["mask_o"].T)}.items():
                blood, myo = image[inner > 0], image[(outer > 0) & (inner == 0)]
                pooled[name][0].append(blood)
                pooled[name][1].append(myo)
                contrast[name] = blood.mean() - myo.mean()
            assert contrast["right"] > 0
            assert contrast["right"] > contrast["transposed"], path
            n += 1
        assert n == 9
        ratio = {name: np.concatenate(b).mean() / np.concatenate(m).mean() for name, (b, m) in pooled.items()}
        assert ratio["right"] > 1.5
        assert ratio["right"] > ratio["transposed"] + 0.4


def test_real_filelists_list_exactly_the_written_files(real_npz):
    out = real_npz["out"]
    listed = (out / "filelist.txt").read_text().splitlines()
    assert listed == sorted(listed) and len(listed) == len(set(listed)) == 36
    assert set(listed) == files_under(out, ".npz")
    overlays = (out / "overlays" / "filelist.txt").read_text().splitlines()
    assert set(overlays) == files_under(out, ".png") and len(overlays) == 36
    rows = read_rows(out / "pairs.csv")
    assert {r["path"] for r in rows} == set(listed) and {r["status"] for r in rows} == {Status.DONE}


def test_real_no_patient_ids_in_paths(real_npz, truth):
    out = real_npz["out"]
    ids = [r["patient_id"] for r in truth["links"]] + [r["original_id"] for r in truth["links"]]
    for path in out.rglob("*"):
        rel = path.relative_to(out).as_posix()
        assert not any(i in rel for i in ids), rel
        assert ".tmp-" not in rel and not rel.endswith(".partial")
    assert {p.name for p in out.iterdir() if p.is_dir()} == {sha_key(r["patient_id"]) for r in truth["links"]} | {
        "overlays"}


def test_real_overlay_png(real_npz):
    out = real_npz["out"]
    key = sha_key("SCD0000201")
    data = load_npz(out / key / "0100.npz")
    with Image.open(out / "overlays" / key / "0100.png") as png:
        assert png.format == "PNG" and png.size == (256, 256)
        rgb = np.asarray(png.convert("RGB"))
    edge_i, edge_o = ref_outline(data["mask_i"] > 0), ref_outline(data["mask_o"] > 0)
    assert edge_i.sum() > 50 and edge_o.sum() > 50
    assert (rgb[edge_i & ~edge_o] == (255, 0, 0)).all()
    assert (rgb[edge_o] == (0, 255, 0)).all()
    rest = rgb[~(edge_i | edge_o)]
    assert (rest[:, 0] == rest[:, 1]).all() and (rest[:, 1] == rest[:, 2]).all()  # grey elsewhere
    assert rest[:, 0].min() == 0 and rest[:, 0].max() > 200  # the header window spreads the grey


def test_real_rerun_skips_complete_outputs(real_npz, cardiac):
    out = real_npz["out"]
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.suffix in (".npz", ".png")}
    before = (out / "filelist.txt").read_text()
    result = convert_contours(cardiac / "link.csv", cardiac / "dicoms", cardiac / "contourfiles", out,
                              overlay=True, workers=1, progress=False)
    assert len(result.written) == 0 and len(result.skipped) == 36 and result.problems == []
    assert {p.overlay_status for p in result.pairs} == {Status.SKIPPED}
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert (out / "filelist.txt").read_text() == before


def test_real_zarr_equals_npz(real_zarr, real_npz):
    out, result = real_zarr
    npz_out = real_npz["out"]
    assert len(result.written) == 36 and result.problems == []
    assert (out / "filelist.txt").read_text().splitlines() == sorted(p.name for p in out.glob("*.zarr"))
    for store in sorted(out.glob("*.zarr")):
        key = store.name[: -len(".zarr")]
        group = zarr.open_group(store=zarr.storage.LocalStore(store, read_only=True), mode="r")
        npz = sorted((npz_out / key).glob("*.npz"))
        numbers = [int(p.stem) for p in npz]
        assert list(group["instance_numbers"][...]) == numbers == sorted(numbers)
        image = group["image"]
        assert image.shape == (len(npz), 256, 256) and image.dtype == np.int16
        codec = image.compressors[0]
        assert type(codec).__name__ == "BloscCodec" and str(codec.cname.value) == "zstd"
        for index, path in enumerate(npz):
            data = load_npz(path)
            np.testing.assert_array_equal(image[index], data["image"])
            for kind in ("i", "o"):
                has = bool(group[f"has_{kind}"][index])
                assert has == (f"mask_{kind}" in data)
                mask = group[f"masks/{kind}"][index]
                assert mask.dtype == np.uint8
                np.testing.assert_array_equal(mask, data[f"mask_{kind}"] if has else np.zeros((256, 256)))
            meta = group.attrs["pairs"][index]
            assert meta == data["meta"]


# ----------------------------------------------------------------------------------------------------------
# synthetic studies
# ----------------------------------------------------------------------------------------------------------
ROWS, COLS = 20, 24  # not square: a transposed mask cannot even be stored


def write_mr(path: Path, instance: int, pixels: np.ndarray, window: tuple[float, float] | None = (300, 600),
             rescale: tuple[float, float] | None = None) -> Path:
    meta = FileMetaDataset()
    uid = generate_uid()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, uid
    ds.Modality, ds.PatientID = "MR", "SYNTH"
    ds.StudyInstanceUID = ds.SeriesInstanceUID = "1.2.3.4"
    ds.InstanceNumber = instance
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [1.25, 1.5]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = pixels.astype("<i2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def polygon(instance: int, kind: str) -> np.ndarray:
    """A star-ish polygon (x, y) that differs per instance and kind, partly on half pixels."""
    radius = 4.0 if kind == "i" else 7.0
    angles = np.linspace(0, 2 * np.pi, 9 + instance % 4, endpoint=False)
    wobble = 1 + 0.25 * np.cos(3 * angles + instance)
    x = 12.3 + instance % 3 * 0.5 + radius * wobble * np.cos(angles)
    y = 9.7 + radius * wobble * np.sin(angles) * 0.9
    return np.round(np.stack([x, y], axis=1) * 2) / 2


def write_contour(path: Path, points: np.ndarray, lines: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = lines if lines is not None else [f"{x:.2f} {y:.2f}" for x, y in points]
    path.write_text("\n".join(text) + "\n")
    return path


def contour_path(root: Path, original: str, instance: int, kind: str) -> Path:
    return root / "contours" / original / f"{kind}-contours" / f"IM-0001-{instance:04d}-{kind}contour-manual.txt"


@pytest.fixture
def study(tmp_path) -> dict:
    """Two patients. A: 6 images whose file names lie about their InstanceNumber; i on 2, 3, 5 and o on 3, 5;
    an i contour for instance 9 that has no image. B: 3 images, i and o on 1."""
    root = tmp_path / "in"
    rng = np.random.default_rng(3)
    facts = {"root": root, "pairs": {}, "images": {}}
    layout = {"PAT-A": ("orig-a", 6, {2: "i", 3: "io", 5: "io"}), "PAT-B": ("orig-b", 3, {1: "io"})}
    for pid, (original, n, contours) in layout.items():
        for instance in range(1, n + 1):
            pixels = rng.integers(0, 600, size=(ROWS, COLS))
            name = f"x{(instance * 7) % n + 100}.dcm"  # not the instance number
            facts["images"][(pid, instance)] = (write_mr(root / "dicom" / pid / "sub" / name, instance, pixels),
                                                pixels)
        for instance, kinds in contours.items():
            files = {k: write_contour(contour_path(root, original, instance, k), polygon(instance, k)) for k in kinds}
            facts["pairs"][(pid, instance)] = files
    write_contour(contour_path(root, "orig-a", 9, "i"), polygon(9, "i"))
    facts["no_image"] = contour_path(root, "orig-a", 9, "i")
    (root / "link.csv").write_text("patient_id,original_id\nPAT-A,orig-a\nPAT-B,orig-b\n")
    return facts


def run(study: dict, out: Path, **kwargs):
    root = study["root"]
    kwargs.setdefault("workers", 1)
    return convert_contours(root / "link.csv", root / "dicom", root / "contours", out, progress=False, **kwargs)


def problems(out: Path) -> list[dict]:
    return read_rows(out / "problems.csv")


def test_pairs_by_header_instance_number_not_file_name(study, tmp_path):
    out = tmp_path / "out"
    result = run(study, out)
    assert {(p.patient_key, p.instance_number) for p in result.written} == {
        (sha_key(pid), n) for pid, n in study["pairs"]}
    for (pid, instance), files in study["pairs"].items():
        data = load_npz(out / sha_key(pid) / f"{instance:04d}.npz")
        source, pixels = study["images"][(pid, instance)]
        np.testing.assert_array_equal(data["image"], pixels)
        assert data["image"].dtype == np.int16 and data["image"].shape == (ROWS, COLS)
        assert data["meta"]["source_dicom"] == str(source)
        assert data["meta"]["pixel_spacing"] == [1.25, 1.5]
        assert data["meta"]["contour_files"] == {k: str(v) for k, v in files.items()}
        for kind, path in files.items():
            np.testing.assert_array_equal(data[f"mask_{kind}"], ref_mask(path, (ROWS, COLS)).astype(np.uint8))
        assert {k for k in data if k.startswith("mask_")} == {f"mask_{k}" for k in files}


def test_contour_without_image_is_logged(study, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="voxelpipe"):
        result = run(study, out)
    rows = problems(out)
    assert [(r["category"], r["path"], r["instance_number"], r["kind"]) for r in rows] == [
        ("no_image", str(study["no_image"]), "9", "i")]
    assert "InstanceNumber 9" in rows[0]["reason"]
    assert len(result.problems) == 1 and len(result.written) == 4
    assert str(study["no_image"]) in caplog.text and "no_image" in caplog.text


def test_malformed_line_named_other_pairs_written(study, tmp_path):
    bad = study["pairs"][("PAT-A", 3)]["o"]
    good = bad.read_text().splitlines()
    write_contour(bad, None, good[:2] + ["12.5 abc"] + good[3:])
    out = tmp_path / "out"
    code, printed = run_cli(["--no-progress", "contours", "--link", str(study["root"] / "link.csv"),
                             "--dicom-dir", str(study["root"] / "dicom"),
                             "--contour-dir", str(study["root"] / "contours"), "--out", str(out), "--workers", "1"])
    assert code == 1 and "2 problem(s)" in printed
    rows = {r["category"]: r for r in problems(out)}
    assert set(rows) == {"parse_error", "no_image"}
    row = rows["parse_error"]
    assert row["path"] == str(bad) and row["line"] == "3" and row["instance_number"] == "3" and row["kind"] == "o"
    assert f"{bad}, line 3" in row["reason"] and "12.5 abc" in row["reason"]
    key = sha_key("PAT-A")
    assert not (out / key / "0003.npz").exists()  # never written with the i mask alone
    assert files_under(out, ".npz") == {f"{key}/0002.npz", f"{key}/0005.npz", f"{sha_key('PAT-B')}/0001.npz"}
    assert set((out / "filelist.txt").read_text().splitlines()) == files_under(out, ".npz")

    # fixed: the rerun writes the missing pair and keeps the rest
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")}
    write_contour(bad, None, good)
    result = run(study, out)
    assert [(p.patient_key, p.instance_number) for p in result.written] == [(key, 3)]
    assert len(result.skipped) == 3
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert [r["category"] for r in problems(out)] == ["no_image"]
    assert set((out / "filelist.txt").read_text().splitlines()) == files_under(out, ".npz")


@pytest.mark.parametrize("lines, line, words", [
    (["1 2", "3 4", "5"], 3, "two numbers"),
    (["1 2", "3,4", "5 6"], 2, "two numbers"),
    (["1 2", "3 nan", "5 6"], 2, "finite"),
    (["1 2", "3 4 5", "5 6"], 2, "3 field"),
    (["1 2", "", "3 4"], None, "at least 3"),
])
def test_read_contour_errors_name_file_and_line(tmp_path, lines, line, words):
    path = write_contour(tmp_path / "c.txt", None, lines)
    with pytest.raises(ContourParseError) as info:
        read_contour(path)
    assert info.value.line == line and info.value.path == str(path) and words in str(info.value)
    assert str(info.value).startswith(f"{path}, line {line}:" if line else f"{path}:")
    assert isinstance(info.value, InputError)


def test_read_contour_tolerates_blank_lines_and_spaces(tmp_path):
    path = write_contour(tmp_path / "c.txt", None, ["  1.5   2.0 ", "", "3 4\t", "5e0 6.25", ""])
    np.testing.assert_array_equal(read_contour(path), [[1.5, 2.0], [3, 4], [5, 6.25]])


def test_other_bad_inputs_are_logged_not_fatal(study, tmp_path):
    root = study["root"]
    (root / "dicom" / "PAT-A" / "notes.txt").write_text("not an image")
    dup = study["images"][("PAT-B", 1)][0]
    write_mr(dup.parent / "copy.dcm", 1, np.zeros((ROWS, COLS)))            # InstanceNumber 1 twice
    write_contour(root / "contours" / "orig-a" / "i-contours" / "stray.txt", polygon(1, "i"))  # bad name
    write_contour(root / "contours" / "orig-z" / "i-contours" / "IM-0001-0001-icontour-manual.txt",
                  polygon(1, "i"))                                          # folder not in link.csv
    with open(root / "link.csv", "a") as fh:
        fh.write("PAT-C,orig-c\n")                                          # folders absent
    out = tmp_path / "out"
    result = run(study, out)
    categories = sorted(r["category"] for r in problems(out))
    assert categories == sorted(["not_dicom", "ambiguous_instance", "ambiguous_instance", "bad_name",
                                 "not_in_link", "missing_folder", "missing_folder", "no_image"])
    assert {(p.patient_key, p.instance_number) for p in result.written} == {
        (sha_key("PAT-A"), n) for n in (2, 3, 5)}


def test_kinds_option_reads_only_those(study, tmp_path):
    out = tmp_path / "out"
    result = run(study, out, kinds="o")
    assert {p.instance_number for p in result.written} == {3, 5, 1}
    data = load_npz(out / sha_key("PAT-A") / "0003.npz")
    assert {k for k in data if k.startswith("mask_")} == {"mask_o"}
    assert [r["category"] for r in problems(out)] == []  # the instance-9 i contour is not read at all


def test_zarr_equals_npz_and_reruns(study, tmp_path):
    npz_out, zarr_out = tmp_path / "npz", tmp_path / "zarr"
    run(study, npz_out)
    result = run(study, zarr_out, fmt="zarr")
    assert len(result.written) == 4
    key = sha_key("PAT-A")
    group = zarr.open_group(store=zarr.storage.LocalStore(zarr_out / f"{key}.zarr", read_only=True), mode="r")
    assert list(group["instance_numbers"][...]) == [2, 3, 5]
    assert list(group["has_i"][...]) == [True, True, True] and list(group["has_o"][...]) == [False, True, True]
    for index, number in enumerate([2, 3, 5]):
        data = load_npz(npz_out / key / f"{number:04d}.npz")
        np.testing.assert_array_equal(group["image"][index], data["image"])
        np.testing.assert_array_equal(group["masks/i"][index], data["mask_i"])
        np.testing.assert_array_equal(group["masks/o"][index], data.get("mask_o", np.zeros((ROWS, COLS))))
        assert group.attrs["pairs"][index] == data["meta"]
    assert (zarr_out / "filelist.txt").read_text().splitlines() == sorted(
        [f"{key}.zarr", f"{sha_key('PAT-B')}.zarr"])

    stamp = (zarr_out / f"{key}.zarr" / "zarr.json").stat().st_mtime_ns
    again = run(study, zarr_out, fmt="zarr")
    assert len(again.written) == 0 and len(again.skipped) == 4
    assert (zarr_out / f"{key}.zarr" / "zarr.json").stat().st_mtime_ns == stamp

    # a new contour changes the patient's pair set: its group is rewritten, the other one kept
    write_contour(contour_path(study["root"], "orig-a", 4, "i"), polygon(4, "i"))
    third = run(study, zarr_out, fmt="zarr")
    assert {(p.patient_key, p.status) for p in third.pairs} == {(key, Status.DONE), (sha_key("PAT-B"), Status.SKIPPED)}
    group = zarr.open_group(store=zarr.storage.LocalStore(zarr_out / f"{key}.zarr", read_only=True), mode="r")
    assert list(group["instance_numbers"][...]) == [2, 3, 4, 5]
    assert not any(p.name.endswith((".partial", ".old")) for p in zarr_out.iterdir())


def test_overlay_window_rescale_and_percentile(tmp_path):
    root = tmp_path / "in"
    rng = np.random.default_rng(5)
    pix1 = rng.integers(0, 1000, size=(ROWS, COLS))
    pix2 = rng.integers(0, 1000, size=(ROWS, COLS))
    write_mr(root / "dicom" / "P" / "a.dcm", 1, pix1, window=None)                      # percentile window
    write_mr(root / "dicom" / "P" / "b.dcm", 2, pix2, window=(50, 200), rescale=(0.5, -100))  # header window
    for n in (1, 2):
        write_contour(contour_path(root, "o1", n, "i"), polygon(n, "i"))
    (root / "link.csv").write_text("patient_id,original_id\nP,o1\n")
    out = tmp_path / "out"
    result = convert_contours(root / "link.csv", root / "dicom", root / "contours", out, overlay=True, workers=1,
                              progress=False)
    assert len(result.written) == 2
    key = sha_key("P")
    meta2 = load_npz(out / key / "0002.npz")["meta"]
    assert (meta2["rescale_slope"], meta2["rescale_intercept"]) == (0.5, -100.0)
    assert (meta2["window_center"], meta2["window_width"]) == (50.0, 200.0)
    assert "window_center" not in load_npz(out / key / "0001.npz")["meta"]
    for n, pixels, grey_of in ((1, pix1, None), (2, pix2, lambda v: v * 0.5 - 100)):
        with Image.open(out / "overlays" / key / f"{n:04d}.png") as png:
            rgb = np.asarray(png.convert("RGB"))
        assert rgb.shape == (ROWS, COLS, 3)
        mask = ref_mask(contour_path(root, "o1", n, "i"), (ROWS, COLS))
        edge = ref_outline(mask)
        assert (rgb[edge] == (255, 0, 0)).all()
        grey = rgb[..., 0][~edge].astype(float)
        values = pixels[~edge].astype(float)
        if grey_of is None:
            lo, hi = np.percentile(pixels, [1, 99])
            want = np.clip((values - lo) / (hi - lo) * 255, 0, 255)
        else:
            modality = grey_of(values)  # window applies to rescaled values: centre 50, width 200
            want = np.clip(((modality - 49.5) / 199 + 0.5) * 255, 0, 255)
        assert np.abs(grey - want).max() <= 0.5 + 1e-6
    assert (out / "overlays" / "filelist.txt").read_text().splitlines() == [
        f"overlays/{key}/0001.png", f"overlays/{key}/0002.png"]

    # overlays asked for later: written without redoing the npz
    (out / "overlays" / key / "0001.png").unlink()
    stamp = (out / key / "0001.npz").stat().st_mtime_ns
    again = convert_contours(root / "link.csv", root / "dicom", root / "contours", out, overlay=True, workers=1,
                             progress=False)
    assert {(p.instance_number, p.status, p.overlay_status) for p in again.pairs} == {
        (1, Status.SKIPPED, Status.DONE), (2, Status.SKIPPED, Status.SKIPPED)}
    assert (out / key / "0001.npz").stat().st_mtime_ns == stamp


def test_pool_gives_the_same_files(study, tmp_path):
    serial, pooled = tmp_path / "serial", tmp_path / "pool"
    run(study, serial, workers=1)
    result = run(study, pooled, workers=2)
    assert len(result.written) == 4 and [p.category for p in result.problems] == ["no_image"]
    assert files_under(serial, ".npz") == files_under(pooled, ".npz")
    for rel in files_under(serial, ".npz"):
        a, b = load_npz(serial / rel), load_npz(pooled / rel)
        assert a["meta"] == b["meta"]
        for name in a:
            if name != "meta":
                np.testing.assert_array_equal(a[name], b[name])


def test_bad_calls(study, tmp_path):
    root = study["root"]
    with pytest.raises(InputError):
        run(study, tmp_path / "o", fmt="hdf5")
    with pytest.raises(InputError):
        run(study, tmp_path / "o", kinds=" , ")
    (tmp_path / "bad_link.csv").write_text("patient,contours\nPAT-A,orig-a\n")
    with pytest.raises(InputError, match="patient_id,original_id"):
        convert_contours(tmp_path / "bad_link.csv", root / "dicom", root / "contours", tmp_path / "o", progress=False)
    code, _ = run_cli(["contours", "--link", str(tmp_path / "missing.csv"), "--dicom-dir", str(root / "dicom"),
                       "--contour-dir", str(root / "contours"), "--out", str(tmp_path / "o")])
    assert code == 2


def test_rerun_with_other_kinds_redoes_the_pairs(study, tmp_path):
    out = tmp_path / "out"
    run(study, out, kinds="i")
    result = run(study, out)  # i,o now: pairs that have an o contour lack mask_o, so they are rewritten
    key = sha_key("PAT-A")
    assert {(p.patient_key, p.instance_number, p.status) for p in result.pairs} == {
        (key, 2, Status.SKIPPED), (key, 3, Status.DONE), (key, 5, Status.DONE), (sha_key("PAT-B"), 1, Status.DONE)}
    assert "mask_o" in load_npz(out / key / "0003.npz")
    zarr_out = tmp_path / "zarr"
    run(study, zarr_out, fmt="zarr", kinds="i")
    again = run(study, zarr_out, fmt="zarr")
    assert {p.status for p in again.pairs} == {Status.DONE}
    group = zarr.open_group(store=zarr.storage.LocalStore(zarr_out / f"{key}.zarr", read_only=True), mode="r")
    assert list(group["has_o"][...]) == [False, True, True]
