"""Kernels compiled ahead in background processes are the ones the demo's later steps then ask for.

A fresh interpreter with an empty cache folder runs the warm-up processes, waits for them, then runs the whole
demo in-process; numba's own per-kernel statistics must show every signature the masks, resample and project
steps used as a cache hit (none compiled again), and the demo's own warm-up must then start nothing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

PROGRAM = """
import json, sys
from voxelpipe.ops.warmup import start_warmup, wait_warmup
started = start_warmup([["polygon", "resample"], ["project"]])
wait_warmup(started)
again = start_warmup([["polygon", "resample"], ["project"]])
from voxelpipe.apps.demo import run_demo
run_demo(sys.argv[1], workers=1, progress=False)
from voxelpipe.kernels import polygon, project, resample
stats = {name: {"hits": sum(k.stats.cache_hits.values()), "misses": sum(k.stats.cache_misses.values())}
         for name, k in (("polygon", polygon.fill_polygons_3d), ("resample", resample.resample_separable),
                         ("project", project.project_into))}
print("STATS " + json.dumps({"started": len(started), "again": len(again), "kernels": stats}))
"""


def test_warmed_kernels_are_the_ones_the_demo_uses(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    done = subprocess.run([sys.executable, "-c", PROGRAM, str(tmp_path / "demo")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("STATS "))
    stats = json.loads(line[len("STATS "):])
    assert stats["started"] == 2 and stats["again"] == 0, stats
    for name, counts in stats["kernels"].items():
        assert counts["misses"] == 0 and counts["hits"] >= 1, (name, stats)
