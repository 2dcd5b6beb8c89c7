"""Training-time batch reader: npz image/mask pairs, or converted Zarr volumes with masks.

Three readers share one loop (:class:`BatchReader`):

- :class:`PairReader`  — the ``<patient_key>/<NNNN>.npz`` pairs of the contours command; one sample per file.
- :class:`SliceReader` — every 2-D slice (axis 0) of Zarr volumes; one sample per slice.
- :class:`PatchReader` — random 3-D patches of Zarr volumes, ``patches_per_volume`` samples per volume and
  epoch, optionally centred on a foreground voxel of the masks with probability ``foreground``.

Iterating a reader yields one dict of numpy arrays per batch (see :class:`BatchReader`). The order is
reproducible: epoch ``e`` uses the permutation of ``np.random.default_rng((seed, e))`` and patch ``k`` of volume
``v`` draws its start from ``np.random.default_rng((seed, e, v, k))``, so a sample's content does not depend on
which thread or DataLoader worker loads it. Batches are loaded by a background thread into a bounded queue
(zarr and Blosc release the GIL); the thread stops when the consumer closes the iterator or stops early.

Zarr arrays are indexed with slices, so only the chunks a slice or patch touches are read. Foreground
sampling scans each volume's masks once per process, slab by slab, keeping one foreground count per chunk; a
foreground voxel is then drawn uniformly by picking a chunk in proportion to its count and reading that chunk.

``TorchDataset(reader)`` / ``reader.torch()`` wrap a reader as a ``torch.utils.data.IterableDataset`` (torch is
imported only then). Use it with ``DataLoader(dataset, batch_size=None, num_workers=W)``: every worker computes
the same sample order from the seed and loads batches ``w, w + W, ...``, so each sample appears exactly once
per epoch, and the DataLoader, which takes batches from its workers in turn, yields the same sequence as the
reader itself.
"""
from __future__ import annotations

import asyncio
import glob
import json
import math
import os
import queue
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from voxelpipe.core.errors import InputError

MASK_PREFIX = "mask_"
FILELIST = "filelist.txt"
ZARR_SUFFIXES = (".zarr", ".zarr.zip", ".zarr.sqlite")
PREFETCH_THREAD_NAME = "voxelpipe-reader-prefetch"


