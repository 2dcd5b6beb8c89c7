"""Siemens MOSAIC images: all slices of one volume tiled into one 2-D image.

A file is a mosaic when its ImageType (0008,0008) holds ``MOSAIC``. The number of tiles N comes from the CSA image
header's ``NumberOfImagesInMosaic`` (see :mod:`voxelpipe.dicom.csa`), else from the private element (0019,100A) of
the ``SIEMENS MR HEADER`` block. The tiles fill a square grid of ``ceil(sqrt(N))`` tiles per side, row by row:
tile k is at grid row ``k // grid`` and grid column ``k % grid``; each tile is ``Rows / grid`` by
``Columns / grid`` pixels.

Geometry, as dcm2niix computes it: ImagePositionPatient (0020,0032) of a mosaic is the corner of the whole mosaic
seen as one big image with the tile's plane; the first tile's corner voxel is found by moving along the row and
column directions by half the difference between the mosaic and tile sizes (in mm: pixels × PixelSpacing).
Tile k lies ``k × SpacingBetweenSlices`` (0018,0088) further along the CSA ``SliceNormalVector``: when that vector
points along row cosine × column cosine the tiles are stored foot to head (F>>H, Siemens' default); when it points
against it they are stored head to foot (H>>F). Every tile becomes one slice with its own position, so the
volume follows the same rule as every other series (slices ascending along row cosine × column cosine); the
slice step is never taken from SliceThickness.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pydicom

from voxelpipe.core.errors import BadTagValueError, DicomReadError, MissingTagError
from voxelpipe.core.geometry import slice_normal
from voxelpipe.dicom.csa import CSA_IMAGE_TAG, csa_image_header
from voxelpipe.dicom.flatten import column_name
from voxelpipe.dicom.pixels import PixelFormat, decode_into

log = logging.getLogger("voxelpipe")

MOSAIC_IMAGE_TYPE = "MOSAIC"
MR_HEADER_CREATOR = "SIEMENS MR HEADER"
IMAGES_IN_MOSAIC_TAG = 0x0019100A  # NumberOfImagesInMosaic in the "SIEMENS MR HEADER" block 10
_CREATOR_COLUMN = column_name(0x00190010)
_IMAGES_COLUMN = column_name(IMAGES_IN_MOSAIC_TAG)
_SPACING_BETWEEN_COLUMN = column_name(0x00180088)
_NORMAL_TOLERANCE = 0.05  # |cos| of the CSA normal against row × column must exceed 1 - this


@dataclass(frozen=True)
class MosaicInfo:
    """How one mosaic file is tiled and how its tiles are stacked.

    Attributes:
        n_images: Number of tiles holding slices (NumberOfImagesInMosaic).
        grid: Tiles per side of the mosaic (``ceil(sqrt(n_images))``).
        tile_rows: Rows of one tile (pixels).
        tile_columns: Columns of one tile (pixels).
        mosaic_rows: Rows (0028,0010) of the whole mosaic.
        mosaic_columns: Columns (0028,0011) of the whole mosaic.
        reversed: True when tiles are stored against row cosine × column cosine (H>>F storage).
        slice_spacing: Step between tiles along the normal (mm; SpacingBetweenSlices).
        count_source: Where ``n_images`` came from.
    """

    n_images: int
    grid: int
    tile_rows: int
    tile_columns: int
    mosaic_rows: int
    mosaic_columns: int
    reversed: bool
    slice_spacing: float
    count_source: str

    def to_attrs(self) -> dict:
        """The facts convert stores in series.json (``mosaic``)."""
        return {"n_images": self.n_images, "grid": self.grid, "tile_shape": [self.tile_rows, self.tile_columns],
                "mosaic_shape": [self.mosaic_rows, self.mosaic_columns],
                "storage_order": "H>>F" if self.reversed else "F>>H", "slice_spacing_mm": self.slice_spacing,
                "count_source": self.count_source}


def is_mosaic(image_type: str) -> bool:
    """True when the ImageType (0008,0008) text (values joined by backslashes) holds ``MOSAIC``."""
    return MOSAIC_IMAGE_TYPE in image_type.upper().split("\\")


def mosaic_info(path: str, row: dict[str, str], rows: int, columns: int, iop: Sequence[float]) -> MosaicInfo:
    """Read how the mosaic file ``path`` is tiled (the CSA image header is read from the file).

    Args:
        path: The file (its CSA image header (0029,1010) is read with pydicom).
        row: Its flattened header row.
        rows: Rows (0028,0010) of the whole mosaic.
        columns: Columns (0028,0011) of the whole mosaic.
        iop: ImageOrientationPatient (0020,0037), 6 cosines.

    Raises:
        MissingTagError: Neither NumberOfImagesInMosaic source is present, or SpacingBetweenSlices is absent for
            a mosaic of several tiles.
        BadTagValueError: The count or spacing is not usable, or the tiles do not divide the image.
    """
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True,
                             specific_tags=[0x00290010, CSA_IMAGE_TAG])
        csa = csa_image_header(ds)
    except DicomReadError as exc:
        log.warning("%s; mosaic read without the CSA image header", exc)
        csa = None
    n_images, source = _count(path, row, csa)
    grid = math.ceil(math.sqrt(n_images))
    if rows % grid or columns % grid:
        raise BadTagValueError(path, "NumberOfImagesInMosaic", str(n_images),
                               f"a {grid}x{grid} grid does not divide the {rows}x{columns} image")
    normal = slice_normal(iop)
    reversed_ = False
    csa_normal = csa.get("SliceNormalVector") if csa else None
    values = csa_normal.floats() if csa_normal else ()
    if len(values) == 3 and np.linalg.norm(values) > 0:
        cosine = float(np.dot(values, normal) / np.linalg.norm(values))
        if abs(cosine) < 1 - _NORMAL_TOLERANCE:
            raise BadTagValueError(path, "CSA SliceNormalVector", "\\".join(csa_normal.items),
                                   "not parallel to row cosine x column cosine of ImageOrientationPatient")
        reversed_ = cosine < 0
    else:
        log.warning("%s: mosaic without CSA SliceNormalVector: tiles taken as stored along row x column (F>>H)",
                    path)
    spacing = _slice_spacing(path, row, n_images)
    return MosaicInfo(n_images, grid, rows // grid, columns // grid, rows, columns, reversed_, spacing, source)


def _count(path: str, row: dict[str, str], csa) -> tuple[int, str]:
    tag = csa.get("NumberOfImagesInMosaic") if csa else None
    if tag is not None and tag.items:
        text, source = tag.items[0], "CSA NumberOfImagesInMosaic"
    elif row.get(_IMAGES_COLUMN) and row.get(_CREATOR_COLUMN, "").strip() == MR_HEADER_CREATOR:
        text, source = row[_IMAGES_COLUMN], "NumberOfImagesInMosaic (0019,100A)"
    else:
        raise MissingTagError(path, ["CSA NumberOfImagesInMosaic (0029,1010)",
                                     "NumberOfImagesInMosaic (0019,100A)"])
    try:
        value = int(float(text.split("\\")[0]))
    except ValueError:
        raise BadTagValueError(path, source, text, "not an integer") from None
    if value < 1:
        raise BadTagValueError(path, source, text, "must be at least 1")
    return value, source


def _slice_spacing(path: str, row: dict[str, str], n_images: int) -> float:
    text = row.get(_SPACING_BETWEEN_COLUMN, "")
    if not text:
        if n_images == 1:
            return 0.0
        raise MissingTagError(path, ["SpacingBetweenSlices (0018,0088) (the step between mosaic tiles)"])
    try:
        value = float(text.split("\\")[0])
    except ValueError:
        raise BadTagValueError(path, "SpacingBetweenSlices (0018,0088)", text, "not a number") from None
    if value <= 0 and n_images > 1:
        raise BadTagValueError(path, "SpacingBetweenSlices (0018,0088)", text, "must be positive")
    return value


def tile_positions(info: MosaicInfo, ipp: Sequence[float], iop: Sequence[float],
                   pixel_spacing: Sequence[float]) -> list[tuple[float, float, float]]:
    """ImagePositionPatient (LPS mm) of every tile's first voxel, in tile (storage) order.

    Args:
        info: The mosaic's tiling.
        ipp: The mosaic's ImagePositionPatient (its whole-image corner).
        iop: ImageOrientationPatient, 6 cosines.
        pixel_spacing: (row spacing, column spacing) in mm, as DICOM PixelSpacing.
    """
    row_cos = np.asarray(iop[:3], dtype=np.float64)  # along a row: increasing column index
    col_cos = np.asarray(iop[3:6], dtype=np.float64)  # down a column: increasing row index
    shift = (row_cos * pixel_spacing[1] * (info.mosaic_columns - info.tile_columns) / 2
             + col_cos * pixel_spacing[0] * (info.mosaic_rows - info.tile_rows) / 2)
    first = np.asarray(ipp, dtype=np.float64) + shift
    step = slice_normal(iop) * info.slice_spacing * (-1.0 if info.reversed else 1.0)
    return [tuple(float(v) for v in first + k * step) for k in range(info.n_images)]


def tile_format(fmt: PixelFormat, info: MosaicInfo) -> PixelFormat:
    """The pixel format of one tile viewed as a frame: tile rows and columns, one frame per tile."""
    return replace(fmt, rows=info.tile_rows, columns=info.tile_columns, frames=info.n_images)


def tile_view(mosaic: np.ndarray, info: MosaicInfo) -> np.ndarray:
    """A (grid, tile_rows, grid, tile_columns) view of a decoded 2-D mosaic (no copy)."""
    return mosaic.reshape(info.grid, info.tile_rows, info.grid, info.tile_columns)


def tile(mosaic: np.ndarray, info: MosaicInfo, index: int) -> np.ndarray:
    """Tile ``index`` (storage order) of a decoded 2-D mosaic, (tile_rows, tile_columns), a view."""
    return tile_view(mosaic, info)[index // info.grid, :, index % info.grid, :]


def decode_tiles(path: str, fmt: PixelFormat, info: MosaicInfo, out: np.ndarray, pixel_offset: int,
                 tiles: Sequence[int]) -> None:
    """Decode the mosaic of ``path`` once and copy ``tiles`` into ``out[i]`` (one copy per tile, no other).

    Args:
        path: The mosaic file.
        fmt: Its pixel format, of the whole mosaic or of a tile (``tile_format``): sizes are taken from ``info``.
        info: Its tiling.
        out: (len(tiles), tile_rows, tile_columns) array of ``fmt.stored_dtype`` (a view into the slab).
        pixel_offset: File offset of the PixelData value, -1 unknown.
        tiles: Tile indices (storage order), one per ``out[i]``.
    """
    whole = replace(fmt, rows=info.mosaic_rows, columns=info.mosaic_columns, frames=1)
    decoded = np.empty((1, whole.rows, whole.columns), dtype=whole.stored_dtype)
    decode_into(path, whole, decoded, pixel_offset)
    grid_view = tile_view(decoded[0], info)
    for i, k in enumerate(tiles):
        out[i] = grid_view[k // info.grid, :, k % info.grid, :]
