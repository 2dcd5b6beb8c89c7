"""Rotated projections (``voxelpipe.ops.projection.project``) against independent references.

References: ``np.max`` along an array axis (exact at multiples of 90°), ``scipy.ndimage.rotate`` (order 1, no
reshape) + max along the ray axis, analytic images of a sphere and of a cylinder (chord lengths), and
``scipy.ndimage.rotate`` (order 0) + max for masks. Conventions (LPS, angle direction) are written out in each
reference so that they are checked, not copied from the implementation.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from voxelpipe.core.errors import InputError
from voxelpipe.core.geometry import Geometry
from voxelpipe.core.volume import Volume
from voxelpipe.ops.projection import AXES, Projections, project

L, P, S = np.eye(3)  # LPS unit vectors
AXIAL = np.column_stack([S, P, L])  # direction columns of a standard axial stack: slices -> S, rows -> P, cols -> L


def axial(array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> Volume:
    return Volume(array, Geometry(array.shape, spacing, origin, AXIAL))


def centred(image: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` central columns of a projection (the detector is wider than the slice and centred on it)."""
    off = (image.shape[-1] - n) // 2
    assert (image.shape[-1] - n) % 2 == 0
    return image[..., off:off + n]


def blobs(shape, n_blobs=6, radius_px=None, seed=0, sigma=(2.5, 4.0)) -> np.ndarray:
    """Smooth phantom: Gaussian blobs (per slice different amplitudes), zero background, centres within
    ``radius_px`` of the slice centre so that rotations keep them inside the slice."""
    rng = np.random.default_rng(seed)
    nz, nr, nc = shape
    radius_px = radius_px if radius_px is not None else 0.3 * min(nr, nc)
    r, c = np.mgrid[0:nr, 0:nc].astype(np.float64)
    out = np.zeros(shape, np.float64)
    for _ in range(n_blobs):
        rho = radius_px * np.sqrt(rng.uniform())
        phi = rng.uniform(0, 2 * np.pi)
        r0 = (nr - 1) / 2 + rho * np.sin(phi)
        c0 = (nc - 1) / 2 + rho * np.cos(phi)
        s = rng.uniform(*sigma)
        amp = rng.uniform(0.3, 1.0, size=nz)
        out += amp[:, None, None] * np.exp(-((r - r0) ** 2 + (c - c0) ** 2) / (2 * s * s))[None]
    return out.astype(np.float32)


def expected_u(theta_deg: float) -> np.ndarray:
    """Column direction for axis S, written from the convention: 0° columns toward L, the view turning
    counter-clockwise seen from the feet (from L toward A, i.e. toward -P)."""
    t = np.deg2rad(theta_deg)
    return np.cos(t) * L - np.sin(t) * P


def expected_d(theta_deg: float) -> np.ndarray:
    """Ray direction for axis S: 0° anterior -> posterior, 90° right -> left."""
    t = np.deg2rad(theta_deg)
    return np.cos(t) * P + np.sin(t) * L


# ----------------------------------------------------------------------------------------------- exact cases


@pytest.mark.parametrize("shape", [(5, 24, 30), (4, 21, 77), (3, 71, 9)])
@pytest.mark.parametrize("dtype", ["float32", "int16", "uint8", "float64"])
def test_multiples_of_90_are_numpy_max(shape, dtype):
    rng = np.random.default_rng(1)
    vol = (rng.random(shape) * 200).astype(dtype)
    nz, nr, nc = shape
    p = project(axial(vol), [0, 90, 180, 270, -90, 360, 450], fill=-7)
    assert p.images.dtype == np.float32 and p.images.shape[:2] == (7, nz)
    assert p.pixel_spacing == (1.0, 1.0)
    ref_rows = vol.max(axis=1).astype(np.float32)  # rays along P: max over rows, columns toward L
    ref_cols = vol.max(axis=2).astype(np.float32)  # rays along L: max over columns
    np.testing.assert_array_equal(centred(p.images[0], nc), ref_rows)
    np.testing.assert_array_equal(centred(p.images[2], nc), ref_rows[:, ::-1])
    np.testing.assert_array_equal(centred(p.images[1], nr), ref_cols[:, ::-1])  # columns toward A = -rows
    np.testing.assert_array_equal(centred(p.images[3], nr), ref_cols)
    np.testing.assert_array_equal(p.images[4], p.images[3])
    np.testing.assert_array_equal(p.images[5], p.images[0])
    np.testing.assert_array_equal(p.images[6], p.images[1])
    # outside the slice: fill
    off = (p.width - nc) // 2
    assert np.all(p.images[0][:, :off] == -7) and np.all(p.images[0][:, off + nc:] == -7)


