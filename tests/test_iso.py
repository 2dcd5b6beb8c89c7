"""voxelpipe.ops.iso.mask_iso against a plain per-component reference (flood fill written here)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from voxelpipe.core.errors import InputError
from voxelpipe.ops.iso import label_lesions, mask_iso


def components(mask: np.ndarray) -> list[list[tuple]]:
    """Connected components of a boolean mask, 26 (or 8) neighbours, by an explicit stack flood fill."""
    seen = np.zeros(mask.shape, dtype=bool)
    offsets = [d for d in itertools.product((-1, 0, 1), repeat=mask.ndim) if any(d)]
    out = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        stack, members = [start], []
        while stack:
            p = stack.pop()
            members.append(p)
            for d in offsets:
                q = tuple(a + b for a, b in zip(p, d))
                if all(0 <= c < s for c, s in zip(q, mask.shape)) and mask[q] and not seen[q]:
                    seen[q] = True
                    stack.append(q)
        out.append(members)
    return out


def reference(suv, mask, fraction=0.41, absolute=None) -> np.ndarray:
    out = np.zeros(mask.shape, dtype=np.uint8)
    for members in components(mask != 0):
        peak = max(suv[p] for p in members)
        for p in members:
            threshold = absolute if absolute is not None else fraction * peak
            if suv[p] >= threshold:
                out[p] = 1
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fraction", [0.41, 0.7])
def test_random_lesions_match_reference(seed, fraction):
    rng = np.random.default_rng(seed)
    shape = (9, 11, 10)
    mask = (rng.random(shape) < 0.12).astype(np.uint8) * rng.integers(1, 3, shape).astype(np.uint8)
    suv = rng.gamma(2.0, 2.0, shape).astype(np.float32)
    got = mask_iso(suv, mask, fraction)
    expected = reference(suv, mask, fraction)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)
    assert not np.any(got & (mask == 0))
    assert label_lesions(mask)[1] == len(components(mask != 0))


def test_diagonal_neighbours_are_one_lesion_and_each_peak_is_kept():
    mask = np.zeros((5, 5, 5), np.uint8)
    mask[1, 1, 1] = mask[2, 2, 2] = 1  # corner-touching: one lesion with 26-connectivity
    mask[4, 4, 0] = mask[4, 4, 1] = 1  # a second lesion
    suv = np.zeros(mask.shape, np.float32)
    suv[1, 1, 1], suv[2, 2, 2] = 10.0, 3.0  # 3 < 0.41 × 10
    suv[4, 4, 0], suv[4, 4, 1] = 2.0, 1.0  # 1 ≥ 0.41 × 2
    got = mask_iso(suv, mask)
    assert got[1, 1, 1] == 1 and got[2, 2, 2] == 0
    assert got[4, 4, 0] == 1 and got[4, 4, 1] == 1
    np.testing.assert_array_equal(got, reference(suv, mask))


def test_absolute_threshold_and_nan():
    rng = np.random.default_rng(5)
    mask = (rng.random((6, 7, 8)) < 0.3).astype(np.uint8)
    suv = rng.random((6, 7, 8)) * 6
    suv[0, 0, 0] = np.nan
    mask[0, 0, 0] = 1
    got = mask_iso(suv, mask, absolute=2.5)
    expected = ((mask != 0) & (suv >= 2.5)).astype(np.uint8)
    np.testing.assert_array_equal(got, expected)
    assert got[0, 0, 0] == 0


def test_empty_mask_and_errors():
    assert not mask_iso(np.ones((3, 3, 3)), np.zeros((3, 3, 3))).any()
    with pytest.raises(InputError, match="shape"):
        mask_iso(np.ones((3, 3, 3)), np.zeros((3, 3, 2)))
    with pytest.raises(InputError, match="fraction"):
        mask_iso(np.ones((3, 3, 3)), np.ones((3, 3, 3)), fraction=1.5)


@pytest.mark.parametrize("seed", range(3))
def test_precomputed_labels_give_the_same_result(seed):
    rng = np.random.default_rng(seed)
    shape = (12, 9, 14)
    mask = (rng.random(shape) < 0.15).astype(np.uint8)
    suv = rng.gamma(2.0, 2.0, shape).astype(np.float32)
    suv[rng.random(shape) < 0.05] = np.nan
    labels = label_lesions(mask)
    for kw in ({"fraction": 0.41}, {"fraction": 1.0}, {"absolute": 3.0}):
        np.testing.assert_array_equal(mask_iso(suv, mask, labels=labels, **kw), mask_iso(suv, mask, **kw))
    finite = np.nan_to_num(suv, nan=0.0)  # the reference's max() is not NaN-aware
    np.testing.assert_array_equal(mask_iso(finite, mask, labels=labels), reference(finite, mask))
    with pytest.raises(InputError, match="labels shape"):
        mask_iso(suv, mask, labels=(labels[0][:-1], labels[1]))


def test_thresholds_compare_in_float64_and_skip_non_finite_lesions():
    # float32 SUV just below / at a float64 threshold that is not a float32 value
    mask = np.zeros((4, 4, 4), np.uint8)
    mask[0, 0, :2] = 1  # lesion 1: peak 10, second voxel 4.1 (threshold 0.41 x 10 = 4.1 in float64)
    mask[3, 3, 2:] = 1  # lesion 2: only NaN and inf: nothing selected
    suv = np.zeros(mask.shape, np.float32)
    suv[0, 0, 0], suv[0, 0, 1] = 10.0, 4.1  # float32(4.1) < 4.1 (float64)
    suv[3, 3, 2], suv[3, 3, 3] = np.nan, np.inf
    got = mask_iso(suv, mask)
    assert got[0, 0, 0] == 1 and got[0, 0, 1] == (np.float64(np.float32(4.1)) >= 0.41 * 10.0)
    assert not got[3].any()
    absolute = float(np.float32(2.5)) + 1e-9  # above the float32 value 2.5 in float64
    suv[0, 0, 1] = 2.5
    assert mask_iso(suv, mask, absolute=absolute)[0, 0, 1] == 0
    assert mask_iso(suv, mask, absolute=2.5)[0, 0, 1] == 1


def test_two_dimensional_and_nested_bounding_boxes():
    # a ring around a second lesion: their bounding boxes overlap, each keeps its own SUVmax
    mask = np.zeros((9, 9), np.uint8)
    mask[1, 1:8] = mask[7, 1:8] = mask[1:8, 1] = mask[1:8, 7] = 1
    mask[4, 4] = mask[4, 5] = 1
    suv = np.ones(mask.shape, np.float64)
    suv[1, 1] = 20.0  # the ring's peak: the ring's other voxels (1) fall below 0.41 x 20
    suv[4, 4], suv[4, 5] = 2.0, 1.0  # the inner lesion keeps both (1 >= 0.82)
    got = mask_iso(suv, mask)
    assert label_lesions(mask)[1] == 2
    np.testing.assert_array_equal(got, reference(suv, mask))
    assert got[4, 4] == got[4, 5] == 1 and got[1, 1] == 1 and got.sum() == 3
