"""Export converted volumes and their masks as an nnU-Net v2 raw dataset.

From a ``convert`` output folder (volumes in ``OUT/data/<key>.zarr``, masks added by ``masks`` or ``contours``)
this writes ``<nnUNet_raw>/Dataset<ID>_<NAME>/``:

- ``imagesTr/<case>_0000.nii.gz``: the volume, one channel per case;
- ``labelsTr/<case>.nii.gz``: the label map: background 0, then the requested masks numbered 1..n in the order
  given, painted in that order (where masks overlap, the later label wins);
- ``dataset.json``: ``channel_names``, ``labels``, ``numTraining``, ``file_ending`` (nnU-Net v2's format);
- ``export_summary.csv``: one row per volume (case, series_key, status, reason, ...).

The case id is the volume's series key. A volume lacking any requested mask is skipped (its row names the missing
masks): nnU-Net would read an absent label as "this structure is not in the image" and learn that. Volumes that
cannot be one 3-D NIfTI image (4-D, unevenly spaced slices kept as they are, a kept gantry tilt) are skipped too.

Both files of a case are written by :func:`voxelpipe.stores.nifti.write_nifti` in dcm2niix's voxel order (NIfTI
i = column, j = row reversed, k = slice; affine = :func:`voxelpipe.stores.nifti.dicom_affine_ras`), the same
layout as ``convert --format nifti``, so image and label map carry the same header geometry and
``open_volume`` reads an exported image back in (slice, row, column) order.
"""
from __future__ import annotations

import glob
import gzip
import json
import logging
import os
import re
import time
from collections.abc import Sequence

import numpy as np

from voxelpipe.core import defaults
from voxelpipe.core.errors import InputError
from voxelpipe.core.progress import Progress
from voxelpipe.core.rows import ALREADY_COMPLETE, done_row, failed_row, skipped_row
from voxelpipe.core.volume import Volume
from voxelpipe.stores.lock import output_lock
from voxelpipe.stores.masks import open_masks
from voxelpipe.stores.nifti import (
    dicom_affine_ras,
    geometry_from_ras_affine,
    require_nibabel,
    to_nifti_order,
    write_nifti,
)
from voxelpipe.stores.registry import ZARR_SUFFIXES, is_volume_path
from voxelpipe.stores.tables import read_csv, remove_temporaries, write_csv, write_json
from voxelpipe.stores.volumes import open_volume

__all__ = ["SUMMARY_COLUMNS", "CHANNEL", "dataset_folder_name", "dataset_id_number", "dataset_root", "export_nnunet",
           "label_map", "nnunet_affine", "read_summary", "to_nnunet_order"]

log = logging.getLogger("voxelpipe")

SUMMARY_COLUMNS = ["case", "series_key", "status", "reason", "source", "image", "label", "shape", "spacing",
                   "label_voxels", "overlap_voxels", "seconds"]
CHANNEL = "0000"  # the channel index of the one image of a case
ENV_RAW = "nnUNet_raw"  # nnU-Net's own environment variable naming its raw-data folder
BACKGROUND = "background"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_DATASET_FOLDER = re.compile(r"Dataset(\d{3})_(.+)")


def dataset_id_number(dataset_id: int | str) -> int:
    """The dataset id as an int in 1..999 (``"501"`` or 501).

    Raises:
        InputError: not a whole number in 1..999.
    """
    text = str(dataset_id).strip()
    if not text.isdigit() or not 1 <= int(text) <= 999:
        raise InputError(f"--dataset-id must be 1..999 (nnU-Net's three digits; 500 and up avoid its pretrained "
                         f"datasets), got {dataset_id!r}")
    return int(text)


def dataset_folder_name(dataset_id: int | str, name: str) -> str:
    """``Dataset<ID>_<NAME>`` with a 3-digit id, as nnU-Net names a raw dataset folder.

    Raises:
        InputError: an id outside 1..999, or a name that is not letters, digits, ``_`` and ``-``.
    """
    number = dataset_id_number(dataset_id)
    if not _NAME.fullmatch(name or ""):
        raise InputError(f"--name {name!r}: use letters, digits, '_' and '-' (it becomes a folder name)")
    return f"Dataset{number:03d}_{name}"


