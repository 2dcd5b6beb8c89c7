"""A fast header walker: reads a DICOM file's elements up to the pixel data straight into a flattened row.

pydicom builds a Dataset object for every element and item, which costs more than the whole scan should;
this walker reads tag, VR, length and value bytes and formats them with ``flatten.format_raw``. It covers
explicit/implicit VR little endian, explicit big endian and deflated explicit VR little endian, with defined and
undefined lengths; anything else (an unknown VR, an item tag out of place) raises ``Unsupported`` so the caller can
fall back to pydicom.

A deflated data set is inflated piece by piece (:class:`InflatedFile`) only as far as the walker reads: up to the
pixel data element, never into it, so a small file whose pixel data inflates to gigabytes costs no more to scan
than its header.
"""
from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

from voxelpipe.dicom.flatten import (
    PIXEL_DATA_TAGS,
    RowBuilder,
    column_name,
    dictionary_vr,
    encodings_for,
    format_raw,
    tag_name,
)

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"  # the data set after the file meta is one raw deflate stream
VALID_VRS = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV", "OW",
     "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV"}
)
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
FIRST_READ = 1 << 16
INFLATE_STEP = 1 << 16  # compressed bytes read, and inflated bytes produced beyond what was asked, per step


class Unsupported(Exception):
    """The file uses an encoding this walker does not handle; read it with pydicom instead.

    An internal signal, not an error of a run: :func:`voxelpipe.dicom.files.read_header` catches it and falls back
    to pydicom."""


class Truncated(Exception):
    """The header ends before an element it declares.

    An internal signal: :func:`voxelpipe.dicom.files.read_header` turns it into a
    :class:`~voxelpipe.core.errors.DicomReadError` naming the file."""


class Corrupt(Exception):
    """The bytes after the file meta are no data set (a deflate stream that does not inflate).

    An internal signal: :func:`voxelpipe.dicom.files.read_header` turns it into a
    :class:`~voxelpipe.core.errors.DicomReadError` naming the file."""


@dataclass
class RawHeader:
    row: dict[str, str]
    transfer_syntax: str
    little_endian: bool
    implicit_vr: bool
    pixel_tag_offset: int  # -1 when there is no pixel data element
    pixel_header_length: int
    pixel_value_length: int  # -1 for undefined length
    pixel_tag: int = 0x7FE00010  # PixelData, or FloatPixelData / DoubleFloatPixelData
    deflated: bool = False  # pixel offsets are then in the inflated data set, not in the file
    elements: int = 0  # top-level elements after the file meta (pixel data included)
    valid_elements: int = 0  # of these, those of a group above 0002 (group 0000 never belongs in a file)


class InflatedFile(io.RawIOBase):
    """A raw deflate stream (the data set of a deflated file) as a read-only file, inflated only as far as it is
    read: reading the first N bytes inflates about N bytes (plus at most ``INFLATE_STEP``), whatever follows.

    What was inflated is kept, so ``seek`` back is free; ``seek`` forward inflates up to there. Raises
    :class:`Corrupt` when the stream does not inflate. ``complete`` tells whether the stream ended properly (False
    when the file ends first: the data set was cut)."""

    def __init__(self, fp):
        super().__init__()
        self._fp = fp
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._input = b""
        self._data = bytearray()
        self._pos = 0
        self._ended = False
        self.complete = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def inflated(self, end: int) -> bytes | bytearray:
        """The inflated bytes from 0, at least up to ``end`` unless the stream ends before."""
        while len(self._data) < end and not self._ended:
            if not self._input:
                self._input = self._fp.read(INFLATE_STEP)
            wanted = end - len(self._data) + INFLATE_STEP
            try:
                if self._input:
                    piece = self._inflater.decompress(self._input, wanted)
                    self._input = self._inflater.unconsumed_tail
                else:  # the file ended: what zlib still holds, then nothing
                    piece = self._inflater.decompress(b"", wanted)
                    self._ended = not piece
            except zlib.error as exc:
                raise Corrupt(f"the deflated data set does not inflate after {len(self._data)} bytes: {exc}") \
                    from None
            self._data += piece
            if self._inflater.eof:
                self._ended = self.complete = True
        return self._data

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            while not self._ended:
                self.inflated(len(self._data) + (1 << 24))
            end = len(self._data)
        else:
            end = self._pos + size
        data = bytes(self.inflated(end)[self._pos:end])
        self._pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("an inflated data set can only be sought from its start or position")
        self._pos = max(0, offset)
        return self._pos


