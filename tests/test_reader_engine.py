"""voxelpipe.reader.chunks: regions of Zarr v3 arrays read straight from dir, zip and sqlite stores.

Every region is compared with numpy slicing of the whole array read by plain zarr-python (independent of the
chunk reader), for the convert default chunks, single-slice chunks, cubes, and a sharded array; regions cross
chunk and array edges; chunks never written read as the fill value.
"""
from __future__ import annotations

import logging
import zipfile

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, ZstdCodec

from voxelpipe.core.errors import InputError
from voxelpipe.core.masks import Mask
from voxelpipe.reader.chunks import DEFAULT_CACHE_BYTES, ChunkReader, configure, read_regions
from voxelpipe.stores.masks import write_masks
from voxelpipe.stores.sqlite_store import SqliteStore

SHAPE = (37, 300, 290)
BLOSC = BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
LAYOUTS = {
    "8x256x256": {"chunks": (8, 256, 256)},
    "1x512x512": {"chunks": (1, 512, 512)},
    "64x64x64": {"chunks": (64, 64, 64)},
    "sharded": {"chunks": (16, 32, 32), "shards": (64, 128, 128)},
}
SUFFIX = {"dir": ".zarr", "zip": ".zarr.zip", "sqlite": ".zarr.sqlite"}


def _store(path: str, kind: str, compression: int = zipfile.ZIP_STORED):
    if kind == "dir":
        return zarr.storage.LocalStore(path)
    if kind == "zip":
        return zarr.storage.ZipStore(path, mode="w", compression=compression)
    return SqliteStore(path)


def _phantom(shape, dtype) -> np.ndarray:
    rng = np.random.default_rng(7)
    z, y, x = np.indices(shape)
    values = 40 * np.sin(z / 5.0) + 3 * (y % 17) - 2 * (x % 13) + rng.normal(0, 5, shape)
    return values.astype(dtype)


def _write(path: str, kind: str, layout: dict, *, dtype="int16", fill_value=0, region=None,
           compressors=BLOSC, compression: int = zipfile.ZIP_STORED) -> np.ndarray:
    """Write ``image`` (all of it, or only ``region``) and return the array read back by plain zarr."""
    store = _store(path, kind, compression)
    group = zarr.open_group(store=store, mode="w")
    array = group.create_array("image", shape=SHAPE, dtype=dtype, fill_value=fill_value,
                               compressors=compressors, **layout)
    data = _phantom(SHAPE, dtype)
    if region is None:
        array[...] = data
    else:
        array[region] = data[region]
    store.close()
    return _plain(path, kind)


def _plain(path: str, kind: str, array_path: str = "image") -> np.ndarray:
    if kind == "dir":
        store = zarr.storage.LocalStore(path, read_only=True)
    elif kind == "zip":
        store = zarr.storage.ZipStore(path, mode="r", read_only=True)
    else:
        store = SqliteStore(path, read_only=True)
    values = zarr.open_array(store=store, path=array_path, mode="r")[...]
    store.close()
    return values


def _regions(shape, count: int, seed: int):
    """Random step-1 regions: many cross chunk edges, some run past the array's end, some are single slices."""
    rng = np.random.default_rng(seed)
    found = []
    for k in range(count):
        region = []
        for n in shape:
            start = int(rng.integers(0, n))
            length = int(rng.integers(1, n + 40))
            region.append(slice(start, start + length))
        if k % 5 == 0:
            region[0] = int(rng.integers(0, shape[0]))
        found.append(tuple(region))
    found += [(slice(None),), (slice(-3, None), slice(250, 400)), (0,), (SHAPE[0] - 1, 299)]
    return found


@pytest.mark.parametrize("kind", list(SUFFIX))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_regions_equal_plain_zarr(tmp_path, kind, layout):
    path = str(tmp_path / ("v" + SUFFIX[kind]))
    expected = _write(path, kind, LAYOUTS[layout])
    with ChunkReader(path) as reader:
        assert reader.native
        assert reader.shape == SHAPE and reader.dtype == np.int16
        for region in _regions(SHAPE, 12, seed=len(layout)):
            np.testing.assert_array_equal(reader.read(region), expected[region], err_msg=str(region))


@pytest.mark.parametrize("layout", ["8x256x256", "sharded"])
def test_missing_chunks_are_the_fill_value(tmp_path, layout):
    path = str(tmp_path / "v.zarr")
    region = (slice(3, 20), slice(40, 150), slice(10, 100))
    expected = _write(path, "dir", LAYOUTS[layout], fill_value=-1024, region=region)
    assert (expected == -1024).any()
    with ChunkReader(path) as reader:
        for r in _regions(SHAPE, 8, seed=3):
            np.testing.assert_array_equal(reader.read(r), expected[r], err_msg=str(r))
        assert (reader.read((30,)) == -1024).all()


