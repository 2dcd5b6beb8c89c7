"""One exit-status policy for every command: 0 everything ok, 1 the run finished but some items failed, 2 bad
request (usage error, invalid option, missing or unusable input).

Per command here: exit 2 on a bad request and, for commands with items, exit 1 when an item fails, with small
synthetic data. The ok cases (exit 0) are in each command's own tests (test_cli.py, test_convert.py,
test_transform_cli.py, test_masks_cli.py, test_suv.py, test_petct_index.py, test_petct.py, test_merge.py,
test_project2d.py, test_lung_pipeline.py, test_report.py, test_contours.py), and so are the exit 1 cases that need
bigger data: masks (test_masks_cli: manifest form, a structure set in another frame of reference), contours
(test_contours: unpaired contour files), suv (test_suv: a series without PatientWeight), petct (test_petct: a
subject without PatientWeight), lung (test_lung_pipeline: a broken series), report (test_report: unreadable and
missing volumes). scan, aggregate and merge have no items that can fail on their own: 0 or 2.
"""
from __future__ import annotations

import csv
import logging

import pytest

from test_project2d import make_subject
from voxelpipe.cli.app import main
from voxelpipe.core.errors import InputError
from voxelpipe.stores.subject_store import open_subject_store
from voxelpipe.testing.synthetic import SeriesSpec, write_series

COMMANDS = ["scan", "convert", "aggregate", "resample", "project", "contours", "masks", "masks-to-seg", "suv",
            "petct-index", "petct", "merge", "project-2d", "lung", "report", "export-nnunet", "demo"]


def run(argv: list[str]) -> int:
    return main(["--no-progress", *argv])


@pytest.mark.parametrize("command", COMMANDS)
def test_usage_error_exits_2(command, capsys):
    with pytest.raises(SystemExit) as caught:
        run([command, "--no-such-option"])
    assert caught.value.code == 2
    assert "error:" in capsys.readouterr().err  # the usage message


@pytest.mark.parametrize("command", ["scan", "convert", "petct-index", "merge", "suv"])
def test_bad_option_value_exits_2(command, tmp_path, capsys):
    option = {"scan": "--shards", "convert": "--chunks", "petct-index": "--workers", "merge": "--on-duplicate",
              "suv": "--log-level"}[command]
    argv = {"scan": ["scan", str(tmp_path)], "convert": ["convert", str(tmp_path), "--out", str(tmp_path)],
            "petct-index": ["petct-index", str(tmp_path), "--out", str(tmp_path / "i.csv")],
            "merge": ["merge", "a.h5", "--out", "b.h5"], "suv": ["suv", str(tmp_path)]}[command]
    with pytest.raises(SystemExit) as caught:
        if command == "suv":
            main([option, "LOUD", *argv])
        else:
            run([*argv, option, "0"])
    assert caught.value.code == 2 and option in capsys.readouterr().err


def test_missing_input_exits_2_for_every_command_with_an_input_path(tmp_path, caplog):
    missing = str(tmp_path / "missing")
    out = str(tmp_path / "out")
    requests = [
        ["scan", missing, "--out", out],
        ["convert", missing, "--out", out],
        ["aggregate", missing],
        ["resample", missing, "--out", out, "--spacing", "1,1,1"],
        ["project", missing, "--out", out],
        ["contours", "--link", missing, "--dicom-dir", missing, "--contour-dir", missing, "--out", out],
        ["masks", "--volume", missing + ".zarr", "--rtstruct", missing],
        ["masks-to-seg", missing, "--key", "k", "--out", str(tmp_path / "s.dcm")],
        ["suv", missing],
        ["petct-index", missing, "--out", str(tmp_path / "i.csv")],
        ["petct", missing + ".csv", "--out", str(tmp_path / "o.h5")],
        ["merge", missing + ".h5", "--out", str(tmp_path / "m.h5")],
        ["project-2d", missing + ".h5", "--out", str(tmp_path / "p.h5")],
        ["lung", missing, "--out", out],
        ["report", missing],
        ["export-nnunet", missing, "--dataset-id", "501", "--name", "X", "--labels", "a", "--out", out],
    ]
    assert {argv[0] for argv in requests} == set(COMMANDS) - {"demo"}  # demo reads no input
    with caplog.at_level(logging.ERROR, logger="voxelpipe"):
        for argv in requests:
            caplog.clear()
            assert run(argv) == 2, argv
            assert caplog.records and caplog.records[-1].getMessage().startswith(argv[0] + ": "), argv


# ------------------------------------------------------------------------------------------------------------
# invalid requests the library rejects (InputError): 2, the same for every command (petct and lung said 1)
# ------------------------------------------------------------------------------------------------------------
def test_petct_invalid_iso_exits_2(tmp_path):
    index = tmp_path / "index.csv"
    index.write_text("subject_id,study_dir\n")
    assert run(["petct", str(index), "--out", str(tmp_path / "o.h5"), "--iso", "1.5"]) == 2
    assert run(["petct", str(index), "--out", str(tmp_path / "o.h5"), "--orientation", "XYZ"]) == 2


def test_lung_invalid_requests_exit_2(tmp_path):
    assert run(["lung", "--out", str(tmp_path / "out")]) == 2  # neither DIR nor --manifest
    assert run(["lung", str(tmp_path), "--out", str(tmp_path / "out"), "--model", "no_colon"]) == 2


