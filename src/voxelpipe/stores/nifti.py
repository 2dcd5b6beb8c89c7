"""NIfTI-1 volumes ↔ :class:`~voxelpipe.core.volume.Volume` (nibabel, an optional extra: ``voxelpipe[nifti]``).

NIfTI stores an affine from voxel index (i, j, k) to RAS millimetres; voxelpipe's Geometry maps the array index to
LPS millimetres. The array is kept exactly as nibabel gives it — NIfTI axes i, j, k become array axes 0, 1, 2 —
and only the affine is converted: ``affine_lps = diag(-1, -1, 1, 1) @ affine_ras``. So ``direction`` column ``a``
is the LPS unit vector of NIfTI axis ``a`` and ``spacing[a]`` its step in mm, which is what SimpleITK reports for
the same file (SimpleITK's numpy view is the reverse, (k, j, i)). A 4-D NIfTI (i, j, k, t) becomes a Volume with
the frame axis first, (t, i, j, k), as voxelpipe's 4-D volumes are.

Converted volumes (``convert --format nifti``) use dcm2niix's voxel order instead: NIfTI i = DICOM column,
j = DICOM row reversed (the first stored row is the top of the image, NIfTI j runs bottom-up), k = slice in
voxelpipe's order (ascending along the slice normal), t = frame. The bytes on disk are then the (slice, row,
column) array with its rows reversed, so no transpose is needed. :func:`dicom_affine_ras` gives that file's
affine, :func:`read_nifti_volume` undoes the layout for any NIfTI file (``open_volume``), and
:func:`write_nifti_masks` writes masks beside such a volume with its header geometry. Every header is built by
:func:`set_nifti_geometry`.
"""
from __future__ import annotations

import gzip
import io
import json
import os

import numpy as np

from voxelpipe.core.errors import InputError
from voxelpipe.core.geometry import LPS_TO_RAS, Geometry
from voxelpipe.core.masks import Mask
from voxelpipe.core.volume import Volume, json_default
from voxelpipe.stores.in_memory import InMemoryVolume
from voxelpipe.stores.registry import NIFTI_SUFFIXES
from voxelpipe.stores.tables import atomic_path, write_json
from voxelpipe.stores.zarr_store import PARTIAL, remove

