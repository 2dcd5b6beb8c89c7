"""Faults of the HTML report and of SEG mask names: control characters in DICOM text, repeated segment labels,
one-slice volumes.

Every study is written here (pydicom via ``voxelpipe.testing.synthetic``, pydicom's own test file CT_small.dcm,
highdicom for SEG objects) and goes through the real convert, masks and report code. The checks use independent
facts: the bytes of the page against the WHATWG HTML rules for characters, the tag structure read with
``html.parser``, pictures decoded with Pillow against the pixel data read with pydicom and windowed here with
numpy, masks against the arrays encoded into the SEG.
"""
from __future__ import annotations

import csv
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

import voxelpipe
from voxelpipe.apps.report import write_report
from voxelpipe.apps.report.html import e
from voxelpipe.cli.app import main
from voxelpipe.core.masks import Mask
from voxelpipe.dicom.seg import segment_mask_names
from voxelpipe.pipelines.masks import add_masks
from voxelpipe.stores.masks import open_masks, write_masks
from voxelpipe.testing.synthetic import SeriesSpec, write_series

from helpers import ct_window, decode_png_data_uri, resave, sha_key

# ----------------------------------------------------------------------------------------------------------
# independent references: HTML characters and structure, pictures, windowing
# ----------------------------------------------------------------------------------------------------------
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def bad_html_characters(text: str) -> list[str]:
    """Code points the WHATWG HTML standard makes a parse error in a document's input stream: controls other
    than ASCII whitespace (C0 less TAB, LF, FF, CR; DEL; C1), noncharacters and surrogates."""
    bad = []
    for ch in text:
        c = ord(ch)
        control = (c < 0x20 and ch not in "\t\n\x0c\r") or 0x7F <= c <= 0x9F
        nonchar = 0xFDD0 <= c <= 0xFDEF or (c & 0xFFFE) == 0xFFFE
        if control or nonchar or 0xD800 <= c <= 0xDFFF:
            bad.append(f"U+{c:04X}")
    return bad


