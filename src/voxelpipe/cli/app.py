"""The ``python -m voxelpipe`` parser (assembled from the command modules), environment defaults and ``main``."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping

from voxelpipe._version import __version__
from voxelpipe.cli import (
    aggregate,
    contours,
    convert,
    demo,
    export_nnunet,
    lung,
    masks,
    masks_to_seg,
    merge,
    petct,
    petct_index,
    project,
    project_2d,
    report,
    resample,
    scan,
    suv,
)
from voxelpipe.cli.options import EXIT_BAD_REQUEST, EXIT_ITEMS_FAILED, exit_epilog, with_default, yes_no
from voxelpipe.core.errors import OutputWriteError, VoxelpipeError

log = logging.getLogger("voxelpipe")

COMMANDS = (scan, convert, aggregate, resample, project, contours, masks, masks_to_seg, suv, petct_index, petct,
            merge, project_2d, lung, report, export_nnunet, demo)
ENV_PREFIX = "VOXELPIPE_"
LOG_LEVEL = "INFO"
# errors that mean "bad request": ours (raised on purpose, InputError first of all) and a missing input path; any
# other OSError that stops a run (a full disk while the summary is written, a file it may not write) is also
# reported in one line with exit 2: a run either records its failures in its summary or stops that way
BAD_REQUEST_ERRORS = (VoxelpipeError, FileNotFoundError, NotADirectoryError)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: global options and one subcommand per command module."""
    parser = argparse.ArgumentParser(
        prog="python -m voxelpipe",
        description="DICOM folders to machine-learning-ready data.",
        epilog=exit_epilog("some items failed (each command's --help says which)"),
    )
    parser.add_argument("--version", action="version", version=f"voxelpipe {__version__}")
    parser.add_argument("--log-level", default=LOG_LEVEL, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help=with_default("logging level of the 'voxelpipe' logger", LOG_LEVEL))
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar or progress log lines (default: progress shown)")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers).set_defaults(run=command.run)
    return parser


def long_option(action: argparse.Action) -> str:
    """The first long option string of ``action`` (``--format``), else its first option string."""
    return next((s for s in action.option_strings if s.startswith("--")), action.option_strings[0])


def env_name(action: argparse.Action) -> str:
    """``VOXELPIPE_<LONG OPTION>``: ``--table-format`` -> ``VOXELPIPE_TABLE_FORMAT``."""
    return ENV_PREFIX + long_option(action).lstrip("-").replace("-", "_").upper()


def settable_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options of ``parser`` an environment variable can set (not positionals, --help, --version)."""
    return [a for a in parser._actions if a.option_strings
            and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Command name -> its parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def apply_env_defaults(parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None) -> None:
    """Turn ``VOXELPIPE_<LONG OPTION>`` variables into defaults of the matching options of ``parser`` and its
    subcommands (a flag on the command line still wins). Booleans take 1/0, true/false, yes/no, on/off; options
    taking several values split the variable on ``os.pathsep``. A bad value is a usage error (exit 2)."""
    environ = os.environ if environ is None else environ
    for sub in subcommands(parser).values():
        apply_env_defaults(sub, environ)
    for action in settable_actions(parser):
        name = env_name(action)
        if name not in environ:
            continue
        text = environ[name]
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            try:
                value = yes_no(text) == isinstance(action, argparse._StoreTrueAction)
            except ValueError:
                parser.error(f"{name}={text!r}: expected one of 1/0, true/false, yes/no, on/off")
        elif action.nargs in ("+", "*"):
            value = [_convert(parser, action, name, part) for part in text.split(os.pathsep) if part]
        else:
            value = _convert(parser, action, name, text)
        action.default = value
        action.required = False
        action.help = (action.help or "") + f" [set from {name}]"
        action.env_name = name  # read by flags_win_in_groups


def flags_win_in_groups(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """In a group of mutually exclusive options (``--spacing | --shape | --like``), an option given on the command
    line wins over another member set only through its environment variable: that one is dropped from ``args``.
    (Members have no default, so a member present in ``args`` without a variable came from the command line.)"""
    command = subcommands(parser).get(getattr(args, "command", None))
    for group in command._mutually_exclusive_groups if command else []:
        present = [a for a in group._group_actions if hasattr(args, a.dest)]
        from_env = [a for a in present if getattr(a, "env_name", None)]
        if len(from_env) < len(present):
            for action in from_env:
                delattr(args, action.dest)


def _convert(parser: argparse.ArgumentParser, action: argparse.Action, name: str, text: str):
    try:
        value = action.type(text) if action.type else text
    except (TypeError, ValueError):
        parser.error(f"{name}={text!r}: not a valid value for {long_option(action)}")
    if action.choices is not None and value not in action.choices:
        parser.error(f"{name}={text!r}: choose from {', '.join(map(str, action.choices))}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command and return its exit status: 0 ok; 1 some items
    failed, or the run stopped because an output could not be written (disk full); 2 bad request, refused before
    anything was written (argparse's usage errors exit 2 through ``SystemExit``; a busy or non-writable output
    folder)."""
    parser = build_parser()
    apply_env_defaults(parser)
    args = parser.parse_args(argv)
    flags_win_in_groups(parser, args)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    try:
        return args.run(args)
    except OutputWriteError as exc:  # not a bad request: the same command can succeed once there is room
        log.error("%s: %s", args.command, exc)
        return EXIT_ITEMS_FAILED
    except BAD_REQUEST_ERRORS as exc:
        log.error("%s: %s", args.command, exc)
        return EXIT_BAD_REQUEST
    except OSError as exc:  # the run could not write (disk full, file too large) and stopped
        log.error("%s: %s", args.command, os_error_text(exc, getattr(args, "out", None)))
        return EXIT_ITEMS_FAILED


def os_error_text(exc: OSError, folder: str | None = None) -> str:
    """One line for an OS error that stopped a run: the file (else the output ``folder``), what failed, and that
    the run stopped there."""
    what = f"{exc.strerror or exc} ({type(exc).__name__}); the run stopped"
    if exc.filename is not None:
        return f"{exc.filename}: {what}"
    return f"writing into {folder}: {what}" if folder else what


__all__ = ["build_parser", "apply_env_defaults", "flags_win_in_groups", "env_name", "long_option", "settable_actions",
           "subcommands", "main", "os_error_text", "COMMANDS", "ENV_PREFIX"]