INSTALL_HINT = "install voxelpipe[nifti] (pip install 'voxelpipe[nifti]', which brings nibabel)"
_GZIP_MAGIC = b"\x1f\x8b"
_UNIT_TO_MM = {"mm": 1.0, "meter": 1000.0, "micron": 0.001, "unknown": 1.0}
# dtypes NIfTI-1 can hold; anything else is converted to the first fitting one
_NIFTI_DTYPES = {np.dtype(t) for t in ("uint8", "int8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                                       "float32", "float64")}


def require_nibabel(what: str):
    """The ``nibabel`` module (an optional extra, imported on first use).

    Args:
        what: the task that needs it, for the message.

    Raises:
        InputError: nibabel is not installed; the message says how to install it.
    """
    try:  # optional extra (voxelpipe[nifti]): imported only when NIfTI is read or written
        import nibabel
    except ImportError:
        raise InputError(f"{what} needs nibabel: {INSTALL_HINT}") from None
    return nibabel


def read_nifti(path_or_bytes: str | os.PathLike | bytes | bytearray | memoryview, name: str = "") -> Volume:
    """Read a ``.nii`` / ``.nii.gz`` file, or its bytes (gzipped or not, e.g. a member of a zip), into memory.

    ``name`` labels bytes input in messages and ``Volume.path``. The array keeps nibabel's (i, j, k) order and
    dtype (scaled to float only when the header has a scale slope/intercept); the geometry is in LPS mm.
    """
    nib = require_nibabel("reading NIfTI")
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data = bytes(path_or_bytes)
        label = name or "<bytes>"
        try:
            if data[:2] == _GZIP_MAGIC:
                data = gzip.decompress(data)
            image = nib.Nifti1Image.from_bytes(data)
        except Exception as exc:  # nibabel raises several types for bad input
            raise InputError(f"{label}: not a readable NIfTI-1 image ({type(exc).__name__}: {exc})") from None
    else:
        label = os.fspath(path_or_bytes)
        if not os.path.exists(label):
            raise InputError(f"{label}: no such NIfTI file")
        try:
            image = nib.load(label)
        except Exception as exc:
            raise InputError(f"{label}: not a readable NIfTI image ({type(exc).__name__}: {exc})") from None
        if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
            raise InputError(f"{label}: not a NIfTI image ({type(image).__name__})")
    array = np.asarray(image.dataobj)
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim < 3:
        array = array.reshape(array.shape + (1,) * (3 - array.ndim))
    if array.ndim == 4:
        array = np.moveaxis(array, 3, 0)  # (i, j, k, t) -> (t, i, j, k)
    elif array.ndim > 4:
        raise InputError(f"{label}: NIfTI image with {array.ndim} dimensions {array.shape}; only 3-D or 4-D")
    header = image.header
    spatial_unit = header.get_xyzt_units()[0]
    scale = _UNIT_TO_MM.get(spatial_unit, 1.0)
    affine_ras = np.asarray(image.affine, dtype=np.float64).copy()
    affine_ras[:3, :] *= scale
    geometry = geometry_from_ras_affine(affine_ras, array.shape[-3:], label)
    attrs = {
        "source": "nifti", "nifti_path": label, "nifti_spatial_unit": spatial_unit,
        "nifti_qform_code": int(header["qform_code"]), "nifti_sform_code": int(header["sform_code"]),
        "nifti_descrip": header["descrip"].tobytes().rstrip(b"\0").decode("latin-1"),
    }
    return Volume(array, geometry, attrs, label)


def geometry_from_ras_affine(affine_ras: np.ndarray, shape, label: str = "") -> Geometry:
    """Geometry (LPS) of a NIfTI grid: ``affine_ras`` maps (i, j, k) → RAS mm; array axis a = NIfTI axis a."""
    affine = LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)  # diag(-1,-1,1,1) is its own inverse
    columns = affine[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(affine)):
        raise InputError(f"{label}: NIfTI affine has a zero or non-finite axis: {affine_ras.tolist()}")
    direction = columns / spacing
    return Geometry(shape, spacing, affine[:3, 3], direction, affine=affine)


def to_nifti_image(volume: Volume):
    """The nibabel ``Nifti1Image`` of a volume (affine = the geometry's RAS affine, units mm)."""
    nib = require_nibabel("writing NIfTI")
    array = np.asarray(volume.numpy())
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype not in _NIFTI_DTYPES:
        if np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float32 if array.dtype.itemsize <= 4 else np.float64)
        else:
            raise InputError(f"{volume.path or 'volume'}: dtype {array.dtype} cannot be stored as NIfTI")
    if array.ndim == 4:
        array = np.moveaxis(array, 0, 3)  # (t, i, j, k) -> (i, j, k, t)
    elif array.ndim != 3:
        raise InputError(f"{volume.path or 'volume'}: NIfTI needs a 3-D or 4-D array, got shape {array.shape}")
    affine_ras = volume.geometry.affine_ras
    image = nib.Nifti1Image(np.ascontiguousarray(array), affine_ras)
    image.set_data_dtype(array.dtype)
    set_nifti_geometry(image, affine_ras)
    return image


def set_nifti_geometry(image, affine_ras: np.ndarray, descrip: str = "voxelpipe",
                       repetition_time: float | None = None) -> None:
    """Fill the geometry fields of a nibabel ``Nifti1Image`` header: sform and qform (both code 1, "scanner",
    as dcm2niix writes them) from ``affine_ras`` (index → RAS mm), units mm and seconds, ``descrip``, and
    ``pixdim[4]`` = the repetition time in seconds when known (dcm2niix does the same, 3-D images too).

    A sheared affine (gantry tilt kept) cannot be a qform: the qform is then left unset (code 0) and only the
    sform carries the geometry; SimpleITK refuses such a file (it needs orthonormal direction cosines).
    """
    header = image.header
    header.set_xyzt_units("mm", "sec")
    image.set_sform(affine_ras, code="scanner")
    columns = affine_ras[:3, :3] / np.linalg.norm(affine_ras[:3, :3], axis=0)
    if np.allclose(columns.T @ columns, np.eye(3), atol=1e-5):
        image.set_qform(affine_ras, code="scanner")
    else:  # a sheared (gantry-tilt) affine: qform cannot hold it, so only the sform carries the geometry
        image.set_qform(None, code="unknown")
    header["descrip"] = descrip.encode("latin-1", "replace")[:79]
    if repetition_time:
        header["pixdim"][4] = float(repetition_time)


