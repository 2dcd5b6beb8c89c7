"""DICOM SEG → masks on a converted volume's grid (voxelpipe.dicom.seg).

Real data: the dcmqi SEG examples (../shared/data/dcmqi-seg). Their source images are converted with voxelpipe,
every SEG is placed, and the masks are compared with the shipped .nrrd label maps. The nrrd voxels are mapped
onto our (slice, row, column) grid independently of voxelpipe: each nrrd voxel's LPS point (SimpleITK origin,
direction, spacing) is located among the source DICOM slices read here with pydicom (slice = the source image
whose plane holds the point, ordered by position along the normal; row/column from that image's
ImagePositionPatient, ImageOrientationPatient and PixelSpacing), so no axis order is assumed.

What is compared (the nrrds are label maps, so overlapping segments cannot share one):
- liver.dcm (1 segment) == liver_seg.nrrd == 1;
- partial_overlaps.dcm (5 segments, some overlapping): dcmqi ships one label map per non-overlapping group,
  partial_overlaps-1.nrrd holds labels 1, 4, 5, -2 holds 2, -3 holds 3; segment n == (the nrrd holding n) == n;
- 23x38x3 / 24x38x3 seg/label.seg == nrrd/label.nrrd == 1, on the single-frame image/ conversion and (24x38x3)
  on the enhanced multi-frame multiframe/mf.dcm conversion;
- the label-map SEGs sparse-labelmap-*.dcm (frames for slices 0 and 2 only) == sparse_labelmap_*_seg.nrrd == 1
  (the ppv5 nrrd fills the absent middle slice with the padding value 5, which is no segment).

Synthetic SEGs are written with pydicom in this file; the expected masks are the arrays put into them.
"""
from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from voxelpipe.core.errors import BadTagValueError, DicomReadError, InputError, MissingTagError, NotDicomError
from voxelpipe.core.geometry import Geometry, geometry_from_slices
from voxelpipe.dicom.seg import (
    FrameOfReferenceMismatchError,
    NotSegError,
    SegGridError,
    SegMissingTagError,
    SegTagValueError,
    dicom_lab_to_rgb,
)
from voxelpipe.dicom.seg import read_seg_masks as parse_seg_masks
from voxelpipe.pipelines.masks import load_slice_uids, report_rows
from voxelpipe.testing.synthetic import object_dataset

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def read_seg_masks(*args, volume: str = "", **kwargs):
    """The parser's masks, and the masks pipeline's report rows for its placed segments."""
    masks, placed = parse_seg_masks(*args, **kwargs)
    return masks, report_rows(placed, volume)

REPORT_KEYS = {"volume", "source", "source_kind", "roi_name", "mask_name", "roi_number", "status", "voxels",
               "volume_ml", "contours", "contours_unmatched", "contours_skipped", "note"}


# ----------------------------------------------------------------------------------------------------------
# real data: dcmqi examples
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dcmqi(shared_data, tmp_path_factory) -> Path:
    root = shared_data / "dcmqi-seg" / "segmentations"
    if not root.is_dir():
        pytest.skip("dcmqi-seg data not found")
    return root


@pytest.fixture(scope="module")
def converted(dcmqi, tmp_path_factory) -> dict[str, dict]:
    """The source images converted with voxelpipe: name -> {path, volume, uids, sources}."""
    from voxelpipe import convert, open_volume

    out_root = tmp_path_factory.mktemp("seg_convert")
    result = {}
    for name, folder in [("ct", "ct-3slice"), ("23", "23x38x3/image"), ("24", "24x38x3/image"),
                         ("24mf", "24x38x3/multiframe")]:
        out = out_root / name
        rows = convert([str(dcmqi / folder)], out=str(out), workers=1, progress=False)
        assert [r["status"] for r in rows] == ["done"], rows
        volume = open_volume(rows[0]["path"])
        result[name] = {"path": rows[0]["path"], "volume": volume,
                        "sources": sorted(glob.glob(str(dcmqi / folder / "*.dcm")))}
    return result


