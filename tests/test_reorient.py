"""`reorient` against nibabel's orientation machinery (independent reference): identical arrays and affines for
all 48 axis codes, on axis-aligned and oblique geometries."""
from __future__ import annotations

import numpy as np
import pytest

nib_orientations = pytest.importorskip("nibabel.orientations", reason="nibabel is a test dependency")

from voxelpipe.core.errors import InputError  # noqa: E402
from voxelpipe.core.geometry import Geometry  # noqa: E402
from voxelpipe.core.volume import Volume  # noqa: E402
from voxelpipe.ops.reorient import ALL_CODES, axis_codes, reorient  # noqa: E402

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _rotation(rng: np.random.Generator, degrees: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _volume(direction: np.ndarray, shape=(5, 6, 7), spacing=(2.5, 0.8, 0.6)) -> Volume:
    geometry = Geometry(shape, spacing, (-10.0, 20.0, -30.0), direction)
    data = np.random.default_rng(0).integers(-1000, 1000, size=shape).astype(np.int16)
    return Volume(data, geometry)


AXIAL = np.column_stack([[0, 0, 1], [0, 1, 0], [1, 0, 0]]).astype(float)  # DICOM axial: slices S, rows P, cols L
OBLIQUE = _rotation(np.random.default_rng(3), 17.0) @ AXIAL


def _nibabel(volume: Volume, code: str) -> tuple[np.ndarray, np.ndarray]:
    """nibabel: array and RAS affine after reorienting to ``code``."""
    affine_ras = LPS_TO_RAS @ volume.geometry.affine
    current = nib_orientations.io_orientation(affine_ras)
    target = nib_orientations.axcodes2ornt(tuple(code))
    transform = nib_orientations.ornt_transform(current, target)
    array = nib_orientations.apply_orientation(np.asarray(volume.array), transform)
    affine = affine_ras @ nib_orientations.inv_ornt_aff(transform, volume.array.shape)
    return array, affine


@pytest.mark.parametrize("direction", [AXIAL, OBLIQUE], ids=["axial", "oblique"])
@pytest.mark.parametrize("code", ALL_CODES)
def test_matches_nibabel(direction, code):
    volume = _volume(direction)
    ours = reorient(volume, code)
    array, affine_ras = _nibabel(volume, code)
    np.testing.assert_array_equal(ours.array, array)
    np.testing.assert_allclose(ours.geometry.affine_ras, affine_ras, atol=1e-9)
    assert "".join(nib_orientations.aff2axcodes(ours.geometry.affine_ras)) == code
    assert axis_codes(ours.geometry) == code


def test_axial_dicom_volume_is_spl_and_las_is_x_y_z():
    volume = _volume(AXIAL)
    assert axis_codes(volume.geometry) == "SPL"
    las = reorient(volume, "las")
    assert las.array.shape == (7, 6, 5)
    np.testing.assert_allclose(las.geometry.spacing, [0.6, 0.8, 2.5])
    # index (0,0,0) of LAS is the right-most, posterior-most, inferior-most voxel centre
    corner = las.geometry.affine @ [0, 0, 0, 1]
    assert corner[0] == pytest.approx(-10.0)  # x grows toward L (+x in LPS) as columns did: no flip
    assert corner[1] == pytest.approx(20.0 + 0.8 * 5)  # rows grew toward P; A grows: index 0 = last row
    assert corner[2] == pytest.approx(-30.0)


def test_slice_positions_follow_a_flip_of_the_slice_axis():
    volume = _volume(AXIAL)
    flipped = reorient(volume, "IPL")
    np.testing.assert_allclose(flipped.geometry.slice_positions,
                               -volume.geometry.slice_positions[::-1])


def test_four_dimensional_volume_keeps_its_frame_axis():
    volume = _volume(AXIAL)
    frames = np.stack([volume.array, volume.array + 1])
    moved = reorient(Volume(frames, volume.geometry), "LAS")
    assert moved.array.shape == (2, 7, 6, 5)
    np.testing.assert_array_equal(moved.array[1], reorient(volume, "LAS").array + 1)


@pytest.mark.parametrize("code", ["LA", "LAX", "LLS", "RLS"])
def test_bad_codes_are_rejected(code):
    with pytest.raises(InputError):
        reorient(_volume(AXIAL), code)
