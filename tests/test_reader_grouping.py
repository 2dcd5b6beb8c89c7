"""Batches grouped by shape: 2-D readers over images of different sizes, ``group_by_shape=True``.

Every batch's content is compared with numpy indexing of the arrays that were written; the partition (each
sample exactly once per epoch, across ranks too) is checked by counting.
"""
from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import pytest

from voxelpipe.core.errors import InputError
from voxelpipe.core.geometry import Geometry
from voxelpipe.core.volume import Volume
from voxelpipe.reader import PairReader, SliceReader
from voxelpipe.reader.grouping import group_batches
from voxelpipe.stores.volumes import save_volume

SHAPES = {"a": (5, 12, 20), "b": (4, 16, 9), "c": (6, 12, 20), "d": (3, 16, 9), "e": (2, 8, 8)}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Volumes of three (rows, cols): a/c 12x20, b/d 16x9, e 8x8; random int16. Returns {path: array}."""
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(11)
    ref = {}
    for name, shape in SHAPES.items():
        image = rng.integers(-1000, 1000, shape, dtype=np.int16)
        path = str(root / f"{name}.zarr")
        save_volume(Volume(image, Geometry(shape, (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))), path,
                    chunks=(2, 8, 8))
        ref[path] = image
    return ref


def test_group_batches_partitions_in_order():
    order = np.array([5, 0, 3, 1, 4, 2, 6])
    groups = np.array([0, 1, 0, 1, 0, 2, 1])  # by item: 0, 2, 4 in group 0; 1, 3, 6 in group 1; 5 in group 2
    got = [b.tolist() for b in group_batches(order, groups, 2)]
    # full batches as they fill, then the short ones in the order their groups first appeared (2, 0, 1)
    assert got == [[3, 1], [0, 4], [5], [2], [6]]
    assert [b.tolist() for b in group_batches(order, groups, 2, drop_last=True)] == [[3, 1], [0, 4]]


def test_mixed_shapes_without_grouping_still_refused(mixed):
    with pytest.raises(InputError, match="group_by_shape"):
        SliceReader(list(mixed))


@pytest.mark.parametrize("batch_size", [1, 3, 4])
def test_slices_grouped_by_shape_content_and_partition(mixed, batch_size):
    reader = SliceReader(list(mixed), group_by_shape=True, batch_size=batch_size, seed=3, prefetch=0, epochs=2)
    seen = Counter()
    batches = list(reader)
    assert len(batches) == len(reader)
    for batch in batches:
        shapes = {mixed[s].shape[1:] for s in batch["source"]}
        assert len(shapes) == 1 and batch["image"].shape[1:] == shapes.pop()
        assert len(batch["source"]) <= batch_size
        for j, (source, z) in enumerate(zip(batch["source"], batch["index"].tolist())):
            np.testing.assert_array_equal(batch["image"][j], mixed[source][z])
            seen[(batch["epoch"], source, z)] += 1
    expected = {(e, p, z) for e in (0, 1) for p, a in mixed.items() for z in range(a.shape[0])}
    assert set(seen) == expected and set(seen.values()) == {1}
    # the two epochs' orders differ (a fresh permutation each epoch)
    first = [(s, z) for b in batches if b["epoch"] == 0 for s, z in zip(b["source"], b["index"].tolist())]
    second = [(s, z) for b in batches if b["epoch"] == 1 for s, z in zip(b["source"], b["index"].tolist())]
    assert first != second


def test_slices_grouped_drop_last_keeps_only_full_batches(mixed):
    reader = SliceReader(list(mixed), group_by_shape=True, batch_size=4, seed=0, prefetch=0, drop_last=True)
    sizes = [len(b["source"]) for b in reader]
    # 11 slices of 12x20, 7 of 16x9, 2 of 8x8: 2 + 1 + 0 full batches of 4
    assert sizes == [4, 4, 4]


@pytest.mark.parametrize("world_size", [2, 3])
def test_slices_grouped_ranks_disjoint_and_complete(mixed, world_size):
    parts = []
    for rank in range(world_size):
        reader = SliceReader(list(mixed), group_by_shape=True, batch_size=3, seed=7, prefetch=0, rank=rank,
                             world_size=world_size)
        batches = list(reader)
        assert len(batches) == reader.batches_per_epoch
        parts.append([tuple(zip(b["source"], b["index"].tolist())) for b in batches])
    # equal batch counts per rank, no rank waits for another
    assert len({len(p) for p in parts}) == 1
    total = sum(s.shape[0] for s in mixed.values())
    everyone = [batch for part in parts for batch in part]
    distinct = {batch for batch in everyone}
    samples = [sample for batch in distinct for sample in batch]
    # every sample in exactly one distinct batch; repeats only pad the batch list to a multiple of world_size
    assert len(samples) == total == len(set(samples))
    assert len(everyone) - len(distinct) < world_size


def test_pairs_grouped_by_shape(tmp_path):
    shapes = [(6, 7), (6, 7), (9, 4), (6, 7), (9, 4)]
    for n, shape in enumerate(shapes):
        np.savez_compressed(tmp_path / f"{n:04d}.npz", image=np.full(shape, n, np.int16),
                            mask_i=np.full(shape, n + 1, np.uint8), meta_json=json.dumps({"id": n}))
    with pytest.raises(InputError, match="group_by_shape"):
        PairReader(tmp_path)
    reader = PairReader(tmp_path, group_by_shape=True, batch_size=2, seed=1, prefetch=0)
    seen = []
    for batch in reader:
        assert len({shapes[i] for i in batch["index"].tolist()}) == 1
        for j, i in enumerate(batch["index"].tolist()):
            assert batch["image"][j].shape == shapes[i] and (batch["image"][j] == i).all()
            assert (batch["mask"][j, 0] == i + 1).all()
            assert os.path.basename(batch["source"][j]) == f"{i:04d}.npz"
            seen.append(i)
    assert sorted(seen) == list(range(len(shapes)))


def test_map_style_shape_batches_with_dataloader(mixed):
    torch = pytest.importorskip("torch", reason="the map-style dataset needs torch (the torch extra)")
    reader = SliceReader(list(mixed), group_by_shape=True, seed=2, prefetch=0)
    dataset = reader.dataset()
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=dataset.shape_batches(4), num_workers=0)
    seen = []
    for batch in loader:
        assert batch["image"].ndim == 4 and batch["image"].shape[0] <= 4
        for j, (source, z) in enumerate(zip(batch["source"], batch["index"].tolist())):
            np.testing.assert_array_equal(batch["image"][j, 0].numpy(), mixed[source][z])
            seen.append((source, z))
    assert sorted(seen) == sorted((p, z) for p, a in mixed.items() for z in range(a.shape[0]))


def _with_threads(sample: dict) -> dict:
    """A transform recording the decode threads of the process that loaded the sample."""
    from voxelpipe.reader.chunks import settings

    return {**sample, "threads": settings()["threads"]}


def test_dataloader_workers_size_their_decode_threads(mixed):
    torch = pytest.importorskip("torch", reason="the map-style dataset needs torch (the torch extra)")
    reader = SliceReader([p for p in mixed if mixed[p].shape[1:] == (12, 20)], seed=0, prefetch=0)
    loader = torch.utils.data.DataLoader(reader.dataset(transform=_with_threads), batch_size=4, num_workers=2,
                                         multiprocessing_context="spawn")
    threads = {int(t) for batch in loader for t in batch["threads"]}
    cores = os.cpu_count() or 1
    # two workers on this machine: each gets at most half the cores (at least one thread)
    assert threads == {max(1, cores // 2)}
