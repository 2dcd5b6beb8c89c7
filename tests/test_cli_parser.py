"""The parser of ``python -m voxelpipe``: every option of every command settable through VOXELPIPE_<LONG OPTION>,
help text with the default for every option, defaults shown equal to the library's, ``--help`` without the heavy
imports."""
from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from voxelpipe.cli import options
from voxelpipe.cli.app import apply_env_defaults, build_parser, flags_win_in_groups, main
from voxelpipe.core import defaults

PARSER = build_parser()
COMMAND_PARSERS = next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction)).choices
COMMAND_NAMES = ["scan", "convert", "aggregate", "resample", "project", "contours", "masks", "masks-to-seg", "suv",
                 "petct-index", "petct", "merge", "project-2d", "lung", "report", "export-nnunet", "demo"]
HEAVY = ("pydicom", "numba", "zarr")
TIMEOUT = 120

# text of an environment variable and the value it must give, per option type
SAMPLES = {
    options.positive_int: ("3", 3),
    options.non_negative_int: ("4", 4),
    int: ("5", 5),
    float: ("0.25", 0.25),
    options.int_triple: ("2,3,4", (2, 3, 4)),
    options.float_triple: ("1.5,2,3", (1.5, 2.0, 3.0)),
    options.float_pair: ("-5,7.5", (-5.0, 7.5)),
    options.yes_no: ("no", False),
    options.comma_names: ("GTV,Lung", ["GTV", "Lung"]),
    None: ("some-value", "some-value"),
}


