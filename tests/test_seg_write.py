"""Masks of a converted volume written as a DICOM SEG (voxelpipe.stores.dicom_seg, ``masks-to-seg``).

Synthetic series are written with pydicom (voxelpipe.testing.synthetic), converted, and given masks drawn here as
numpy arrays: those arrays are the expected segments. The written SEG is read back by highdicom (``segread`` and
``get_pixels_by_source_instance``) and by voxelpipe's SEG reader, and its references are compared with the source
files' own UIDs. Which source instance is which slice is worked out here from the source files' pydicom headers
(ascending position along the slice normal), not from voxelpipe's slice table.
"""
from __future__ import annotations

import csv
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

import voxelpipe
from voxelpipe.cli.app import main
from voxelpipe.core.errors import InputError
from voxelpipe.core.masks import Mask
from voxelpipe.core.volume import Volume
from voxelpipe.dicom.seg import read_seg_masks
from voxelpipe.pipelines.masks import load_slice_uids
from voxelpipe.stores.dicom_seg import masks_to_seg, write_seg
from voxelpipe.stores.masks import open_masks
from voxelpipe.testing.synthetic import SeriesSpec, write_series

hd = pytest.importorskip("highdicom", reason="highdicom (the seg extra) reads the SEG back")

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
SHAPE = (10, 24, 32)


def slice_order(files) -> list[str]:
    """SOPInstanceUIDs of ``files`` by ascending position along their slice normal (pydicom headers only)."""
    keyed = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        keyed.append((float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)), str(ds.SOPInstanceUID)))
    return [uid for _, uid in sorted(keyed)]


def drawn_masks() -> dict[str, np.ndarray]:
    """Two overlapping masks and one empty on most slices; slices 0 and 9 hold nothing."""
    rng = np.random.default_rng(7)
    lung = np.zeros(SHAPE, np.uint8)
    lung[2:6, 3:15, 4:20] = 1
    lung[3] &= (rng.random(SHAPE[1:]) < 0.7).astype(np.uint8)  # a ragged slice
    gtv = np.zeros(SHAPE, np.uint8)
    gtv[5:8, 10:20, 1:9] = 1
    gtv[5, 11, 2] = 0  # a hole
    cord = np.zeros(SHAPE, np.uint8)
    cord[4, 0, 31] = 1  # one voxel in a corner: row/column order matters
    return {"Lung_Left": lung, "GTV": gtv, "Cord": cord}


def build(root: Path, spec: SeriesSpec | None = None, **convert_options) -> dict:
    dicom = root / "dicom"
    files = write_series(dicom, spec or SeriesSpec(n_slices=SHAPE[0], rows=SHAPE[1], columns=SHAPE[2]))
    rows = voxelpipe.convert([str(dicom)], out=str(root / "out"), workers=1, progress=False, **convert_options)
    assert [r["status"] for r in rows] == ["done"], rows
    path = rows[0]["path"]
    key = os.path.basename(path)[: -len(".zarr")]
    masks = drawn_masks()
    voxelpipe.write_masks(path, [Mask(name, array, {"roi_name": name.replace("_", "-"), "color": [255, 0, 0]})
                                 for name, array in masks.items()])
    return {"dicom": dicom, "files": files, "out": root / "out", "volume": path, "key": key, "masks": masks,
            "uids": slice_order(files), "series": str(pydicom.dcmread(files[0]).SeriesInstanceUID)}


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> dict:
    return build(tmp_path_factory.mktemp("seg_write"))


@pytest.fixture(scope="module")
def written(case) -> dict:
    path = case["out"] / "seg.dcm"
    result = masks_to_seg(case["out"], case["key"], path, dicom=case["dicom"])
    return {"path": path, "result": result}


def highdicom_masks(path, uids: list[str]) -> dict[str, np.ndarray]:
    """Segment label -> (slice, row, column) bool array by highdicom, slice k = source instance uids[k]."""
    seg = hd.seg.segread(path)
    numbers = list(seg.segment_numbers)
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=numbers,
                                               assert_missing_frames_are_empty=True)
    labels = [seg.get_segment_description(n).segment_label for n in numbers]
    return {label: pixels[..., i] != 0 for i, label in enumerate(labels)}


