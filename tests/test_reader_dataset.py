"""voxelpipe.reader for trainers: map-style dataset, transforms (MONAI), sample geometry, size, DDP parts.

Every sample is compared with numpy slicing of the volume read by plain zarr (image and masks), and its affine
with one computed here from the volume's stored geometry attributes and the sample's offset.
"""
from __future__ import annotations

import json
import multiprocessing
from collections import Counter

import numpy as np
import pytest
import zarr

from voxelpipe.core.errors import InputError
from voxelpipe.core.geometry import Geometry
from voxelpipe.core.masks import Mask
from voxelpipe.core.volume import Volume
from voxelpipe.reader import PairReader, PatchReader, SliceReader
from voxelpipe.stores.masks import write_masks
from voxelpipe.stores.volumes import save_volume

torch = pytest.importorskip("torch", reason="the map-style dataset needs torch (the torch extra)")

PATCH = (3, 5, 6)


def _direction(angle_deg: float) -> np.ndarray:
    """An oblique orthonormal direction: axes rotated about LPS z by ``angle_deg``."""
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    return rot @ np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]).T


def _write(path, image, masks, spacing, origin, angle) -> str:
    geometry = Geometry(image.shape, spacing, origin, _direction(angle))
    save_volume(Volume(image, geometry), path, chunks=(2, 8, 8))
    write_masks(path, [Mask(name, array) for name, array in masks.items()])
    return str(path)


def _make(root, shapes, seed=11) -> list[str]:
    rng = np.random.default_rng(seed)
    paths = []
    for v, shape in enumerate(shapes):
        image = rng.integers(-500, 500, shape, dtype=np.int16)
        masks = {"a": rng.integers(0, 3, shape, dtype=np.uint8)}
        if v != 1:
            masks["b"] = rng.integers(0, 2, shape, dtype=np.uint8)
        paths.append(_write(root / f"vol{v}.zarr", image, masks, (2.5, 0.7 + 0.1 * v, 0.8),
                            (10.0 * v, -3.0, 4.5), 15.0 * v))
    return paths


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """Three volumes of 4, 5, 6 slices of 12 x 14; mask ``a`` in all, ``b`` in volumes 0 and 2."""
    return _make(tmp_path_factory.mktemp("ds"), [(4, 12, 14), (5, 12, 14), (6, 12, 14)])


def _plain(path: str):
    """(image, {mask: array}, attrs) read with plain zarr: NGFF labels are ``labels/<name>/0``."""
    group = zarr.open_group(store=zarr.storage.LocalStore(path, read_only=True), mode="r")
    masks = {}
    if "labels" in group:
        for name in group["labels"].group_keys():
            masks[name] = np.asarray(group["labels"][name]["0"][...])
    return np.asarray(group["image"][...]), masks, dict(group.attrs)


@pytest.fixture(scope="module")
def plain(volumes):
    return {p: _plain(p) for p in volumes}