def dataset_root(source: str | os.PathLike, dataset_id: int | str, name: str,
                 out: str | os.PathLike | None = None) -> str:
    """The dataset folder ``<raw>/Dataset<ID>_<NAME>``; ``raw`` is ``out``, else the ``nnUNet_raw`` environment
    variable, else ``<source>/nnUNet_raw``."""
    raw = os.fspath(out) if out is not None else os.environ.get(ENV_RAW) or os.path.join(os.fspath(source),
                                                                                        defaults.NNUNET_RAW)
    return os.path.join(raw, dataset_folder_name(dataset_id, name))


def to_nnunet_order(array: np.ndarray) -> np.ndarray:
    """A (slice, row, column) array as the exported NIfTI data (i = column, j = row reversed, k = slice)."""
    return np.ascontiguousarray(to_nifti_order(np.asarray(array)))


def nnunet_affine(volume: Volume) -> np.ndarray:
    """The RAS affine (4x4, mm) of the exported NIfTI files of ``volume``: :func:`dicom_affine_ras`."""
    return dicom_affine_ras(volume.geometry)


def label_map(masks: Sequence[np.ndarray], dtype: np.dtype | type = np.uint8) -> tuple[np.ndarray, list[int], int]:
    """Paint ``masks`` (same-shape arrays, nonzero = inside) in order as labels 1..n: a voxel in several masks
    gets the label of the last one.

    Returns:
        The label map (``dtype``), the voxels of each label after painting, and the voxels where a mask
        overwrote an earlier one.
    """
    painted = np.zeros(np.shape(masks[0]), dtype=dtype)
    overlap = 0
    for number, mask in enumerate(masks, start=1):
        inside = np.asarray(mask) != 0
        overlap += int(np.count_nonzero(painted[inside]))
        painted[inside] = number
    voxels = np.bincount(painted.ravel(), minlength=len(masks) + 1)[1:]
    return painted, [int(v) for v in voxels], overlap


def _volume_paths(source: str) -> tuple[list[str], list[str]]:
    """(Zarr volumes, other volume files) in ``source/data`` (or ``source`` itself when it has no ``data``)."""
    folder = os.path.join(source, "data") if os.path.isdir(os.path.join(source, "data")) else source
    if not os.path.isdir(folder):
        raise InputError(f"{source}: not a folder (give a convert output folder)")
    zarr_paths, others = [], []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith(ZARR_SUFFIXES):
            zarr_paths.append(path)
        elif is_volume_path(name) and os.path.isfile(path):
            others.append(path)
    if not zarr_paths and not others:
        raise InputError(f"{folder}: no converted volume found")
    return zarr_paths, others


def _key(path: str) -> str:
    return os.path.basename(path.rstrip("/")).split(".")[0]


def _unusable(volume: Volume) -> str:
    """Why ``volume`` cannot be one 3-D NIfTI image for nnU-Net ('' when it can)."""
    if len(volume.shape) != 3:
        return (f"{len(volume.shape)}-D volume {volume.shape}: nnU-Net takes one 3-D image per channel (export the "
                "frames separately)")
    if not volume.geometry.uniform:
        return "slices unevenly spaced (uniform: false): convert with --uneven resample"
    if volume.geometry.sheared:
        return "gantry tilt kept (sheared: true), which nnU-Net's SimpleITK reader refuses: convert with --tilt correct"
    return ""


def _nifti_problem(path: str, shape: tuple[int, ...], dtype: np.dtype, affine: np.ndarray) -> str:
    """Why the NIfTI file at ``path`` is not a complete export of that shape, dtype and affine ('' when it is)."""
    nib = require_nibabel("checking exported NIfTI files")
    if not os.path.isfile(path):
        return "missing"
    try:
        header = nib.load(path).header
        if tuple(int(n) for n in header.get_data_shape()) != tuple(shape):
            return f"shape {header.get_data_shape()}, expected {tuple(shape)}"
        if header.get_data_dtype() != np.dtype(dtype):
            return f"dtype {header.get_data_dtype()}, expected {np.dtype(dtype)}"
        if not np.allclose(header.get_best_affine(), affine, atol=1e-4):
            return "affine differs"
        # vox_offset 0: the data follow the 348-byte header, the 4-byte extension flag and the extensions
        offset = int(header.get_data_offset()) or 352 + int(header.extensions.get_sizeondisk())
        expected = offset + int(np.prod(shape)) * np.dtype(dtype).itemsize
        with open(path, "rb") as fh:  # the gzip trailer ends with the uncompressed size modulo 2**32
            fh.seek(-4, os.SEEK_END)
            size = int.from_bytes(fh.read(4), "little")
        if size != expected % (1 << 32):
            return "gzip stream cut short"
        with gzip.open(path) as fh:  # a readable stream: the trailer alone does not prove the middle is whole
            fh.seek(expected - 1)
    except Exception as exc:  # noqa: BLE001 - anything unreadable is not complete
        return f"unreadable ({type(exc).__name__}: {exc})"
    return ""