def test_width_covers_the_diagonal_and_default_fill_is_the_minimum():
    vol = np.random.default_rng(2).random((2, 30, 40)).astype(np.float32) + 5
    p = project(axial(vol, (2.0, 0.8, 0.5)), [0, 33])
    diagonal = np.hypot(30 * 0.8, 40 * 0.5)
    assert p.pixel_spacing == (2.0, 0.5)
    assert diagonal <= p.width * 0.5 < diagonal + 2 * 0.5
    assert (p.width - 40) % 2 == 0
    assert p.fill == pytest.approx(float(vol.min()))
    assert np.all(p.images >= vol.min())


# ------------------------------------------------------------------------------------- scipy.ndimage.rotate


def rotate_reference(vol: np.ndarray, theta_deg: float, order: int = 1) -> np.ndarray:
    """Isotropic axial stack: rotate each slice so that the ray d(θ) runs along the rows, then max over rows.

    The rotated slice must be R[r', c'] = f(centre + (c' - cc) u + (r' - rc) d) with u, d in (row, column)
    components u = (-sin θ, cos θ), d = (cos θ, sin θ): input = [[cos, -sin], [sin, cos]] @ output (+ offset).
    scipy's rotate(angle) uses input = [[cos a, sin a], [-sin a, cos a]] @ output, so a = -θ.
    """
    rotated = ndimage.rotate(vol, -theta_deg, axes=(1, 2), order=order, reshape=False, mode="constant",
                             cval=0.0)
    return rotated.max(axis=1)


ANGLES = [17.0, 33.0, 45.0, 60.0, 103.0, 135.0, 200.0, 251.0, 300.0, 333.5]


def test_rotate_reference_convention():
    """The reference's own convention check: one bright voxel lands at column cc + (p - centre) . u."""
    vol = np.zeros((1, 41, 41), np.float32)
    vol[0, 20 + 6, 20 + 10] = 1.0  # 6 rows toward P, 10 columns toward L from the centre
    for theta in (30.0, 120.0):
        ref = rotate_reference(vol, theta)[0]
        expected = 20 + np.array([10.0, 6.0, 0.0]) @ expected_u(theta)  # (L, P, S) offset in voxels
        com = (ref * np.arange(41)).sum() / ref.sum()
        assert abs(com - expected) < 0.6


@pytest.mark.parametrize("shape", [(6, 48, 48), (4, 49, 49)])
def test_matches_scipy_rotate_on_smooth_phantom(shape):
    """Both are linear-interpolation schemes with different errors: rotate-then-max interpolates the data
    bilinearly (it underestimates peaks between voxels); shear-warp interpolates along one axis only, then
    interpolates the max profile (it overestimates where the brightest structure along the rays changes, a
    kink of the projection). On Gaussian blobs of sigma >= 3.5 voxels both stay within ~1.5% of the exact
    projection of the continuous blobs almost everywhere, and within ~3.5% at the worst kink."""
    vol = blobs(shape, seed=3, sigma=(3.5, 5.0))
    nz, nr, nc = shape
    p = project(axial(vol), ANGLES, fill=0.0)
    value_range = float(vol.max() - vol.min())
    cols = np.arange(nc)
    for n, theta in enumerate(ANGLES):
        ours = centred(p.images[n], nc).astype(np.float64)
        ref = rotate_reference(vol, theta).astype(np.float64)
        err = np.abs(ours - ref)
        assert err.max() <= 0.05 * value_range, (theta, err.max() / value_range)
        assert np.quantile(err, 0.99) <= 0.015 * value_range, theta
        com_ours = (ours * cols).sum(axis=1) / ours.sum(axis=1)
        com_ref = (ref * cols).sum(axis=1) / ref.sum(axis=1)
        assert np.abs(com_ours - com_ref).max() < 1.0, theta