class StrictPage(HTMLParser):
    """Tag structure of a page: every element closed in order, no text outside <html>; image sources kept."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.images: list[dict] = []
        self.text: list[str] = []
        self.attr_values: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.attr_values += [v or "" for _, v in attrs]
        if tag == "img":
            self.images.append(dict(attrs))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)
        if not self.stack and data.strip():
            self.errors.append(f"text outside <html>: {data[:40]!r}")


def check_page(path: str | os.PathLike) -> tuple[str, StrictPage]:
    """The page's text after the checks every report must pass: strict UTF-8, no character the HTML standard
    rejects, balanced tags."""
    raw = Path(path).read_bytes()
    text = raw.decode("utf-8")  # strict: a lone surrogate cannot have been written
    assert not bad_html_characters(text), bad_html_characters(text)[:10]
    assert not [b for b in raw if b < 0x20 and b not in (0x09, 0x0A, 0x0D)]
    page = StrictPage()
    page.feed(text)
    page.close()
    assert not page.errors, page.errors[:5]
    assert page.stack == [], page.stack
    return text, page


def hu_of(path: str | os.PathLike) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


def pictures_of(page: StrictPage, key: str) -> dict[str, list[np.ndarray]]:
    found: dict[str, list[np.ndarray]] = {}
    for attrs in page.images:
        if attrs.get("data-series") == key:
            found.setdefault(attrs["data-kind"], []).append(np.asarray(decode_png_data_uri(attrs["src"])))
    return found


# ----------------------------------------------------------------------------------------------------------
# A: control characters in text never reach the page raw
# ----------------------------------------------------------------------------------------------------------
CONTROLS = "".join(chr(c) for c in range(0x20) if chr(c) not in "\t\n\r") + "\x7f"


def test_control_characters_in_dicom_text_never_reach_the_report_raw(tmp_path):
    """NUL and other control characters in DICOM text (SeriesDescription, PatientName), in file names, failure
    reasons and the output folder's name appear in the report as visible ``\\xNN`` escapes, and the page stays valid
    HTML (no raw C0/C1 control, balanced tags)."""
    dicom = tmp_path / "dicom"
    description = "arterial\x00phase\x07 <b>&\x1b[31m"
    spec = SeriesSpec(n_slices=4, rows=16, columns=16, series_description=description, seed=1)
    for path in write_series(dicom / "ct", spec):
        resave(path, lambda ds: setattr(ds, "PatientName", "Doe\x00^John\x01"))
    dup = SeriesSpec(n_slices=5, rows=16, columns=16, seed=2, series_number=3, series_description="dup\x08")
    write_series(dicom / "dup", dup, duplicate=[2])  # convert fails it
    (dicom / "notes\x01\x1b[1m\x7f.dcm").write_text("not DICOM\n")  # an unreadable file with controls in its name
    out = tmp_path / "out\x02put"
    rows = voxelpipe.convert([str(dicom)], out=str(out), workers=1, progress=False)
    assert sorted(str(r["status"]) for r in rows) == ["done", "failed"]
    # a failure reason quoting a raw value (any exception text may): every C0 control and DEL in it
    summary = next(p for p in out.glob("summary_*.csv") if p.name != "summary_all.csv")
    with open(summary, newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    for row in table:
        if row["status"] == "failed":
            row["reason"] = "bad value 'x" + CONTROLS + "y' in (0008,103E)"
    with open(summary, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    (out / "summary_all.csv").unlink(missing_ok=True)

    html_path = write_report(str(out), str(tmp_path / "report.html"), samples=5, progress=False)
    text, page = check_page(html_path)
    shown = "".join(page.text)
    # each control shown as a backslash escape of its code
    assert "arterial\\x00phase\\x07 <b>&\\x1b[31m" in shown
    assert "x" + "".join(f"\\x{ord(c):02x}" for c in CONTROLS) + "y" in shown
    assert "notes\\x01\\x1b[1m\\x7f.dcm" in shown
    assert "out\\x02put" in shown
    assert "phase\\x07 &lt;b&gt;&amp;\\x1b" in text  # markup in a value is still escaped


@pytest.mark.parametrize("raw,shown", [
    ("a\x00b", "a\\x00b"), ("\x1b[0m", "\\x1b[0m"), ("tab\tnew\nline\rcr", "tab\tnew\nline\rcr"),
    ("del\x7f", "del\\x7f"), ("c1\x85\x9f", "c1\\x85\\x9f"), ("form\x0cfeed", "form\\x0cfeed"),
    ("bytes\udcff\udc80", "bytes\\xff\\x80"), ("non\ufdd0\uffff", "non\\ufdd0\\uffff"),
    ("<a href='x'>&amp;", "&lt;a href=&#x27;x&#x27;&gt;&amp;amp;"), ("Grüße \u2400", "Grüße \u2400"),
])
def test_report_text_shows_control_characters_visibly(raw, shown):
    """Every text the report writes (cells, captions, attributes, title) goes through one escape that keeps
    tab, newline and CR and shows C0 and C1 controls, DEL, undecodable bytes and noncharacters as backslash
    escapes."""
    assert e(raw) == shown
    assert not bad_html_characters(e(raw))
    e(raw).encode("utf-8")  # never a lone surrogate


# ----------------------------------------------------------------------------------------------------------
# C: one-slice volumes show their native plane, never 1-voxel strips
# ----------------------------------------------------------------------------------------------------------
# image orientation (row cosine, column cosine) -> the view that is the slice itself
ORIENTATIONS = {
    "axial": [1, 0, 0, 0, 1, 0],
    "coronal": [1, 0, 0, 0, 0, -1],
    "sagittal": [0, 1, 0, 0, 0, -1],
}


def _one_slice_series(folder: Path, view: str) -> tuple[str, str]:
    spec = SeriesSpec(n_slices=1, rows=24, columns=40, spacing=(2.5, 0.8, 0.8), seed=7,
                      series_description=f"one {view} slice")
    (path,) = write_series(folder, spec)
    resave(path, lambda ds: setattr(ds, "ImageOrientationPatient", ORIENTATIONS[view]))
    return path, sha_key(spec.series_uid)


@pytest.mark.parametrize("view", list(ORIENTATIONS))
def test_one_slice_volume_shows_its_native_plane_not_strips(tmp_path, view):
    """A one-slice volume (axial, coronal or sagittal) shows the slice itself, windowed, and no picture
    1 voxel thick (the other planes and the MIP are left out with a note); a mask overlay of it is drawn on the
    same plane."""
    path, key = _one_slice_series(tmp_path / "dicom", view)
    out = tmp_path / "out"
    (row,) = voxelpipe.convert([str(tmp_path / "dicom")], out=str(out), workers=1, progress=False)
    assert row["shape"] == "1x24x40"
    blob = np.zeros((1, 24, 40), np.uint8)
    blob[0, 5:15, 8:30] = 1
    write_masks(row["path"], [Mask("blob", blob, {})])
    text, page = check_page(write_report(str(out), progress=False))
    pictures = pictures_of(page, key)
    expected = ct_window(hu_of(path))  # every orientation here keeps the stored rows and columns on screen
    assert set(pictures) == {view, "overlay"}, set(pictures)
    (native,) = pictures[view]
    np.testing.assert_array_equal(native, expected)
    (overlay,) = pictures["overlay"]
    assert overlay.shape == (24, 40, 3)
    inside = overlay[5:15, 8:30]
    assert (inside[..., 0] != inside[..., 1]).any()  # the outline is drawn where the mask is
    np.testing.assert_array_equal(overlay[20:, :, 0], expected[20:])  # and the slice elsewhere
    assert "1 voxel thick" in text


def test_ct_small_single_file_report_shows_the_slice(tmp_path):
    """pydicom's one-file CT_small.dcm gets one axial picture equal to its pixels windowed W400/L40, no strip."""
    source = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(source)
    assert [round(float(v)) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    shutil.copy(source, tmp_path / "ct.dcm")
    (row,) = voxelpipe.convert([str(tmp_path / "ct.dcm")], out=str(tmp_path / "out"), workers=1, progress=False)
    text, page = check_page(write_report(str(tmp_path / "out"), progress=False))
    pictures = pictures_of(page, row["series_key"])
    assert set(pictures) == {"axial"}
    (axial,) = pictures["axial"]
    assert min(axial.shape) > 1
    np.testing.assert_array_equal(axial, ct_window(hu_of(source)))


def test_volume_one_voxel_across_a_row_axis_shows_no_strip(tmp_path):
    """A volume 1 voxel across on any array axis (here one image row) gets no 1-voxel picture: only the plane
    across that axis."""
    hu = np.zeros((12, 1, 30), np.int16)
    hu[:, 0, :] = np.arange(30)[None] * 10 + np.arange(12)[:, None]
    spec = SeriesSpec(n_slices=12, rows=1, columns=30, spacing=(1.0, 1.0, 1.0), seed=3)
    write_series(tmp_path / "dicom", spec, hu=hu)
    (row,) = voxelpipe.convert([str(tmp_path / "dicom")], out=str(tmp_path / "out"), workers=1, progress=False)
    _, page = check_page(write_report(str(tmp_path / "out"), progress=False))
    pictures = pictures_of(page, sha_key(spec.series_uid))
    assert set(pictures) == {"coronal"}  # the array's row axis is P: the plane across it is coronal
    (coronal,) = pictures["coronal"]
    assert coronal.shape == (12, 30)  # superior up: the last slice on the top row
    np.testing.assert_array_equal(coronal, ct_window(hu[::-1, 0]))


# ----------------------------------------------------------------------------------------------------------
# B: repeated SEG segment labels
# ----------------------------------------------------------------------------------------------------------
LABELS = {1: "Neoplasm", 2: "Neoplasm Secondary", 3: "Neoplasm Secondary"}
EXPECTED_NAMES = {1: "Neoplasm", 2: "Neoplasm_Secondary_2", 3: "Neoplasm_Secondary_3"}


def _seg_study(tmp_path: Path, segmentation_type: str, labels: dict[int, str]):
    """A converted 6-slice CT and a highdicom SEG of it: segment n covers a box of its own (label maps cannot
    overlap; binary ones do). Returns (volume path, SEG path, number -> mask in the volume's slice order)."""
    hd = pytest.importorskip("highdicom", reason="highdicom (test extra) builds the SEG objects")  # optional
    spec = SeriesSpec(n_slices=6, rows=20, columns=24, seed=11)
    paths = write_series(tmp_path / "dicom", spec)
    sources = [pydicom.dcmread(p) for p in paths]
    for ds in sources:  # patient and study tags highdicom copies into the SEG (type 2: may be empty)
        for keyword in ("PatientBirthDate", "PatientSex", "ReferringPhysicianName", "StudyID", "AccessionNumber",
                        "StudyTime"):
            if keyword not in ds:
                setattr(ds, keyword, "")
    (row,) = voxelpipe.convert([str(tmp_path / "dicom")], out=str(tmp_path / "out"), workers=1, progress=False)
    # the volume's slice k is the source whose pixels it holds (independent of any position rule)
    volume = voxelpipe.open_volume(row["path"])
    image = np.asarray(volume.array[...])
    order = [next(k for k in range(len(sources)) if np.array_equal(image[k], hu_of(paths[i]))) for i in range(6)]
    boxes = {1: (slice(1, 4), slice(2, 9), slice(3, 11)), 2: (slice(2, 6), slice(9, 16), slice(5, 14)),
             3: (slice(0, 2), slice(12, 19), slice(15, 23))}
    if segmentation_type == "BINARY":
        boxes[3] = (slice(1, 5), slice(5, 12), slice(8, 20))  # overlaps 1 and 2
    encoded = {n: np.zeros((6, 20, 24), bool) for n in labels}
    for n in labels:
        encoded[n][boxes[n]] = True
    descriptions = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=label, segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for n, label in labels.items()]
    if segmentation_type == "BINARY":
        pixels = np.stack([encoded[n] for n in labels], axis=-1).astype(np.uint8)
    else:
        pixels = np.zeros((6, 20, 24), np.uint8)
        for n in labels:
            pixels[encoded[n]] = n
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=segmentation_type,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=90,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="test", manufacturer_model_name="test",
        software_versions="0", device_serial_number="0", omit_empty_frames=False)
    seg_path = tmp_path / "seg.dcm"
    seg.save_as(seg_path)
    in_volume = {}
    for n, mask in encoded.items():
        placed = np.zeros_like(mask, dtype=np.uint8)
        for i, k in enumerate(order):
            placed[k] = mask[i]
        in_volume[n] = placed
    return row["path"], seg_path, in_volume


