"""voxelpipe.reader: batches from npz pairs and Zarr volumes, order, reproducibility, prefetch, torch.

Synthetic data only. Every sample carries its identity in its values (pairs: the image is filled with the
sample id and each mask with a kind-specific function of it; volumes: kept in memory by the fixture), so a
batch's images and masks are checked against what was written, independently of each other.
"""
from __future__ import annotations

import gc
import json
import os
import pickle
import threading
from collections import Counter

import numpy as np
import pytest

from voxelpipe.core.errors import InputError
from voxelpipe.core.geometry import Geometry
from voxelpipe.core.masks import Mask
from voxelpipe.core.volume import Volume
from voxelpipe.reader import PREFETCH_THREAD_NAME, PairReader, PatchReader, SliceReader
from voxelpipe.stores.masks import write_masks
from voxelpipe.stores.volumes import save_volume

ROWS, COLS = 6, 7


# ----------------------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------------------
def _mask_value(sample_id: int, kind: str) -> int:
    return (sample_id * 3 + {"i": 1, "o": 2}[kind]) % 251 + 1


def _write_pair(path, sample_id: int, kinds=("i", "o"), shape=(ROWS, COLS)) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arrays = {"image": np.full(shape, sample_id, np.int16),
              "meta_json": json.dumps({"id": sample_id, "kinds": list(kinds)})}
    for kind in kinds:
        arrays["mask_" + kind] = np.full(shape, _mask_value(sample_id, kind), np.uint8)
    np.savez_compressed(path, **arrays)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """OUT/<patient>/<NNNN>.npz for 3 patients, 23 pairs; every third pair lacks mask_o; with filelist.txt."""
    out = tmp_path_factory.mktemp("pairs")
    written, kinds_of = [], {}
    sample_id = 0
    for patient, count in (("p0", 8), ("p1", 10), ("p2", 5)):
        for n in range(count):
            kinds = ("i",) if sample_id % 3 == 0 else ("i", "o")
            rel = f"{patient}/{n:04d}.npz"
            _write_pair(str(out / rel), sample_id, kinds)
            written.append(rel)
            kinds_of[sample_id] = kinds
            sample_id += 1
    (out / "filelist.txt").write_text("\n".join(written) + "\n")
    return out, kinds_of


def _geometry(shape):
    return Geometry(shape, (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))


def _save(path, image, masks: dict[str, np.ndarray], chunks=(4, 16, 16)) -> str:
    save_volume(Volume(image, _geometry(image.shape)), path, chunks=chunks)
    if masks:
        write_masks(path, [Mask(name, array) for name, array in masks.items()])
    return str(path)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """Three dir-store volumes (5, 7, 9 slices of 12 x 20), random int16 values; mask ``a`` in all of them,
    ``b`` only in volumes 0 and 2. Returns paths and {path: (image, {name: mask})}."""
    root = tmp_path_factory.mktemp("volumes")
    rng = np.random.default_rng(5)
    paths, ref = [], {}
    for v, depth in enumerate((5, 7, 9)):
        image = rng.integers(-1000, 1000, (depth, 12, 20), dtype=np.int16)
        masks = {"a": rng.integers(0, 3, image.shape, dtype=np.uint8)}
        if v != 1:
            masks["b"] = rng.integers(0, 2, image.shape, dtype=np.uint8)
        path = _save(root / f"vol{v}.zarr", image, masks)
        paths.append(path)
        ref[path] = (image, masks)
    return paths, ref


def _ids(reader, **kwargs) -> list[list[tuple[str, int]]]:
    """Per batch, the (source, index) of each sample."""
    return [list(zip(b["source"], b["index"].tolist())) for b in reader.iterate(**kwargs)]


def _epochs(reader) -> dict[int, list[tuple[str, int]]]:
    seen: dict[int, list] = {}
    for batch in reader:
        seen.setdefault(batch["epoch"], []).extend(zip(batch["source"], batch["index"].tolist()))
    return seen


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == PREFETCH_THREAD_NAME]