def _source_grid(paths: list[str]) -> list[dict]:
    """Frames of the source images (single- or multi-frame) sorted along the normal, read with pydicom:
    ipp, row cosine, column cosine, pixel spacing, SOPInstanceUID."""
    frames = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if "PerFrameFunctionalGroupsSequence" in ds:
            shared = ds.SharedFunctionalGroupsSequence[0]
            iop = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
            spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
            ipps = [[float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient]
                    for f in ds.PerFrameFunctionalGroupsSequence]
        else:
            iop = [float(v) for v in ds.ImageOrientationPatient]
            spacing = [float(v) for v in ds.PixelSpacing]
            ipps = [[float(v) for v in ds.ImagePositionPatient]]
        for ipp in ipps:
            frames.append({"ipp": np.array(ipp), "row_cos": np.array(iop[:3]), "col_cos": np.array(iop[3:]),
                           "spacing": spacing, "uid": str(ds.SOPInstanceUID), "rows": int(ds.Rows),
                           "cols": int(ds.Columns)})
    normal = np.cross(frames[0]["row_cos"], frames[0]["col_cos"])
    return sorted(frames, key=lambda f: float(f["ipp"] @ normal))


def _nrrd_on_grid(nrrd_path: Path, frames: list[dict]) -> np.ndarray:
    """The nrrd's values on the (slice, row, column) grid of ``frames``; every grid voxel must be hit once."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(nrrd_path))
    values = sitk.GetArrayFromImage(image)  # numpy order = reversed ITK index order
    size = np.array(image.GetSize())
    origin = np.array(image.GetOrigin())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = np.array(image.GetSpacing())
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).reshape(-1, 3)
    points = origin + (index * spacing) @ direction.T  # LPS, mm (ITK's physical space)
    normal = np.cross(frames[0]["row_cos"], frames[0]["col_cos"])
    positions = np.array([f["ipp"] @ normal for f in frames])
    along = points @ normal
    slice_of = np.argmin(np.abs(along[:, None] - positions[None, :]), axis=1)
    assert np.allclose(along, positions[slice_of], atol=1e-3)
    ipp = np.array([frames[k]["ipp"] for k in slice_of])
    d = points - ipp
    row = np.einsum("ij,j->i", d, frames[0]["col_cos"]) / frames[0]["spacing"][0]
    col = np.einsum("ij,j->i", d, frames[0]["row_cos"]) / frames[0]["spacing"][1]
    assert np.allclose(row, np.round(row), atol=1e-3) and np.allclose(col, np.round(col), atol=1e-3)
    row, col = np.round(row).astype(int), np.round(col).astype(int)
    grid = np.full((len(frames), frames[0]["rows"], frames[0]["cols"]), -1, dtype=np.int64)
    flat_values = values[tuple(index[:, a] for a in (2, 1, 0))]
    grid[slice_of, row, col] = flat_values
    assert grid.min() >= 0, "the nrrd does not cover the grid"
    return grid


def _place(converted, name, seg_path, **kwargs):
    entry = converted[name]
    volume = entry["volume"]
    return read_seg_masks(seg_path, volume.geometry, load_slice_uids(entry["path"]),
                          frame_of_reference_uid=volume.attrs["frame_of_reference_uid"], **kwargs)


def test_load_slice_uids_follow_slice_order(converted):
    for name, entry in converted.items():
        frames = _source_grid(entry["sources"])
        assert load_slice_uids(entry["path"]) == [f["uid"] for f in frames], name


def test_load_slice_uids_absent(tmp_path):
    assert load_slice_uids(tmp_path / "data" / "nothing.zarr") is None
    assert load_slice_uids(tmp_path / "volumes.h5") is None


def test_liver_matches_nrrd(converted, dcmqi):
    masks, report = _place(converted, "ct", dcmqi / "liver.dcm")
    truth = _nrrd_on_grid(dcmqi / "liver_seg.nrrd", _source_grid(converted["ct"]["sources"]))
    assert [m.name for m in masks] == ["Liver"]
    mask = masks[0]
    assert mask.array.dtype == np.uint8 and mask.array.shape == converted["ct"]["volume"].geometry.shape
    np.testing.assert_array_equal(mask.array, (truth == 1).astype(np.uint8))
    assert mask.attrs["roi_name"] == "Liver" and mask.attrs["roi_number"] == 1
    assert mask.attrs["source_kind"] == "SEG" and mask.attrs["segmentation_type"] == "BINARY"
    assert mask.attrs["source_sop_instance_uid"] == str(pydicom.dcmread(dcmqi / "liver.dcm").SOPInstanceUID)
    assert mask.attrs["segment_category"] == "Tissue" and mask.attrs["segment_type"] == "Liver"
    assert mask.attrs["algorithm_type"] == "SEMIAUTOMATIC"
    assert mask.attrs["cielab"] == [41661, 41167, 40792]
    assert mask.attrs["color"] == [221, 130, 101]  # Slicer's liver colour, which dcmqi encoded
    voxels = int((truth == 1).sum())
    assert mask.attrs["voxels"] == voxels
    assert mask.attrs["volume_ml"] == pytest.approx(voxels * 0.810547 ** 2 * 1.0 / 1000, rel=1e-6)
    (row,) = report
    assert set(row) == REPORT_KEYS
    assert row["status"] == "done" and row["contours"] == 3 and row["contours_unmatched"] == 0
    assert row["mask_name"] == "Liver" and row["voxels"] == voxels


def test_partial_overlaps_match_nrrds(converted, dcmqi):
    masks, report = _place(converted, "ct", dcmqi / "partial_overlaps.dcm")
    frames = _source_grid(converted["ct"]["sources"])
    truths = [_nrrd_on_grid(dcmqi / f"partial_overlaps-{k}.nrrd", frames) for k in (1, 2, 3)]
    assert [m.attrs["roi_number"] for m in masks] == [1, 2, 3, 4, 5]
    assert [m.name for m in masks] == ["GREEN", "ORANGE", "PURPLE", "LIGHT_BLUE", "DARK_BLUE"]
    for mask in masks:
        n = mask.attrs["roi_number"]
        holders = [t for t in truths if (t == n).any()]
        assert len(holders) == 1, n
        np.testing.assert_array_equal(mask.array, (holders[0] == n).astype(np.uint8), err_msg=mask.name)
    by_number = {m.attrs["roi_number"]: m.array for m in masks}
    # overlapping segments kept as separate masks: 1, 2 and 3 overlap pairwise
    assert all(np.count_nonzero(by_number[a] & by_number[b]) > 0 for a, b in [(1, 2), (1, 3), (2, 3)])
    assert [r["contours"] for r in report] == [1, 1, 3, 1, 1]
    assert all(r["status"] == "done" for r in report)


@pytest.mark.parametrize("case,volume", [("23x38x3", "23"), ("24x38x3", "24"), ("24x38x3", "24mf")])
def test_small_cases_match_nrrd(converted, dcmqi, case, volume):
    masks, report = _place(converted, volume, dcmqi / case / "seg" / "label.seg")
    truth = _nrrd_on_grid(dcmqi / case / "nrrd" / "label.nrrd", _source_grid(converted[volume]["sources"]))
    (mask,) = masks
    np.testing.assert_array_equal(mask.array, (truth == 1).astype(np.uint8))
    (row,) = report
    assert row["contours"] == 3 and row["status"] == "done"
    if case == "24x38x3":  # its first and last frames are empty
        assert "2 empty frame(s)" in row["note"]


@pytest.mark.parametrize("name", ["noppv", "ppv5"])
def test_label_map_seg_matches_nrrd(converted, dcmqi, name):
    masks, report = _place(converted, "24", dcmqi / f"sparse-labelmap-{name}.dcm")
    truth = _nrrd_on_grid(dcmqi / f"sparse_labelmap_{name}_seg.nrrd", _source_grid(converted["24"]["sources"]))
    (mask,) = masks
    assert mask.name == "Liver" and mask.attrs["segmentation_type"] == "LABELMAP"
    np.testing.assert_array_equal(mask.array, (truth == 1).astype(np.uint8))
    background, liver = report
    assert background["roi_number"] == 0 and background["status"] == "skipped" and "background" in background["note"]
    assert liver["status"] == "done" and liver["contours"] == 2
    (mask,), _ = _place(converted, "24", dcmqi / f"sparse-labelmap-{name}.dcm", segments=["background"])
    expected = np.zeros_like(mask.array)
    expected[[0, 2]] = truth[[0, 2]] == 0  # asked for by name: pixel value 0 of the encoded frames
    np.testing.assert_array_equal(mask.array, expected)


def test_real_masks_write_into_the_volume(converted, dcmqi, tmp_path):
    from voxelpipe.stores.masks import open_masks, write_masks

    copy = tmp_path / "data" / os.path.basename(converted["23"]["path"])
    shutil.copytree(converted["23"]["path"], copy)
    masks, _ = _place(converted, "23", dcmqi / "23x38x3" / "seg" / "label.seg")
    assert write_masks(copy, masks) == ["Liver"]
    stored = open_masks(copy)["Liver"]
    np.testing.assert_array_equal(stored[...], masks[0].array)
    assert stored.attrs["color"] == [221, 130, 101]


def test_real_fallback_to_referenced_instances(converted, dcmqi, tmp_path):
    ds = pydicom.dcmread(dcmqi / "liver.dcm")
    for item in ds.PerFrameFunctionalGroupsSequence:
        del item.PlanePositionSequence
    path = tmp_path / "liver_no_positions.dcm"
    ds.save_as(path)
    expected, _ = _place(converted, "ct", dcmqi / "liver.dcm")
    masks, report = _place(converted, "ct", path)
    np.testing.assert_array_equal(masks[0].array, expected[0].array)
    assert report[0]["contours"] == 3
    # without the slice UIDs nothing can be placed
    masks, report = read_seg_masks(path, converted["ct"]["volume"].geometry)
    assert report[0]["status"] == "done" and report[0]["contours_unmatched"] == 3
    assert "no slice UIDs" in report[0]["note"] and not masks[0].array.any()


def test_real_other_grid_and_frame_of_reference(converted, dcmqi):
    volume = converted["24"]["volume"]
    with pytest.raises(SegGridError) as info:  # 23 columns on a 24-column volume
        read_seg_masks(dcmqi / "23x38x3" / "seg" / "label.seg", volume.geometry)
    assert "label.seg" in str(info.value) and "Columns" in str(info.value)
    with pytest.raises(FrameOfReferenceMismatchError) as info:
        _place(converted, "24", dcmqi / "23x38x3" / "seg" / "label.seg")
    message = str(info.value)
    assert "FrameOfReferenceUID (0020,0052)" in message
    assert str(pydicom.dcmread(dcmqi / "23x38x3" / "seg" / "label.seg").FrameOfReferenceUID) in message


def test_not_a_seg(converted, tmp_path):
    source = converted["23"]["sources"][0]
    with pytest.raises(NotSegError) as info:
        read_seg_masks(source, converted["23"]["volume"].geometry)
    assert isinstance(info.value, BadTagValueError) and source in str(info.value)
    assert "SOPClassUID (0008,0016)" in str(info.value)


# ----------------------------------------------------------------------------------------------------------
# synthetic SEGs
# ----------------------------------------------------------------------------------------------------------
FOR_UID = "1.2.826.0.1.3680043.10.1492.777.1"
SLICE_UIDS = [f"1.2.826.0.1.3680043.10.1492.777.2.{k}" for k in range(5)]
THETA = np.deg2rad(20.0)
ROW_COS = np.array([np.cos(THETA), np.sin(THETA), 0.0])  # direction of increasing column
COL_COS = np.array([-np.sin(THETA), np.cos(THETA), 0.0])  # direction of increasing row
NORMAL = np.cross(ROW_COS, COL_COS)
SHAPE = (5, 6, 7)  # 6 × 7 = 42 bits per frame: bit-packed frames do not end on byte boundaries
SPACING = (2.0, 0.5, 0.75)
ORIGIN = np.array([10.0, -20.0, 30.0])


def _geometry() -> Geometry:
    return Geometry(SHAPE, SPACING, ORIGIN, np.column_stack([NORMAL, COL_COS, ROW_COS]))


def _ipp(k: float, row: float = 0.0, col: float = 0.0) -> list[float]:
    return (ORIGIN + k * SPACING[0] * NORMAL + row * SPACING[1] * COL_COS + col * SPACING[2] * ROW_COS).tolist()


def _write_seg(path, frames: list[dict], segments: list[dict], seg_type: str = "BINARY", max_fraction: int = 255,
               for_uid: str = FOR_UID, rows: int = SHAPE[1], cols: int = SHAPE[2], iop=None,
               pixel_spacing=None, per_frame_orientation: bool = False) -> str:
    """A SEG written with pydicom. ``frames``: dicts with ``segment``, ``pixels`` (rows × cols) and optionally
    ``ipp`` (absent: no PlanePositionSequence) and ``ref`` (ReferencedSOPInstanceUID)."""
    ds = object_dataset(SEG_STORAGE, "SEG", sop_uid=generate_uid())
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = for_uid
    ds.SegmentationType = seg_type
    if seg_type == "FRACTIONAL":
        ds.SegmentationFractionalType = "PROBABILITY"
        ds.MaximumFractionalValue = max_fraction
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.NumberOfFrames = len(frames)
    bits = 1 if seg_type == "BINARY" else 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    items = []
    for s in segments:
        item = Dataset()
        item.SegmentNumber = s["number"]
        item.SegmentLabel = s["label"]
        item.SegmentAlgorithmType = "MANUAL"
        if "lab" in s:
            item.RecommendedDisplayCIELabValue = s["lab"]
        for keyword, meaning in (("SegmentedPropertyCategoryCodeSequence", "Tissue"),
                                 ("SegmentedPropertyTypeCodeSequence", s["label"])):
            code = Dataset()
            code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "123", "SCT", meaning
            setattr(item, keyword, Sequence([code]))
        items.append(item)
    ds.SegmentSequence = Sequence(items)
    orientation = Dataset()
    orientation.ImageOrientationPatient = list(iop if iop is not None else [*ROW_COS, *COL_COS])
    measures = Dataset()
    measures.PixelSpacing = list(pixel_spacing if pixel_spacing is not None else SPACING[1:])
    measures.SliceThickness = SPACING[0]
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    if not per_frame_orientation:
        shared.PlaneOrientationSequence = Sequence([orientation])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for f in frames:
        item = Dataset()
        ident = Dataset()
        ident.ReferencedSegmentNumber = f["segment"]
        item.SegmentIdentificationSequence = Sequence([ident])
        if "ipp" in f:
            position = Dataset()
            position.ImagePositionPatient = [round(v, 6) for v in f["ipp"]]
            item.PlanePositionSequence = Sequence([position])
        if per_frame_orientation:
            item.PlaneOrientationSequence = Sequence([orientation])
        if "ref" in f:
            source = Dataset()
            source.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
            source.ReferencedSOPInstanceUID = f["ref"]
            derivation = Dataset()
            derivation.SourceImageSequence = Sequence([source])
            item.DerivationImageSequence = Sequence([derivation])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    stack = np.stack([np.asarray(f["pixels"], dtype=np.uint8) for f in frames])
    if seg_type == "BINARY":  # DICOM bit packing: frames concatenated, least significant bit first
        data = np.packbits(stack.ravel() != 0, bitorder="little").tobytes()
    else:
        data = stack.tobytes()
    ds.PixelData = data + b"\0" * (len(data) % 2)
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def _blob(seed: int, p: float = 0.4) -> np.ndarray:
    return (np.random.default_rng(seed).random(SHAPE[1:]) < p).astype(np.uint8)


def _frames_for(seg_arrays: dict[int, dict[int, np.ndarray]], refs: bool = True) -> list[dict]:
    return [{"segment": n, "pixels": pixels, "ipp": _ipp(k), **({"ref": SLICE_UIDS[k]} if refs else {})}
            for n, by_slice in seg_arrays.items() for k, pixels in by_slice.items()]


SEGMENTS = [{"number": 1, "label": "Tumour A", "lab": [41661, 41167, 40792]},
            {"number": 2, "label": "Tumour/B", "lab": [43803, 26565, 37722]}]


def _expected(by_slice: dict[int, np.ndarray]) -> np.ndarray:
    out = np.zeros(SHAPE, dtype=np.uint8)
    for k, pixels in by_slice.items():
        out[k] |= pixels
    return out


@pytest.fixture
def binary_case():
    """Segment 1 on slices 0, 1, 3 and an empty frame on slice 4; segment 2 on slices 1 and 2, on slice 1 a
    superset of segment 1's pixels (overlap)."""
    a1 = _blob(1)
    superset = a1.copy()
    superset[:, :3] = 1
    return {1: {0: _blob(2), 1: a1, 3: _blob(4), 4: np.zeros(SHAPE[1:], np.uint8)},
            2: {1: superset, 2: _blob(3, 0.7)}}


