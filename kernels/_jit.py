"""The one place for numba options used by every kernel, where compiled kernels are cached, and the log line
that says when they are being compiled.

- ``cache=True``: compiled machine code is cached on disk, in ``NUMBA_CACHE_DIR``. When the user has not set
  it, this module sets it (before numba reads its configuration) to ``$XDG_CACHE_HOME/voxelpipe/numba``
  (``~/.cache/voxelpipe/numba`` when ``XDG_CACHE_HOME`` is unset), so the cache never depends on the package
  folder being writable (site-packages often is not, and numba would then cache elsewhere or not at all).
  If that folder cannot be created or written, a folder under the system temp folder is used, with a warning.
  Worker processes inherit the variable, so they share the cache.
- ``nogil=True``: kernels release the GIL so threads can overlap them with I/O.
- fastmath is restricted to flags that keep NaN and infinity semantics intact: no ``nnan``/``ninf``
  (plain ``fastmath=True`` would let the compiler assume there are no NaNs, which breaks NaN handling).
  ``contract`` is left out too: fusing ``a * b + c`` into one FMA rounds once instead of twice, so float32
  results could differ in the last bit from numpy/pydicom references (``apply_modality_lut``).

The first time a process compiles a kernel (rather than loading it from the cache) it logs, once, at INFO on
the ``voxelpipe`` logger: ``compiling kernels, first run only (cache: DIR)``.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import tempfile
import time

log = logging.getLogger("voxelpipe")

CACHE_ENV = "NUMBA_CACHE_DIR"
COMPILE_MESSAGE = "compiling kernels, first run only (cache: %s)"


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/voxelpipe/numba``, or ``~/.cache/voxelpipe/numba`` when ``XDG_CACHE_HOME`` is unset,
    empty or relative (as the XDG base directory specification says)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "voxelpipe", "numba")


def writable_dir(path: str) -> bool:
    """Create ``path`` if needed and check that a file can be written in it."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError:
        return False
    return True


def configure_cache_dir() -> str:
    """Set ``NUMBA_CACHE_DIR`` unless the user did (see the module docstring); return the folder in effect."""
    chosen = os.environ.get(CACHE_ENV, "")
    if chosen:
        return chosen
    chosen = default_cache_dir()
    if not writable_dir(chosen):
        user = os.getuid() if hasattr(os, "getuid") else "user"
        fallback = os.path.join(tempfile.gettempdir(), f"voxelpipe-{user}", "numba")
        log.warning("compiled kernels cache: %s cannot be written; using %s (set %s to choose a folder)",
                    chosen, fallback, CACHE_ENV)
        chosen = fallback
    os.environ[CACHE_ENV] = chosen
    return chosen


CACHE_DIR = configure_cache_dir()

import numba  # noqa: E402  (after NUMBA_CACHE_DIR is set: numba reads it when its config is first imported)
from numba.core import config as numba_config  # noqa: E402
from numba.core import event as numba_event  # noqa: E402

if numba_config.CACHE_DIR != CACHE_DIR:
    numba_config.reload_config()  # numba was imported before the variable was set: make it read it now


def log_compiling(cache_dir: str) -> None:
    """Log :data:`COMPILE_MESSAGE` at INFO. A pool worker process whose logging nobody configured (the CLI
    configures only the main process) would drop INFO lines, so there it is written to stderr, which workers
    share with the main process, in the CLI's log format."""
    if log.hasHandlers() or multiprocessing.parent_process() is None:
        log.info(COMPILE_MESSAGE, cache_dir)
        return
    now = time.time()
    stamp = f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))},{int(now * 1000) % 1000:03d}"
    sys.stderr.write(f"{stamp} {log.name} INFO {COMPILE_MESSAGE % cache_dir}\n")
    sys.stderr.flush()


class CompileLog(numba_event.Listener):
    """Logs :data:`COMPILE_MESSAGE` the first time a kernel of this package is compiled (not loaded from the
    cache) in this process. numba broadcasts ``numba:compile`` only for real compilations."""

    def __init__(self) -> None:
        self.logged = False

    def on_start(self, event: numba_event.Event) -> None:
        if self.logged:
            return
        dispatcher = (event.data or {}).get("dispatcher")
        module = getattr(getattr(dispatcher, "py_func", None), "__module__", "") or ""
        if module.startswith(__package__ or "voxelpipe.kernels"):
            self.logged = True
            log_compiling(os.environ.get(CACHE_ENV, CACHE_DIR))

    def on_end(self, event: numba_event.Event) -> None:
        pass


def has_cache(*kernels: str) -> bool:
    """Whether the cache folder holds a compiled entry (of any signature) of every kernel named
    ``"<module>.<function>"`` (e.g. ``"project.project_into"``): numba's index files
    ``<module>.<function>-<line>.*.nbi``."""
    folder = os.environ.get(CACHE_ENV, CACHE_DIR)
    if not os.path.isdir(folder):
        return False
    names = {entry.name for sub in os.scandir(folder) if sub.is_dir() for entry in os.scandir(sub.path)}
    return all(any(n.startswith(kernel + "-") and n.endswith(".nbi") for n in names) for kernel in kernels)


COMPILE_LOG = CompileLog()
numba_event.register("numba:compile", COMPILE_LOG)

SAFE_FASTMATH = frozenset({"nsz", "arcp", "afn", "reassoc"})

JIT_OPTIONS = {"cache": True, "nogil": True, "fastmath": set(SAFE_FASTMATH)}


def jit(*args, parallel: bool = False, exact: bool = False, **kwargs):
    """``numba.njit`` with the project's options; ``parallel=True`` enables ``prange``; ``exact=True`` turns
    fastmath off entirely, for kernels that must round exactly like a reference (the polygon crossing test:
    ``arcp`` would turn a division into a multiply by a reciprocal, ``reassoc`` would regroup products)."""
    options = dict(JIT_OPTIONS, parallel=parallel, **kwargs)
    if exact:
        options["fastmath"] = False
    return numba.njit(*args, **options)