class _Dataset:
    """Paths of one nnU-Net raw dataset folder."""

    def __init__(self, root: str):
        self.root = root
        self.images = os.path.join(root, "imagesTr")
        self.labels = os.path.join(root, "labelsTr")
        self.json = os.path.join(root, "dataset.json")
        self.summary = os.path.join(root, defaults.NNUNET_SUMMARY)

    def image(self, case: str) -> str:
        return os.path.join(self.images, f"{case}_{CHANNEL}{defaults.NNUNET_FILE_ENDING}")

    def label(self, case: str) -> str:
        return os.path.join(self.labels, case + defaults.NNUNET_FILE_ENDING)

    def cases(self) -> tuple[set[str], set[str]]:
        """Case ids with an image file, and with a label file."""
        ending = defaults.NNUNET_FILE_ENDING
        images = {os.path.basename(p)[: -len(f"_{CHANNEL}{ending}")]
                  for p in glob.glob(os.path.join(glob.escape(self.images), f"*_{CHANNEL}{ending}"))}
        labels = {os.path.basename(p)[: -len(ending)]
                  for p in glob.glob(os.path.join(glob.escape(self.labels), f"*{ending}"))}
        return images, labels


def _check_raw_folder(raw: str, folder: str, dataset_id: int | str) -> None:
    """Refuse a second dataset folder with the same id under ``raw`` (nnU-Net could not tell them apart)."""
    if not os.path.isdir(raw):
        return
    number = dataset_id_number(dataset_id)
    for name in sorted(os.listdir(raw)):
        match = _DATASET_FOLDER.fullmatch(name)
        if match and int(match.group(1)) == number and name != folder:
            raise InputError(f"{os.path.join(raw, name)}: dataset id {number:03d} is taken by another dataset; "
                             "nnU-Net finds a dataset by its id: choose another --dataset-id")


def _check_existing(dataset: _Dataset, description: dict) -> None:
    """Refuse to add cases to a dataset exported with other labels, channels or file ending."""
    existing = _read_json(dataset)
    if existing is None:
        return
    for field in ("labels", "channel_names", "file_ending"):
        if existing.get(field) != description[field]:
            raise InputError(f"{dataset.json}: {field} {existing.get(field)!r} differ from this export's "
                             f"{description[field]!r}; pass --overwrite to redo the dataset, or use another "
                             "--dataset-id / --name")


