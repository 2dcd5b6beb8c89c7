"""``voxelpipe.apps.lung.nodules`` against independent references.

* ``find_nodules``: hand-built probability maps (spheres of known radius at known indices) on an anisotropic,
  oblique geometry whose index → LPS map is written out here (origin + direction @ (spacing * index)), not taken
  from Geometry.affine; statistics are numpy on the component's voxels (np.argwhere / boolean masks);
  volume = voxels × product of the spacings; diameter = (6V/π)^(1/3).
* ``load_model``: a model module written to tmp_path and imported by "module:function"; every bad spec.
* ``blob_model``: ``voxelpipe.testing.synthetic.chest_phantom`` with known nodules (skipped until
  voxelpipe.apps.lung.segment and chest_phantom exist): found at the truth's LPS position within one voxel diagonal,
  diameter within one voxel.
* ``patient_features`` of known rows.
"""
from __future__ import annotations

import pickle
import sys
import uuid

import numpy as np
import pytest

from voxelpipe.apps.lung.nodules import (
    NODULE_COLUMNS,
    PATIENT_FEATURE_COLUMNS,
    Model,
    ModelError,
    blob_model,
    find_nodules,
    load_model,
    patient_features,
)
from voxelpipe.core.errors import InputError
from voxelpipe.core.geometry import Geometry, geometry_from_slices

SHAPE = (24, 40, 36)
SPACING = np.array([2.5, 0.7, 1.1])
ORIGIN = np.array([-120.25, 33.5, -410.0])


