"""Resample a volume onto a new grid (``resample``) or onto another volume's grid (``resample_to``).

Arrays are ``(slice, row, column)`` = axes 0, 1, 2; geometry is LPS millimetres.

Grid convention of :func:`resample` -- the field of view, i.e. the outer voxel *edges*, is preserved:

* ``spacing`` given (mm, axes 0, 1, 2): the new spacing is exactly that, and
  ``new_shape = round(shape * spacing_in / spacing)`` (rounded half up, at least 1);
* ``shape`` given: ``new_spacing = shape_in * spacing_in / shape``;
* the centre of new voxel ``[0, 0, 0]`` is ``origin - ½·spacing_in·dir + ½·new_spacing·dir`` per axis, along
  that axis' direction column (for a sheared, gantry-tilted affine: along that axis' affine column, so the
  output affine is the input affine composed with the per-axis scale and offset);
* the direction is unchanged; ``slice_positions`` of the output follow from the new grid;
* a sheared input marked ``sheared: true`` (gantry tilt kept by ``convert --tilt keep``) is first given its
  straightened, orthonormal grid (:func:`voxelpipe.ops.regrid.straightened_geometry`: same planes, rows and
  columns extended to hold every slice), and that grid is resampled by the rules above; the samples are taken
  through the general affine path, so the output is orthonormal and its spacing is what it says (a sheared
  geometry without the mark keeps the composition rule above).

:func:`resampled_geometry` gives that output geometry from the input geometry alone (no array).

In index terms, output index ``o`` along axis ``a`` reads input index ``scale[a] * o + offset[a]`` with
``scale = new_spacing / spacing_in`` and ``offset = (scale - 1) / 2``.

:func:`resample_to` samples the volume on a reference grid (a :class:`Volume` or :class:`Geometry`) of any
relative orientation and offset; :func:`index_matrix` gives the 4×4 output-index -> input-index matrix
``inv(A_in) @ A_out`` it uses (``scipy.ndimage.affine_transform``'s convention).

Edges: as ``scipy.ndimage`` with ``mode="constant", cval=fill``, a sample is inside when its input index lies
between the first and the last voxel *centre* on every axis; everything else gets ``fill``. So when a grid is
refined, output centres in the outer half input voxel (between the last input centre and the field-of-view
edge) get ``fill`` (SimpleITK instead extends the edge voxel there).

Orders: ``"linear"`` (trilinear; float32 output), ``"nearest"`` (ties round up; input dtype), ``"label"`` (for
masks and label maps; input dtype): every non-zero label is interpolated linearly as a 0/1 mask, and the label
with the largest weight wins if that weight is >= 0.5, else 0 -- a thin structure survives downsampling where
nearest can drop it; for a 0/1 mask this is "linear, then >= 0.5".

Input dtypes: float32, int16, uint8 (bool is resampled as uint8 and returned as bool for nearest/label);
other dtypes raise :class:`InputError` -- convert them first.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from voxelpipe.core.errors import InputError
from voxelpipe.core.geometry import Geometry
from voxelpipe.core.volume import Volume
from voxelpipe.kernels.resample import (
    ORDER_LABEL,
    ORDER_LINEAR,
    ORDER_NEAREST,
    resample_affine,
    resample_separable,
)
from voxelpipe.ops.regrid import is_sheared, straightened_geometry
from voxelpipe.ops.threads import run_ranges

__all__ = ["resample", "resample_to", "resampled_geometry", "index_matrix", "is_separable", "ORDERS"]

ORDERS = {"linear": ORDER_LINEAR, "nearest": ORDER_NEAREST, "label": ORDER_LABEL}
INPUT_DTYPES = (np.dtype(np.float32), np.dtype(np.int16), np.dtype(np.uint8))
SNAP_TOLERANCE = 1e-9  # matrix entries this close to a multiple of 0.5 are snapped to it (float noise)
MAX_CONDITION = 1e8  # a 3×3 affine part worse conditioned than this is treated as singular

Spacing = float | Sequence[float] | np.ndarray


# ----------------------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------------------
def _check_affine(what: str, geometry: Geometry) -> np.ndarray:
    if not geometry.uniform:
        raise InputError(f"{what} slices are unevenly spaced (uniform: false; only slice_positions places them): "
                         "no affine to resample through; convert the series with --uneven resample")
    affine = np.asarray(geometry.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputError(f"{what} affine must be a finite 4×4 matrix, got {affine.tolist()!r}")
    part = affine[:3, :3]
    cond = np.linalg.cond(part)
    if not np.isfinite(cond) or cond > MAX_CONDITION:
        raise InputError(f"{what} affine is not invertible (condition number {cond:.3g}): {affine.tolist()!r}")
    return affine


def _check_shape(what: str, shape: object) -> tuple[int, int, int]:
    try:
        values = [v for v in shape]  # type: ignore[union-attr]
    except TypeError as exc:
        raise InputError(f"{what} must be 3 positive integers (axes 0, 1, 2), got {shape!r}") from exc
    ok = len(values) == 3 and all(
        not isinstance(v, (bool, np.bool_)) and isinstance(v, (int, np.integer, float, np.floating))
        and float(v) == int(v) and int(v) >= 1 for v in values)
    if not ok:
        raise InputError(f"{what} must be 3 positive integers (axes 0, 1, 2), got {shape!r}")
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def _check_spacing(spacing: Spacing) -> np.ndarray:
    try:
        arr = np.asarray(spacing, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"spacing must be a number or 3 numbers in mm (axes 0, 1, 2), got {spacing!r}") from exc
    if arr.ndim == 0:
        arr = np.full(3, float(arr))
    if arr.shape != (3,):
        raise InputError(f"spacing must be a number or 3 numbers in mm (axes 0, 1, 2), got {spacing!r}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise InputError(f"spacing must be finite and > 0 mm, got {arr.tolist()!r}")
    return arr


def _check_order(order: str) -> int:
    if not isinstance(order, str) or order not in ORDERS:
        raise InputError(f"order must be one of {', '.join(map(repr, ORDERS))}, got {order!r}")
    return ORDERS[order]


def _source(volume: Volume) -> tuple[np.ndarray, Geometry, bool]:
    """The array as a C-contiguous kernel input, its geometry, and whether it was bool."""
    if not isinstance(volume, Volume):
        raise InputError(f"volume must be a voxelpipe Volume, got {type(volume).__name__}")
    geometry = volume.geometry
    if not isinstance(geometry, Geometry):
        raise InputError(f"volume.geometry must be a Geometry, got {type(geometry).__name__}")
    shape = tuple(volume.array.shape)
    if len(shape) != 3:
        raise InputError(
            f"volume must be 3-D (slice, row, column), got shape {shape}; resample each frame of a 4-D volume")
    if tuple(geometry.shape) != shape:
        raise InputError(f"volume shape {shape} does not match its geometry shape {tuple(geometry.shape)}")
    if 0 in shape:
        raise InputError(f"volume is empty: shape {shape}")
    dtype = np.dtype(volume.array.dtype)
    is_bool = dtype == np.bool_
    if not is_bool and dtype not in INPUT_DTYPES:
        raise InputError(
            f"volume dtype must be float32, int16, uint8 or bool, got {dtype}; convert it first, e.g. "
            f"array.astype(np.float32) for images or array.astype(np.uint8) for masks")
    array = np.ascontiguousarray(volume.numpy())  # reads a lazy (zarr, h5py) array whole
    if is_bool:
        array = array.view(np.uint8)
    return array, geometry, is_bool


def _fill_value(fill: float, dtype: np.dtype) -> float:
    try:
        value = float(fill)
    except (TypeError, ValueError) as exc:
        raise InputError(f"fill must be a number, got {fill!r}") from exc
    if dtype.kind in "iub":
        info = np.iinfo(np.uint8 if dtype.kind == "b" else dtype)
        top = 1 if dtype.kind == "b" else info.max
        if not (np.isfinite(value) and value == int(value) and info.min <= value <= top):
            raise InputError(f"fill must be an integer in [{info.min}, {top}] for {dtype} output, got {fill!r}")
    return value


def _snap(matrix: np.ndarray) -> np.ndarray:
    """Entries within SNAP_TOLERANCE of a multiple of 0.5 become that multiple (float noise of inv @ A), so an
    integer shift stays exact and axis-aligned grids keep an exactly diagonal 3×3 part."""
    out = np.array(matrix, dtype=np.float64)
    near = np.round(out * 2.0) / 2.0
    close = np.abs(out - near) <= SNAP_TOLERANCE
    out[close] = near[close]
    out[3] = (0.0, 0.0, 0.0, 1.0)
    return out


# ----------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------
def index_matrix(in_geometry: Geometry, out_geometry: Geometry) -> np.ndarray:
    """4×4 float64 matrix taking an output index ``(k, j, i, 1)`` (axes 0, 1, 2 of ``out_geometry``) to the
    continuous input index of the same LPS point in ``in_geometry``: ``inv(A_in) @ A_out``. Entries within 1e-9
    of a multiple of 0.5 are snapped to it."""
    for what, g in (("in_geometry", in_geometry), ("out_geometry", out_geometry)):
        if not isinstance(g, Geometry):
            raise InputError(f"{what} must be a Geometry, got {type(g).__name__}")
    a_in = _check_affine("input", in_geometry)
    a_out = _check_affine("output", out_geometry)
    return _snap(np.linalg.solve(a_in, a_out))


def is_separable(matrix: np.ndarray) -> bool:
    """Whether an index matrix has a diagonal 3×3 part (axis-aligned scale, flip and shift): the separable
    kernel's case (orders nearest and linear)."""
    part = np.asarray(matrix)[:3, :3]
    return np.count_nonzero(part - np.diag(np.diag(part))) == 0


