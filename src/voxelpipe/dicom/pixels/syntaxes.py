"""Transfer syntax UIDs of DICOM pixel data and the groups the decoders are chosen by."""
from __future__ import annotations

from pydicom.uid import UID

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEGLS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEGLS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG2000 = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

NATIVE_SYNTAXES = frozenset({IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE})
JPEG_SYNTAXES = frozenset({JPEG_BASELINE, JPEG_EXTENDED, JPEG_LOSSLESS, JPEG_LOSSLESS_SV1})
JPEGLS_SYNTAXES = frozenset({JPEGLS_LOSSLESS, JPEGLS_NEAR_LOSSLESS})
JPEG2000_SYNTAXES = frozenset({JPEG2000_LOSSLESS, JPEG2000, HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL, HTJ2K})


def syntax_name(uid: str) -> str:
    """``"<uid> (<name>)"`` of a transfer syntax UID, for messages.

    Args:
        uid: The transfer syntax UID; empty when the file has none.

    Returns:
        The UID with its registered name, the UID alone when unknown, or ``"(no transfer syntax)"``.
    """
    name = UID(uid).name if uid else ""
    return f"{uid} ({name})" if name and name != uid else (uid or "(no transfer syntax)")


__all__ = ["DEFLATED_LE", "EXPLICIT_BE", "EXPLICIT_LE", "HTJ2K", "HTJ2K_LOSSLESS", "HTJ2K_LOSSLESS_RPCL",
           "IMPLICIT_LE", "JPEG2000", "JPEG2000_LOSSLESS", "JPEG2000_SYNTAXES", "JPEGLS_LOSSLESS",
           "JPEGLS_NEAR_LOSSLESS", "JPEGLS_SYNTAXES", "JPEG_BASELINE", "JPEG_EXTENDED", "JPEG_LOSSLESS",
           "JPEG_LOSSLESS_SV1", "JPEG_SYNTAXES", "NATIVE_SYNTAXES", "RLE_LOSSLESS", "syntax_name"]
