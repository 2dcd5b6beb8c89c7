"""Series keys: the only identifiers that appear in output paths."""
from __future__ import annotations

import hashlib
import hmac
import os
import re

from voxelpipe.core.errors import InputError

SECRET_ENV = "VOXELPIPE_KEY_SECRET"
KEY_LENGTH = 16  # hex characters


def series_key(series_uid: str, secret: str | None = None) -> str:
    """Hex key of a SeriesInstanceUID: SHA-256, or HMAC-SHA-256 keyed with ``secret``
    (default: the ``VOXELPIPE_KEY_SECRET`` environment variable) for pseudonymisation."""
    secret = secret if secret is not None else os.environ.get(SECRET_ENV) or None
    data = series_uid.encode("ascii", "replace")
    if secret:
        digest = hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()
    else:
        digest = hashlib.sha256(data).hexdigest()
    return digest[:KEY_LENGTH]


def series_number_key(series_uid: str, series_number: str, secret: str | None = None) -> str:
    """Key of the files of one SeriesNumber inside a SeriesInstanceUID that holds several: :func:`series_key`
    of ``"<SeriesInstanceUID>\\<SeriesNumber>"`` (a backslash cannot occur in a UID, so no other series can
    get it)."""
    return series_key(f"{series_uid}\\{series_number}", secret)


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
