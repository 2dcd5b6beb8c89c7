"""PET/CT preparation: the mask resampled onto a coarser grid against the analytic spheres it was drawn from.

The synthetic study (``voxelpipe.testing.synthetic.write_petct_study``) knows its lesion spheres (LPS centre and
radius, mm). The reference is independent of voxelpipe: every output voxel whose centre (through the output
geometry's affine) lies within a sphere's radius of its centre. voxelpipe's mask comes from the RTSTRUCT (CT grid)
through ``prepare_subject``'s label-aware resampling; on a grid of 2 mm the spheres are 4-5 voxels in radius, so
the boundary voxels are a fair part of them: Dice > 0.85, as for spheres of that size elsewhere.
"""
from __future__ import annotations

import numpy as np
import pytest

from voxelpipe.apps.petct.pipeline import load_subject, prepare_subject
from voxelpipe.core.geometry import Geometry
from voxelpipe.testing.synthetic import write_petct_study

STUDY = dict(ct_shape=(40, 48, 48), ct_spacing=(2.5, 1.0, 1.0), pet_shape=(30, 24, 24), pet_spacing=(3.5, 2.5, 2.5),
             sphere_lps=(4.0, -3.0, 2.0), sphere_radius_mm=9.0, extra_spheres=[((-9.0, 8.0, -20.0), 8.0, 4.0)],
             pet_offset=(2.3, -1.7, 1.1), patient_id="TRUTH")
SPACING_MM = (2.0, 2.0, 2.0)
MIN_DICE = 0.85


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    return write_petct_study(tmp_path_factory.mktemp("petct_truth") / "s", mask="RTSTRUCT", **STUDY)


def _subject_row(info: dict) -> dict:
    return {"subject_id": "t000000001", "patient_dir": info["folder"], "study_dir": info["folder"],
            "study_instance_uid": info["study_uid"], "ct_series_uid": info["ct_series_uid"],
            "pet_series_uid": info["pet_series_uid"], "mask_kind": info["mask_kind"],
            "mask_path": info["mask_path"], "mask_series_uid": "", "n_ct_files": len(info["ct_files"]),
            "n_pet_files": len(info["pet_files"])}


def _analytic_spheres(geometry: Geometry, spheres) -> np.ndarray:
    """Voxels of ``geometry`` whose centre lies inside one of ``spheres`` ((LPS centre, radius mm, SUV) each)."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij"), -1).astype(np.float64)
    lps = index @ geometry.affine[:3, :3].T + geometry.affine[:3, 3]
    truth = np.zeros(geometry.shape, bool)
    for centre, radius, _ in spheres:
        truth |= np.linalg.norm(lps - np.asarray(centre), axis=-1) <= radius
    return truth


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.sum(a & b) / (a.sum() + b.sum()))


def test_resampled_mask_matches_the_analytic_spheres(study):
    subject = load_subject(_subject_row(study))
    out = prepare_subject(subject, spacing=SPACING_MM)
    geometry = Geometry.from_attrs(out["attrs"]["geometry"])
    np.testing.assert_allclose(geometry.spacing, SPACING_MM)
    truth = _analytic_spheres(geometry, study["spheres"])
    mask = out["mask"][0] > 0
    assert truth.sum() > 0 and mask.shape == truth.shape
    dice = _dice(mask, truth)
    assert dice > MIN_DICE, dice