# ----------------------------------------------------------------------------------------------------------
# converted volumes in dcm2niix's voxel order
# ----------------------------------------------------------------------------------------------------------
def nifti_to_dicom_index(rows: int) -> np.ndarray:
    """4×4 map from a NIfTI index (i, j, k) of a converted volume to voxelpipe's (slice, row, column):
    slice = k, row = rows − 1 − j, column = i."""
    m = np.zeros((4, 4))
    m[0, 2] = 1.0
    m[1, 1] = -1.0
    m[1, 3] = rows - 1
    m[2, 0] = 1.0
    m[3, 3] = 1.0
    return m


def dicom_affine_ras(geometry: Geometry) -> np.ndarray:
    """The RAS affine of a volume written in dcm2niix's voxel order (i = column, j = row reversed, k = slice)."""
    return geometry.affine_ras @ nifti_to_dicom_index(geometry.shape[1])


def to_nifti_order(array: np.ndarray) -> np.ndarray:
    """A view of a (slice, row, column) or (frame, slice, row, column) array as NIfTI (i, j, k[, t])."""
    return np.flip(array, axis=-2).T


def from_nifti_order(data: np.ndarray) -> np.ndarray:
    """A view of NIfTI (i, j, k[, t]) data as (slice, row, column) or (frame, slice, row, column)."""
    return np.flip(data.T, axis=-2)