def test_blob_lands_where_the_convention_says():
    """Anisotropic voxels: a blob at a known LPS position projects to column (p - centre) . u(θ) / pixel."""
    spacing = (1.5, 0.6, 0.9)
    shape = (9, 91, 61)
    centre_index = (np.array(shape) - 1) / 2
    rel = np.array([7.0, -9.0, 1.5])  # (L, P, S) mm from the volume centre
    z, r, c = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    pos = ((c - centre_index[2]) * spacing[2], (r - centre_index[1]) * spacing[1], (z - centre_index[0]) * spacing[0])
    d2 = (pos[0] - rel[0]) ** 2 + (pos[1] - rel[1]) ** 2 + (pos[2] - rel[2]) ** 2
    vol = np.exp(-d2 / (2 * 3.0**2)).astype(np.float32)
    angles = [0, 30, 90, 145, 210, 300]
    p = project(axial(vol, spacing), angles, fill=0.0)
    pm = p.pixel_spacing[1]
    assert pm == 0.6
    cols = np.arange(p.width)
    for n, theta in enumerate(angles):
        image = p.images[n].astype(np.float64)
        row = image[int(np.argmax(image.max(axis=1)))]
        com = (row * cols).sum() / row.sum()
        expected = (p.width - 1) / 2 + rel @ expected_u(theta) / pm
        assert abs(com - expected) < 1.0, (theta, com, expected)
        np.testing.assert_allclose(p.ray_directions[n], expected_d(theta), atol=1e-12)
        np.testing.assert_allclose(p.column_directions[n], expected_u(theta), atol=1e-12)


# ---------------------------------------------------------------------------------- sphere: stays a circle


def edge(dist, radius, ramp, profile):
    """1 inside, 0 outside, 0.5 exactly on the sphere: linear over ``ramp`` mm, or a tanh of width ``ramp``."""
    if profile == "tanh":
        return 0.5 * (1.0 + np.tanh((radius - dist) / ramp))
    return np.clip(0.5 + (radius - dist) / ramp, 0.0, 1.0)


def sphere_volume(spacing, shape, centre_mm, radius, ramp=1.5, profile="linear"):
    """Soft-edged ball (see ``edge``). ``centre_mm`` is (L, P, S) relative to the volume centre."""
    centre_index = (np.array(shape) - 1) / 2
    z, r, c = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    dist = np.sqrt(((c - centre_index[2]) * spacing[2] - centre_mm[0]) ** 2
                   + ((r - centre_index[1]) * spacing[1] - centre_mm[1]) ** 2
                   + ((z - centre_index[0]) * spacing[0] - centre_mm[2]) ** 2)
    return edge(dist, radius, ramp, profile).astype(np.float32)