def _run(array: np.ndarray, matrix: np.ndarray, out_shape: tuple[int, int, int], code: int,
         fill: float) -> np.ndarray:
    """Allocate the output and call the separable kernel (diagonal 3×3 part, nearest/linear) or the general one."""
    out_dtype = np.dtype(np.float32) if code == ORDER_LINEAR else array.dtype
    out = np.empty(out_shape, dtype=out_dtype)
    if code != ORDER_LABEL and is_separable(matrix):
        scale = np.ascontiguousarray(np.diag(matrix[:3, :3]))
        offset = np.ascontiguousarray(matrix[:3, 3])
        run_ranges(lambda start, stop: resample_separable(array, scale, offset, out, code, fill, start, stop),
                   out_shape[0])
    else:
        matrix = np.ascontiguousarray(matrix)
        run_ranges(lambda start, stop: resample_affine(array, matrix, out, code, fill, start, stop), out_shape[0],
                   runs_per_thread=4)
    return out


def _result(volume: Volume, out: np.ndarray, geometry: Geometry, is_bool: bool, code: int, order: str,
            fill: float, matrix: np.ndarray) -> Volume:
    if is_bool and code != ORDER_LINEAR:
        out = out.view(np.bool_)
    attrs = dict(volume.attrs)
    attrs.update(geometry.to_attrs())
    if not geometry.sheared:  # the source's gantry-tilt marks do not describe the new grid
        attrs.pop("sheared", None)
        attrs.pop("slice_normal", None)
    attrs["resample"] = {  # provenance: the source grid and how it was sampled
        "source_shape": list(volume.geometry.shape), "source_spacing": volume.geometry.spacing.tolist(),
        "source_affine": volume.geometry.affine.tolist(), "source_path": volume.path, "order": order,
        "fill": fill, "index_matrix": matrix.tolist(),
    }
    return Volume(out, geometry, attrs, "")


