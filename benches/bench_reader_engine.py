"""Region reads of a Zarr v3 volume: voxelpipe's ChunkReader against zarr-python and tensorstore.

One synthetic CT-like volume (``voxelpipe.testing.synthetic.phantom_hu(134, 512, 512, seed=0)``, int16 HU) is
written once per session as a ``.zarr`` folder in each chunk layout (8x256x256 = convert's chunks, 1x512x512,
64x64x64; Blosc zstd, bitshuffle, the default level). Each case reads, from one consumer thread, the same seeded
sample of regions (page cache warm, files just written):

* ``slices``: ``N_SLICES`` random axial slices ``image[z]``;
* ``patches``: ``N_PATCHES`` random 64x128x128 patches (starts uniform over the valid range).

Implementations (one row each, per group ``<kind>-<layout>``):

* ``voxelpipe``: ``voxelpipe.reader.chunks.ChunkReader(path).read(region)`` with its default decoded-chunk cache
  (emptied before every round, so only reuse within a round's sample counts);
* ``voxelpipe-nocache``: the same with the cache off (every read decodes its chunks);
* ``zarr-python``: ``zarr.open_group(path, mode="r")["image"][region]``;
* ``tensorstore``: ``tensorstore.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": ...}})``, then
  ``array[region].read().result()`` (no cache pool).

Every implementation's reads are checked against the volume in memory (outside the timing). The table reports
slices/s or patches/s (reads / median round) and ratio = impl median / voxelpipe median.

Run:

* smoke test (pyproject addopts ``--benchmark-disable``): a 24x128x128 volume, 3 reads per case::

    python -m pytest benches/bench_reader_engine.py -q

* timed, with the table in the terminal summary::

    python -m pytest benches/bench_reader_engine.py --benchmark-enable -q -s
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from voxelpipe.reader.chunks import DEFAULT_CACHE_BYTES, ChunkReader, clear_cache, configure
from voxelpipe.stores.zarr_store import DEFAULT_CLEVEL
from voxelpipe.testing.synthetic import phantom_hu

from _common import Column, RatioTable

FULL_SHAPE = (134, 512, 512)
SMALL_SHAPE = (24, 128, 128)
SEED = 0
ROUNDS = 5
N_SLICES = 60
N_PATCHES = 12
SMOKE_READS = 3
PATCH = (64, 128, 128)
LAYOUTS = {"8x256x256": (8, 256, 256), "1x512x512": (1, 512, 512), "64x64x64": (64, 64, 64)}
IMPLS = ["voxelpipe", "voxelpipe-nocache", "zarr-python", "tensorstore"]


def _per_second(row) -> float | None:
    reads = row.figures.get("reads")
    return reads / row.median if reads and row.median else None


def _footer() -> list[str]:
    return [f"voxelpipe: decoded-chunk cache {DEFAULT_CACHE_BYTES >> 20} MiB, emptied before every round; "
            f"blosc2 {'used' if blosc2_version() else 'absent (numcodecs Blosc)'}; "
            f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end"]


def blosc2_version() -> str | None:
    try:
        import blosc2  # noqa: PLC0415  (optional: only named in the footer)
    except ImportError:
        return None
    return blosc2.__version__


TABLE = RatioTable("reader engine: region reads per second (one consumer thread)", order=IMPLS,
                   columns=[Column("reads", "reads", "d"), Column("reads/s", _per_second, ".1f")],
                   footer=_footer)


@pytest.fixture(scope="module")
def volume(benchmarks_enabled) -> np.ndarray:
    return phantom_hu(*(FULL_SHAPE if benchmarks_enabled else SMALL_SHAPE), seed=SEED)


@pytest.fixture(scope="module")
def stores(volume, tmp_path_factory) -> dict[str, str]:
    """layout -> path of the volume written with those chunks."""
    root = tmp_path_factory.mktemp("engine")
    paths = {}
    for name, chunks in LAYOUTS.items():
        path = str(root / f"{name}.zarr")
        group = zarr.open_group(path, mode="w")
        array = group.create_array("image", shape=volume.shape, dtype=volume.dtype,
                                   chunks=tuple(min(c, s) for c, s in zip(chunks, volume.shape)),
                                   compressors=BloscCodec(cname="zstd", clevel=DEFAULT_CLEVEL, shuffle="bitshuffle"))
        array[...] = volume
        paths[name] = path
    return paths


def _regions(kind: str, shape: tuple[int, ...], n: int) -> list[tuple]:
    rng = np.random.default_rng(SEED)
    if kind == "slices":
        return [(int(z),) for z in rng.integers(0, shape[0], n)]
    size = tuple(min(p, s) for p, s in zip(PATCH, shape))
    starts = [[int(rng.integers(0, s - p + 1)) for s, p in zip(shape, size)] for _ in range(n)]
    return [tuple(slice(a, a + p) for a, p in zip(start, size)) for start in starts]


def _opener(impl: str, path: str):
    """(read function region -> ndarray, close function) of ``impl``."""
    if impl.startswith("voxelpipe"):
        reader = ChunkReader(path)
        return reader.read, reader.close
    if impl == "zarr-python":
        array = zarr.open_group(path, mode="r")["image"]
        return (lambda region: array[region]), array.store.close
    ts = pytest.importorskip("tensorstore", reason="tensorstore is not installed (pip install tensorstore)")
    array = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": path + "/image"}}).result()
    return (lambda region: array[region].read().result()), lambda: None


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kind", ["slices", "patches"])
def test_reads(benchmark, benchmarks_enabled, volume, stores, kind, layout, impl):
    TABLE.begin(benchmark, f"{kind}-{layout}", impl)
    n = (N_SLICES if kind == "slices" else N_PATCHES) if benchmarks_enabled else SMOKE_READS
    regions = _regions(kind, volume.shape, n)
    read, close = _opener(impl, stores[layout])
    configure(cache_bytes=0 if impl == "voxelpipe-nocache" else DEFAULT_CACHE_BYTES)
    try:
        for region in regions[:2]:
            np.testing.assert_array_equal(np.asarray(read(region)), volume[region])

        def run():
            for region in regions:
                read(region)

        benchmark.pedantic(run, setup=clear_cache, rounds=ROUNDS if benchmarks_enabled else 1, iterations=1)
    finally:
        close()
        configure(cache_bytes=DEFAULT_CACHE_BYTES)
    TABLE.record(benchmark, reads=n)