class _Buffer:
    """The file's bytes (or, ``inflated``, a deflated data set's) read in growing pieces as the walker needs
    them; ``size`` is None when the length is not known until the end is reached."""

    def __init__(self, fp, size: int | None, inflated: InflatedFile | None = None):
        self.fp = fp
        self.size = size
        self.inflated = inflated
        self.data = inflated.inflated(FIRST_READ) if inflated is not None else fp.read(min(size, FIRST_READ))
        self.what = "the inflated data set" if inflated is not None else "the file"

    def fill(self, end: int) -> bytes | bytearray:
        """The bytes from 0 up to ``end`` at least, or all there are when the data ends before."""
        if end > len(self.data):
            if self.inflated is not None:
                self.data = self.inflated.inflated(end)
            elif self.size is None or len(self.data) < self.size:
                self.data += self.fp.read(max(end - len(self.data), len(self.data)))
        return self.data

    def need(self, end: int, start: int = -1, tag: int = -1) -> bytes | bytearray:
        """The bytes up to ``end``; raise Truncated (naming the element ``tag`` at ``start``) when the data ends
        before."""
        if end > len(self.data):
            if self.size is not None and end > self.size:
                raise Truncated(self._short(end, start, tag, self.size))
            self.fill(end)
            if end > len(self.data):
                raise Truncated(self._short(end, start, tag, len(self.data)))
        return self.data

    def at_end(self, pos: int) -> bool:
        """True when the data ends at ``pos`` (or before)."""
        if self.size is not None:
            return pos >= self.size
        return len(self.fill(pos + 1)) <= pos

    def _short(self, end: int, start: int, tag: int, length: int) -> str:
        where = "an element"
        if start >= 0:
            where = f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) at byte {start}" if tag >= 0 else \
                f"the element at byte {start}"
        return f"{where} needs {self.what} up to byte {end}; {self.what} ends at byte {length}"


class _Walker:
    def __init__(self, buffer: _Buffer):
        self.buf = buffer
        self.builder = RowBuilder()
        self.encodings = encodings_for(None)
        self.pixel_representation = 0
        self.pixel = (-1, 0, -1, 0)  # tag offset, element header length, value length, tag
        self.elements = 0  # top-level elements
        self.valid_elements = 0  # top-level elements of a group above 0002

    def walk(self, pos: int, end: int | None, little: bool, implicit: bool, prefix: str, top: bool) -> int:
        """Walk elements from ``pos`` to ``end`` (None: to an item delimiter, or the end of file at top level)."""
        endian = "<" if little else ">"
        tag_fmt = struct.Struct(endian + "HH")
        u16 = struct.Struct(endian + "H")
        u32 = struct.Struct(endian + "I")
        buf = self.buf
        while True:
            if end is not None and pos >= end:
                return pos
            if end is None and top and buf.at_end(pos):
                return pos
            data = buf.need(pos + 8, pos)
            group, element = tag_fmt.unpack_from(data, pos)
            tag = group << 16 | element
            if tag == ITEM_END:
                return pos + 8
            if tag in (ITEM, SEQUENCE_END):
                raise Unsupported(f"item tag out of place at byte {pos}")
            if top:
                self.elements += 1
                self.valid_elements += group > 0x0002
                if tag in PIXEL_DATA_TAGS:
                    self._pixel(pos, tag, implicit, endian)
                    return pos
            start = pos
            if implicit:
                vr = dictionary_vr(tag)
                length = u32.unpack_from(data, pos + 4)[0]
                pos += 8
            else:
                vr = data[pos + 4:pos + 6].decode("latin-1")
                if vr not in VALID_VRS:
                    raise Unsupported(f"unknown VR {vr!r} at byte {pos}")
                if vr in LONG_VRS:
                    data = buf.need(pos + 12, start, tag)
                    length = u32.unpack_from(data, pos + 8)[0]
                    pos += 12
                else:
                    length = u16.unpack_from(data, pos + 6)[0]
                    pos += 8
            if vr == "SQ" or (vr == "UN" and (length == UNDEFINED or dictionary_vr(tag) == "SQ")):
                # a sequence stored as UN is encoded implicit VR little endian
                as_un = vr == "UN"
                pos = self._sequence(pos, length, little or as_un, implicit or as_un, f"{prefix}{tag_name(tag)}_")
                continue
            if length == UNDEFINED:
                raise Unsupported(f"undefined length for {vr} element ({group:04X},{element:04X})")
            data = buf.need(pos + length, start, tag)
            value = data[pos:pos + length]
            pos += length
            if tag not in PIXEL_DATA_TAGS:  # nested pixel data (icon images) is left out too
                self._element(tag, vr, value, little, prefix)

    def _element(self, tag: int, vr: str, value: bytes, little: bool, prefix: str) -> None:
        if vr == "UN" and tag >> 16 & 1 == 0:
            known = dictionary_vr(tag)
            if known != "UN" and " or " not in known:
                vr, little = known, True  # UN values are implicit little endian encoded
        if " or " in vr:
            vr = ("SS" if self.pixel_representation == 1 else "US") if vr == "US or SS" else "OW"
        text = format_raw(value, vr, little, self.encodings)
        if text is None:
            raise Unsupported(f"cannot format VR {vr}")
        if tag == 0x00080005 and not prefix:
            self.encodings = encodings_for(text.split("\\"))
        elif tag == 0x00280103 and not prefix and text.isdigit():
            self.pixel_representation = int(text)
        self.builder.add(column_name(tag, prefix), text)

    def _sequence(self, pos: int, length: int, little: bool, implicit: bool, prefix: str) -> int:
        endian = "<" if little else ">"
        end = None if length == UNDEFINED else pos + length
        while True:
            if end is not None and pos >= end:
                return pos
            data = self.buf.need(pos + 8, pos)
            group, element, item_length = struct.unpack_from(endian + "HHI", data, pos)
            tag = group << 16 | element
            pos += 8
            if tag == SEQUENCE_END:
                return pos
            if tag != ITEM:
                raise Unsupported(f"expected an item tag at byte {pos - 8}, found ({group:04X},{element:04X})")
            item_end = None if item_length == UNDEFINED else pos + item_length
            pos = self.walk(pos, item_end, little, implicit, prefix, top=False)

    def _pixel(self, pos: int, tag: int, implicit: bool, endian: str) -> None:
        data = self.buf.fill(pos + 12)
        if implicit:
            header = 8
            length = struct.unpack_from(endian + "I", data, pos + 4)[0] if len(data) >= pos + 8 else 0
        else:
            header = 12
            length = struct.unpack_from(endian + "I", data, pos + 8)[0] if len(data) >= pos + 12 else 0
        self.pixel = (pos, header, -1 if length == UNDEFINED else length, tag)


