"""voxelpipe.stores.registry (suffix ↔ format and store kind) and stores.writer (the VolumeWriter protocol and
its factory): the suffixes written out by hand, and every writer round-tripped through its format's reader."""
from __future__ import annotations

import numpy as np
import pytest

from voxelpipe.core.errors import InputError, StoreError
from voxelpipe.core.geometry import Geometry
from voxelpipe.core.types import Format, StoreKind
from voxelpipe.stores import registry
from voxelpipe.stores.volumes import open_volume
from voxelpipe.stores.writer import VolumeWriter, writer_for


@pytest.mark.parametrize(("name", "fmt", "kind"), [
    ("a/k.zarr", Format.ZARR, StoreKind.DIR),
    ("a/k.zarr/", Format.ZARR, StoreKind.DIR),
    ("a/k.zarr.zip", Format.ZARR, StoreKind.ZIP),
    ("a/k.zarr.sqlite", Format.ZARR, StoreKind.SQLITE),
    ("a/k.h5", Format.HDF5, None),
    ("a/k.hdf5", Format.HDF5, None),
    ("a/k.npz", Format.NPZ, None),
    ("a/k.nii.gz", Format.NIFTI, None),
    ("a/k.nii", Format.NIFTI, None),
])
def test_suffixes_name_format_and_kind(name, fmt, kind):
    assert registry.volume_format(name) == fmt
    assert registry.is_volume_path(name)
    if kind is None:
        with pytest.raises(StoreError, match="not a voxelpipe Zarr volume"):
            registry.store_kind(name)
    else:
        assert registry.store_kind(name) == kind


def test_volume_suffix_and_path():
    assert registry.volume_suffix("zarr", "dir") == ".zarr"
    assert registry.volume_suffix(Format.ZARR, StoreKind.ZIP) == ".zarr.zip"
    assert registry.volume_suffix("zarr", "sqlite") == ".zarr.sqlite"
    assert registry.volume_suffix("hdf5", "sqlite") == ".h5"  # the kind only matters for Zarr
    assert registry.volume_suffix("npz") == ".npz"
    assert registry.volume_suffix("nifti") == ".nii.gz"
    assert registry.volume_suffix("nifti", nifti_gzip=False) == ".nii"
    assert registry.volume_path("out/data", "abc", "zarr", "zip") == "out/data/abc.zarr.zip"
    for bad in (("tiff", "dir"), ("zarr", "s3")):
        with pytest.raises(StoreError) as caught:
            registry.volume_suffix(*bad)
        assert isinstance(caught.value, ValueError)


def test_unknown_names():
    assert not registry.is_volume_path("a/k.mha")
    with pytest.raises(StoreError, match="not a voxelpipe volume"):
        registry.volume_format("a/k.mha")


def test_subject_file_format():
    assert registry.subject_file_format("x/s.h5") == Format.HDF5
    assert registry.subject_file_format("x/s.HDF5") == Format.HDF5
    assert registry.subject_file_format("x/s.zarr/") == Format.ZARR
    with pytest.raises(InputError, match="unknown subject file kind"):
        registry.subject_file_format("x/s.zarr.zip")


def test_store_error_is_both_builtins():
    assert issubclass(StoreError, ValueError) and issubclass(StoreError, TypeError)


@pytest.mark.parametrize(("fmt", "kind"), [("zarr", "dir"), ("zarr", "zip"), ("zarr", "sqlite"), ("hdf5", "dir"),
                                           ("npz", "dir"), ("nifti", "dir")])
def test_every_writer_round_trips(tmp_path, fmt, kind):
    rng = np.random.default_rng(7)
    data = rng.integers(-1000, 3000, size=(5, 6, 7), dtype=np.int16)
    geometry = Geometry((5, 6, 7), (2.5, 0.5, 0.75), (10.0, -20.0, 30.0), np.eye(3))
    path = registry.volume_path(tmp_path, "k", fmt, kind)
    writer = writer_for(fmt, kind)(path, data.shape, data.dtype, (2, 6, 7), geometry.to_attrs(), 1)
    assert isinstance(writer, VolumeWriter)
    for z0 in range(0, 5, 2):
        writer.write(z0, data[z0:z0 + 2])
    np.testing.assert_array_equal(writer.read((slice(0, 5),)), data)
    assert writer.finish() > 0
    volume = open_volume(path, "image" if fmt == "hdf5" else None)
    np.testing.assert_array_equal(volume.numpy(), data)
    np.testing.assert_allclose(volume.geometry.spacing, (2.5, 0.5, 0.75))


def test_abort_leaves_nothing(tmp_path):
    path = registry.volume_path(tmp_path, "k", "zarr", "zip")
    writer = writer_for("zarr", "zip")(path, (2, 3, 4), np.dtype(np.uint8), (1, 3, 4), {}, 1)
    writer.write(0, np.ones((1, 3, 4), np.uint8))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_unknown_writer():
    with pytest.raises(StoreError, match="unknown format"):
        writer_for("tiff")
