"""``resample`` / ``resample_to`` / the resample kernels against independent references.

* ``scipy.ndimage.affine_transform(src, matrix, output_shape, order=1|0, mode="constant", cval=fill)``: same
  index convention (output index o -> input index ``matrix @ o``), on seeded random volumes and random index
  affines (oblique rotation, anisotropic scaling, shift). Linear: max abs error <= 1e-4 × value range; nearest:
  exactly equal (random matrices put no sample exactly on a .5 tie, so the tie rule does not matter there;
  the tie rule itself, round half up, is checked on a constructed case).
* geometry from first principles: the documented grid convention written out here, an analytic linear ramp
  (linear interpolation reproduces it exactly), integer shifts, a one-voxel-thin plane.
* SimpleITK ``Resample`` on the NSCLC CT from ../shared/data (skipped when absent), same output grid.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

import voxelpipe.ops.resample as resample_module
from voxelpipe.core.errors import InputError
from voxelpipe.core.geometry import Geometry
from voxelpipe.core.volume import Volume
from voxelpipe.kernels.resample import (
    ORDER_LINEAR,
    ORDER_NEAREST,
    resample_affine,
    resample_separable,
)
from voxelpipe.ops.resample import index_matrix, resample, resample_to

SHAPE = (20, 24, 28)
DTYPES = ["float32", "int16", "uint8"]
SCIPY_ORDER = {"linear": 1, "nearest": 0}


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
def rotation(rng: np.random.Generator) -> np.ndarray:
    """A random proper rotation (QR of a Gaussian matrix)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q @ np.diag(np.sign(np.diag(r)))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def geometry_from_affine(shape, affine) -> Geometry:
    """A Geometry whose affine is ``affine`` (spacing = column lengths, direction = unit columns)."""
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    return Geometry(shape, spacing, affine[:3, 3], affine[:3, :3] / spacing, affine=affine)


def oblique_geometry(shape, rng, spacing=(2.5, 0.8, 0.7), shear=0.0) -> Geometry:
    """An oblique input grid; ``shear`` tilts axis 0 (gantry tilt: the slice step leaves the normal)."""
    direction = rotation(rng)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(spacing)
    affine[:3, 0] += shear * spacing[0] * direction[:, 1]
    affine[:3, 3] = rng.uniform(-200, 200, 3)
    return Geometry(shape, spacing, affine[:3, 3], direction, affine=affine)


def random_volume(dtype: str, shape=SHAPE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "float32":
        return rng.normal(0.0, 100.0, shape).astype(np.float32)
    if dtype == "int16":
        return rng.integers(-1024, 3072, shape).astype(np.int16)
    # uint8: a blobby label map with labels 0..3 (smooth noise, quantised), like a multi-label mask
    noise = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    return np.digitize(noise, np.quantile(noise, [0.55, 0.75, 0.9])).astype(np.uint8)


def random_index_affine(rng, in_shape, out_shape, oblique: bool = True) -> np.ndarray:
    """Output index -> input index: rotation × anisotropic scaling, output centre near the input centre."""
    scale = rng.uniform(0.6, 1.6, 3)
    part = (rotation(rng) if oblique else np.eye(3)) @ np.diag(scale)
    matrix = np.eye(4)
    matrix[:3, :3] = part
    centre_out = (np.asarray(out_shape) - 1) / 2
    centre_in = (np.asarray(in_shape) - 1) / 2 + rng.uniform(-3, 3, 3)
    matrix[:3, 3] = centre_in - part @ centre_out
    return matrix


def scipy_reference(src: np.ndarray, matrix: np.ndarray, out_shape, order: str, fill: float) -> np.ndarray:
    return ndimage.affine_transform(src.astype(np.float64), matrix, output_shape=out_shape,
                                    order=SCIPY_ORDER[order], mode="constant", cval=fill)


def label_reference(src: np.ndarray, matrix: np.ndarray, out_shape, fill: float) -> np.ndarray:
    """Per label: scipy linear of the 0/1 mask; the largest weight wins if >= 0.5 (ties: smaller label)."""
    inside = scipy_reference(np.ones_like(src, dtype=np.float64), matrix, out_shape, "linear", 0.0) > 0.5
    best = np.zeros(out_shape, dtype=src.dtype)
    best_w = np.zeros(out_shape)
    for label in np.unique(src):
        if label == 0:
            continue
        w = scipy_reference((src == label).astype(np.float64), matrix, out_shape, "linear", 0.0)
        better = w > best_w  # ascending labels: on a tie the smaller label stays
        best[better] = label
        best_w[better] = w[better]
    best[best_w < 0.5] = 0
    best[~inside] = fill
    return best


def assert_linear_close(actual: np.ndarray, expected: np.ndarray, src: np.ndarray) -> None:
    value_range = float(src.max()) - float(src.min())
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4 * value_range)


