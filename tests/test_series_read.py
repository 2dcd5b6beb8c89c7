"""voxelpipe.pipelines.series_read.read_series: the same volume as convert (open_volume) and as pydicom's
apply_modality_lut, with the slice order and per-slice files."""
from __future__ import annotations

import os
import random

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

import voxelpipe
from voxelpipe.core.errors import VoxelpipeError
from voxelpipe.pipelines.series_read import read_series
from voxelpipe.testing.synthetic import SeriesSpec, write_petct_study, write_series


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("series_read")
    return write_petct_study(root / "study", ct_shape=(12, 20, 24), pet_shape=(10, 12, 14),
                             pet_spacing=(4.0, 3.0, 3.0), sphere_radius_mm=5.0, pet_orientation="flipped",
                             mask="none")


def _pydicom_volume(paths):
    """Reference: every file decoded by pydicom and rescaled, stacked by position along the normal."""
    slices = []
    for path in paths:
        ds = pydicom.dcmread(path)
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        slices.append((float(np.array([float(v) for v in ds.ImagePositionPatient]) @ normal),
                       apply_modality_lut(ds.pixel_array, ds), path))
    slices.sort(key=lambda s: s[0])
    return np.stack([s[1] for s in slices]), [s[2] for s in slices]


@pytest.mark.parametrize("which", ["ct", "pet"])
def test_matches_convert_and_pydicom(study, tmp_path, which):
    paths = study[f"{which}_files"][:]
    random.Random(1).shuffle(paths)
    volume = read_series(paths)
    reference, ordered_paths = _pydicom_volume(paths)
    assert volume.attrs["slice_files"] == ordered_paths
    assert volume.shape == reference.shape
    np.testing.assert_array_equal(volume.numpy(), reference.astype(volume.dtype))
    # PET: per-slice slopes that are not integers -> float32; CT: integral -> int16 (convert's rule)
    assert volume.dtype == (np.float32 if which == "pet" else np.int16)
    assert len(set(volume.attrs["rescale_slopes"])) > (1 if which == "pet" else 0)
    assert volume.attrs["sop_instance_uids"] == [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                                                 for p in ordered_paths]

    rows = voxelpipe.convert([study[f"{which}_dir"]], out=str(tmp_path / "out"), workers=1, progress=False)
    assert rows[0]["status"] == "done", rows[0]["reason"]
    converted = voxelpipe.open_volume(rows[0]["path"])
    assert converted.dtype == volume.dtype
    np.testing.assert_array_equal(converted.numpy(), volume.numpy())
    np.testing.assert_allclose(converted.geometry.affine, volume.geometry.affine, atol=1e-9)
    for key in ("series_key", "series_instance_uid", "frame_of_reference_uid", "modality", "spacing", "origin",
                "slice_positions"):
        assert converted.attrs[key] == volume.attrs[key], key


def test_geometry_of_the_flipped_pet(study):
    volume = read_series(study["pet_dir"])  # a folder is expanded
    g = volume.geometry
    # slice k, row r, column c lies at ipp0 + k·dz·normal + r·dy·col_cos + c·dx·row_cos (write_petct_study)
    iop = np.array(study["pet_iop"])
    expected = (np.array(study["pet_ipp0"]) + 2 * study["pet_spacing"][0] * np.cross(iop[:3], iop[3:])
                + 3 * study["pet_spacing"][1] * iop[3:] + 5 * study["pet_spacing"][2] * iop[:3])
    np.testing.assert_allclose((g.affine @ [2, 3, 5, 1])[:3], expected, atol=1e-3)


def test_errors_are_voxelpipe_errors(tmp_path):
    paths = write_series(tmp_path / "s", SeriesSpec(n_slices=4, rows=8, columns=8), duplicate=[1])
    # a duplicated position with a new SOPInstanceUID: convert fails the series, read_series raises the same
    with pytest.raises(VoxelpipeError, match="slice positions"):
        read_series(paths)
    with pytest.raises(VoxelpipeError):
        read_series([])
    (tmp_path / "junk").write_bytes(b"not dicom")
    with pytest.raises(VoxelpipeError):
        read_series([str(tmp_path / "junk")])
    assert os.path.exists(paths[0])
