"""Numba kernels of voxelpipe: plain loops over arrays with ``out`` arguments, no I/O.

Callers validate inputs in the Python wrappers of ``voxelpipe``; kernels trust them.
"""
