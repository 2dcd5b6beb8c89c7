"""Converted Zarr volumes as reader sources: finding them, keeping them open, reading many regions at once.

A volume is a Zarr group (``.zarr`` folder, ``.zarr.zip`` or ``.zarr.sqlite``) with an ``image`` array
(slice, row, column) and optional masks of the same shape (NGFF labels ``labels/<name>/0``, or ``masks/<name>``
in older volumes). Samples are read through :class:`~voxelpipe.reader.chunks.ChunkReader`: only the chunks a
slice or patch touches are read, straight from the store, and the chunks of one batch are decoded together in
a small thread pool (Blosc releases the GIL). Volumes over a URL are read through zarr-python, the regions of
one batch in one trip to its event loop.
"""
from __future__ import annotations

import asyncio
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np
from zarr.core.sync import sync

from voxelpipe.core.errors import InputError
from voxelpipe.reader.base import BatchReader
from voxelpipe.reader.chunks import ChunkReader, KeyStore, open_key_store, read_regions
from voxelpipe.stores.masks import mask_arrays
from voxelpipe.stores.registry import ZARR_SUFFIXES
from voxelpipe.stores.remote import is_url, isdir, join, listdir, local_path, open_group, volume_exists


def volume_paths(source: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """The Zarr volumes (``.zarr``, ``.zarr.zip``, ``.zarr.sqlite``) of ``source``.

    Args:
        source: A volume path, a folder searched recursively (e.g. convert's ``OUT/data``; ``*.partial``
            folders are skipped), or a list of these. Each may be a URL (``http(s)://``, ``s3://``,
            ``memory://``, ``file://``: see :mod:`voxelpipe.stores.remote`); a folder URL must be listable (S3,
            or an HTTP server's index page).

    Returns:
        The volume paths, sorted within each folder.

    Raises:
        InputError: A path that does not exist or is neither a volume nor a folder.
    """
    if isinstance(source, (str, os.PathLike)):
        source = local_path(source)
        if is_url(source):
            return _url_volume_paths(source.rstrip("/"))
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


def _url_volume_paths(url: str) -> list[str]:
    """:func:`volume_paths` of a URL: the volume itself, or the volumes found walking the folder it names."""
    if url.endswith(ZARR_SUFFIXES):
        if not volume_exists(url):
            raise InputError(f"{url}: no such volume")
        return [url]
    if not isdir(url):
        raise InputError(f"{url}: neither a Zarr volume ({', '.join(ZARR_SUFFIXES)}) nor a folder")
    entries = [(name, folder) for name, folder in listdir(url) if not name.endswith(".partial")]
    found = [join(url, name) for name, _ in entries if name.endswith(ZARR_SUFFIXES)]
    for name, folder in entries:  # then the subfolders, as os.walk goes
        if folder and not name.endswith(ZARR_SUFFIXES):
            found.extend(_url_volume_paths(join(url, name)))
    return found


def open_volume_arrays(path: str):
    """Open the volume at ``path`` (a local path or a URL).

    Returns:
        (group, image array, {mask name: mask array}); close ``group.store`` when done.

    Raises:
        InputError: ``path`` cannot be opened as a Zarr volume.
    """
    try:
        group = open_group(path)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: cannot open as a Zarr volume ({exc})") from exc
    masks = mask_arrays(group)
    return group, group["image"], masks


def open_volume_readers(path: str) -> tuple[KeyStore | None, ChunkReader, dict[str, ChunkReader]]:
    """Open the volume at ``path`` (a local path or a URL) for reading regions.

    Returns:
        (the store's key reader shared by the arrays, or None over a URL; image reader; {mask name: reader}).
        Close them with :func:`close_volume_readers`.

    Raises:
        InputError: ``path`` cannot be opened as a Zarr volume.
    """
    group, image, masks = open_volume_arrays(path)
    if is_url(path):
        return None, ChunkReader(image), {name: ChunkReader(array) for name, array in masks.items()}
    paths = {name: array.path for name, array in masks.items()}
    image_path = image.path
    group.store.close()
    keys = open_key_store(path)
    return keys, ChunkReader(keys, image_path), {name: ChunkReader(keys, p) for name, p in paths.items()}


def close_volume_readers(item: tuple) -> None:
    """Close what :func:`open_volume_readers` opened."""
    keys, image, masks = item
    if keys is not None:
        keys.close()
    else:
        image.close()  # over a URL every reader holds the group's one store


class OpenVolumes:
    """Per-process cache of open volumes; the least recently used beyond ``limit`` are closed.

    Never pickled (only ``limit`` is), and emptied after a fork: stores such as SQLite must not be shared
    between processes.

    Args:
        limit: Volumes kept open at most.
    """

    def __init__(self, limit: int = 32):
        self.limit = limit
        self._pid = None
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str):
        """(image reader, {mask name: reader}) of the volume at ``path``
        (:class:`~voxelpipe.reader.chunks.ChunkReader`), opened when not cached."""
        with self._lock:
            if self._pid != os.getpid():
                self._items, self._pid = OrderedDict(), os.getpid()
            item = self._items.pop(path, None)
            if item is None:
                item = open_volume_readers(path)
            self._items[path] = item
            while len(self._items) > self.limit:
                close_volume_readers(self._items.popitem(last=False)[1])
            return item[1], item[2]

    def __getstate__(self):
        return {"limit": self.limit}

    def __setstate__(self, state):
        self.__init__(state["limit"])


def read_many(reads: list[tuple[object, tuple]], outs: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """``array[selection]`` for every (array, selection) pair, the chunks of all of them decoded together.

    Args:
        reads: (ChunkReader or zarr array, selection tuple) pairs; selections of slices (step 1) and integers.
        outs: Arrays to fill, one per pair (the selection's shape; any dtype the values cast to), or None.

    Returns:
        One numpy array per pair, in order (``outs`` when given).
    """
    if all(isinstance(array, ChunkReader) for array, _ in reads):
        return read_regions(reads, outs)

    async def gather():
        return await asyncio.gather(*(array.async_array.getitem(selection) for array, selection in reads))

    found = [np.asarray(data) for data in sync(gather())] if reads else []
    if outs is None:
        return found
    for out, data in zip(outs, found):
        out[...] = data
    return list(outs)


class VolumeReader(BatchReader):
    """Base of the slice and patch readers: the volumes, their shapes and masks.

    Args:
        volumes: Volume paths or folders (see :func:`volume_paths`).
        masks: Mask names (NGFF ``labels/<name>``, or ``masks/<name>`` of older volumes) to return, in this order;
            None takes every name found in any volume, sorted.
        open_volumes: Volumes kept open per process.
        **options: Passed to :class:`~voxelpipe.reader.base.BatchReader`.

    Raises:
        InputError: A volume that cannot be opened or whose image is not 3-D.
    """

    def __init__(self, volumes, masks: Sequence[str] | None, open_volumes: int, **options):
        super().__init__(**options)
        self.paths = volume_paths(volumes)
        self._volumes = OpenVolumes(open_volumes)
        shapes, dtypes, names = [], [], set()
        for path in self.paths:
            group, image, found = open_volume_arrays(path)
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


__all__ = ["OpenVolumes", "VolumeReader", "ZARR_SUFFIXES", "close_volume_readers", "open_volume_arrays",
           "open_volume_readers", "read_many", "volume_paths"]
