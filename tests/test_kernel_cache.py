"""Where compiled kernels are cached and the "compiling kernels" log line, seen from fresh processes.

Each test runs a small Python program in a subprocess (numba reads its cache folder once per process) that
compiles or loads one small kernel (``first_bad_vertex``) with logging configured at INFO, as the CLI does.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROGRAM = """
import logging, sys
import numpy as np
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
from voxelpipe.kernels.polygon import first_bad_vertex
assert first_bad_vertex(np.array([[0.0, 1.0], [2.0, np.nan]]), 10.0) == 1
print(first_bad_vertex.stats.cache_path)
"""

LINE = "voxelpipe INFO compiling kernels, first run only (cache: {})"


def run(env_updates: dict[str, str | None], program: str = PROGRAM) -> subprocess.CompletedProcess:
    """``program`` in a fresh interpreter with ``env_updates`` applied (None removes a variable)."""
    env = dict(os.environ)
    for name, value in env_updates.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done


def cache_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.suffix in (".nbi", ".nbc")]


def test_first_run_logs_compiling_once_and_second_run_loads(tmp_path):
    cache = tmp_path / "numba"
    cache.mkdir()
    env = {"NUMBA_CACHE_DIR": str(cache), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    first = run(env)
    assert first.stderr.count(LINE.format(cache)) == 1, first.stderr
    assert Path(first.stdout.strip()).is_relative_to(cache)
    assert any(p.name.startswith("polygon.first_bad_vertex") for p in cache_files(cache))
    second = run(env)
    assert "compiling kernels" not in second.stderr, second.stderr
    assert not (tmp_path / "xdg").exists()  # the user's NUMBA_CACHE_DIR wins


def test_cache_defaults_to_xdg_cache_home(tmp_path):
    xdg = tmp_path / "xdg"
    expected = xdg / "voxelpipe" / "numba"
    first = run({"NUMBA_CACHE_DIR": None, "XDG_CACHE_HOME": str(xdg)})
    assert LINE.format(expected) in first.stderr, first.stderr
    # numba's cache index and data went there, not next to the package's sources
    assert Path(first.stdout.strip()).is_relative_to(expected)
    assert any(p.name.startswith("polygon.first_bad_vertex") for p in cache_files(expected))
    second = run({"NUMBA_CACHE_DIR": None, "XDG_CACHE_HOME": str(xdg)})
    assert "compiling kernels" not in second.stderr, second.stderr


def test_unwritable_cache_folder_falls_back_to_temp_with_a_warning(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should go")
    temp = tmp_path / "temp"
    temp.mkdir()
    done = run({"NUMBA_CACHE_DIR": None, "XDG_CACHE_HOME": str(blocker), "TMPDIR": str(temp)})
    warnings = [line for line in done.stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 1 and str(blocker / "voxelpipe" / "numba") in warnings[0], done.stderr
    used = Path(done.stdout.strip())
    assert used.is_relative_to(temp) and str(used.parent) in warnings[0]
    assert cache_files(temp)


def test_cache_folder_applies_when_numba_was_imported_first(tmp_path):
    """numba reads NUMBA_CACHE_DIR when it is first imported; a program (or a pool's preload) that imported it
    before voxelpipe's kernels still caches them in voxelpipe's folder."""
    xdg = tmp_path / "xdg"
    done = run({"NUMBA_CACHE_DIR": None, "XDG_CACHE_HOME": str(xdg)}, "import numba\n" + PROGRAM)
    assert Path(done.stdout.strip()).is_relative_to(xdg / "voxelpipe" / "numba")
    assert cache_files(xdg / "voxelpipe" / "numba")


WORKER_PROGRAM = """
import logging, multiprocessing, sys
from voxelpipe.ops.polygon import fill_polygons
if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    triangle = [[[0, 0], [3, 0], [0, 3]]]
    child = multiprocessing.get_context("spawn").Process(target=fill_polygons, args=(triangle, (5, 5)))
    child.start()
    child.join()
    assert child.exitcode == 0
"""


def test_worker_process_without_logging_still_says_it_compiles(tmp_path):
    """A spawned worker (logging not configured there, as in the CLI's pool) writes the line to stderr itself."""
    cache = tmp_path / "numba"
    program = tmp_path / "program.py"  # spawn re-imports the main module, so it must be a file
    program.write_text(WORKER_PROGRAM)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    done = subprocess.run([sys.executable, str(program)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "compiling kernels, first run only" in line]
    assert len(lines) == 1 and lines[0].endswith(f"voxelpipe INFO compiling kernels, first run only (cache: {cache})")
