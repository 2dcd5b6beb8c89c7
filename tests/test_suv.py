"""Body-weight SUV factors (voxelpipe.dicom.suv) and ``python -m voxelpipe suv``.

Expected factors are worked out here by hand from the QIBA formula with literal numbers,
factor = weight_kg × 1000 / (dose_Bq × 2^(−uptake_s / half_life_s)), never taken from the code under test.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from voxelpipe.cli.app import main
from voxelpipe.core.errors import BadTagValueError, InputError, MissingTagError
from voxelpipe.dicom.suv import (
    NegativeUptakeError,
    SuvError,
    SuvMissingTagError,
    SuvTagValueError,
    UnsupportedUnitsError,
    suv_factors,
    suv_for_files,
)

PET_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
# the header every case starts from: 75 kg, 370 MBq of F-18 (T½ 6586.2 s) injected at 09:30:00,
# series (and first acquisition) at 10:30:00 -> uptake 3600 s
WEIGHT_KG, DOSE_BQ, HALF_LIFE_S = 75.0, 370e6, 6586.2


def pet_header(n: int = 3, *, units="BQML", decay="START", series_time="103000", acq_times=None,
               start_time="093000", start_datetime=None, series_date="20200101", weight="75.0",
               dose="370000000", half_life="6586.2", series_uid=None) -> list[Dataset]:
    series_uid = series_uid or generate_uid()
    acq_times = acq_times or [series_time] * n
    datasets = []
    for i in range(n):
        ds = Dataset()
        ds.SOPClassUID = PET_STORAGE
        ds.SOPInstanceUID = generate_uid()
        ds.Modality = "PT"
        ds.PatientID = "SUV-TEST"
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.1492.77"
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = i + 1
        ds.Units = units
        ds.DecayCorrection = decay
        ds.CorrectedImage = ["DECY", "ATTN"]
        ds.SeriesDate = series_date
        ds.SeriesTime = series_time
        ds.AcquisitionDate = series_date
        ds.AcquisitionTime = acq_times[i]
        if weight is not None:
            ds.PatientWeight = weight
        item = Dataset()
        if start_time is not None:
            item.RadiopharmaceuticalStartTime = start_time
        if start_datetime is not None:
            item.RadiopharmaceuticalStartDateTime = start_datetime
        if dose is not None:
            item.RadionuclideTotalDose = dose
        item.RadionuclideHalfLife = half_life
        ds.RadiopharmaceuticalInformationSequence = DicomSequence([item])
        ds.RescaleSlope = "1"
        ds.RescaleIntercept = "0"
        ds.filename = f"/synthetic/pet_{i:03d}.dcm"
        datasets.append(ds)
    return datasets


def write_files(folder: Path, datasets: list[Dataset]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        path = str(folder / f"IM{i:04d}.dcm")
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------------------
# every branch against hand-computed factors
# ----------------------------------------------------------------------------------------------------------
def test_bqml_start_series_time():
    result = suv_factors(pet_header())
    # 75 kg -> 75000 g; 370e6 Bq decayed over 3600 s: 2^(-3600/6586.2) = 0.684624...
    expected = 75000.0 / (370e6 * 2 ** (-3600.0 / 6586.2))
    assert expected == pytest.approx(2.9608e-4, rel=1e-3)  # the arithmetic itself, as a sanity anchor
    np.testing.assert_allclose(result.factors, [expected] * 3, rtol=1e-12)
    a = result.audit
    assert (a["units"], a["decay_correction"], a["uptake_seconds"]) == ("BQML", "START", 3600.0)
    assert a["reference_time"] == "2020-01-01T10:30:00" and "SeriesTime (0008,0031)" in a["reference_time_source"]
    assert a["injection_time"] == "2020-01-01T09:30:00"
    assert "RadiopharmaceuticalStartTime (0018,1072)" in a["injection_time_source"]
    assert (a["injected_dose_bq"], a["half_life_s"], a["weight_kg"]) == (370e6, 6586.2, 75.0)
    assert "(0018,1074)" in a["injected_dose_tag"] and "(0018,1075)" in a["half_life_tag"]
    assert a["weight_tag"] == "PatientWeight (0010,1030)"
    assert a["factor"] == pytest.approx(expected, rel=1e-12) and a["n_slices"] == 3
    assert a["notes"] == []
    json.dumps(a)  # JSON-ready


def test_bqml_start_acquisition_earlier_than_series_time():
    # a post-processed series: SeriesTime 10:45 after the acquisitions 10:32, 10:30, 10:31 -> earliest 10:30
    result = suv_factors(pet_header(series_time="104500", acq_times=["103200", "103000", "103100"]))
    expected = 75000.0 / (370e6 * 2 ** (-3600.0 / 6586.2))  # 09:30 -> 10:30
    np.testing.assert_allclose(result.factors, [expected] * 3, rtol=1e-12)
    assert result.audit["reference_time"] == "2020-01-01T10:30:00"
    assert "AcquisitionTime (0008,0032)" in result.audit["reference_time_source"]
    # with the series not after the acquisition, the series time wins even if acquisitions are later
    later = suv_factors(pet_header(series_time="103000", acq_times=["104000"] * 3))
    np.testing.assert_allclose(later.factors, [expected] * 3, rtol=1e-12)


def test_bqml_start_ge_private_scan_time_for_post_processed_series():
    datasets = pet_header(series_time="110000", acq_times=["103500"] * 3)
    for ds in datasets:
        ds.private_block(0x0009, "GEMS_PETD_01", create=True).add_new(0x0D, "DT", "20200101103100")
    result = suv_factors(datasets)
    expected = 75000.0 / (370e6 * 2 ** (-3660.0 / 6586.2))  # 09:30:00 -> 10:31:00 (GE scan time) = 3660 s
    np.testing.assert_allclose(result.factors, [expected] * 3, rtol=1e-12)
    assert "(0009,100D" in result.audit["reference_time_source"]


def test_bqml_admin_no_further_decay():
    result = suv_factors(pet_header(decay="ADMIN"))
    expected = 75000.0 / 370e6  # = 2.027027e-4
    np.testing.assert_allclose(result.factors, [expected] * 3, rtol=1e-12)
    assert result.audit["decay_correction"] == "ADMIN" and result.audit["factor"] == pytest.approx(expected)


def test_bqml_none_decays_each_slice_to_its_own_acquisition_time():
    # slices acquired at 10:30, 10:35, 10:40 -> uptakes 3600, 3900, 4200 s; given in a shuffled order
    result = suv_factors(pet_header(decay="NONE", acq_times=["103500", "103000", "104000"]))
    expected = [75000.0 / (370e6 * 2 ** (-3900.0 / 6586.2)),
                75000.0 / (370e6 * 2 ** (-3600.0 / 6586.2)),
                75000.0 / (370e6 * 2 ** (-4200.0 / 6586.2))]
    np.testing.assert_allclose(result.factors, expected, rtol=1e-12)
    a = result.audit
    assert a["factor"] is None
    assert a["factor_min"] == pytest.approx(expected[1]) and a["factor_max"] == pytest.approx(expected[2])
    assert a["uptake_seconds"] == 3600.0 and a["uptake_seconds_max"] == 4200.0


def _philips(datasets, offset, value):
    for ds in datasets:
        ds.private_block(0x7053, "Philips PET Private Group", create=True).add_new(offset, "DS", value)
    return datasets


def test_philips_cnts_suv_scale_factor():
    result = suv_factors(_philips(pet_header(units="CNTS"), 0x00, "0.000123"))
    np.testing.assert_allclose(result.factors, [0.000123] * 3, rtol=1e-12)
    assert "(7053,1000)" in result.audit["method"]


def test_philips_cnts_activity_concentration_scale_factor():
    # (7053,1009) = 2.5 turns the rescaled counts into Bq/ml; then the BQML START formula
    result = suv_factors(_philips(pet_header(units="CNTS"), 0x09, "2.5"))
    expected = 2.5 * 75000.0 / (370e6 * 2 ** (-3600.0 / 6586.2))
    np.testing.assert_allclose(result.factors, [expected] * 3, rtol=1e-12)
    assert result.audit["activity_scale"] == 2.5 and "(7053,1009)" in result.audit["activity_scale_tag"]


def test_philips_tags_survive_a_file_round_trip(tmp_path):
    paths = write_files(tmp_path / "philips", _philips(pet_header(units="CNTS"), 0x09, "2.5"))
    expected = 2.5 * 75000.0 / (370e6 * 2 ** (-3600.0 / 6586.2))
    np.testing.assert_allclose(suv_for_files(paths).factors, [expected] * 3, rtol=1e-12)


def test_gml_is_suv_already():
    result = suv_factors(pet_header(units="GML", weight=None, dose=None))
    np.testing.assert_array_equal(result.factors, [1.0, 1.0, 1.0])
    assert result.factors.dtype == np.float64


def test_start_datetime_wins_over_start_time():
    # DateTime says 09:00:00, the (ignored) Time says 09:30:00 -> uptake 10:30 - 09:00 = 5400 s
    result = suv_factors(pet_header(start_datetime="20200101090000.000000", start_time="093000"))
    expected = 75000.0 / (370e6 * 2 ** (-5400.0 / 6586.2))
    np.testing.assert_allclose(result.factors, [expected] * 3, rtol=1e-12)
    assert result.audit["injection_time_source"] == "RadiopharmaceuticalStartDateTime (0018,1078)"
    assert result.audit["uptake_seconds"] == 5400.0


def test_start_time_only_across_midnight():
    # injected 23:45 on Jan 1st, series at 00:30 on Jan 2nd: SeriesDate + StartTime would be 23:45 on Jan 2nd
    result = suv_factors(pet_header(series_date="20200102", series_time="003000", start_time="234500"))
    expected = 75000.0 / (370e6 * 2 ** (-2700.0 / 6586.2))  # 45 min = 2700 s
    np.testing.assert_allclose(result.factors, [expected] * 3, rtol=1e-12)
    assert result.audit["injection_time"] == "2020-01-01T23:45:00"
    assert "midnight" in result.audit["injection_time_source"]


# ----------------------------------------------------------------------------------------------------------
# header errors: the right class and message, never a factor
# ----------------------------------------------------------------------------------------------------------
def test_missing_weight():
    with pytest.raises(SuvMissingTagError) as info:
        suv_factors(pet_header(weight=None))
    assert isinstance(info.value, MissingTagError) and isinstance(info.value, SuvError)
    assert "PatientWeight (0010,1030)" in str(info.value) and "/synthetic/pet_000.dcm" in str(info.value)


def test_zero_weight_and_non_positive_dose():
    with pytest.raises(SuvTagValueError, match=r"PatientWeight \(0010,1030\).*'0'"):
        suv_factors(pet_header(weight="0"))
    with pytest.raises(SuvTagValueError, match=r"RadionuclideTotalDose \(0018,1074\).*'-5'") as info:
        suv_factors(pet_header(dose="-5"))
    assert isinstance(info.value, BadTagValueError)


def test_negative_uptake_time():
    # injection 11:00 after the series start 10:30 on the same day (not a midnight crossing: 23.5 h back)
    with pytest.raises(NegativeUptakeError) as info:
        suv_factors(pet_header(start_time="110000"))
    assert isinstance(info.value, BadTagValueError)
    message = str(info.value)
    assert "RadiopharmaceuticalStartTime (0018,1072)" in message and "'110000'" in message
    assert "negative uptake" in message and "/synthetic/pet_000.dcm" in message
    # an explicit DateTime is never moved a day
    with pytest.raises(NegativeUptakeError, match=r"\(0018,1078\)"):
        suv_factors(pet_header(start_datetime="20200101103100"))


@pytest.mark.parametrize("units", ["PROPCNTS", "MGMINML", "CNTS"])
def test_unknown_units(units):
    with pytest.raises(UnsupportedUnitsError) as info:
        suv_factors(pet_header(units=units))
    assert isinstance(info.value, BadTagValueError)
    assert "Units (0054,1001)" in str(info.value) and repr(units) in str(info.value)


@pytest.mark.filterwarnings("ignore:Invalid value for VR TM")
def test_missing_units_and_missing_times():
    datasets = pet_header()
    for ds in datasets:
        del ds.Units
    with pytest.raises(SuvMissingTagError, match=r"Units \(0054,1001\)"):
        suv_factors(datasets)
    with pytest.raises(SuvMissingTagError, match=r"\(0018,1078\) or .*\(0018,1072\)"):
        suv_factors(pet_header(start_time=None))
    datasets = pet_header()
    for ds in datasets:
        del ds.SeriesTime, ds.AcquisitionTime
    with pytest.raises(SuvMissingTagError, match=r"SeriesTime \(0008,0031\)"):
        suv_factors(datasets)
    with pytest.raises(SuvTagValueError, match=r"SeriesTime \(0008,0031\).*'10h30'"):
        suv_factors(pet_header(series_time="10h30"))


def test_unknown_decay_correction():
    with pytest.raises(UnsupportedUnitsError, match=r"DecayCorrection \(0054,1102\).*'LATER'"):
        suv_factors(pet_header(decay="LATER"))


# ----------------------------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------------------------
def test_cli_one_json_line_per_series(tmp_path, capsys):
    write_files(tmp_path / "study" / "a", pet_header(4))
    write_files(tmp_path / "study" / "b", pet_header(2, decay="NONE", acq_times=["103000", "104000"]))
    assert main(["suv", str(tmp_path / "study")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    records = sorted((json.loads(line) for line in lines), key=lambda r: r["n_files"])
    assert [r["n_files"] for r in records] == [2, 4]
    none, start = records
    assert start["factor"] == pytest.approx(75000.0 / (370e6 * 2 ** (-3600.0 / 6586.2)), rel=1e-12)
    assert start["audit"]["units"] == "BQML" and start["audit"]["decay_correction"] == "START"
    assert none["factor"] is None
    assert [s["factor"] for s in none["slice_factors"]] == pytest.approx(
        [75000.0 / (370e6 * 2 ** (-3600.0 / 6586.2)), 75000.0 / (370e6 * 2 ** (-4200.0 / 6586.2))], rel=1e-12)


def test_cli_exit_1_names_the_failed_series_and_prints_the_others(tmp_path, capsys):
    good = pet_header(2)
    bad = pet_header(3, weight=None)
    write_files(tmp_path / "good", good)
    bad_paths = write_files(tmp_path / "bad", bad)
    (tmp_path / "notes.txt").write_text("not DICOM\n")
    assert main(["suv", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    (line,) = captured.out.strip().splitlines()
    assert json.loads(line)["series_instance_uid"] == good[0].SeriesInstanceUID
    assert bad[0].SeriesInstanceUID in captured.err and "PatientWeight (0010,1030)" in captured.err
    assert bad_paths[0] in captured.err


def test_cli_exit_2_without_pet(tmp_path, capsys):
    datasets = pet_header(2)
    for ds in datasets:
        ds.Modality = "CT"
    write_files(tmp_path / "ct", datasets)
    assert main(["suv", str(tmp_path)]) == 2
    assert capsys.readouterr().out == ""
    from voxelpipe.apps.petct.suv import NoPetError

    assert issubclass(NoPetError, InputError)


def test_synthetic_petct_study_factor(tmp_path):
    """The PET of voxelpipe.testing.synthetic.write_petct_study (75 kg, 370 MBq, 3600 s uptake by default)."""
    synthetic = pytest.importorskip("voxelpipe.testing.synthetic")
    if not hasattr(synthetic, "write_petct_study"):
        pytest.skip("voxelpipe.testing.synthetic.write_petct_study not available")
    info = synthetic.write_petct_study(tmp_path / "study", ct_shape=(8, 16, 16), pet_shape=(6, 8, 8), mask="none")
    pet = sorted(str(p) for p in (tmp_path / "study" / "PT").iterdir())
    assert info is not None
    result = suv_for_files(pet)
    expected = 75000.0 / (370e6 * 2 ** (-3600.0 / 6586.2))
    half_life = float(pydicom.dcmread(pet[0], stop_before_pixels=True)
                      .RadiopharmaceuticalInformationSequence[0].RadionuclideHalfLife)
    if half_life != 6586.2:  # another F-18 half-life convention: same formula with that number
        expected = 75000.0 / (370e6 * 2 ** (-3600.0 / half_life))
    np.testing.assert_allclose(result.factors, expected, rtol=1e-9)


# ----------------------------------------------------------------------------------------------------------
# real data: STS PET (GE, BQML, START)
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sts_pet(shared_data):
    folder = shared_data / "sts001-pet"
    if not (folder / "image").is_dir():
        pytest.skip(f"{folder} not in the shared test data")
    return folder


def test_sts001_audit(sts_pet):
    result = suv_for_files(sorted(str(p) for p in (sts_pet / "image").iterdir()))
    a = result.audit
    assert (a["units"], a["decay_correction"], a["n_slices"]) == ("BQML", "START", 267)
    # header: 71 kg, 3.88777472E8 Bq at 10:35:00, SeriesTime 11:20:11 (= AcquisitionTime), T½ 6588 s
    assert a["uptake_seconds"] == 2711.0
    expected = 71000.0 / (3.88777472e8 * 2 ** (-2711.0 / 6588.0))
    np.testing.assert_allclose(result.factors, expected, rtol=1e-12)
    assert a["weight_kg"] == 71.0 and a["half_life_s"] == 6588.0 and a["injected_dose_bq"] == 3.88777472e8


def test_sts001_suv_range_and_gtv_suvmax(sts_pet, tmp_path):
    import voxelpipe
    from voxelpipe.dicom.rtstruct import read_rtstruct_masks
    from voxelpipe.pipelines.masks import load_slice_uids

    image = sts_pet / "image"
    (row,) = voxelpipe.convert([str(image)], out=str(tmp_path / "out"), workers=1, progress=False)
    assert row["status"] == "done", row.get("reason")
    volume = voxelpipe.open_volume(row["path"])
    activity = volume.numpy().astype(np.float64)  # Bq/ml: per-slice rescale applied by convert
    paths = sorted(str(p) for p in image.iterdir())
    result = suv_for_files(paths)
    factor_of = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): f
                 for p, f in zip(paths, result.factors)}
    uids = load_slice_uids(row["path"])
    assert uids is not None and len(uids) == activity.shape[0]
    suv = activity * np.array([factor_of[u] for u in uids])[:, None, None]

    body = suv > 0.3  # voxels of the body (air and the outside of the field of view are ~0)
    background = float(np.median(suv[body]))
    masks, _rows = read_rtstruct_masks(str(sts_pet / "mask" / "1-1.dcm"), volume.geometry)
    (gtv,) = [m for m in masks if m.name.lower().startswith("gtv_mass") or
              str(m.attrs.get("roi_name", "")).lower() == "gtv_mass"]
    inside = gtv.array.astype(bool)
    assert inside.any()
    suv_max = float(suv[inside].max())
    suv_mean = float(suv[inside].mean())
    print(f"\nsts001 PET: factor {result.audit['factor']:.6g} g/Bq, body median SUV {background:.2f}, "
          f"SUV p99 {np.percentile(suv[body], 99):.2f}, image SUVmax {suv.max():.2f}; "
          f"GTV_Mass {int(inside.sum())} voxels, SUVmax {suv_max:.2f}, SUVmean {suv_mean:.2f}")
    assert 0.3 <= background <= 3.0
    assert suv_max > background
    assert 2.0 <= suv_max <= 60.0