def oblique_direction() -> np.ndarray:
    """A proper rotation that is far from every patient axis (columns = LPS unit vectors of axes 0, 1, 2)."""
    q, r = np.linalg.qr(np.random.default_rng(7).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


DIRECTION = oblique_direction()


def geometry() -> Geometry:
    return Geometry(SHAPE, SPACING, ORIGIN, DIRECTION)


def lps_by_hand(index) -> np.ndarray:
    """index (slice, row, column) → LPS mm, written out from the convention (not Geometry.affine)."""
    index = np.asarray(index, dtype=np.float64)
    return ORIGIN + sum(DIRECTION[:, a] * SPACING[a] * index[a] for a in range(3))


def sphere_mask(shape, centre, radius_mm, spacing=SPACING) -> np.ndarray:
    """Voxels whose centre lies within ``radius_mm`` (physical distance) of the voxel ``centre``."""
    grids = np.indices(shape, dtype=np.float64)
    dist2 = sum(((grids[a] - centre[a]) * spacing[a]) ** 2 for a in range(3))
    return dist2 <= radius_mm ** 2


def two_sphere_case(seed: int = 0):
    rng = np.random.default_rng(seed)
    a = sphere_mask(SHAPE, (6, 12, 10), 5.0)
    b = sphere_mask(SHAPE, (16, 28, 25), 7.5)
    assert not (a & b).any()
    prob = rng.uniform(0.0, 0.45, SHAPE).astype(np.float32)
    prob[a] = rng.uniform(0.55, 1.0, a.sum())
    prob[b] = rng.uniform(0.6, 0.95, b.sum())
    hu = rng.integers(-1000, -700, SHAPE).astype(np.int16)
    hu[a | b] = rng.integers(-100, 120, (a | b).sum())
    return prob, hu, [a, b], [(6, 12, 10), (16, 28, 25)]


# ----------------------------------------------------------------------------------------------------------
# find_nodules
# ----------------------------------------------------------------------------------------------------------
def test_two_spheres_oblique_anisotropic():
    prob, hu, masks, centres = two_sphere_case()
    rows = find_nodules(prob, hu, geometry(), threshold=0.5)
    assert len(rows) == 2
    assert [list(r) for r in rows] == [NODULE_COLUMNS, NODULE_COLUMNS]
    voxel_volume = float(np.prod(SPACING))
    for number, (row, mask, centre) in enumerate(zip(rows, masks, centres), start=1):
        assert row["nodule"] == number
        idx = np.argwhere(mask)
        # symmetric sphere about an integer voxel: the mean index is the centre exactly
        np.testing.assert_allclose(idx.mean(axis=0), centre, atol=1e-12)
        np.testing.assert_allclose([row["centroid_x"], row["centroid_y"], row["centroid_z"]],
                                   lps_by_hand(centre), atol=1e-6)
        assert row["n_voxels"] == len(idx)
        assert row["volume_mm3"] == pytest.approx(len(idx) * voxel_volume, rel=1e-12)
        assert row["diameter_mm"] == pytest.approx((6 * len(idx) * voxel_volume / np.pi) ** (1 / 3), rel=1e-12)
        assert row["prob_max"] == pytest.approx(float(prob[mask].max()), rel=1e-7)
        assert row["prob_mean"] == pytest.approx(float(prob[mask].astype(np.float64).mean()), rel=1e-9)
        assert row["hu_mean"] == pytest.approx(float(hu[mask].astype(np.float64).mean()), rel=1e-12)
        assert row["hu_max"] == float(hu[mask].max())
        for axis in range(3):
            assert row[f"bbox_{axis}_start"] == idx[:, axis].min()
            assert row[f"bbox_{axis}_stop"] == idx[:, axis].max() + 1
    # the equivalent diameter of a well-sampled sphere is near its true diameter
    assert rows[1]["diameter_mm"] == pytest.approx(15.0, abs=SPACING.max())


def test_off_centre_component_centroid_is_mean_index_through_affine():
    """An irregular component: centroid = affine applied to the mean of its voxel indices."""
    prob = np.zeros(SHAPE, dtype=np.float32)
    voxels = np.array([[3, 4, 5], [3, 4, 6], [3, 5, 6], [4, 5, 7], [5, 6, 8], [5, 6, 9], [5, 7, 9]])
    prob[tuple(voxels.T)] = 0.9
    (row,) = find_nodules(prob, None, geometry())
    np.testing.assert_allclose([row["centroid_x"], row["centroid_y"], row["centroid_z"]],
                               lps_by_hand(voxels.mean(axis=0)), atol=1e-6)
    assert np.isnan(row["hu_mean"]) and np.isnan(row["hu_max"])  # no HU given
    assert row["n_voxels"] == 7


def test_threshold_behaviour():
    # a radially graded blob: prob = 1 - distance / 10 mm
    grids = np.indices(SHAPE, dtype=np.float64)
    centre = (12, 20, 18)
    dist = np.sqrt(sum(((grids[a] - centre[a]) * SPACING[a]) ** 2 for a in range(3)))
    prob = np.clip(1 - dist / 10.0, 0, 1).astype(np.float64)
    counts = {}
    for t in (0.2, 0.5, 0.8):
        (row,) = find_nodules(prob, None, geometry(), threshold=t)
        counts[t] = row["n_voxels"]
        assert row["n_voxels"] == int((prob >= t).sum())
        np.testing.assert_allclose([row["centroid_x"], row["centroid_y"], row["centroid_z"]],
                                   lps_by_hand(centre), atol=1e-6)
    assert counts[0.2] > counts[0.5] > counts[0.8]
    # ">=": a voxel exactly at the threshold counts
    exact = np.zeros(SHAPE)
    exact[1, 2, 3] = 0.5
    assert len(find_nodules(exact, None, geometry(), 0.5)) == 1
    assert find_nodules(exact, None, geometry(), 0.5000001) == []
    # above the maximum: nothing
    assert find_nodules(prob, None, geometry(), threshold=1.01) == []
    # NaN never passes the threshold
    nan = np.full(SHAPE, np.nan)
    assert find_nodules(nan, None, geometry(), 0.5) == []
    with pytest.raises(InputError, match="threshold"):
        find_nodules(prob, None, geometry(), threshold=float("nan"))


def test_empty_map_gives_no_rows():
    assert find_nodules(np.zeros(SHAPE, np.float32), np.zeros(SHAPE, np.int16), geometry()) == []
    assert patient_features([]) == {"n_nodules": 0, "largest_diameter_mm": 0.0, "total_volume_mm3": 0.0,
                                     "max_probability": 0.0}


def test_26_connectivity():
    prob = np.zeros(SHAPE, dtype=np.float32)
    prob[2, 2, 2] = prob[3, 3, 3] = 0.9          # corner-touching: one nodule
    prob[10, 10, 10] = prob[10, 11, 11] = 0.8    # edge-touching: one nodule
    prob[20, 30, 30] = prob[22, 30, 30] = 0.7    # one voxel gap: two nodules
    rows = find_nodules(prob, None, geometry())
    assert [r["n_voxels"] for r in rows] == [2, 2, 1, 1]
    np.testing.assert_allclose([rows[0]["centroid_x"], rows[0]["centroid_y"], rows[0]["centroid_z"]],
                               lps_by_hand((2.5, 2.5, 2.5)), atol=1e-6)
    assert rows[0]["prob_max"] == pytest.approx(0.9)


def test_sheared_geometry_volume_is_the_affine_determinant():
    """Gantry tilt: the voxel is the sheared cell of the affine; centroids go through that affine."""
    n = 10
    tilt = np.deg2rad(15)
    ipps = np.array([[0.0, k * 3.0 * np.tan(tilt), k * 3.0] for k in range(n)])
    g = geometry_from_slices(ipps, [1, 0, 0, 0, 1, 0], (0.8, 0.9), (n, 12, 14))
    prob = np.zeros(g.shape)
    prob[4:6, 5:8, 6:9] = 1.0
    (row,) = find_nodules(prob, None, g)
    # by hand: slice step = ipps[1] - ipps[0], row step = 0.8 along y, column step = 0.9 along x
    step0 = ipps[1] - ipps[0]
    cell = abs(np.linalg.det(np.column_stack([step0, [0, 0.8, 0], [0.9, 0, 0]])))
    assert row["volume_mm3"] == pytest.approx(18 * cell)
    centre = ipps[0] + 4.5 * step0 + np.array([7 * 0.9, 6 * 0.8, 0])
    np.testing.assert_allclose([row["centroid_x"], row["centroid_y"], row["centroid_z"]], centre, atol=1e-6)


def test_find_nodules_input_errors():
    with pytest.raises(InputError, match="geometry"):
        find_nodules(np.zeros((3, 4, 5)), None, geometry())
    with pytest.raises(InputError, match="HU"):
        find_nodules(np.zeros(SHAPE), np.zeros((2, 2, 2)), geometry())
    with pytest.raises(InputError, match="3-D"):
        find_nodules(np.zeros((4, 5)), None, geometry())


# ----------------------------------------------------------------------------------------------------------
# patient_features
# ----------------------------------------------------------------------------------------------------------
def test_patient_features_of_known_rows():
    rows = [
        {"diameter_mm": 4.0, "volume_mm3": 33.5, "prob_max": 0.7},
        {"diameter_mm": 12.5, "volume_mm3": 1022.7, "prob_max": 0.55},
        {"diameter_mm": "6.0", "volume_mm3": "113.1", "prob_max": "0.99"},  # CSV strings
    ]
    features = patient_features(rows)
    assert list(features) == PATIENT_FEATURE_COLUMNS
    assert features["n_nodules"] == 3
    assert features["largest_diameter_mm"] == 12.5
    assert features["total_volume_mm3"] == pytest.approx(33.5 + 1022.7 + 113.1)
    assert features["max_probability"] == 0.99


def test_patient_features_of_find_nodules():
    prob, hu, masks, _ = two_sphere_case(seed=3)
    rows = find_nodules(prob, hu, geometry())
    features = patient_features(rows)
    voxel_volume = float(np.prod(SPACING))
    assert features["n_nodules"] == 2
    assert features["total_volume_mm3"] == pytest.approx((masks[0].sum() + masks[1].sum()) * voxel_volume)
    assert features["largest_diameter_mm"] == pytest.approx((6 * masks[1].sum() * voxel_volume / np.pi) ** (1 / 3))
    assert features["max_probability"] == pytest.approx(float(prob[masks[0] | masks[1]].max()))


# ----------------------------------------------------------------------------------------------------------
# load_model
# ----------------------------------------------------------------------------------------------------------
MODEL_SOURCE = '''
import numpy as np

CALLS = []

def predict(hu, geometry):
    CALLS.append(geometry.shape)
    return (np.asarray(hu) > 0).astype(np.float64)

def wrong_shape(hu, geometry):
    return np.zeros((2, 2, 2))

def with_nan(hu, geometry):
    out = np.zeros(np.shape(hu))
    out[0, 0, 0] = np.nan
    return out

def boom(hu, geometry):
    raise RuntimeError("weights missing")

def as_list(hu, geometry):
    return np.zeros(np.shape(hu)).tolist()

class Net:
    @staticmethod
    def forward(hu, geometry):
        return np.full(np.shape(hu), 0.25, dtype=np.float32)

NOT_CALLABLE = 3
'''


@pytest.fixture
def model_module(tmp_path, monkeypatch):
    name = f"nod_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(MODEL_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_load_model_module_function(model_module):
    model = load_model(f"{model_module}:predict")
    assert isinstance(model, Model)
    hu = np.full((4, 5, 6), -500, dtype=np.int16)
    hu[1:3, 2:4, 2:5] = 40
    g = Geometry(hu.shape, (2, 2, 2), (0, 0, 0), np.eye(3))
    prob = model(hu, g)
    assert prob.dtype == np.float32 and prob.shape == hu.shape
    np.testing.assert_array_equal(prob, (hu > 0).astype(np.float32))
    assert sys.modules[model_module].CALLS == [hu.shape]
    # dotted attribute path, list output, surrounding blanks
    np.testing.assert_array_equal(load_model(f" {model_module}:Net.forward ")(hu, g), np.full(hu.shape, 0.25))
    assert load_model(f"{model_module}:as_list")(hu, g).dtype == np.float32
    # a loaded model survives pickling (sent to worker processes)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again(hu, g), prob)


def test_load_model_default_and_callable():
    assert load_model(None).function is blob_model
    assert load_model("").function is blob_model
    assert load_model("voxelpipe.apps.lung.nodules:blob_model").function is blob_model
    model = load_model(lambda hu, g: np.ones(np.shape(hu)))
    assert model(np.zeros((2, 3, 4)), None).sum() == 24


@pytest.mark.parametrize("suffix, match", [
    ("predict", "expected 'module:function'"),             # no colon
    (":", "expected 'module:function'"),                   # empty parts
    ("{m}:", "expected 'module:function'"),
    ("{m}_missing:predict", "cannot import module"),
    ("{m}:nope", "has no attribute 'nope'"),
    ("{m}:Net.nope", "has no attribute 'Net.nope'"),
    ("{m}:NOT_CALLABLE", "not callable"),
])
def test_load_model_bad_specs(model_module, suffix, match):
    spec = suffix.format(m=model_module)
    with pytest.raises(InputError, match=match) as info:
        load_model(spec)
    assert repr(spec.strip()) in str(info.value)  # the message names the spec


def test_load_model_import_error_inside_module(tmp_path, monkeypatch):
    name = f"nod_broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("import not_a_real_package_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(InputError, match=f"'{name}:f'.*cannot import.*not_a_real_package_xyz"):
        load_model(f"{name}:f")
    sys.modules.pop(name, None)


@pytest.mark.parametrize("function, match", [
    ("wrong_shape", r"returned shape \(2, 2, 2\), expected the input's shape \(4, 5, 6\)"),
    ("with_nan", r"1 non-finite value"),
])
def test_model_bad_output(model_module, function, match):
    model = load_model(f"{model_module}:{function}")
    with pytest.raises(InputError, match=match) as info:
        model(np.zeros((4, 5, 6)), Geometry((4, 5, 6), (1, 1, 1), (0, 0, 0), np.eye(3)))
    assert f"{model_module}:{function}" in str(info.value)


def test_model_exception_names_the_model(model_module):
    model = load_model(f"{model_module}:boom")
    with pytest.raises(ModelError, match=f"'{model_module}:boom' failed: RuntimeError: weights missing"):
        model(np.zeros((4, 5, 6)), None)


# ----------------------------------------------------------------------------------------------------------
# blob_model
# ----------------------------------------------------------------------------------------------------------
def lung_box_volume(spacing=(2.0, 2.0, 2.0), shape=(40, 48, 48), seed=0):
    """A block of lung (-850 HU, noise sd 40) in soft tissue, its mask, and an axial geometry."""
    rng = np.random.default_rng(seed)
    hu = np.full(shape, 20.0)
    lung = np.zeros(shape, dtype=bool)
    lung[4:-4, 4:-4, 4:-4] = True
    hu[lung] = -850 + rng.normal(0, 40, lung.sum())
    direction = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=float)  # axis 0 → z, 1 → y, 2 → x
    g = Geometry(shape, spacing, (-40.0, -30.0, 100.0), direction)
    return hu, lung, g


