"""masks-to-seg on real data: NSCLC-Radiomics LUNG1-001 (../shared/data/nsclc-lung1-001).

The CT is converted, its RTSTRUCT (lungs, GTV, spinal cord) rasterised with ``masks``, and the masks written back
as a DICOM SEG with ``masks-to-seg``. The SEG must hold exactly those masks as highdicom reads it (slice k =
the source instance at the k-th position along the slice normal, worked out here from the CT files' pydicom
headers) and as voxelpipe's ``masks --seg`` places it on a fresh conversion, and must reference the CT instances.
"""
from __future__ import annotations

import glob
import os

import numpy as np
import pydicom
import pytest

import voxelpipe
from voxelpipe.cli.app import main
from voxelpipe.stores.masks import open_masks

pytestmark = pytest.mark.slow  # 20 s to a minute on a shared 2-core machine (convert twice, masks, masks-to-seg)

hd = pytest.importorskip("highdicom", reason="highdicom (the seg extra) reads the SEG back")

ROIS = ["GTV-1", "Lung-Left", "Lung-Right"]


@pytest.fixture(scope="module")
def nsclc(shared_data, tmp_path_factory) -> dict:
    root = shared_data / "nsclc-lung1-001"
    if not (root / "image").is_dir():
        pytest.skip("nsclc-lung1-001 data not found")
    work = tmp_path_factory.mktemp("seg_write_real")
    rows = voxelpipe.convert([str(root / "image")], out=str(work / "out"), workers=1, progress=False)
    assert [r["status"] for r in rows] == ["done"], rows
    volume = rows[0]["path"]
    assert main(["masks", "--volume", volume, "--rtstruct", str(root / "mask_rtstruct" / "1-1.dcm"),
                 "--roi", *ROIS]) == 0
    masks = {name: np.asarray(array[...]) for name, array in open_masks(volume).items()}
    assert {"GTV-1", "Lung-Left", "Lung-Right"} <= set(masks)
    files = sorted(glob.glob(str(root / "image" / "*")))
    keyed = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        position = float(np.dot([float(v) for v in ds.ImagePositionPatient], np.cross(iop[:3], iop[3:])))
        keyed.append((position, str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID)))
    keyed.sort()
    seg = work / "lungs.dcm"
    key = os.path.basename(volume)[: -len(".zarr")]
    assert main(["masks-to-seg", str(work / "out"), "--key", key, "--masks", ",".join(ROIS),
                 "--dicom", str(root / "image"), "--out", str(seg)]) == 0
    return {"root": root, "work": work, "masks": masks, "uids": [u for _, u, _ in keyed],
            "series": {s for _, _, s in keyed}, "seg": seg}


def test_highdicom_reads_the_rtstruct_masks_back(nsclc):
    seg = hd.seg.segread(nsclc["seg"])
    numbers = list(seg.segment_numbers)
    assert [seg.get_segment_description(n).segment_label for n in numbers] == ROIS
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=nsclc["uids"], segment_numbers=numbers,
                                               assert_missing_frames_are_empty=True)
    for i, name in enumerate(ROIS):
        expected = nsclc["masks"][name] != 0
        assert expected.any()
        np.testing.assert_array_equal(pixels[..., i] != 0, expected, err_msg=name)
    categories = {seg.get_segment_description(n).segment_label: seg.get_segment_description(n) for n in numbers}
    assert categories["GTV-1"].segmented_property_type.meaning == "Neoplasm"
    assert categories["Lung-Left"].segmented_property_type.meaning == "Lung"


def test_seg_references_the_ct_instances(nsclc):
    ds = pydicom.dcmread(nsclc["seg"])
    ct = pydicom.dcmread(next(iter(sorted(glob.glob(str(nsclc["root"] / "image" / "*"))))), stop_before_pixels=True)
    (series,) = ds.ReferencedSeriesSequence
    assert {series.SeriesInstanceUID} == nsclc["series"]
    assert {i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence} <= set(nsclc["uids"])
    assert (ds.StudyInstanceUID, ds.FrameOfReferenceUID, ds.PatientID) == \
        (ct.StudyInstanceUID, ct.FrameOfReferenceUID, ct.PatientID)
    frames = sum(int(nsclc["masks"][n][k].any()) for n in ROIS for k in range(len(nsclc["uids"])))
    assert int(ds.NumberOfFrames) == frames
    for frame in ds.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID in nsclc["uids"]


def test_voxelpipe_places_the_seg_on_a_fresh_conversion(nsclc):
    rows = voxelpipe.convert([str(nsclc["root"] / "image")], out=str(nsclc["work"] / "again"), workers=1,
                             progress=False)
    volume = rows[0]["path"]
    assert main(["masks", "--volume", volume, "--seg", str(nsclc["seg"])]) == 0
    back = open_masks(volume)
    assert sorted(back) == ROIS
    for name in ROIS:
        np.testing.assert_array_equal(np.asarray(back[name][...]), nsclc["masks"][name], err_msg=name)