# ----------------------------------------------------------------------------------------------------------
# npz pairs
# ----------------------------------------------------------------------------------------------------------
def test_pairs_every_sample_once_per_epoch_and_pairing(pairs):
    out, kinds_of = pairs
    reader = PairReader(out, batch_size=4, seed=3, epochs=3)
    assert reader.mask_names == ["i", "o"]
    assert len(reader) == 3 * 6
    per_epoch: dict[int, list[int]] = {}
    for batch in reader:
        n = len(batch["source"])
        assert batch["image"].shape == (n, ROWS, COLS) and batch["image"].dtype == np.int16
        assert batch["mask"].shape == (n, 2, ROWS, COLS) and batch["mask"].dtype == np.uint8
        assert batch["present"].shape == (n, 2)
        for j in range(n):
            sample_id = batch["meta"][j]["id"]
            per_epoch.setdefault(batch["epoch"], []).append(sample_id)
            assert np.all(batch["image"][j] == sample_id)
            assert batch["index"][j] == sample_id  # the file's number in filelist.txt, written in id order
            for k, kind in enumerate(("i", "o")):
                has = kind in kinds_of[sample_id]
                assert batch["present"][j, k] == has
                assert np.all(batch["mask"][j, k] == (_mask_value(sample_id, kind) if has else 0))
    assert sorted(per_epoch) == [0, 1, 2]
    for ids in per_epoch.values():
        assert sorted(ids) == list(range(23))
    assert per_epoch[0] != per_epoch[1] != per_epoch[2]  # a fresh permutation every epoch


def test_pairs_sources_folder_glob_list_and_masks(pairs, tmp_path):
    out, _ = pairs
    listed = PairReader(out, batch_size=5, shuffle=False).files
    assert len(listed) == 23
    # without filelist.txt the folder is globbed
    copy = tmp_path / "copy"
    for rel in (os.path.relpath(f, out) for f in listed):
        os.makedirs(copy / os.path.dirname(rel), exist_ok=True)
        (copy / rel).write_bytes((out / rel).read_bytes())
    globbed = PairReader(copy, batch_size=5, shuffle=False).files
    assert [os.path.relpath(f, copy) for f in globbed] == [os.path.relpath(f, out) for f in listed]
    # a list of files, one mask kind
    reader = PairReader(listed[:4], masks=["o"], batch_size=4, shuffle=False, prefetch=0)
    (batch,) = list(reader)
    assert reader.mask_names == ["o"] and batch["mask"].shape == (4, 1, ROWS, COLS)
    assert batch["present"][:, 0].tolist() == [False, True, True, False]
    assert [m["id"] for m in batch["meta"]] == [0, 1, 2, 3]


def test_pairs_shape_mismatch_names_the_file(pairs, tmp_path):
    out, _ = pairs
    odd = tmp_path / "odd" / "0000.npz"
    _write_pair(str(odd), 99, shape=(ROWS + 1, COLS))
    with pytest.raises(InputError, match="0000.npz") as info:
        PairReader([out, odd])
    assert f"({ROWS + 1}, {COLS})" in str(info.value)


def test_pairs_missing_file_in_filelist(tmp_path):
    _write_pair(str(tmp_path / "p" / "0000.npz"), 0)
    (tmp_path / "filelist.txt").write_text("p/0000.npz\np/0001.npz\n")
    with pytest.raises(InputError, match="0001.npz"):
        PairReader(tmp_path)


# ----------------------------------------------------------------------------------------------------------
# order: epochs, seeds, drop_last
# ----------------------------------------------------------------------------------------------------------
def test_slices_every_slice_once_per_epoch(volumes):
    paths, ref = volumes
    reader = SliceReader(paths, batch_size=4, seed=11, epochs=2)
    expected = sorted((p, z) for p in paths for z in range(ref[p][0].shape[0]))
    seen = _epochs(reader)
    assert sorted(seen) == [0, 1]
    assert all(sorted(ids) == expected for ids in seen.values())
    assert seen[0] != seen[1]


