"""Series keys: the only identifiers that appear in output paths."""
from __future__ import annotations

import hashlib
import hmac
import os

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
