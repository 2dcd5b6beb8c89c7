"""A small reader of the Siemens CSA headers (private elements (0029,1010) image and (0029,1020) series).

Both layouts Siemens writes are read:

* CSA2 ("SV10"): 4 bytes ``SV10``, 4 unused bytes (``04 03 02 01``), the number of tags (uint32), one unused
  uint32 (77);
* CSA1 (older VA/VB files): the number of tags (uint32) then one unused uint32, from byte 0.

Then, per tag: a 64-byte NUL-terminated name, VM (int32), a 4-byte VR text, SyngoDT (int32), the number of items
(int32), one unused int32 (77 or 205). Per item: four int32 whose second holds the item's length in bytes (CSA2;
CSA1 files store the length in the first, offset by the item count of the header's first tag), then the item
bytes, padded to a multiple of 4. An item is NUL-terminated text; empty items are dropped. All integers are
little endian.

voxelpipe reads these fields of the image header (others are parsed and returned untouched):

* ``NumberOfImagesInMosaic`` (IS): the number of slices tiled in a MOSAIC image;
* ``SliceNormalVector`` (FD x 3): the slice normal in patient LPS; a MOSAIC's tiles are stored along it.

Nothing here needs nibabel (whose ``nibabel.nicom.csareader`` documents the same layout).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from voxelpipe.core.errors import DicomReadError

CSA_IMAGE_TAG = 0x00291010  # CSA Image Header Info (block 10 of the "SIEMENS CSA HEADER" private creator)
CSA_CREATOR = "SIEMENS CSA HEADER"
_SV10 = b"SV10"
_TAG_HEADER = struct.Struct("<64si4siii")
_ITEM_HEADER = struct.Struct("<4i")
_MAX_TAGS = 1000
_MAX_ITEMS = 1000


@dataclass(frozen=True)
class CsaTag:
    """One CSA tag: its VR, value multiplicity and the text of its non-empty items."""

    name: str
    vm: int
    vr: str
    items: tuple[str, ...]

    def floats(self) -> tuple[float, ...]:
        """The items as numbers (empty items dropped)."""
        return tuple(float(v) for v in self.items if v.strip())


def read_csa(data: bytes, where: str = "CSA header") -> dict[str, CsaTag]:
    """Parse one CSA header (either layout) into ``{name: CsaTag}``.

    Args:
        data: The element value (bytes of (0029,1010) or (0029,1020)).
        where: Names the file and element in error messages.

    Raises:
        DicomReadError: The bytes do not follow the CSA layout (truncated, implausible counts).
    """
    data = bytes(data)
    csa2 = data[:4] == _SV10
    offset = 8 if csa2 else 0
    try:
        n_tags, _unused = struct.unpack_from("<II", data, offset)
    except struct.error:
        raise DicomReadError(where, f"CSA header of {len(data)} bytes is too short") from None
    if not 0 < n_tags <= _MAX_TAGS:
        raise DicomReadError(where, f"CSA header declares {n_tags} tags (expected 1 to {_MAX_TAGS})")
    offset += 8
    tags: dict[str, CsaTag] = {}
    first_tag_items: int | None = None
    try:
        for _ in range(n_tags):
            raw_name, vm, raw_vr, _syngodt, n_items, _unused = _TAG_HEADER.unpack_from(data, offset)
            offset += _TAG_HEADER.size
            if not 0 <= n_items <= _MAX_ITEMS:
                raise DicomReadError(where, f"CSA tag at byte {offset - _TAG_HEADER.size} declares {n_items} items")
            if first_tag_items is None:
                first_tag_items = n_items
            items = []
            for _item in range(n_items):
                first, second, _x2, _x3 = _ITEM_HEADER.unpack_from(data, offset)
                offset += _ITEM_HEADER.size
                length = second if csa2 else first - first_tag_items
                if length < 0 or offset + length > len(data):
                    if not csa2:  # CSA1 lengths are unreliable past the last real item: stop this tag
                        break
                    raise DicomReadError(where, f"CSA item at byte {offset} declares {length} bytes")
                text = data[offset:offset + length].split(b"\0", 1)[0].decode("latin-1").strip()
                offset += (length + 3) // 4 * 4
                if text:
                    items.append(text)
            name = raw_name.split(b"\0", 1)[0].decode("latin-1")
            vr = raw_vr.split(b"\0", 1)[0].decode("latin-1")
            tags[name] = CsaTag(name, vm, vr, tuple(items))
    except struct.error:
        raise DicomReadError(where, f"CSA header truncated at byte {offset} of {len(data)}") from None
    return tags


def csa_image_header(ds) -> dict[str, CsaTag] | None:
    """The parsed CSA image header (0029,1010) of a pydicom Dataset; None when absent or not Siemens CSA.

    Raises:
        DicomReadError: The element is present but malformed.
    """
    element = ds.get(CSA_IMAGE_TAG)
    if element is None or not isinstance(element.value, bytes | bytearray) or not element.value:
        return None
    creator = ds.get(0x00290010)
    if creator is not None and str(creator.value).strip() != CSA_CREATOR:
        return None
    return read_csa(element.value, f"{getattr(ds, 'filename', '') or 'dataset'}: CSA Image Header (0029,1010)")
