"""Zarr outputs are OME-Zarr (NGFF 0.5): checked with ome-zarr-models' validation and ome_zarr's Reader, and the
scale / translation against geometry worked out here from the DICOM headers with pydicom."""
from __future__ import annotations

import csv
import dataclasses
import glob
import os

import numpy as np
import pydicom
import pytest
import zarr

from voxelpipe.cli.app import main
from voxelpipe.core.masks import Mask
from voxelpipe.stores.masks import open_masks, write_masks
from voxelpipe.stores.zarr_store import open_store, store_kind
from voxelpipe.testing.synthetic import SeriesSpec, write_petct_study, write_series

from helpers import resave

image_models = pytest.importorskip("ome_zarr_models.v05.image", reason="ome-zarr-models (test extra) not installed")
pytest.importorskip("ome_zarr.reader", reason="ome-zarr (test extra) not installed")
from ome_zarr.io import parse_url  # noqa: E402
from ome_zarr.reader import Label, Multiscales, Reader  # noqa: E402

Image = image_models.Image

SPEC = SeriesSpec(n_slices=20, rows=64, columns=48, spacing=(2.5, 0.8, 0.7), origin=(-20.0, -30.0, 40.0), seed=7)
ANGLE = np.deg2rad(25.0)
ROW_COSINE = np.array([np.cos(ANGLE), np.sin(ANGLE), 0.0])  # an oblique series: rotated about the LPS z axis
COLUMN_COSINE = np.array([0.0, 0.0, -1.0])


@pytest.fixture(scope="module")
def oblique(tmp_path_factory):
    """An oblique series (slices not along a patient axis) with a non-zero origin, slices written shuffled."""
    folder = tmp_path_factory.mktemp("oblique")
    paths = write_series(folder, SPEC, names="shuffled")
    normal = np.cross(ROW_COSINE, COLUMN_COSINE)
    start = np.array([12.5, -7.25, 33.0])
    for index, path in enumerate(paths):
        position = start + index * SPEC.spacing[0] * normal
        resave(path, lambda ds, p=position: (
            setattr(ds, "ImageOrientationPatient", [*map(float, ROW_COSINE), *map(float, COLUMN_COSINE)]),
            setattr(ds, "ImagePositionPatient", [float(v) for v in p])))
    return folder


