"""Polygon fill against ``skimage.draw.polygon2mask`` (an independent reference), pixel for pixel.

Every random case is seeded. Shapes are small so that the (slow) reference stays quick.
"""
from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import polygon2mask

from voxelpipe.core.errors import InputError
from voxelpipe.kernels import polygon as kernel
from voxelpipe.ops.polygon import fill_polygon, fill_polygons, fill_polygons_volume


def _reference(polygons, shape) -> np.ndarray:
    """XOR of polygon2mask of every polygon (polygon2mask needs at least one vertex)."""
    mask = np.zeros(shape, dtype=bool)
    for poly in polygons:
        poly = np.asarray(poly, dtype=np.float64)
        if len(poly):
            mask ^= polygon2mask(shape, poly)
    return mask.astype(np.uint8)


def _assert_same(polygons, shape) -> None:
    got = fill_polygons(polygons, shape)
    ref = _reference(polygons, shape)
    assert got.dtype == np.uint8 and got.shape == tuple(shape)
    if not np.array_equal(got, ref):
        diff = np.argwhere(got != ref)
        pytest.fail(f"{len(diff)} pixel(s) differ from polygon2mask, first (row, col) {diff[:5].tolist()}; "
                    f"polygons {[np.asarray(p).tolist() for p in polygons]}, shape {shape}")