@pytest.mark.parametrize("segmentation_type", ["BINARY", "LABELMAP"])
def test_seg_repeated_labels_are_named_by_segment_number(tmp_path, segmentation_type):
    """Segments of one SEG sharing a label get masks named ``<label>_<SegmentNumber>`` (every one of them), a
    unique label keeps its plain name, and each mask holds exactly the voxels encoded for its segment."""
    volume, seg_path, encoded = _seg_study(tmp_path, segmentation_type, LABELS)
    rows = add_masks(volume, seg=seg_path)
    assert {int(r["roi_number"]): r["mask_name"] for r in rows if r["status"] == "done"} == EXPECTED_NAMES
    stored = open_masks(volume)
    assert set(stored) == set(EXPECTED_NAMES.values())
    for number, name in EXPECTED_NAMES.items():
        assert stored[name].attrs["roi_number"] == number and stored[name].attrs["roi_name"] == LABELS[number]
        np.testing.assert_array_equal(stored[name][...], encoded[number], err_msg=name)


def test_seg_repeated_label_names_do_not_depend_on_the_segments_asked_for(tmp_path):
    """A segment's mask name is the same whether every segment or only it is asked for (``--roi``), so reruns
    with other selections replace, never duplicate, its mask."""
    volume, seg_path, encoded = _seg_study(tmp_path, "BINARY", LABELS)
    rows = add_masks(volume, seg=seg_path, rois=["3"])
    assert [(int(r["roi_number"]), r["mask_name"]) for r in rows if r["status"] == "done"] == \
        [(3, "Neoplasm_Secondary_3")]
    add_masks(volume, seg=seg_path)
    stored = open_masks(volume)
    assert set(stored) == set(EXPECTED_NAMES.values())
    np.testing.assert_array_equal(stored["Neoplasm_Secondary_3"][...], encoded[3])


