"""Zarr chunk and shard shapes for a CT volume: write speed, ratio, random-slice and random-patch reads.

Chunk and shard shapes are chosen by measurement (write speed, ratio, random-slice read, random 64^3 patch read).
One phantom volume (``voxelpipe.testing.synthetic.phantom_hu(300, 512, 512, seed=0)``,
int16 HU, 157 MB) is written once per round with each candidate layout, then read back:

* ``chunks-1x512x512``, ``chunks-8x256x256``, ``chunks-16x256x256`` (convert's default), ``chunks-32x128x128``,
  ``chunks-64x64x64``: through ``voxelpipe.stores.zarr_store.ZarrVolumeWriter`` (Blosc zstd, bitshuffle, the
  default level), slab by slab of ``chunks[0]`` slices, as ``convert`` streams them, in one process with one
  Blosc thread. The timed part is the whole write: every slab, then ``finish()`` (close, rename).
* ``shards-16x512x512-16x64x64``: inner chunks (16, 64, 64) in shards of (16, 512, 512). The writer encodes
  chunks itself and stores them under zarr's plain chunk keys, so it cannot write the sharding codec's shard
  objects; the module checks that on a tiny array (``WRITER_SHARDS``) and, when the writer cannot, writes this
  layout with zarr's own API (``create_array(chunks=..., shards=...)`` and ``array[z0:z1] = slab`` per shard
  slab), with the same codec. Its write speed is then zarr-python's, not the writer's; the table says so.

Measured per layout (write: median of 3 rounds; reads from the page cache, files just written, through
``zarr.open_group(path, mode="r")["image"]``, seeded rng, 20 reads each, median ms):

* write MB/s (raw int16 bytes / write seconds), compression ratio (raw bytes / bytes on disk), stored objects;
* random axial slice ``image[z]``; random coronal slice ``image[:, y]`` (the cost of a thin-z layout);
* random 64^3 patch ``image[z:z+64, y:y+64, x:x+64]`` (origins uniform over the valid range).

Each case checks the stored array's shape and chunks (a sanity check; the writer's content is tested through
``convert`` in tests/). Nothing is asserted about speed. In the ratio table the implementation is ``voxelpipe``
(ZarrVolumeWriter) or ``zarr`` (zarr's API) and the baseline is convert's default layout: ratio = layout's write
median / the default's.

Run:

* smoke test (pyproject addopts ``--benchmark-disable``): one write per layout of a 64x128x128 volume, 3 reads
  of each kind::

    python -m pytest benches/bench_chunks.py -q

* timed, with the table in the terminal summary::

    python -m pytest benches/bench_chunks.py --benchmark-enable -q -s
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from voxelpipe.stores.zarr_store import DEFAULT_CLEVEL, ZarrVolumeWriter, disk_size
from voxelpipe.testing.synthetic import phantom_hu

from _common import Column, RatioTable

try:
    from voxelpipe.pipelines.series_volume import DEFAULT_CHUNKS
except ImportError:  # pragma: no cover - renamed in src/
    DEFAULT_CHUNKS = (16, 256, 256)

DATA_VERSION = "chunks-v1"
FULL_SHAPE = (300, 512, 512)
SMALL_SHAPE = (64, 128, 128)
SEED = 0
ROUNDS = 3
N_READS = 20  # per kind of read when timed
SMOKE_READS = 3  # when benchmarks are disabled
PATCH = 64

# id -> (chunks, shards or None)
LAYOUTS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int] | None]] = {
    "chunks-1x512x512": ((1, 512, 512), None),
    "chunks-8x256x256": ((8, 256, 256), None),
    "chunks-16x256x256": ((16, 256, 256), None),
    "chunks-32x128x128": ((32, 128, 128), None),
    "chunks-64x64x64": ((64, 64, 64), None),
    "shards-16x512x512-16x64x64": ((16, 64, 64), (16, 512, 512)),
}

GROUP = "zarr-chunks-write"
DEFAULT_LAYOUT = "chunks-" + "x".join(map(str, DEFAULT_CHUNKS))
SHAPES: dict[str, tuple[int, ...]] = {}


def _fit(block: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """A chunk or shard shape no larger than the array (the small smoke volume)."""
    return tuple(min(b, s) for b, s in zip(block, shape))


@pytest.fixture(scope="session")
def chunk_volume(benchmarks_enabled) -> np.ndarray:
    """The phantom volume; the full one is cached under the system temp folder (it takes ~8 s to make)."""
    shape = FULL_SHAPE if benchmarks_enabled else SMALL_SHAPE
    if not benchmarks_enabled:
        return phantom_hu(*shape, seed=SEED)
    path = Path(tempfile.gettempdir()) / f"voxelpipe-bench-{DATA_VERSION}" / (
        "phantom_" + "x".join(map(str, shape)) + f"_seed{SEED}.npy")
    if path.is_file():
        try:
            volume = np.load(path)
            if volume.shape == shape and volume.dtype == np.int16:
                return volume
        except (OSError, ValueError):
            pass
    volume = phantom_hu(*shape, seed=SEED)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npy")
    np.save(partial, volume)
    os.replace(partial, path)
    return volume


def _write_with_writer(volume: np.ndarray, path: str, chunks) -> int:
    writer = ZarrVolumeWriter(path, "dir", volume.shape, volume.dtype, chunks, {}, clevel=DEFAULT_CLEVEL)
    depth = chunks[0]
    try:
        for z0 in range(0, volume.shape[0], depth):
            writer.write(z0, volume[z0:z0 + depth])
        return writer.finish()
    except BaseException:
        writer.abort()
        raise


def _write_with_zarr(volume: np.ndarray, path: str, chunks, shards) -> int:
    """zarr's own API (sharding codec): same codec, one shard slab of slices at a time."""
    store = zarr.storage.LocalStore(path)
    group = zarr.create_group(store=store, zarr_format=3)
    codec = BloscCodec(cname="zstd", clevel=DEFAULT_CLEVEL, shuffle="bitshuffle", typesize=volume.dtype.itemsize)
    array = group.create_array("image", shape=volume.shape, dtype=volume.dtype, chunks=chunks, shards=shards,
                               compressors=[codec], fill_value=0, dimension_names=["slice", "row", "column"])
    depth = (shards or chunks)[0]
    for z0 in range(0, volume.shape[0], depth):
        array[z0:z0 + depth] = volume[z0:z0 + depth]
    store.close()
    return disk_size(path)


