"""``report``: a self-contained HTML verification report of a convert output folder."""
from __future__ import annotations

import argparse

from voxelpipe.cli.options import (
    EXIT_ITEMS_FAILED,
    EXIT_OK,
    add_command,
    given,
    non_negative_int,
    progress,
    with_default,
)
from voxelpipe.core import defaults
from voxelpipe.core.text import visible

NAME = "report"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, "self-contained HTML verification report of a convert output",
                         failed="some volumes could not be read (listed as problems in the report)")
    parser.add_argument("out", metavar="OUT", help="output folder of convert: a path or a URL (http(s)://, "
                        "s3://, ...: needs the remote extra)")
    parser.add_argument("--html", default=argparse.SUPPRESS, metavar="FILE",
                        help="HTML file to write (default OUT/report.html; required when OUT is a URL)")
    parser.add_argument("--samples", type=non_negative_int, default=argparse.SUPPRESS, metavar="N",
                        help=with_default("series sampled for pictures, besides every failed or flagged one",
                                          defaults.REPORT_SAMPLES))
    parser.add_argument("--seed", type=int, default=argparse.SUPPRESS,
                        help=with_default("seed of the sample", defaults.REPORT_SEED))
    return parser


def run(args: argparse.Namespace) -> int:
    from voxelpipe.apps.report import build_report, html_path, write_html  # lazy: see the cli package docstring

    path = html_path(args.out, getattr(args, "html", None))  # before reading: a URL needs --html
    data = build_report(args.out, progress=progress(args), **given(args, ("samples", "seed")))
    path = write_html(data, path)
    roles = [role for section in data.sections for role in section.roles]
    print(f"report: {len(data.sections)} series shown ({roles.count('failed')} failed, {roles.count('flagged')} "
          f"flagged, {roles.count('sampled')} sampled), {len(data.problems)} problem(s) -> {path}")
    for key, problem in data.problems:
        print(visible(f"  problem {key}: {problem}"))
    return EXIT_ITEMS_FAILED if data.problems else EXIT_OK