def test_dcmqi_partial_overlaps_with_repeated_labels_named_by_segment_number(shared_data, tmp_path):
    """The real dcmqi SEG partial_overlaps.dcm relabelled so that segments 2, 3 and 4, 5 share labels: the masks
    are named by segment number and hold as many voxels as the shipped label maps give each segment."""
    sitk = pytest.importorskip("SimpleITK")
    root = shared_data / "dcmqi-seg" / "segmentations"
    if not (root / "partial_overlaps.dcm").is_file():
        pytest.skip("dcmqi-seg partial_overlaps.dcm not found")
    (row,) = voxelpipe.convert([str(root / "ct-3slice")], out=str(tmp_path / "out"), workers=1, progress=False)
    relabel = {2: "ORANGE", 3: "ORANGE", 4: "BLUE", 5: "BLUE"}

    def edit(ds):
        for item in ds.SegmentSequence:
            item.SegmentLabel = relabel.get(int(item.SegmentNumber), item.SegmentLabel)

    seg = resave(str(root / "partial_overlaps.dcm"), edit, new_path=str(tmp_path / "relabelled.dcm"))
    rows = add_masks(row["path"], seg=seg)
    names = {int(r["roi_number"]): r["mask_name"] for r in rows}
    assert names == {1: "GREEN", 2: "ORANGE_2", 3: "ORANGE_3", 4: "BLUE_4", 5: "BLUE_5"}
    counts = {}
    for k in (1, 2, 3):  # dcmqi's label maps, one per group of non-overlapping segments
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(root / f"partial_overlaps-{k}.nrrd")))
        for n in np.unique(labels[labels > 0]):
            counts[int(n)] = int((labels == n).sum())
    stored = open_masks(row["path"])
    assert {n: int(np.count_nonzero(stored[name][...])) for n, name in names.items()} == counts