def test_blob_model_sphere_versus_tube_with_given_mask():
    """A 10 mm sphere scores 1; a 4 mm-thick, 50 mm-long vessel segment scores below 0.5."""
    hu, lung, g = lung_box_volume()
    sphere = sphere_mask(hu.shape, (20, 16, 16), 5.0, spacing=np.array([2.0, 2.0, 2.0]))
    hu[sphere] = 40
    grids = np.indices(hu.shape, dtype=float) * 2.0
    tube = ((grids[1] - 64.0) ** 2 + (grids[2] - 64.0) ** 2 <= 2.0 ** 2) & (grids[0] >= 14) & (grids[0] <= 64)
    hu[tube] = 40
    prob = blob_model(hu.astype(np.int16), g, lung_mask=lung)
    assert prob.dtype == np.float32 and prob.shape == hu.shape
    assert prob.min() >= 0 and prob.max() <= 1
    assert (prob[~lung] == 0).all()
    assert prob[sphere].min() == pytest.approx(1.0)
    assert prob[tube].max() < 0.5
    rows = find_nodules(prob, hu, g, 0.5)
    assert len(rows) == 1
    centre_lps = np.array([-40.0 + 16 * 2, -30.0 + 16 * 2, 100.0 + 20 * 2])  # (x, y, z) of index (20, 16, 16)
    np.testing.assert_allclose([rows[0]["centroid_x"], rows[0]["centroid_y"], rows[0]["centroid_z"]], centre_lps,
                               atol=1e-6)
    assert rows[0]["n_voxels"] == sphere.sum()


