"""The decoding backends in the order they are tried, and the choice of one for a transfer syntax.

Each backend module (``raw``, ``imagecodecs_decoder``, ``pydicom_decoder``) provides ``NAME``, ``COLOUR``
(decodes colour images), ``NEEDS_OFFSET`` (reads at the Pixel Data value offset), ``is_available()`` (its
library is installed), ``syntaxes()`` (transfer syntax UID -> what decodes it, for logs) and ``decode(job)``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from voxelpipe.core.errors import InputError
from voxelpipe.dicom.pixels import imagecodecs_decoder, pydicom_decoder, raw
from voxelpipe.dicom.pixels.job import DecodeJob
from voxelpipe.dicom.pixels.syntaxes import syntax_name

BACKENDS: tuple[ModuleType, ...] = (raw, imagecodecs_decoder, pydicom_decoder)  # tried in this order


def _always() -> bool:
    return True


@dataclass(frozen=True)
class Decoder:
    """A decoding backend: which syntaxes it decodes, whether it can run here, and its decode function.

    Attributes:
        name: "raw", "imagecodecs" or "pydicom".
        syntaxes: Returns transfer syntax UID -> what decodes it (for logging); empty when unavailable.
        decode: Fills ``job.out``; may raise ``DecoderDeclined`` to hand the file to pydicom.
        colour: False: one-sample images only.
        needs_offset: Reads at the Pixel Data value offset (found from the header when not given).
        library_available: True when the backend's library is installed.
    """

    name: str
    syntaxes: Callable[[], dict[str, str]]
    decode: Callable[[DecodeJob], None]
    colour: bool = True
    needs_offset: bool = False
    library_available: Callable[[], bool] = _always

    @classmethod
    def from_backend(cls, module: ModuleType) -> Decoder:
        """The decoder of a backend module (see the module docstring)."""
        return cls(module.NAME, module.syntaxes, module.decode, module.COLOUR, module.NEEDS_OFFSET,
                   module.is_available)

    def is_available(self, transfer_syntax: str, samples_per_pixel: int = 1) -> bool:
        """True when this backend can decode ``transfer_syntax`` with ``samples_per_pixel`` on this machine."""
        if samples_per_pixel > 1 and not self.colour:
            return False
        return self.library_available() and transfer_syntax in self.syntaxes()


DECODERS: dict[str, Decoder] = {module.NAME: Decoder.from_backend(module) for module in BACKENDS}
FALLBACK = pydicom_decoder.NAME  # decodes what a fast backend declines


def decoder_for(transfer_syntax: str, samples_per_pixel: int = 1) -> str:
    """Name of the backend that decodes ``transfer_syntax`` here: "raw", "imagecodecs" or "pydicom".

    Args:
        transfer_syntax: The file's transfer syntax UID.
        samples_per_pixel: 1 for monochrome, 3 for colour.

    Raises:
        InputError: No backend can decode it (the message names the UID).
    """
    for name, decoder in DECODERS.items():
        if decoder.is_available(transfer_syntax, samples_per_pixel):
            return name
    if not transfer_syntax:
        raise InputError("no transfer syntax (file meta information missing): cannot decode pixel data")
    raise InputError(f"unsupported transfer syntax {syntax_name(transfer_syntax)}: no pixel data decoder "
                     f"installed for it")


def available_decoders() -> dict[str, str]:
    """``{"<uid> (<name>)": "<backend>: <library>"}`` for every transfer syntax decodable here (for logs)."""
    table = {}
    for decoder in DECODERS.values():
        for uid, what in decoder.syntaxes().items():
            table.setdefault(syntax_name(uid), f"{decoder.name}: {what}")
    return table


__all__ = ["BACKENDS", "DECODERS", "Decoder", "FALLBACK", "available_decoders", "decoder_for"]