def options_of(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings
            and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


def long_name(action: argparse.Action) -> str:
    return next(s for s in action.option_strings if s.startswith("--"))


def env_for(action: argparse.Action) -> str:
    """The variable name, spelled out from the long option independently of the code under test."""
    return "VOXELPIPE_" + long_name(action)[2:].upper().replace("-", "_")


def minimal_argv(command: str, leave_out: str | None = None) -> list[str]:
    """A command line that parses: every positional and required option given (``leave_out``: a long option
    left to the environment)."""
    parser = COMMAND_PARSERS[command]
    argv = [command]
    for action in parser._actions:
        if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
            argv += [] if action.nargs == "*" else ["pos"]
        elif action.required and long_name(action) != leave_out:
            argv += [long_name(action), "req"]
    return argv


def sample(action: argparse.Action) -> tuple[str, object]:
    if isinstance(action, argparse._StoreTrueAction):
        return "yes", True
    if action.choices is not None:
        choice = list(action.choices)[-1]
        return str(choice), choice
    text, value = SAMPLES[action.type]
    if action.nargs in ("+", "*"):
        return os.pathsep.join([text, "second"]), [value, "second"]
    return text, value


CASES = [(name, long_name(a)) for name in COMMAND_NAMES for a in options_of(COMMAND_PARSERS[name])]
GLOBAL_CASES = [long_name(a) for a in options_of(PARSER)]


def test_every_command_is_there():
    assert list(COMMAND_PARSERS) == COMMAND_NAMES


@pytest.mark.parametrize("command,option", CASES)
def test_every_option_is_settable_from_its_environment_variable(command, option):
    parser = build_parser()
    action = next(a for a in options_of(COMMAND_PARSERS[command]) if long_name(a) == option)
    text, value = sample(action)
    apply_env_defaults(parser, {env_for(action): text})
    args = parser.parse_args(minimal_argv(command, leave_out=option))
    assert getattr(args, action.dest) == value


@pytest.mark.parametrize("option", GLOBAL_CASES)
def test_global_options_from_the_environment(option):
    parser = build_parser()
    action = next(a for a in options_of(PARSER) if long_name(a) == option)
    text, value = sample(action)
    apply_env_defaults(parser, {env_for(action): text})
    assert getattr(parser.parse_args(minimal_argv("aggregate")), action.dest) == value


def test_format_is_named_from_the_long_option_and_the_flag_wins():
    parser = build_parser()
    apply_env_defaults(parser, {"VOXELPIPE_FORMAT": "zarr", "VOXELPIPE_FMT": "hdf5"})
    assert parser.parse_args(["convert", "--out", "o"]).fmt == "zarr"
    assert parser.parse_args(["convert", "--out", "o", "--format", "npz"]).fmt == "npz"
    assert parser.parse_args(["contours", "--link", "l", "--dicom-dir", "d", "--contour-dir", "c",
                              "--out", "o"]).fmt == "zarr"
    parser = build_parser()
    apply_env_defaults(parser, {"VOXELPIPE_ROI": os.pathsep.join(["GTV 1", "Ring"]), "VOXELPIPE_SHARDS": "3"})
    assert parser.parse_args(["petct", "i.csv", "--out", "o.h5"]).rois == ["GTV 1", "Ring"]
    assert parser.parse_args(["petct", "i.csv", "--out", "o.h5", "--roi", "Lung"]).rois == ["Lung"]
    assert parser.parse_args(["scan", "d", "--out", "m", "--shards", "5"]).shards == 5


@pytest.mark.parametrize("word,value", [("1", True), ("0", False), ("true", True), ("false", False),
                                        ("yes", True), ("no", False), ("on", True), ("off", False),
                                        ("TRUE", True), (" Off ", False)])
def test_boolean_words(word, value):
    parser = build_parser()
    apply_env_defaults(parser, {"VOXELPIPE_OVERWRITE": word, "VOXELPIPE_NO_PROGRESS": word})
    args = parser.parse_args(["convert", "--out", "o"])
    assert args.overwrite is value and args.no_progress is value


def test_an_option_not_given_is_left_out():
    """No default restated: what the user did not set is not in the namespace (the library's default applies)."""
    args = build_parser().parse_args(["petct", "index.csv", "--out", "o.h5"])
    for dest in ("iso", "ct_window", "suv_window", "orientation", "workers", "executor", "rois"):
        assert not hasattr(args, dest), dest
    args = build_parser().parse_args(["lung", "d", "--out", "o"])
    assert not hasattr(args, "spacing") and not hasattr(args, "threshold")


@pytest.mark.parametrize("word", ["maybe", "2"])
def test_bad_boolean_word_is_a_usage_error(word, capsys):
    environ = {"VOXELPIPE_OVERWRITE": word}
    with pytest.raises(SystemExit) as caught:
        apply_env_defaults(build_parser(), environ)
    assert caught.value.code == 2 and "VOXELPIPE_OVERWRITE" in capsys.readouterr().err


@pytest.mark.parametrize("command", COMMAND_NAMES)
def test_help_has_a_default_for_every_option_and_the_exit_policy(command):
    parser = COMMAND_PARSERS[command]
    for action in options_of(parser):
        assert action.help, (command, long_name(action))
        assert "default" in action.help or "required" in action.help, (command, long_name(action), action.help)
    help_text = " ".join(parser.format_help().split())
    assert "Exit status: 0 = everything ok" in help_text and "2 = bad request" in help_text
    assert "VOXELPIPE_" in help_text


# (library function, parameter, the default the CLI shows)
LIBRARY_DEFAULTS = [
    ("voxelpipe.pipelines.scan:scan", "shards", defaults.SCAN_SHARDS),
    ("voxelpipe.pipelines.scan:scan", "table_format", defaults.SCAN_TABLE_FORMAT),
    ("voxelpipe.pipelines.scan:scan", "executor", defaults.EXECUTOR),
    ("voxelpipe.pipelines.convert:convert", "fmt", defaults.CONVERT_FORMAT),
    ("voxelpipe.pipelines.convert:convert", "store", defaults.CONVERT_STORE),
    ("voxelpipe.pipelines.convert:convert", "mode", defaults.CONVERT_MODE),
    ("voxelpipe.pipelines.convert:convert", "verify_slices", defaults.CONVERT_VERIFY_SLICES),
    ("voxelpipe.pipelines.convert:convert", "clevel", defaults.VOLUME_CLEVEL),
    ("voxelpipe.pipelines.convert:convert", "layout", defaults.VOLUME_LAYOUT),
    ("voxelpipe.pipelines.convert:convert", "executor", defaults.EXECUTOR),
    ("voxelpipe.stores.volumes:save_volume", "chunks", defaults.VOLUME_CHUNKS),
    ("voxelpipe.stores.volumes:save_volume", "clevel", defaults.VOLUME_CLEVEL),
    ("voxelpipe.pipelines.masks:add_masks_from_manifest", "executor", defaults.EXECUTOR),
    ("voxelpipe.pipelines.transform:resample_volumes", "order", defaults.RESAMPLE_ORDER),
    ("voxelpipe.pipelines.transform:project_volumes", "axis", defaults.PROJECTION_AXIS),
    ("voxelpipe.pipelines.transform:project_volumes", "kind", defaults.PROJECTION_KIND),
    ("voxelpipe.apps.petct.pipeline:run_petct", "orientation", defaults.PETCT_ORIENTATION),
    ("voxelpipe.apps.petct.pipeline:run_petct", "iso", defaults.PETCT_ISO),
    ("voxelpipe.apps.petct.pipeline:run_petct", "ct_window", defaults.PETCT_CT_WINDOW),
    ("voxelpipe.apps.petct.pipeline:run_petct", "suv_window", defaults.PETCT_SUV_WINDOW),
    ("voxelpipe.apps.petct.pipeline:run_petct", "executor", defaults.EXECUTOR),
    ("voxelpipe.apps.petct.merge:merge", "on_duplicate", defaults.MERGE_ON_DUPLICATE),
    ("voxelpipe.apps.petct.project2d:project_2d", "axis", defaults.PROJECTION_AXIS),
    ("voxelpipe.apps.lung.pipeline:run_lung", "spacing", defaults.LUNG_SPACING),
    ("voxelpipe.apps.lung.pipeline:run_lung", "threshold", defaults.LUNG_THRESHOLD),
    ("voxelpipe.apps.lung.pipeline:run_lung", "executor", defaults.EXECUTOR),
    ("voxelpipe.apps.report:build_report", "samples", defaults.REPORT_SAMPLES),
    ("voxelpipe.apps.report:build_report", "seed", defaults.REPORT_SEED),
    ("voxelpipe.apps.contours:convert_contours", "kinds", defaults.CONTOUR_KINDS),
    ("voxelpipe.apps.contours:convert_contours", "fmt", defaults.CONTOUR_FORMAT),
    ("voxelpipe.stores.dicom_seg:write_seg", "algorithm_version", defaults.SEG_ALGORITHM_VERSION),
    ("voxelpipe.stores.dicom_seg:write_seg", "series_description", defaults.SEG_SERIES_DESCRIPTION),
    ("voxelpipe.stores.dicom_seg:write_seg", "series_number", defaults.SEG_SERIES_NUMBER),
]


@pytest.mark.parametrize("target,parameter,shown", LIBRARY_DEFAULTS)
def test_defaults_shown_are_the_library_defaults(target, parameter, shown):
    module, name = target.split(":")
    function = getattr(importlib.import_module(module), name)
    assert inspect.signature(function).parameters[parameter].default == shown


def test_convert_chunks_default_is_the_writer_default():
    from voxelpipe.pipelines.series_volume import DEFAULT_CHUNKS

    assert DEFAULT_CHUNKS == defaults.VOLUME_CHUNKS
    text = " ".join(COMMAND_PARSERS["convert"].format_help().split())
    assert f"(default {defaults.VOLUME_LAYOUT})" in text and "(default: the layout's)" in text


def test_no_default_value_is_written_in_the_cli_modules():
    """Values live in voxelpipe.core.defaults; the command modules only name them."""
    folder = Path(options.__file__).parent
    literals = ["0.41", "1000", "20.0", "0:360:45", "256", "2.0, 2.0", "2,2,2", "= 16", "=16", "threshold=0.5"]
    for path in sorted(folder.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        for literal in literals:
            assert literal not in text, (path.name, literal)


def imported_modules(args: list[str]) -> set[str]:
    """Top-level packages imported by ``python -X importtime -m voxelpipe ARGS``."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "voxelpipe", *args], capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-2000:]
    names = set()
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s*\d+\s*\|\s*\d+\s*\|\s*(\S+)", line)
        if match:
            names.add(match.group(1).split(".")[0])
    assert "voxelpipe" in names  # the importtime output was read
    return names


@pytest.mark.parametrize("command", [None, *COMMAND_NAMES])
def test_help_imports_no_heavy_module(command):
    names = imported_modules(["--help"] if command is None else [command, "--help"])
    assert not names & set(HEAVY), sorted(names & set(HEAVY))


def test_main_help_in_process_exits_zero(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0 and "petct-index" in capsys.readouterr().out


def test_summarise_counts_by_status():
    from voxelpipe.cli.summary import summarise
    from voxelpipe.core.types import Status

    rows = [{"status": "done"}, {"status": Status.DONE}, {"status": "skipped"}, {"status": "failed"}]
    summary = summarise(rows)
    assert (summary.done, summary.skipped, summary.failed) == (2, 1, 1)
    assert summary.counts() == "2 done, 1 skipped, 1 failed"
    assert summary.exit_code == 1
    with pytest.raises(ValueError):  # a word outside the vocabulary is a bug in the pipeline that built the row
        summarise([{"status": "written"}])
    assert summarise([{"status": "done"}]).counts() == "1 done, 0 skipped, 0 failed"
    assert summarise([]).exit_code == 0


def test_flag_wins_over_the_environment_inside_an_exclusive_group():
    parser = build_parser()
    apply_env_defaults(parser, {"VOXELPIPE_SPACING": "2,2,2", "VOXELPIPE_RTSTRUCT": "rs.dcm"})
    args = parser.parse_args(["resample", "in", "--out", "o", "--shape", "4,5,6"])
    flags_win_in_groups(parser, args)
    assert args.shape == (4, 5, 6) and not hasattr(args, "spacing")
    args = parser.parse_args(["resample", "in", "--out", "o"])
    flags_win_in_groups(parser, args)
    assert args.spacing == (2.0, 2.0, 2.0)
    args = parser.parse_args(["masks", "--volume", "v.zarr", "--seg", "seg.dcm"])
    flags_win_in_groups(parser, args)
    assert args.seg == "seg.dcm" and not hasattr(args, "rtstruct")
