"""Masks stored beside a converted volume as OME-Zarr (NGFF 0.5) labels: ``labels/<name>`` on the image's grid.

Layout inside the volume group::

    labels/                 attrs {"ome": {"version": "0.5", "labels": [<name>, ...]}}
    labels/<name>/          attrs {"ome": {"version": "0.5", "image-label": {...}, "multiscales": [...]}}
    labels/<name>/0         uint8 (z, y, x) = (slice, row, column), the mask; its attributes: ROI name and number,
                            colour, source file and kind, ...
    labels/<name>/1, 2 ...  the image's pyramid levels (block mode), when the image has levels

The label multiscales repeat the image's spatial scale and translation per level. Masks are added atomically:
a reader sees either the old set of masks or the new one, never a half-written array.

- ``dir`` stores (``.zarr``): each label group is written in a folder beside the volume and renamed into
  ``labels/``, then ``labels/zarr.json`` is replaced by rename.
- ``zip`` / ``sqlite`` stores: the store is copied, the masks added to the copy, and the copy renamed over the
  original (zip members cannot be replaced in place).

Volumes written before the labels layout keep their masks as ``masks/<name>`` arrays; :func:`open_masks` and
:func:`mask_arrays` still read them (a label of the same name wins), and :func:`write_masks` adds labels to them.
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
from voxelpipe.stores import ngff
from voxelpipe.stores.registry import store_kind
from voxelpipe.stores.remote import open_group
from voxelpipe.stores.zarr_store import PARTIAL, open_store, open_volume_group, remove

MASKS_GROUP = "masks"
"""The group of masks in volumes written before the labels layout (read only)."""
LABELS_GROUP = ngff.LABELS_GROUP
"""The NGFF labels group: ``labels/<name>/0`` is mask ``<name>``."""


def write_masks(volume_path: str | os.PathLike, masks: list[Mask], replace: bool = True) -> list[str]:
    """Add ``masks`` to the Zarr volume at ``volume_path`` as NGFF labels ``labels/<name>``; returns the names
    written.

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
    shape = tuple(group[ngff.IMAGE_PATH].shape[-3:])
    chunks = tuple(group[ngff.IMAGE_PATH].chunks[-3:])
    image_shards = group[ngff.IMAGE_PATH].shards  # a sharded image gets sharded masks on the same grid
    shards = None if image_shards is None else tuple(image_shards[-3:])
    existing = set(mask_arrays(group))
    image_ome = group.attrs.get("ome") or _plain_ome(group)
    labelled = _label_names(group)
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
    listed = sorted(set(labelled) | set(names))
    if kind == StoreKind.DIR:
        _write_dir(path, masks, chunks, image_ome, listed, shards)
    else:
        partial = path + PARTIAL
        remove(partial)
        try:
            if kind == StoreKind.ZIP:
                _copy_zip_without(path, partial, [f"{LABELS_GROUP}/{m.name}/" for m in masks]
                                  + [f"{MASKS_GROUP}/{m.name}/" for m in masks] + [f"{LABELS_GROUP}/zarr.json"])
            else:
                shutil.copyfile(path, partial)
            _write_into(partial, kind, masks, chunks, image_ome, listed, shards)
            os.replace(partial, path)
        except BaseException:
            remove(partial)
            raise
    return names


def open_masks(volume_path: str | os.PathLike) -> dict[str, object]:
    """The masks of a Zarr volume, lazily (index them to read); empty when there are none. ``volume_path`` may be
    a URL (see :func:`voxelpipe.stores.remote.open_group`).

    Reads the NGFF labels (``labels/<name>/0``) and, for volumes written before them, ``masks/<name>``.

    Returns:
        Mask name -> zarr array (slice, row, column), sorted by name.
    """
    group = open_group(volume_path)
    found = mask_arrays(group)
    if not found:
        group.store.close()
    return found


def mask_arrays(group: zarr.Group) -> dict[str, zarr.Array]:
    """The full-resolution mask arrays of an open volume group: ``labels/<name>/0`` for each listed label, and
    any ``masks/<name>`` of an older volume (a label of the same name wins); sorted by name."""
    found: dict[str, zarr.Array] = {}
    if MASKS_GROUP in group:
        found.update(group[MASKS_GROUP].arrays())
    for name in _label_names(group):
        try:
            found[name] = group[f"{LABELS_GROUP}/{name}/0"]
        except KeyError:
            continue
    return dict(sorted(found.items()))


def _label_names(group: zarr.Group) -> list[str]:
    """Names listed in ``labels``' NGFF metadata (empty without a labels group)."""
    if LABELS_GROUP not in group:
        return []
    ome = group[LABELS_GROUP].attrs.get("ome") or {}
    return [str(name) for name in ome.get("labels", [])]


def _plain_ome(group: zarr.Group) -> dict:
    """NGFF metadata of an older volume without any: unit spacing, no translation, one level."""
    shape = group[ngff.IMAGE_PATH].shape
    entry = ngff.multiscale(shape, [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], 1, ngff.level_paths(1))
    return {"version": ngff.NGFF_VERSION, "multiscales": [entry]}


