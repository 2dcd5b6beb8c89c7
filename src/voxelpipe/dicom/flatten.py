"""Flattening a DICOM header into one row of text cells.

Column names are ``"<Name> (gggg, eeee)"``; an element nested in a sequence is
``"<Sequence name>_<Name> (gggg, eeee)"`` (recursively). A column that receives several values in one file
(a tag repeated across sequence items, or duplicated) holds ``DUPLICATE TAGS IN DICOM:v1/v2/...``.
Multi-valued elements are joined with ``\\``; binary values longer than 16 bytes are shown by their size.

``keyword_column`` gives the same column with DICOM keywords (``PatientName``, ``Sequence_Keyword`` when nested;
a private or unknown tag keeps a tag-based name, ``Private_gggg_eeee``); ``number_type`` says which columns a
typed table (Parquet) stores as numbers.

Values are formatted from their raw bytes (``format_raw``); ``RowBuilder`` collects cells with the duplicate
rule. ``rawheader`` feeds both straight from the file; ``flatten`` does the same for a pydicom Dataset.
"""
from __future__ import annotations

import re
import struct
from functools import cache

from pydicom import datadict
from pydicom.charset import convert_encodings, decode_bytes, default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
DUPLICATE_PREFIX = "DUPLICATE TAGS IN DICOM:"
_SHOW_BINARY_BYTES = 16
_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})  # single value, keep leading spaces
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UC", "UI"})
_CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


@cache
def tag_name(tag: int) -> str:
    """The data dictionary name of a tag ("Private Creator" / "Private tag data" for private tags)."""
    group, element = tag >> 16, tag & 0xFFFF
    if group % 2 == 1:
        return "Private Creator" if 0x0010 <= element <= 0x00FF else "Private tag data"
    try:
        return datadict.dictionary_description(tag)  # repeating groups (overlays, curves) included
    except KeyError:
        return "Group Length" if element == 0 else "Unknown tag"


@cache
def dictionary_vr(tag: int) -> str:
    """The VR of a tag for implicit-VR data ("UN" when unknown; private creators are LO)."""
    group, element = tag >> 16, tag & 0xFFFF
    if group % 2 == 1 and 0x0010 <= element <= 0x00FF:
        return "LO"
    if element == 0:
        return "UL"
    try:
        return datadict.dictionary_VR(tag)
    except KeyError:
        return "UN"


@cache
def column_name(tag: int, prefix: str = "") -> str:
    """``"<prefix><Name> (gggg, eeee)"`` for a tag."""
    return f"{prefix}{tag_name(tag)} ({tag >> 16:04X}, {tag & 0xFFFF:04X})"


_COLUMN_TAG = re.compile(r"(.*)\(([0-9A-F]{4}), ([0-9A-F]{4})\)")
INTEGER_VRS = frozenset({"US", "SS", "UL", "SL", "SV", "IS"})  # int64 in a typed table (UV may not fit)
FLOAT_VRS = frozenset({"FL", "FD", "DS"})  # float64 in a typed table


@cache
def split_column(column: str) -> tuple[tuple[str, ...], int] | None:
    """``(sequence names, tag)`` of a column named by :func:`column_name` (``((), 0x00100010)`` for
    ``"Patient's Name (0010, 0010)"``; the names of the enclosing sequences, outermost first, for a nested one),
    or None for a column of another form (``path``, ``series_key``)."""
    match = _COLUMN_TAG.fullmatch(column)
    if match is None:
        return None
    tag = int(match.group(2) + match.group(3), 16)
    head = match.group(1)
    name = tag_name(tag)
    if not head.endswith(name + " "):
        return None
    prefix = head[: -len(name) - 1]
    return tuple(prefix[:-1].split("_")) if prefix else (), tag


@cache
def _sequence_keywords() -> dict[str, str]:
    """Data dictionary name -> keyword of every sequence (names of sequences are unique and hold no ``_``)."""
    keywords: dict[str, str] = {}
    for entry in datadict.DicomDictionary.values():
        if entry[0] == "SQ" and entry[4]:
            keywords.setdefault(entry[2], entry[4])
    return keywords


def _tag_keyword(tag: int) -> str:
    group, element = tag >> 16, tag & 0xFFFF
    if group % 2 == 1:
        kind = "PrivateCreator" if 0x0010 <= element <= 0x00FF else "Private"
        return f"{kind}_{group:04X}_{element:04X}"
    keyword = datadict.keyword_for_tag(tag)  # "" when the dictionary has none; repeating groups included
    return keyword or f"Tag_{group:04X}_{element:04X}"


@cache
def keyword_column(column: str) -> str:
    """The keyword form of a column named by :func:`column_name`: ``PatientName`` for
    ``"Patient's Name (0010, 0010)"``, ``ReferencedSeriesSequence_SeriesInstanceUID`` for a nested element; a
    private tag ``Private_gggg_eeee`` (``PrivateCreator_gggg_00ee``), a tag without keyword ``Tag_gggg_eeee``, a
    sequence without keyword (a private one) ``Private``. Other columns (``path``) are returned as they are."""
    parts = split_column(column)
    if parts is None:
        return column
    names, tag = parts
    sequences = _sequence_keywords()
    return "_".join([*(sequences.get(name, "Private") for name in names), _tag_keyword(tag)])


