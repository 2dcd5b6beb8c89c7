"""Philips MR scaling: ``--philips-scaling precise`` against dcm2niix's NIfTI of the same run (its default
``-p y``), ``display`` against pydicom's ``apply_modality_lut``; the precise pair on hand-picked numbers; other
manufacturers untouched by the option."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

import voxelpipe
from voxelpipe.core.types import PhilipsScaling, Status
from voxelpipe.dicom.philips import applied_pair, precise_pair
from voxelpipe.stores.volumes import open_volume
from voxelpipe.testing.synthetic import SeriesSpec, write_series

nib = pytest.importorskip("nibabel")

FMRI = Path("philips-fmri") / "In" / "Magdeburg_2014" / "fmri"
REF = Path("philips-fmri") / "Ref" / "EPI_asc_CLEAR_201.nii"
RS, SS = 1.29035409035409, 0.004284040071070194  # the run's RescaleSlope (0028,1053) and MR Scale Slope (2005,100E)


def convert_one(folder: Path, out: Path, scaling: str):
    rows = voxelpipe.convert([str(folder)], out=str(out), workers=1, progress=False, philips_scaling=scaling)
    assert len(rows) == 1 and rows[0]["status"] == Status.DONE, rows
    return open_volume(rows[0]["path"]), rows[0]


def canonical(data: np.ndarray, affine: np.ndarray):
    return nib.as_closest_canonical(nib.Nifti1Image(data, affine))


def test_precise_pair_formula():
    # FP = (PV * RS + RI) / (RS * SS), written out for PV = 0 and PV = 1
    slope, intercept = precise_pair(2.0, -10.0, 0.5)
    assert intercept == pytest.approx((0 * 2.0 - 10.0) / (2.0 * 0.5))
    assert slope + intercept == pytest.approx((1 * 2.0 - 10.0) / (2.0 * 0.5))
    assert precise_pair(2.0, -10.0, 0.0) == (2.0, -10.0)  # no scale slope: display values
    assert applied_pair("Philips Medical Systems", 2.0, -10.0, 0.5, PhilipsScaling.DISPLAY) == (2.0, -10.0)
    assert applied_pair("SIEMENS", 2.0, -10.0, 0.5, PhilipsScaling.PRECISE) == (2.0, -10.0)
    assert applied_pair("Philips", 2.0, -10.0, 0.5, PhilipsScaling.PRECISE) == pytest.approx((2.0, -10.0))


def test_precise_matches_dcm2niix(shared_data, tmp_path):
    volume, row = convert_one(shared_data / FMRI, tmp_path / "out", "precise")
    assert volume.shape == (3, 9, 64, 64) and volume.dtype == np.float32
    ref = nib.load(shared_data / REF)
    ours = canonical(np.moveaxis(volume.numpy(), 0, -1), np.asarray(volume.attrs["affine_ras"], dtype=np.float64))
    theirs = nib.as_closest_canonical(ref)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-3)
    expected = np.asarray(theirs.dataobj, dtype=np.float64)
    got = np.asarray(ours.dataobj, dtype=np.float64)
    np.testing.assert_allclose(got, expected, rtol=2 * np.finfo(np.float32).eps, atol=0)
    assert expected.max() > 1e5  # the precise values, not the display ones (about 1/(RS*SS) = 181 times smaller)
    meta = json.loads((tmp_path / "out" / "meta" / f"{row['series_key']}.series.json").read_text())
    for attrs in (volume.attrs, meta):
        assert attrs["philips_scaling"] == "precise"
        tags = attrs["philips_tags"]
        assert tags["RescaleSlope (0028,1053)"] == pytest.approx([RS])
        assert tags["MRScaleSlope (2005,100E)"] == pytest.approx([SS])
        assert tags["RescaleIntercept (0028,1052)"] == [0.0]
        assert attrs["rescale_slope"] == pytest.approx([1 / SS])


def test_display_matches_modality_lut(shared_data, tmp_path):
    folder = shared_data / FMRI
    volume, _ = convert_one(folder, tmp_path / "out", "display")
    assert volume.attrs["philips_scaling"] == "display"
    assert volume.attrs["philips_scaling_requested"] == "display"
    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    positions = sorted({round(float(np.asarray(ds.ImagePositionPatient, dtype=float) @ normal), 3) for ds in datasets})
    times = sorted({int(ds.TemporalPositionIdentifier) for ds in datasets})
    expected = np.zeros(volume.shape, dtype=np.float32)
    for ds in datasets:
        z = positions.index(round(float(np.asarray(ds.ImagePositionPatient, dtype=float) @ normal), 3))
        t = times.index(int(ds.TemporalPositionIdentifier))
        expected[t, z] = apply_modality_lut(ds.pixel_array, ds)
    np.testing.assert_array_equal(volume.numpy(), expected)


def test_non_philips_unaffected(tmp_path):
    spec = SeriesSpec(n_slices=4, rows=16, columns=16)
    tags = {"Manufacturer": "SIEMENS"}
    write_series(tmp_path / "dicom", spec, tags=tags)
    display, _ = convert_one(tmp_path / "dicom", tmp_path / "display", "display")
    precise, _ = convert_one(tmp_path / "dicom", tmp_path / "precise", "precise")
    np.testing.assert_array_equal(display.numpy(), precise.numpy())
    assert display.dtype == np.int16
    assert "philips_scaling" not in precise.attrs


def add_philips_scaling(path: Path, rescale_slope: float, rescale_intercept: float, scale_slope: float) -> None:
    """Make a synthetic file a Philips MR one: Manufacturer, rescale pair and the private MR Scale Slope."""
    ds = pydicom.dcmread(path)
    ds.Manufacturer = "Philips Medical Systems"
    ds.RescaleSlope = f"{rescale_slope:g}"
    ds.RescaleIntercept = f"{rescale_intercept:g}"
    block = ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
    block.add_new(0x0E, "FL", scale_slope)
    block.add_new(0x0D, "FL", 0.0)
    ds.save_as(path, enforce_file_format=True)


def test_precise_per_slice_pairs_on_synthetic_files(tmp_path):
    spec = SeriesSpec(n_slices=4, rows=16, columns=16, modality="MR")
    paths = write_series(tmp_path / "dicom", spec)
    pairs = [(1.5, -3.0, 0.02), (1.5, -3.0, 0.02), (2.25, 0.0, 0.5), (0.75, 10.0, 3.0)]
    for path, (rs, ri, ss) in zip(paths, pairs):
        add_philips_scaling(Path(path), rs, ri, ss)
    expected = np.stack([  # FP = (PV * RS + RI) / (RS * SS), PV from pydicom, in slice order
        (pydicom.dcmread(p).pixel_array.astype(np.float64) * rs + ri) / (rs * ss)
        for p, (rs, ri, ss) in zip(paths, pairs)])
    volume, row = convert_one(tmp_path / "dicom", tmp_path / "precise", "precise")
    assert volume.dtype == np.float32 and row["verification"].startswith("ok")
    np.testing.assert_allclose(volume.numpy(), expected, rtol=1e-6, atol=1e-4)
    assert volume.attrs["philips_tags"]["MRScaleSlope (2005,100E)"] == pytest.approx([0.02, 0.5, 3.0])
    display, _ = convert_one(tmp_path / "dicom", tmp_path / "display", "display")
    reference = np.stack([apply_modality_lut(pydicom.dcmread(p).pixel_array, pydicom.dcmread(p)) for p in paths])
    np.testing.assert_array_equal(display.numpy(), reference.astype(display.dtype))