def _label_levels(mask: Mask, image_ome: dict) -> list[np.ndarray]:
    """The mask at every level of the image (level 0 first), by block mode."""
    data = np.ascontiguousarray(mask.array, dtype=np.uint8)
    return [data, *ngff.pyramid(data, ngff.level_count(image_ome), labels=True)]


def _create(mask: Mask, chunks: tuple[int, ...], image_ome: dict, parent: zarr.Group | None = None,
            store: zarr.abc.store.Store | None = None, shards: tuple[int, ...] | None = None) -> None:
    """Write ``mask`` as the label group ``mask.name`` of ``parent``, or at the root of ``store`` (arrays ``0``,
    ``1``, ...; NGFF ``image-label`` metadata, set at creation: a zip member is written once). ``chunks`` and
    ``shards`` are the image's: level 0 gets the same chunk and shard grid (the other levels plain chunks)."""
    attrs = json.loads(json.dumps(mask.attrs, default=json_default))
    group_attrs = {"ome": ngff.label_ome(image_ome, mask.name, attrs)}
    if parent is not None:
        group = parent.create_group(mask.name, attributes=group_attrs)
    else:
        group = zarr.create_group(store=store, zarr_format=3, attributes=group_attrs)
    for index, data in enumerate(_label_levels(mask, image_ome)):
        array = group.create_array(
            str(index), shape=data.shape, dtype=np.uint8,
            chunks=chunks if index == 0 and shards else tuple(min(c, n) for c, n in zip(chunks, data.shape)),
            shards=shards if index == 0 else None, fill_value=0,
            compressors=[BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")],
            dimension_names=list(ngff.SPATIAL_AXES), overwrite=True, attributes=attrs if index == 0 else {})
        array[...] = data


def _write_labels_json(path: str, names: list[str]) -> None:
    """Replace ``labels/zarr.json`` of a folder store by rename (the list of label names)."""
    target = os.path.join(path, LABELS_GROUP, "zarr.json")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    meta = {"zarr_format": 3, "node_type": "group", "attributes": {"ome": ngff.labels_ome(names)}}
    staging = target + PARTIAL
    with open(staging, "w", encoding="utf-8") as fh:
        json.dump(meta, fh)
    os.replace(staging, target)


def _write_dir(path: str, masks: list[Mask], chunks: tuple[int, ...], image_ome: dict, names: list[str],
               shards: tuple[int, ...] | None = None) -> None:
    """Each label group is written as a standalone store beside the volume, then renamed into ``labels/``."""
    labels_dir = os.path.join(path, LABELS_GROUP)
    staging = path + ".labels" + PARTIAL
    remove(staging)
    os.makedirs(staging)
    try:
        for mask in masks:
            _create(mask, chunks, image_ome, store=zarr.storage.LocalStore(os.path.join(staging, mask.name)),
                    shards=shards)
        os.makedirs(labels_dir, exist_ok=True)
        if not os.path.exists(os.path.join(labels_dir, "zarr.json")):
            _write_labels_json(path, [])
        for mask in masks:
            final = os.path.join(labels_dir, mask.name)
            old = final + ".old"
            if os.path.exists(final):
                os.replace(final, old)
            os.replace(os.path.join(staging, mask.name), final)
            remove(old)
            remove(os.path.join(path, MASKS_GROUP, mask.name))  # an older mask of that name is superseded
        _write_labels_json(path, names)
    finally:
        remove(staging)


def _write_into(path: str, kind: StoreKind, masks: list[Mask], chunks: tuple[int, ...], image_ome: dict,
                names: list[str], shards: tuple[int, ...] | None = None) -> None:
    store = open_store(path, kind, "w") if kind == StoreKind.SQLITE else zarr.storage.ZipStore(path, mode="a")
    try:
        root = zarr.open_group(store=store, mode="r+")
        if kind == StoreKind.SQLITE:
            for name in (f"{LABELS_GROUP}/{m.name}" for m in masks):
                if name in root:
                    del root[name]
            for name in (f"{MASKS_GROUP}/{m.name}" for m in masks):
                if name in root:
                    del root[name]
            if LABELS_GROUP in root:
                root[LABELS_GROUP].attrs.update({"ome": ngff.labels_ome(names)})
        labels = root[LABELS_GROUP] if LABELS_GROUP in root else \
            root.create_group(LABELS_GROUP, attributes={"ome": ngff.labels_ome(names)})
        for mask in masks:
            _create(mask, chunks, image_ome, parent=labels, shards=shards)
    finally:
        store.close()


def _copy_zip_without(source: str, target: str, prefixes: list[str]) -> None:
    """Copy a zip store, leaving out members under ``prefixes`` (masks about to be replaced, the labels list)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if not any(info.filename.startswith(p) for p in prefixes):
                zout.writestr(info, zin.read(info.filename))