def _expected_affine(attrs: dict, offset) -> np.ndarray:
    """index -> LPS of an array whose index 0 is voxel ``offset`` of the volume, from the attrs alone."""
    columns = np.asarray(attrs["direction"], dtype=float) * np.asarray(attrs["spacing"], dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = columns
    affine[:3, 3] = np.asarray(attrs["origin"], dtype=float) + columns @ np.asarray(offset, dtype=float)
    return affine


def _check_slice(sample, plain, names, size=None, pad_value=None):
    """A slice sample (channel first) against numpy slicing (and centre pad/crop) of the plain-zarr arrays."""
    image, masks, attrs = plain[str(sample["source"])]
    z = int(sample["index"])
    rows, cols = image.shape[1:]
    offset = [z, 0, 0]
    ref_image, ref_masks = image[z], [masks[n][z] if n in masks else np.zeros_like(image[z], np.uint8)
                                      for n in names]
    if size is not None:
        fill = image.min() if pad_value is None else pad_value
        pads, crops = [], []
        for axis, (length, want) in enumerate(zip((rows, cols), size)):
            if want >= length:
                before = (want - length) // 2
                pads.append((before, want - length - before))
                crops.append(slice(None))
                offset[axis + 1] = -before
            else:
                start = (length - want) // 2
                pads.append((0, 0))
                crops.append(slice(start, start + want))
                offset[axis + 1] = start
        ref_image = np.pad(ref_image[tuple(crops)], pads, constant_values=fill)
        ref_masks = [np.pad(m[tuple(crops)], pads, constant_values=0) for m in ref_masks]
    np.testing.assert_array_equal(np.asarray(sample["image"]), ref_image[None])
    np.testing.assert_array_equal(np.asarray(sample["masks"]), np.stack(ref_masks))
    np.testing.assert_array_equal(np.asarray(sample["present"]), [n in masks for n in names])
    np.testing.assert_allclose(np.asarray(sample["affine"]), _expected_affine(attrs, offset), atol=1e-9)
    np.testing.assert_allclose(np.asarray(sample["spacing"]), attrs["spacing"])


def _check_patch(sample, plain, names):
    image, masks, attrs = plain[str(sample["source"])]
    start = [int(s) for s in np.asarray(sample["start"])]
    region = tuple(slice(s, s + p) for s, p in zip(start, PATCH))
    np.testing.assert_array_equal(np.asarray(sample["image"]), image[region][None])
    ref = np.stack([masks[n][region] if n in masks else np.zeros(PATCH, np.uint8) for n in names])
    np.testing.assert_array_equal(np.asarray(sample["masks"]), ref)
    np.testing.assert_allclose(np.asarray(sample["affine"]), _expected_affine(attrs, start), atol=1e-9)
    np.testing.assert_allclose(np.asarray(sample["spacing"]), attrs["spacing"])


def _unbatch(batch) -> list[dict]:
    out = []
    for i in range(len(batch["source"])):
        out.append({"image": batch["image"][i][None], "masks": batch["mask"][i], "present": batch["present"][i],
                    "source": batch["source"][i], "index": batch["index"][i], "affine": batch["affine"][i],
                    "spacing": batch["spacing"][i], **({"start": batch["start"][i]} if "start" in batch else {})})
    return out


# ----------------------------------------------------------------------------------------------------------
# the batch iterator: affine and spacing per sample
# ----------------------------------------------------------------------------------------------------------
def test_slice_batches_carry_geometry_and_match_plain_zarr(volumes, plain):
    reader = SliceReader(volumes, batch_size=4, seed=1, prefetch=0)
    seen = []
    for batch in reader:
        assert batch["affine"].shape == (len(batch["source"]), 4, 4)
        assert batch["spacing"].shape == (len(batch["source"]), 3)
        for sample in _unbatch(batch):
            _check_slice(sample, plain, reader.mask_names)
            seen.append((sample["source"], int(sample["index"])))
    assert sorted(seen) == sorted((p, z) for p in volumes for z in range(plain[p][0].shape[0]))


def test_patch_batches_carry_geometry_and_match_plain_zarr(volumes, plain):
    reader = PatchReader(volumes, PATCH, patches_per_volume=3, batch_size=4, seed=2, prefetch=0)
    for batch in reader:
        for sample in _unbatch(batch):
            _check_patch(sample, plain, reader.mask_names)


# ----------------------------------------------------------------------------------------------------------
# the map-style dataset
# ----------------------------------------------------------------------------------------------------------
def test_dataset_samples_are_channel_first_and_match(volumes, plain):
    reader = SliceReader(volumes, seed=0)
    ds = reader.dataset()
    assert isinstance(ds, torch.utils.data.Dataset)
    assert len(ds) == reader.samples_per_epoch == 15
    for i in range(len(ds)):
        sample = ds[i]
        assert sample["image"].shape == (1, 12, 14) and sample["masks"].shape == (2, 12, 14)
        _check_slice(sample, plain, reader.mask_names)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_patch_dataset_deterministic_per_index_and_epoch(volumes, plain):
    reader = PatchReader(volumes, PATCH, patches_per_volume=4, seed=3)
    ds = reader.dataset()
    first = [np.asarray(ds[i]["start"]).tolist() for i in range(len(ds))]
    assert first == [np.asarray(ds[i]["start"]).tolist() for i in range(len(ds))]  # same epoch: same patches
    for i in range(len(ds)):
        _check_patch(ds[i], plain, reader.mask_names)
    ds.set_epoch(1)
    moved = [np.asarray(ds[i]["start"]).tolist() for i in range(len(ds))]
    assert moved != first
    ds.set_epoch(0)
    assert first == [np.asarray(ds[i]["start"]).tolist() for i in range(len(ds))]


def _loader_epochs(ds, workers: int, epochs: int = 2) -> tuple[dict[int, list], list[dict]]:
    """Per epoch, the (source, index) of every sample a shuffling DataLoader yields; and every sample itself."""
    ctx = multiprocessing.get_context("spawn") if workers else None
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, num_workers=workers,
                                         multiprocessing_context=ctx,
                                         generator=torch.Generator().manual_seed(0))
    keys: dict[int, list] = {}
    samples = []
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for batch in loader:
            assert batch["image"].shape[1:] == (1, 12, 14)
            assert batch["affine"].shape[1:] == (4, 4)
            keys.setdefault(epoch, []).extend(zip(batch["source"], batch["index"].tolist()))
            for i in range(len(batch["source"])):
                samples.append({key: value[i].numpy() if isinstance(value, torch.Tensor) else value[i]
                                for key, value in batch.items()})
    return keys, samples


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_every_sample_once_per_epoch(volumes, plain, workers):
    reader = SliceReader(volumes, seed=4)
    ds = reader.dataset()
    keys, samples = _loader_epochs(ds, workers)
    expected = sorted((p, z) for p in volumes for z in range(plain[p][0].shape[0]))
    for epoch in (0, 1):
        assert sorted(keys[epoch]) == expected
    for sample in samples:
        _check_slice(sample, plain, reader.mask_names)


