"""`resample` and `project` commands over converted volumes (the library calls are tested against scipy,
SimpleITK and nibabel in test_resample.py, test_projection.py and test_reorient.py; here: the command wiring,
outputs and geometry)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage

import voxelpipe
from voxelpipe.cli.app import main
from voxelpipe.testing.synthetic import SeriesSpec, phantom_hu, write_series

nib_orientations = pytest.importorskip("nibabel.orientations", reason="nibabel is a test dependency")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dicom")
    spec = SeriesSpec(n_slices=16, rows=40, columns=48, spacing=(2.0, 0.8, 0.8), seed=5)
    write_series(folder, spec)
    out = tmp_path_factory.mktemp("done")
    summary = voxelpipe.convert([str(folder)], out=str(out), workers=1, progress=False)
    assert summary[0]["status"] == "done"
    return out, spec, summary[0]["path"]


def test_resample_to_new_spacing_matches_scipy_inside(converted, tmp_path):
    out, spec, path = converted
    assert main(["--no-progress", "resample", str(out), "--out", str(tmp_path), "--spacing", "4,1.6,1.6"]) == 0
    result = voxelpipe.open_volume(tmp_path / "data" / (path.split("/")[-1]))
    source = phantom_hu(spec.n_slices, spec.rows, spec.columns, spec.seed).astype(np.float64)
    np.testing.assert_allclose(result.geometry.spacing, [4.0, 1.6, 1.6])
    assert result.shape == (8, 20, 24)  # field of view kept: 16*2/4, 40*0.8/1.6, 48*0.8/1.6
    # independent reference: output voxel centre o maps to input index (o + 0.5) * new / old - 0.5 per axis
    scale = np.array([2.0, 2.0, 2.0])
    reference = scipy.ndimage.affine_transform(source, np.diag(scale), offset=0.5 * scale - 0.5,
                                               output_shape=result.shape, order=1, mode="nearest")
    inner = (slice(1, -1),) * 3
    np.testing.assert_allclose(result.numpy()[inner], reference[inner], atol=1e-3)
    # the new voxel [0,0,0] centre sits half a new voxel inside the old field of view's corner
    corner = np.asarray(spec.origin) - 0.5 * np.array([0.8, 0.8, 2.0])
    np.testing.assert_allclose(result.geometry.origin, corner + 0.5 * np.array([1.6, 1.6, 4.0]), atol=1e-6)


def test_resample_with_orientation_gives_the_named_axis_codes(converted, tmp_path):
    out, spec, path = converted
    assert main(["--no-progress", "resample", str(out), "--out", str(tmp_path), "--spacing", "1,1,1",
                 "--orientation", "LAS"]) == 0
    result = voxelpipe.open_volume(tmp_path / "data" / (path.split("/")[-1]))
    assert "".join(nib_orientations.aff2axcodes(result.geometry.affine_ras)) == "LAS"
    assert result.shape == (38, 32, 32)  # x = 48*0.8 = 38.4, y = 40*0.8, z = 16*2 at 1 mm


def test_resample_like_itself_is_the_identity(converted, tmp_path):
    out, spec, path = converted
    assert main(["--no-progress", "resample", path, "--out", str(tmp_path), "--like", path]) == 0
    result = voxelpipe.open_volume(tmp_path / "data" / (path.split("/")[-1]))
    np.testing.assert_array_equal(result.numpy(), phantom_hu(spec.n_slices, spec.rows, spec.columns, spec.seed))


def test_project_writes_one_image_per_angle(converted, tmp_path):
    from voxelpipe.ops.projection import project

    out, spec, path = converted
    assert main(["--no-progress", "project", str(out), "--out", str(tmp_path), "--angles", "0:360:90"]) == 0
    import zarr

    group = zarr.open_group(str(tmp_path / "data" / path.split("/")[-1]), mode="r")
    assert group.attrs["angles_deg"] == [0.0, 90.0, 180.0, 270.0]
    expected = project(voxelpipe.open_volume(path), [0, 90, 180, 270]).images
    np.testing.assert_array_equal(group["image"][...], expected)


def test_bad_angles_and_missing_input_fail_cleanly(tmp_path):
    assert main(["--no-progress", "project", str(tmp_path / "nothing"), "--out", str(tmp_path),
                 "--angles", "0:360:0"]) == 2
    assert main(["--no-progress", "resample", str(tmp_path / "nothing"), "--out", str(tmp_path),
                 "--spacing", "1,1,1"]) == 2