def read_raw_header(fp, size: int) -> RawHeader:
    """Walk the header of an open file (positioned at 0) of ``size`` bytes; raise Unsupported, Truncated or
    Corrupt.

    A deflated data set is inflated only up to its pixel data element; the pixel offsets of the result are then
    offsets in the inflated data set (``deflated`` is True)."""
    buffer = _Buffer(fp, size)
    walker = _Walker(buffer)
    data = buffer.data
    pos = 132 if data[128:132] == b"DICM" else 0
    group = struct.unpack_from("<H", buffer.need(pos + 8), pos)[0]
    syntax = ""
    if group == 0x0002:
        pos = _walk_meta(walker, pos)
        syntax = walker.builder.row.get(column_name(0x00020010), "")
    if group == 0x0002 and not syntax:
        raise Unsupported("missing transfer syntax")
    deflated = syntax == DEFLATED
    if deflated:
        fp.seek(pos)
        walker.buf = _Buffer(fp, None, InflatedFile(fp))
        pos = 0
    if syntax:
        implicit, little = syntax == IMPLICIT_LE, syntax != EXPLICIT_BE
    else:  # no file meta: guess from the first element like pydicom does
        data = buffer.need(pos + 8)
        implicit = data[pos + 4:pos + 6].decode("latin-1") not in VALID_VRS
        little = struct.unpack_from("<H", data, pos)[0] in (0x0008, 0x0004, 0x0010)
    end = walker.walk(pos, None, little, implicit, "", top=True)
    tag_offset, header_length, value_length, pixel_tag = walker.pixel
    if deflated and tag_offset < 0 and not walker.buf.inflated.complete:
        raise Truncated(f"the deflated data set stops at inflated byte {end}, the file ends at byte {size} before "
                        "the end of the deflate stream")
    return RawHeader(walker.builder.row, syntax, little, implicit, tag_offset, header_length, value_length,
                     pixel_tag, deflated, walker.elements, walker.valid_elements)


def _walk_meta(walker: _Walker, pos: int) -> int:
    """File meta elements (always explicit VR little endian) until the group changes."""
    buffer = walker.buf
    while pos + 8 <= buffer.size:
        data = buffer.need(pos + 8, pos)
        if struct.unpack_from("<H", data, pos)[0] != 0x0002:
            break
        end = walker.walk(pos, _next_element(buffer, pos), True, False, "", top=False)
        pos = end
    return pos


def _next_element(buffer: _Buffer, pos: int) -> int:
    """End of the explicit-VR little-endian element at ``pos``."""
    data = buffer.need(pos + 8)
    vr = data[pos + 4:pos + 6].decode("latin-1")
    if vr in LONG_VRS:
        data = buffer.need(pos + 12)
        return pos + 12 + struct.unpack_from("<I", data, pos + 8)[0]
    return pos + 8 + struct.unpack_from("<H", data, pos + 6)[0]