# ----------------------------------------------------------------------------------------------------------
# transforms
# ----------------------------------------------------------------------------------------------------------
def test_monai_dictionary_transforms(volumes):
    transforms = pytest.importorskip("monai.transforms", reason="MONAI transforms need monai (test extra)")
    reader = SliceReader(volumes, seed=5)
    plain_ds = reader.dataset()
    flipped = reader.dataset(transform=transforms.RandFlipd(keys=["image", "masks"], prob=1.0, spatial_axis=0))
    noisy = reader.dataset(transform=transforms.RandGaussianNoised(keys=["image"], prob=1.0, std=5.0))
    for i in (0, 7, len(plain_ds) - 1):
        raw = plain_ds[i]
        out = flipped[i]
        # spatial axis 0 of a channel-first (1, rows, cols) array is array axis 1
        np.testing.assert_array_equal(np.asarray(out["image"]), np.flip(raw["image"], axis=1))
        np.testing.assert_array_equal(np.asarray(out["masks"]), np.flip(raw["masks"], axis=1))
        np.testing.assert_array_equal(np.asarray(out["affine"]), raw["affine"])
        out = noisy[i]
        assert not np.array_equal(np.asarray(out["image"]), raw["image"].astype(np.float32))
        np.testing.assert_array_equal(np.asarray(out["masks"]), raw["masks"])
        assert out["source"] == raw["source"] and out["index"] == raw["index"]


def test_monai_patch_flip(volumes):
    transforms = pytest.importorskip("monai.transforms", reason="MONAI transforms need monai (test extra)")
    reader = PatchReader(volumes, PATCH, patches_per_volume=2, seed=6)
    raw = reader.dataset()
    out = reader.dataset(transform=transforms.RandFlipd(keys=["image", "masks"], prob=1.0, spatial_axis=2))
    for i in range(len(raw)):
        np.testing.assert_array_equal(np.asarray(out[i]["image"]), np.flip(raw[i]["image"], axis=3))
        np.testing.assert_array_equal(np.asarray(out[i]["masks"]), np.flip(raw[i]["masks"], axis=3))


# ----------------------------------------------------------------------------------------------------------
# size: centre pad / crop
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    paths = _make(tmp_path_factory.mktemp("mixed"), [(3, 12, 14), (2, 9, 20), (2, 15, 11)], seed=12)
    return paths, {p: _plain(p) for p in paths}


