"""Compiling kernels ahead of the steps that need them, in background processes.

On a first run (an empty Numba cache) every kernel is compiled when a step first calls it, on one core, while the
run waits. :func:`start_warmup` compiles the kernels of later steps in spawned processes instead, each writing
them to the shared cache, while the run does its earlier work; :func:`wait_warmup` joins them before those steps,
which then load the kernels from the cache. Each warm-up calls the step's operation on a tiny input of the
types the pipelines pass, so the compiled signatures are the ones the steps will ask for.
"""
from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Sequence

import numpy as np

from voxelpipe.core.geometry import Geometry
from voxelpipe.core.volume import Volume
from voxelpipe.kernels import has_cache
from voxelpipe.ops.polygon import fill_polygons_volume
from voxelpipe.ops.projection import project
from voxelpipe.ops.resample import resample

log = logging.getLogger("voxelpipe")


def _volume(dtype) -> Volume:
    array = (np.arange(6 * 12 * 10) % 97).astype(dtype).reshape(6, 12, 10)
    return Volume(array, Geometry(array.shape, (2.5, 0.8, 0.8), (0.0, 0.0, 0.0), np.eye(3)))


def _polygon() -> None:
    square = np.array([[1.0, 1.0], [1.0, 8.0], [9.0, 8.0], [9.0, 1.0]])
    fill_polygons_volume([square, square], [0, 3], (6, 12, 10))


def _resample() -> None:
    resample(_volume(np.int16), spacing=1.0)
    resample(_volume(np.uint8), spacing=1.0, order="nearest")


def _project() -> None:
    volume = _volume(np.int16)
    project(volume, [0.0, 90.0], mask=(volume.array > 40).astype(np.uint8))


# step -> (warm-up, the kernels it compiles as "<module>.<function>")
STEPS: dict[str, tuple[Callable[[], None], tuple[str, ...]]] = {
    "polygon": (_polygon, ("polygon.fill_polygons_3d",)),
    "resample": (_resample, ("resample.resample_separable",)),
    "project": (_project, ("project.project_into",)),
}


def warm_up(steps: Sequence[str]) -> None:
    """Compile (or load) the kernels of ``steps`` (names of :data:`STEPS`) in this process."""
    for step in steps:
        STEPS[step][0]()


def start_warmup(groups: Sequence[Sequence[str]]) -> list[multiprocessing.Process]:
    """Compile the kernels of each group of steps in its own spawned process, unless they are all cached.

    Args:
        groups: Step names (keys of :data:`STEPS`) per background process.

    Returns:
        The started processes (none when every kernel is cached); pass them to :func:`wait_warmup`.
    """
    context = multiprocessing.get_context("spawn")
    started = []
    for group in groups:
        if all(has_cache(*STEPS[step][1]) for step in group):
            continue
        process = context.Process(target=warm_up, args=(list(group),), daemon=True,
                                  name=f"voxelpipe-warmup-{'-'.join(group)}")
        process.start()
        started.append(process)
    if started:
        log.info("compiling the later steps' kernels in %d background process(es)", len(started))
    return started


def wait_warmup(processes: Sequence[multiprocessing.Process], timeout: float = 300.0) -> None:
    """Wait for the warm-up processes (a failed one only means the step compiles its kernels itself)."""
    for process in processes:
        process.join(timeout)
        if process.exitcode not in (0, None):
            log.debug("kernel warm-up %s exited %s", process.name, process.exitcode)


__all__ = ["STEPS", "start_warmup", "wait_warmup", "warm_up"]