def read_nifti_volume(path: str | os.PathLike) -> Volume:
    """A ``.nii`` / ``.nii.gz`` file as a voxelpipe volume in (slice, row, column) order.

    NIfTI (i, j, k[, t]) becomes (t,) k, j reversed, i, the inverse of dcm2niix's layout, so a file written
    by ``convert --format nifti`` (or by dcm2niix) gives back the DICOM slice/row/column array. For any other
    NIfTI the geometry still describes the array exactly. The data are read into memory (gzip cannot be
    read lazily by slab). ``attrs`` are those of ``meta/<key>.series.json`` when the file sits in a convert
    output's ``data/`` folder, with the geometry taken from the NIfTI header.

    Raises:
        InputError: no such file, not NIfTI, or more than 4 dimensions.
    """
    nib = require_nibabel("reading NIfTI")
    label = os.fspath(path)
    if not os.path.exists(label):
        raise InputError(f"{label}: no such NIfTI file")
    try:
        image = nib.load(label)
        data = np.asanyarray(image.dataobj)
    except Exception as exc:  # nibabel raises several types for bad input
        raise InputError(f"{label}: not a readable NIfTI image ({type(exc).__name__}: {exc})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim < 3:
        data = data.reshape(data.shape + (1,) * (3 - data.ndim))
    if data.ndim > 4:
        raise InputError(f"{label}: NIfTI image with {data.ndim} dimensions {data.shape}; only 3-D or 4-D")
    array = np.ascontiguousarray(from_nifti_order(data))
    scale = _UNIT_TO_MM.get(image.header.get_xyzt_units()[0], 1.0)
    affine_ras = np.asarray(image.affine, dtype=np.float64).copy()
    affine_ras[:3, :] *= scale
    shape = array.shape[-3:]
    affine_ras = affine_ras @ np.linalg.inv(nifti_to_dicom_index(shape[1]))
    geometry = geometry_from_ras_affine(affine_ras, shape, label)
    attrs = _series_attrs(label)
    attrs.update(geometry.to_attrs())
    attrs["dtype"] = str(array.dtype)
    return Volume(array, geometry, attrs, label)


def nifti_stem(path: str | os.PathLike) -> str:
    """``path`` without its ``.nii`` / ``.nii.gz`` suffix."""
    text = os.fspath(path)
    for suffix in NIFTI_SUFFIXES:
        if text.endswith(suffix):
            return text[: -len(suffix)]
    raise InputError(f"{text}: a NIfTI file name ends with {' or '.join(NIFTI_SUFFIXES)}")


def sidecar_path(path: str | os.PathLike) -> str:
    """The JSON sidecar of a NIfTI file: ``<stem>.json``."""
    return nifti_stem(path) + ".json"


def _series_attrs(path: str) -> dict:
    """The attrs of ``OUT/meta/<key>.series.json`` for ``OUT/data/<key>.nii[.gz]``, or {}."""
    folder, name = os.path.split(os.path.abspath(path))
    meta = os.path.join(os.path.dirname(folder), "meta", os.path.basename(nifti_stem(name)) + ".series.json")
    try:
        with open(meta, encoding="utf-8") as fh:
            attrs = json.load(fh)
    except (OSError, ValueError):
        return {}
    return attrs if isinstance(attrs, dict) else {}


class NiftiVolumeWriter(InMemoryVolume):
    """Collects slabs into a preallocated array and writes ``<key>.nii.gz`` (or ``.nii``) plus its JSON sidecar
    at the end (a :class:`~voxelpipe.stores.writer.VolumeWriter`).

    The file is written under a temporary name and renamed in :meth:`finish`, so a killed run never leaves a
    complete-looking file. Voxel order and header follow dcm2niix (see the module docstring); the geometry comes
    from the geometry entries of ``attrs`` (LPS mm). ``attrs["sidecar"]``, when present, is the JSON sidecar
    written beside the file (``<key>.json``); the other attrs are not stored in the NIfTI file (convert writes
    them to ``meta/<key>.series.json``).

    Args:
        path: final path, ending in ``.nii.gz`` (gzip) or ``.nii``.
        shape: array shape, (slice, row, column) or (frame, slice, row, column).
        dtype: array dtype (one NIfTI-1 holds: int8/16/32/64, uint8/16/32/64, float32/64).
        chunks: unused; accepted so every writer is opened alike.
        attrs: JSON-ready attributes with the geometry (``spacing``, ``origin``, ``direction``, ``affine``...).
        clevel: gzip level 1-9 (0 or out of range: 6, dcm2niix's default).

    Raises:
        InputError: nibabel is absent, a dtype NIfTI-1 cannot hold, or a volume without one slice step
            (``uniform: false`` or no ``affine`` in ``attrs``).
    """

    def __init__(self, path: str, shape: tuple[int, ...], dtype: np.dtype, chunks: tuple[int, ...],
                 attrs: dict, clevel: int = 0):
        self.nib = require_nibabel("--format nifti")
        if attrs.get("uniform") is False or attrs.get("affine") is None:
            raise InputError(f"{path}: NIfTI holds one slice step and this volume has none (slices kept unevenly "
                             "spaced, uniform: false): convert it with --uneven resample, or to zarr, hdf5 or npz")
        if np.dtype(dtype) not in _NIFTI_DTYPES:
            raise InputError(f"{path}: dtype {np.dtype(dtype)} cannot be stored as NIfTI-1")
        super().__init__(path, shape, dtype, attrs)
        self.stem = nifti_stem(path)
        self.clevel = clevel

    def _partial(self) -> str:
        return self.path + PARTIAL + (".nii.gz" if self.path.endswith(".gz") else ".nii")

    def finish(self) -> int:
        """Write the file under a temporary name, then the sidecar, then rename the file; returns its size."""
        nib = self.nib
        geometry = Geometry.from_attrs(self.attrs)
        sidecar = self.attrs.get("sidecar")
        affine = dicom_affine_ras(geometry)
        image = nib.Nifti1Image(to_nifti_order(self.image), affine)
        image.set_data_dtype(self.image.dtype)
        repetition_time = sidecar.get("RepetitionTime") if isinstance(sidecar, dict) else None
        set_nifti_geometry(image, affine, repetition_time=repetition_time)
        image.header["scl_slope"] = 1.0  # values are stored as they are (dcm2niix writes slope 1, intercept 0)
        image.header["scl_inter"] = 0.0
        partial = self._partial()
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        if self.path.endswith(".gz"):
            with open(partial, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0,
                                                           compresslevel=self._level()) as fh:
                image.to_stream(fh)
        else:
            image.to_filename(partial)
        if isinstance(sidecar, dict):
            write_json(sidecar_path(self.path), json.loads(json.dumps(sidecar, default=json_default)))
        os.replace(partial, self.path)
        self.image = None
        return os.path.getsize(self.path)

    def _level(self) -> int:
        return self.clevel if 1 <= self.clevel <= 9 else 6

    def abort(self) -> None:
        """Drop the collected array and any partial file."""
        self.image = None
        remove(self._partial())


def nifti_mask_path(volume_path: str | os.PathLike, name: str) -> str:
    """``<key>_<name>.nii.gz`` (``.nii`` beside a ``.nii`` volume): where mask ``name`` of a NIfTI volume goes."""
    text = os.fspath(volume_path)
    suffix = next(s for s in NIFTI_SUFFIXES if text.endswith(s)) if text.endswith(NIFTI_SUFFIXES) else ".nii.gz"
    return f"{nifti_stem(text)}_{name}{suffix}"


def write_nifti_masks(volume_path: str | os.PathLike, masks: list[Mask], replace: bool = True) -> list[str]:
    """Write each mask as ``<key>_<name>.nii.gz`` beside the NIfTI volume at ``volume_path`` (``.nii`` beside a
    ``.nii``), uint8, with the volume's own header geometry (sform, qform, voxel order); returns the paths.

    Each file is written atomically. The mask's attrs (ROI name, number, colour, source) go to a JSON sidecar
    ``<key>_<name>.json``.

    Raises:
        InputError: no such volume, a mask off the volume's grid, or a file that exists (``replace`` False).
    """
    nib = require_nibabel("writing NIfTI masks")
    path = os.fspath(volume_path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such volume")
    volume = nib.load(path)
    spatial = tuple(volume.shape[:3])
    written = []
    for mask in masks:
        target = nifti_mask_path(path, mask.name)
        data = to_nifti_order(np.asarray(mask.array))
        if tuple(data.shape) != spatial:
            raise InputError(f"{target}: mask {mask.name!r} of shape {tuple(np.shape(mask.array))} is not on the "
                             f"volume's grid (NIfTI {spatial})")
        if os.path.exists(target) and not replace:
            raise InputError(f"{target}: mask exists (replace it with replace=True)")
        header = volume.header.copy()
        image = nib.Nifti1Image(np.asarray(data, dtype=np.uint8), None, header=header)
        image.set_data_dtype(np.uint8)
        image.set_sform(volume.header.get_sform(), code=int(volume.header["sform_code"]))
        image.set_qform(volume.header.get_qform(), code=int(volume.header["qform_code"]))
        image.header["scl_slope"] = 1.0
        image.header["scl_inter"] = 0.0
        image.header["descrip"] = b"voxelpipe mask"
        with atomic_path(target) as tmp, open(tmp, "wb") as fh:
            fh.write(_compressed(image.to_bytes(), target.endswith(".gz")))
        write_json(sidecar_path(target), json.loads(json.dumps(mask.attrs, default=json_default)))
        written.append(target)
    return written


def _compressed(raw: bytes, compress: bool) -> bytes:
    if not compress:
        return raw
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6, mtime=0) as gz:
        gz.write(raw)
    return buffer.getvalue()


def write_nifti(volume: Volume, path: str | os.PathLike) -> str:
    """Write ``volume`` as NIfTI-1 (``.nii`` or gzipped ``.nii.gz``, from the suffix), atomically; returns the
    path. Array axes 0, 1, 2 become NIfTI i, j, k; the affine is the geometry's RAS affine (sform and, when it has
    no shear, qform, both code "scanner")."""
    path = os.fspath(path)
    if not path.endswith((".nii", ".nii.gz")):
        raise InputError(f"{path}: a NIfTI file name ends with .nii or .nii.gz")
    data = nifti_bytes(volume, compress=path.endswith(".gz"))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return path


def nifti_bytes(volume: Volume, compress: bool = True) -> bytes:
    """The bytes of the ``.nii`` (or ``.nii.gz`` with ``compress``) form of ``volume``; gzip with mtime 0 so the
    same volume always gives the same bytes."""
    return _compressed(to_nifti_image(volume).to_bytes(), compress)