def _slice_positions(affine: np.ndarray, direction: np.ndarray, n: int) -> np.ndarray:
    """Position of every slice along the slice normal (direction column 0), from the affine."""
    normal = direction[:, 0]
    return float(affine[:3, 3] @ normal) + np.arange(n) * float(affine[:3, 0] @ normal)


def _resample_plan(geometry: Geometry, spacing: Spacing | None, shape: Sequence[int] | None,
                   straighten: bool = False) -> tuple[np.ndarray, Geometry]:
    """The output-index -> input-index matrix of :func:`resample` and the output geometry (module docstring's
    grid convention), from the input geometry alone."""
    if (spacing is None) == (shape is None):
        raise InputError("give exactly one of spacing (mm) or shape (voxels)")
    a_in = _check_affine("volume", geometry)
    if straighten and is_sheared(geometry):  # gantry tilt kept sheared: the output is the straightened grid, resampled
        out_geometry = _resample_plan(straightened_geometry(geometry), spacing, shape)[1]
        return index_matrix(geometry, out_geometry), out_geometry
    in_shape = np.asarray(geometry.shape, dtype=np.float64)
    in_spacing = np.asarray(geometry.spacing, dtype=np.float64)
    if in_spacing.shape != (3,) or not np.all(np.isfinite(in_spacing)) or np.any(in_spacing <= 0):
        raise InputError(f"volume spacing must be 3 finite numbers > 0 mm, got {in_spacing.tolist()!r}")
    if spacing is not None:
        new_spacing = _check_spacing(spacing)
        extent = in_shape * in_spacing / new_spacing
        new_shape = tuple(max(1, int(np.floor(v + 0.5))) for v in extent)
        scale = new_spacing / in_spacing
    else:
        new_shape = _check_shape("shape", shape)
        new_spacing = in_shape * in_spacing / np.asarray(new_shape, dtype=np.float64)
        scale = in_shape / np.asarray(new_shape, dtype=np.float64)

    matrix = np.eye(4)
    matrix[:3, :3] = np.diag(scale)
    matrix[:3, 3] = 0.5 * scale - 0.5
    matrix = _snap(matrix)
    a_out = a_in @ matrix
    direction = np.asarray(geometry.direction, dtype=np.float64)
    out_geometry = Geometry(new_shape, new_spacing, a_out[:3, 3], direction,
                            _slice_positions(a_out, direction, new_shape[0]), a_out)
    return matrix, out_geometry