def test_highdicom_reads_back_every_mask_voxel_for_voxel(case, written):
    got = highdicom_masks(written["path"], case["uids"])
    assert sorted(got) == sorted(case["masks"])
    for name, expected in case["masks"].items():
        np.testing.assert_array_equal(got[name], expected.astype(bool), err_msg=name)


def test_voxelpipe_reader_reads_back_every_mask(case, written):
    volume = voxelpipe.open_volume(case["volume"])
    masks, placed = read_seg_masks(written["path"], volume.geometry, load_slice_uids(case["volume"]))
    assert {m.name for m in masks} == set(case["masks"])
    for mask in masks:
        np.testing.assert_array_equal(mask.array != 0, case["masks"][mask.name].astype(bool), err_msg=mask.name)
        assert mask.attrs["segmentation_type"] == "BINARY"
        assert mask.attrs["algorithm_type"] == "MANUAL"
    assert all(p.contours_unmatched == 0 for p in placed)


def test_seg_references_its_source_instances(case, written):
    ds = pydicom.dcmread(written["path"])
    assert ds.SOPClassUID == SEG_STORAGE and ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    (series,) = ds.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == case["series"]
    assert {i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence} <= set(case["uids"])
    source = pydicom.dcmread(case["files"][0], stop_before_pixels=True)
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert ds.PatientID == source.PatientID
    # one frame per (segment, slice holding a voxel of it); each frame derived from the instance of its slice
    expected_frames = sum(int(m[k].any()) for m in case["masks"].values() for k in range(SHAPE[0]))
    assert int(ds.NumberOfFrames) == expected_frames == written["result"]["frames"]
    by_position = {}
    for path in case["files"]:
        src = pydicom.dcmread(path, stop_before_pixels=True)
        by_position[tuple(round(float(v), 3) for v in src.ImagePositionPatient)] = str(src.SOPInstanceUID)
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in ds.SegmentSequence}
    seen = set()
    for frame in ds.PerFrameFunctionalGroupsSequence:
        ipp = tuple(round(float(v), 3) for v in frame.PlanePositionSequence[0].ImagePositionPatient)
        referenced = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert referenced == by_position[ipp]
        label = labels[int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)]
        k = case["uids"].index(referenced)
        assert case["masks"][label][k].any()
        seen.add((label, k))
    assert len(seen) == expected_frames


def test_segment_descriptions_codes_and_default_manual(case, written):
    seg = hd.seg.segread(written["path"])
    by_label = {seg.get_segment_description(n).segment_label: seg.get_segment_description(n)
                for n in seg.segment_numbers}
    assert list(by_label) == ["Cord", "GTV", "Lung_Left"]  # every mask, sorted by name
    lung = by_label["Lung_Left"]
    assert lung.SegmentDescription == "Lung-Left"
    assert lung.algorithm_type.value == "MANUAL"
    assert (lung.segmented_property_category.value, lung.segmented_property_type.value) == ("91723000", "39607008")
    assert by_label["GTV"].segmented_property_type.meaning == "Neoplasm"
    assert by_label["Cord"].segmented_property_type.meaning == "Spinal cord"
    assert lung.RecommendedDisplayCIELabValue is not None


def test_cli_writes_chosen_masks_automatic_with_codes(case, tmp_path, capsys):
    out = tmp_path / "chosen.dcm"
    code = main(["masks-to-seg", str(case["out"]), "--key", case["key"], "--masks", "Lung_Left,GTV",
                 "--dicom", str(case["dicom"]), "--out", str(out), "--algorithm", "unet-lungs",
                 "--algorithm-version", "2.1", "--type", "GTV=SCT:4147007:Mass", "--category",
                 "Lung_Left=SCT:85756007:Tissue", "GTV=SCT:49755003:Morphologically Altered Structure"])
    assert code == 0
    frames = sum(int(case["masks"][name][k].any()) for name in ("Lung_Left", "GTV") for k in range(SHAPE[0]))
    assert f"2 segment(s), {frames} frame(s) -> {out}" in capsys.readouterr().out
    seg = hd.seg.segread(out)
    first, second = (seg.get_segment_description(n) for n in (1, 2))
    assert (first.segment_label, second.segment_label) == ("Lung_Left", "GTV")  # in the order asked
    for description in (first, second):
        assert description.algorithm_type.value == "AUTOMATIC"
        (algorithm,) = description.algorithm_identification
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("unet-lungs", "2.1")
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    assert second.segmented_property_type.value == "4147007"
    assert first.segmented_property_category.meaning == "Tissue"
    got = highdicom_masks(out, case["uids"])
    np.testing.assert_array_equal(got["GTV"], case["masks"]["GTV"].astype(bool))
    # and the masks command of voxelpipe places it on a fresh conversion of the same series
    again = voxelpipe.convert([str(case["dicom"])], out=str(tmp_path / "again"), workers=1, progress=False)
    assert main(["masks", "--volume", again[0]["path"], "--seg", str(out)]) == 0
    back = open_masks(again[0]["path"])
    assert sorted(back) == ["GTV", "Lung_Left"]
    for name in back:
        np.testing.assert_array_equal(np.asarray(back[name][...]), case["masks"][name])