def test_sphere_on_anisotropic_voxels_projects_as_a_circle():
    spacing = (1.0, 0.6, 1.4)  # slices, rows (P), columns (L)
    shape = (40, 80, 36)
    radius = 12.0
    centre_mm = np.array([3.0, -2.0, 1.5])
    vol = sphere_volume(spacing, shape, centre_mm, radius)
    angles = np.arange(0.0, 360.0, 45.0) + 10.0
    p = project(axial(vol, spacing), angles, fill=0.0)
    row_mm, col_mm = p.pixel_spacing
    assert (row_mm, col_mm) == (1.0, 0.6)
    for n, theta in enumerate(angles):
        disk = p.images[n] >= 0.5
        rows = np.flatnonzero(disk.any(axis=1))
        cols = np.flatnonzero(disk.any(axis=0))
        # extent along the rotation axis and across: the diameter, within one pixel
        assert abs(len(rows) * row_mm - 2 * radius) <= row_mm, (theta, len(rows))
        assert abs(len(cols) * col_mm - 2 * radius) <= col_mm, (theta, len(cols))
        assert abs(disk.sum() * row_mm * col_mm / (np.pi * radius**2) - 1) < 0.05, theta
        # and centred where the sphere centre projects (pixel_positions places the pixels in LPS)
        where = p.pixel_positions(n)[disk]
        expected = p.centre + ((centre_mm @ S) * S + (centre_mm @ expected_u(theta)) * expected_u(theta))
        np.testing.assert_allclose(where.mean(axis=0), expected, atol=col_mm)


def test_sphere_max_projection_matches_the_analytic_image():
    """The values decrease with the distance to the centre, so the MIP of the ball is edge(distance of the
    pixel to the centre): the ray's closest approach. A smooth (tanh) edge keeps the linear-interpolation error
    of the 1.4 mm voxels small (h^2 f''/8 < 0.03)."""
    spacing = (1.0, 0.6, 1.4)
    shape = (40, 80, 36)
    radius, ramp = 12.0, 2.5
    centre_mm = np.array([3.0, -2.0, 1.5])
    vol = sphere_volume(spacing, shape, centre_mm, radius, ramp, "tanh")
    angles = [0.0, 22.5, 70.0, 135.0, 260.0]
    p = project(axial(vol, spacing), angles, fill=0.0)
    for n, theta in enumerate(angles):
        pos = p.pixel_positions(n)
        u = expected_u(theta)
        dist = np.linalg.norm(pos - (p.centre + (centre_mm @ S) * S + (centre_mm @ u) * u), axis=-1)
        analytic = edge(dist, radius, ramp, "tanh")
        inside = dist < radius + 2 * ramp  # away from the detector edges
        assert np.abs(p.images[n] - analytic)[inside].max() < 0.04, theta


# ------------------------------------------------------------------------------------------------------ mean


def test_mean_of_a_constant_is_the_constant_wherever_a_ray_hits():
    vol = np.full((3, 33, 47), 3.25, np.float32)
    angles = [0, 27, 90, 133, 180, 301]
    p = project(axial(vol, (2.0, 0.7, 1.1)), angles, kind="mean", fill=-1.0)
    covered = p.images != -1.0
    np.testing.assert_allclose(p.images[covered], 3.25, rtol=1e-6)
    # every ray through the slice hits it: at 0° the covered columns span the slice width
    assert covered[0, 0].sum() * p.pixel_spacing[1] == pytest.approx(46 * 1.1, abs=2 * p.pixel_spacing[1])


def ray_length_in_rectangle(t, d, u, half_x, half_y):
    """Length of the line {t u + s d} inside the rectangle |x| <= half_x, |y| <= half_y (x = L, y = P)."""
    lo, hi = -np.inf, np.inf
    for axis_vec, half in ((L, half_x), (P, half_y)):
        o = t * (u @ axis_vec)
        k = d @ axis_vec
        if abs(k) < 1e-12:
            if abs(o) > half:
                return 0.0
            continue
        a, b = (-half - o) / k, (half - o) / k
        lo, hi = max(lo, min(a, b)), min(hi, max(a, b))
    return max(0.0, hi - lo)