def test_binary_bit_packed_with_overlap_and_empty_frame(tmp_path, binary_case):
    path = _write_seg(tmp_path / "seg.dcm", _frames_for(binary_case), SEGMENTS)
    masks, report = read_seg_masks(path, _geometry(), SLICE_UIDS, frame_of_reference_uid=FOR_UID)
    assert [m.name for m in masks] == ["Tumour_A", "Tumour_B"]
    for mask, n in zip(masks, (1, 2)):
        np.testing.assert_array_equal(mask.array, _expected(binary_case[n]))
        assert mask.array.dtype == np.uint8 and mask.attrs["roi_number"] == n
    assert np.count_nonzero(masks[0].array & masks[1].array) == int(binary_case[1][1].sum()) > 0
    assert masks[0].attrs["color"] == [221, 130, 101] and masks[1].attrs["color"] == [128, 174, 128]
    assert report[0]["contours"] == 4 and "1 empty frame(s)" in report[0]["note"]
    assert report[1]["contours"] == 2
    voxel_ml = SPACING[0] * SPACING[1] * SPACING[2] / 1000
    for row, n in zip(report, (1, 2)):
        assert set(row) == REPORT_KEYS
        voxels = int(_expected(binary_case[n]).sum())
        assert row["voxels"] == voxels and row["volume_ml"] == pytest.approx(voxels * voxel_ml)
        assert row["status"] == "done" and row["contours_unmatched"] == 0