def test_slices_images_and_masks_are_the_right_ones(volumes):
    paths, ref = volumes
    reader = SliceReader(paths, batch_size=5, seed=2)
    assert reader.mask_names == ["a", "b"]
    for batch in reader:
        assert batch["image"].dtype == np.int16 and batch["image"].shape[1:] == (12, 20)
        for j, (path, z) in enumerate(zip(batch["source"], batch["index"])):
            image, masks = ref[path]
            np.testing.assert_array_equal(batch["image"][j], image[z])
            for k, name in enumerate(("a", "b")):
                assert batch["present"][j, k] == (name in masks)
                np.testing.assert_array_equal(batch["mask"][j, k], masks[name][z] if name in masks else 0)


def test_same_seed_same_sequence_different_seed_different(volumes):
    paths, _ = volumes
    a = list(SliceReader(paths, batch_size=4, seed=7, epochs=2))
    b = list(SliceReader(paths, batch_size=4, seed=7, epochs=2))
    assert [x["source"] for x in a] == [x["source"] for x in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["index"], y["index"])
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["mask"], y["mask"])
    other = SliceReader(paths, batch_size=4, seed=8, epochs=2)
    assert _ids(other) != [list(zip(x["source"], x["index"].tolist())) for x in a]


def test_seed_none_is_recorded_and_reproducible(volumes):
    paths, _ = volumes
    first = SliceReader(paths, batch_size=4)
    assert isinstance(first.seed, int) and first.seed >= 0
    assert _ids(SliceReader(paths, batch_size=4, seed=first.seed)) == _ids(first)


def test_no_shuffle_is_index_order(volumes):
    paths, ref = volumes
    ids = [i for batch in _ids(SliceReader(paths, batch_size=6, shuffle=False)) for i in batch]
    assert ids == [(p, z) for p in paths for z in range(ref[p][0].shape[0])]


@pytest.mark.parametrize("drop_last, per_epoch, last_size", [(False, 6, 1), (True, 5, 4)])
def test_drop_last_batch_counts(volumes, drop_last, per_epoch, last_size):
    paths, _ = volumes  # 5 + 7 + 9 = 21 slices
    reader = SliceReader(paths, batch_size=4, seed=1, epochs=3, drop_last=drop_last)
    batches = list(reader)
    assert reader.batches_per_epoch == per_epoch and len(reader) == len(batches) == 3 * per_epoch
    sizes = [len(b["source"]) for b in batches]
    assert sizes == ([4] * (per_epoch - 1) + [last_size]) * 3
    for ids in _epochs(reader).values():
        assert len(ids) == len(set(ids)) == (20 if drop_last else 21)


def test_bad_options(volumes):
    paths, _ = volumes
    for options in (dict(batch_size=0), dict(epochs=0), dict(seed=-1), dict(prefetch=-1),
                    dict(batch_size=30, drop_last=True)):
        with pytest.raises(InputError):
            SliceReader(paths, **options)
    with pytest.raises(InputError, match="patch_size"):
        PatchReader(paths, (4, 4))
    with pytest.raises(InputError, match="foreground"):
        PatchReader(paths, (2, 4, 4), foreground=1.5)


def test_slices_shape_mismatch_names_the_files(volumes, tmp_path):
    paths, _ = volumes
    odd = _save(tmp_path / "odd.zarr", np.zeros((3, 12, 21), np.int16), {})
    with pytest.raises(InputError, match="odd.zarr") as info:
        SliceReader(paths + [odd])
    assert "(12, 21)" in str(info.value) and "vol0.zarr" in str(info.value)


def test_volume_folder_and_zip_sqlite_stores(volumes, tmp_path):
    paths, ref = volumes
    image, masks = ref[paths[2]]
    data = tmp_path / "data"
    made = [_save(data / f"v{suffix}", image, masks) for suffix in (".zarr.zip", ".zarr.sqlite")]
    reader = SliceReader(data, batch_size=4, seed=0)
    assert sorted(reader.paths) == sorted(made)
    for batch in reader:
        for j, z in enumerate(batch["index"]):
            np.testing.assert_array_equal(batch["image"][j], image[z])
            np.testing.assert_array_equal(batch["mask"][j, 1], masks["b"][z])