def test_mean_is_chord_length_weighted():
    """A cylinder along S (value 1 inside radius R, 0 outside) in anisotropic voxels: the mean along a ray is
    chord length / length of the ray inside the slice (the hull of voxel centres)."""
    spacing = (1.0, 0.5, 0.8)
    shape = (2, 121, 81)
    radius = 15.0
    centre_index = (np.array(shape) - 1) / 2
    r, c = np.mgrid[0:shape[1], 0:shape[2]].astype(np.float64)
    x = (c - centre_index[2]) * spacing[2]
    y = (r - centre_index[1]) * spacing[1]
    # area-weighted edge (supersampled) so that the binary cylinder has the right chord on average
    sub = np.zeros_like(x)
    offsets = (np.arange(5) - 2) / 5
    for oy in offsets:
        for ox in offsets:
            sub += (x + ox * spacing[2]) ** 2 + (y + oy * spacing[1]) ** 2 <= radius**2
    image = (sub / 25).astype(np.float32)
    vol = np.repeat(image[None], shape[0], axis=0)
    half_x, half_y = centre_index[2] * spacing[2], centre_index[1] * spacing[1]
    angles = [0.0, 20.0, 45.0, 75.0, 90.0, 160.0]
    p = project(axial(vol, spacing), angles, kind="mean", fill=np.nan)
    offsets_mm = p.column_offsets()
    for n, theta in enumerate(angles):
        u, d = expected_u(theta), expected_d(theta)
        def length(t, d=d, u=u):
            return ray_length_in_rectangle(t, d, u, half_x, half_y)

        lengths = np.array([length(t) for t in offsets_mm])
        chords = 2 * np.sqrt(np.clip(radius**2 - offsets_mm**2, 0, None))
        # long rays, at least one pixel away from the corners and edges of the slice
        pm = p.pixel_spacing[1]
        near = np.array([min(length(t - pm), length(t + pm)) for t in offsets_mm])
        usable = np.minimum(lengths, near) > 0.5 * lengths.max()
        usable &= np.abs(np.abs(offsets_mm) - radius) > 1.5  # the chord's slope is infinite at the tangent
        analytic = chords[usable] / lengths[usable]
        ours = p.images[n, 0, usable]
        assert np.abs(ours - analytic).max() < 0.015, (theta, np.abs(ours - analytic).max())


# ------------------------------------------------------------------------------------------------------ mask


def test_mask_is_projected_alongside_by_max():
    rng = np.random.default_rng(5)
    shape = (5, 40, 40)
    smooth = ndimage.gaussian_filter(rng.random(shape), (0, 3, 3))
    mask = smooth > np.quantile(smooth, 0.8)
    r, c = np.mgrid[0:40, 0:40]
    mask &= ((r - 19.5) ** 2 + (c - 19.5) ** 2 < 17**2)[None]  # inside the inscribed circle
    vol = rng.random(shape).astype(np.float32)
    angles = [0, 90, 180, 270, 20, 45, 110, 222]
    p = project(axial(vol), angles, mask=mask)
    assert p.mask_images.dtype == np.uint8 and p.mask_images.shape == p.images.shape
    ref0 = mask.max(axis=1).astype(np.uint8)
    ref90 = mask.max(axis=2).astype(np.uint8)
    np.testing.assert_array_equal(centred(p.mask_images[0], 40), ref0)
    np.testing.assert_array_equal(centred(p.mask_images[1], 40), ref90[:, ::-1])
    np.testing.assert_array_equal(centred(p.mask_images[2], 40), ref0[:, ::-1])
    np.testing.assert_array_equal(centred(p.mask_images[3], 40), ref90)
    off = (p.width - 40) // 2
    assert not p.mask_images[:, :, :off].any() and not p.mask_images[:, :, off + 40:].any()
    # oblique angles: nearest-neighbour rotation + max; they differ only on the boundary of the projected mask
    for n, theta in enumerate(angles[4:], start=4):
        ours = centred(p.mask_images[n], 40).astype(bool)
        ref = rotate_reference(mask.astype(np.uint8), theta, order=0).astype(bool)
        differ = ours != ref
        boundary = ndimage.binary_dilation(ref, [[1, 1, 1]]) & ~ndimage.binary_erosion(ref, [[1, 1, 1]])
        assert not (differ & ~boundary).any(), theta
        assert differ.sum() <= 0.1 * ref.sum(), theta
    # the image projection is unaffected by the mask
    np.testing.assert_array_equal(p.images, project(axial(vol), angles).images)
    assert project(axial(vol), angles).mask_images is None