def _expected_from_headers(folder) -> tuple[list[float], list[float], np.ndarray]:
    """(spacing, translation, direction) of the (slice, row, column) array, from pydicom: PixelSpacing, the step
    between sorted ImagePositionPatient along the slice normal, and the origin projected on the axes."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in glob.glob(os.path.join(folder, "*"))]
    iop = np.array(headers[0].ImageOrientationPatient, dtype=float)
    row, column = iop[:3], iop[3:]
    normal = np.cross(row, column)
    unique = {tuple(float(v) for v in h.ImagePositionPatient) for h in headers}  # 4-D: each position per frame
    positions = sorted((np.array(p) for p in unique), key=lambda p: p @ normal)
    step = float(np.mean(np.diff([p @ normal for p in positions])))
    pixel = [float(v) for v in headers[0].PixelSpacing]  # (row spacing, column spacing)
    direction = np.column_stack([normal, column, row])  # array axes 0, 1, 2
    origin = positions[0]
    return [step, pixel[0], pixel[1]], (direction.T @ origin).tolist(), direction


def _open(path: str) -> zarr.Group:
    return zarr.open_group(store=open_store(path, store_kind(path), "r"), mode="r")


def _transforms(dataset) -> tuple[list[float], list[float]]:
    scale, translation = dataset.coordinateTransformations
    return list(scale.scale), list(translation.translation)


@pytest.fixture(scope="module")
def converted(oblique, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted")
    assert main(["--no-progress", "convert", str(oblique), "--out", str(out), "--levels", "3",
                 "--chunks", "4,32,32"]) == 0
    (path,) = glob.glob(str(out / "data" / "*.zarr"))
    return path


def test_convert_validates_with_scale_and_translation_from_the_headers(oblique, converted):
    model = Image.from_zarr(_open(converted))
    (multiscale,) = model.ome_attributes.multiscales
    assert [a.name for a in multiscale.axes] == ["z", "y", "x"]
    assert {a.type for a in multiscale.axes} == {"space"} and {a.unit for a in multiscale.axes} == {"millimeter"}
    spacing, translation, _ = _expected_from_headers(oblique)
    scale0, translation0 = _transforms(multiscale.datasets[0])
    np.testing.assert_allclose(scale0, spacing, atol=1e-6)
    np.testing.assert_allclose(translation0, translation, atol=1e-4)


def test_levels_halve_long_axes_and_double_the_scale(converted):
    group = _open(converted)
    (multiscale,) = Image.from_zarr(group).ome_attributes.multiscales
    assert len(multiscale.datasets) == 3
    arrays = [np.asarray(group[d.path][...]) for d in multiscale.datasets]
    assert arrays[0].shape == (SPEC.n_slices, SPEC.rows, SPEC.columns)
    for k in (1, 2):
        before, after = arrays[k - 1], arrays[k]
        (s0, t0), (s1, t1) = _transforms(multiscale.datasets[k - 1]), _transforms(multiscale.datasets[k])
        halved = [n1 == n0 // 2 and n1 < n0 for n0, n1 in zip(before.shape, after.shape)]
        assert halved[1] and halved[2], (before.shape, after.shape)  # in-plane axes always long enough here
        for axis in range(3):
            if halved[axis]:
                assert s1[axis] == pytest.approx(2 * s0[axis])
                # the first coarse voxel is centred between the first two fine ones
                assert t1[axis] == pytest.approx(t0[axis] + s0[axis] / 2)
            else:
                assert after.shape[axis] == before.shape[axis] and s1[axis] == pytest.approx(s0[axis])
                assert t1[axis] == pytest.approx(t0[axis])
        # each coarse voxel is the mean of its block, rounded to the volume's integer dtype
        f = [2 if h else 1 for h in halved]
        block = before[:after.shape[0] * f[0], :after.shape[1] * f[1], :after.shape[2] * f[2]]
        expected = block.reshape(after.shape[0], f[0], after.shape[1], f[1], after.shape[2], f[2]).mean(axis=(1, 3, 5))
        assert after.dtype == before.dtype
        np.testing.assert_allclose(after, expected, rtol=0, atol=0.5)
    assert arrays[1].shape[0] == SPEC.n_slices // 2 and arrays[2].shape[0] == SPEC.n_slices // 2  # 10 < 16: kept


def test_ome_zarr_reader_finds_the_image_and_its_labels(converted, tmp_path):
    import shutil

    path = str(tmp_path / "with_masks.zarr")
    shutil.copytree(converted, path)
    shape = (SPEC.n_slices, SPEC.rows, SPEC.columns)
    ball = np.zeros(shape, np.uint8)
    ball[5:15, 20:40, 10:30] = 1
    write_masks(path, [Mask("Ball", ball, {"roi_name": "Ball", "color": [255, 0, 0]}),
                       Mask("Box", np.ones(shape, np.uint8))])
    Image.from_zarr(_open(path))  # validates labels/, each label group and their level counts
    nodes = list(Reader(parse_url(path))())
    image = nodes[0]
    assert any(isinstance(spec, Multiscales) for spec in image.specs)
    assert len(image.data) == 3 and image.data[0].shape == shape
    assert image.metadata["axes"][0]["name"] == "z"
    labels = [n for n in nodes if any(isinstance(spec, Label) for spec in n.specs)]
    assert sorted(n.metadata["name"] for n in labels) == ["Ball", "Box"]
    ball_node = next(n for n in labels if n.metadata["name"] == "Ball")
    np.testing.assert_array_equal(np.asarray(ball_node.data[0]), ball)
    assert np.asarray(ball_node.data[1]).shape == (SPEC.n_slices // 2, SPEC.rows // 2, SPEC.columns // 2)
    assert np.asarray(ball_node.data[1]).max() == 1 and set(np.unique(np.asarray(ball_node.data[2]))) == {0, 1}
    # the training side reads full resolution
    assert sorted(open_masks(path)) == ["Ball", "Box"]
    np.testing.assert_array_equal(np.asarray(open_masks(path)["Ball"][...]), ball)


def test_zip_store_validates_with_masks(oblique, tmp_path):
    out = tmp_path / "zip"
    assert main(["--no-progress", "convert", str(oblique), "--out", str(out), "--store", "zip", "--levels", "2"]) == 0
    (path,) = glob.glob(str(out / "data" / "*.zarr.zip"))
    Image.from_zarr(_open(path))
    write_masks(path, [Mask("m", np.ones((SPEC.n_slices, SPEC.rows, SPEC.columns), np.uint8))])
    write_masks(path, [Mask("m", np.zeros((SPEC.n_slices, SPEC.rows, SPEC.columns), np.uint8)),
                       Mask("n", np.ones((SPEC.n_slices, SPEC.rows, SPEC.columns), np.uint8))])
    model = Image.from_zarr(_open(path))
    assert sorted(model.labels.label_paths) == ["m", "n"]
    assert int(np.asarray(open_masks(path)["m"][...]).max()) == 0


def test_4d_volume_has_a_time_axis_first(tmp_path):
    folder = tmp_path / "cine"
    first = SeriesSpec(n_slices=6, rows=16, columns=18, spacing=(3.0, 0.5, 0.6), origin=(1.0, 2.0, 3.0), seed=51)
    for spec, time in ((first, "0"), (dataclasses.replace(first, seed=52), "40")):
        for path in write_series(folder, spec, names="shuffled"):
            resave(path, lambda ds, t=time: setattr(ds, "TriggerTime", t))
    out = tmp_path / "out"
    assert main(["--no-progress", "convert", str(folder), "--out", str(out)]) == 0
    (path,) = glob.glob(str(out / "data" / "*.zarr"))
    model = Image.from_zarr(_open(path))
    (multiscale,) = model.ome_attributes.multiscales
    assert [(a.name, a.type) for a in multiscale.axes] == [("t", "time"), ("z", "space"), ("y", "space"),
                                                           ("x", "space")]
    spacing, translation, _ = _expected_from_headers(folder)
    scale, shift = _transforms(multiscale.datasets[0])
    np.testing.assert_allclose(scale, [1.0, *spacing], atol=1e-6)
    np.testing.assert_allclose(shift, [0.0, *translation], atol=1e-4)
    nodes = list(Reader(parse_url(path))())
    assert nodes[0].data[0].shape == (2, 6, 16, 18)


def test_resample_output_validates(oblique, converted, tmp_path):
    out = tmp_path / "resampled"
    assert main(["--no-progress", "resample", converted, "--out", str(out), "--spacing", "2,2,2",
                 "--orientation", "LAS", "--levels", "2"]) == 0
    (path,) = glob.glob(str(out / "data" / "*.zarr"))
    group = _open(path)
    (multiscale,) = Image.from_zarr(group).ome_attributes.multiscales
    assert len(multiscale.datasets) == 2
    scale, translation = _transforms(multiscale.datasets[0])
    np.testing.assert_allclose(scale, [2.0, 2.0, 2.0])
    # the array axes now run along L, A, S: their unit vectors from the LAS code itself
    las = np.array([[1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0]]).T
    affine = np.asarray(group.attrs["affine"])
    direction = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    np.testing.assert_allclose(direction, las, atol=0.5)  # closest code of an oblique series
    np.testing.assert_allclose(translation, direction.T @ affine[:3, 3], atol=1e-4)


def test_old_masks_layout_still_opens(converted, tmp_path):
    import shutil

    path = str(tmp_path / "old.zarr")
    shutil.copytree(converted, path)
    group = zarr.open_group(path, mode="r+")
    old = np.zeros((SPEC.n_slices, SPEC.rows, SPEC.columns), np.uint8)
    old[3] = 1
    group.require_group("masks").create_array("Old", data=old)
    assert sorted(open_masks(path)) == ["Old"]
    np.testing.assert_array_equal(np.asarray(open_masks(path)["Old"][...]), old)
    write_masks(path, [Mask("New", 1 - old)])
    masks = open_masks(path)
    assert sorted(masks) == ["New", "Old"]
    np.testing.assert_array_equal(np.asarray(masks["New"][...]), 1 - old)


def test_petct_subject_file_groups_validate(tmp_path):
    info = write_petct_study(tmp_path / "study", mask="RTSTRUCT", patient_id="A", ct_shape=(24, 40, 40),
                             ct_spacing=(2.5, 1.0, 1.0), pet_shape=(20, 24, 24), pet_spacing=(3.5, 2.0, 2.0),
                             sphere_radius_mm=6.0)
    index = tmp_path / "index.csv"
    row = {"subject_id": "s1", "patient_dir": info["folder"], "study_dir": info["folder"],
           "study_instance_uid": info["study_uid"], "ct_series_uid": info["ct_series_uid"],
           "pet_series_uid": info["pet_series_uid"], "mask_kind": info["mask_kind"], "mask_path": info["mask_path"],
           "mask_series_uid": "", "n_ct_files": len(info["ct_files"]), "n_pet_files": len(info["pet_files"])}
    with open(index, "w", newline="") as fh:
        writer = csv.DictWriter(fh, list(row))
        writer.writeheader()
        writer.writerow(row)
    out = tmp_path / "subjects.zarr"
    assert main(["--no-progress", "petct", str(index), "--out", str(out), "--shape", "32,32,20", "--workers", "1",
                 "--levels", "2"]) == 0
    root = zarr.open_group(str(out), mode="r")
    geometry = root["image/s1"].attrs["geometry"]
    for name in ("image", "mask", "mask_iso"):
        model = Image.from_zarr(root[name])
        (multiscale,) = model.ome_attributes.multiscales
        assert multiscale.name == "s1"
        assert [(a.name, a.type) for a in multiscale.axes] == [("c", "channel"), ("x", "space"), ("y", "space"),
                                                               ("z", "space")]  # LAS: L, A, S
        scale, translation = _transforms(multiscale.datasets[0])
        np.testing.assert_allclose(scale[1:], geometry["spacing"])
        direction = np.asarray(geometry["direction"])
        np.testing.assert_allclose(translation[1:], direction.T @ np.asarray(geometry["origin"]), atol=1e-6)
        assert root[name][multiscale.datasets[1].path].shape[1:] == (16, 16, 10)
    assert root["image/s1"].shape == (2, 32, 32, 20)


def _subject(seed: int, shape=(2, 20, 18, 16)):
    rng = np.random.default_rng(seed)
    image = rng.random(shape, dtype=np.float32)
    mask = (rng.random((1, *shape[1:])) > 0.7).astype(np.uint8)
    spacing = [1.5, 2.0, 2.5]
    direction = [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]  # LAS columns
    origin = [10.0, 20.0, -30.0]
    attrs = {"geometry": {"spacing": spacing, "origin": origin, "direction": direction, "shape": list(shape[1:])}}
    return image, mask, mask, attrs


def test_subject_copies_merge_and_replacement_keep_valid_ngff(tmp_path):
    from voxelpipe.stores.subject_store import open_subject_store

    first, second = tmp_path / "a.zarr", tmp_path / "b.zarr"
    with open_subject_store(first, "a", levels=2) as store:
        store.write("s1", *_subject(1))
        store.write("s2", *_subject(2))
        store.write("s1", *_subject(3))  # replaced: one entry, not two
    with open_subject_store(second, "a") as target, open_subject_store(first) as source:
        target.copy_subject(source, "s2", "copied")
    for path, names, levels in ((first, ["s1", "s2"], 2), (second, ["copied"], 2)):
        root = zarr.open_group(str(path), mode="r")
        for group in ("image", "mask", "mask_iso"):
            (model_names, model_levels) = zip(*[(m.name, len(m.datasets))
                                                for m in Image.from_zarr(root[group]).ome_attributes.multiscales])
            assert list(model_names) == names and set(model_levels) == {levels}
        for multiscale in Image.from_zarr(root["image"]).ome_attributes.multiscales:
            scale, translation = _transforms(multiscale.datasets[0])
            assert [a.name for a in multiscale.axes] == ["c", "x", "y", "z"]  # L, A, S
            np.testing.assert_allclose(scale, [1.0, 1.5, 2.0, 2.5])
            np.testing.assert_allclose(translation, [0.0, 10.0, -20.0, -30.0])  # A = -P
            coarse = np.asarray(root["image"][multiscale.datasets[1].path][...])
            fine = np.asarray(root["image"][multiscale.datasets[0].path][...])
            assert coarse.shape == (2, 10, 9, 8)  # every axis has >= 16 voxels: all halved, channels kept
            np.testing.assert_allclose(coarse, fine.reshape(2, 10, 2, 9, 2, 8, 2).mean(axis=(2, 4, 6)), rtol=1e-6)
    with open_subject_store(first, "a") as store:
        store.write("s2", *_subject(4, shape=(2, 8, 8, 8)))  # too small to halve: level 1 = level 0's shape
        assert store.subjects() == ["s1", "s2"]
    Image.from_zarr(zarr.open_group(str(first), mode="r")["image"])


def test_label_pyramid_is_the_block_mode():
    from voxelpipe.stores.ngff import pyramid

    labels = np.zeros((16, 16, 16), np.uint8)
    labels[:, :, :5] = 2  # a stripe 5 voxels wide: block 2 (columns 4, 5) is a 4-4 tie -> the higher label
    labels[0, 0, 0] = 7
    (coarse,) = pyramid(labels, 2, labels=True)
    assert coarse.shape == (8, 8, 8) and coarse.dtype == np.uint8
    assert set(np.unique(coarse)) == {0, 2}  # a single voxel does not survive its block
    np.testing.assert_array_equal(coarse[:, :, :3], 2)
    np.testing.assert_array_equal(coarse[:, :, 3:], 0)
