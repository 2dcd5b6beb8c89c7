"""The `masks` command through ``voxelpipe.cli.main``: single-volume and manifest forms, every Zarr store kind,
reruns, the report, errors. The rasterisation itself is tested against independent references in
test_rtstruct.py (RTSTRUCT) and the SEG module's tests; the synthetic series and structure sets come from there."""
from __future__ import annotations

import csv
import logging
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import voxelpipe
from test_rtstruct import build_cases
from voxelpipe.cli.app import main
from voxelpipe.stores.masks import open_masks

REPORT_KEYS = ["volume", "source", "source_kind", "roi_name", "mask_name", "roi_number", "status", "voxels",
               "volume_ml", "contours", "contours_unmatched", "contours_skipped", "note"]
MASK_ATTRS = {"roi_name", "roi_number", "color", "source", "source_kind", "source_sop_instance_uid", "voxels",
              "volume_ml", "contours", "contours_unmatched"}


def read_report(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert rows == [] or list(rows[0]) == REPORT_KEYS
    return rows


def status_counts(rows) -> dict[str, int]:
    """How many report rows have each status word."""
    return dict(Counter(r["status"] for r in rows))


def printed_counts(printed: str) -> dict[str, int]:
    """The ``N word`` counts of the printed ``masks: ...`` summary line, zeros left out."""
    line = next(line for line in printed.splitlines() if line.startswith("masks: "))
    counts = line.split(": ", 1)[1].split(" on ")[0]
    return {word: int(n) for n, word in (part.split(" ", 1) for part in counts.split(", ")) if int(n)}


def masks_of(volume: str) -> dict[str, tuple[np.ndarray, dict]]:
    return {name: (np.asarray(array[...]), dict(array.attrs)) for name, array in open_masks(volume).items()}


def converted(folder: Path, out: Path, store: str = "dir") -> str:
    """The one volume of ``folder``; uneven and tilted slices kept as acquired (the cases place masks on them)."""
    summary = voxelpipe.convert([str(folder)], out=str(out), store=store, workers=1, progress=False,
                                uneven="keep", tilt="keep")
    paths = [r["path"] for r in summary if r["status"] == "done"]
    assert len(paths) == 1, summary
    return paths[0]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return build_cases(tmp_path_factory.mktemp("masks_cli_cases"))


@pytest.fixture
def even_volume(cases, tmp_path) -> str:
    return converted(cases["even"].folder, tmp_path / "out")


@pytest.mark.parametrize("store", ["dir", "zip", "sqlite"])
def test_single_volume_form_writes_and_reruns_replace(cases, tmp_path, store, capsys):
    case = cases["oblique"]
    out = tmp_path / "out"
    volume = converted(case.folder, out, store)
    assert main(["--no-progress", "masks", "--volume", volume, "--rtstruct", case.rtstruct]) == 0
    printed = capsys.readouterr().out
    assert "1 done" in printed and "labels/Ring" in printed
    found = masks_of(volume)
    assert list(found) == ["Ring"]
    array, attrs = found["Ring"]
    assert array.dtype == np.uint8 and array.shape == case.shape
    np.testing.assert_array_equal(array.astype(bool), case.expected["Ring"])
    assert MASK_ATTRS <= set(attrs) and attrs["source_kind"] == "RTSTRUCT"
    assert attrs["source"] == os.path.abspath(case.rtstruct) and attrs["voxels"] == int(case.expected["Ring"].sum())
    # the image is untouched
    np.testing.assert_array_equal(voxelpipe.open_volume(volume).numpy(),
                                  voxelpipe.open_volume(converted(case.folder, tmp_path / "again", store)).numpy())
    report = out / "masks_report.csv"  # default: beside the volume's data folder
    rows = read_report(report)
    assert [(r["roi_name"], r["status"], r["mask_name"]) for r in rows] == [("Ring", "done", "Ring")]
    assert printed_counts(printed) == status_counts(rows)  # one mask written
    assert rows[0]["volume"] == os.path.abspath(volume) and float(rows[0]["volume_ml"]) > 0

    # rerun with another structure set holding a ROI of the same name: the mask is replaced
    assert main(["--no-progress", "masks", "--volume", volume, "--rtstruct", case.extra["rtstruct_b"]]) == 0
    found = masks_of(volume)
    assert list(found) == ["Ring"]
    np.testing.assert_array_equal(found["Ring"][0].astype(bool), case.extra["expected_b"]["Ring"])
    assert found["Ring"][1]["source"] == os.path.abspath(case.extra["rtstruct_b"])
    rows = read_report(report)
    assert [(r["source"], r["mask_name"]) for r in rows] == [(os.path.abspath(case.extra["rtstruct_b"]), "Ring")]
    # and back again
    assert main(["--no-progress", "masks", "--volume", volume, "--rtstruct", case.rtstruct]) == 0
    np.testing.assert_array_equal(masks_of(volume)["Ring"][0].astype(bool), case.expected["Ring"])
    assert len(read_report(report)) == 1
    leftovers = [p for p in os.listdir(os.path.dirname(volume)) if "partial" in p]
    assert leftovers == []


def test_roi_option_and_report_path(cases, even_volume, tmp_path, capsys):
    case = cases["even"]
    report = tmp_path / "elsewhere" / "report.csv"
    assert main(["--no-progress", "masks", "--volume", even_volume, "--rtstruct", case.rtstruct,
                 "--roi", "ring", "GTV 1", "--report", str(report)]) == 0
    assert set(masks_of(even_volume)) == {"Ring", "GTV_1"}
    rows = read_report(report)
    assert [r["status"] for r in rows] == ["done", "done", "skipped", "skipped", "skipped", "skipped",
                                           "skipped"]
    assert not os.path.exists(Path(even_volume).parent.parent / "masks_report.csv")
    np.testing.assert_array_equal(masks_of(even_volume)["Ring"][0].astype(bool), case.expected["Ring"])


def test_every_roi_of_the_even_case_is_reported(cases, even_volume, capsys):
    case = cases["even"]
    assert main(["--no-progress", "masks", "--volume", even_volume, "--rtstruct", case.rtstruct]) == 0
    found = masks_of(even_volume)
    assert set(found) == {"Ring", "GTV_1", "Off", "Empty", "Warped", "GTV_1_2"}
    for name, mask_name in [("Ring", "Ring"), ("GTV 1", "GTV_1"), ("Off", "Off"), ("GTV/1", "GTV_1_2"),
                            ("Empty", "Empty")]:
        np.testing.assert_array_equal(found[mask_name][0].astype(bool), case.expected[name], err_msg=name)
        assert found[mask_name][1]["roi_name"] == name
    rows = {r["roi_name"]: r for r in read_report(Path(even_volume).parent.parent / "masks_report.csv")}
    assert rows["Off"]["contours_unmatched"] == "1" and rows["Marker"]["status"] == "skipped"
    assert rows["Empty"]["status"] == "done"
    printed = capsys.readouterr().out
    assert "6 done, 1 skipped, 0 failed on 1 volume(s) (2 empty mask(s))" in printed


def test_missing_roi_names_fail_with_the_names_available(cases, even_volume, caplog):
    case = cases["even"]
    with caplog.at_level(logging.ERROR, logger="voxelpipe"):
        assert main(["--no-progress", "masks", "--volume", even_volume, "--rtstruct", case.rtstruct,
                     "--roi", "Ring", "Liver"]) == 2
    assert case.rtstruct in caplog.text and "'Liver'" in caplog.text and "available" in caplog.text
    assert "'GTV 1'" in caplog.text
    assert open_masks(even_volume) == {}


def test_other_frame_of_reference_and_bad_inputs_fail_clearly(cases, even_volume, tmp_path, caplog):
    case = cases["even"]
    with caplog.at_level(logging.ERROR, logger="voxelpipe"):
        assert main(["--no-progress", "masks", "--volume", even_volume, "--rtstruct",
                     case.extra["rtstruct_other_frame"]]) == 2
    assert "frame of reference" in caplog.text and case.extra["rtstruct_other_frame"] in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="voxelpipe"):
        assert main(["--no-progress", "masks", "--volume", even_volume, "--rtstruct", case.paths[0]]) == 2
    assert "not an RT Structure Set" in caplog.text
    npz = tmp_path / "v.npz"
    npz.write_bytes(b"")
    assert main(["--no-progress", "masks", "--volume", str(npz), "--rtstruct", case.rtstruct]) == 2
    assert main(["--no-progress", "masks", "--volume", str(tmp_path / "none.zarr"), "--rtstruct", case.rtstruct]) == 2
    assert main(["--no-progress", "masks", "--volume", even_volume]) == 2
    assert main(["--no-progress", "masks", "--manifest", str(tmp_path)]) == 2
    assert main(["--no-progress", "masks", "--manifest", str(tmp_path), "--out", str(tmp_path)]) == 2
    with pytest.raises(SystemExit):  # argparse: --rtstruct and --seg exclude each other
        main(["--no-progress", "masks", "--volume", even_volume, "--rtstruct", "a", "--seg", "b"])