@cache
def number_type(column: str) -> str | None:
    """``"int64"`` or ``"float64"`` for a column of a single-valued numeric element (dictionary VR US, SS, UL, SL,
    SV, IS / FL, FD, DS and value multiplicity 1); None for every other column (text, several values such as
    PixelSpacing, private tags, columns that are not elements)."""
    parts = split_column(column)
    if parts is None:
        return None
    tag = parts[1]
    if tag >> 16 & 1:
        return None
    try:
        if datadict.dictionary_VM(tag) != "1":
            return None
        vrs = set(datadict.dictionary_VR(tag).split(" or "))
    except KeyError:  # not in the dictionary
        return None
    if vrs <= INTEGER_VRS:
        return "int64"
    if vrs <= FLOAT_VRS:
        return "float64"
    return None


def encodings_for(charset: str | list[str] | None) -> list[str]:
    """Python codecs for a SpecificCharacterSet value."""
    if not charset:
        return [default_encoding]
    values = [charset] if isinstance(charset, str) else list(charset)
    return convert_encodings(values)


def _binary_text(data: bytes) -> str:
    if not data:
        return ""
    if len(data) <= _SHOW_BINARY_BYTES:
        return "0x" + data.hex()
    return f"<binary {len(data)} bytes>"


def format_raw(value: bytes, vr: str, little_endian: bool, encodings: list[str]) -> str | None:
    """Readable text for a raw element value of the given VR, or None for a VR this cannot format."""
    if vr in _STRING_VRS or vr in _TEXT_VRS:
        if value.isascii():
            text = value.decode("ascii")
        elif vr in _CHARSET_VRS:
            text = decode_bytes(value, encodings, set())
        else:
            text = value.decode("latin-1")
        text = text.rstrip(" \x00")
        if vr in _TEXT_VRS:
            return text
        return "\\".join(part.strip(" \x00") for part in text.split("\\")) if "\\" in text else text.strip()
    fmt = _NUMBER_FORMATS.get(vr)
    if fmt is not None:
        size = struct.calcsize(fmt)
        count = len(value) // size
        values = struct.unpack(("<" if little_endian else ">") + fmt * count, value[: count * size])
        return "\\".join(map(str, values))
    if vr == "AT":
        count = len(value) // 4
        pairs = struct.unpack(("<" if little_endian else ">") + "HH" * count, value[: count * 4])
        return "\\".join(f"({pairs[i]:04X},{pairs[i + 1]:04X})" for i in range(0, len(pairs), 2))
    if vr in _BINARY_VRS:
        return _binary_text(bytes(value))
    return None


class RowBuilder:
    """Collects ``column -> text`` cells, turning repeated columns into ``DUPLICATE TAGS IN DICOM:`` cells."""

    __slots__ = ("row", "_repeated")

    def __init__(self) -> None:
        self.row: dict[str, str] = {}
        self._repeated: set[str] = set()

    def add(self, key: str, text: str) -> None:
        row = self.row
        if key not in row:
            row[key] = text
        elif key in self._repeated:
            row[key] += "/" + text
        else:
            self._repeated.add(key)
            row[key] = f"{DUPLICATE_PREFIX}{row[key]}/{text}"


def _element_text(elem: DataElement) -> str:
    """Text for an element pydicom has already converted."""
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return _binary_text(bytes(value))
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v) for v in value)
    return str(value)


def flatten(ds: Dataset) -> dict[str, str]:
    """One flat ``{column: text}`` row for every element of a pydicom Dataset (file meta included) except
    pixel data."""
    builder = RowBuilder()
    encodings = encodings_for(ds.get("SpecificCharacterSet") if 0x00080005 in ds else None)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        _flatten_into(meta, "", builder, encodings)
    _flatten_into(ds, "", builder, encodings)
    return builder.row


def _flatten_into(ds: Dataset, prefix: str, builder: RowBuilder, encodings: list[str]) -> None:
    for elem in ds.elements():
        tag = int(elem.tag)
        if tag in PIXEL_DATA_TAGS:
            continue
        vr = elem.VR
        if isinstance(elem, RawDataElement) and vr is None:
            vr = dictionary_vr(tag)
        if vr == "UN" and isinstance(elem, RawDataElement) and dictionary_vr(tag) != "UN":
            elem = ds[Tag(tag)]  # pydicom replaces UN with the dictionary VR
            vr = elem.VR
        if vr == "SQ":
            seq_prefix = f"{prefix}{tag_name(tag)}_"
            for item in ds[Tag(tag)].value:
                _flatten_into(item, seq_prefix, builder, encodings)
            continue
        text = None
        if isinstance(elem, RawDataElement):
            text = "" if elem.value is None else format_raw(elem.value, vr, elem.is_little_endian, encodings)
        if text is None:
            text = _element_text(ds[Tag(tag)])
        builder.add(column_name(tag, prefix), text)