def test_mask_labels_are_kept():
    mask = np.zeros((2, 30, 30), np.uint8)
    mask[:, 5:12, 5:12] = 3
    mask[:, 15:25, 10:20] = 7
    p = project(axial(np.zeros(mask.shape, np.float32)), [0, 30, 77], mask=mask)
    assert set(np.unique(p.mask_images)) == {0, 3, 7}
    np.testing.assert_array_equal(centred(p.mask_images[0], 30), mask.max(axis=1))
    # the same mask as int64 and bool labels
    q = project(axial(np.zeros(mask.shape, np.float32)), [30], mask=mask.astype(np.int64))
    np.testing.assert_array_equal(q.mask_images[0], p.mask_images[1])
    b = project(axial(np.zeros(mask.shape, np.float32)), [30], mask=mask > 0)
    np.testing.assert_array_equal(b.mask_images[0], (p.mask_images[1] > 0).astype(np.uint8))


# ------------------------------------------------------------------------------------ axes and orientations


def test_axis_I_is_S_seen_upside_down():
    vol = blobs((5, 30, 36), seed=7)
    angles = np.array([0.0, 25.0, 90.0, 200.0])
    s = project(axial(vol, (1.2, 0.8, 0.8)), -angles, fill=0.0)
    i = project(axial(vol, (1.2, 0.8, 0.8)), angles, axis="I", fill=0.0)
    np.testing.assert_allclose(i.images, s.images[:, ::-1, ::-1], atol=1e-5)
    np.testing.assert_allclose(i.row_positions, -s.row_positions[::-1])


def test_axes_L_and_A_at_zero_degrees_are_numpy_max():
    rng = np.random.default_rng(8)
    vol = rng.random((11, 17, 23)).astype(np.float32)
    nz, nr, nc = vol.shape
    pl = project(axial(vol), [0], axis="L")  # rays I -> S, rows toward L, columns toward P
    assert pl.images.shape[1] == nc
    np.testing.assert_array_equal(centred(pl.images[0], nr), vol.max(axis=0).T)
    pa = project(axial(vol), [0], axis="a")  # rays R -> L, rows toward A, columns toward I
    assert pa.images.shape[1] == nr and pa.axis == "A"
    np.testing.assert_array_equal(centred(pa.images[0], nz), vol.max(axis=2)[::-1, ::-1].T)
    np.testing.assert_allclose(pa.axis_direction, -P)
    np.testing.assert_allclose(pa.column_directions[0], -S)


def test_reoriented_layout_gives_the_same_projections():
    """The same data stored as (L, A, S)-indexed array (a NIfTI-like layout) projects identically."""
    spacing = (1.3, 0.7, 0.9)
    vol = blobs((7, 40, 34), seed=9)
    mask = vol > 0.5
    nz, nr, nc = vol.shape
    las = np.ascontiguousarray(vol[:, ::-1, :].transpose(2, 1, 0))  # [x, y, z] toward L, A, S
    las_mask = np.ascontiguousarray(mask[:, ::-1, :].transpose(2, 1, 0))
    origin = np.array([0.0, 0.0, 0.0]) + (nr - 1) * spacing[1] * P  # LPS of las[0, 0, 0] = vol[0, nr-1, 0]
    geometry = Geometry(las.shape, (spacing[2], spacing[1], spacing[0]), origin, np.column_stack([L, -P, S]))
    angles = [0, 15, 45, 90, 121, 180, 300]
    ref = project(axial(vol, spacing), angles, mask=mask)
    got = project(Volume(las, geometry), angles, mask=las_mask)
    assert got.array_axis == 2
    np.testing.assert_allclose(got.images, ref.images, atol=1e-5)
    np.testing.assert_array_equal(got.mask_images[[0, 3, 5]], ref.mask_images[[0, 3, 5]])
    assert np.mean(got.mask_images != ref.mask_images) < 0.002
    np.testing.assert_allclose(got.centre, ref.centre)
    np.testing.assert_allclose(got.row_positions, ref.row_positions)


