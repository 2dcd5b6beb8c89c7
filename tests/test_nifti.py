"""voxelpipe.stores.nifti: NIfTI ↔ Volume with LPS geometry; SimpleITK reading the same file is the independent
reference (it reports LPS origin/spacing/direction per NIfTI axis i, j, k and a (k, j, i) numpy view)."""
from __future__ import annotations

import gzip
import sys

import numpy as np
import pytest

from voxelpipe.core.errors import InputError
from voxelpipe.core.geometry import Geometry
from voxelpipe.core.volume import Volume

nib = pytest.importorskip("nibabel")


def rotation(degrees_xyz) -> np.ndarray:
    ax, ay, az = np.deg2rad(degrees_xyz)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


OBLIQUE = rotation((20.0, -35.0, 50.0))
SHAPE = (5, 6, 7)
SPACING = (2.0, 0.7, 1.3)
ORIGIN = (10.0, -20.0, 30.0)


def oblique_volume(dtype="int16") -> Volume:
    array = (np.arange(np.prod(SHAPE)) % 97 - 40).reshape(SHAPE).astype(dtype)
    return Volume(array, Geometry(SHAPE, SPACING, ORIGIN, OBLIQUE))


@pytest.mark.parametrize("dtype", ["int16", "uint8", "float32", "float64", "int32"])
def test_round_trip_keeps_array_dtype_and_geometry(tmp_path, dtype):
    from voxelpipe.stores.nifti import read_nifti, write_nifti

    volume = oblique_volume(dtype)
    path = write_nifti(volume, tmp_path / "v.nii.gz")
    back = read_nifti(path)
    assert back.array.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.geometry.affine, volume.geometry.affine, atol=1e-5)
    np.testing.assert_allclose(back.geometry.spacing, SPACING, atol=1e-6)
    np.testing.assert_allclose(back.geometry.origin, ORIGIN, atol=1e-5)
    np.testing.assert_allclose(back.geometry.direction, OBLIQUE, atol=1e-6)
    assert back.geometry.shape == SHAPE


def test_bool_is_written_as_uint8_and_uncompressed_nii_works(tmp_path):
    from voxelpipe.stores.nifti import read_nifti, write_nifti

    mask = oblique_volume().array > 0
    volume = Volume(mask, Geometry(SHAPE, SPACING, ORIGIN, OBLIQUE))
    back = read_nifti(write_nifti(volume, tmp_path / "m.nii"))
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, mask.astype(np.uint8))
    assert (tmp_path / "m.nii").read_bytes()[:2] != b"\x1f\x8b"  # not gzipped


def test_bytes_input_gzipped_or_not(tmp_path):
    from voxelpipe.stores.nifti import nifti_bytes, read_nifti

    volume = oblique_volume()
    data = nifti_bytes(volume)
    assert data[:2] == b"\x1f\x8b" and data == nifti_bytes(volume)  # deterministic (gzip mtime 0)
    for blob in (data, gzip.decompress(data)):
        back = read_nifti(blob, name="member.nii.gz")
        np.testing.assert_array_equal(back.array, volume.array)
        np.testing.assert_allclose(back.geometry.affine, volume.geometry.affine, atol=1e-5)
    with pytest.raises(InputError, match="member.nii.gz"):
        read_nifti(b"not a nifti at all" * 40, name="member.nii.gz")


def test_simpleitk_reads_the_same_lps_geometry_and_voxels(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    from voxelpipe.stores.nifti import write_nifti

    volume = oblique_volume("float32")
    path = str(write_nifti(volume, tmp_path / "oblique.nii.gz"))
    image = sitk.ReadImage(path)
    np.testing.assert_allclose(image.GetOrigin(), ORIGIN, atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), SPACING, atol=1e-5)
    np.testing.assert_allclose(np.array(image.GetDirection()).reshape(3, 3), OBLIQUE, atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), volume.array)
    # a physical point: voxel (1, 2, 3) lands at the same LPS position in both
    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint((1, 2, 3)),
                               (volume.geometry.affine @ [1, 2, 3, 1])[:3], atol=1e-4)


def test_read_a_file_simpleitk_wrote(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    from voxelpipe.stores.nifti import read_nifti

    array_kji = np.random.default_rng(0).integers(-100, 100, (7, 6, 5)).astype(np.int16)  # sitk view (k, j, i)
    image = sitk.GetImageFromArray(array_kji)
    image.SetSpacing((1.5, 0.9, 2.5))
    image.SetOrigin((-12.0, 7.5, 40.0))
    image.SetDirection(rotation((-10.0, 25.0, 70.0)).ravel().tolist())
    path = str(tmp_path / "sitk.nii.gz")
    sitk.WriteImage(image, path)
    volume = read_nifti(path)
    np.testing.assert_array_equal(volume.array, array_kji.transpose(2, 1, 0))
    np.testing.assert_allclose(volume.geometry.spacing, (1.5, 0.9, 2.5), atol=1e-5)
    np.testing.assert_allclose(volume.geometry.origin, (-12.0, 7.5, 40.0), atol=1e-4)
    np.testing.assert_allclose(volume.geometry.direction, rotation((-10.0, 25.0, 70.0)), atol=1e-5)


def test_ras_affine_is_converted_to_lps(tmp_path):
    from voxelpipe.stores.nifti import read_nifti

    affine_ras = np.diag([2.0, 3.0, 4.0, 1.0])
    affine_ras[:3, 3] = (5.0, 6.0, 7.0)
    nib.save(nib.Nifti1Image(np.zeros((2, 3, 4), np.int16), affine_ras), str(tmp_path / "ras.nii.gz"))
    geometry = read_nifti(tmp_path / "ras.nii.gz").geometry
    np.testing.assert_allclose(geometry.origin, (-5.0, -6.0, 7.0))
    np.testing.assert_allclose(geometry.spacing, (2.0, 3.0, 4.0))
    np.testing.assert_allclose(geometry.direction, np.diag([-1.0, -1.0, 1.0]))
    np.testing.assert_allclose(geometry.affine_ras, affine_ras)


def test_four_d_has_the_frame_axis_first(tmp_path):
    from voxelpipe.stores.nifti import read_nifti, write_nifti

    array = np.arange(3 * 4 * 5 * 2, dtype=np.int16).reshape(3, 4, 5, 2)
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(tmp_path / "t.nii.gz"))
    volume = read_nifti(tmp_path / "t.nii.gz")
    assert volume.shape == (2, 3, 4, 5) and volume.geometry.shape == (3, 4, 5)
    np.testing.assert_array_equal(volume.array, np.moveaxis(array, 3, 0))
    back = read_nifti(write_nifti(volume, tmp_path / "t2.nii.gz"))
    np.testing.assert_array_equal(back.array, volume.array)


def test_clear_errors(tmp_path, monkeypatch):
    from voxelpipe.stores import nifti

    with pytest.raises(InputError, match="no such NIfTI file"):
        nifti.read_nifti(tmp_path / "missing.nii.gz")
    with pytest.raises(InputError, match=r"\.nii"):
        nifti.write_nifti(oblique_volume(), tmp_path / "v.nrrd")
    monkeypatch.setitem(sys.modules, "nibabel", None)  # import nibabel now fails
    with pytest.raises(InputError, match=r"install voxelpipe\[nifti\]"):
        nifti.read_nifti(tmp_path / "missing.nii.gz")
    with pytest.raises(InputError, match=r"install voxelpipe\[nifti\]"):
        nifti.write_nifti(oblique_volume(), tmp_path / "v.nii.gz")
