"""A fast header walker: reads a DICOM file's elements up to the pixel data straight into a flattened row.

pydicom builds a Dataset object for every element and item, which costs more than the whole scan should;
this walker reads tag, VR, length and value bytes and formats them with ``flatten.format_raw``. It covers
explicit/implicit VR little endian and explicit big endian with defined and undefined lengths; anything else
(deflated transfer syntax, an unknown VR) raises ``Unsupported`` so the caller can fall back to pydicom.
"""
from __future__ import annotations

import struct
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
DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")
VALID_VRS = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV", "OW",
     "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV"}
)
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
FIRST_READ = 1 << 16


class Unsupported(Exception):
    """The file uses an encoding this walker does not handle; read it with pydicom instead.

    An internal signal, not an error of a run: :func:`voxelpipe.dicom.files.read_header` catches it and falls back
    to pydicom."""


class Truncated(Exception):
    """The header ends before an element it declares.

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


class _Buffer:
    """The file's bytes, read in growing pieces as the walker needs them."""

    def __init__(self, fp, size: int):
        self.fp = fp
        self.size = size
        self.data = fp.read(min(size, FIRST_READ))

    def need(self, end: int) -> bytes:
        if end > len(self.data):
            if end > self.size:
                raise Truncated(f"an element needs byte {end}, the file has {self.size}")
            more = self.fp.read(max(end - len(self.data), len(self.data)))
            self.data += more
            if end > len(self.data):
                raise Truncated(f"an element needs byte {end}, only {len(self.data)} could be read")
        return self.data


class _Walker:
    def __init__(self, buffer: _Buffer):
        self.buf = buffer
        self.builder = RowBuilder()
        self.encodings = encodings_for(None)
        self.pixel_representation = 0
        self.pixel = (-1, 0, -1)

    def walk(self, pos: int, end: int | None, little: bool, implicit: bool, prefix: str, top: bool) -> int:
        """Walk elements from ``pos`` to ``end`` (None: to an item delimiter, or the end of file at top level)."""
        endian = "<" if little else ">"
        tag_fmt = struct.Struct(endian + "HH")
        u16 = struct.Struct(endian + "H")
        u32 = struct.Struct(endian + "I")
        size = self.buf.size
        while True:
            if end is not None and pos >= end:
                return pos
            if end is None and top and pos >= size:
                return pos
            data = self.buf.need(pos + 8)
            group, element = tag_fmt.unpack_from(data, pos)
            tag = group << 16 | element
            if tag == ITEM_END:
                return pos + 8
            if tag in (ITEM, SEQUENCE_END):
                raise Unsupported(f"item tag out of place at byte {pos}")
            if top and group != 0x0002 and tag in PIXEL_DATA_TAGS:
                self._pixel(pos, data, little, implicit, endian)
                return pos
            if implicit:
                vr = dictionary_vr(tag)
                length = u32.unpack_from(data, pos + 4)[0]
                pos += 8
            else:
                vr = data[pos + 4:pos + 6].decode("latin-1")
                if vr not in VALID_VRS:
                    raise Unsupported(f"unknown VR {vr!r} at byte {pos}")
                if vr in LONG_VRS:
                    data = self.buf.need(pos + 12)
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
            data = self.buf.need(pos + length)
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
            data = self.buf.need(pos + 8)
            group, element, item_length = struct.unpack_from(endian + "HHI", data, pos)
            tag = group << 16 | element
            pos += 8
            if tag == SEQUENCE_END:
                return pos
            if tag != ITEM:
                raise Unsupported(f"expected an item tag at byte {pos - 8}, found ({group:04X},{element:04X})")
            item_end = None if item_length == UNDEFINED else pos + item_length
            pos = self.walk(pos, item_end, little, implicit, prefix, top=False)

    def _pixel(self, pos: int, data: bytes, little: bool, implicit: bool, endian: str) -> None:
        data = self.buf.need(min(pos + 12, self.buf.size))
        if implicit:
            header = 8
            length = struct.unpack_from(endian + "I", data, pos + 4)[0] if len(data) >= pos + 8 else 0
        else:
            header = 12
            length = struct.unpack_from(endian + "I", data, pos + 8)[0] if len(data) >= pos + 12 else 0
        self.pixel = (pos, header, -1 if length == UNDEFINED else length)


def read_raw_header(fp, size: int) -> RawHeader:
    """Walk the header of an open file (positioned at 0) of ``size`` bytes; raise Unsupported or Truncated."""
    buffer = _Buffer(fp, size)
    walker = _Walker(buffer)
    data = buffer.data
    pos = 132 if data[128:132] == b"DICM" else 0
    group = struct.unpack_from("<H", buffer.need(pos + 8), pos)[0]
    syntax = ""
    if group == 0x0002:
        pos = _walk_meta(walker, pos)
        syntax = walker.builder.row.get(column_name(0x00020010), "")
    if syntax in DEFLATED or (group == 0x0002 and not syntax):
        raise Unsupported("deflated or missing transfer syntax")
    if syntax:
        implicit, little = syntax == IMPLICIT_LE, syntax != EXPLICIT_BE
    else:  # no file meta: guess from the first element like pydicom does
        data = buffer.need(pos + 8)
        implicit = data[pos + 4:pos + 6].decode("latin-1") not in VALID_VRS
        little = struct.unpack_from("<H", data, pos)[0] in (0x0008, 0x0004, 0x0010)
    walker.walk(pos, None, little, implicit, "", top=True)
    tag_offset, header_length, value_length = walker.pixel
    return RawHeader(walker.builder.row, syntax, little, implicit, tag_offset, header_length, value_length)


def _walk_meta(walker: _Walker, pos: int) -> int:
    """File meta elements (always explicit VR little endian) until the group changes."""
    buffer = walker.buf
    while pos + 8 <= buffer.size:
        data = buffer.need(pos + 8)
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