def inside_fraction(matrix, in_shape, out_shape) -> float:
    ones = scipy_reference(np.ones(in_shape), matrix, out_shape, "linear", 0.0)
    return float(np.mean(ones > 0.5))


# ----------------------------------------------------------------------------------------------------------
# against scipy.ndimage.affine_transform
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ["linear", "nearest"])
def test_resample_to_oblique_matches_scipy(seed, dtype, order):
    rng = np.random.default_rng(seed)
    src = random_volume(dtype, seed=seed)
    out_shape = (22, 19, 30)
    matrix = random_index_affine(rng, SHAPE, out_shape)
    assert 0.2 < inside_fraction(matrix, SHAPE, out_shape) < 0.95  # edges and interior both exercised
    geometry = oblique_geometry(SHAPE, rng)
    reference = geometry_from_affine(out_shape, geometry.affine @ matrix)
    np.testing.assert_allclose(index_matrix(geometry, reference), matrix, rtol=0, atol=1e-9)
    fill = 9.0 if dtype == "uint8" else -7.0  # an integer that fits the nearest output
    out = resample_to(Volume(src, geometry), reference, order=order, fill=fill)
    expected = scipy_reference(src, matrix, out_shape, order, fill)
    assert out.shape == out_shape
    if order == "linear":
        assert out.dtype == np.float32
        assert_linear_close(out.array, expected, src)
    else:
        assert out.dtype == src.dtype
        np.testing.assert_array_equal(out.array, expected.astype(src.dtype))


@pytest.mark.parametrize("seed", [4, 5])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ["linear", "nearest"])
def test_kernel_general_matches_scipy_with_flips(seed, dtype, order):
    """The general kernel directly, matrices with a reflection (negative determinant) and large shifts."""
    rng = np.random.default_rng(seed)
    src = random_volume(dtype, seed=seed)
    out_shape = (17, 31, 23)
    matrix = random_index_affine(rng, SHAPE, out_shape)
    matrix[:3, 1] *= -1  # reflect output axis 1 ...
    matrix[:3, 3] += matrix[:3, :3] @ np.array([0.0, -(out_shape[1] - 1), 0.0])  # ... about its centre
    out = np.empty(out_shape, np.float32 if order == "linear" else src.dtype)
    code = ORDER_LINEAR if order == "linear" else ORDER_NEAREST
    resample_affine(src, matrix, out, code, 3.0, 0, out_shape[0])
    expected = scipy_reference(src, matrix, out_shape, order, 3.0)
    if order == "linear":
        assert_linear_close(out, expected, src)
    else:
        np.testing.assert_array_equal(out, expected.astype(src.dtype))