@pytest.mark.parametrize("depth_mm", [0.0, 2.0])
def test_blob_model_completes_a_juxtapleural_nodule(depth_mm):
    """A 12 mm sphere centred ``depth_mm`` inside the lung's face (up to half of it in the tissue wall); the
    given mask is the lung block only, so the mask holds only the nodule's cap: the map covers the sphere.
    (A nodule mostly inside the wall is not found: its cap in the lung is too small — a documented limit.)"""
    hu, lung, g = lung_box_volume()
    spacing = np.array([2.0, 2.0, 2.0])
    # the lung block's lateral face (axis 2) lies between index 43 (lung) and 44 (tissue): 87 mm from index 0
    centre = (20.0, 24.0, (87.0 - depth_mm) / 2.0)
    sphere = sphere_mask(hu.shape, centre, 6.0, spacing=spacing)
    hu[sphere] = 40
    prob = blob_model(hu.astype(np.int16), g, lung_mask=lung)
    rows = find_nodules(prob, hu, g, 0.5)
    assert len(rows) == 1
    (row,) = rows
    expected = np.array([-40.0, -30.0, 100.0]) + np.array([centre[2], centre[1], centre[0]]) * 2.0
    error = np.linalg.norm([row["centroid_x"] - expected[0], row["centroid_y"] - expected[1],
                            row["centroid_z"] - expected[2]])
    print(f"\njuxtapleural 12 mm, centre {depth_mm:+.0f} mm inside the lung: Ø {row['diameter_mm']:.2f} mm, "
          f"position error {error:.2f} mm")
    assert error <= np.linalg.norm(spacing)
    assert abs(row["diameter_mm"] - 12.0) <= 2.0
    assert row["n_voxels"] <= sphere.sum()  # nothing beyond the nodule is added


