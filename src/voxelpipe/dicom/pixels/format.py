"""What one file's decoded frames look like: the Image Pixel module as :class:`PixelFormat`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voxelpipe.core.errors import BadTagValueError, DicomReadError, InputError, MissingTagError
from voxelpipe.dicom.flatten import DUPLICATE_PREFIX, column_name

TAGS = {
    "rows": 0x00280010, "columns": 0x00280011, "frames": 0x00280008, "samples_per_pixel": 0x00280002,
    "bits_allocated": 0x00280100, "bits_stored": 0x00280101, "high_bit": 0x00280102,
    "pixel_representation": 0x00280103, "photometric": 0x00280004, "planar_configuration": 0x00280006,
}
COLUMNS = {name: column_name(tag) for name, tag in TAGS.items()}
EXTENDED_OFFSETS_COLUMN = column_name(0x7FE00001)


@dataclass(frozen=True)
class PixelFormat:
    """The Image Pixel module of one file: what its decoded frames look like.

    Decoded frames are (rows, columns), or (rows, columns, samples) for colour (samples last).

    Attributes:
        rows: Rows (0028,0010) of a frame.
        columns: Columns (0028,0011) of a frame.
        frames: Number of Frames (0028,0008); 1 when absent.
        samples_per_pixel: Samples per Pixel (0028,0002): 1 monochrome, 3 colour.
        bits_allocated: Bits Allocated (0028,0100): 1, 8, 16 or 32.
        bits_stored: Bits Stored (0028,0101).
        high_bit: High Bit (0028,0102); -1 when absent.
        pixel_representation: Pixel Representation (0028,0103): 0 unsigned, 1 signed.
        photometric: Photometric Interpretation (0028,0004).
        planar_configuration: Planar Configuration (0028,0006): 0 samples interleaved, 1 planes.
        transfer_syntax: Transfer syntax UID of the file.
        has_extended_offsets: (7FE0,0001) Extended Offset Table present (encapsulated multi-frame).
    """

    rows: int
    columns: int
    frames: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    high_bit: int
    pixel_representation: int
    photometric: str
    planar_configuration: int
    transfer_syntax: str
    has_extended_offsets: bool = False

    @classmethod
    def from_row(cls, row: dict[str, str], transfer_syntax: str, path: str = "") -> PixelFormat:
        """Read the format from a flattened header row.

        Args:
            row: Flattened header (column name -> text), as the header reader returns it.
            transfer_syntax: The file's transfer syntax UID.
            path: The file, for messages.

        Raises:
            MissingTagError: A required tag is absent.
            BadTagValueError: A tag is repeated, not an integer or out of range.
        """
        def cell(name: str) -> str:
            text = row.get(COLUMNS[name], "").strip()
            if text.startswith(DUPLICATE_PREFIX):
                raise BadTagValueError(path, COLUMNS[name], text, "the tag appears more than once")
            return text

        def integer(name: str, default: int | None = None) -> int:
            text = cell(name)
            if not text:
                if default is None:
                    raise MissingTagError(path, [COLUMNS[name]])
                return default
            try:
                return int(text)
            except ValueError:
                raise BadTagValueError(path, COLUMNS[name], text, "not an integer") from None

        samples = integer("samples_per_pixel")
        frames = integer("frames", 1)
        photometric = cell("photometric")
        if not photometric:
            raise MissingTagError(path, [COLUMNS["photometric"]])
        fmt = cls(
            rows=integer("rows"), columns=integer("columns"), frames=frames if frames > 0 else 1,
            samples_per_pixel=samples, bits_allocated=integer("bits_allocated"),
            bits_stored=integer("bits_stored"), high_bit=integer("high_bit", -1),
            pixel_representation=integer("pixel_representation"), photometric=photometric,
            planar_configuration=integer("planar_configuration", None if samples > 1 else 0),
            transfer_syntax=transfer_syntax, has_extended_offsets=EXTENDED_OFFSETS_COLUMN in row,
        )
        for name in ("rows", "columns", "samples_per_pixel"):
            if getattr(fmt, name) < 1:
                raise BadTagValueError(path, COLUMNS[name], getattr(fmt, name), "must be at least 1")
        if fmt.bits_allocated not in (1, 8, 16, 32):
            raise BadTagValueError(path, COLUMNS["bits_allocated"], fmt.bits_allocated,
                                   "integer pixel data needs 1, 8, 16 or 32")
        if not 1 <= fmt.bits_stored <= fmt.bits_allocated:
            raise BadTagValueError(path, COLUMNS["bits_stored"], fmt.bits_stored,
                                   f"must be 1..BitsAllocated ({fmt.bits_allocated})")
        if fmt.pixel_representation not in (0, 1):
            raise BadTagValueError(path, COLUMNS["pixel_representation"], fmt.pixel_representation,
                                   "must be 0 or 1")
        return fmt

    @property
    def stored_dtype(self) -> np.dtype:
        """Native dtype of the stored values: (u)int8/16/32 from BitsAllocated, PixelRepresentation; 1-bit: uint8."""
        if self.bits_allocated == 1:
            return np.dtype(np.uint8)
        if self.bits_allocated not in (8, 16, 32):
            raise InputError(f"BitsAllocated {self.bits_allocated} is not integer pixel data (1, 8, 16, 32)")
        return np.dtype(f"{'ui'[self.pixel_representation]}{self.bits_allocated // 8}")

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """``(rows, columns)``, or ``(rows, columns, samples)`` for colour."""
        if self.samples_per_pixel == 1:
            return (self.rows, self.columns)
        return (self.rows, self.columns, self.samples_per_pixel)

    @property
    def pixels_per_frame(self) -> int:
        """Stored values in one frame: rows × columns × samples."""
        return self.rows * self.columns * self.samples_per_pixel

    @property
    def native_frame_bytes(self) -> float:
        """Bytes of one uncompressed frame in the file (fractional for unaligned 1-bit frames)."""
        if self.bits_allocated == 1:
            return self.pixels_per_frame / 8
        length = self.pixels_per_frame * (self.bits_allocated // 8)
        if self.photometric == "YBR_FULL_422":
            length = length // 3 * 2
        return length


def check_frame_bytes(path: str, fmt: PixelFormat, max_frame_bytes: int) -> None:
    """Refuse a frame of more than ``max_frame_bytes`` bytes (Rows x Columns x SamplesPerPixel x BitsAllocated
    / 8, as declared; a MOSAIC is one frame) before anything is allocated or decoded.

    Raises:
        DicomReadError: Naming the file, the tags, their values and the limit.
    """
    frame_bytes = fmt.rows * fmt.columns * fmt.samples_per_pixel * fmt.bits_allocated // 8
    if frame_bytes > max_frame_bytes:
        raise DicomReadError(path, f"frame too large: Rows (0028,0010) {fmt.rows} x Columns (0028,0011) "
                                   f"{fmt.columns} x SamplesPerPixel (0028,0002) {fmt.samples_per_pixel} x "
                                   f"BitsAllocated (0028,0100) {fmt.bits_allocated} / 8 = {frame_bytes} bytes, "
                                   f"more than --max-frame-bytes {max_frame_bytes}")


__all__ = ["COLUMNS", "EXTENDED_OFFSETS_COLUMN", "PixelFormat", "TAGS", "check_frame_bytes"]