def test_pickled_after_use_reopens_its_volumes(volumes, tmp_path):
    paths, ref = volumes
    image, masks = ref[paths[0]]
    path = _save(tmp_path / "v.zarr.sqlite", image, masks)
    reader = SliceReader(path, batch_size=2, seed=1, prefetch=0)
    first = list(reader)  # leaves the volume open in this process
    again = list(pickle.loads(pickle.dumps(reader)))
    assert [b["index"].tolist() for b in again] == [b["index"].tolist() for b in first]
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x["image"], y["image"])


# ----------------------------------------------------------------------------------------------------------
# patches
# ----------------------------------------------------------------------------------------------------------
def test_patches_lie_inside_and_match_the_volume(volumes):
    paths, ref = volumes
    size = (3, 8, 9)
    reader = PatchReader(paths, size, patches_per_volume=6, batch_size=5, seed=4, epochs=2)
    assert reader.samples_per_epoch == 18
    seen = _epochs(reader)
    assert all(sorted(ids) == sorted((p, k) for p in paths for k in range(6)) for ids in seen.values())
    starts = set()
    for batch in reader:
        assert batch["image"].shape[1:] == size and batch["mask"].shape[1:] == (2, *size)
        assert not batch["foreground"].any()
        for j, path in enumerate(batch["source"]):
            image, masks = ref[path]
            start = batch["start"][j]
            assert np.all(start >= 0) and np.all(start + size <= image.shape)
            region = tuple(slice(s, s + p) for s, p in zip(start, size))
            np.testing.assert_array_equal(batch["image"][j], image[region])
            np.testing.assert_array_equal(batch["mask"][j, 0], masks["a"][region])
            assert batch["present"][j, 1] == ("b" in masks)
            starts.add((path, tuple(start)))
    assert len(starts) > 20  # random starts, not one per volume


def test_patch_larger_than_volume_is_padded(tmp_path):
    image = np.arange(2 * 5 * 6, dtype=np.float32).reshape(2, 5, 6) + 1
    mask = np.ones(image.shape, np.uint8)
    path = _save(tmp_path / "small.zarr", image, {"m": mask})
    (batch,) = list(PatchReader(path, (4, 8, 3), batch_size=1, fill=-5, seed=0))
    x0 = batch["start"][0][2]
    assert tuple(batch["start"][0][:2]) == (0, 0) and 0 <= x0 <= 3
    np.testing.assert_array_equal(batch["image"][0][:2, :5], image[:, :, x0:x0 + 3])
    assert np.all(batch["image"][0][2:] == -5) and np.all(batch["image"][0][:, 5:] == -5)
    assert batch["mask"][0, 0].sum() == 2 * 5 * 3


@pytest.fixture(scope="module")
def sparse_volume(tmp_path_factory):
    """(16, 32, 32) with a 2 x 2 x 2 foreground cube crossing a chunk border (chunks 4 x 16 x 16)."""
    path = tmp_path_factory.mktemp("sparse") / "sparse.zarr"
    image = np.random.default_rng(0).integers(0, 100, (16, 32, 32), dtype=np.int16)
    fg = np.zeros(image.shape, np.uint8)
    fg[3:5, 15:17, 20:22] = 1
    other = np.zeros(image.shape, np.uint8)
    other[12, 2, 2] = 1
    return _save(path, image, {"fg": fg, "other": other}), fg


def test_foreground_voxels_are_drawn_uniformly(sparse_volume):
    path, fg = sparse_volume
    reader = PatchReader(path, (4, 8, 8), masks=["fg"], foreground=1.0)
    rng = np.random.default_rng(1)
    drawn = Counter(reader._foreground_voxel(0, rng) for _ in range(800))
    assert set(drawn) == {tuple(int(i) for i in v) for v in np.argwhere(fg)}
    assert min(drawn.values()) > 800 / 8 * 0.6