def test_descending_slices_and_in_plane_rotation():
    """Slices stored toward inferior come out ascending toward S; an in-plane rotated acquisition (direction
    cosines at 90° about S) is handled through the direction cosines."""
    vol = blobs((5, 30, 30), seed=10)
    ref = project(axial(vol), [0, 40, 90])
    down = Volume(vol[::-1].copy(), Geometry(vol.shape, (1, 1, 1), 4 * S, np.column_stack([-S, P, L])))
    got = project(down, [0, 40, 90])
    np.testing.assert_allclose(got.images, ref.images, atol=1e-6)
    np.testing.assert_allclose(got.row_positions, ref.row_positions)
    # rows toward L and columns toward A (rotated 90° in plane): rot[z, i, j] = vol[z, 29 - j, i]
    rot = np.ascontiguousarray(np.rot90(vol, k=-1, axes=(1, 2)))
    assert rot[0, 3, 7] == vol[0, 29 - 7, 3]
    origin = 29 * P  # rot[z, 0, 0] = vol[z, 29, 0]
    turned = Volume(rot, Geometry(rot.shape, (1, 1, 1), origin, np.column_stack([S, L, -P])))
    np.testing.assert_allclose(project(turned, [0, 40, 90]).images, ref.images, atol=1e-5)


def test_gantry_tilt_shifts_each_plane():
    """A sheared stack (each slice one row further toward P) equals the unsheared data, plane by plane."""
    nz, nr, nc = 7, 48, 40
    base = blobs((nz, nr, nc), seed=11, radius_px=8, sigma=(1.5, 2.5))
    zc = (nz - 1) // 2
    base[:, :zc] = base[:, nr - zc:] = 0  # nothing wraps around in the rolls below
    sheared = np.stack([np.roll(base[z], -(z - zc), axis=0) for z in range(nz)])  # sheared[z, r] = base[z, r + z - zc]
    spacing = (2.0, 1.0, 1.0)
    affine = np.eye(4)
    affine[:3, 0] = spacing[0] * S + spacing[1] * P  # slice step includes one row toward P
    affine[:3, 1] = spacing[1] * P
    affine[:3, 2] = spacing[2] * L
    affine[:3, 3] = -zc * spacing[1] * P  # same centre as the unsheared volume
    geometry = Geometry(sheared.shape, spacing, affine[:3, 3], AXIAL, affine=affine)
    angles = [0, 90, 270, 30, 160]
    ref = project(axial(base, spacing), angles, fill=0.0)
    got = project(Volume(sheared, geometry), angles, fill=0.0)
    np.testing.assert_allclose(ref.centre, got.centre)
    assert got.width > ref.width  # the planes are shifted: a wider detector covers them
    got_images = centred(got.images, ref.width)
    np.testing.assert_array_equal(got_images[:3], ref.images[:3])  # whole-pixel shifts: exact
    assert np.abs(got_images[3:] - ref.images[3:]).max() < 0.03 * float(base.max())


def test_projections_attrs_are_json_ready():
    import json

    p = project(axial(np.ones((2, 8, 8), np.float32)), [0, 45])
    assert isinstance(p, Projections)
    attrs = json.loads(json.dumps(p.to_attrs()))
    assert attrs["width"] == p.width and attrs["angles_deg"] == [0.0, 45.0] and attrs["axis"] == "S"


def test_lazy_array_is_read():
    class Lazy:
        def __init__(self, a):
            self.a = a
            self.shape, self.dtype = a.shape, a.dtype

        def __getitem__(self, key):
            return self.a[key]

    vol = np.random.default_rng(12).random((2, 10, 12)).astype(np.float32)
    lazy = Volume(Lazy(vol), axial(vol).geometry)
    np.testing.assert_array_equal(project(lazy, [0, 30]).images, project(axial(vol), [0, 30]).images)