def test_float_nan_fill_and_out_argument(tmp_path):
    path = str(tmp_path / "v.zarr.sqlite")
    expected = _write(path, "sqlite", LAYOUTS["64x64x64"], dtype="float32", fill_value=float("nan"),
                      region=(slice(0, 10),))
    reader = ChunkReader(path)
    assert reader.dtype == np.float32
    np.testing.assert_array_equal(reader.read((slice(5, 20), slice(0, 70))), expected[5:20, :70])
    out = np.zeros((4, 3, 300, 290), np.float64)
    view = out[1, :, :, :]
    assert reader.read((slice(8, 11),), out=view) is view
    np.testing.assert_array_equal(out[1], expected[8:11].astype(np.float64))
    assert not out[0].any()
    with pytest.raises(InputError):
        reader.read((slice(0, 2),), out=np.empty((3, 300, 290)))
    with pytest.raises(InputError):
        reader.read((slice(0, 10, 2),))
    reader.close()


def test_deflated_zip_members(tmp_path):
    path = str(tmp_path / "v.zarr.zip")
    expected = _write(path, "zip", LAYOUTS["8x256x256"], compression=zipfile.ZIP_DEFLATED)
    with ChunkReader(path) as reader:
        for region in _regions(SHAPE, 5, seed=11):
            np.testing.assert_array_equal(reader.read(region), expected[region])


def test_other_codecs_fall_back_to_zarr(tmp_path, caplog):
    path = str(tmp_path / "v.zarr")
    expected = _write(path, "dir", LAYOUTS["64x64x64"], compressors=GzipCodec())
    with caplog.at_level(logging.INFO, logger="voxelpipe"):
        reader = ChunkReader(path)
    assert not reader.native
    for region in _regions(SHAPE, 4, seed=5):
        np.testing.assert_array_equal(reader.read(region), expected[region])
    reader.close()


@pytest.mark.parametrize("kind", list(SUFFIX))
def test_masks_and_batched_reads(tmp_path, kind):
    path = str(tmp_path / ("v" + SUFFIX[kind]))
    image = _write(path, kind, LAYOUTS["8x256x256"])
    masks = {"body": (image > 0).astype(np.uint8), "edge": (image % 11 == 0).astype(np.uint8)}
    write_masks(path, [Mask(name, values) for name, values in masks.items()])
    plain = {name: _plain(path, kind, f"labels/{name}/0") for name in masks}
    for name in masks:
        np.testing.assert_array_equal(plain[name], masks[name])
    readers = {name: ChunkReader(path, f"labels/{name}/0") for name in masks}
    readers["image"] = ChunkReader(path)
    plain["image"] = image
    reads = [(readers[name], region) for region in _regions(SHAPE, 6, seed=2) for name in readers]
    for (reader, region), got in zip(reads, read_regions(reads)):
        name = next(n for n, r in readers.items() if r is reader)
        np.testing.assert_array_equal(got, plain[name][region], err_msg=f"{name} {region}")
    for reader in readers.values():
        reader.close()


def test_zarr_group_and_array_sources_and_no_cache(tmp_path):
    path = str(tmp_path / "v.zarr")
    expected = _write(path, "dir", LAYOUTS["sharded"])
    group = zarr.open_group(path, mode="r")
    configure(cache_bytes=0, threads=1)
    try:
        for source in (group, group["image"]):
            reader = ChunkReader(source)
            assert reader.native and reader.chunks == (16, 32, 32)
            for region in _regions(SHAPE, 4, seed=9):
                np.testing.assert_array_equal(reader[region], expected[region])
    finally:
        configure(cache_bytes=DEFAULT_CACHE_BYTES, workers=1)


def test_no_array_is_an_input_error(tmp_path):
    path = str(tmp_path / "v.zarr")
    _write(path, "dir", LAYOUTS["64x64x64"])
    with pytest.raises(InputError):
        ChunkReader(path, "labels/none/0")


@pytest.mark.parametrize("variant", ["big-endian", "v2-keys", "zstd", "uncompressed"])
def test_byte_order_key_encoding_and_codecs(tmp_path, variant):
    path = str(tmp_path / "v.zarr")
    options = {"chunks": (8, 64, 64), "compressors": BLOSC}
    if variant == "big-endian":
        options["serializer"] = BytesCodec(endian="big")
    elif variant == "v2-keys":
        options["chunk_key_encoding"] = {"name": "v2", "separator": "."}
    elif variant == "zstd":
        options["compressors"] = ZstdCodec(level=3)
    else:
        options["compressors"] = None
    group = zarr.open_group(path, mode="w")
    data = _phantom(SHAPE, "float32")
    group.create_array("image", shape=SHAPE, dtype="float32", **options)[...] = data
    expected = _plain(path, "dir")
    with ChunkReader(path) as reader:
        assert reader.native and reader.dtype == np.dtype("float32")
        for region in _regions(SHAPE, 5, seed=13):
            np.testing.assert_array_equal(reader.read(region), expected[region], err_msg=str(region))