def test_shuffled_frames_give_the_same_masks(tmp_path, binary_case):
    frames = _frames_for(binary_case)
    order = np.random.default_rng(5).permutation(len(frames))
    path = _write_seg(tmp_path / "shuffled.dcm", [frames[i] for i in order], SEGMENTS)
    masks, _ = read_seg_masks(path, _geometry(), SLICE_UIDS)
    for mask, n in zip(masks, (1, 2)):
        np.testing.assert_array_equal(mask.array, _expected(binary_case[n]))


def test_single_frame_seg(tmp_path):
    pixels = _blob(9)
    path = _write_seg(tmp_path / "one.dcm", [{"segment": 1, "pixels": pixels, "ipp": _ipp(2)}], SEGMENTS[:1])
    (mask,), (row,) = read_seg_masks(path, _geometry())
    expected = np.zeros(SHAPE, np.uint8)
    expected[2] = pixels
    np.testing.assert_array_equal(mask.array, expected)
    assert row["contours"] == 1


def test_fractional_threshold_and_scaled(tmp_path):
    rng = np.random.default_rng(11)
    values = {1: rng.integers(0, 201, SHAPE[1:]), 3: rng.integers(0, 201, SHAPE[1:])}
    values[1][0, :3] = [99, 100, 101]  # around the 0.5 cut of a maximum of 200
    frames = [{"segment": 1, "pixels": v, "ipp": _ipp(k)} for k, v in values.items()]
    path = _write_seg(tmp_path / "fractional.dcm", frames, SEGMENTS[:1], seg_type="FRACTIONAL", max_fraction=200)
    (mask,), _ = read_seg_masks(path, _geometry())
    expected = np.zeros(SHAPE, np.uint8)
    for k, v in values.items():
        expected[k] = v / 200 >= 0.5
    np.testing.assert_array_equal(mask.array, expected)
    assert mask.array[1, 0, :3].tolist() == [0, 1, 1]
    assert mask.attrs["segmentation_type"] == "FRACTIONAL" and mask.attrs["fractional_type"] == "PROBABILITY"
    assert mask.attrs["fractional_threshold"] == 0.5 and mask.attrs["maximum_fractional_value"] == 200
    (mask,), _ = read_seg_masks(path, _geometry(), threshold=0.25)
    for k, v in values.items():
        expected[k] = v / 200 >= 0.25
    np.testing.assert_array_equal(mask.array, expected)
    (mask,), _ = read_seg_masks(path, _geometry(), fractional="scaled")
    expected = np.zeros(SHAPE, np.uint8)
    for k, v in values.items():
        expected[k] = np.floor(v * 255 / 200 + 0.5)  # halves round up
    np.testing.assert_array_equal(mask.array, expected)
    assert mask.attrs["fractional_mode"] == "scaled"
    with pytest.raises(InputError):
        read_seg_masks(path, _geometry(), fractional="soft")


