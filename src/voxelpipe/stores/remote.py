"""Reading converted outputs over URLs (``http(s)://``, ``s3://``, ``memory://``, ...) through fsspec.

Every function here takes a local path or a URL. A local path (or a ``file://`` URL, turned into its path) goes
through ``os`` and ``open`` exactly as before; fsspec is imported only when a URL is met, so the local path never
loads it. fsspec is the optional extra ``remote`` (``pip install "voxelpipe[remote]"``: fsspec, aiohttp and
requests for ``http(s)://``); ``s3://`` also needs ``s3fs``, ``gs://`` ``gcsfs``, and so on (whatever fsspec needs
for the protocol).

What opens over a URL (see :func:`open_url_group` and :func:`voxelpipe.stores.volumes.open_volume`):

- ``<key>.zarr`` folders: zarr's ``FsspecStore`` (read-only), read lazily chunk by chunk;
- ``<key>.zarr.zip`` and ``<key>.h5``: read lazily through a seekable fsspec file (an HTTP server must answer
  range requests);
- ``<key>.npz`` and ``<key>.nii(.gz)``: downloaded whole into memory (they are read whole locally too);
- ``<key>.zarr.sqlite``: not over a URL (SQLite reads a local file); copy it first.

Listing a folder over ``http(s)://`` works where the server returns an HTML index with links (Python's
``http.server``, nginx ``autoindex``); S3 and the memory filesystem list natively.
"""
from __future__ import annotations

import io
import os
import posixpath
import re
from urllib.parse import unquote, urlsplit

import zarr

from voxelpipe.core.errors import InputError
from voxelpipe.core.types import StoreKind
from voxelpipe.stores.registry import store_kind
from voxelpipe.stores.zarr_store import open_volume_group

__all__ = [
    "REMOTE_EXTRA",
    "REMOTE_KINDS",
    "exists",
    "is_url",
    "isdir",
    "isfile",
    "join",
    "listdir",
    "local_path",
    "mtime",
    "open_group",
    "open_binary",
    "read_bytes",
    "read_text",
    "relative",
    "require_fsspec",
    "url_filesystem",
    "url_zarr_store",
    "volume_exists",
]

REMOTE_EXTRA = "install voxelpipe[remote] (pip install 'voxelpipe[remote]', which brings fsspec and aiohttp)"
"""How to install what reading URLs needs (fsspec, aiohttp, requests)."""

REMOTE_KINDS = ".zarr, .zarr.zip, .h5, .npz, .nii.gz, .nii"
"""The volume kinds readable over a URL (``.zarr.sqlite`` is not)."""

# a scheme of two or more characters, so a Windows drive ("C:\\" or "C://") is never taken for a URL
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+://")


def is_url(path: str | os.PathLike) -> bool:
    """True when ``path`` is a URL (``scheme://...``), ``file://`` included."""
    return isinstance(path, str) and _URL.match(path) is not None


def local_path(path: str | os.PathLike) -> str | os.PathLike:
    """``path`` with a ``file://`` URL turned into its local path; anything else unchanged."""
    if isinstance(path, str) and path[:7].lower() == "file://":
        parts = urlsplit(path)
        if parts.netloc not in ("", "localhost"):
            raise InputError(f"{path}: a file:// URL names a local file (file:///path); host {parts.netloc!r}")
        return unquote(parts.path)
    return path


def require_fsspec(url: str):
    """The fsspec module, imported now (deliberately lazy: an optional extra, kept off the local path).

    Raises:
        InputError: fsspec is not installed; the message names the extra to install.
    """
    try:
        import fsspec  # noqa: PLC0415 - optional extra, imported only for URLs
    except ImportError:
        raise InputError(f"{url}: reading a URL needs fsspec: {REMOTE_EXTRA} (and s3fs for s3://)") from None
    return fsspec


def url_filesystem(url: str):
    """(fsspec filesystem, path within it) of ``url``.

    Raises:
        InputError: fsspec missing, or the protocol's package missing (e.g. s3fs for ``s3://``).
    """
    fsspec = require_fsspec(url)
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        raise InputError(f"{url}: {exc}") from None
    except ValueError as exc:  # an unknown protocol
        raise InputError(f"{url}: not a URL fsspec can open ({exc})") from None


def join(base: str | os.PathLike, *names: str) -> str:
    """``base/name/...``: ``os.path.join`` for a local path, ``/``-joined for a URL."""
    if is_url(base):
        return posixpath.join(str(base).rstrip("/"), *names)
    return os.path.join(base, *names)


def relative(path: str, base: str) -> str:
    """``path`` relative to ``base`` (``os.path.relpath`` locally; the part after ``base/`` of a URL)."""
    if is_url(path):
        prefix = str(base).rstrip("/") + "/"
        return path[len(prefix):] if path.startswith(prefix) else path
    return os.path.relpath(path, base)


def exists(path: str | os.PathLike) -> bool:
    """True when the file or folder at ``path`` (local or URL) exists."""
    if is_url(path):
        fs, inner = url_filesystem(str(path))
        return bool(fs.exists(inner))
    return os.path.exists(path)


