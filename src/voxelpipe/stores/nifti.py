"""NIfTI-1 volumes ↔ :class:`~voxelpipe.core.volume.Volume` (nibabel, an optional extra: ``voxelpipe[nifti]``).

NIfTI stores an affine from voxel index (i, j, k) to RAS millimetres; voxelpipe's Geometry maps the array index to
LPS millimetres. The array is kept exactly as nibabel gives it — NIfTI axes i, j, k become array axes 0, 1, 2 —
and only the affine is converted: ``affine_lps = diag(-1, -1, 1, 1) @ affine_ras``. So ``direction`` column ``a``
is the LPS unit vector of NIfTI axis ``a`` and ``spacing[a]`` its step in mm, which is what SimpleITK reports for
the same file (SimpleITK's numpy view is the reverse, (k, j, i)). A 4-D NIfTI (i, j, k, t) becomes a Volume with
the frame axis first, (t, i, j, k), as voxelpipe's 4-D volumes are.
"""
from __future__ import annotations

import gzip
import io
import os

import numpy as np

from voxelpipe.core.errors import InputError
from voxelpipe.core.geometry import LPS_TO_RAS, Geometry
from voxelpipe.core.volume import Volume
from voxelpipe.stores.tables import atomic_path

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
    image.header.set_xyzt_units("mm", "sec")
    image.set_sform(affine_ras, code="scanner")
    columns = affine_ras[:3, :3] / np.linalg.norm(affine_ras[:3, :3], axis=0)
    if np.allclose(columns.T @ columns, np.eye(3), atol=1e-5):
        image.set_qform(affine_ras, code="scanner")
    else:  # a sheared (gantry-tilt) affine: qform cannot hold it, so only the sform carries the geometry
        image.set_qform(None, code="unknown")
    image.header["descrip"] = b"voxelpipe"
    return image


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
    raw = to_nifti_image(volume).to_bytes()
    if not compress:
        return raw
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6, mtime=0) as gz:
        gz.write(raw)
    return buffer.getvalue()