def resampled_geometry(geometry: Geometry, spacing: Spacing | None = None,
                       shape: Sequence[int] | None = None) -> Geometry:
    """The geometry :func:`resample` gives a volume on ``geometry`` for the same ``spacing`` / ``shape``
    (exactly one of them), computed without any array: same field of view (voxel edges), direction unchanged."""
    if not isinstance(geometry, Geometry):
        raise InputError(f"geometry must be a Geometry, got {type(geometry).__name__}")
    if len(geometry.shape) != 3 or 0 in geometry.shape:
        raise InputError(f"geometry must be 3-D and non-empty, got shape {tuple(geometry.shape)}")
    return _resample_plan(geometry, spacing, shape, geometry.sheared)[1]


def resample(volume: Volume, spacing: Spacing | None = None, shape: Sequence[int] | None = None,
             order: str = "linear", fill: float = 0.0) -> Volume:
    """``volume`` on a new grid covering the same field of view (voxel edges); give exactly one of
    ``spacing`` (mm, one number or 3 for axes 0, 1, 2; kept exactly) or ``shape`` (3 voxel counts).

    ``order``: ``"linear"`` (float32 output), ``"nearest"`` or ``"label"`` (input dtype). ``fill``: value of
    output voxels whose centre lies outside the input's voxel centres (see the module docstring).
    Returns a new in-memory :class:`Volume` with the resampled geometry (direction unchanged; the same as
    :func:`resampled_geometry`).
    """
    if (spacing is None) == (shape is None):
        raise InputError("give exactly one of spacing (mm) or shape (voxels)")
    code = _check_order(order)
    array, geometry, is_bool = _source(volume)
    straighten = geometry.sheared or volume.attrs.get("sheared") is True
    matrix, out_geometry = _resample_plan(geometry, spacing, shape, straighten)
    fill = _fill_value(fill, np.dtype(np.float32) if code == ORDER_LINEAR else volume.dtype)
    out = _run(array, matrix, out_geometry.shape, code, fill)
    return _result(volume, out, out_geometry, is_bool, code, order, fill, matrix)


def resample_to(volume: Volume, reference: Volume | Geometry, order: str = "linear",
                fill: float = 0.0) -> Volume:
    """``volume`` sampled on the grid of ``reference`` (a Volume or a Geometry): any relative orientation and
    offset, through ``index_matrix(volume.geometry, reference_geometry)``.

    ``order``: ``"linear"`` (float32 output), ``"nearest"`` or ``"label"`` (input dtype); ``fill`` outside.
    The output has the reference's shape and geometry.
    """
    code = _check_order(order)
    if isinstance(reference, Volume):
        ref = reference.geometry
    elif isinstance(reference, Geometry):
        ref = reference
    else:
        raise InputError(f"reference must be a Volume or a Geometry, got {type(reference).__name__}")
    if not isinstance(ref, Geometry):
        raise InputError(f"reference geometry must be a Geometry, got {type(ref).__name__}")
    out_shape = _check_shape("reference shape", ref.shape)
    array, geometry, is_bool = _source(volume)
    matrix = index_matrix(geometry, ref)
    fill = _fill_value(fill, np.dtype(np.float32) if code == ORDER_LINEAR else volume.dtype)
    out_geometry = Geometry(out_shape, np.array(ref.spacing, dtype=np.float64),
                            np.array(ref.origin, dtype=np.float64), np.array(ref.direction, dtype=np.float64),
                            np.array(ref.slice_positions, dtype=np.float64), np.array(ref.affine, dtype=np.float64))
    out = _run(array, matrix, out_shape, code, fill)
    return _result(volume, out, out_geometry, is_bool, code, order, fill, matrix)