def test_frame_without_position_uses_referenced_instance(tmp_path):
    a, b = _blob(21), _blob(22)
    frames = [{"segment": 1, "pixels": a, "ipp": _ipp(0), "ref": SLICE_UIDS[0]},
              {"segment": 1, "pixels": b, "ref": SLICE_UIDS[3]}]
    path = _write_seg(tmp_path / "refs.dcm", frames, SEGMENTS[:1])
    (mask,), (row,) = read_seg_masks(path, _geometry(), SLICE_UIDS)
    expected = np.zeros(SHAPE, np.uint8)
    expected[0], expected[3] = a, b
    np.testing.assert_array_equal(mask.array, expected)
    assert row["contours"] == 2 and row["contours_unmatched"] == 0
    (mask,), (row,) = read_seg_masks(path, _geometry())  # no slice UIDs: the second frame is placed nowhere
    expected[3] = 0
    np.testing.assert_array_equal(mask.array, expected)
    assert row["contours"] == 1 and row["contours_unmatched"] == 1 and "1 frame(s) placed on no slice" in row["note"]
    (mask,), (row,) = read_seg_masks(path, _geometry(), ["9.9.9"] * 5)  # the instance is not in the volume
    assert row["contours_unmatched"] == 1 and "not a slice of the volume" in row["note"]