def _random_polygons(seed: int, count: int, grid: float | None, lo: float, hi: float, kmax: int = 12):
    """``count`` random polygons (3..kmax vertices, mostly self-intersecting) in ``[lo, hi)``; vertices snapped to
    multiples of ``grid`` when given."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        v = rng.uniform(lo, hi, size=(int(rng.integers(3, kmax + 1)), 2))
        if grid is not None:
            v = np.round(v / grid) * grid
        out.append(v)
    return out


# --- the skimage docstring example, written out (a fixed expectation that does not come from our code) -------

def test_docstring_example():
    expected = np.array([
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(fill_polygon(np.array([[1, 1], [2, 7], [8, 4]]), (10, 10)), expected)


def test_square_includes_its_boundary():
    got = fill_polygon([[1, 1], [1, 4], [3, 4], [3, 1]], (5, 6))
    expected = np.zeros((5, 6), np.uint8)
    expected[1:4, 1:5] = 1
    np.testing.assert_array_equal(got, expected)


# --- random polygons ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("grid", [None, 1.0, 0.5, 0.25, 0.1, 1 / 3], ids=["float", "int", "half", "quarter",
                                                                          "tenth", "third"])
def test_random_polygons_match_polygon2mask(grid):
    rng = np.random.default_rng(7)
    for poly in _random_polygons(seed=11, count=120, grid=grid, lo=-4, hi=28):
        shape = (int(rng.integers(1, 26)), int(rng.integers(1, 26)))
        _assert_same([poly], shape)


def test_many_vertex_random_polygons():
    """Dozens of crossings per row: exercises the sort of large event lists."""
    for poly in _random_polygons(seed=3, count=20, grid=None, lo=-2, hi=42, kmax=80):
        _assert_same([poly], (40, 40))
    for poly in _random_polygons(seed=4, count=20, grid=0.5, lo=-2, hi=42, kmax=80):
        _assert_same([poly], (40, 40))


def test_star_polygons():
    rng = np.random.default_rng(5)
    for _ in range(30):
        n = int(rng.integers(3, 60))
        theta = np.sort(rng.uniform(0, 2 * np.pi, n))
        radius = rng.uniform(1, 15) * rng.uniform(0.4, 1.0, n)
        centre = rng.uniform(-5, 40, 2)
        poly = np.stack([centre[0] + radius * np.sin(theta), centre[1] + radius * np.cos(theta)], axis=1)
        _assert_same([poly], (36, 30))


def test_edges_through_pixel_centres():
    """Vertices on lines through lattice points: with half-integer steps the intersections land exactly on pixel
    centres; with 1/3, 0.1, 0.7 steps (not representable) within a few ulps of them."""
    rng = np.random.default_rng(9)
    for step in (0.5, 1.5, -0.5, 1 / 3, 0.1, -0.7):
        for _ in range(60):
            k = int(rng.integers(3, 8))
            anchors = rng.integers(0, 20, size=(k, 2)).astype(float)
            steps = rng.integers(-3, 4, size=(k, 2)).astype(float)
            poly = anchors + steps * (step * rng.choice([1.0, 2.0, 3.0], size=(k, 1)))
            _assert_same([poly], (21, 22))


def test_near_grid_vertices():
    """Vertices a hair off the lattice: intersections within ~1e-9 of a pixel centre, on both sides of the
    kernel's shortcut margin (which must then fall back to skimage's exact arithmetic)."""
    rng = np.random.default_rng(17)
    for _ in range(200):
        k = int(rng.integers(3, 8))
        poly = rng.integers(-2, 20, size=(k, 2)).astype(float)
        poly += rng.choice([0.0, 1e-7, -1e-9, 3e-10, -5e-11, 1e-12, -2e-13, 5e-15], size=(k, 2))
        _assert_same([poly], (19, 18))
    for _ in range(300):  # a few ulps off the lattice, and off lines through lattice points
        k = int(rng.integers(3, 8))
        poly = rng.integers(-2, 20, size=(k, 2)) + rng.choice([0.0, 0.5, 1 / 3, 0.1], size=(k, 1))
        for _ in range(int(rng.integers(1, 4))):
            poly = np.nextafter(poly, np.where(rng.uniform(size=poly.shape) < 0.5, -np.inf, np.inf))
        _assert_same([poly], (19, 18))
    big = rng.integers(-2, 20, size=(6, 2)) * 1.0 + 1e6 * rng.choice([0.0, 1.0], size=(6, 2))
    _assert_same([big + 1e-9], (19, 18))


def test_rectilinear_polygons():
    """Horizontal and vertical edges on integer and half-integer coordinates."""
    rng = np.random.default_rng(13)
    for grid in (1.0, 0.5):
        for _ in range(60):
            k = int(rng.integers(2, 7))
            rows = np.round(rng.uniform(-2, 18, k) / grid) * grid
            cols = np.round(rng.uniform(-2, 18, k) / grid) * grid
            staircase = []
            for i in range(k):  # alternate horizontal and vertical moves
                staircase.append((rows[i], cols[i]))
                staircase.append((rows[i], cols[(i + 1) % k]))
            _assert_same([np.array(staircase)], (17, 16))
            _assert_same([np.stack([rows, cols], axis=1)], (17, 16))


def test_polygons_partly_and_fully_outside():
    for poly in _random_polygons(seed=21, count=60, grid=None, lo=-40, hi=60):
        _assert_same([poly], (20, 24))
    for poly in _random_polygons(seed=22, count=60, grid=1.0, lo=-40, hi=60):
        _assert_same([poly], (20, 24))
    for offset in ([-100.0, 0.0], [100.0, 0.0], [0.0, -100.0], [0.0, 100.0], [-5.0, -5.0]):
        poly = np.array([[0.0, 0.0], [3.0, 0.0], [3.0, 3.0]]) + offset
        assert fill_polygon(poly, (20, 24)).sum() == 0
        _assert_same([poly], (20, 24))


def test_far_away_vertices():
    poly = np.array([[-1e9, -1e9], [5.5, 1e9], [1e9, -3e8], [7.25, 4.0]])
    _assert_same([poly], (30, 30))


def test_tiny_polygons():
    rng = np.random.default_rng(31)
    for _ in range(200):
        centre = rng.integers(0, 10, 2) + rng.choice([0.0, 0.5, rng.uniform()], size=2)
        poly = centre + rng.uniform(-0.6, 0.6, size=(int(rng.integers(3, 6)), 2))
        _assert_same([poly], (10, 10))
    _assert_same([np.array([[2.0, 2.0], [2.0, 2.0], [2.0, 2.0]])], (5, 5))  # all vertices on one centre


@pytest.mark.parametrize("poly", [
    [[1, 1], [3, 4]],
    [[1, 1], [3, 4.5]],
    [[2, 2]],
    [[0.5, 0.5], [3.5, 3.5]],
    [[0, 0], [2, 2], [4, 4]],  # collinear, diagonal through centres
    [[1, 0], [1, 3], [1, 5]],  # collinear, horizontal
    [[0, 1], [3, 1], [5, 1]],  # collinear, vertical
    [[1, 1], [1, 1], [3, 3], [3, 3]],
])
def test_degenerate_polygons(poly):
    """Fewer than 3 distinct vertices: polygon2mask marks only the vertices that sit on pixel centres."""
    _assert_same([np.array(poly, dtype=float)], (6, 6))


def test_vertex_tolerance():
    """A vertex within 1e-12 of a pixel centre marks it; 2e-12 away it does not (skimage's eps)."""
    for delta in (5e-13, -5e-13, 2e-12, -2e-12, 1e-15):
        poly = np.array([[2.0 + delta, 2.0 - delta], [2.0 + delta, 2.0 - delta]])
        _assert_same([poly], (5, 5))
        tri = np.array([[2.0 + delta, 1.0], [4.0, 3.0 + delta], [0.5, 3.0 - delta]])
        _assert_same([tri], (5, 5))
    assert fill_polygon([[2.0 + 5e-13, 2.0]], (5, 5))[2, 2] == 1
    assert fill_polygon([[2.0 + 2e-12, 2.0]], (5, 5)).sum() == 0


def test_empty_polygon_and_no_polygons():
    assert fill_polygons([], (4, 5)).sum() == 0
    assert fill_polygons([np.zeros((0, 2))], (4, 5)).sum() == 0
    assert fill_polygon(np.zeros((0, 2)), (4, 5)).shape == (4, 5)


# --- several polygons: even-odd across them ------------------------------------------------------------------

def test_multiple_polygons_are_xor_of_polygon2mask():
    for seed in range(8):
        polys = _random_polygons(seed=40 + seed, count=6, grid=[None, 1.0, 0.5][seed % 3], lo=-3, hi=25)
        _assert_same(polys, (22, 23))


def test_nested_polygon_makes_a_hole():
    outer = np.array([[1.0, 1.0], [1.0, 10.0], [10.0, 10.0], [10.0, 1.0]])
    inner = np.array([[3.5, 3.5], [3.5, 7.5], [7.5, 7.5], [7.5, 3.5]])
    got = fill_polygons([outer, inner], (12, 12))
    expected = np.zeros((12, 12), np.uint8)
    expected[1:11, 1:11] = 1
    expected[4:8, 4:8] = 0
    np.testing.assert_array_equal(got, expected)
    _assert_same([outer, inner], (12, 12))
    # the same polygon twice cancels
    assert fill_polygons([outer, outer], (12, 12)).sum() == 0


def test_out_is_overwritten_and_returned():
    polys = _random_polygons(seed=50, count=3, grid=None, lo=0, hi=15)
    out = np.full((16, 17), 7, dtype=np.uint8)
    got = fill_polygons(polys, (16, 17), out=out)
    assert got is out
    np.testing.assert_array_equal(out, _reference(polys, (16, 17)))
    got = fill_polygons(polys[:1], (16, 17), out=out)  # reuse: old content gone
    np.testing.assert_array_equal(out, _reference(polys[:1], (16, 17)))


def test_list_and_integer_inputs():
    np.testing.assert_array_equal(fill_polygon([(1, 1), (2, 7), (8, 4)], (10, 10)),
                                  fill_polygon(np.array([[1.0, 1.0], [2.0, 7.0], [8.0, 4.0]]), (10, 10)))
    np.testing.assert_array_equal(fill_polygons(np.array([[[1, 1], [2, 7], [8, 4]]], dtype=np.int32), (10, 10)),
                                  _reference([[[1, 1], [2, 7], [8, 4]]], (10, 10)))


# --- volumes -------------------------------------------------------------------------------------------------

def test_volume_equals_per_slice_reference():
    rng = np.random.default_rng(60)
    shape = (7, 18, 21)
    polys = _random_polygons(seed=61, count=40, grid=None, lo=-3, hi=22, kmax=9)
    polys += _random_polygons(seed=62, count=20, grid=0.5, lo=-3, hi=22, kmax=9)
    index = rng.integers(0, shape[0] - 1, len(polys))  # leaves the last slice empty
    vol = fill_polygons_volume(polys, index, shape)
    assert vol.dtype == np.uint8 and vol.shape == shape
    for z in range(shape[0]):
        np.testing.assert_array_equal(vol[z], _reference([p for p, i in zip(polys, index) if i == z], shape[1:]),
                                      err_msg=f"slice {z}")
    assert vol[-1].sum() == 0
    out = np.full(shape, 3, dtype=np.uint8)
    assert fill_polygons_volume(polys, index, shape, out=out) is out
    np.testing.assert_array_equal(out, vol)


def test_volume_without_polygons():
    vol = fill_polygons_volume([], [], (2, 3, 4), out=np.ones((2, 3, 4), np.uint8))
    assert vol.sum() == 0


# --- validation ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(0, 5), (5, -1), (5,), (5, 5, 5), (5.0, 5), ("5", 5), None, (True, 4)])
def test_bad_shape(shape):
    with pytest.raises(InputError, match="shape"):
        fill_polygons([[[0, 0], [1, 1], [0, 1]]], shape)


@pytest.mark.parametrize("poly, match", [
    ([[0, 0, 0], [1, 1, 1], [0, 1, 1]], r"shape \(K, 2\)"),
    ([0, 1, 2], r"shape \(K, 2\)"),
    ([[0, 0], [np.nan, 1], [0, 1]], "vertex 1 .*not finite"),
    ([[0, 0], [1, np.inf], [0, 1]], "vertex 1 .*not finite"),
    ([[0, 0], [1, 1], [0, 2e12]], "vertex 2 .*beyond"),
    ([["a", 0], [1, 1], [0, 1]], "numbers"),
])
def test_bad_vertices(poly, match):
    with pytest.raises(InputError, match=match):
        fill_polygons([[[0, 0], [1, 1], [0, 1]], poly], (5, 5))
    with pytest.raises(InputError, match="polygon 1"):
        fill_polygons([[[0, 0], [1, 1], [0, 1]], poly], (5, 5))


def test_single_array_passed_as_polygon_list():
    with pytest.raises(InputError, match="fill_polygon"):
        fill_polygons(np.zeros((4, 2)), (5, 5))


@pytest.mark.parametrize("out", [np.zeros((5, 5), np.int16), np.zeros((5, 6), np.uint8),
                                 np.zeros((5, 10), np.uint8)[:, ::2], [[0] * 5] * 5])
def test_bad_out(out):
    with pytest.raises(InputError, match="out"):
        fill_polygons([[[0, 0], [1, 1], [0, 1]]], (5, 5), out=out)


@pytest.mark.parametrize("index, match", [([0, 3], "slice_index\\[1\\] = 3 is outside 0..2"),
                                          ([-1, 0], "slice_index\\[0\\] = -1"),
                                          ([0], "one entry per polygon"),
                                          ([0.5, 1], "integers"),
                                          ([[0, 1]], "one entry per polygon")])
def test_bad_slice_index(index, match):
    polys = [[[0, 0], [1, 1], [0, 1]], [[0, 0], [2, 2], [0, 2]]]
    with pytest.raises(InputError, match=match):
        fill_polygons_volume(polys, index, (3, 5, 5))


def test_volume_bad_shape():
    with pytest.raises(InputError, match="shape"):
        fill_polygons_volume([], [], (5, 5))


# --- the exactness guard: no fast-math in the crossing arithmetic ---------------------------------------------

def test_crossing_arithmetic_is_compiled_without_fastmath():
    fill_polygon([[0, 0], [3, 1], [1, 3]], (4, 4))
    for dispatcher in (kernel._q, kernel._thresholds, kernel.fill_polygon_into, kernel.fill_polygons_2d):
        assert dispatcher.targetoptions.get("fastmath") is False, dispatcher
    for ir in kernel._q.inspect_llvm().values():
        for op in ("fsub", "fmul", "fdiv"):
            for line in ir.splitlines():
                if f" {op} " in line:
                    assert not any(flag in line for flag in (" fast ", " arcp ", " reassoc ", " contract ")), line


def test_rows_with_many_vertex_events_match_polygon2mask():
    """Star polygons of 200 vertices on pixel centres: rows with far more than 32 events, vertex pixels among
    them, take the kernel's heapsort of the row's events; slices run on threads."""
    rng = np.random.default_rng(11)
    polygons, slices = [], []
    for z in range(6):
        for _ in range(2):
            angle = np.sort(rng.uniform(0, 2 * np.pi, 200))
            radius = rng.uniform(5, 60, 200)
            polygons.append(np.round(np.c_[64 + radius * np.sin(angle), 64 + radius * np.cos(angle)]))
            slices.append(z)
    got = fill_polygons_volume(polygons, slices, (6, 128, 128))
    for z in range(6):
        np.testing.assert_array_equal(got[z], _reference([p for p, s in zip(polygons, slices) if s == z], (128, 128)))