def _read_json(dataset: _Dataset) -> dict | None:
    """The dataset.json of an earlier export, or None when there is none."""
    if not os.path.isfile(dataset.json):
        return None
    try:
        with open(dataset.json, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        raise InputError(f"{dataset.json}: unreadable ({exc}); remove it or pass --overwrite") from None


def _existing_channel(dataset: _Dataset) -> str:
    """The channel name of an earlier export's dataset.json ('image' when there is none)."""
    try:
        existing = _read_json(dataset)
    except InputError:
        existing = None
    return str(((existing or {}).get("channel_names") or {}).get("0") or "image")


def _labels(labels: Sequence[str] | str) -> list[str]:
    names = [str(n).strip() for n in (labels.split(",") if isinstance(labels, str) else labels)]
    if not names or any(not n for n in names):
        raise InputError(f"--labels needs one or more mask names, got {list(labels)!r}")
    if len(set(names)) != len(names):
        raise InputError(f"--labels repeats a name: {names}")
    if BACKGROUND in names:
        raise InputError(f"--labels: {BACKGROUND!r} is label 0 in nnU-Net; name the masks only")
    return names


def _channel(channels: Sequence[str] | str | None, modalities: set[str]) -> str:
    """The one channel name of the dataset: ``channels`` when given, else the volumes' modality."""
    if channels:
        names = [c.strip() for c in (channels.split(",") if isinstance(channels, str) else channels) if c.strip()]
        if len(names) != 1:
            raise InputError(f"--channels {','.join(channels)}: one channel per case is exported (each case is one "
                             "volume); multi-channel inputs such as PET+CT are not supported")
        return names[0]
    found = sorted(m for m in modalities if m)
    if len(found) != 1 or "" in modalities:
        raise InputError(f"the volumes' modalities are {sorted(modalities) or 'unknown'}: name the channel with "
                         "--channels (e.g. --channels CT); nnU-Net normalises channel 'CT' by its intensities "
                         "and any other name per image")
    return found[0]


def _clear_cases(dataset: _Dataset, keep: set[str]) -> None:
    """Remove image and label files of cases not in ``keep``."""
    images, labels = dataset.cases()
    for case in sorted(images - keep):
        os.remove(dataset.image(case))
    for case in sorted(labels - keep):
        os.remove(dataset.label(case))


def export_nnunet(source: str | os.PathLike, *, dataset_id: int | str, name: str, labels: Sequence[str] | str,
                  channels: Sequence[str] | str | None = None, out: str | os.PathLike | None = None,
                  overwrite: bool = False, progress: bool = True) -> list[dict]:
    """Write the converted volumes of ``source`` with their masks as the nnU-Net v2 raw dataset
    ``<out>/Dataset<ID>_<NAME>`` (see the module docstring for the layout).

    Args:
        source: a ``convert`` output folder (volumes in ``data/<key>.zarr``, ``.zarr.zip`` or ``.zarr.sqlite``).
        dataset_id: nnU-Net's dataset id, 1..999 (500 and up avoid clashing with its pretrained datasets).
        name: the dataset name (letters, digits, ``_``, ``-``).
        labels: mask names (``masks/<name>`` of each volume) in label order (a list, or ``"a,b"``): the first is
            label 1; where masks overlap, the later one wins.
        channels: the name of the one channel (``"CT"`` or ``["CT"]``); default: the volumes' modality, which must be
            the same for every exported volume.
        out: the nnU-Net raw folder; default: the ``nnUNet_raw`` environment variable, else
            ``<source>/nnUNet_raw``.
        overwrite: rewrite every case (and remove cases this export does not produce); without it a case whose
            image and label files are complete is kept.
        progress: show progress.

    Returns:
        One row per volume (``SUMMARY_COLUMNS``), also written to ``<dataset>/export_summary.csv``; status
        ``done``, ``skipped`` (missing mask, unusable geometry, not a Zarr volume, already complete) or
        ``failed`` (the reason says why).

    Raises:
        InputError: a bad id, name, label list or channel; no volumes; a dataset folder exported with other
            labels (without ``overwrite``); the id taken by another dataset under ``out``.
    """
    source = os.fspath(source)
    label_names = _labels(labels)
    folder = dataset_folder_name(dataset_id, name)
    root = dataset_root(source, dataset_id, name, out)
    raw = os.path.dirname(root)
    require_nibabel("export-nnunet")
    zarr_paths, others = _volume_paths(source)
    _check_raw_folder(raw, folder, dataset_id)
    dtype = np.uint8 if len(label_names) <= 255 else np.uint16

    rows: list[dict] = []
    cases: list[tuple[str, Volume, dict]] = []
    for path in others:
        rows.append(skipped_row(_base(path), "not a Zarr volume: masks are kept in Zarr volumes (convert --format "
                                             "zarr)"))
    modalities: set[str] = set()
    for path in zarr_paths:
        base = _base(path)
        try:
            volume = open_volume(path)
            masks = open_masks(path)
        except Exception as exc:  # noqa: BLE001 - one unreadable volume fails its row only
            rows.append(failed_row(base, exc))
            continue
        missing = [n for n in label_names if n not in masks]
        reason = (f"no mask(s) {', '.join(missing)} (has: {', '.join(masks) or 'none'})" if missing
                  else _unusable(volume))
        if reason:
            rows.append(skipped_row(base, reason))
            continue
        modalities.add(str(volume.attrs.get("modality") or ""))
        cases.append((path, volume, {n: masks[n] for n in label_names}))
    dataset = _Dataset(root)
    # no volume to export and no channel named: keep the channel of an earlier export
    channel = _channel(channels, modalities) if cases or channels else _existing_channel(dataset)
    description = {
        "channel_names": {"0": channel},
        "labels": {BACKGROUND: 0, **{n: i for i, n in enumerate(label_names, start=1)}},
        "file_ending": defaults.NNUNET_FILE_ENDING,
    }
    with output_lock(dataset.root, "export-nnunet"):
        if not overwrite:
            _check_existing(dataset, description)
        for sub in (dataset.images, dataset.labels):
            os.makedirs(sub, exist_ok=True)
            remove_temporaries(sub, [defaults.NNUNET_FILE_ENDING])
        if overwrite:
            _clear_cases(dataset, {_key(p) for p, _, _ in cases})
        with Progress(len(cases), "export-nnunet", unit="cases", enabled=progress) as bar:
            for path, volume, masks in cases:
                rows.append(_export_case(dataset, path, volume, masks, dtype, overwrite))
                bar.update()
        images, label_files = dataset.cases()
        for case in sorted(images ^ label_files):  # half a case (a run killed between its two files)
            log.warning("export-nnunet: removing %s, which has no %s", case,
                        "label" if case in images else "image")
            os.remove(dataset.image(case) if case in images else dataset.label(case))
        n_training = len(images & label_files)
        write_json(dataset.json, {**description, "numTraining": n_training, "name": folder,
                                  "description": f"exported by voxelpipe export-nnunet from {os.path.abspath(source)}",
                                  "label_order": "masks painted in label order: where they overlap, the later label "
                                                 "wins"})
        rows.sort(key=lambda r: r["series_key"])
        write_csv(dataset.summary, rows, SUMMARY_COLUMNS)
    log.info("export-nnunet: %d training case(s) in %s", n_training, dataset.root)
    return rows


def _base(path: str) -> dict:
    key = _key(path)
    return {"case": key, "series_key": key, "source": path, "reason": ""}


def _export_case(dataset: _Dataset, path: str, volume: Volume, masks: dict, dtype, overwrite: bool) -> dict:
    """Write (or keep) one case; its summary row."""
    started = time.perf_counter()
    case = _key(path)
    base = _base(path)
    image_path, label_path = dataset.image(case), dataset.label(case)
    nifti_shape = tuple(reversed(volume.shape))
    affine = nnunet_affine(volume)
    fields = {"image": image_path, "label": label_path, "shape": "x".join(map(str, volume.shape)),
              "spacing": "x".join(f"{s:g}" for s in volume.geometry.spacing)}
    try:
        if not overwrite and not _nifti_problem(label_path, nifti_shape, np.dtype(dtype), affine) \
                and not _nifti_problem(image_path, nifti_shape, volume.dtype, affine):
            return skipped_row(base, ALREADY_COMPLETE, **fields, seconds=round(time.perf_counter() - started, 3))
        geometry = geometry_from_ras_affine(affine, nifti_shape, image_path)
        painted, voxels, overlap = label_map([masks[n][...] for n in masks], dtype)
        for name, count in zip(masks, voxels):
            if not count:
                log.warning("export-nnunet: %s: label %r has no voxel%s", case, name,
                            " left after later labels painted over it" if masks[name][...].any() else "")
        # the label map first: an image without its label is half a case, removed at the end of a run
        write_nifti(Volume(to_nnunet_order(painted), geometry), label_path)
        write_nifti(Volume(to_nnunet_order(volume.numpy()), geometry, path=path), image_path)
    except Exception as exc:  # noqa: BLE001 - one failed case does not stop the export
        log.warning("export-nnunet: %s failed: %s", case, exc)
        return failed_row(base, exc, **fields, seconds=round(time.perf_counter() - started, 3))
    return done_row(base, **fields, label_voxels=";".join(f"{n}:{v}" for n, v in zip(masks, voxels)),
                    overlap_voxels=overlap, seconds=round(time.perf_counter() - started, 3))


def read_summary(dataset_root: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of ``<dataset>/export_summary.csv``."""
    return read_csv(os.path.join(os.fspath(dataset_root), defaults.NNUNET_SUMMARY))
