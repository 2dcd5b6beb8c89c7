"""voxelpipe.apps.lung.segment (segment_lungs, lung_box, crop) and voxelpipe.testing.synthetic.chest_phantom.

Synthetic chest phantoms carry their own truth (lung ellipsoids, trachea, body, nodules); the real-data test
compares the mask of NSCLC LUNG1-001 at 2 mm with the RTSTRUCT's Lung-Left ∪ Lung-Right rasterised on the CT grid
and resampled ("label") to the same 2 mm grid, and checks the GTV lies in the mask.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from voxelpipe.apps.lung.segment import crop, lung_box, segment_lungs
from voxelpipe.core.errors import InputError
from voxelpipe.core.geometry import Geometry
from voxelpipe.core.volume import Volume
from voxelpipe.testing.synthetic import chest_phantom

NSCLC = "nsclc-lung1-001"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def lps(geometry: Geometry, index) -> np.ndarray:
    return (geometry.affine @ np.array([*index, 1.0], dtype=np.float64))[:3]


@pytest.fixture(scope="module")
def phantom():
    volume, info = chest_phantom(seed=3)
    mask = segment_lungs(volume.array, volume.geometry.spacing)
    return volume, info, mask


# ----------------------------------------------------------------------------------------------------------
# the phantom itself
# ----------------------------------------------------------------------------------------------------------
def test_chest_phantom_contents():
    volume, info = chest_phantom(shape=(40, 64, 64), spacing=(4.0, 4.0, 4.0), seed=1)
    assert volume.array.dtype == np.int16 and volume.shape == (40, 64, 64)
    assert volume.geometry.shape == (40, 64, 64)
    np.testing.assert_allclose(volume.geometry.spacing, [4, 4, 4])
    hu = volume.array
    lungs, truth = info["lungs"], info["truth"].astype(bool)
    assert -900 < hu[lungs & (info["nodule_masks"] == 0)].mean() < -800
    assert hu[info["outside_air"]].mean() < -950
    assert (truth & ~lungs).sum() <= (info["nodule_masks"] > 0).sum()
    assert info["trachea"].any() and not (info["trachea"] & truth).any()
    # the lungs reach the top slice; the body runs through every slice
    assert lungs[-1].any() and info["body"][0].any() and info["body"][-1].any()
    # nodule centres: index and LPS agree through the affine; the default nodules are one inner, one juxtapleural
    for index, centre in zip(info["nodule_centres_index"], info["nodule_centres"]):
        np.testing.assert_allclose(lps(volume.geometry, index), centre, atol=1e-9)
    assert list(info["juxtapleural"]) == [False, True]
    np.testing.assert_allclose(info["diameters"], [10.0, 12.0])


def test_chest_phantom_nodules_by_index_and_lps():
    volume, info = chest_phantom(shape=(40, 64, 64), spacing=(4.0, 4.0, 4.0),
                                 nodules=(((20, 32, 18), 8.0), ({"lps": (30.0, 0.0, 10.0)}, 6.0)))
    np.testing.assert_allclose(info["nodule_centres"][0], lps(volume.geometry, (20, 32, 18)))
    np.testing.assert_allclose(info["nodule_centres"][1], [30.0, 0.0, 10.0])
    k, r, c = 20, 32, 18
    assert info["nodule_masks"][k, r, c] == 1 and 0 <= volume.array[k, r, c] < 150
    assert chest_phantom(shape=(20, 32, 32), spacing=(8, 8, 8), nodules=())[1]["nodule_masks"].max() == 0


# ----------------------------------------------------------------------------------------------------------
# segmentation on the phantom
# ----------------------------------------------------------------------------------------------------------
def test_phantom_lungs_found(phantom):
    volume, info, mask = phantom
    assert mask.dtype == np.uint8 and mask.shape == volume.shape and set(np.unique(mask)) <= {0, 1}
    d = dice(mask, info["truth"])
    print(f"phantom Dice {d:.4f}")
    assert d >= 0.95
    # both lungs: the mask has voxels on both sides of the midline, each about its truth volume
    x = np.arange(volume.shape[2])
    left, right = mask[..., x >= volume.shape[2] // 2].sum(), mask[..., x < volume.shape[2] // 2].sum()
    assert 0.8 < left / right < 1.25


def test_phantom_air_outside_trachea_table_and_gas_excluded(phantom):
    volume, info, mask = phantom
    m = mask.astype(bool)
    assert not (m & info["outside_air"]).any()
    assert not (m & info["trachea"]).any()
    assert not (m & ~info["body"]).any()  # the hollow table's air channel is outside the body
    hu = volume.array
    below_lungs = np.flatnonzero(~info["lungs"].any(axis=(1, 2)))  # the stomach gas under the lungs
    assert (hu[below_lungs] < -320).any() and not m[below_lungs].any()


def test_phantom_nodules_inside(phantom):
    volume, info, mask = phantom
    m = mask.astype(bool)
    for i, juxta in enumerate(info["juxtapleural"]):
        nodule = info["nodule_masks"] == i + 1
        fraction = (nodule & m).sum() / nodule.sum()
        print(f"nodule {i} juxtapleural={juxta} inside {fraction:.3f}")
        assert fraction >= 0.95
    assert info["juxtapleural"].any()


def test_lungs_touching_first_and_last_slice_kept(phantom):
    volume, info, mask = phantom
    truth = info["truth"].astype(bool)
    assert truth[-1].any()
    assert dice(mask[-1], truth[-1]) >= 0.9
    # flipped along axis 0: the lungs now touch the first slice
    flipped = segment_lungs(volume.array[::-1], volume.geometry.spacing)
    assert dice(flipped[0], truth[-1]) >= 0.9


def test_joined_lungs_kept_whole():
    volume, info = chest_phantom(seed=5, nodules=())
    hu = volume.array.copy()
    lungs = info["lungs"]
    # an anterior junction: lung-density bridge between the two lungs over a few slices
    rows = np.flatnonzero(lungs[50].any(axis=1))
    cols = np.flatnonzero(lungs[50].any(axis=0))
    r = rows[len(rows) // 4]
    hu[45:55, r - 1:r + 2, cols[0]:cols[-1]] = -850
    mask = segment_lungs(hu, volume.geometry.spacing)
    assert ndimage.label(mask)[1] == 1  # one component
    assert dice(mask & lungs, lungs) >= 0.97


def test_anisotropic_spacing():
    volume, info = chest_phantom(shape=(32, 128, 128), spacing=(5.0, 2.0, 2.0), seed=2)
    mask = segment_lungs(volume.array, volume.geometry.spacing)
    assert dice(mask, info["truth"]) >= 0.95
    assert not (mask.astype(bool) & info["trachea"]).any()


def test_no_lungs_and_bad_input():
    hu = np.full((10, 32, 32), -1000, np.int16)
    hu[:, 4:28, 4:28] = 40  # a body without air inside
    assert segment_lungs(hu, (2, 2, 2)).sum() == 0
    assert segment_lungs(np.full((5, 8, 8), -1000, np.int16), (2, 2, 2)).sum() == 0
    with pytest.raises(InputError):
        segment_lungs(hu[0], (2, 2))
    with pytest.raises(InputError):
        segment_lungs(hu, (2, 0, 2))


# ----------------------------------------------------------------------------------------------------------
# box and crop
# ----------------------------------------------------------------------------------------------------------
def test_lung_box_margin_and_clipping():
    mask = np.zeros((20, 30, 40), np.uint8)
    mask[5:8, 10:12, 30:39] = 1
    box = lung_box(mask, (2.0, 1.0, 0.5), margin_mm=3.0)
    assert box == (slice(3, 10), slice(7, 15), slice(24, 40))  # 2, 3, 6 voxels; clipped at 40
    assert all(isinstance(b.start, int) and isinstance(b.stop, int) for b in box)
    assert lung_box(mask, (1, 1, 1), margin_mm=0) == (slice(5, 8), slice(10, 12), slice(30, 39))
    assert lung_box(np.zeros((4, 5, 6)), (1, 1, 1)) == (slice(0, 4), slice(0, 5), slice(0, 6))


def test_crop_geometry_maps_back(phantom):
    volume, info, mask = phantom
    box = lung_box(mask, volume.geometry.spacing, margin_mm=10.0)
    assert mask[box].sum() == mask.sum()  # the box holds the whole mask
    cut = crop(volume, box)
    starts = [b.start for b in box]
    np.testing.assert_array_equal(cut.array, volume.array[box])
    assert cut.geometry.shape == cut.array.shape
    np.testing.assert_allclose(lps(cut.geometry, (0, 0, 0)), lps(volume.geometry, starts), atol=1e-9)
    np.testing.assert_allclose(cut.geometry.origin, lps(volume.geometry, starts), atol=1e-9)
    np.testing.assert_allclose(lps(cut.geometry, (3, 4, 5)), lps(volume.geometry, np.add(starts, (3, 4, 5))))
    np.testing.assert_allclose(cut.geometry.slice_positions, volume.geometry.slice_positions[box[0]])
    np.testing.assert_allclose(cut.geometry.spacing, volume.geometry.spacing)
    np.testing.assert_allclose(cut.geometry.direction, volume.geometry.direction)
    assert cut.attrs["crop_box"] == [[b.start, b.stop] for b in box]
    # nodule centres keep their LPS position in the crop
    for index, centre in zip(info["nodule_centres_index"], info["nodule_centres"]):
        np.testing.assert_allclose(lps(cut.geometry, np.subtract(index, starts)), centre, atol=1e-9)


def test_crop_oblique_sheared_geometry():
    direction = np.array([[0.0, 0.0, -1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])  # flipped axes
    affine = np.eye(4)
    affine[:3, :3] = direction * [2.5, 0.8, 0.7]
    affine[:3, 0] += [0.0, 0.4, 0.0]  # gantry-tilt shear on the slice axis
    affine[:3, 3] = [10.0, -20.0, 30.0]
    geometry = Geometry((10, 12, 14), (2.5, 0.8, 0.7), affine[:3, 3], direction, np.arange(10) * 2.5, affine)
    volume = Volume(np.arange(10 * 12 * 14, dtype=np.int16).reshape(10, 12, 14), geometry,
                    {"slice_files": [f"f{i}" for i in range(10)]})
    box = (slice(2, 7), slice(3, 12), slice(0, 5))
    cut = crop(volume, box)
    np.testing.assert_allclose(lps(cut.geometry, (0, 0, 0)), lps(geometry, (2, 3, 0)))
    np.testing.assert_allclose(lps(cut.geometry, (4, 8, 4)), lps(geometry, (6, 11, 4)))
    assert cut.attrs["slice_files"] == ["f2", "f3", "f4", "f5", "f6"]
    np.testing.assert_allclose(cut.geometry.slice_positions, [5.0, 7.5, 10.0, 12.5, 15.0])
    with pytest.raises(InputError):
        crop(volume, (slice(0, 10, 2), slice(None), slice(None)))


# ----------------------------------------------------------------------------------------------------------
# real data: NSCLC LUNG1-001 against its RTSTRUCT lung contours
# ----------------------------------------------------------------------------------------------------------
def test_nsclc_lung_mask_matches_rtstruct(shared_data):
    folder = shared_data / NSCLC
    if not (folder / "image").is_dir() or not (folder / "mask_rtstruct" / "1-1.dcm").is_file():
        pytest.skip(f"{folder}: NSCLC LUNG1-001 image/ or mask_rtstruct/1-1.dcm not found")
    from voxelpipe.dicom.rtstruct import read_rtstruct_masks
    from voxelpipe.ops.resample import resample, resample_to
    from voxelpipe.pipelines.series_read import read_series

    ct = read_series(folder / "image")
    ct2 = resample(ct, spacing=(2, 2, 2))  # linear, FOV-preserving
    hu = np.asarray(ct2.array)
    segment_lungs(hu[:40], ct2.geometry.spacing)  # numba compilation/cache load out of the timing
    start = time.perf_counter()
    mask = segment_lungs(hu, ct2.geometry.spacing)
    seconds = time.perf_counter() - start

    masks, _ = read_rtstruct_masks(folder / "mask_rtstruct" / "1-1.dcm", ct.geometry,
                                   rois=["Lung-Left", "Lung-Right", "GTV-1"])
    by_name = {m.attrs["roi_name"].lower(): m.array for m in masks}
    on_grid = {}
    for name, array in by_name.items():  # the CT-grid masks onto the identical 2 mm grid
        moved = resample_to(Volume(np.asarray(array, dtype=np.uint8), ct.geometry), ct2.geometry, order="label")
        assert moved.geometry.shape == ct2.geometry.shape
        np.testing.assert_allclose(moved.geometry.affine, ct2.geometry.affine)
        on_grid[name] = np.asarray(moved.array).astype(bool)
    reference = on_grid["lung-left"] | on_grid["lung-right"]
    gtv = on_grid["gtv-1"]
    d = dice(mask, reference)
    near = ndimage.binary_dilation(mask.astype(bool), ndimage.generate_binary_structure(3, 3))
    gtv_fraction = float((gtv & near).sum() / gtv.sum())
    box = lung_box(mask, ct2.geometry.spacing)
    print(f"NSCLC LUNG1-001 {hu.shape} at 2 mm: Dice {d:.4f}, GTV inside/at border {gtv_fraction:.3f} "
          f"(strictly inside {(gtv & mask.astype(bool)).sum() / gtv.sum():.3f}), segment_lungs {seconds:.2f} s, "
          f"box {[(b.start, b.stop) for b in box]}")
    assert d >= 0.90
    assert gtv_fraction >= 0.90
    assert mask[box].sum() == mask.sum()
    cut = crop(ct2, box)
    np.testing.assert_allclose(lps(cut.geometry, (0, 0, 0)), lps(ct2.geometry, [b.start for b in box]))
