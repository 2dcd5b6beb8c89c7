"""Batches of the 2-D image/mask pairs written by the contours command (``<patient_key>/<NNNN>.npz``).

Each npz file is one sample: an ``image`` array (rows, cols), ``mask_<kind>`` arrays of the same shape and a
``meta_json`` string.
"""
from __future__ import annotations

import glob
import json
import os
import zipfile
from collections.abc import Iterable, Sequence

import numpy as np

from voxelpipe.core.errors import InputError
from voxelpipe.reader.base import BatchReader, common_shape, shape_groups
from voxelpipe.stores.remote import is_url, isdir, isfile, join, listdir, local_path, open_binary, read_text

MASK_PREFIX = "mask_"
FILELIST = "filelist.txt"


def pair_files(source: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """The npz files of ``source``.

    Args:
        source: A folder (its ``filelist.txt`` when present, else every ``**/*.npz``), one ``.npz`` file, or a
            list of files and folders. Each may be a URL (see :mod:`voxelpipe.stores.remote`); a folder URL
            without ``filelist.txt`` must be listable.

    Returns:
        The file paths, in listing order (sorted when found by search).

    Raises:
        InputError: A path does not exist, or the file list names missing files.
    """
    if isinstance(source, (str, os.PathLike)):
        source = local_path(source)
        if is_url(source):
            return _url_pair_files(source.rstrip("/"))
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


def _url_pair_files(url: str) -> list[str]:
    """:func:`pair_files` of a URL."""
    if url.endswith(".npz"):
        if not isfile(url):
            raise InputError(f"{url}: no such file or folder")
        return [url]
    if not isdir(url):
        raise InputError(f"{url}: no such file or folder")
    listing = join(url, FILELIST)
    if isfile(listing):
        names = [line.strip() for line in read_text(listing).splitlines() if line.strip()]
        files = [join(url, name) for name in names if name.endswith(".npz")]
        missing = [f for f in files if not isfile(f)]
        if missing:
            raise InputError(f"{listing}: lists {len(missing)} missing file(s), e.g. {missing[0]}")
        return files
    return sorted(_url_npz_walk(url))


def _url_npz_walk(url: str) -> list[str]:
    found = []
    for name, folder in listdir(url):
        if folder:
            found.extend(_url_npz_walk(join(url, name)))
        elif name.endswith(".npz"):
            found.append(join(url, name))
    return found


def npz_source(path: str):
    """What ``zipfile`` / ``numpy.load`` read for the npz file at ``path``: the path itself, or the bytes of a
    URL's file (an npz sample is read whole)."""
    return open_binary(path, whole=True) if is_url(path) else path


def npz_arrays(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The arrays of an npz file, from their npy headers only (no data read).

    Args:
        path: The npz file.

    Returns:
        Array name -> (shape, dtype).

    Raises:
        InputError: The file is not a readable npz archive.
    """
    arrays = {}
    try:
        with zipfile.ZipFile(npz_source(path)) as archive:
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
    """Batches of the 2-D image/mask pairs written by the contours command; one sample per file.

    Batches hold ``image`` (N, rows, cols), ``mask`` (N, K, rows, cols) uint8 and the other keys of
    :class:`~voxelpipe.reader.base.BatchReader`, plus ``meta``: the parsed ``meta_json`` of each sample.

    Args:
        source: A folder, a file or a list (see :func:`pair_files`).
        masks: The contour kinds to return (``"i"`` for ``mask_i``), in this order; None takes every kind
            found in any file, sorted.
        **options: Passed to :class:`~voxelpipe.reader.base.BatchReader` (batch_size, shuffle, seed ...).

    Raises:
        InputError: A file without a 2-D ``image``, or images of different (rows, cols) without
            ``group_by_shape=True``: one batch is one array.
    """

    def __init__(self, source, masks: Sequence[str] | None = None, **options):
        super().__init__(**options)
        self.files = pair_files(source)
        headers = [npz_arrays(f) for f in self.files]
        for path, arrays in zip(self.files, headers):
            if "image" not in arrays or len(arrays["image"][0]) != 2:
                raise InputError(f"{path}: no 2-D 'image' array")
        kinds = sorted({name[len(MASK_PREFIX):] for arrays in headers for name in arrays
                        if name.startswith(MASK_PREFIX)})
        self.mask_names = list(kinds if masks is None else masks)
        self.shapes = [tuple(a["image"][0]) for a in headers]
        self.shape = None if self.group_by_shape else common_shape(list(zip(self.files, self.shapes)))
        self._groups_of_samples = shape_groups(self.shapes) if self.group_by_shape else \
            np.zeros(len(self.files), np.int64)
        self.image_dtype = np.result_type(*[a["image"][1] for a in headers]) if headers else np.dtype(np.int16)
        self.samples_per_epoch = len(self.files)
        self._check_batches()

    def _sample(self, number: int) -> tuple[int, int]:
        return number, number

    def sample_shapes(self) -> np.ndarray:
        return self._groups_of_samples

    def _load(self, epoch: int, samples: list[tuple[int, int]]) -> dict:
        shape = self.shape or self.shapes[samples[0][0]]  # group_by_shape: one shape per batch
        out = self._empty(len(samples), shape, self.image_dtype)
        out["meta"] = []
        for i, (number, _) in enumerate(samples):
            path = self.files[number]
            with np.load(npz_source(path)) as data:
                out["image"][i] = data["image"]
                for k, kind in enumerate(self.mask_names):
                    key = MASK_PREFIX + kind
                    if key in data.files:
                        mask = data[key]
                        if mask.shape != shape:
                            raise InputError(f"{path}: {key} has shape {mask.shape}, the image {shape}")
                        out["mask"][i, k] = mask
                        out["present"][i, k] = True
                out["meta"].append(json.loads(str(data["meta_json"])) if "meta_json" in data.files else {})
            out["source"].append(path)
            out["index"][i] = number
        return out


__all__ = ["FILELIST", "MASK_PREFIX", "PairReader", "npz_arrays", "npz_source", "pair_files"]
