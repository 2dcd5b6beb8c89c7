"""Polygon fill into a 512 x 512 mask: ``voxelpipe.ops.polygon`` vs PIL, OpenCV and scikit-image.

Data (seeded, ``_stars``): star-shaped 200-vertex polygons, vertices ``(row, column)`` in pixels, float64:
centre uniform in the image, radius uniform 8..48 px modulated by ``1 + 0.3 sin(m theta + phi)`` (m = 2..6) and a
5% random jitter, angles evenly spaced with a +-30% jitter; many are partly outside the image.

Cases (pytest-benchmark groups), ids ``[voxelpipe]``, ``[pil]``, ``[cv2]``, ``[skimage]``:

* ``polygon-one``: one 200-vertex polygon (radius 150..230 px, centred) into 512 x 512.
* ``polygon-many``: 1,000 such polygons into one 512 x 512 image (20 when benchmarks are disabled, the
  default smoke run, so that it takes seconds).

Implementations (every one allocates its output inside the timing; inputs are converted to each library's
format outside it):

* ``voxelpipe``: one ``fill_polygons(polygons, (512, 512))`` call (validation, packing, the serial scan-line
  kernel); even-odd across the polygons.
* ``pil``: ``Image.new("L")``, ``ImageDraw.polygon(flat [x0, y0, x1, ...] floats, fill=1)`` per polygon, then
  ``np.asarray``: the union of the polygons.
* ``cv2``: ``np.zeros`` then one ``cv2.fillPoly(mask, all_polygons, 1, LINE_8, shift=4)`` call with int32
  points in 1/16 pixel (``round(16 * (x, y))``); OpenCV fills even-odd across the polygons but always draws
  every edge.
* ``skimage``: ``polygon2mask(shape, polygon)`` per polygon, XOR-accumulated (the exact reference of
  voxelpipe's rule); one round, on all the polygons (about 6 s for 1,000 here).

Figures, untimed: every implementation's image against ``polygon2mask`` combined with its own rule (voxelpipe's
exactness against the XOR of ``polygon2mask`` is tested in ``tests/test_polygon.py``). For PIL and OpenCV the
table also reports their inexactness: each polygon drawn alone (the first 100) against its
``polygon2mask``, pixels added / dropped in % of the reference's pixels; and the whole image against the
reference with their own combination rule (PIL: union; cv2: XOR), differing pixels in %.

Numba compile time is never timed: ``extra_info["first_call_seconds"]`` (first call in this process: compile or
load from the on-disk cache) and, when benchmarks are enabled, ``extra_info["cold_compile_seconds"]`` (a fresh
interpreter with an empty ``NUMBA_CACHE_DIR``). voxelpipe also has warm-up rounds before the timing.

Run::

    python -m pytest benches/bench_polygon.py -q                            # smoke test
    python -m pytest benches/bench_polygon.py --benchmark-enable -q -s      # timed, ratio table at the end

Targets (not asserted): >= 2x PIL and >= 100x skimage for 1,000 polygons; at least as fast as OpenCV while exact.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageDraw

from voxelpipe.kernels.polygon import fill_polygons_2d
from voxelpipe.ops.polygon import fill_polygons

from _common import Column, RatioTable
from numba_timing import compile_line
from numba_timing import first_call as measure_first_call

SHAPE = (512, 512)
N_VERTICES = 200
FULL_COUNT = 1000
SMOKE_COUNT = 20
N_CHECK = 100  # polygons drawn alone to measure PIL's and OpenCV's inexactness
IMPLS = ["voxelpipe", "pil", "cv2", "skimage"]
ROUNDS = {"one": {"voxelpipe": 50, "pil": 20, "cv2": 50, "skimage": 1},
          "many": {"voxelpipe": 20, "pil": 5, "cv2": 20, "skimage": 1}}
WARMUP = {"voxelpipe": 2, "pil": 1, "cv2": 1, "skimage": 0}
TARGETS = {"many": {"pil": 2.0, "skimage": 100.0, "cv2": 1.0}}
RULE = {"voxelpipe": "even-odd", "skimage": "even-odd (XOR)", "pil": "union", "cv2": "even-odd + edges"}

COMPILE: dict[str, object] = {}
COUNTS: dict[str, int] = {}  # group -> number of polygons


def _stars(count: int, seed: int, radius: tuple[float, float], centre: tuple[float, float] | None = None):
    """``count`` star-shaped polygons of N_VERTICES ``(row, column)`` vertices (see the module docstring)."""
    rng = np.random.default_rng(seed)
    step = 2 * np.pi / N_VERTICES
    polys = []
    for _ in range(count):
        c = rng.uniform(0, SHAPE[0], 2) if centre is None else np.asarray(centre, float) + rng.uniform(-20, 20, 2)
        r0 = rng.uniform(*radius)
        m = rng.integers(2, 7)
        phi = rng.uniform(0, 2 * np.pi)
        theta = np.arange(N_VERTICES) * step + rng.uniform(-0.3, 0.3, N_VERTICES) * step
        r = r0 * (1 + 0.3 * np.sin(m * theta + phi)) * rng.uniform(0.95, 1.0, N_VERTICES)
        polys.append(np.stack([c[0] + r * np.sin(theta), c[1] + r * np.cos(theta)], axis=1))
    return polys


@pytest.fixture(scope="module")
def datasets(benchmarks_enabled) -> dict[str, list[np.ndarray]]:
    count = FULL_COUNT if benchmarks_enabled else SMOKE_COUNT
    return {"one": _stars(1, seed=1, radius=(150, 230), centre=(256, 256)),
            "many": _stars(count, seed=2, radius=(8, 48))}


# compiles the kernels in a fresh interpreter with an empty numba cache (imports excluded)
COLD_COMPILE_CODE = (
    "import time, numpy as np\n"
    "from voxelpipe.ops.polygon import fill_polygons\n"
    "p = np.array([[0.0, 0.0], [3.0, 1.0], [1.0, 3.0]])\n"
    "t = time.perf_counter(); fill_polygons([p], (4, 4)); print(time.perf_counter() - t)\n"
)


@pytest.fixture(scope="module")
def first_call(benchmarks_enabled) -> dict:
    """Numba compile (or on-disk cache load), measured before anything else calls the kernel."""
    tiny = [np.array([[0.0, 0.0], [3.0, 1.0], [1.0, 3.0]])]
    measure_first_call(lambda: fill_polygons(tiny, (4, 4)), fill_polygons_2d, COMPILE,
                       COLD_COMPILE_CODE if benchmarks_enabled else None)
    print("\n" + compile_line(COMPILE))
    return dict(COMPILE)


@pytest.fixture(scope="module")
def references(datasets) -> dict[str, dict]:
    """Per case: the XOR and the union of ``polygon2mask`` over all polygons, and the first N_CHECK masks."""
    from skimage.draw import polygon2mask  # optional (scikit-image, test extra): every case's reference

    refs = {}
    for case, polys in datasets.items():
        xor = np.zeros(SHAPE, bool)
        union = np.zeros(SHAPE, bool)
        singles = []
        for i, p in enumerate(polys):
            mask = polygon2mask(SHAPE, p)
            xor ^= mask
            union |= mask
            if i < N_CHECK:
                singles.append(mask)
        refs[case] = {"xor": xor, "union": union, "singles": singles}
    return refs


# --- the implementations: prepare (untimed) -> draw(all polygons) / draw_one(one polygon), both return a mask --

def _prepare(impl: str, polys: list[np.ndarray]) -> tuple[Callable[[], np.ndarray], Callable[[int], np.ndarray]]:
    if impl == "voxelpipe":
        return (lambda: fill_polygons(polys, SHAPE)), (lambda i: fill_polygons([polys[i]], SHAPE))
    if impl == "pil":
        flat = [p[:, ::-1].ravel().tolist() for p in polys]  # PIL wants (x, y) = (column, row)

        def draw_pil(items):
            image = Image.new("L", SHAPE[::-1])
            draw = ImageDraw.Draw(image)
            for xy in items:
                draw.polygon(xy, fill=1)
            return np.asarray(image)

        return (lambda: draw_pil(flat)), (lambda i: draw_pil(flat[i:i + 1]))
    if impl == "cv2":
        import cv2  # optional peer: imported only by its cases (they skip without it)

        points = [np.round(p[:, ::-1] * 16).astype(np.int32) for p in polys]  # (x, y) in 1/16 pixel

        def draw_cv2(items):
            mask = np.zeros(SHAPE, np.uint8)
            cv2.fillPoly(mask, items, 1, lineType=cv2.LINE_8, shift=4)
            return mask

        return (lambda: draw_cv2(points)), (lambda i: draw_cv2(points[i:i + 1]))
    from skimage.draw import polygon2mask  # optional peer

    def draw_skimage(items):
        acc = np.zeros(SHAPE, bool)
        for p in items:
            acc ^= polygon2mask(SHAPE, p)
        return acc

    return (lambda: draw_skimage(polys)), (lambda i: draw_skimage(polys[i:i + 1]))


def _inexactness(draw_one: Callable[[int], np.ndarray], singles: list[np.ndarray]) -> dict:
    """Pixels added / dropped by drawing each polygon alone, in % of polygon2mask's pixels."""
    added = dropped = total = 0
    for i, ref in enumerate(singles):
        got = draw_one(i).astype(bool)
        added += int(np.count_nonzero(got & ~ref))
        dropped += int(np.count_nonzero(ref & ~got))
        total += int(np.count_nonzero(ref))
    return {"added_pct": 100.0 * added / total, "dropped_pct": 100.0 * dropped / total, "checked": len(singles)}