def test_all_axes_letters_accepted():
    vol = np.random.default_rng(13).random((6, 8, 10)).astype(np.float32)
    for letter in AXES:
        p = project(axial(vol), [0, 45], axis=letter)
        assert p.axis == letter and np.isfinite(p.images).all()


# ----------------------------------------------------------------------------------------------- validation


def _oblique_volume():
    t = np.deg2rad(5.0)
    row = np.cos(t) * P + np.sin(t) * S  # rows tilted 5° out of the axial plane
    normal = np.cross(row, L)
    return Volume(np.zeros((3, 8, 8), np.float32), Geometry((3, 8, 8), (1, 1, 1), (0, 0, 0),
                                                            np.column_stack([normal, row, L])))


SMALL = axial(np.zeros((2, 4, 4), np.float32))
GEOMETRY = SMALL.geometry


@pytest.mark.parametrize(
    "volume, kwargs, match",
    [
        (np.zeros((2, 4, 4), np.float32), dict(angles_deg=[0]), "Volume"),
        (SMALL, dict(angles_deg=[]), "empty"),
        (SMALL, dict(angles_deg=[0, np.nan]), "finite.*position 1"),
        (SMALL, dict(angles_deg=[[0, 1]]), "1-D"),
        (SMALL, dict(angles_deg=["a"]), "angles_deg"),
        (SMALL, dict(angles_deg=[0], kind="min"), "kind"),
        (SMALL, dict(angles_deg=[0], axis="X"), "axis"),
        (SMALL, dict(angles_deg=[0], axis=2), "axis"),
        (SMALL, dict(angles_deg=[0], pixel_mm=0), "pixel_mm"),
        (SMALL, dict(angles_deg=[0], pixel_mm=np.inf), "pixel_mm"),
        (SMALL, dict(angles_deg=[0], pixel_mm="x"), "pixel_mm"),
        (SMALL, dict(angles_deg=[0], fill="x"), "fill"),
        (SMALL, dict(angles_deg=[0], mask=np.zeros((2, 4, 5), bool)), "mask shape"),
        (SMALL, dict(angles_deg=[0], mask=np.zeros((2, 4, 4), np.float32)), "mask must be bool"),
        (SMALL, dict(angles_deg=[0], mask=np.full((2, 4, 4), 300)), "0..255"),
        (SMALL, dict(angles_deg=[0], mask=[[0]]), "numpy array"),
        (Volume(np.zeros((2, 4, 4, 2), np.float32), GEOMETRY), dict(angles_deg=[0]), "3-D"),
        (Volume(np.zeros((2, 4, 0), np.float32), GEOMETRY), dict(angles_deg=[0]), "empty"),
        (Volume(np.zeros((2, 4, 4), np.complex64), GEOMETRY), dict(angles_deg=[0]), "dtype"),
        (Volume(np.zeros((2, 4, 5), np.float32), GEOMETRY), dict(angles_deg=[0]), "geometry shape"),
        (_oblique_volume(), dict(angles_deg=[0]), "oblique to the S axis"),
        (axial(np.zeros((3, 1, 4), np.float32)), dict(angles_deg=[0]), "at least 2 voxels"),
        (axial(np.zeros((1, 5, 4), np.float32)), dict(angles_deg=[0], axis="L"), "1 x 5 voxels"),
        (SMALL, dict(angles_deg=[0], pixel_mm=1e-6), "pixel_mm"),
    ],
)
def test_input_errors(volume, kwargs, match):
    with pytest.raises(InputError, match=match):
        project(volume, **kwargs)


def test_oblique_volume_can_use_the_axis_it_is_aligned_with():
    """Rows tilted toward S make the volume oblique to S, but not to L: about L the in-plane axes are the slice
    normal and the rows, both perpendicular to L, so that rotation is accepted."""
    p = project(_oblique_volume(), [0, 30], axis="L")
    assert p.images.shape[1] == 8