class BatchReader:
    """Iterate batches over ``epochs`` epochs of a fixed sample index.

    Each batch is a dict:

    - ``image``: (N, rows, cols) or (N, pz, py, px), the sources' common dtype (or ``dtype``);
    - ``mask``: (N, K, ...) uint8, K = ``len(reader.mask_names)``; a mask a sample lacks is zeros, and
    - ``present``: (N, K) bool says which masks the sample has;
    - ``source``: list of N paths; ``index``: (N,) int64 (file number, slice index or patch number);
    - ``epoch``: int; patches also have ``start`` (N, 3) int64 and ``foreground`` (N,) bool.

    ``shuffle``: a fresh permutation every epoch (else index order). ``seed``: int ≥ 0; None draws one (kept in
    ``reader.seed``). ``drop_last``: drop each epoch's last, short batch. ``prefetch``: batches loaded ahead
    by a background thread (0: load in the consumer's thread).
    """

    def __init__(self, *, batch_size: int = 16, shuffle: bool = True, seed: int | None = None,
                 drop_last: bool = False, epochs: int = 1, prefetch: int = 2, dtype=None):
        if int(batch_size) < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        if int(epochs) < 1:
            raise InputError(f"epochs must be at least 1, got {epochs}")
        if int(prefetch) < 0:
            raise InputError(f"prefetch must be 0 or more, got {prefetch}")
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> np.uint64(1))
        if int(seed) < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed}")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.epochs = int(epochs)
        self.prefetch = int(prefetch)
        self.dtype = None if dtype is None else np.dtype(dtype)
        self._orders: dict[int, np.ndarray] = {}

    # -- to be provided by subclasses -------------------------------------------------------------------------
    samples_per_epoch: int = 0

    def _sample(self, number: int) -> tuple[int, int]:
        """Sample ``number`` of the index as (source number, index within the source)."""
        raise NotImplementedError

    def _load(self, epoch: int, samples: list[tuple[int, int]]) -> dict:
        raise NotImplementedError

    # -- the loop ---------------------------------------------------------------------------------------------
    def _check_batches(self) -> None:
        if self.samples_per_epoch == 0:
            raise InputError("no samples to read")
        if self.batches_per_epoch == 0:
            raise InputError(f"drop_last with batch_size {self.batch_size} > {self.samples_per_epoch} samples "
                             "per epoch leaves no batch")

    @property
    def batches_per_epoch(self) -> int:
        n, size = self.samples_per_epoch, self.batch_size
        return n // size if self.drop_last else math.ceil(n / size)

    def __len__(self) -> int:
        """Batches over all epochs."""
        return self.batches_per_epoch * self.epochs

    def order(self, epoch: int) -> np.ndarray:
        """The sample numbers of ``epoch`` in reading order (the same in every process)."""
        order = self._orders.get(epoch)
        if order is None:
            n = self.samples_per_epoch
            order = np.random.default_rng((self.seed, epoch)).permutation(n) if self.shuffle else np.arange(n)
            self._orders = {epoch: order}  # one epoch at a time is all a loop needs
        return order

    def batch(self, epoch: int, number: int) -> dict:
        """Batch ``number`` of ``epoch``, loaded now."""
        if not 0 <= number < self.batches_per_epoch or epoch < 0:
            raise IndexError(f"no batch {number} of epoch {epoch} ({self.batches_per_epoch} batches per epoch)")
        order = self.order(epoch)
        picked = order[number * self.batch_size:(number + 1) * self.batch_size]
        batch = self._load(epoch, [self._sample(int(s)) for s in picked])
        batch["epoch"] = epoch
        return batch

    def _batches(self, first_epoch: int = 0, worker: int = 0, workers: int = 1) -> Iterator[dict]:
        """Batches ``worker``, ``worker + workers``, ... of the reader's sequence (all epochs in a row)."""
        per_epoch = self.batches_per_epoch
        for g in range(worker, per_epoch * self.epochs, workers):
            epoch, number = divmod(g, per_epoch)
            yield self.batch(first_epoch + epoch, number)

    def iterate(self, first_epoch: int = 0, worker: int = 0, workers: int = 1) -> Iterator[dict]:
        """Epochs ``first_epoch`` .. ``first_epoch + epochs - 1``; with ``workers`` > 1 only this worker's share
        (global batches ``worker::workers``). Prefetched when ``prefetch`` > 0."""
        batches = self._batches(first_epoch, worker, workers)
        return _prefetched(batches, self.prefetch) if self.prefetch else batches

    def __iter__(self) -> Iterator[dict]:
        return self.iterate()

    def torch(self, first_epoch: int = 0):
        """This reader as a ``torch.utils.data.IterableDataset`` (see :class:`TorchDataset`)."""
        return _torch_dataset_class()(self, first_epoch)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_orders"] = {}
        return state

    # -- helpers ----------------------------------------------------------------------------------------------
    def _empty(self, n: int, shape: tuple[int, ...], dtype) -> dict:
        k = len(self.mask_names)
        return {"image": np.empty((n, *shape), self.dtype or dtype),
                "mask": np.zeros((n, k, *shape), np.uint8),
                "present": np.zeros((n, k), bool),
                "source": [], "index": np.empty(n, np.int64)}


def _prefetched(items: Iterator[dict], depth: int) -> Iterator[dict]:
    """``items`` produced by a background thread, at most ``depth`` ahead; the thread is stopped and joined
    when this generator finishes, fails or is closed."""
    box: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        box.put((True, item), timeout=0.05)
                        break
                    except queue.Full:
                        pass
                if stop.is_set():
                    return
            result = (True, done)
        except BaseException as exc:  # handed to the consumer
            result = (False, exc)
        while not stop.is_set():
            try:
                box.put(result, timeout=0.05)
                return
            except queue.Full:
                pass

    thread = threading.Thread(target=produce, name=PREFETCH_THREAD_NAME, daemon=True)
    thread.start()
    try:
        while True:
            ok, item = box.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()