def test_foreground_oversampling_fraction(sparse_volume):
    path, fg = sparse_volume
    size = np.array((4, 8, 8))
    wanted, n = 0.3, 600
    reader = PatchReader(path, tuple(size), masks=["fg", "other"], foreground_masks=["fg"],
                         foreground=wanted, patches_per_volume=n, batch_size=100, seed=9)
    batches = list(reader)
    centred = np.concatenate([b["foreground"] for b in batches])
    contains = np.concatenate([b["mask"][:, 0].reshape(len(b["mask"]), -1).any(axis=1) for b in batches])
    assert abs(centred.mean() - wanted) < 4 * np.sqrt(wanted * (1 - wanted) / n)
    assert contains[centred].all()
    # a uniform patch contains the cube with probability p0 (counted over every possible start)
    highest = np.array(fg.shape) - size
    hits = sum(fg[z:z + 4, y:y + 8, x:x + 8].any() for z in range(highest[0] + 1)
               for y in range(highest[1] + 1) for x in range(highest[2] + 1))
    p0 = hits / np.prod(highest + 1)
    expected = wanted + (1 - wanted) * p0
    assert abs(contains.mean() - expected) < 4 * np.sqrt(expected * (1 - expected) / n)
    assert contains.mean() > 2 * p0  # oversampling did something


def test_volume_without_foreground_gets_uniform_patches(tmp_path):
    path = _save(tmp_path / "empty.zarr", np.zeros((6, 16, 16), np.int16), {"fg": np.zeros((6, 16, 16), np.uint8)})
    (batch,) = list(PatchReader(path, (2, 4, 4), foreground=1.0, patches_per_volume=8, batch_size=8, seed=0))
    assert not batch["foreground"].any()


# ----------------------------------------------------------------------------------------------------------
# reads only the chunks it needs
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture
def chunk_reads(monkeypatch):
    """Records the chunk keys read from LocalStores and by the chunk reader's folder store."""
    from zarr.storage import LocalStore

    from voxelpipe.reader.chunks import DirKeyStore

    keys: list[str] = []
    original = LocalStore.get
    original_dir = DirKeyStore.get

    async def get(self, key, *args, **kwargs):
        if "/c/" in key or key.startswith("c/"):
            keys.append(key)
        return await original(self, key, *args, **kwargs)

    def get_dir(self, key):
        if "/c/" in key or key.startswith("c/"):
            keys.append(key)
        return original_dir(self, key)

    monkeypatch.setattr(LocalStore, "get", get)
    monkeypatch.setattr(DirKeyStore, "get", get_dir)
    return keys


def test_one_slice_reads_only_its_chunks(tmp_path, chunk_reads):
    image = np.arange(12 * 32 * 32, dtype=np.int16).reshape(12, 32, 32)
    mask = (image % 7 == 0).astype(np.uint8)
    path = _save(tmp_path / "v.zarr", image, {"m": mask}, chunks=(4, 16, 16))
    reader = SliceReader(path, batch_size=1, shuffle=False, prefetch=0)
    chunk_reads.clear()
    batch = reader.batch(0, 5)
    np.testing.assert_array_equal(batch["image"][0], image[5])
    np.testing.assert_array_equal(batch["mask"][0, 0], mask[5])
    in_plane = {f"1/{y}/{x}" for y in (0, 1) for x in (0, 1)}
    assert sorted(chunk_reads) == sorted([f"image/c/{c}" for c in in_plane] + [f"labels/m/0/c/{c}" for c in in_plane])