def test_source_files_default_to_the_recorded_paths(case, tmp_path):
    result = masks_to_seg(case["out"], case["key"], tmp_path / "s.dcm", masks=["GTV"])
    assert result["segments"] == ["GTV"]
    got = highdicom_masks(tmp_path / "s.dcm", case["uids"])
    np.testing.assert_array_equal(got["GTV"], case["masks"]["GTV"].astype(bool))


def test_write_seg_from_arrays_and_a_volume_path(case, tmp_path):
    by_uid = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in case["files"]}
    sources = [by_uid[u] for u in case["uids"]]
    result = voxelpipe.write_seg(case["volume"], {"GTV": case["masks"]["GTV"]}, sources, tmp_path / "w.dcm")
    assert result["segments"] == ["GTV"] and result["empty_segments"] == []
    got = highdicom_masks(tmp_path / "w.dcm", case["uids"])
    np.testing.assert_array_equal(got["GTV"], case["masks"]["GTV"].astype(bool))


@pytest.mark.parametrize("kind", ["uneven", "tilt"])
def test_uneven_and_tilted_stacks_kept_as_acquired(tmp_path, kind):
    spec = SeriesSpec(n_slices=SHAPE[0], rows=SHAPE[1], columns=SHAPE[2], tilt_deg=12.0 if kind == "tilt" else 0.0)
    if kind == "uneven":
        dicom = tmp_path / "dicom"
        files = write_series(dicom, spec, skip=[3])
        spec_shape = (SHAPE[0] - 1, *SHAPE[1:])
    else:
        files = write_series(tmp_path / "dicom", spec)
        spec_shape = SHAPE
    rows = voxelpipe.convert([str(tmp_path / "dicom")], out=str(tmp_path / "out"), workers=1, progress=False,
                             uneven="keep", tilt="keep")
    path = rows[0]["path"]
    mask = np.zeros(spec_shape, np.uint8)
    mask[1:7, 2:9, 3:30] = 1
    voxelpipe.write_masks(path, [Mask("GTV", mask)])
    key = os.path.basename(path)[: -len(".zarr")]
    masks_to_seg(tmp_path / "out", key, tmp_path / "seg.dcm", dicom=tmp_path / "dicom")
    got = highdicom_masks(tmp_path / "seg.dcm", slice_order(files))
    np.testing.assert_array_equal(got["GTV"], mask.astype(bool))


# ----------------------------------------------------------------------------------------------------------
# refusals
# ----------------------------------------------------------------------------------------------------------
def test_missing_source_instances_are_named_and_nothing_is_written(case, tmp_path, caplog):
    partial = tmp_path / "partial"
    shutil.copytree(case["dicom"], partial)
    removed = sorted(case["files"])[2:4]
    gone = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in removed}
    for f in removed:
        os.remove(partial / os.path.basename(f))
    out = tmp_path / "seg.dcm"
    out.write_bytes(b"earlier")
    with pytest.raises(InputError, match="2 of the volume's 10 source instance") as info:
        masks_to_seg(case["out"], case["key"], out, dicom=partial)
    assert all(uid in str(info.value) for uid in gone)
    code = main(["masks-to-seg", str(case["out"]), "--key", case["key"], "--dicom", str(partial),
                 "--out", str(out)])
    assert code == 2
    assert all(uid in caplog.text for uid in gone)
    assert out.read_bytes() == b"earlier"
    assert sorted(os.listdir(tmp_path)) == ["partial", "seg.dcm"]