def test_position_wins_over_a_disagreeing_reference(tmp_path):
    a = _blob(23)
    path = _write_seg(tmp_path / "disagree.dcm", [{"segment": 1, "pixels": a, "ipp": _ipp(1), "ref": SLICE_UIDS[3]}],
                      SEGMENTS[:1])
    (mask,), (row,) = read_seg_masks(path, _geometry(), SLICE_UIDS)
    np.testing.assert_array_equal(mask.array[1], a)
    assert mask.array.sum() == a.sum()
    assert "position and referenced instance point to different slices" in row["note"]


def test_frames_off_every_slice_are_counted(tmp_path):
    a = _blob(31)
    frames = [{"segment": 1, "pixels": a, "ipp": _ipp(1)},
              {"segment": 1, "pixels": _blob(32), "ipp": _ipp(7)},  # two steps above the last slice
              {"segment": 1, "pixels": _blob(33), "ipp": _ipp(-1)},  # one step below the first
              {"segment": 1, "pixels": _blob(35), "ipp": _ipp(3.3)}]  # 0.3 step off slice 3: placed there
    path = _write_seg(tmp_path / "off.dcm", frames, SEGMENTS[:1])
    (mask,), (row,) = read_seg_masks(path, _geometry())
    expected = np.zeros(SHAPE, np.uint8)
    expected[1], expected[3] = a, _blob(35)
    np.testing.assert_array_equal(mask.array, expected)
    assert row["contours"] == 2 and row["contours_unmatched"] == 2
    assert "above the volume's slices" in row["note"] and "below the volume's slices" in row["note"]
    assert "off their slice's plane" in row["note"]


