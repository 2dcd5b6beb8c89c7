"""Decoding a DICOM file's pixel data straight into a caller-provided buffer (a view into a chunk slab).

Result = pydicom's ``Dataset.pixel_array`` (pydicom 3 defaults), stored values, no rescale:
frames ``(n_frames, rows, columns)``, or ``(n_frames, rows, columns, samples)`` for colour (samples last, RGB
after pydicom's default YBR_FULL / YBR_FULL_422 -> RGB conversion); dtype from BitsAllocated and
PixelRepresentation; BitsStored applied as pydicom does (unused high bits cleared for unsigned values and
sign-extended for signed ones; JPEG-LS signed data sign-corrected from its codestream precision).

Backends, tried in this order for each transfer syntax (see ``DECODERS`` / ``available_decoders()``), one module
each:

* ``raw`` (:mod:`.raw`): uncompressed little/big endian, read with ``readinto`` straight into ``out``.
* ``imagecodecs`` (:mod:`.imagecodecs_decoder`): JPEG lossless, JPEG-LS and RLE for one-sample images, where
  imagecodecs is installed.
* ``pydicom`` (:mod:`.pydicom_decoder`): everything else pydicom can decode through its plugins (pylibjpeg ...),
  and every file a faster backend declines.

Modules: :mod:`.syntaxes` (transfer syntax UIDs), :mod:`.format` (:class:`PixelFormat`), :mod:`.job`,
:mod:`.processing` (bits, colour), :mod:`.encapsulated` (encoded frames), :mod:`.registry` (choice of backend),
:mod:`.decode` (:func:`decode_into`).
"""
import sys

from voxelpipe.dicom.pixels.decode import decode_into
from voxelpipe.dicom.pixels.format import PixelFormat, check_frame_bytes
from voxelpipe.dicom.pixels.imagecodecs_decoder import IMAGECODECS_FUNCTIONS, IMAGECODECS_MIN_VERSION
from voxelpipe.dicom.pixels.raw import PIXEL_DATA_TAG
from voxelpipe.dicom.pixels.registry import DECODERS, Decoder, available_decoders, decoder_for
from voxelpipe.dicom.pixels.syntaxes import (
    DEFLATED_LE,
    EXPLICIT_BE,
    EXPLICIT_LE,
    HTJ2K,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    IMPLICIT_LE,
    JPEG2000,
    JPEG2000_LOSSLESS,
    JPEG2000_SYNTAXES,
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_SYNTAXES,
    JPEGLS_LOSSLESS,
    JPEGLS_NEAR_LOSSLESS,
    JPEGLS_SYNTAXES,
    NATIVE_SYNTAXES,
    RLE_LOSSLESS,
    syntax_name,
)

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little endian
    raise ImportError("voxelpipe.dicom.pixels assumes a little-endian machine")

__all__ = ["DECODERS", "DEFLATED_LE", "Decoder", "EXPLICIT_BE", "EXPLICIT_LE", "HTJ2K", "HTJ2K_LOSSLESS",
           "HTJ2K_LOSSLESS_RPCL", "IMAGECODECS_FUNCTIONS", "IMAGECODECS_MIN_VERSION", "IMPLICIT_LE", "JPEG2000",
           "JPEG2000_LOSSLESS", "JPEG2000_SYNTAXES", "JPEGLS_LOSSLESS", "JPEGLS_NEAR_LOSSLESS", "JPEGLS_SYNTAXES",
           "JPEG_BASELINE", "JPEG_EXTENDED", "JPEG_LOSSLESS", "JPEG_LOSSLESS_SV1", "JPEG_SYNTAXES",
           "NATIVE_SYNTAXES", "PIXEL_DATA_TAG", "PixelFormat", "RLE_LOSSLESS", "available_decoders",
           "check_frame_bytes", "decode_into", "decoder_for", "syntax_name"]
