"""Masks stored beside a converted volume: ``masks/<name>`` uint8 arrays on the image's grid.

A mask array has the image's spatial shape (slice, row, column), the image's spatial chunks, Blosc zstd, and
its metadata (ROI name and number, colour, source file and kind, ...) as the array's attributes. Masks are added
atomically: a reader sees either the old set of masks or the new one, never a half-written array.

- ``dir`` stores (``.zarr``): each array is written in a folder beside the volume and renamed into ``masks/``.
- ``zip`` / ``sqlite`` stores: the store is copied, the masks added to the copy, and the copy renamed over the
  original (zip members cannot be replaced in place).
"""
from __future__ import annotations

import json
import os
import shutil
import zipfile

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from voxelpipe.core.errors import InputError
from voxelpipe.core.masks import Mask, mask_array_name
from voxelpipe.core.types import StoreKind
from voxelpipe.core.volume import json_default
from voxelpipe.stores.registry import store_kind
from voxelpipe.stores.remote import open_group
from voxelpipe.stores.zarr_store import PARTIAL, open_store, open_volume_group, remove

MASKS_GROUP = "masks"


def write_masks(volume_path: str | os.PathLike, masks: list[Mask], replace: bool = True) -> list[str]:
    """Add ``masks`` to the Zarr volume at ``volume_path`` as ``masks/<name>``; returns the names written.

    Every mask must have the image's spatial shape. An existing mask of the same name is replaced when
    ``replace`` (else :class:`InputError`).

    Args:
        volume_path: a ``.zarr``, ``.zarr.zip`` or ``.zarr.sqlite`` volume.
        masks: masks of shape (slice, row, column) = the image's last three axes, store-safe names.
        replace: replace masks of the same name.

    Returns:
        The names written, in the order given.

    Raises:
        InputError: no such volume, repeated or unsafe names, a shape off the grid, a name taken (``replace``
            False).
    """
    path = os.fspath(volume_path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such volume")
    kind = store_kind(path)
    group = open_volume_group(path)
    shape = tuple(group["image"].shape[-3:])
    chunks = tuple(group["image"].chunks[-3:])
    existing = set(group[MASKS_GROUP].array_keys()) if MASKS_GROUP in group else set()
    group.store.close()
    names = [m.name for m in masks]
    if len(set(names)) != len(names):
        raise InputError(f"{path}: mask names repeat: {names}")
    for mask in masks:
        if mask_array_name(mask.name) != mask.name:
            raise InputError(f"{path}: mask name {mask.name!r} is not store-safe; use mask_array_name()")
        if tuple(mask.array.shape) != shape:
            raise InputError(f"{path}: mask {mask.name!r} has shape {tuple(mask.array.shape)}, "
                             f"the volume's grid is {shape}")
        if mask.name in existing and not replace:
            raise InputError(f"{path}: mask {mask.name!r} exists (replace=False)")
    if not masks:
        return []
    if kind == StoreKind.DIR:
        _write_dir(path, masks, chunks)
    else:
        partial = path + PARTIAL
        remove(partial)
        try:
            if kind == StoreKind.ZIP:
                _copy_zip_without(path, partial, [f"{MASKS_GROUP}/{m.name}/" for m in masks])
            else:
                shutil.copyfile(path, partial)
            _write_into(partial, kind, masks, chunks, replace_existing=kind == StoreKind.SQLITE)
            os.replace(partial, path)
        except BaseException:
            remove(partial)
            raise
    return names


def open_masks(volume_path: str | os.PathLike) -> dict[str, object]:
    """The ``masks/<name>`` arrays of a Zarr volume, lazily (index them to read); empty when there are none.
    ``volume_path`` may be a URL (see :func:`voxelpipe.stores.remote.open_group`).

    Returns:
        Mask name -> zarr array (slice, row, column), sorted by name.
    """
    group = open_group(volume_path)
    if MASKS_GROUP not in group:
        group.store.close()
        return {}
    return dict(sorted(group[MASKS_GROUP].arrays()))


def _create(mask: Mask, chunks: tuple[int, ...], group=None, store=None) -> None:
    """Write ``mask`` as array ``mask.name`` of ``group``, or as the array at the root of ``store``."""
    data = np.ascontiguousarray(mask.array, dtype=np.uint8)
    options = dict(shape=data.shape, dtype=np.uint8, chunks=chunks, fill_value=0,
                   compressors=[BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")],
                   dimension_names=["slice", "row", "column"], overwrite=True,
                   attributes=json.loads(json.dumps(mask.attrs, default=json_default)))
    if group is not None:
        array = group.create_array(mask.name, **options)
    else:
        array = zarr.create_array(store=store, zarr_format=3, **options)
    array[...] = data


def _write_dir(path: str, masks: list[Mask], chunks: tuple[int, ...]) -> None:
    """Each mask is written as a standalone array store beside the volume, then renamed into ``masks/``."""
    masks_dir = os.path.join(path, MASKS_GROUP)
    if not os.path.exists(os.path.join(masks_dir, "zarr.json")):
        root = zarr.open_group(store=zarr.storage.LocalStore(path), mode="r+")
        root.require_group(MASKS_GROUP)
    staging = path + ".masks" + PARTIAL
    remove(staging)
    os.makedirs(staging)
    try:
        for mask in masks:
            _create(mask, chunks, store=zarr.storage.LocalStore(os.path.join(staging, mask.name)))
        for mask in masks:
            final = os.path.join(masks_dir, mask.name)
            old = final + ".old"
            if os.path.exists(final):
                os.replace(final, old)
            os.replace(os.path.join(staging, mask.name), final)
            remove(old)
    finally:
        remove(staging)


def _write_into(path: str, kind: StoreKind, masks: list[Mask], chunks: tuple[int, ...],
                replace_existing: bool) -> None:
    store = open_store(path, kind, "w") if kind == StoreKind.SQLITE else zarr.storage.ZipStore(path, mode="a")
    try:
        root = zarr.open_group(store=store, mode="r+")
        group = root[MASKS_GROUP] if MASKS_GROUP in root else root.create_group(MASKS_GROUP)
        for mask in masks:
            if replace_existing and mask.name in group:
                del group[mask.name]
            _create(mask, chunks, group=group)
    finally:
        store.close()


def _copy_zip_without(source: str, target: str, prefixes: list[str]) -> None:
    """Copy a zip store, leaving out members under ``prefixes`` (masks about to be replaced)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if not any(info.filename.startswith(p) for p in prefixes):
                zout.writestr(info, zin.read(info.filename))