def _timed_reads(array, rng: np.random.Generator, n: int, index) -> list[float]:
    times = []
    for _ in range(n):
        key = index(rng)
        t0 = time.perf_counter()
        np.asarray(array[key])
        times.append(time.perf_counter() - t0)
    return times


def _measure_reads(path: str, shape: tuple[int, int, int], n_reads: int) -> dict:
    array = zarr.open_group(path, mode="r")["image"]
    np.asarray(array[0])  # untimed: opening, metadata, first codec use
    rng = np.random.default_rng(20240601)
    nz, ny, nx = shape
    pz, py, px = min(PATCH, nz), min(PATCH, ny), min(PATCH, nx)

    def axial(r):
        return int(r.integers(nz))

    def coronal(r):
        return np.s_[:, int(r.integers(ny))]

    def patch(r):
        z, y, x = int(r.integers(nz - pz + 1)), int(r.integers(ny - py + 1)), int(r.integers(nx - px + 1))
        return np.s_[z:z + pz, y:y + py, x:x + px]

    out = {}
    for name, index in (("axial", axial), ("coronal", coronal), ("patch", patch)):
        times = _timed_reads(array, rng, n_reads, index)
        out[f"{name}_ms"] = 1e3 * float(np.median(times))
        out[f"{name}_ms_mean"] = 1e3 * float(np.mean(times))
    return out


def _n_objects(path: str) -> int:
    return sum(len(files) for _, _, files in os.walk(path))


def _header() -> list[str]:
    shape = SHAPES["volume"]
    mb = np.prod(shape) * 2 / 1e6
    return [f"phantom {shape[0]}x{shape[1]}x{shape[2]} int16 ({mb:.0f} MB), Blosc zstd clevel {DEFAULT_CLEVEL} "
            f"bitshuffle, one process, one Blosc thread; write = median of {ROUNDS} rounds; reads = median of "
            f"{N_READS} random reads from the page cache via zarr.open_group(...)['image']"]


def _footer() -> list[str]:
    return [f"baseline = convert's current default chunks {tuple(DEFAULT_CHUNKS)}",
            "ZarrVolumeWriter writes plain chunks (it encodes them itself); the sharded layout is written "
            "with zarr's API"]


TABLE = RatioTable(
    "zarr chunk/shard layouts: write speed, ratio, random reads", baseline=DEFAULT_LAYOUT, order=list(LAYOUTS),
    header=_header, footer=_footer,
    columns=[Column("write MB/s", "write_mb_s", ".1f"), Column("compression", "ratio", ".3f"),
             Column("objects", "objects", "d"), Column("axial ms", "axial_ms", ".2f"),
             Column("coronal ms", "coronal_ms", ".2f"), Column("64^3 ms", "patch_ms", ".2f"),
             Column("written by", "writer", "", align="<")])


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_chunk_layout(benchmark, benchmarks_enabled, chunk_volume, tmp_path, layout):
    """Write the phantom with one layout (timed), then measure ratio and random reads."""
    volume = chunk_volume
    chunks, shards = LAYOUTS[layout]
    chunks = _fit(chunks, volume.shape)
    if shards is not None:
        shards = _fit(shards, volume.shape)
    use_writer = shards is None
    write = _write_with_writer if use_writer else _write_with_zarr
    TABLE.begin(benchmark, GROUP, "voxelpipe" if use_writer else "zarr", label=layout)
    SHAPES["volume"] = volume.shape

    paths: list[str] = []

    def setup():
        for old in paths:  # the previous round's volume goes, untimed
            shutil.rmtree(old, ignore_errors=True)
        paths.clear()
        paths.append(str(tmp_path / f"v{time.monotonic_ns()}.zarr"))
        return ((volume, paths[-1], chunks) if use_writer else (volume, paths[-1], chunks, shards)), {}

    t0 = time.perf_counter()
    bytes_out = benchmark.pedantic(write, setup=setup, rounds=ROUNDS, iterations=1)
    elapsed = time.perf_counter() - t0  # one run when disabled
    path = paths[-1]

    stored = zarr.open_group(path, mode="r")["image"]  # sanity: the layout that was asked for
    assert stored.shape == volume.shape and tuple(stored.chunks) == chunks, (stored.shape, stored.chunks)

    median = benchmark.stats.stats.median if benchmark.stats is not None else None
    seconds = median if median is not None else elapsed
    record = {
        "shape": volume.shape, "chunks": chunks, "shards": shards, "median": median,
        "write_mb_s": volume.nbytes / seconds / 1e6, "ratio": volume.nbytes / bytes_out, "bytes_out": bytes_out,
        "objects": _n_objects(path) - 2,  # less the group's and the array's zarr.json
        "writer": "ZarrVolumeWriter" if use_writer else "zarr API (writer has no shards)",
    }
    record.update(_measure_reads(path, volume.shape, N_READS if benchmarks_enabled else SMOKE_READS))
    benchmark.extra_info.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in record.items()
                                 if k not in ("median",)})
    TABLE.record(benchmark, ROUNDS, **record)
    shutil.rmtree(path, ignore_errors=True)