def _header() -> list[str]:
    return [f"{group}: {count} x {N_VERTICES}-vertex polygon(s) into {SHAPE[0]}x{SHAPE[1]}"
            for group, count in COUNTS.items()]


def _footer() -> list[str]:
    lines = [compile_line(COMPILE)] if COMPILE else []
    lines.append(f"added/dropped: each polygon drawn alone (first {N_CHECK}) vs skimage polygon2mask, in % of its "
                 "pixels; image diff: the whole image vs polygon2mask combined with the impl's own rule "
                 "(union for PIL, XOR otherwise), in % of the reference's pixels; cv2 draws every polygon's edges "
                 "even where the even-odd rule makes a hole, hence its large image diff with many overlapping polygons")
    lines.append("targets (not asserted): >= 2x PIL, >= 100x skimage for 1,000 polygons; at least as fast as cv2")
    return lines


TABLE = RatioTable(
    "polygon fill: milliseconds, ratios, exactness vs skimage polygon2mask", unit="ms", order=IMPLS,
    header=_header, footer=_footer,
    columns=[Column("target", lambda r: TARGETS.get(r.group.removeprefix("polygon-"), {}).get(r.label),
                    lambda v: f">={v:g}x"),
             Column("rule", lambda r: RULE[r.label], "", align="<"),
             Column("added %", "added_pct", ".2f", missing="0 (exact)"),
             Column("dropped %", "dropped_pct", ".2f", missing="0 (exact)"),
             Column("image diff %", "image_diff_pct", ".2f")])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", ["one", "many"])