def test_model_passes_lung_mask_to_blob_model_only(model_module):
    hu, lung, g = lung_box_volume()
    hu[sphere_mask(hu.shape, (20, 16, 16), 5.0, spacing=np.array([2.0, 2.0, 2.0]))] = 40
    hu = hu.astype(np.int16)
    np.testing.assert_array_equal(load_model(None)(hu, g, lung_mask=lung), blob_model(hu, g, lung_mask=lung))
    # a user model is called with (hu, geometry) only
    np.testing.assert_array_equal(load_model(f"{model_module}:predict")(hu, g, lung_mask=lung), (hu > 0))


def test_blob_model_nothing_to_find():
    hu, lung, g = lung_box_volume()
    assert not blob_model(hu.astype(np.int16), g, lung_mask=lung).any()        # lung only: noise never passes
    assert not blob_model(hu.astype(np.int16), g, lung_mask=np.zeros_like(lung)).any()  # no lung at all
    with pytest.raises(InputError, match="lung mask shape"):
        blob_model(hu, g, lung_mask=lung[:-1])
    with pytest.raises(InputError, match="geometry"):
        blob_model(hu[:-1], g)


# --- on synthetic.chest_phantom with voxelpipe.apps.lung.segment.segment_lungs ----------------------------------------
def _phantom_and_lungs():
    synthetic = pytest.importorskip("voxelpipe.testing.synthetic")
    if not hasattr(synthetic, "chest_phantom"):
        pytest.skip("voxelpipe.testing.synthetic.chest_phantom not available")
    pytest.importorskip("voxelpipe.apps.lung.segment")
    return synthetic.chest_phantom


def _check_phantom_geometry(volume) -> None:
    """The phantom's documented convention: axis 0 → +z, axis 1 → +y, axis 2 → +x (LPS)."""
    d = volume.geometry.direction
    assert np.allclose(d[:, 0], [0, 0, 1]) and np.allclose(d[:, 1], [0, 1, 0]) and np.allclose(d[:, 2], [1, 0, 0]), \
        f"chest_phantom geometry does not follow its documented axes: direction columns {d.T.tolist()}"