def test_masks_form_errors_exit_2(tmp_path):
    assert run(["masks", "--manifest", str(tmp_path)]) == 2  # no --out
    assert run(["masks", "--volume", str(tmp_path / "v.zarr")]) == 2  # no --rtstruct / --seg
    assert run(["masks", "--volume", str(tmp_path / "v.zarr"), "--rtstruct", "r.dcm", "--executor", "dask"]) == 2


def test_suv_without_pet_exits_2(tmp_path):
    (tmp_path / "notes.txt").write_text("not DICOM\n")
    assert run(["suv", str(tmp_path)]) == 2


def test_aggregate_and_report_without_summaries_exit_2(tmp_path):
    assert run(["aggregate", str(tmp_path)]) == 2
    assert run(["report", str(tmp_path)]) == 2


def test_merge_duplicate_and_project_2d_onto_itself_exit_2(tmp_path):
    source = tmp_path / "s.h5"
    with open_subject_store(source, "a") as store:
        store.write("s1", *make_subject(0))
    assert run(["merge", str(source), str(source), "--out", str(tmp_path / "m.h5")]) == 2
    assert run(["project-2d", str(source), "--out", str(source)]) == 2
    assert run(["project-2d", str(source), "--out", str(tmp_path / "p.h5"), "--angles", "0:360:0"]) == 2


def test_library_errors_map_to_2_in_main(monkeypatch):
    import voxelpipe.pipelines.convert as convert_module

    for error in (InputError("bad"), FileNotFoundError("gone"), NotADirectoryError("file")):
        def fail(out, error=error):
            raise error

        monkeypatch.setattr(convert_module, "aggregate", fail)
        assert run(["aggregate", "somewhere"]) == 2


def test_unexpected_errors_are_not_hidden(monkeypatch):
    import voxelpipe.pipelines.convert as convert_module

    def fail(out):
        raise RuntimeError("a bug")

    monkeypatch.setattr(convert_module, "aggregate", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        run(["aggregate", "somewhere"])


# ------------------------------------------------------------------------------------------------------------
# an item fails: 1 (the others are still done)
# ------------------------------------------------------------------------------------------------------------
def test_convert_failed_series_exits_1(synthetic, tmp_path, capsys):
    bad = synthetic["duplicate"]
    assert run(["convert", str(bad.folder), "--out", str(tmp_path / "out"), "--workers", "1"]) == 1
    printed = capsys.readouterr().out
    assert printed.startswith("convert: ") and ", 1 failed -> " in printed
    with open(tmp_path / "out" / "summary_run.csv", newline="") as fh:
        assert [row["status"] for row in csv.DictReader(fh)] == ["failed"]


@pytest.mark.parametrize("command", ["resample", "project"])
def test_unreadable_volume_exits_1(command, tmp_path, capsys):
    (tmp_path / "in" / "data").mkdir(parents=True)
    (tmp_path / "in" / "data" / "abc.npz").write_bytes(b"not an npz file")
    extra = ["--spacing", "1,1,1"] if command == "resample" else []
    assert run([command, str(tmp_path / "in"), "--out", str(tmp_path / "out"), *extra]) == 1
    printed = capsys.readouterr().out
    assert f"{command}: 0 done, 0 skipped, 1 failed -> " in printed and "failed " + str(tmp_path) in printed


def test_project_2d_failed_subject_exits_1_and_ok_exits_0(tmp_path, capsys):
    source = tmp_path / "s.zarr"
    image, mask, mask_iso, attrs = make_subject(0)
    with open_subject_store(source, "a") as store:
        store.write("good", image, mask, mask_iso, attrs)
    assert run(["project-2d", str(source), "--out", str(tmp_path / "ok.h5"), "--angles", "0", "--workers", "1"]) == 0
    with open_subject_store(source, "a") as store:
        store.write("nogeo", image, mask, mask_iso, {"orientation": "LAS"})
    capsys.readouterr()
    assert run(["project-2d", str(source), "--out", str(tmp_path / "o.h5"), "--angles", "0", "--workers", "1"]) == 1
    printed = capsys.readouterr().out
    assert ", 1 failed; 1 angles each -> " in printed and "failed nogeo: " in printed


def test_petct_index_without_complete_study_exits_1(tmp_path):
    (tmp_path / "project" / "P1" / "S1").mkdir(parents=True)
    write_series(tmp_path / "project" / "P1" / "S1" / "ct", SeriesSpec(n_slices=3, rows=8, columns=8))
    assert run(["petct-index", str(tmp_path / "project"), "--out", str(tmp_path / "i.csv"), "--workers", "1"]) == 1
    with open(tmp_path / "i_incomplete.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 1  # the CT-only study, with what is missing


def test_demo_stage_failure_exits_1(monkeypatch, tmp_path, caplog):
    import voxelpipe.apps.demo as demo

    def broken(out, workers=None, progress=True):
        raise demo.DemoStepError("demo: convert gave 2 row(s), 1 not ok")

    monkeypatch.setattr(demo, "run_demo", broken)
    with caplog.at_level(logging.ERROR, logger="voxelpipe"):
        assert run(["demo", "--out", str(tmp_path)]) == 1
    assert "1 not ok" in caplog.text