@pytest.mark.parametrize("seed", [6, 7, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_separable_path_equals_general_path_and_scipy(seed, dtype):
    """Diagonal 3×3 part (scaling, flips) + shifts: separable kernel == general kernel == scipy."""
    rng = np.random.default_rng(seed)
    src = random_volume(dtype, seed=seed)
    out_shape = tuple(int(v) for v in rng.integers(12, 40, 3))
    scale = rng.uniform(0.4, 2.5, 3) * rng.choice([-1.0, 1.0], 3)
    offset = np.where(scale > 0, 0.0, np.asarray(SHAPE) - 1.0) + rng.uniform(-4, 4, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = np.diag(scale)
    matrix[:3, 3] = offset
    value_range = float(src.max()) - float(src.min())
    for code, order in ((ORDER_LINEAR, "linear"), (ORDER_NEAREST, "nearest")):
        dt = np.float32 if code == ORDER_LINEAR else src.dtype
        general = np.empty(out_shape, dt)
        separable = np.full(out_shape, 99, dt)
        resample_affine(src, matrix, general, code, -3.0, 0, out_shape[0])
        for n_tasks in (1, 2, 5):  # runs of output slices, as the threads of ops.resample take them
            for t in range(n_tasks):
                resample_separable(src, scale, offset, separable, code, -3.0, t * out_shape[0] // n_tasks,
                                   (t + 1) * out_shape[0] // n_tasks)
            if code == ORDER_NEAREST:
                np.testing.assert_array_equal(separable, general)
            else:
                # same float32 operations in the same order; the project's fastmath flags (nsz + reassoc)
                # may let the compiler reorder them differently in the two loops: allow a few ulp
                np.testing.assert_allclose(separable, general, rtol=0, atol=1e-6 * value_range)
        expected = scipy_reference(src, matrix, out_shape, order, -3.0)
        if code == ORDER_LINEAR:
            assert_linear_close(separable, expected, src)
        else:
            np.testing.assert_array_equal(separable, expected.astype(src.dtype))


def test_separable_path_all_outside_and_single_voxel_axes():
    src = random_volume("float32", shape=(1, 5, 6), seed=9)
    for scale, offset in (([1.0, 1.0, 1.0], [0.0, 100.0, 0.0]), ([1.0, 0.5, 2.0], [0.0, 0.25, 0.0]),
                          ([0.5, 1.0, 1.0], [0.0, 0.0, 0.0])):
        scale, offset = np.asarray(scale), np.asarray(offset)
        matrix = np.eye(4)
        matrix[:3, :3] = np.diag(scale)
        matrix[:3, 3] = offset
        out_shape = (3, 7, 4)
        for code, order in ((ORDER_LINEAR, "linear"), (ORDER_NEAREST, "nearest")):
            separable = np.empty(out_shape, np.float32)
            resample_separable(src, scale, offset, separable, code, -1.0, 0, 1)
            resample_separable(src, scale, offset, separable, code, -1.0, 1, 3)
            expected = scipy_reference(src, matrix, out_shape, order, -1.0)
            np.testing.assert_allclose(separable, expected, rtol=0, atol=1e-5)


def test_edges_follow_scipy_constant_mode():
    """Inside means between the first and last voxel centre, inclusive: exactly on the border reads the edge
    voxel, any distance beyond (even within half a voxel) is fill; nearest rounds .5 up. (Points less than
    1e-9 voxel beyond count as on the border: see test_edge_tolerance_absorbs_float_noise.)"""
    src = np.arange(1, 5, dtype=np.float32).reshape(1, 1, 4)
    xs = np.array([-0.5, -0.25, -1e-6, 0.0, 0.5, 1.5, 2.5, 2.75, 3.0, 3.0 + 1e-6, 3.25, 3.5])
    for code, order in ((ORDER_LINEAR, "linear"), (ORDER_NEAREST, "nearest")):
        got = []
        for x in xs:
            matrix = np.eye(4)
            matrix[2, 3] = x
            out = np.empty((1, 1, 1), np.float32)
            resample_affine(src, matrix, out, code, -9.0, 0, 1)
            separable = np.empty((1, 1, 1), np.float32)
            resample_separable(src, np.ones(3), np.array([0.0, 0.0, x]), separable, code, -9.0, 0, 1)
            assert separable[0, 0, 0] == out[0, 0, 0]
            expected = scipy_reference(src, matrix, (1, 1, 1), order, -9.0)
            assert out[0, 0, 0] == pytest.approx(expected[0, 0, 0], abs=1e-6), (order, x)
            got.append(float(out[0, 0, 0]))
        if order == "linear":
            assert got == pytest.approx([-9, -9, -9, 1, 1.5, 2.5, 3.5, 3.75, 4, -9, -9, -9])
        else:
            assert got == [-9, -9, -9, 1, 2, 3, 4, 4, 4, -9, -9, -9]


def test_edge_tolerance_absorbs_float_noise():
    """3 mm -> 1 mm: the first new centre lands on the first old one, computed as -5.6e-17 (scipy: fill)."""
    src = np.arange(1, 5, dtype=np.float32).reshape(4, 1, 1)
    volume = Volume(src, Geometry(src.shape, (3.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3)))
    matrix = resample(volume, spacing=1.0).attrs["resample"]["index_matrix"]
    assert matrix[0][0] * 1 + matrix[0][3] < 0  # the float noise is there...
    for order in ("linear", "nearest", "label"):
        out = resample(volume, spacing=1.0, order=order, fill=0).array[:, 0, 0]
        assert out[1] == 1 and out[-2] == 4  # ...and absorbed: new slices 1 and 10 sit on old slices 0 and 3
        assert out[0] == 0 and out[-1] == 0
    for x in (-1e-10, 3 + 1e-10):
        matrix = np.eye(4)
        matrix[0, 3] = x
        out = np.empty((1, 1, 1), np.float32)
        resample_affine(src, matrix, out, ORDER_LINEAR, -9.0, 0, 1)
        assert out[0, 0, 0] == (1 if x < 0 else 4)


@pytest.mark.parametrize("seed", [10, 11])
@pytest.mark.parametrize("oblique", [True, False])
def test_label_order_matches_per_label_reference(seed, oblique):
    rng = np.random.default_rng(seed)
    src = random_volume("uint8", seed=seed)
    assert set(np.unique(src)) == {0, 1, 2, 3}
    out_shape = (21, 18, 26)
    matrix = random_index_affine(rng, SHAPE, out_shape, oblique=oblique)
    geometry = oblique_geometry(SHAPE, rng)
    reference = geometry_from_affine(out_shape, geometry.affine @ matrix)
    out = resample_to(Volume(src, geometry), reference, order="label", fill=255)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out.array, label_reference(src, matrix, out_shape, 255))


def test_label_order_binary_mask_is_linear_then_threshold():
    rng = np.random.default_rng(12)
    src = (random_volume("uint8", seed=12) > 0).astype(np.uint8)
    out_shape = (25, 20, 24)
    matrix = random_index_affine(rng, SHAPE, out_shape)
    geometry = oblique_geometry(SHAPE, rng)
    reference = geometry_from_affine(out_shape, geometry.affine @ matrix)
    volume = Volume(src, geometry)
    label = resample_to(volume, reference, order="label").array
    linear = scipy_reference(src, matrix, out_shape, "linear", 0.0)
    np.testing.assert_array_equal(label, (linear >= 0.5).astype(np.uint8))
    # bool masks: resampled as uint8, returned as bool
    as_bool = resample_to(Volume(src.astype(bool), geometry), reference, order="label")
    assert as_bool.dtype == np.bool_
    np.testing.assert_array_equal(as_bool.array, label.astype(bool))


# ----------------------------------------------------------------------------------------------------------
# resample: grid convention from first principles
# ----------------------------------------------------------------------------------------------------------
def expected_grid(geometry: Geometry, new_shape, new_spacing):
    """The documented convention, written out: per axis, new voxel o sits at input index
    ``-1/2 + (o + 1/2) * new_spacing / spacing`` (edges preserved, first edges aligned)."""
    ratio = np.asarray(new_spacing, dtype=np.float64) / geometry.spacing
    axes = [-0.5 + (np.arange(n) + 0.5) * r for n, r in zip(new_shape, ratio)]
    return axes


@pytest.mark.parametrize("order", ["linear", "nearest", "label"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_same_spacing_is_identity(order, dtype):
    rng = np.random.default_rng(13)
    src = random_volume(dtype, seed=13)
    if order == "label" and dtype != "uint8":
        src = (src > np.median(src)).astype(src.dtype) * 3
    geometry = oblique_geometry(SHAPE, rng, shear=0.2)
    volume = Volume(src, geometry)
    for out in (resample(volume, spacing=geometry.spacing, order=order),
                resample(volume, shape=SHAPE, order=order),
                resample_to(volume, geometry, order=order)):
        assert out.shape == SHAPE
        np.testing.assert_array_equal(out.array, src)
        assert out.dtype == (np.float32 if order == "linear" else src.dtype)
        np.testing.assert_allclose(out.geometry.affine, geometry.affine, rtol=0, atol=1e-12)
        np.testing.assert_allclose(out.geometry.spacing, geometry.spacing, rtol=1e-15)


@pytest.mark.parametrize("shear", [0.0, 0.25])
def test_linear_ramp_at_half_spacing(shear):
    """A linear function of LPS position, sampled on an oblique (and sheared) grid, resampled to half the
    spacing: every inside output voxel equals the function at its own centre (trilinear is exact on it)."""
    rng = np.random.default_rng(14 + int(shear * 4))
    shape = (9, 11, 13)
    geometry = oblique_geometry(shape, rng, spacing=(3.0, 1.1, 0.9), shear=shear)
    gradient = np.array([1.5, -2.0, 0.75])

    def ramp(points: np.ndarray) -> np.ndarray:
        return points @ gradient + 10.0

    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    src = ramp(index @ geometry.affine[:3, :3].T + geometry.affine[:3, 3]).astype(np.float32)
    fill = -1000.0
    out = resample(Volume(src, geometry), spacing=geometry.spacing / 2, fill=fill)
    new_shape = tuple(2 * n for n in shape)
    assert out.shape == new_shape
    np.testing.assert_array_equal(out.geometry.spacing, geometry.spacing / 2)

    axes = expected_grid(geometry, new_shape, geometry.spacing / 2)
    in_index = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    centres = in_index @ geometry.affine[:3, :3].T + geometry.affine[:3, 3]
    inside = np.all((in_index >= 0) & (in_index <= np.asarray(shape) - 1), axis=-1)
    # half spacing: the outermost output voxels sit a quarter input voxel outside the first/last centre
    assert not inside[0].any() and not inside[-1].any() and inside[1:-1, 1:-1, 1:-1].all()
    value_range = float(src.max() - src.min())
    np.testing.assert_allclose(out.array[inside], ramp(centres[inside]), rtol=0, atol=1e-5 * value_range)
    assert np.all(out.array[~inside] == fill)
    # and the output geometry puts every output voxel at that centre
    out_index = np.stack(np.meshgrid(*[np.arange(n) for n in new_shape], indexing="ij"), axis=-1)
    np.testing.assert_allclose(out_index @ out.geometry.affine[:3, :3].T + out.geometry.affine[:3, 3], centres,
                               rtol=0, atol=1e-9)


@pytest.mark.parametrize("shear", [0.0, 0.3])
def test_resample_geometry_by_spacing(shear):
    rng = np.random.default_rng(15)
    shape = (20, 24, 28)
    geometry = oblique_geometry(shape, rng, spacing=(2.5, 0.7, 0.65), shear=shear)
    out = resample(Volume(random_volume("int16", shape), geometry), spacing=(1.0, 1.0, 1.0))
    g = out.geometry
    # new shape = round(extent / new spacing), spacing exact, direction unchanged
    assert out.shape == (50, 17, 18)  # 50.0, 16.8, 18.2
    np.testing.assert_array_equal(g.spacing, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(g.direction, geometry.direction)
    # origin: old origin - 1/2 old step + 1/2 new step, per axis along its affine column (= direction × spacing
    # without shear)
    columns = geometry.affine[:3, :3] / geometry.spacing
    expected_origin = geometry.origin + columns @ (-0.5 * geometry.spacing + 0.5 * g.spacing)
    np.testing.assert_allclose(g.origin, expected_origin, rtol=0, atol=1e-9)
    if shear == 0.0:
        np.testing.assert_allclose(
            g.origin, geometry.origin + geometry.direction @ (-0.5 * geometry.spacing + 0.5 * g.spacing), atol=1e-9)
    np.testing.assert_allclose(g.affine[:3, :3], columns * g.spacing, rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.affine[:3, 3], g.origin, rtol=0, atol=0)
    # the first voxel edges coincide; slice positions follow the new grid along the normal
    np.testing.assert_allclose(g.affine @ [-0.5, -0.5, -0.5, 1], geometry.affine @ [-0.5, -0.5, -0.5, 1], atol=1e-9)
    normal = geometry.direction[:, 0]
    np.testing.assert_allclose(g.slice_positions, g.origin @ normal + np.arange(50) * 1.0, atol=1e-9)
    # attributes carry the new geometry (and round-trip)
    again = Geometry.from_attrs(out.attrs)
    np.testing.assert_array_equal(again.affine, g.affine)
    assert out.attrs["resample"]["source_shape"] == list(shape)
    assert out.attrs["resample"]["order"] == "linear"


def test_resample_geometry_by_shape_preserves_field_of_view():
    rng = np.random.default_rng(16)
    shape = (20, 24, 28)
    geometry = oblique_geometry(shape, rng, spacing=(2.5, 0.7, 0.65), shear=0.2)
    new_shape = (7, 40, 9)
    out = resample(Volume(random_volume("float32", shape), geometry), shape=new_shape)
    g = out.geometry
    assert out.shape == new_shape
    np.testing.assert_allclose(g.spacing, np.asarray(shape) * geometry.spacing / np.asarray(new_shape), rtol=1e-15)
    # all eight corners of the field of view (outer voxel edges) coincide
    for corner in np.ndindex(2, 2, 2):
        old = np.where(corner, np.asarray(shape) - 0.5, -0.5)
        new = np.where(corner, np.asarray(new_shape) - 0.5, -0.5)
        np.testing.assert_allclose(g.affine @ np.r_[new, 1], geometry.affine @ np.r_[old, 1], rtol=0, atol=1e-9)


def test_resample_chooses_separable_path(monkeypatch):
    calls = []
    real_separable = resample_module.resample_separable
    real_affine = resample_module.resample_affine
    monkeypatch.setattr(resample_module, "resample_separable",
                        lambda *a: calls.append("separable") or real_separable(*a))
    monkeypatch.setattr(resample_module, "resample_affine", lambda *a: calls.append("affine") or real_affine(*a))
    rng = np.random.default_rng(17)
    geometry = oblique_geometry(SHAPE, rng, shear=0.2)
    volume = Volume(random_volume("uint8", seed=17), geometry)
    kernels = []  # the kernel(s) each resample called (once per run of output slices, on threads)

    def record(result):
        kernels.append(sorted(set(calls)))
        calls.clear()
        return result

    record(resample(volume, spacing=1.3))
    record(resample(volume, spacing=1.3, order="nearest"))
    record(resample(volume, spacing=1.3, order="label"))  # label always takes the general kernel
    shifted = geometry_from_affine(SHAPE, geometry.affine @ np.diag([1.0, 1.0, -1.0, 1.0]))
    record(resample_to(volume, shifted))  # a flip is still axis-aligned
    rotated = geometry_from_affine(SHAPE, geometry.affine @ np.r_[np.c_[rotation(rng), np.zeros(3)], [[0, 0, 0, 1]]])
    record(resample_to(volume, rotated))
    assert kernels == [["separable"], ["separable"], ["affine"], ["separable"], ["affine"]]


@pytest.mark.parametrize("order", ["linear", "nearest", "label"])
def test_resample_to_integer_shift(order):
    rng = np.random.default_rng(18)
    src = random_volume("uint8" if order == "label" else "int16", seed=18)
    geometry = oblique_geometry(SHAPE, rng, spacing=(2.5, 0.7, 0.7))
    shift = np.array([2, -3, 1])
    translate = np.eye(4)
    translate[:3, 3] = shift
    # the same grid moved by whole voxels; origin computed in LPS (so inv(A) @ A' carries float noise)
    reference = Geometry(SHAPE, geometry.spacing, geometry.origin + geometry.affine[:3, :3] @ shift,
                         geometry.direction)
    np.testing.assert_array_equal(index_matrix(geometry, reference), translate)  # noise snapped away
    fill = 7
    out = resample_to(Volume(src, geometry), reference, order=order, fill=fill).array
    expected = np.full(SHAPE, fill, dtype=src.dtype)
    expected[:-2, 3:, :-1] = src[2:, :-3, 1:]
    np.testing.assert_array_equal(out, expected)


def test_thin_plane_survives_label_but_not_nearest():
    shape = (16, 16, 16)
    mask = np.zeros(shape, np.uint8)
    mask[4] = 1  # one voxel thin, at an even index: halving puts new centres at input 2.5, 4.5, 6.5, ...
    geometry = Geometry(shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    volume = Volume(mask, geometry)
    nearest = resample(volume, shape=(8, 8, 8), order="nearest").array
    label = resample(volume, shape=(8, 8, 8), order="label").array
    linear = resample(volume, shape=(8, 8, 8), order="linear").array
    assert nearest.sum() == 0  # 4.5 rounds up to 5: the plane is gone
    expected = np.zeros((8, 8, 8), np.uint8)
    expected[2] = 1  # new slice 2 sits on input 4.5: half its weight is the plane
    np.testing.assert_array_equal(label, expected)
    np.testing.assert_array_equal(linear, expected * 0.5)


def test_multi_label_picks_largest_weight_and_prefers_labels_on_ties():
    src = np.zeros((1, 1, 4), np.uint8)
    src[0, 0] = [0, 2, 5, 5]
    geometry = Geometry(src.shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    volume = Volume(src, geometry)
    for x, expected in ((0.5, 2), (0.6, 2), (1.2, 2), (1.5, 2), (1.6, 5), (0.4, 0), (2.5, 5)):
        reference = Geometry((1, 1, 1), (1.0, 1.0, 1.0), (0.0, 0.0, x), np.eye(3))
        got = resample_to(volume, reference, order="label").array[0, 0, 0]
        assert got == expected, (x, got)


# ----------------------------------------------------------------------------------------------------------
# dtypes, inputs, errors
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_output_dtypes(dtype):
    volume = Volume(random_volume(dtype, seed=19), Geometry(SHAPE, (2.0, 1.0, 1.0), (0, 0, 0), np.eye(3)))
    assert resample(volume, spacing=1.5).dtype == np.float32
    assert resample(volume, spacing=1.5, order="nearest").dtype == np.dtype(dtype)
    assert resample(volume, spacing=1.5, order="label").dtype == np.dtype(dtype)


class LazyArray:
    """Stands for a zarr/h5py array: shape, dtype and slicing only."""

    def __init__(self, array):
        self._array = array
        self.shape = array.shape
        self.dtype = array.dtype

    def __getitem__(self, item):
        return self._array[item]


def test_lazy_and_non_contiguous_arrays():
    src = random_volume("float32", seed=20)
    geometry = Geometry(SHAPE, (2.0, 1.0, 1.0), (0, 0, 0), np.eye(3))
    expected = resample(Volume(src, geometry), spacing=1.5).array
    np.testing.assert_array_equal(resample(Volume(LazyArray(src), geometry), spacing=1.5).array, expected)
    fortran = np.asfortranarray(src)
    np.testing.assert_array_equal(resample(Volume(fortran, geometry), spacing=1.5).array, expected)


def test_reference_volume_or_geometry():
    rng = np.random.default_rng(21)
    src = random_volume("float32", seed=21)
    geometry = oblique_geometry(SHAPE, rng)
    ref_geometry = geometry_from_affine((10, 12, 14), geometry.affine @ random_index_affine(rng, SHAPE, (10, 12, 14)))
    by_geometry = resample_to(Volume(src, geometry), ref_geometry)
    by_volume = resample_to(Volume(src, geometry), Volume(np.zeros((10, 12, 14), np.uint8), ref_geometry))
    np.testing.assert_array_equal(by_geometry.array, by_volume.array)
    np.testing.assert_array_equal(by_volume.geometry.affine, ref_geometry.affine)
    np.testing.assert_array_equal(by_volume.geometry.slice_positions, ref_geometry.slice_positions)


def test_index_matrix_round_trip():
    rng = np.random.default_rng(22)
    a = oblique_geometry(SHAPE, rng, shear=0.3)
    b = oblique_geometry((5, 6, 7), rng)
    np.testing.assert_array_equal(index_matrix(a, a), np.eye(4))
    np.testing.assert_allclose(index_matrix(a, b) @ index_matrix(b, a), np.eye(4), atol=1e-9)
    np.testing.assert_allclose(a.affine @ index_matrix(a, b), b.affine, atol=1e-9)


def test_nan_fill_for_float_output():
    volume = Volume(random_volume("int16", seed=23), Geometry(SHAPE, (1.0, 1.0, 1.0), (0, 0, 0), np.eye(3)))
    out = resample(volume, spacing=0.5, fill=np.nan).array
    assert np.isnan(out[0]).all() and not np.isnan(out[1:-1, 1:-1, 1:-1]).any()


GEOM = Geometry(SHAPE, (2.0, 1.0, 1.0), (0, 0, 0), np.eye(3))
VOL = Volume(np.zeros(SHAPE, np.int16), GEOM)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: resample(VOL), "exactly one of spacing"),
        (lambda: resample(VOL, spacing=1.0, shape=(2, 2, 2)), "exactly one of spacing"),
        (lambda: resample(VOL, spacing=(1.0, 1.0)), "spacing must be a number or 3"),
        (lambda: resample(VOL, spacing=(1.0, 0.0, 1.0)), "finite and > 0"),
        (lambda: resample(VOL, spacing=(1.0, np.nan, 1.0)), "finite and > 0"),
        (lambda: resample(VOL, spacing=-1.0), "finite and > 0"),
        (lambda: resample(VOL, spacing="abc"), "spacing"),
        (lambda: resample(VOL, shape=(2, 0, 2)), "3 positive integers"),
        (lambda: resample(VOL, shape=(2, 2.5, 2)), "3 positive integers"),
        (lambda: resample(VOL, shape=(2, 2)), "3 positive integers"),
        (lambda: resample(VOL, shape=5), "3 positive integers"),
        (lambda: resample(VOL, spacing=1.0, order="cubic"), "order must be one of"),
        (lambda: resample(VOL, spacing=1.0, order="nearest", fill=0.5), "fill must be an integer"),
        (lambda: resample(VOL, spacing=1.0, order="label", fill=40000), "fill must be an integer"),
        (lambda: resample(VOL, spacing=1.0, fill="x"), "fill must be a number"),
        (lambda: resample(Volume(np.zeros(SHAPE, np.float64), GEOM), spacing=1.0), "float64.*astype"),
        (lambda: resample(Volume(np.zeros(SHAPE, np.uint16), GEOM), spacing=1.0), "uint16"),
        (lambda: resample(Volume(np.zeros((2,) + SHAPE, np.int16), GEOM), spacing=1.0), "3-D"),
        (lambda: resample(Volume(np.zeros((4, 5, 6), np.int16), GEOM), spacing=1.0), "does not match"),
        (lambda: resample(np.zeros(SHAPE, np.int16), spacing=1.0), "must be a voxelpipe Volume"),
        (lambda: resample(Volume(np.zeros(SHAPE, np.int16), Geometry(SHAPE, (1, 1, 1), (0, 0, 0), np.zeros((3, 3)))),
                          spacing=1.0), "not invertible"),
        (lambda: resample_to(VOL, "grid"), "reference must be a Volume or a Geometry"),
        (lambda: resample_to(VOL, Geometry(SHAPE, (1, 1, 1), (0, 0, 0), np.ones((3, 3)))), "not invertible"),
        (lambda: resample_to(VOL, Geometry(SHAPE, (1, 1, 1), (0, 0, 0), np.eye(3), affine=np.diag([1, np.inf, 1, 1]))),
         "finite"),
        (lambda: resample_to(VOL, GEOM, order=1), "order must be one of"),
        (lambda: index_matrix(GEOM, "x"), "out_geometry must be a Geometry"),
    ],
)
def test_errors(call, match):
    with pytest.raises(InputError, match=match):
        call()


# ----------------------------------------------------------------------------------------------------------
# real data: NSCLC CT to 1 mm against SimpleITK
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nsclc_ct(shared_data, tmp_path_factory):
    import voxelpipe

    folder = shared_data / "nsclc-lung1-001" / "image"
    if not folder.is_dir():
        pytest.skip(f"{folder} not in the shared test data")
    out = tmp_path_factory.mktemp("resample_ct")
    rows = voxelpipe.convert([str(folder)], out=str(out), workers=1, progress=False)
    assert len(rows) == 1 and rows[0]["status"] == "done", rows
    return voxelpipe.open_volume(rows[0]["path"])


def sitk_image(array: np.ndarray, geometry: Geometry):
    """Our array and geometry as a SimpleITK image (ITK index order is reversed: x = column, y = row, z = slice;
    ITK direction column j = direction of ITK index j)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetOrigin(tuple(float(v) for v in geometry.origin))
    image.SetSpacing(tuple(float(v) for v in geometry.spacing[::-1]))
    image.SetDirection(tuple(float(v) for v in geometry.direction[:, ::-1].ravel()))
    return image


@pytest.mark.parametrize("order", ["linear", "nearest"])
def test_nsclc_ct_to_1mm_matches_simpleitk(nsclc_ct, order):
    sitk = pytest.importorskip("SimpleITK")
    g_in = nsclc_ct.geometry
    plain = np.eye(4)
    plain[:3, :3] = g_in.direction * g_in.spacing
    plain[:3, 3] = g_in.origin
    assert np.allclose(g_in.affine, plain, atol=1e-6), "sheared affine: SimpleITK cannot represent the grid"
    fill = -2048.0
    out = resample(nsclc_ct, spacing=1.0, order=order, fill=fill)
    g = out.geometry
    src = nsclc_ct.numpy()
    image = sitk_image(src.astype(np.float32), g_in)
    interpolator = sitk.sitkLinear if order == "linear" else sitk.sitkNearestNeighbor
    itk = sitk.Resample(image, [int(n) for n in out.shape[::-1]], sitk.Transform(), interpolator,
                        tuple(float(v) for v in g.origin), tuple(float(v) for v in g.spacing[::-1]),
                        tuple(float(v) for v in g.direction[:, ::-1].ravel()), fill, sitk.sitkFloat32)
    itk_array = sitk.GetArrayFromImage(itk)
    assert itk_array.shape == out.shape

    # input continuous index of every output voxel, per axis (grids are axis-aligned to each other here),
    # from the two geometries' origins, directions and spacings
    index = [((g.origin - g_in.origin) @ g_in.direction[:, a] + np.arange(n) * g.spacing[a]) / g_in.spacing[a]
             for a, n in enumerate(out.shape)]
    tol = 1e-9  # float noise: a centre computed at -5.6e-17 is on the first input centre
    ours = [(c >= -tol) & (c <= n - 1 + tol) for c, n in zip(index, src.shape)]  # between first and last centre
    itks = [(c >= -0.5) & (c < n - 0.5) for c, n in zip(index, src.shape)]  # ITK: within the outer edges
    inside = ours[0][:, None, None] & ours[1][None, :, None] & ours[2][None, None, :]
    itk_inside = itks[0][:, None, None] & itks[1][None, :, None] & itks[2][None, None, :]
    assert inside.mean() > 0.95
    value_range = float(src.max()) - float(src.min())
    diff = np.abs(out.array[inside].astype(np.float64) - itk_array[inside])
    if order == "linear":
        # float32 arithmetic (ours) vs double rounded to float32 (ITK): a few float32 ulp of ~3000 HU
        assert diff.max() <= 1e-3, (diff.max(), value_range)
    else:
        assert diff.max() == 0
    # The half voxel beyond the first/last input centre (here the first and last output slice when 3 mm
    # slices go to 1 mm): ITK extends the edge voxel there, we (like scipy mode="constant") write fill.
    band = itk_inside & ~inside
    assert np.all(out.array[band] == fill)
    assert np.all(out.array[~itk_inside] == fill) and np.all(itk_array[~itk_inside] == fill)