def test_one_patch_reads_only_its_chunks(tmp_path, chunk_reads):
    image = np.arange(12 * 32 * 32, dtype=np.int16).reshape(12, 32, 32)
    path = _save(tmp_path / "v.zarr", image, {"m": np.ones(image.shape, np.uint8)}, chunks=(4, 16, 16))
    reader = PatchReader(path, (2, 8, 8), batch_size=1, prefetch=0, seed=3)
    chunk_reads.clear()
    batch = reader.batch(0, 0)
    z, y, x = batch["start"][0]
    needed = {f"{cz}/{cy}/{cx}" for cz in {z // 4, (z + 1) // 4} for cy in {y // 16, (y + 7) // 16}
              for cx in {x // 16, (x + 7) // 16}}
    assert sorted(chunk_reads) == sorted([f"image/c/{c}" for c in needed] + [f"labels/m/0/c/{c}" for c in needed])


# ----------------------------------------------------------------------------------------------------------
# prefetch thread
# ----------------------------------------------------------------------------------------------------------
def test_prefetch_thread_stops_on_early_break(volumes):
    paths, _ = volumes
    assert not _prefetch_threads()
    reader = SliceReader(paths, batch_size=1, epochs=50, prefetch=2)
    iterator = iter(reader)
    next(iterator)
    assert _prefetch_threads()  # loading ahead
    iterator.close()
    assert not _prefetch_threads()
    for _ in reader:
        break
    gc.collect()
    assert not _prefetch_threads()


def test_prefetch_passes_errors_and_stops(tmp_path):
    files = [str(tmp_path / f"{i}.npz") for i in range(6)]
    for i, f in enumerate(files):
        _write_pair(f, i)
    reader = PairReader(files, batch_size=2, shuffle=False, prefetch=2)
    os.remove(files[3])
    with pytest.raises(FileNotFoundError):
        list(reader)
    assert not _prefetch_threads()


def test_prefetch_and_no_prefetch_agree(volumes):
    paths, _ = volumes
    a = list(PatchReader(paths, (2, 4, 4), patches_per_volume=5, batch_size=3, seed=5, prefetch=0))
    b = list(PatchReader(paths, (2, 4, 4), patches_per_volume=5, batch_size=3, seed=5, prefetch=3))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["start"], y["start"])
        np.testing.assert_array_equal(x["image"], y["image"])


# ----------------------------------------------------------------------------------------------------------
# torch adapter
# ----------------------------------------------------------------------------------------------------------
def _loader_epochs(loader) -> tuple[dict[int, list], list]:
    seen: dict[int, list] = {}
    sequence = []
    for batch in loader:
        ids = list(zip(batch["source"], batch["index"].tolist()))
        seen.setdefault(int(batch["epoch"]), []).extend(ids)
        sequence.append(ids)
    return seen, sequence


def test_torch_dataloader_two_workers_each_sample_once(volumes):
    torch = pytest.importorskip("torch")
    paths, ref = volumes
    reader = SliceReader(paths, batch_size=4, seed=6, epochs=2)
    loader = torch.utils.data.DataLoader(reader.torch(), batch_size=None, num_workers=2)
    seen, sequence = _loader_epochs(loader)
    expected = sorted((p, z) for p in paths for z in range(ref[p][0].shape[0]))
    assert sorted(seen) == [0, 1]
    for ids in seen.values():
        assert sorted(ids) == expected  # once each: no duplicates, nothing missing
    assert sequence == _ids(reader)  # the workers' batches interleave back into the reader's own order
    batch = next(iter(loader))
    assert isinstance(batch["image"], torch.Tensor) and batch["image"].dtype == torch.int16
    path, z = batch["source"][0], int(batch["index"][0])
    np.testing.assert_array_equal(batch["image"][0].numpy(), ref[path][0][z])


def test_torch_set_epoch_and_pairs(pairs):
    torch = pytest.importorskip("torch")
    out, _ = pairs
    dataset = PairReader(out, batch_size=5, seed=2).torch()
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)
    orders = []
    for epoch in range(2):
        dataset.set_epoch(epoch)
        seen, _ = _loader_epochs(loader)
        assert list(seen) == [epoch] and sorted(seen[epoch]) == sorted(set(seen[epoch])) and len(seen[epoch]) == 23
        orders.append(seen[epoch])
    assert orders[0] != orders[1]


def test_torch_spawned_workers(volumes):
    torch = pytest.importorskip("torch")
    paths, _ = volumes
    reader = PatchReader(paths, (2, 4, 4), patches_per_volume=4, batch_size=3, seed=1)
    loader = torch.utils.data.DataLoader(reader.torch(), batch_size=None, num_workers=2,
                                         multiprocessing_context="spawn")
    seen, sequence = _loader_epochs(loader)
    assert sorted(seen[0]) == sorted((p, k) for p in paths for k in range(4))
    assert sequence == _ids(reader)
