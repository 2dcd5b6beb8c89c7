"""What convert does with a series whose slices are unevenly spaced or gantry-tilted (``--uneven``, ``--tilt``).

A plain series (even steps, no tilt) is left alone: it streams slab by slab. Otherwise :func:`decide` says, from
the sorted slice positions alone, whether the whole stack must be regridded (``--uneven resample``, ``--tilt
correct``; see :mod:`voxelpipe.ops.regrid` for the grid and the interpolation), stored as acquired with a
geometry that says so (``keep``), or refused (``--uneven fail``).

Kept geometries:

* uneven, ``keep``: ``uniform: false``; ``spacing[0]``, ``affine`` and ``affine_ras`` are ``null`` in the attrs
  (no uniform step is claimed); ``slice_positions`` (mm along the normal) is the truth, slice by slice.
* tilted, ``keep``: ``sheared: true``; direction column 0 is the unit vector of the step between slice origins
  (not the plane normal, which is ``slice_normal``), ``spacing[0]`` the length of that step, so
  ``affine = direction · diag(spacing) + origin`` holds and ``SetDirection/SetSpacing/SetOrigin`` rebuild it in
  SimpleITK (a non-orthogonal direction, which ITK images accept and NIfTI files cannot hold).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from voxelpipe.core.errors import InputError
from voxelpipe.core.geometry import TILT_TOLERANCE_DEG, Geometry, Steps, signed_tilt_degrees, slice_normal
from voxelpipe.core.types import TiltPolicy, UnevenPolicy
from voxelpipe.ops.regrid import RegridPlan, plan_regrid

__all__ = ["GeometryDecision", "decide", "REGRID_COLUMNS"]

REGRID_COLUMNS = ["uniform", "sheared", "regrid"]  # convert summary columns this module fills


@dataclass
class GeometryDecision:
    """The geometry the volume is written with, the regrid to run first (None: stream as is), extra attrs and
    the summary-row fields (``REGRID_COLUMNS``)."""

    geometry: Geometry
    regrid: RegridPlan | None = None
    attrs: dict = field(default_factory=dict)
    row: dict = field(default_factory=dict)


def decide(ipps: np.ndarray, iop: Sequence[float], pixel_spacing: Sequence[float], geometry: Geometry,
           uneven: UnevenPolicy, tilt: TiltPolicy) -> GeometryDecision:
    """Apply the ``uneven`` / ``tilt`` policies to one series' slices ``ipps`` ((n, 3) LPS mm, ascending along
    the normal) and its plain ``geometry``.

    Raises:
        InputError: ``--uneven fail`` and the steps are uneven (the reason lists the steps), or uneven steps
            with ``--uneven resample`` and ``--tilt keep`` (a sheared stack is not put on an even grid).
    """
    ipps = np.asarray(ipps, dtype=np.float64)
    n = len(ipps)
    row = {"uniform": True, "sheared": False, "regrid": ""}
    if n < 2:
        return GeometryDecision(geometry, row=row)
    normal = slice_normal(iop)
    steps = Steps(ipps @ normal)
    angle = signed_tilt_degrees(ipps[0], ipps[-1], iop)
    tilted = abs(angle) > TILT_TOLERANCE_DEG
    uneven_steps = steps.needs_even_grid
    if not uneven_steps and not tilted:
        return GeometryDecision(geometry, row=row)
    attrs: dict = {"slice_steps": steps.describe(), "gantry_tilt_deg": round(angle, 4)}
    if uneven_steps and uneven == UnevenPolicy.FAIL:
        raise InputError(f"uneven slice spacing (steps {steps.describe()}; regular step {steps.regular:g} mm) "
                         "and --uneven fail: no volume written")
    resample = uneven_steps and uneven == UnevenPolicy.RESAMPLE
    straighten = tilted and tilt == TiltPolicy.CORRECT
    if resample and tilted and not straighten:
        raise InputError(f"uneven slice spacing (steps {steps.describe()}) in a gantry-tilted series "
                         f"({angle:.3g} deg) with --tilt keep: an even grid needs --tilt correct, or use "
                         "--uneven keep")
    rows, columns = geometry.shape[1], geometry.shape[2]
    if resample or straighten:
        plan = plan_regrid(ipps, iop, pixel_spacing, rows, columns, even=resample, straight=straighten)
        done = []
        if resample:
            done.append(f"even grid {plan.shape[0]} x {plan.geometry.spacing[0]:.6g} mm")
        if straighten:
            done.append(f"tilt {angle:.3g} deg corrected")
        row.update(uniform=plan.geometry.uniform, regrid="; ".join(done))
        attrs["regrid"] = {"rule": row["regrid"], "source_slice_positions": (ipps @ normal).tolist(),
                           "source_shape": [n, rows, columns], "interpolation": "linear",
                           "fill": "minimum of the stack"}
        return GeometryDecision(plan.geometry, plan, attrs, row)
    kept = _kept_geometry(ipps, normal, geometry, uniform=not uneven_steps, sheared=tilted)
    row.update(uniform=kept.uniform, sheared=kept.sheared)
    if tilted:
        attrs["slice_normal"] = normal.tolist()
    return GeometryDecision(kept, None, attrs, row)


def _kept_geometry(ipps: np.ndarray, normal: np.ndarray, geometry: Geometry, *, uniform: bool,
                   sheared: bool) -> Geometry:
    """The geometry of slices stored as acquired (module docstring, kept geometries)."""
    n = len(ipps)
    direction = np.array(geometry.direction, dtype=np.float64)
    spacing = np.array(geometry.spacing, dtype=np.float64)
    affine = np.array(geometry.affine, dtype=np.float64)
    if sheared:
        step = (ipps[-1] - ipps[0]) / (n - 1)
        spacing[0] = float(np.linalg.norm(step))
        direction[:, 0] = step / spacing[0]
        affine[:3, 0] = step
    if not uniform:
        spacing[0] = np.nan
        affine[:3, 0] = np.nan
    return Geometry(geometry.shape, spacing, ipps[0], direction, ipps @ normal, affine, uniform=uniform,
                    sheared=sheared)