def test_different_shapes_without_size_name_the_shapes(mixed):
    paths, _ = mixed
    with pytest.raises(InputError, match="size=") as info:
        SliceReader(paths)
    for shape in ("(12, 14)", "(9, 20)", "(15, 11)"):
        assert shape in str(info.value)


@pytest.mark.parametrize("pad_value", [None, -7])
def test_size_centre_pads_and_crops(mixed, pad_value):
    paths, plain = mixed
    size = (12, 15)
    reader = SliceReader(paths, size=size, pad_value=pad_value, batch_size=3, seed=0, prefetch=0)
    count = 0
    for batch in reader:
        assert batch["image"].shape[1:] == size
        for sample in _unbatch(batch):
            _check_slice(sample, plain, reader.mask_names, size=size, pad_value=pad_value)
            count += 1
    assert count == 7
    ds = reader.dataset()
    for i in range(len(ds)):
        _check_slice(ds[i], plain, reader.mask_names, size=size, pad_value=pad_value)


def test_bad_size_and_rank(volumes):
    with pytest.raises(InputError, match="size"):
        SliceReader(volumes, size=(4,))
    with pytest.raises(InputError, match="rank"):
        SliceReader(volumes, rank=2, world_size=2)


# ----------------------------------------------------------------------------------------------------------
# distributed: rank / world_size
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("world_size", [3, 4])
def test_ranks_parts_disjoint_and_complete(volumes, world_size):
    n = 15
    repeats = -n % world_size  # padded by repeating the epoch order's first samples
    for epoch in (0, 1):
        parts_batches, parts_dataset = [], []
        for rank in range(world_size):
            reader = SliceReader(volumes, batch_size=2, seed=9, rank=rank, world_size=world_size, prefetch=0,
                                 epochs=2)
            keys = [(s, z) for b in reader.iterate() if b["epoch"] == epoch
                    for s, z in zip(b["source"], b["index"].tolist())]
            parts_batches.append(keys)
            ds = reader.dataset(epoch=epoch)
            parts_dataset.append([(ds[i]["source"], int(ds[i]["index"])) for i in range(len(ds))])
            order = reader.order(epoch)
        for parts in (parts_batches, parts_dataset):
            assert len({len(p) for p in parts}) == 1 and len(parts[0]) == -(-n // world_size)
            counts = Counter(k for p in parts for k in p)
            assert len(counts) == n  # every sample somewhere
            twice = sorted(k for k, c in counts.items() if c == 2)
            assert len(twice) == repeats and all(c in (1, 2) for c in counts.values())
            # the repeats are the first samples of the epoch's order
            reader0 = SliceReader(volumes, seed=9)
            first = sorted((smp["source"], int(smp["index"]))
                           for smp in (reader0.sample(epoch, int(s)) for s in order[:repeats]))
            assert twice == first
            for p in parts:
                assert len(set(p)) == len(p)
        assert parts_batches == parts_dataset


def test_one_rank_is_the_whole_epoch(volumes):
    whole = SliceReader(volumes, seed=9)
    single = SliceReader(volumes, seed=9, rank=0, world_size=1)
    np.testing.assert_array_equal(whole.rank_order(0), single.order(0))
    assert len(whole.dataset()) == 15


def test_pair_dataset_samples(tmp_path):
    rng = np.random.default_rng(13)
    written = {}
    for n in range(3):
        image = rng.integers(-50, 50, (6, 7), dtype=np.int16)
        mask = rng.integers(0, 2, (6, 7), dtype=np.uint8)
        path = tmp_path / "p0" / f"{n:04d}.npz"
        path.parent.mkdir(exist_ok=True)
        np.savez_compressed(path, image=image, mask_i=mask, meta_json=json.dumps({"n": n}))
        written[str(path)] = (image, mask)
    ds = PairReader(tmp_path, seed=0).dataset()
    assert len(ds) == 3
    for i in range(3):
        sample = ds[i]
        image, mask = written[sample["source"]]
        np.testing.assert_array_equal(sample["image"], image[None])
        np.testing.assert_array_equal(sample["masks"], mask[None])
        assert sample["meta"] == {"n": int(sample["index"])}