def test_two_frames_of_a_segment_on_one_slice_are_combined(tmp_path):
    a, b = _blob(41), _blob(42)
    path = _write_seg(tmp_path / "twice.dcm", [{"segment": 1, "pixels": a, "ipp": _ipp(2)},
                                                {"segment": 1, "pixels": b, "ipp": _ipp(2)}], SEGMENTS[:1])
    (mask,), (row,) = read_seg_masks(path, _geometry())
    np.testing.assert_array_equal(mask.array[2], a | b)
    assert "1 frame(s) on a slice already holding" in row["note"]


def test_segment_without_frames_and_selection(tmp_path):
    segments = SEGMENTS + [{"number": 3, "label": "Tumour A"}]  # no frames, label repeats segment 1's
    path = _write_seg(tmp_path / "sel.dcm", [{"segment": 1, "pixels": _blob(51), "ipp": _ipp(0)}], segments)
    masks, report = read_seg_masks(path, _geometry(), taken=["Tumour_A"])
    assert [m.name for m in masks] == ["Tumour_A_1", "Tumour_B", "Tumour_A_3"]  # a repeated label: _<number>
    assert [r["status"] for r in report] == ["done", "done", "done"]
    assert "segment has no frames" in report[2]["note"] and not masks[2].array.any()
    masks, report = read_seg_masks(path, _geometry(), segments=["tumour/b"], volume="v.zarr")
    assert [m.attrs["roi_number"] for m in masks] == [2]
    assert [r["status"] for r in report] == ["skipped", "done", "skipped"]
    assert report[0]["contours_skipped"] == 1 and report[0]["mask_name"] == ""
    assert all(r["volume"] == "v.zarr" for r in report)
    masks, _ = read_seg_masks(path, _geometry(), segments=["3"])
    assert [m.attrs["roi_number"] for m in masks] == [3]


def test_gantry_tilt_volume(tmp_path):
    """Slices of a tilted acquisition: origins step along z, the planes are tilted (sheared affine)."""
    tilt = np.deg2rad(15)
    row_cos, col_cos = np.array([1.0, 0, 0]), np.array([0, np.cos(tilt), -np.sin(tilt)])
    ipps = np.array([[0.0, 0.0, 3.0 * k] for k in range(4)])
    iop = [*row_cos, *col_cos]
    geometry = geometry_from_slices(ipps, iop, (0.5, 0.75), (4, SHAPE[1], SHAPE[2]))
    a = _blob(61)
    frames = [{"segment": 1, "pixels": a, "ipp": ipps[2].tolist()}]
    path = _write_seg(tmp_path / "tilt.dcm", frames, SEGMENTS[:1], iop=iop, pixel_spacing=[0.5, 0.75])
    (mask,), _ = read_seg_masks(path, geometry)
    np.testing.assert_array_equal(mask.array[2], a)
    assert mask.array.sum() == a.sum()
    shifted = [{"segment": 1, "pixels": a, "ipp": (ipps[2] + 0.5 * col_cos).tolist()}]  # one row off
    path = _write_seg(tmp_path / "tilt_shift.dcm", shifted, SEGMENTS[:1], iop=iop, pixel_spacing=[0.5, 0.75])
    with pytest.raises(SegGridError):
        read_seg_masks(path, geometry)


