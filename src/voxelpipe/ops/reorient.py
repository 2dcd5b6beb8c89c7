"""Reorientation: an exact permutation/flip of a volume's axes with its geometry updated (no interpolation).

An axis code names, for array axes 0, 1, 2 in order, the patient direction toward which the index increases
(nibabel's convention applied to our arrays): ``reorient(v, "LAS")`` gives an array indexed (x, y, z) whose
index grows toward patient Left, Anterior, Superior — the layout NIfTI users expect. A DICOM axial volume as
``convert`` writes it is usually "SPL" (slices toward superior, rows toward posterior, columns toward left).
Oblique volumes go to the closest code, with the same rule as nibabel's ``io_orientation``.
"""
from __future__ import annotations

import itertools

import numpy as np

from voxelpipe.core.errors import InputError
from voxelpipe.core.geometry import Geometry
from voxelpipe.core.volume import Volume

# LPS world axis -> (letter for +, letter for -)
_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))
_WORLD_AXIS = {letter: (axis, sign) for axis, pair in enumerate(_LETTERS) for letter, sign in zip(pair, (1, -1))}
ALL_CODES = tuple(
    "".join(_LETTERS[axis][0 if sign > 0 else 1] for axis, sign in zip(perm, signs))
    for perm in itertools.permutations(range(3)) for signs in itertools.product((1, -1), repeat=3)
)


def orientation(affine: np.ndarray) -> list[tuple[int, int]]:
    """For each array axis, the closest LPS world axis and the sign (nibabel's ``io_orientation`` rule: the
    closest orthonormal matrix by SVD, then the largest component per column, each world axis used once)."""
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    columns = linear / np.linalg.norm(linear, axis=0)
    u, _, vt = np.linalg.svd(columns)
    rotation = u @ vt
    result = []
    for axis in range(3):
        column = rotation[:, axis]
        world = int(np.argmax(np.abs(column)))
        result.append((world, -1 if column[world] < 0 else 1))
        rotation[world, :] = 0
    return result


def axis_codes(geometry: Geometry) -> str:
    """The three-letter code of a geometry, e.g. "SPL" for a usual axial DICOM volume."""
    return "".join(_LETTERS[world][0 if sign > 0 else 1] for world, sign in orientation(geometry.affine))


def parse_orientation(code: str) -> list[tuple[int, int]]:
    """``(world axis, sign)`` per array axis of a three-letter code (``LAS``: axis 0 grows toward Left, ...);
    raises InputError for a code that is not three letters naming each patient axis once."""
    code = code.upper()
    if len(code) != 3 or any(c not in _WORLD_AXIS for c in code):
        raise InputError(f"axis code {code!r}: expected three letters from L/R, A/P, S/I (e.g. LAS, RAS, LPS)")
    target = [_WORLD_AXIS[c] for c in code]
    if len({world for world, _ in target}) != 3:
        raise InputError(f"axis code {code!r} names one patient axis twice")
    return target


def _plan(geometry: Geometry, code: str) -> tuple[list[int], list[bool]]:
    """For each output axis, the source axis (``perm``) and whether it is flipped, to follow ``code``."""
    target = parse_orientation(code)
    current = orientation(geometry.affine)
    source_of = {world: (axis, sign) for axis, (world, sign) in enumerate(current)}
    perm, flips = [], []
    for world, sign in target:
        axis, current_sign = source_of[world]
        perm.append(axis)
        flips.append(current_sign != sign)
    return perm, flips


def _apply(geometry: Geometry, perm: list[int], flips: list[bool]) -> Geometry:
    affine = np.eye(4)
    affine[:3, 3] = geometry.affine[:3, 3]
    for b, (a, flip) in enumerate(zip(perm, flips)):
        column = geometry.affine[:3, a]
        affine[:3, b] = -column if flip else column
        if flip:
            affine[:3, 3] += column * (geometry.shape[a] - 1)
    direction = np.column_stack([geometry.direction[:, a] * (-1 if f else 1) for a, f in zip(perm, flips)])
    spacing = [geometry.spacing[a] for a in perm]
    shape = [geometry.shape[a] for a in perm]
    if perm[0] == 0:  # axis 0 is still the slice axis: keep the exact slice positions
        positions = geometry.slice_positions[::-1] * -1 if flips[0] else geometry.slice_positions
        positions = np.asarray(positions, dtype=np.float64)
    else:
        positions = None
    return Geometry(shape, spacing, affine[:3, 3], direction, positions, affine)


def reoriented_geometry(geometry: Geometry, code: str) -> Geometry:
    """The geometry :func:`reorient` gives a volume on ``geometry`` for ``code``, without touching any array."""
    return _apply(geometry, *_plan(geometry, code))


def reorient(volume: Volume, code: str) -> Volume:
    """The volume with its last three axes permuted and flipped so that they follow ``code``; geometry exact
    (:func:`reoriented_geometry`)."""
    geometry = volume.geometry
    perm, flips = _plan(geometry, code)
    array = np.asarray(volume.array[...])
    lead = array.ndim - 3
    array = np.transpose(array, list(range(lead)) + [lead + a for a in perm])
    flip_axes = tuple(lead + b for b, flip in enumerate(flips) if flip)
    if flip_axes:
        array = np.flip(array, axis=flip_axes)
    new_geometry = _apply(geometry, perm, flips)
    attrs = dict(volume.attrs)
    attrs.update(new_geometry.to_attrs())
    attrs["axis_codes"] = code.upper()
    return Volume(np.ascontiguousarray(array), new_geometry, attrs, volume.path)