def test_seg_mask_names_rule_case_and_collisions():
    """Labels equal ignoring case count as repeats (masks/Liver and masks/liver would be one folder on a
    case-insensitive file system); an empty label is ``segment_<number>``; a name taken on the volume gets a
    further ``_2``."""
    segments = [(1, "Liver"), (2, "liver"), (4, ""), (5, "GTV 1"), (7, "Kidney")]
    assert segment_mask_names(segments, taken=["Kidney"]) == {1: "Liver_1", 2: "liver_2", 4: "segment_4",
                                                             5: "GTV_1", 7: "Kidney_2"}
    assert segment_mask_names(segments, selected=[2, 7]) == {2: "liver_2", 7: "Kidney"}


def test_terminal_lines_show_control_characters_visibly(tmp_path, capsys):
    """A failed series whose file name holds a terminal escape (ESC [ 2 J clears the screen) is printed by
    `convert` with the escape written as ``\\x1b``: no raw control character reaches the terminal."""
    folder = tmp_path / "d"
    folder.mkdir()
    source = get_testdata_file("CT_small.dcm")
    resave(source, lambda ds: setattr(ds, "PixelSpacing", ["nan", "0.5"]), str(folder / "evil\x1b[2J.dcm"))
    assert main(["--no-progress", "convert", str(folder), "--out", str(tmp_path / "out"), "--workers", "1"]) == 1
    printed = capsys.readouterr().out
    assert "failed" in printed and "evil\\x1b[2J.dcm" in printed, printed
    assert not any(ch in printed for ch in "\x00\x1b\x7f"), repr(printed)
