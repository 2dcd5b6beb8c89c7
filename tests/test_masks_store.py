"""Masks beside a volume (labels/<name>/0): written on all three store kinds, replaced atomically, read lazily."""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

from voxelpipe.core.errors import InputError
from voxelpipe.core.geometry import Geometry
from voxelpipe.core.masks import Mask, mask_array_name
from voxelpipe.core.volume import Volume
from voxelpipe.stores.masks import open_masks, write_masks
from voxelpipe.stores.volumes import open_volume, save_volume

SHAPE = (12, 20, 30)


@pytest.fixture(params=[".zarr", ".zarr.zip", ".zarr.sqlite"])
def volume_path(request, tmp_path):
    rng = np.random.default_rng(3)
    image = rng.integers(-1000, 1000, SHAPE).astype(np.int16)
    path = str(tmp_path / ("vol" + request.param))
    save_volume(Volume(image, Geometry(SHAPE, (2.5, 0.7, 0.7), (1, 2, 3), np.eye(3))), path, chunks=(4, 16, 16))
    return path, image


def _ball(center, radius) -> np.ndarray:
    z, y, x = np.indices(SHAPE)
    return (((z - center[0]) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2) <= radius ** 2).astype(np.uint8)


def test_masks_round_trip_with_attrs_and_image_untouched(volume_path):
    path, image = volume_path
    a, b = _ball((5, 10, 12), 4), _ball((6, 8, 20), 3)
    assert write_masks(path, [Mask("GTV-1", a, {"roi_name": "GTV 1", "color": [255, 0, 0]}),
                              Mask("Lung_L", b, {"roi_number": np.int64(2)})]) == ["GTV-1", "Lung_L"]
    masks = open_masks(path)
    assert sorted(masks) == ["GTV-1", "Lung_L"]
    np.testing.assert_array_equal(masks["GTV-1"][...], a)
    np.testing.assert_array_equal(masks["Lung_L"][...], b)
    assert masks["GTV-1"].dtype == np.uint8
    assert dict(masks["GTV-1"].attrs) == {"roi_name": "GTV 1", "color": [255, 0, 0]}
    assert dict(masks["Lung_L"].attrs) == {"roi_number": 2}
    assert masks["GTV-1"].chunks == (4, 16, 16)  # the image's chunks: a slice of a mask reads like the image
    np.testing.assert_array_equal(open_volume(path).numpy(), image)
    assert not [n for n in os.listdir(os.path.dirname(path)) if "partial" in n]


def test_replacing_a_mask_keeps_the_others(volume_path):
    path, _ = volume_path
    a, b = _ball((5, 10, 12), 4), _ball((6, 8, 20), 3)
    write_masks(path, [Mask("a", a), Mask("b", b)])
    write_masks(path, [Mask("a", b, {"v": 2})])
    masks = open_masks(path)
    np.testing.assert_array_equal(masks["a"][...], b)
    np.testing.assert_array_equal(masks["b"][...], b)
    assert masks["a"].attrs["v"] == 2
    if path.endswith(".zip"):  # a zip member cannot be replaced in place: no duplicate entries left behind
        names = zipfile.ZipFile(path).namelist()
        assert len(names) == len(set(names))
    with pytest.raises(InputError, match="exists"):
        write_masks(path, [Mask("a", a)], replace=False)


def test_bad_masks_are_refused_and_leave_the_volume_unchanged(volume_path):
    path, _ = volume_path
    write_masks(path, [Mask("a", _ball((5, 10, 12), 4))])
    with pytest.raises(InputError, match=r"shape \(12, 20, 29\)"):
        write_masks(path, [Mask("b", np.zeros((12, 20, 29), np.uint8))])
    with pytest.raises(InputError, match="not store-safe"):
        write_masks(path, [Mask("bad/name", _ball((5, 10, 12), 4))])
    with pytest.raises(InputError, match="repeat"):
        write_masks(path, [Mask("c", _ball((5, 10, 12), 4)), Mask("c", _ball((5, 10, 12), 2))])
    assert sorted(open_masks(path)) == ["a"]


def test_a_failed_write_publishes_nothing(volume_path, monkeypatch):
    path, _ = volume_path
    write_masks(path, [Mask("a", _ball((5, 10, 12), 4))])
    import voxelpipe.stores.masks as masks_module

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(masks_module, "_create", fail)
    with pytest.raises(RuntimeError):
        write_masks(path, [Mask("b", _ball((5, 10, 12), 4))])
    monkeypatch.undo()
    assert sorted(open_masks(path)) == ["a"]
    assert not [n for n in os.listdir(os.path.dirname(path)) if "partial" in n]


def test_no_masks_and_missing_volume(tmp_path, volume_path):
    path, _ = volume_path
    assert open_masks(path) == {}
    with pytest.raises(InputError, match="no such volume"):
        write_masks(str(tmp_path / "absent.zarr"), [])


def test_zarr_metadata_is_plain_zarr3(volume_path):
    """Other zarr readers see masks as an ordinary group: labels/zarr.json is a group, each mask a group holding
    its array 0."""
    path, _ = volume_path
    if not path.endswith(".zarr"):
        pytest.skip("checked on the folder store, where the metadata files are visible")
    write_masks(path, [Mask("a", _ball((5, 10, 12), 4))])
    with open(os.path.join(path, "labels", "zarr.json")) as fh:
        assert json.load(fh)["node_type"] == "group"
    with open(os.path.join(path, "labels", "a", "0", "zarr.json")) as fh:
        meta = json.load(fh)
    assert meta["node_type"] == "array" and meta["shape"] == list(SHAPE) and meta["data_type"] == "uint8"


@pytest.mark.parametrize("name, taken, expected", [
    ("GTV-1", (), "GTV-1"), ("Lung Left", (), "Lung_Left"), ("a/b\\c", (), "a_b_c"), ("  ", (), "mask"),
    ("..", (), "mask"), ("GTV", ("GTV",), "GTV_2"), ("GTV", ("GTV", "GTV_2"), "GTV_3"), ("Läsion 1", (), "L_sion_1"),
])
def test_mask_array_name(name, taken, expected):
    assert mask_array_name(name, taken) == expected