# ------------------------------------------------------------------------------------------------------------
# npz pairs
# ------------------------------------------------------------------------------------------------------------
def pair_files(source: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """The npz files of ``source``: a folder (its ``filelist.txt`` when present, else every ``**/*.npz``), one
    ``.npz`` file, or a list of files and folders."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            listing = os.path.join(path, FILELIST)
            if os.path.exists(listing):
                with open(listing, encoding="utf-8") as fh:
                    names = [line.strip() for line in fh if line.strip()]
                files = [os.path.join(path, name) for name in names if name.endswith(".npz")]
            else:
                files = sorted(glob.glob(os.path.join(glob.escape(path), "**", "*.npz"), recursive=True))
            missing = [f for f in files if not os.path.exists(f)]
            if missing:
                raise InputError(f"{listing}: lists {len(missing)} missing file(s), e.g. {missing[0]}")
            return files
        if not os.path.exists(path):
            raise InputError(f"{path}: no such file or folder")
        return [path]
    return [f for item in source for f in pair_files(item)]


def _npz_arrays(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """name -> (shape, dtype) of the arrays in an npz file, from the npy headers only."""
    arrays = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    continue
                with archive.open(member) as fh:
                    version = np.lib.format.read_magic(fh)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(fh)
                arrays[member[:-4]] = (tuple(shape), np.dtype(dtype))
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise InputError(f"{path}: not a readable npz file ({exc})") from exc
    return arrays


class PairReader(BatchReader):
    """Batches of the 2-D image/mask pairs written by the contours command.

    ``source``: a folder, a file or a list (see :func:`pair_files`). ``masks``: the contour kinds to return
    (``"i"`` for ``mask_i``), in this order; None takes every kind found in any file, sorted. Every image must
    have the same (rows, cols): one batch is one array (build one reader per shape otherwise). Batches also
    carry ``meta``: the parsed ``meta_json`` of each sample.
    """

    def __init__(self, source, masks: Sequence[str] | None = None, **options):
        super().__init__(**options)
        self.files = pair_files(source)
        headers = [_npz_arrays(f) for f in self.files]
        for path, arrays in zip(self.files, headers):
            if "image" not in arrays or len(arrays["image"][0]) != 2:
                raise InputError(f"{path}: no 2-D 'image' array")
        kinds = sorted({name[len(MASK_PREFIX):] for arrays in headers for name in arrays
                        if name.startswith(MASK_PREFIX)})
        self.mask_names = list(kinds if masks is None else masks)
        self.shape = _common_shape([(f, a["image"][0]) for f, a in zip(self.files, headers)])
        self.image_dtype = np.result_type(*[a["image"][1] for a in headers]) if headers else np.dtype(np.int16)
        self.samples_per_epoch = len(self.files)
        self._check_batches()

    def _sample(self, number: int) -> tuple[int, int]:
        return number, number

    def _load(self, epoch: int, samples: list[tuple[int, int]]) -> dict:
        out = self._empty(len(samples), self.shape, self.image_dtype)
        out["meta"] = []
        for i, (number, _) in enumerate(samples):
            path = self.files[number]
            with np.load(path) as data:
                out["image"][i] = data["image"]
                for k, kind in enumerate(self.mask_names):
                    key = MASK_PREFIX + kind
                    if key in data.files:
                        mask = data[key]
                        if mask.shape != self.shape:
                            raise InputError(f"{path}: {key} has shape {mask.shape}, the image {self.shape}")
                        out["mask"][i, k] = mask
                        out["present"][i, k] = True
                out["meta"].append(json.loads(str(data["meta_json"])) if "meta_json" in data.files else {})
            out["source"].append(path)
            out["index"][i] = number
        return out


def _common_shape(shapes: list[tuple[str, tuple[int, ...]]]) -> tuple[int, ...]:
    """The one shape every source shares, else an InputError naming a file of each shape."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for path, shape in shapes:
        groups.setdefault(tuple(shape), []).append(path)
    if len(groups) > 1:
        listed = "; ".join(f"{shape}: {len(paths)} file(s), e.g. {paths[0]}" for shape, paths in groups.items())
        raise InputError(f"images differ in (rows, cols), so they cannot share a batch: {listed}. "
                         "Build one reader per shape (or resample first).")
    return next(iter(groups), (0, 0))


# ------------------------------------------------------------------------------------------------------------
# Zarr volumes
# ------------------------------------------------------------------------------------------------------------
def volume_paths(source: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Zarr volumes (``.zarr``, ``.zarr.zip``, ``.zarr.sqlite``): a volume path, a folder searched recursively
    (e.g. convert's ``OUT/data``), or a list of these."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source).rstrip(os.sep)
        if path.endswith(ZARR_SUFFIXES):
            if not os.path.exists(path):
                raise InputError(f"{path}: no such volume")
            return [path]
        if not os.path.isdir(path):
            raise InputError(f"{path}: neither a Zarr volume ({', '.join(ZARR_SUFFIXES)}) nor a folder")
        found = []
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.endswith(".partial"))
            for name in sorted(dirs + files):
                if name.endswith(ZARR_SUFFIXES):
                    found.append(os.path.join(folder, name))
            dirs[:] = [d for d in dirs if not d.endswith(".zarr")]
        return found
    return [p for item in source for p in volume_paths(item)]


class _OpenVolumes:
    """Per-process cache of open volume groups (the least recently used beyond ``limit`` are closed). Never
    pickled, and dropped after a fork: stores such as SQLite must not be shared between processes."""

    def __init__(self, limit: int = 32):
        self.limit = limit
        self._pid = None
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str):
        """(image array, {mask name: array}) of the volume at ``path``."""
        with self._lock:
            if self._pid != os.getpid():
                self._items, self._pid = OrderedDict(), os.getpid()
            item = self._items.pop(path, None)
            if item is None:
                item = _open(path)
            self._items[path] = item
            while len(self._items) > self.limit:
                self._items.popitem(last=False)[1][0].store.close()
            return item[1], item[2]

    def __getstate__(self):
        return {"limit": self.limit}

    def __setstate__(self, state):
        self.__init__(state["limit"])


def _read_many(reads: list[tuple[object, tuple]]) -> list[np.ndarray]:
    """``array[selection]`` for every (zarr array, selection) pair, in one trip to zarr's event loop: the
    chunks of a whole batch are fetched and decoded concurrently instead of one array at a time."""
    from zarr.core.sync import sync

    async def gather():
        return await asyncio.gather(*(array.async_array.getitem(selection) for array, selection in reads))

    return [np.asarray(data) for data in sync(gather())] if reads else []


def _open(path: str):
    from voxelpipe.stores.masks import MASKS_GROUP
    from voxelpipe.stores.zarr_store import open_volume_group

    try:
        group = open_volume_group(path)
    except Exception as exc:
        raise InputError(f"{path}: cannot open as a Zarr volume ({exc})") from exc
    masks = dict(group[MASKS_GROUP].arrays()) if MASKS_GROUP in group else {}
    return group, group["image"], masks


class _VolumeReader(BatchReader):
    """Shared by the slice and patch readers: the volumes, their shapes and masks."""

    def __init__(self, volumes, masks: Sequence[str] | None, open_volumes: int, **options):
        super().__init__(**options)
        self.paths = volume_paths(volumes)
        self._volumes = _OpenVolumes(open_volumes)
        shapes, dtypes, names = [], [], set()
        for path in self.paths:
            group, image, found = _open(path)
            try:
                if image.ndim != 3:
                    raise InputError(f"{path}: image has shape {image.shape}; the reader takes 3-D volumes")
                shapes.append(tuple(image.shape))
                dtypes.append(np.dtype(image.dtype))
                names.update(found)
            finally:
                group.store.close()
        self.shapes = shapes
        self.image_dtype = np.result_type(*dtypes) if dtypes else np.dtype(np.int16)
        self.mask_names = sorted(names) if masks is None else list(masks)

    def _arrays(self, v: int):
        return self._volumes.get(self.paths[v])


class SliceReader(_VolumeReader):
    """Batches of 2-D slices (axis 0) of Zarr volumes, every slice of every volume once per epoch.

    ``masks``: mask names (``masks/<name>``) to return, in this order; None takes every name found in any
    volume, sorted. Every volume must have the same (rows, cols) (build one reader per shape otherwise).
    ``open_volumes``: volumes kept open per process.
    """

    def __init__(self, volumes, masks: Sequence[str] | None = None, *, open_volumes: int = 32, **options):
        super().__init__(volumes, masks, open_volumes, **options)
        self.shape = _common_shape([(p, s[1:]) for p, s in zip(self.paths, self.shapes)])
        counts = np.array([s[0] for s in self.shapes], dtype=np.int64)
        self._ends = np.cumsum(counts)
        self.samples_per_epoch = int(self._ends[-1]) if len(counts) else 0
        self._check_batches()

    def _sample(self, number: int) -> tuple[int, int]:
        v = int(np.searchsorted(self._ends, number, side="right"))
        return v, number - (int(self._ends[v - 1]) if v else 0)

    def _load(self, epoch: int, samples: list[tuple[int, int]]) -> dict:
        out = self._empty(len(samples), self.shape, self.image_dtype)
        reads, targets = [], []
        for i, (v, z) in enumerate(samples):
            image, masks = self._arrays(v)
            reads.append((image, (z,)))
            targets.append(out["image"][i])
            for k, name in enumerate(self.mask_names):
                if name in masks:
                    reads.append((masks[name], (z,)))
                    targets.append(out["mask"][i, k])
                    out["present"][i, k] = True
            out["source"].append(self.paths[v])
            out["index"][i] = z
        for target, data in zip(targets, _read_many(reads)):
            target[...] = data
        return out


class PatchReader(_VolumeReader):
    """Batches of random 3-D patches of Zarr volumes: ``patches_per_volume`` samples per volume and epoch.

    ``patch_size``: (pz, py, px). A patch's start is uniform over the starts that keep it inside the volume;
    with probability ``foreground`` it is instead centred on a foreground voxel (drawn uniformly) of the
    ``foreground_masks`` (default: the returned masks) and moved inside the volume, so it still contains that
    voxel (``foreground`` is True in the batch). A volume without foreground gets a uniform patch. Along an
    axis where the volume is smaller than the patch, the patch starts at 0 and holds the whole axis at its low
    end; the rest is ``fill`` in ``image`` and 0 in ``mask``.
    """

    def __init__(self, volumes, patch_size: Sequence[int], masks: Sequence[str] | None = None, *,
                 patches_per_volume: int = 1, foreground: float = 0.0,
                 foreground_masks: Sequence[str] | None = None, fill: float = 0, open_volumes: int = 32,
                 **options):
        super().__init__(volumes, masks, open_volumes, **options)
        size = tuple(int(p) for p in patch_size)
        if len(size) != 3 or min(size) < 1:
            raise InputError(f"patch_size must be 3 positive integers, got {patch_size}")
        if not 0.0 <= foreground <= 1.0:
            raise InputError(f"foreground must be a probability in [0, 1], got {foreground}")
        if int(patches_per_volume) < 1:
            raise InputError(f"patches_per_volume must be at least 1, got {patches_per_volume}")
        self.patch_size = size
        self.patches_per_volume = int(patches_per_volume)
        self.foreground = float(foreground)
        self.foreground_masks = list(self.mask_names if foreground_masks is None else foreground_masks)
        if self.foreground > 0 and not self.foreground_masks:
            raise InputError("foreground sampling needs foreground_masks (or masks)")
        self.fill = fill
        self.samples_per_epoch = len(self.paths) * self.patches_per_volume
        self._check_batches()
        self._counts: dict[int, tuple | None] = {}

    def __getstate__(self):
        state = super().__getstate__()
        state["_counts"] = {}
        return state

    def _sample(self, number: int) -> tuple[int, int]:
        return divmod(number, self.patches_per_volume)

    def patch_start(self, epoch: int, v: int, k: int) -> tuple[tuple[int, int, int], bool]:
        """Start of patch ``k`` of volume ``v`` in ``epoch`` and whether it is centred on foreground."""
        rng = np.random.default_rng((self.seed, epoch, v, k))
        shape = self.shapes[v]
        highest = [max(0, s - p) for s, p in zip(shape, self.patch_size)]
        if self.foreground > 0 and rng.random() < self.foreground:
            centre = self._foreground_voxel(v, rng)
            if centre is not None:
                start = tuple(min(max(c - p // 2, 0), h) for c, p, h in zip(centre, self.patch_size, highest))
                return start, True
        return tuple(int(rng.integers(0, h + 1)) for h in highest), False

    def _foreground_masks(self, v: int) -> list:
        _, masks = self._arrays(v)
        return [masks[name] for name in self.foreground_masks if name in masks]

    def _union(self, arrays: list, region: tuple) -> np.ndarray:
        union = np.asarray(arrays[0][region]) != 0
        for array in arrays[1:]:
            union |= np.asarray(array[region]) != 0
        return union

    def _foreground_counts(self, v: int):
        """(chunk shape, grid shape, cumulative foreground count per chunk) of volume ``v``, or None."""
        if v not in self._counts:
            arrays = self._foreground_masks(v)
            result = None
            if arrays:
                shape, chunks = self.shapes[v], tuple(arrays[0].chunks)
                grid = tuple(math.ceil(s / c) for s, c in zip(shape, chunks))
                counts = np.zeros(grid, np.int64)
                cz, cy, cx = chunks
                for iz in range(grid[0]):
                    slab = self._union(arrays, (slice(iz * cz, (iz + 1) * cz),))
                    padded = np.zeros((slab.shape[0], grid[1] * cy, grid[2] * cx), bool)
                    padded[:, :shape[1], :shape[2]] = slab
                    counts[iz] = padded.reshape(-1, grid[1], cy, grid[2], cx).sum(axis=(0, 2, 4))
                if counts.any():
                    result = (chunks, grid, np.cumsum(counts.ravel()))
            self._counts[v] = result
        return self._counts[v]

    def _foreground_voxel(self, v: int, rng: np.random.Generator) -> tuple[int, int, int] | None:
        found = self._foreground_counts(v)
        if found is None:
            return None
        chunks, grid, cumulative = found
        r = int(rng.integers(0, cumulative[-1]))
        chunk = int(np.searchsorted(cumulative, r, side="right"))
        offset = r - (int(cumulative[chunk - 1]) if chunk else 0)
        origin = [i * c for i, c in zip(np.unravel_index(chunk, grid), chunks)]
        region = tuple(slice(o, o + c) for o, c in zip(origin, chunks))
        union = self._union(self._foreground_masks(v), region)
        voxel = np.unravel_index(np.flatnonzero(union)[offset], union.shape)
        return tuple(int(o + i) for o, i in zip(origin, voxel))

    def _load(self, epoch: int, samples: list[tuple[int, int]]) -> dict:
        out = self._empty(len(samples), self.patch_size, self.image_dtype)
        out["start"] = np.empty((len(samples), 3), np.int64)
        out["foreground"] = np.empty(len(samples), bool)
        reads, targets = [], []
        for i, (v, k) in enumerate(samples):
            start, centred = self.patch_start(epoch, v, k)
            image, masks = self._arrays(v)
            region = tuple(slice(s, s + p) for s, p in zip(start, self.patch_size))
            inside = tuple(slice(0, min(p, n - s)) for s, p, n in zip(start, self.patch_size, self.shapes[v]))
            if any(sl.stop < p for sl, p in zip(inside, self.patch_size)):
                out["image"][i] = self.fill
            reads.append((image, region))
            targets.append(out["image"][i][inside])
            for k_mask, name in enumerate(self.mask_names):
                if name in masks:
                    reads.append((masks[name], region))
                    targets.append(out["mask"][i, k_mask][inside])
                    out["present"][i, k_mask] = True
            out["source"].append(self.paths[v])
            out["index"][i] = k
            out["start"][i] = start
            out["foreground"][i] = centred
        for target, data in zip(targets, _read_many(reads)):
            target[...] = data
        return out


# ------------------------------------------------------------------------------------------------------------
# torch adapter (torch is imported only here)
# ------------------------------------------------------------------------------------------------------------
_TORCH_CLASS = None


def _torch_dataset_class():
    global _TORCH_CLASS
    if _TORCH_CLASS is None:
        import torch
        from torch.utils.data import IterableDataset, get_worker_info

        class TorchDataset(IterableDataset):
            """A reader as a ``torch.utils.data.IterableDataset`` yielding one dict per batch, arrays as
            tensors. Use ``DataLoader(dataset, batch_size=None, num_workers=W)``: worker ``w`` loads the
            reader's batches ``w, w + W, ...`` (all workers compute the same order from the seed), so every
            sample appears once per epoch and the loader yields the reader's own sequence.

            One pass covers the reader's ``epochs``, starting at epoch ``first_epoch``; for a loop of one-epoch
            passes call ``set_epoch(e)`` before each (without ``persistent_workers``, which keep the old value).
            """

            def __init__(self, reader: BatchReader, first_epoch: int = 0):
                self.reader = reader
                self.first_epoch = int(first_epoch)

            def set_epoch(self, epoch: int) -> None:
                self.first_epoch = int(epoch)

            def __len__(self) -> int:
                return len(self.reader)

            def __iter__(self):
                info = get_worker_info()
                worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
                for batch in self.reader.iterate(self.first_epoch, worker, workers):
                    yield {key: torch.from_numpy(value) if isinstance(value, np.ndarray) else value
                           for key, value in batch.items()}

        TorchDataset.__module__ = __name__
        TorchDataset.__qualname__ = "TorchDataset"
        _TORCH_CLASS = TorchDataset
    return _TORCH_CLASS


def __getattr__(name: str):
    # ``TorchDataset`` is built on first use so that torch stays optional; being reachable as a module
    # attribute also lets pickle find it in spawned DataLoader workers.
    if name == "TorchDataset":
        return _torch_dataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