@pytest.mark.parametrize("executor", ["pool", "dask-local"])
def test_manifest_form_puts_every_object_on_its_volume(cases, tmp_path, capsys, executor):
    if executor != "pool":
        pytest.importorskip("distributed", reason="the dask executor needs dask.distributed (the dask extra)")
    study = cases["even"].folder.parent  # even/, uneven/ (each with its RTSTRUCT), two more RTSTRUCTs
    voxelpipe.scan(str(study), out=str(tmp_path / "scan"), workers=1, progress=False)
    summary = voxelpipe.convert(manifest=str(tmp_path / "scan" / "series_all.csv"), out=str(tmp_path / "out"),
                                workers=1, progress=False, uneven="keep")
    assert [r["status"] for r in summary] == ["done", "done"]
    # two volumes: two tasks in the process pool
    assert main(["--no-progress", "masks", "--manifest", str(tmp_path / "scan"), "--out", str(tmp_path / "out"),
                 "--workers", "2", "--executor", executor]) == 1
    # the structure set in another frame of reference failed
    report = read_report(tmp_path / "out" / "masks_report.csv")
    by_source = {}
    for row in report:
        by_source.setdefault(os.path.basename(row["source"]), []).append(row)
    assert [r["status"] for r in by_source["rtstruct_other_frame.dcm"]] == ["failed"]
    assert "frame of reference" in by_source["rtstruct_other_frame.dcm"][0]["note"]
    assert [r["status"] for r in by_source["rtstruct_orphan.dcm"]] == ["skipped"]
    assert "references no series" in by_source["rtstruct_orphan.dcm"][0]["note"]
    assert len(by_source["rtstruct_even.dcm"]) == 7 and len(by_source["rtstruct_uneven.dcm"]) == 2
    even = next(r["volume"] for r in by_source["rtstruct_even.dcm"])
    uneven = next(r["volume"] for r in by_source["rtstruct_uneven.dcm"])
    assert even != uneven
    np.testing.assert_array_equal(masks_of(even)["Ring"][0].astype(bool), cases["even"].expected["Ring"])
    assert set(masks_of(even)) == {"Ring", "GTV_1", "Off", "Empty", "Warped", "GTV_1_2"}  # no Ring_2
    np.testing.assert_array_equal(masks_of(uneven)["Blob"][0].astype(bool), cases["uneven"].expected["Blob"])
    printed = capsys.readouterr().out
    assert "1 failed on 2 volume(s)" in printed and "failed  RTSTRUCT rtstruct_other_frame.dcm" in printed

    # a rerun gives the same masks and the same report (rows replaced, not added)
    assert main(["--no-progress", "masks", "--manifest", str(tmp_path / "scan" / "objects.csv"),
                 "--out", str(tmp_path / "out"), "--workers", "1"]) == 1
    again = read_report(tmp_path / "out" / "masks_report.csv")
    assert sorted((r["source"], r["roi_name"], r["status"]) for r in again) == \
        sorted((r["source"], r["roi_name"], r["status"]) for r in report)


