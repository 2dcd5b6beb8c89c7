"""Text shown to people (HTML report, terminal lines): characters that must not appear raw made visible."""
from __future__ import annotations

import re

INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
                       + "".join(f"{chr(plane + 0xFFFE)}{chr(plane + 0xFFFF)}" for plane in range(0, 0x110000, 0x10000))
                       + "]")


def _shown(match: re.Match) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"  # a byte that was not UTF-8 (surrogateescape)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def visible(text: str) -> str:
    """``text`` with every character HTML forbids in a document written as a backslash escape: C0 controls other
    than tab, newline and carriage return, DEL and C1 controls as ``\\xNN`` (NUL → ``\\x00``), undecodable bytes
    of file names (lone surrogates of ``surrogateescape``) as ``\\xNN`` of the byte, other surrogates and
    noncharacters as ``\\uNNNN`` (``\\UNNNNNNNN`` beyond U+FFFF). Escapes, not symbols, so they read the same
    in every font."""
    return INVISIBLE.sub(_shown, text)


__all__ = ["INVISIBLE", "visible"]
