"""One run per output folder: an exclusive lock on ``<folder>/.voxelpipe.lock`` held while a run writes there
(the shards of one run share it and each locks ``.voxelpipe-<shard>.lock``: see :func:`output_lock`).

The lock is ``fcntl.flock`` (exclusive, non-blocking) on the lock file, so the operating system releases it when
the run ends in any way, ``kill -9`` included: a lock file left behind by a dead run never blocks the next one.
While held, the file says who holds it (pid, host, command, start time in UTC) for the message a second run
gets. A process may take the lock of a folder it already holds, or of a folder inside one it holds (nested calls,
e.g. ``convert`` running ``scan`` into ``OUT/manifest``): the inner call is a no-op.
"""
from __future__ import annotations

import errno
import fcntl
import functools
import glob
import inspect
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from voxelpipe.core.errors import InputError

__all__ = ["LOCK_NAME", "OutputBusyError", "OutputNotWritableError", "holds_alone", "locks_output", "output_lock",
           "prepare_output_folder"]

log = logging.getLogger("voxelpipe")

LOCK_NAME = ".voxelpipe.lock"
SHARD_LOCK = ".voxelpipe-{shard}.lock"
SHARD_LOCK_GLOB = ".voxelpipe-*.lock"
F = TypeVar("F", bound=Callable)
_HELD: dict[tuple[str, str | None], int] = {}  # (real path, shard) locked by this process -> its pid


class OutputBusyError(InputError):
    """Another run holds the output folder's lock (a bad request: exit 2)."""


class OutputNotWritableError(InputError):
    """The output folder cannot be created or written (a bad request: exit 2)."""


def prepare_output_folder(folder: str | os.PathLike) -> str:
    """Create ``folder`` (and its parents) if needed; returns it as a string.

    Raises:
        OutputNotWritableError: it cannot be created (permissions, a file in the way, read-only file system).
    """
    folder = os.fspath(folder)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise OutputNotWritableError(f"{folder}: cannot create the output folder ({exc.strerror or exc})") from None
    return folder


def _holder(path: str) -> str:
    """Who holds the lock file ``path``, from what it says ('' when it says nothing)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            fields = dict(line.split("=", 1) for line in fh.read().splitlines() if "=" in line)
    except OSError:
        fields = {}
    if not fields.get("pid"):
        return ""
    text = f"pid {fields['pid']} on {fields.get('host', '?')}"
    if fields.get("started"):
        text += f", started {fields['started']}"
    if fields.get("command"):
        text += f": {fields['command']}"
    return text


def _is_held(path: str) -> bool:
    """True when another process holds a lock on ``path`` (probed with a shared lock taken and dropped)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _holders(folder: str, path: str) -> str:
    """Who holds ``path``: its own words, else the shards of the folder whose lock files are held."""
    text = _holder(path)
    if text:
        return text
    shards = [_holder(p) for p in sorted(glob.glob(os.path.join(glob.escape(folder), SHARD_LOCK_GLOB)))
              if _is_held(p)]
    shards = [s for s in shards if s]
    return "sharded runs: " + "; ".join(shards) if shards else "another process"


def _take(fd: int, mode: int, folder: str, path: str) -> None:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise OutputNotWritableError(f"{folder}: cannot lock the output folder ({exc.strerror})") from None
        raise OutputBusyError(f"{folder}: another voxelpipe run is writing into this output folder "
                              f"({_holders(folder, path)}); wait for it to end or choose another output folder") \
            from None


def _open(folder: str, path: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise OutputNotWritableError(f"{folder}: the output folder is not writable ({exc.strerror or exc})") from None


def _write_holder(fd: int, path: str, command: str) -> None:
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = (f"pid={os.getpid()}\nhost={socket.gethostname()}\nstarted={started}\ncommand={command}\n"
            f"argv={' '.join(sys.argv)}\n")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode("utf-8", "replace"), 0)
    except OSError as exc:  # disk full: the lock holds all the same, only its message is poorer
        log.debug("%s: could not write the lock holder (%s)", path, exc)


@contextmanager
def output_lock(folder: str | os.PathLike, command: str, shard: str | None = None) -> Iterator[str]:
    """Hold the lock of output folder ``folder`` (created if needed) for the ``with`` block; yields the folder.

    A run that writes the whole folder takes ``.voxelpipe.lock`` exclusively. The shards of one run (``convert
    --shard-id``, or a scan shard file), which write disjoint outputs side by side, share it and each takes
    ``.voxelpipe-<shard>.lock`` exclusively: shards run together, but never beside a whole run nor twice.

    Args:
        folder: the run's output folder.
        command: the command taking it (written into the lock file for the message of a second run).
        shard: the name of the shard this run writes (its summary suffix), or None for the whole folder.

    Raises:
        OutputBusyError: another process holds it; the message names the folder and the holder's pid and host.
        OutputNotWritableError: the folder or its lock file cannot be created or written.
    """
    folder = prepare_output_folder(folder)
    real = os.path.realpath(folder)
    held = (real, shard)
    mine = [path for (path, _), pid in _HELD.items() if pid == os.getpid()]  # not a forked parent's
    if any(real == path or real.startswith(path + os.sep) for path in mine):
        yield folder  # this process holds the folder or one around it (convert's scan into OUT/manifest)
        return
    main_path = os.path.join(folder, LOCK_NAME)
    own_path = main_path if shard is None else os.path.join(folder, SHARD_LOCK.format(shard=shard))
    fds = [_open(folder, main_path)]
    try:
        _take(fds[0], fcntl.LOCK_EX if shard is None else fcntl.LOCK_SH, folder, main_path)
        if shard is not None:
            fds.append(_open(folder, own_path))
            _take(fds[1], fcntl.LOCK_EX, folder, own_path)
        _write_holder(fds[-1], own_path, command)
        _HELD[held] = os.getpid()
        try:
            yield folder
        finally:
            del _HELD[held]
            try:
                os.ftruncate(fds[-1], 0)
            except OSError:
                pass
    finally:
        for fd in reversed(fds):
            os.close(fd)  # releases the lock


def locks_output(command: str, parameter: str = "out") -> Callable[[F], F]:
    """Decorator: the call holds :func:`output_lock` of its argument ``parameter`` (an output folder) for its
    whole duration; a call whose ``parameter`` is None takes no lock.

    Args:
        command: the command name written into the lock file.
        parameter: the name of the decorated function's output-folder parameter.
    """

    def decorate(func: F) -> F:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def locked(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            folder = bound.arguments.get(parameter)
            if folder is None:
                return func(*args, **kwargs)
            with output_lock(folder, command):
                return func(*args, **kwargs)

        return locked  # type: ignore[return-value]

    return decorate


def holds_alone(folder: str | os.PathLike) -> bool:
    """True when this process holds ``folder``, or a folder around it, exclusively (a whole run's lock, not a
    shard's): nobody else is writing there, so leftovers of dead runs in it (temporary spool files) may go."""
    real = os.path.realpath(os.fspath(folder))
    return any(shard is None and pid == os.getpid() and (real == path or real.startswith(path + os.sep))
               for (path, shard), pid in _HELD.items())