def volume_exists(path: str | os.PathLike) -> bool:
    """True when the volume at ``path`` (local or URL) exists. A ``.zarr`` folder at a URL is found by its
    ``zarr.json``, so servers that answer nothing for a folder itself (static hosting, S3 over HTTP) do too."""
    if is_url(path) and str(path).rstrip("/").endswith(".zarr"):
        return exists(join(path, "zarr.json")) or exists(path)
    return exists(path)


def isdir(path: str | os.PathLike) -> bool:
    """True when ``path`` (local or URL) is a folder."""
    if is_url(path):
        fs, inner = url_filesystem(str(path))
        return bool(fs.isdir(inner))
    return os.path.isdir(path)


def isfile(path: str | os.PathLike) -> bool:
    """True when ``path`` (local or URL) is a file."""
    if is_url(path):
        fs, inner = url_filesystem(str(path))
        try:
            return bool(fs.isfile(inner))
        except (OSError, ValueError):
            return False
    return os.path.isfile(path)


def mtime(path: str | os.PathLike) -> float | None:
    """Modification time of ``path`` (seconds since the epoch), or None when a URL's server does not say."""
    if not is_url(path):
        return os.path.getmtime(path)
    fs, inner = url_filesystem(str(path))
    try:
        modified = fs.modified(inner)
    except (NotImplementedError, OSError, ValueError, KeyError):
        return None
    return modified.timestamp() if modified is not None else None


def listdir(path: str | os.PathLike) -> list[tuple[str, bool]]:
    """(name, is folder) of every entry of the folder ``path`` (local or URL), sorted by name."""
    if not is_url(path):
        with os.scandir(path) as entries:
            return sorted((entry.name, entry.is_dir()) for entry in entries)
    fs, inner = url_filesystem(str(path))
    found = []
    for entry in fs.ls(inner.rstrip("/") + ("/" if str(path).startswith(("http://", "https://")) else ""),
                       detail=True):
        name = unquote(entry["name"].rstrip("/").rsplit("/", 1)[-1])
        if name:
            found.append((name, entry.get("type") == "directory"))
    return sorted(set(found))


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole file at ``path`` (local or URL)."""
    if is_url(path):
        fs, inner = url_filesystem(str(path))
        try:
            return fs.cat_file(inner)
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
    with open(path, "rb") as fh:
        return fh.read()


def read_text(path: str | os.PathLike) -> str:
    """The UTF-8 text file at ``path`` (local or URL)."""
    return read_bytes(path).decode("utf-8")


def open_binary(path: str | os.PathLike, whole: bool = False):
    """A readable binary file object of ``path``: the local file, or a seekable fsspec file of a URL.

    Args:
        path: a local path or a URL.
        whole: read a URL's file into memory at once (``io.BytesIO``) instead of by ranges.

    Raises:
        InputError: no such file; an HTTP server that does not answer range requests (``whole`` False).
    """
    if not is_url(path):
        return open(path, "rb")
    if whole:
        return io.BytesIO(read_bytes(path))
    fs, inner = url_filesystem(str(path))
    try:
        handle = fs.open(inner, "rb")
        handle.seek(0, os.SEEK_END)  # fails now rather than halfway through a read when ranges are refused
        handle.seek(0)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except ValueError as exc:
        raise InputError(f"{path}: the server cannot serve parts of the file ({exc}); lazily read formats "
                         "(.zarr.zip, .h5) need HTTP range requests") from None
    return handle


def url_zarr_store(url: str, zip_file: bool = False):
    """A read-only zarr ``FsspecStore`` of the Zarr folder (or, ``zip_file``, the ``.zarr.zip``) at ``url``.

    Raises:
        InputError: fsspec (or the protocol's package) missing, or no such store.
    """
    require_fsspec(url)
    from zarr.storage import FsspecStore  # noqa: PLC0415 - imports fsspec, kept off the local path

    if not volume_exists(url):
        raise InputError(f"{url}: no such volume")
    target = f"zip::{url}" if zip_file else url.rstrip("/")
    try:
        return FsspecStore.from_url(target, read_only=True)
    except ImportError as exc:
        raise InputError(f"{url}: {exc}") from None
    except ValueError as exc:
        raise InputError(f"{url}: cannot open as a Zarr store ({exc}); lazily read formats (.zarr.zip) need "
                         "HTTP range requests") from None


def open_group(path: str | os.PathLike) -> zarr.Group:
    """A stored Zarr volume's group, read-only: a local path through
    :func:`voxelpipe.stores.zarr_store.open_volume_group`, a URL through :func:`url_zarr_store`.

    Raises:
        InputError: a ``.zarr.sqlite`` URL (SQLite needs a local file), fsspec missing, or no such volume.
        StoreError: a name that is not a Zarr volume's.
    """
    path = local_path(path)
    if not is_url(path):
        return open_volume_group(os.fspath(path))
    kind = store_kind(path)
    if kind == StoreKind.SQLITE:
        raise InputError(f"{path}: a .zarr.sqlite volume cannot be read over a URL (SQLite reads a local file); "
                         f"copy it locally first. Over a URL: {REMOTE_KINDS}")
    return zarr.open_group(store=url_zarr_store(path, zip_file=kind == StoreKind.ZIP), mode="r")
