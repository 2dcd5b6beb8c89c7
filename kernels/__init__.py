"""Numba kernels of voxelpipe: plain loops over arrays with ``out`` arguments, no I/O.

Callers validate inputs in the Python wrappers of ``voxelpipe``; kernels trust them.
"""
from ._jit import has_cache  # the compiled-kernel cache: whether named kernels are in it (voxelpipe.ops.warmup)

__all__ = ["has_cache"]
