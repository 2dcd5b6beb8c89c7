"""Numba compile time for the benchmarks: kept out of the timings, measured and reported on its own."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from types import ModuleType


def cold_compile_seconds(code: str, timeout: float = 900) -> float | None:
    """Run ``code`` (which prints the seconds of its first kernel call last) in a fresh interpreter with an empty
    numba cache; None when it fails."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              timeout=timeout)
    if done.returncode != 0:
        return None
    return float(done.stdout.strip().splitlines()[-1])


def first_call(call: Callable[[], object], dispatcher, info: dict, cold_code: str | None) -> dict:
    """Time ``call()`` (the process's first use of ``dispatcher``: a compile or a disk-cache load) into ``info``;
    with ``cold_code`` also a cold compile in a fresh interpreter."""
    t0 = time.perf_counter()
    call()
    info["first_call_seconds"] = time.perf_counter() - t0
    info["loaded_from_disk_cache"] = sum(dispatcher.stats.cache_hits.values()) > 0
    if cold_code is not None:
        info["cold_compile_seconds"] = cold_compile_seconds(cold_code)
    return info


def loaded_from_disk_cache(*modules: ModuleType) -> bool:
    """Whether any numba dispatcher (jitted function) of ``modules`` was loaded from numba's on-disk cache."""
    return any(sum(obj.stats.cache_hits.values()) > 0 for module in modules for obj in vars(module).values()
               if hasattr(obj, "stats") and hasattr(obj, "py_func"))


def compile_line(info: dict, what: str = "") -> str:
    """The report line for ``first_call``'s figures (``what``: what the first call ran, when not one kernel)."""
    cold = info.get("cold_compile_seconds")
    return (f"numba (not timed above): {what + ', ' if what else ''}first call in this process "
            f"{info['first_call_seconds']:.2f} s (loaded from disk cache: {info['loaded_from_disk_cache']}); "
            "cold compile with an empty cache: " + (f"{cold:.1f} s" if cold is not None else "not measured"))


class Clock:
    """Lap times (s) by step name for a benchmark's per-step report; repeated names add up."""

    def __init__(self):
        self.steps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.steps[name] = self.steps.get(name, 0.0) + now - self._t
        self._t = now
