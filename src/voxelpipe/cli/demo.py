"""``demo``: write a small synthetic CT study as DICOM and run every stage of the pipeline on it."""
from __future__ import annotations

import argparse
import logging

from voxelpipe.cli.options import EXIT_ITEMS_FAILED, EXIT_OK, add_command, add_workers, given, progress, with_default
from voxelpipe.core import defaults

NAME = "demo"
log = logging.getLogger("voxelpipe")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, "write a small synthetic CT study as DICOM and run the pipeline on it",
                         failed="a stage did not do its job on the demo study (the installation is broken)")
    parser.add_argument("--out", default=argparse.SUPPRESS,
                        help=with_default("folder for the demo", defaults.DEMO_OUT))
    add_workers(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from voxelpipe.apps.demo import DemoStepError, run_demo  # lazy: see the cli package docstring

    try:
        run_demo(getattr(args, "out", defaults.DEMO_OUT), progress=progress(args), **given(args, ("workers",)))
    except DemoStepError as exc:
        log.error("%s", exc)
        return EXIT_ITEMS_FAILED
    return EXIT_OK
