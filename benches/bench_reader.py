"""Training reads: random axial slices/s and random 64x128x128 patches/s of one CT volume, per reader and layout.

The volume is the NSCLC-Radiomics CT of the shared data (134x512x512 int16) converted by ``convert`` once per
store layout (``--layout slices``, ``patches``, ``balanced``, the former default ``--chunks 8,256,256``, and plain
``1,512,512`` and ``64,64,64`` chunks), one worker; without the shared data, a synthetic CT series of the same
shape (``voxelpipe.testing.synthetic``). The conversions are timed once each (convert seconds, bytes on disk:
the layout table). The same volume is also exported for the peers: NIfTI (``convert --format nifti``,
.nii.gz), ``.npy`` and an nnU-Net v2 style blosc2 ``.b2nd`` (64x128x128 chunks of 16x32x32 blocks, zstd clevel 1,
bitshuffle).

Implementations (parameter ids ``<impl>-<layout>-<kind>`` or ``<impl>-<kind>``, kind = slices or patches; peers
skip with the reason when their package is absent):

* ``voxelpipe-<layout>``: ``voxelpipe.reader.SliceReader`` / ``PatchReader`` with ``batch_size=1``,
  ``prefetch=0``, one batch per sample (``reader.batch(0, k)``), default decode threads and chunk cache; the cache
  is emptied before every round, so a round gains only from reuse within itself (neighbouring slices, overlapping
  patches), never from the previous round's reads of the same samples.
* ``tensorstore-<layout>``, ``zarr-python-<layout>``: the same Zarr stores, ``array[z]`` and
  ``array[z:z+64, y:y+128, x:x+128]``.
* ``blosc2``: the .b2nd file opened once, read by slicing (blosc2 decodes only the blocks a read touches);
  one Blosc thread, as nnU-Net's loader sets.
* ``npy-memmap``: ``np.load(mmap_mode="r")`` sliced and copied.
* ``monai`` (patches only): ``LoadImaged`` of the .nii.gz then ``RandSpatialCropd`` per patch, seeded. A
  ``LoadImaged`` per slice decodes the whole volume for one slice: not a meaningful slice reader, so no slice row.
* ``torchio`` (patches only): a ``tio.Queue`` over a ``SubjectsDataset`` of the .nii.gz with a ``UniformSampler``
  (``samples_per_volume`` = all patches of the round, ``num_workers=0``): the volume is loaded once per round and
  every patch is cropped from memory. No slice row, for the same reason as MONAI.

Sampling is seeded and identical where the reader takes positions: slice indices are the ``SliceReader``'s
shuffled order (seed 0), patch starts those of ``PatchReader.patch_start`` (seed 0, uniform over the starts that
keep the patch inside the volume); every store reader reads exactly these. MONAI and TorchIO draw their own
positions (same distribution). One consumer thread (the test's); the files are read from the page cache.

Each round reads ``N_SLICES`` slices or ``N_PATCHES`` patches; the table shows samples/s = count / median round
time, and ``ratio`` = impl median / ``voxelpipe-<default layout>`` median per group (> 1: voxelpipe is faster).
The layout table (convert seconds, bytes on disk, slices/s, patches/s per layout, zarr-python and voxelpipe) is
printed below it.

Run::

    python -m pytest benches/bench_reader.py --benchmark-enable -q -s
    python -m pytest benches/bench_reader.py --benchmark-enable -q -s --benchmark-json=docs/benchmarks/reader.json

The smoke run (``--benchmark-disable``) uses a small synthetic volume and a few samples.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
import zarr

from voxelpipe.core import defaults
from voxelpipe.core.types import Status
from voxelpipe.pipelines.convert import convert
from voxelpipe.reader import PatchReader, SliceReader
from voxelpipe.reader.chunks import clear_cache
from voxelpipe.stores.zarr_store import disk_size
from voxelpipe.testing.synthetic import SeriesSpec, write_series

from _common import Column, RatioTable, shared_data_root

PATCH = (64, 128, 128)
SEED = 0
ROUNDS = 3
N_SLICES = 100
N_PATCHES = 20
FULL_SHAPE = (134, 512, 512)
SMALL_SHAPE = (70, 160, 160)  # smoke run: still holds one 64x128x128 patch
NSCLC = "nsclc-lung1-001/image"
# layout name -> convert keyword arguments
LAYOUTS: dict[str, dict] = {
    "slices": {"layout": "slices"},
    "patches": {"layout": "patches"},
    "balanced": {"layout": "balanced"},
    "chunks8x256x256": {"chunks": (8, 256, 256)},
    "chunks1x512x512": {"chunks": (1, 512, 512)},
    "chunks64x64x64": {"chunks": (64, 64, 64)},
}
STORE_IMPLS = ("voxelpipe", "tensorstore", "zarr-python")
PEERS = ("blosc2", "npy-memmap", "monai", "torchio")
PATCH_ONLY = ("monai", "torchio")
PACKAGES = {"tensorstore": "tensorstore", "blosc2": "blosc2", "monai": "monai", "torchio": "torchio"}
BASELINE = f"voxelpipe-{defaults.VOLUME_LAYOUT}"


@dataclass
class Data:
    source: str
    shape: tuple[int, ...]
    stores: dict[str, str] = field(default_factory=dict)  # layout -> zarr path
    convert_seconds: dict[str, float] = field(default_factory=dict)
    bytes_on_disk: dict[str, int] = field(default_factory=dict)
    grid: dict[str, str] = field(default_factory=dict)  # layout -> "chunks / shards"
    nifti: str = ""
    npy: str = ""
    b2nd: str = ""
    slices: list[int] = field(default_factory=list)
    starts: list[tuple[int, int, int]] = field(default_factory=list)


DATA: dict[str, Data] = {}


def _one_volume(out: str) -> str:
    found = [os.path.join(d, f) for d, dirs, _ in os.walk(os.path.join(out, "data"))
             for f in dirs if f.endswith(".zarr")]
    assert len(found) == 1, found
    return found[0]


def _grid(path: str) -> str:
    array = zarr.open_group(path, mode="r")["image"]
    shards = array.shards
    chunks = "x".join(map(str, array.chunks))
    return chunks if shards is None else f"{chunks} in {'x'.join(map(str, shards))}"


@pytest.fixture(scope="module")
def reader_data(benchmarks_enabled, tmp_path_factory) -> Data:
    root = tmp_path_factory.mktemp("reader")
    real = shared_data_root() / NSCLC
    if benchmarks_enabled and real.is_dir():
        dicom, source = str(real), "NSCLC-Radiomics LUNG1-001 CT (shared data)"
    else:
        shape = FULL_SHAPE if benchmarks_enabled else SMALL_SHAPE
        dicom = str(root / "dicom")
        write_series(dicom, SeriesSpec(n_slices=shape[0], rows=shape[1], columns=shape[2]))
        source = "synthetic CT series"
    manifest_out = str(root / "scan")
    convert([dicom], out=manifest_out, workers=1, progress=False, verify_slices=0)  # the scan, once
    manifest = os.path.join(manifest_out, "manifest", "series_all.csv")
    data = Data(source=source, shape=())
    for name, options in LAYOUTS.items():
        out = str(root / name)
        t0 = time.perf_counter()
        rows = convert(manifest=manifest, out=out, workers=1, progress=False, **options)
        seconds = time.perf_counter() - t0
        assert rows[0]["status"] == Status.DONE, rows
        path = _one_volume(out)
        data.stores[name] = path
        data.convert_seconds[name] = seconds
        data.bytes_on_disk[name] = disk_size(path)
        data.grid[name] = _grid(path)
    volume = np.asarray(zarr.open_group(data.stores["balanced"], mode="r")["image"][...])
    data.shape = volume.shape
    nifti_out = str(root / "nifti")
    rows = convert(manifest=manifest, out=nifti_out, fmt="nifti", workers=1, progress=False)
    assert rows[0]["status"] == Status.DONE, rows
    data.nifti = rows[0]["path"]
    data.npy = str(root / "volume.npy")
    np.save(data.npy, volume)
    if importlib.util.find_spec("blosc2") is not None:
        import blosc2  # optional peer

        data.b2nd = str(root / "volume.b2nd")
        cparams = blosc2.CParams(codec=blosc2.Codec.ZSTD, clevel=1, filters=[blosc2.Filter.BITSHUFFLE],
                                 nthreads=1)
        blosc2.asarray(np.ascontiguousarray(volume), chunks=(64, 128, 128), blocks=(16, 32, 32),
                       cparams=cparams, urlpath=data.b2nd, mode="w")
    n_slices = N_SLICES if benchmarks_enabled else 5
    n_patches = N_PATCHES if benchmarks_enabled else 3
    slices = SliceReader(data.stores["balanced"], batch_size=1, prefetch=0, seed=SEED)
    data.slices = [int(i) for i in slices.order(0)[:n_slices]]
    patches = PatchReader(data.stores["balanced"], PATCH, batch_size=1, prefetch=0, seed=SEED,
                          patches_per_volume=n_patches, shuffle=False)
    data.starts = [tuple(int(v) for v in patches.patch_start(0, 0, k)[0]) for k in range(n_patches)]
    DATA["data"] = data
    yield data
    shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ readers
def _patch(start) -> tuple[slice, ...]:
    return tuple(slice(s, s + p) for s, p in zip(start, PATCH))


def _voxelpipe(data: Data, layout: str, kind: str):
    if kind == "slices":
        reader = SliceReader(data.stores[layout], batch_size=1, prefetch=0, seed=SEED)
        order = list(reader.order(0))
        numbers = [order.index(z) for z in data.slices]  # the batch holding each slice (same order, same seed)

        def run():
            for k in numbers:
                reader.batch(0, k)
        return run
    reader = PatchReader(data.stores[layout], PATCH, batch_size=1, prefetch=0, seed=SEED,
                         patches_per_volume=len(data.starts), shuffle=False)

    def run():
        for k in range(len(data.starts)):
            reader.batch(0, k)
    return run


def _zarr_python(data: Data, layout: str, kind: str):
    array = zarr.open_group(data.stores[layout], mode="r")["image"]
    return _slicer(lambda key: np.asarray(array[key]), data, kind)


def _tensorstore(data: Data, layout: str, kind: str):
    import tensorstore as ts  # optional peer

    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.join(data.stores[layout], "image")}}
    array = ts.open(spec, read=True).result()
    return _slicer(lambda key: array[key].read().result(), data, kind)


def _blosc2(data: Data, layout: str, kind: str):
    import blosc2  # optional peer

    blosc2.set_nthreads(1)
    array = blosc2.open(data.b2nd, mode="r")
    return _slicer(lambda key: array[key], data, kind)


def _npy(data: Data, layout: str, kind: str):
    array = np.load(data.npy, mmap_mode="r")
    return _slicer(lambda key: np.array(array[key]), data, kind)


def _slicer(read, data: Data, kind: str):
    keys = [(z,) for z in data.slices] if kind == "slices" else [_patch(s) for s in data.starts]

    def run():
        for key in keys:
            read(key)
    return run


def _monai(data: Data, layout: str, kind: str):
    from monai.transforms import Compose, LoadImaged, RandSpatialCropd  # optional peer

    size = PATCH[::-1]  # NIfTI axes (column, row, slice)
    transform = Compose([LoadImaged(keys="image", image_only=True, ensure_channel_first=True),
                         RandSpatialCropd(keys="image", roi_size=size, random_size=False)])
    transform.set_random_state(seed=SEED)

    def run():
        for _ in data.starts:
            transform({"image": data.nifti})
    return run


def _torchio(data: Data, layout: str, kind: str):
    import torchio as tio  # optional peer

    n = len(data.starts)

    def run():
        subjects = tio.SubjectsDataset([tio.Subject(image=tio.ScalarImage(data.nifti))])
        queue = tio.Queue(subjects, max_length=n, samples_per_volume=n, sampler=tio.UniformSampler(PATCH[::-1]),
                          num_workers=0, shuffle_subjects=False, shuffle_patches=False, verbose=False)
        for k in range(n):
            queue[k]
    return run


READERS = {"voxelpipe": _voxelpipe, "zarr-python": _zarr_python, "tensorstore": _tensorstore,
           "blosc2": _blosc2, "npy-memmap": _npy, "monai": _monai, "torchio": _torchio}


def _cases() -> list:
    cases = []
    for kind in ("slices", "patches"):
        for impl in STORE_IMPLS:
            for layout in LAYOUTS:
                cases.append(pytest.param(kind, impl, layout, id=f"{impl}-{layout}-{kind}"))
        for impl in PEERS:
            if kind == "slices" and impl in PATCH_ONLY:
                continue
            cases.append(pytest.param(kind, impl, "", id=f"{impl}-{kind}"))
    return cases


# ------------------------------------------------------------------------------------------------ tables
def _layout_lines() -> list[str]:
    data = DATA.get("data")
    if data is None:
        return []
    lines = ["", f"layouts (convert --layout / --chunks): {data.source}, {'x'.join(map(str, data.shape))} int16; "
                 "convert seconds = one run with one worker (scan excluded, verification included)",
             f"{'layout':<16} {'chunks / shards':<28} {'convert s':>9} {'MB on disk':>10} "
             f"{'vp slices/s':>11} {'vp patches/s':>12} {'zarr slices/s':>13} {'zarr patches/s':>14}"]
    for name in LAYOUTS:
        rates = []
        for impl in ("voxelpipe", "zarr-python"):
            for kind in ("slices", "patches"):
                row = TABLE.row(kind, f"{impl}-{name}")
                rates.append(f"{row.figures['rate']:.1f}" if row is not None and row.median else "")
        lines.append(f"{name:<16} {data.grid[name]:<28} {data.convert_seconds[name]:>9.2f} "
                     f"{data.bytes_on_disk[name] / 1e6:>10.2f} {rates[0]:>11} {rates[1]:>12} {rates[2]:>13} "
                     f"{rates[3]:>14}")
    lines.append(f"default layout: {defaults.VOLUME_LAYOUT}")
    return lines


def _header() -> list[str]:
    data = DATA.get("data")
    if data is None:
        return []
    return [f"{data.source}, {'x'.join(map(str, data.shape))} int16; {len(data.slices)} random slices or "
            f"{len(data.starts)} random {'x'.join(map(str, PATCH))} patches per round, median of {ROUNDS} rounds, "
            "one consumer thread, page cache warm"]


TABLE = RatioTable("training reads: slices/s and 64x128x128 patches/s per reader and store layout",
                   baseline=BASELINE, header=_header, footer=_layout_lines,
                   columns=[Column("samples/s", "rate", ".1f"), Column("store", "store", "", align="<")])


# the argument is not called "impl": docs/hooks/bench_tables.py then labels each row with its whole id
# (implementation-layout-kind) instead of the bare implementation
@pytest.mark.parametrize("kind,reader,layout", _cases())
def test_reader(benchmark, benchmarks_enabled, reader_data, kind, reader, layout):
    impl = reader
    package = PACKAGES.get(impl)
    if package is not None and importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (pip install {package})")
    label = f"{impl}-{layout}" if layout else impl
    TABLE.begin(benchmark, kind, impl, label=label)
    run = READERS[impl](reader_data, layout, kind)
    run()  # untimed: opening, first codec use, page cache
    count = len(reader_data.slices if kind == "slices" else reader_data.starts)
    t0 = time.perf_counter()
    # voxelpipe's decoded-chunk cache starts empty in every round: only reuse within a round (neighbouring
    # slices, overlapping patches, as in an epoch) counts, not the previous round's reads of the same samples
    setup = clear_cache if impl == "voxelpipe" else None
    benchmark.pedantic(run, setup=setup, rounds=ROUNDS if benchmarks_enabled else 1, iterations=1)
    elapsed = time.perf_counter() - t0
    median = benchmark.stats.stats.median if benchmark.stats is not None else None
    store = reader_data.grid.get(layout, {"blosc2": "b2nd 64x128x128 / 16x32x32 blocks", "npy-memmap": ".npy",
                                          "monai": ".nii.gz", "torchio": ".nii.gz"}.get(impl, ""))
    TABLE.record(benchmark, rate=count / (median if median else elapsed), store=store)
    benchmark.extra_info.update({"rate": count / (median if median else elapsed), "store": store, "kind": kind})