def test_polygon_fill(benchmark, datasets, first_call, references, case, impl):
    """Fill the case's polygons; every implementation's difference from polygon2mask is measured, untimed."""
    if impl == "pil":
        pytest.importorskip("PIL")
    if impl == "cv2":
        pytest.importorskip("cv2")
    TABLE.begin(benchmark, f"polygon-{case}", impl)
    polys = datasets[case]
    COUNTS[f"polygon-{case}"] = len(polys)
    ref = references[case]
    draw, draw_one = _prepare(impl, polys)
    if impl == "voxelpipe":
        benchmark.extra_info.update(first_call)

    rounds = ROUNDS[case][impl]
    result = benchmark.pedantic(draw, rounds=rounds, iterations=1, warmup_rounds=WARMUP[impl])

    result = np.asarray(result).astype(bool)
    assert result.shape == SHAPE, (impl, result.shape)
    expected = ref["union"] if impl == "pil" else ref["xor"]
    diff = int(np.count_nonzero(result != expected))
    figures = {"image_diff_pct": 100.0 * diff / max(1, int(np.count_nonzero(expected)))}
    if impl not in ("voxelpipe", "skimage"):
        figures.update(_inexactness(draw_one, ref["singles"]))
        benchmark.extra_info.update({k: figures[k] for k in ("added_pct", "dropped_pct", "image_diff_pct")})
    TABLE.record(benchmark, rounds, **figures)