def test_without_highdicom_the_error_names_the_extra(case, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(InputError, match=r"needs highdicom: install voxelpipe\[seg\]"):
        masks_to_seg(case["out"], case["key"], tmp_path / "seg.dcm", dicom=case["dicom"])
    assert not (tmp_path / "seg.dcm").exists()


def test_refuses_4d_volumes_unknown_masks_and_off_grid_masks(case, tmp_path):
    volume = voxelpipe.open_volume(case["volume"])
    four_d = Volume(np.zeros((2, *SHAPE), np.int16), volume.geometry)
    with pytest.raises(InputError, match="4-D"):
        write_seg(four_d, {"GTV": np.ones(SHAPE)}, case["files"], tmp_path / "x.dcm")
    with pytest.raises(InputError, match="no mask 'Liver'.*Cord, GTV, Lung_Left"):
        masks_to_seg(case["out"], case["key"], tmp_path / "x.dcm", masks=["GTV", "Liver"])
    with pytest.raises(InputError, match=r"shape \(10, 24, 31\)"):
        write_seg(volume, {"GTV": np.ones((10, 24, 31))}, case["files"], tmp_path / "x.dcm")
    with pytest.raises(InputError, match="every mask is empty"):
        write_seg(volume, {"GTV": np.zeros(SHAPE)}, case["files"], tmp_path / "x.dcm")
    with pytest.raises(InputError, match="9 source file"):
        write_seg(volume, {"GTV": case["masks"]["GTV"]}, case["files"][:9], tmp_path / "x.dcm")
    with pytest.raises(InputError, match="ImagePositionPatient"):  # sources out of slice order
        write_seg(volume, {"GTV": case["masks"]["GTV"]}, case["files"][::-1], tmp_path / "x.dcm")
    with pytest.raises(InputError, match="types given for Liver"):
        write_seg(volume, {"GTV": case["masks"]["GTV"]}, case["files"], tmp_path / "x.dcm",
                  types={"Liver": "SCT:10200004:Liver"})
    assert not (tmp_path / "x.dcm").exists()


def test_refuses_multi_frame_sources_and_resampled_volumes(case, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(case["out"], out)
    table = out / "meta" / f"{case['key']}.slices.csv"
    with open(table, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    rows[4]["frame"] = "1"
    with open(table, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(InputError, match="multi-frame"):
        masks_to_seg(out, case["key"], tmp_path / "x.dcm", dicom=case["dicom"])
    # a missing slice resampled onto an even grid (convert's default): the slices are no source instances
    spec = SeriesSpec(n_slices=SHAPE[0], rows=SHAPE[1], columns=SHAPE[2])
    write_series(tmp_path / "gap", spec, skip=[3])
    converted = voxelpipe.convert([str(tmp_path / "gap")], out=str(tmp_path / "gap_out"), workers=1,
                                  progress=False)
    path = converted[0]["path"]
    shape = voxelpipe.open_volume(path).array.shape
    voxelpipe.write_masks(path, [Mask("GTV", np.ones(shape, np.uint8))])
    key = os.path.basename(path)[: -len(".zarr")]
    with pytest.raises(InputError, match="--uneven keep"):
        masks_to_seg(tmp_path / "gap_out", key, tmp_path / "x.dcm", dicom=tmp_path / "gap")
    assert not (tmp_path / "x.dcm").exists()


def test_cli_usage_errors_and_missing_input_exit_2(tmp_path, caplog, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["masks-to-seg", str(tmp_path), "--out", "s.dcm"])
    assert caught.value.code == 2 and "--key" in capsys.readouterr().err
    with caplog.at_level("ERROR", logger="voxelpipe"):
        assert main(["masks-to-seg", str(tmp_path), "--key", "k", "--out", "s.dcm", "--type", "GTV=Neoplasm"]) == 2
        assert "--type takes MASK=SCHEME:VALUE:MEANING" in caplog.text
        assert main(["masks-to-seg", str(tmp_path / "missing"), "--key", "k", "--out", str(tmp_path / "s.dcm")]) == 2
    assert caplog.records[-1].getMessage().startswith("masks-to-seg: ")
    assert "no converted Zarr volume 'k'" in caplog.text
