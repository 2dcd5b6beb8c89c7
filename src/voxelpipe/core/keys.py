"""Series keys: the only identifiers that appear in output paths."""
from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Hashable, Mapping
from typing import TypeVar

from voxelpipe.core.errors import InputError

SECRET_ENV = "VOXELPIPE_KEY_SECRET"
KEY_LENGTH = 16  # hex characters
Name = TypeVar("Name", bound=Hashable)


def series_key(series_uid: str, secret: str | None = None) -> str:
    """Hex key of a SeriesInstanceUID: the first 16 hex digits of SHA-256 of its exact UTF-8 bytes, or of
    HMAC-SHA-256 keyed with ``secret`` (default: the ``VOXELPIPE_KEY_SECRET`` environment variable) for
    pseudonymisation.

    A valid UID is ASCII, and its UTF-8 bytes are its ASCII bytes. A UID that is not (a non-ASCII character, a
    lone surrogate from undecodable bytes) is hashed exactly too, so two UIDs that differ anywhere get different
    keys (up to the truncation to 16 hex digits; :func:`key_clashes` finds those)."""
    secret = secret if secret is not None else os.environ.get(SECRET_ENV) or None
    data = text_bytes(series_uid)
    if secret:
        digest = hmac.new(text_bytes(secret), data, hashlib.sha256).hexdigest()
    else:
        digest = hashlib.sha256(data).hexdigest()
    return digest[:KEY_LENGTH]


def text_bytes(text: str) -> bytes:
    """The UTF-8 bytes of ``text``; a lone surrogate (Python's stand-in for an undecodable byte) is encoded as
    its own 3-byte sequence, which no valid character has, so different strings always give different bytes."""
    return text.encode("utf-8", "surrogatepass")


def series_number_key(series_uid: str, series_number: str, secret: str | None = None) -> str:
    """Key of the files of one SeriesNumber inside a SeriesInstanceUID that holds several: :func:`series_key`
    of ``"<SeriesInstanceUID>\\<SeriesNumber>"`` (a backslash cannot occur in a UID, so no other series can
    get it)."""
    return series_key(f"{series_uid}\\{series_number}", secret)


def key_clashes(keys: Mapping[Name, str]) -> dict[str, list[Name]]:
    """The keys that more than one name gets: ``keys`` maps each name (a SeriesInstanceUID; a UID and a
    SeriesNumber) to its key; returns ``{key: [its names, in the order given]}`` for every key shared by several."""
    names_of: dict[str, list[Name]] = {}
    for name, key in keys.items():
        names_of.setdefault(key, []).append(name)
    return {key: names for key, names in names_of.items() if len(names) > 1}


SUBJECT_PATIENT_HEX = 7
SUBJECT_STUDY_HEX = 3


def _digest(text: str, secret: str | None) -> str:
    data = text.encode("utf-8")
    if secret:
        return hmac.new(secret.encode("utf-8"), data, hashlib.sha256).hexdigest()
    return hashlib.sha256(data).hexdigest()


def subject_id(patient: str, study_uid: str, secret: str | None = None) -> str:
    """Pseudonymous subject ID of one study: the first 7 hex characters of SHA-256(patient) followed by the
    last 3 of SHA-256(study_uid) (UTF-8 bytes), e.g. ``3f9a0c1e7b``. With ``secret`` (default: the
    ``VOXELPIPE_KEY_SECRET`` environment variable) both digests are HMAC-SHA-256 keyed with it, so the IDs
    cannot be recomputed from a patient list without the secret."""
    secret = secret if secret is not None else os.environ.get(SECRET_ENV) or None
    return _digest(str(patient), secret)[:SUBJECT_PATIENT_HEX] + _digest(str(study_uid), secret)[-SUBJECT_STUDY_HEX:]


SERIES_KEY_PATTERN = re.compile(rf"[0-9a-f]{{{KEY_LENGTH}}}(_[1-9][0-9]*)?")
"""Every series key voxelpipe builds: :func:`series_key` / :func:`series_number_key` (``KEY_LENGTH`` lowercase
hex), optionally ``_<N>`` (N from 1) for the parts of a series split by orientation or size."""


def is_series_key(text: object) -> bool:
    """True when ``text`` is a series key of a form voxelpipe builds (see :data:`SERIES_KEY_PATTERN`): the only
    names that may become a file name in an output folder."""
    return isinstance(text, str) and SERIES_KEY_PATTERN.fullmatch(text) is not None


def check_series_key(text: object, where: str = "") -> str:
    """``text`` when it is a series key (:func:`is_series_key`).

    Args:
        text: the value to check (e.g. a ``series_key`` cell of a manifest).
        where: where the value was read, for the message (``"series_all.csv row 3"``).

    Raises:
        InputError: not a series key; the message names ``where`` and the value.
    """
    if not is_series_key(text):
        place = f"{where}: " if where else ""
        raise InputError(f"{place}series key {text!r} is not a voxelpipe series key ({KEY_LENGTH} lowercase hex "
                         "digits, optionally _N for a part of a split series)")
    return text


PSEUDONYM_HEX = 32  # 128 bits of HMAC-SHA-256: text pseudonyms and the number of a pseudonymous UID
UID_ROOT = "2.25."  # UIDs made of a 128-bit number (ISO/IEC 9834-8), as DICOM allows


def require_secret(secret: str | None = None, what: str = "--phi pseudonymise") -> str:
    """``secret``, else the ``VOXELPIPE_KEY_SECRET`` environment variable.

    Raises:
        InputError: neither is set: an unkeyed hash of a patient name or ID is re-identifiable by hashing a list
            of candidate names, so pseudonyms are never made without a secret.
    """
    secret = secret if secret is not None else os.environ.get(SECRET_ENV) or None
    if not secret:
        raise InputError(f"{what} needs a secret key: set {SECRET_ENV} (a plain hash of a name or ID can be "
                         "reversed by hashing a list of candidates)")
    return secret


def _keyed(text: str, secret: str) -> str:
    return hmac.new(text_bytes(secret), text_bytes(text), hashlib.sha256).hexdigest()


def uid_pseudonym(uid: str, secret: str) -> str:
    """The pseudonym of a UID: ``2.25.`` followed by the decimal value of the first 128 bits of HMAC-SHA-256 of
    the UID's UTF-8 bytes keyed with ``secret`` (at most 39 digits, so at most 44 characters, within DICOM's 64).
    The same UID always gets the same pseudonym; the first 16 hex digits of that 128-bit number are the UID's
    :func:`series_key` with the same secret."""
    return UID_ROOT + str(int(_keyed(uid, secret)[:PSEUDONYM_HEX], 16))


def text_pseudonym(text: str, secret: str) -> str:
    """The pseudonym of a text value (a name, an ID, a date): the first 32 hex digits (128 bits) of HMAC-SHA-256
    of its UTF-8 bytes keyed with ``secret``."""
    return _keyed(text, secret)[:PSEUDONYM_HEX]
