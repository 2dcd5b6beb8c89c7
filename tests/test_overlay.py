"""voxelpipe.ops.overlay (windowing, outlines) and voxelpipe.stores.images.overlay_png (PNG output), against slow
obvious references (pixel loops, the DICOM VOI formula written out) and Pillow's own decoding."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from voxelpipe.core.errors import InputError
from voxelpipe.ops.overlay import outline, overlay_rgb, window_to_uint8
from voxelpipe.stores.images import overlay_png


def ref_outline(mask: np.ndarray) -> np.ndarray:
    """Inside pixels with a 4-neighbour outside the mask or beyond the image edge."""
    rows, cols = mask.shape
    result = np.zeros(mask.shape, bool)
    for r in range(rows):
        for c in range(cols):
            if not mask[r, c]:
                continue
            for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                rr, cc = r + dr, c + dc
                if not (0 <= rr < rows and 0 <= cc < cols) or not mask[rr, cc]:
                    result[r, c] = True
    return result


def ref_window(value: float, centre: float, width: float) -> int:
    """DICOM PS3.3 C.11.2.1.2.1 linear VOI function, output range 0-255, rounded."""
    if value <= centre - 0.5 - (width - 1) / 2:
        return 0
    if value > centre - 0.5 + (width - 1) / 2:
        return 255
    return int(np.rint(((value - (centre - 0.5)) / (width - 1) + 0.5) * 255))


def blob(rows: int, cols: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    r, c = np.mgrid[:rows, :cols]
    return ((r - centre[0]) ** 2 + (c - centre[1]) ** 2 <= radius ** 2).astype(np.uint8)


@pytest.fixture
def image() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(-200, 1200, size=(21, 34)).astype(np.int16)  # not square: a transposition shows


def test_outline_matches_pixel_loop_reference():
    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = (rng.random((13, 17)) < 0.6).astype(np.uint8)
        np.testing.assert_array_equal(outline(mask), ref_outline(mask))
    disc = blob(30, 40, (10, 35), 8)  # touches the right edge: edge pixels count as outline
    np.testing.assert_array_equal(outline(disc), ref_outline(disc))
    assert outline(disc)[:, -1].any()
    assert not outline(np.zeros((5, 5))).any()
    full = np.ones((4, 6), bool)
    np.testing.assert_array_equal(outline(full), ref_outline(full))


def test_window_follows_dicom_linear_formula(image):
    for centre, width in ((500, 1000), (40.5, 2), (300, 1), (-100, 37)):
        got = window_to_uint8(image, (centre, width))
        want = np.vectorize(lambda v, centre=centre, width=width: ref_window(float(v), centre, width))(image)
        if width == 1:
            want = np.where(image > centre - 0.5, 255, 0)
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.uint8


def test_window_default_is_1st_to_99th_percentile(image):
    got = window_to_uint8(image)
    lo, hi = np.percentile(image, [1, 99])
    assert (got[image <= lo] == 0).all()
    assert (got[image >= hi] == 255).all()
    order = np.argsort(image, axis=None)
    assert (np.diff(got.ravel()[order].astype(int)) >= 0).all()  # monotonic in the value
    middle = image == np.median(image)
    if middle.any():
        expected = (np.median(image) - lo) / (hi - lo) * 255
        assert abs(int(got[middle][0]) - expected) <= 0.5 + 1e-9
    assert (window_to_uint8(np.full((3, 3), 42)) == 0).all()  # flat image: no division by zero


def test_overlay_rgb_paints_outlines_only(image):
    inner = blob(*image.shape, (10, 15), 4)
    outer = blob(*image.shape, (10, 15), 7)
    rgb = overlay_rgb(image, {"i": inner, "o": outer}, window=(500, 1000))
    grey = np.vectorize(lambda v: ref_window(float(v), 500, 1000))(image)
    assert rgb.shape == image.shape + (3,) and rgb.dtype == np.uint8
    edge_i, edge_o = ref_outline(inner.astype(bool)), ref_outline(outer.astype(bool))
    assert (rgb[edge_i & ~edge_o] == (255, 0, 0)).all()
    assert (rgb[edge_o] == (0, 255, 0)).all()  # later mask wins where outlines meet
    rest = ~(edge_i | edge_o)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel][rest], grey[rest])


def test_custom_colours_and_other_names(image):
    a = blob(*image.shape, (5, 5), 3)
    b = blob(*image.shape, (12, 25), 4)
    rgb = overlay_rgb(image, {"a": a, "b": b}, colors={"a": (1, 2, 3)})
    assert (rgb[ref_outline(a.astype(bool))] == (1, 2, 3)).all()
    colour_b = rgb[ref_outline(b.astype(bool))]
    assert (colour_b == colour_b[0]).all() and tuple(colour_b[0]) not in {(1, 2, 3), (255, 0, 0), (0, 255, 0)}


def test_overlay_png_decodes_with_pillow(tmp_path, image):
    inner = blob(*image.shape, (10, 15), 4)
    path = tmp_path / "deep" / "er" / "x.png"
    returned = overlay_png(image, {"i": inner}, path, window=(500, 1000))
    assert returned == str(path)
    with Image.open(path) as png:
        assert png.format == "PNG" and png.mode == "RGB"
        assert png.size == (image.shape[1], image.shape[0])  # Pillow reports (width, height)
        decoded = np.asarray(png)
    np.testing.assert_array_equal(decoded, overlay_rgb(image, {"i": inner}, window=(500, 1000)))
    assert (decoded[ref_outline(inner.astype(bool))] == (255, 0, 0)).all()
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.png"]  # no temporary file left


@pytest.mark.parametrize("call", [
    lambda img: overlay_rgb(img[None], {}),                                   # 3-D image
    lambda img: overlay_rgb(img, {"i": np.zeros((img.shape[1], img.shape[0]))}),  # transposed mask
    lambda img: overlay_rgb(img, {}, window=(10, 0.5)),                       # width < 1
    lambda img: overlay_rgb(img, {"i": np.zeros(img.shape)}, colors={"i": (300, 0, 0)}),
])
def test_bad_input_raises_input_error(image, call):
    with pytest.raises(InputError):
        call(image)
