"""The one place for numba options used by every kernel.

- ``cache=True``: compiled machine code is cached on disk next to the module (or in NUMBA_CACHE_DIR).
- ``nogil=True``: kernels release the GIL so threads can overlap them with I/O.
- fastmath is restricted to flags that keep NaN and infinity semantics intact: no ``nnan``/``ninf``
  (plain ``fastmath=True`` would let the compiler assume there are no NaNs, which breaks NaN handling).
  ``contract`` is left out too: fusing ``a * b + c`` into one FMA rounds once instead of twice, so float32
  results could differ in the last bit from numpy/pydicom references (``apply_modality_lut``).
"""
from __future__ import annotations

import numba

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
