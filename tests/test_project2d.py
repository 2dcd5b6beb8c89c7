"""``project-2d``: angles × subjects projections in the 2-D file, each equal to an independent reference.

Convention (projection.py's docstring, axis S): rays at 0° run anterior→posterior and columns grow toward
patient left; the view turns counter-clockwise seen from the feet (90°: rays R→L... i.e. along +L, columns toward
anterior). The subject arrays are LAS ``[X, Y, Z]`` (axis 0 → L, 1 → A, 2 → S), so with equal spacings:
0° = max over axis 1 (Y), columns = X ascending; 180° = the same with columns reversed; 90° = max over axis 0
(X), columns = Y ascending (toward A); 270° = the same reversed. Image rows are Z (toward S). The detector is
wider than the slab and centred on it; uncovered columns hold the fill (the channel's minimum).
Other angles: ``scipy.ndimage.rotate`` (order 1) of each plane padded to the detector width, then max.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from voxelpipe.apps.petct.project2d import angle_key, project_2d, projection_key
from voxelpipe.cli.app import main
from voxelpipe.core.errors import InputError
from voxelpipe.core.geometry import Geometry
from voxelpipe.stores.subject_store import open_subject_store

LAS = np.diag([1.0, -1.0, 1.0])
SHAPE = (14, 18, 6)  # X, Y, Z (X and Y of the same parity: the detector is centred on both)
ANGLES = [0.0, 90.0, 180.0, 270.0, 45.0, 30.0]


def phantom(seed: int, shape=SHAPE) -> np.ndarray:
    """Smooth blobs on a zero background, kept away from the edges of each plane."""
    rng = np.random.default_rng(seed)
    x, y = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    volume = np.zeros(shape, np.float32)
    for _ in range(4):
        cx = shape[0] / 2 + rng.uniform(-2.5, 2.5)
        cy = shape[1] / 2 + rng.uniform(-3, 3)
        sigma = rng.uniform(1.8, 2.6)
        amplitude = rng.uniform(0.3, 1.0, size=shape[2])
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma ** 2))
        volume += (blob[:, :, None] * amplitude[None, None, :]).astype(np.float32)
    return volume


def make_subject(seed: int):
    pet, ct = phantom(seed), phantom(seed + 100) * 0.5 + 0.1
    rng = np.random.default_rng(seed)
    mask = ((pet > 0.4 * pet.max()) * rng.integers(1, 3, size=pet.shape)).astype(np.uint8)  # labels 1, 2
    mask_iso = (mask > 0) & (pet > 0.6 * pet.max())
    geometry = Geometry(SHAPE, [1.0, 1.0, 1.0], [-7.0, 9.0, -3.0], LAS)
    attrs = {"geometry": geometry.to_attrs(), "orientation": "LAS"}
    return np.stack([pet, ct]), mask[None], mask_iso[None].astype(np.uint8), attrs


def reference_90(volume: np.ndarray, angle: float, width: int, fill: float) -> np.ndarray:
    """(Z, width) projection at a multiple of 90° by max along an array axis (see the module docstring)."""
    if angle in (0.0, 180.0):
        image = volume.max(axis=1).T  # (Z, X): columns toward L
    else:
        image = volume.max(axis=0).T  # (Z, Y): columns toward A
    if angle in (180.0, 270.0):
        image = image[:, ::-1]
    out = np.full((volume.shape[2], width), fill, dtype=image.dtype)
    pad = (width - image.shape[1]) // 2
    assert (width - image.shape[1]) % 2 == 0
    out[:, pad:pad + image.shape[1]] = image
    return out


def reference_rotate(volume: np.ndarray, angle: float, width: int) -> np.ndarray:
    """Rotate-then-max: each (X, Y) plane, axis 1 flipped so that it points P (then the rays at θ are output
    axis 1 of ``ndimage.rotate(.., θ, axes=(0, 1))``, whose input = R(θ)·output with R = [[c, s], [-s, c]],
    and the columns are output axis 0), padded to ``width`` × ``width`` about its centre."""
    nx, ny, _ = volume.shape
    px, py = (width - nx) // 2, (width - ny) // 2
    padded = np.zeros((width, width, volume.shape[2]), np.float64)
    padded[px:px + nx, py:py + ny] = volume[:, ::-1, :]
    rotated = ndimage.rotate(padded, angle, axes=(0, 1), reshape=False, order=1, mode="constant", cval=0.0)
    return rotated.max(axis=1).T  # (Z, width)


@pytest.fixture()
def source(tmp_path):
    path = tmp_path / "subjects.h5"
    with open_subject_store(path, "a") as store:
        for n, key in enumerate(["abc1234def", "fff0000aaa"]):
            store.write(key, *make_subject(n))
    return path


def test_angle_keys():
    assert [angle_key(a) for a in (0, 45, 90.0, 315, 22.5, -90)] == ["000", "045", "090", "315", "022.5", "-090"]
    assert projection_key("s", 45) == "s_a045"


@pytest.mark.parametrize("out_name", ["p2d.h5", "p2d.zarr"])
def test_projections_match_references(tmp_path, source, out_name):
    out = tmp_path / out_name
    rows = project_2d(source, out, ANGLES, axis="S", workers=1, progress=False)
    assert [r["status"] for r in rows] == ["done", "done"]
    with open_subject_store(out) as store:
        keys = store.subjects()
        assert len(keys) == len(ANGLES) * 2  # angles × subjects
        assert store.attrs["content"] == "projections-2d"
        for n, subject in enumerate(["abc1234def", "fff0000aaa"]):
            image, mask, mask_iso, _ = make_subject(n)
            for angle in ANGLES:
                data = store.read(f"{subject}_a{angle_key(angle)}")
                attrs = data["attrs"]
                assert attrs["subject"] == subject and attrs["angle"] == angle and attrs["axis"] == "S"
                assert attrs["pixel_spacing"] == [1.0, 1.0] and attrs["source"] == str(source)
                assert data["image"].shape[:2] == (2, SHAPE[2]) and data["image"].dtype == np.float32
                width = data["image"].shape[2]
                assert data["mask"].shape == data["mask_iso"].shape == (1, SHAPE[2], width)
                if angle % 90 == 0:
                    for c in range(2):
                        expected = reference_90(image[c], angle, width, float(image[c].min()))
                        np.testing.assert_allclose(data["image"][c], expected, atol=1e-6)
                        assert attrs["fill"][c] == pytest.approx(float(image[c].min()))
                    np.testing.assert_array_equal(data["mask"][0], reference_90(mask[0], angle, width, 0))
                    np.testing.assert_array_equal(data["mask_iso"][0], reference_90(mask_iso[0], angle, width, 0))
                else:
                    for c in range(2):
                        base = float(image[c].min())
                        expected = reference_rotate(image[c] - base, angle, width) + base
                        got = data["image"][c]
                        span = float(image[c].max() - base)
                        assert np.abs(got - expected).max() <= 0.05 * span
                        assert np.abs(got - expected).mean() <= 0.01 * span
                    # masks: labels kept; at most the labels of the mask, each label present where the mask has it
                    assert set(np.unique(data["mask"])) == set(np.unique(mask))
                    assert set(np.unique(data["mask_iso"])) == set(np.unique(mask_iso))
                # max projections of the masks: nothing outside the projected silhouette of the data
                assert data["mask"].max() == mask.max() and data["mask_iso"].max() == mask_iso.max()


def test_rerun_skips_complete_and_redoes_incomplete(tmp_path, source):
    out = tmp_path / "p2d.h5"
    project_2d(source, out, [0, 90], workers=1, progress=False)
    rows = project_2d(source, out, [0, 90], workers=1, progress=False)
    assert [r["status"] for r in rows] == ["skipped", "skipped"]
    # a new angle: both subjects redone (their existing projections rewritten, the new one added)
    rows = project_2d(source, out, [0, 90, 45], workers=1, progress=False)
    assert [r["status"] for r in rows] == ["done", "done"]
    # an interrupted projection (completion mark missing) makes its subject redone
    import h5py

    with h5py.File(out, "a") as f:
        del f["image/fff0000aaa_a090"].attrs["complete"]
    with open_subject_store(out) as store:
        assert store.incomplete() == ["fff0000aaa_a090"] and len(store.subjects()) == 5
    rows = project_2d(source, out, [0, 90, 45], workers=1, progress=False)
    assert {r["subject"]: r["status"] for r in rows} == {"abc1234def": "skipped", "fff0000aaa": "done"}
    with open_subject_store(out) as store:
        assert len(store.subjects()) == 6 and store.incomplete() == []


def test_failures_reported(tmp_path):
    source = tmp_path / "s.zarr"
    image, mask, mask_iso, attrs = make_subject(0)
    with open_subject_store(source, "a") as store:
        store.write("good", image, mask, mask_iso, attrs)
        store.write("nogeo", image, mask, mask_iso, {"orientation": "LAS"})
    rows = project_2d(source, tmp_path / "o.h5", [0], workers=1, progress=False)
    status = {r["subject"]: r for r in rows}
    assert status["good"]["status"] == "done"
    assert status["nogeo"]["status"] == "failed" and "no 'geometry'" in status["nogeo"]["reason"]
    with pytest.raises(InputError, match="same projection twice"):
        project_2d(source, tmp_path / "o.h5", [45, 45.0], workers=1, progress=False)
    with pytest.raises(InputError, match="must differ"):
        project_2d(source, source, [0], workers=1, progress=False)


def test_cli_with_workers(tmp_path, source, capsys):
    one = tmp_path / "one.h5"
    two = tmp_path / "two.zarr"
    assert main(["--no-progress", "project-2d", str(source), "--out", str(one), "--angles", "0:360:120",
                 "--workers", "1"]) == 0
    assert main(["--no-progress", "project-2d", str(source), "--out", str(two), "--angles", "0,120,240",
                 "--axis", "S", "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "project-2d: 2 done, 0 skipped, 0 failed; 3 angles each" in printed
    with open_subject_store(one) as a, open_subject_store(two) as b:
        assert a.subjects() == b.subjects() == sorted(
            f"{s}_a{k}" for s in ("abc1234def", "fff0000aaa") for k in ("000", "120", "240"))
        for key in a.subjects():
            x, y = a.read(key), b.read(key)
            for name in ("image", "mask", "mask_iso"):
                np.testing.assert_array_equal(x[name], y[name])
    assert main(["--no-progress", "project-2d", str(source), "--out", str(one), "--angles", "0:360:120"]) == 0
    assert "project-2d: 0 done, 2 skipped, 0 failed" in capsys.readouterr().out
    # 2-D files merge like subject files and keep their self-description
    project_2d(source, tmp_path / "p45.h5", [45], workers=1, progress=False)
    merged = tmp_path / "merged.zarr"
    assert main(["--no-progress", "merge", str(one), str(tmp_path / "p45.h5"), "--out", str(merged)]) == 0
    with open_subject_store(merged) as store:
        assert len(store.subjects()) == 8 and store.attrs["content"] == "projections-2d"