def test_nsclc_scan_convert_masks_manifest(shared_data, tmp_path, capsys):
    folder = shared_data / "nsclc-lung1-001"
    voxelpipe.scan(str(folder), out=str(tmp_path / "scan"), workers=1, progress=False)
    voxelpipe.convert(manifest=str(tmp_path / "scan" / "series_all.csv"), out=str(tmp_path / "out"), workers=1,
                      progress=False)
    assert main(["--no-progress", "masks", "--manifest", str(tmp_path / "scan"), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    print(printed)
    rows = {r["roi_name"]: r for r in read_report(tmp_path / "out" / "masks_report.csv")}
    assert set(rows) == {"GTV-1", "Spinal-Cord", "Lung-Left", "Lung-Right"}
    assert all(r["status"] == "done" for r in rows.values())
    assert 1000 < float(rows["Lung-Left"]["volume_ml"]) < 4000 and 10 < float(rows["GTV-1"]["volume_ml"]) < 500
    found = masks_of(rows["GTV-1"]["volume"])
    assert set(found) == {"GTV-1", "Spinal-Cord", "Lung-Left", "Lung-Right"}
    assert found["Lung-Left"][1]["color"] == [64, 64, 255] and found["GTV-1"][1]["roi_number"] == 2


def test_seg_through_the_command(shared_data, tmp_path, caplog):
    folder = shared_data / "dcmqi-seg" / "segmentations"
    volume = converted(folder / "ct-3slice", tmp_path / "out")
    seg = str(folder / "liver.dcm")
    assert main(["--no-progress", "masks", "--volume", volume, "--seg", seg]) == 0
    found = masks_of(volume)
    assert list(found) == ["Liver"] and found["Liver"][0].any()
    assert found["Liver"][1]["source_kind"] == "SEG"
    rows = read_report(tmp_path / "out" / "masks_report.csv")
    assert [(r["source_kind"], r["roi_name"], r["status"]) for r in rows] == [("SEG", "Liver", "done")]
    assert rows[0]["source"] == os.path.abspath(seg)
    with caplog.at_level(logging.ERROR, logger="voxelpipe"):
        assert main(["--no-progress", "masks", "--volume", volume, "--seg", seg, "--roi", "Spleen"]) == 2
    assert "'Spleen'" in caplog.text and "'Liver'" in caplog.text
    shutil.rmtree(tmp_path / "out")