def match_nodules(rows, truth, spacing):
    """(matched [(row, truth index)], false positives): a row matches the nearest truth centre within one
    voxel diagonal."""
    tolerance = float(np.linalg.norm(spacing))
    centres = np.asarray(truth["nodule_centres"], dtype=float).reshape(-1, 3)
    matched, false_positives = [], []
    for row in rows:
        p = np.array([row["centroid_x"], row["centroid_y"], row["centroid_z"]])
        distances = np.linalg.norm(centres - p, axis=1) if len(centres) else np.array([])
        if len(distances) and distances.min() <= tolerance:
            matched.append((row, int(distances.argmin())))
        else:
            false_positives.append(row)
    return matched, false_positives


PHANTOM_CASES = {
    "default: 10 mm in the right lung + 12 mm juxtapleural": dict(seed=0, nodules=None),
    "default nodules, other noise": dict(seed=5, nodules=None),
    "8 mm by LPS + 14 mm by index": dict(seed=2, nodules=(({"lps": (60.0, -10.0, -20.0)}, 8.0),
                                                          ((50, 60, 40), 14.0))),
    "bigger field 100×160×160": dict(seed=3, nodules=None, shape=(100, 160, 160)),
}


@pytest.mark.parametrize("case", list(PHANTOM_CASES))
def test_blob_model_finds_phantom_nodules(case):
    chest_phantom = _phantom_and_lungs()
    volume, truth = chest_phantom(**PHANTOM_CASES[case])
    _check_phantom_geometry(volume)
    spacing = volume.geometry.spacing
    prob = blob_model(volume.array, volume.geometry)
    assert prob.dtype == np.float32 and 0 <= prob.min() and prob.max() <= 1
    rows = find_nodules(prob, volume.array, volume.geometry, 0.5)
    matched, false_positives = match_nodules(rows, truth, spacing)
    print(f"\n{case}: {len(truth['diameters'])} nodule(s), {len(rows)} detection(s), "
          f"{len(false_positives)} false positive(s)")
    for row, i in matched:
        error = np.linalg.norm(np.array([row["centroid_x"], row["centroid_y"], row["centroid_z"]])
                               - truth["nodule_centres"][i])
        print(f"  nodule {i}: truth Ø {truth['diameters'][i]:.1f} mm (juxtapleural {bool(truth['juxtapleural'][i])})"
              f" → Ø {row['diameter_mm']:.2f} mm, position error {error:.2f} mm, prob {row['prob_max']:.2f}")
    found = sorted(i for _, i in matched)
    assert found == list(range(len(truth["diameters"]))), \
        f"missed nodules: truth {len(truth['diameters'])}, found {found}"
    for row, i in matched:
        assert abs(row["diameter_mm"] - truth["diameters"][i]) <= spacing.max()
    assert len(false_positives) <= 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blob_model_phantom_without_nodules(seed):
    chest_phantom = _phantom_and_lungs()
    volume, truth = chest_phantom(nodules=(), seed=seed)
    prob = blob_model(volume.array, volume.geometry)
    rows = find_nodules(prob, volume.array, volume.geometry, 0.5)
    candidates = find_nodules(prob, volume.array, volume.geometry, 1e-6)
    print(f"\nno-nodule phantom seed {seed}: {len(rows)} detection(s) ≥ 0.5, {len(candidates)} candidate(s) > 0")
    assert len(rows) <= 1


def test_blob_model_on_cropped_volume_same_lps():
    """On the lung crop (what the pipeline passes) the nodules land at the same LPS positions."""
    chest_phantom = _phantom_and_lungs()
    from voxelpipe.apps.lung import segment as lung_module

    if not hasattr(lung_module, "crop"):
        pytest.skip("voxelpipe.apps.lung.segment.crop not available")
    volume, truth = chest_phantom(seed=0)
    mask = lung_module.segment_lungs(volume.array, volume.geometry.spacing)
    cropped = lung_module.crop(volume, lung_module.lung_box(mask, volume.geometry.spacing))
    hu = np.asarray(cropped.array)
    rows = find_nodules(blob_model(hu, cropped.geometry), hu, cropped.geometry, 0.5)
    matched, _ = match_nodules(rows, truth, volume.geometry.spacing)
    assert sorted(i for _, i in matched) == list(range(len(truth["diameters"])))