@pytest.mark.parametrize("change,tag", [
    ({"frames_ipp": (0, 2, 0)}, "ImagePositionPatient (0020,0032)"),  # in-plane origin two rows off
    ({"frames_ipp": (0, 0, 0.5)}, "ImagePositionPatient (0020,0032)"),  # half a column off
    ({"pixel_spacing": [0.5, 0.8]}, "PixelSpacing (0028,0030)"),
    ({"iop": [1, 0, 0, 0, 1, 0]}, "ImageOrientationPatient (0020,0037)"),
    ({"per_frame_orientation": True, "iop": [*COL_COS, *ROW_COS]}, "ImageOrientationPatient (0020,0037)"),
    ({"rows": SHAPE[1] + 1}, "Rows, Columns"),
])
def test_other_grid_is_a_clear_error(tmp_path, change, tag):
    change = dict(change)
    offset = change.pop("frames_ipp", (0, 0, 0))
    rows = change.get("rows", SHAPE[1])
    frames = [{"segment": 1, "pixels": np.ones((rows, SHAPE[2]), np.uint8), "ipp": _ipp(1 + offset[0], *offset[1:])}]
    path = _write_seg(tmp_path / "grid.dcm", frames, SEGMENTS[:1], **change)
    with pytest.raises(SegGridError) as info:
        read_seg_masks(path, _geometry())
    assert isinstance(info.value, BadTagValueError)
    assert path in str(info.value) and tag in str(info.value) and "another grid" in str(info.value)


def test_wrong_frame_of_reference(tmp_path):
    path = _write_seg(tmp_path / "for.dcm", [{"segment": 1, "pixels": _blob(71), "ipp": _ipp(0)}], SEGMENTS[:1],
                      for_uid="1.2.3.4.5")
    with pytest.raises(FrameOfReferenceMismatchError) as info:
        read_seg_masks(path, _geometry(), frame_of_reference_uid=FOR_UID)
    message = str(info.value)
    assert path in message and "FrameOfReferenceUID (0020,0052)" in message and "1.2.3.4.5" in message
    assert FOR_UID in message and isinstance(info.value, BadTagValueError)
    read_seg_masks(path, _geometry())  # not checked when the caller does not give the volume's


def test_bad_segment_number_in_a_frame(tmp_path):
    frames = [{"segment": 1, "pixels": _blob(81), "ipp": _ipp(0)}, {"segment": 7, "pixels": _blob(82), "ipp": _ipp(1)}]
    path = _write_seg(tmp_path / "badnum.dcm", frames, SEGMENTS)
    with pytest.raises(SegTagValueError) as info:
        read_seg_masks(path, _geometry())
    message = str(info.value)
    assert path in message and "ReferencedSegmentNumber (0062,000B) of frame 2" in message and "7" in message


def test_no_segments(tmp_path):
    path = _write_seg(tmp_path / "noseg.dcm", [{"segment": 1, "pixels": _blob(91), "ipp": _ipp(0)}], [])
    with pytest.raises(SegMissingTagError) as info:
        read_seg_masks(path, _geometry())
    assert isinstance(info.value, MissingTagError) and "SegmentSequence (0062,0002)" in str(info.value)
    assert path in str(info.value)


def test_not_dicom_and_not_seg(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not DICOM\n" * 50)
    with pytest.raises(NotDicomError):
        read_seg_masks(text, _geometry())
    path = _write_seg(tmp_path / "ct.dcm", [{"segment": 1, "pixels": _blob(92), "ipp": _ipp(0)}], SEGMENTS[:1])
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.save_as(path)
    with pytest.raises(NotSegError) as info:
        read_seg_masks(path, _geometry())
    assert isinstance(info.value, DicomReadError) and "1.2.840.10008.5.1.4.1.1.2" in str(info.value)


def test_cielab_to_srgb_matches_scikit_image():
    from skimage.color import lab2rgb

    rng = np.random.default_rng(3)
    for _ in range(50):  # L* 30..90, a*, b* within ±60: no clipping differences between the two
        lab = [int(rng.integers(19661, 58982)), *(int(v) for v in rng.integers(17990, 47546, 2))]
        reference = lab2rgb([[lab[0] / 65535 * 100, lab[1] / 65535 * 255 - 128, lab[2] / 65535 * 255 - 128]])
        expected = np.round(np.clip(reference[0], 0, 1) * 255).astype(int).tolist()
        got = dicom_lab_to_rgb(lab)
        assert max(abs(g - e) for g, e in zip(got, expected)) <= 1, (lab, got, expected)
