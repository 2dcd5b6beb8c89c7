"""``project``: rotated maximum / mean intensity projections of converted volumes."""
from __future__ import annotations

import argparse

from voxelpipe.cli.options import add_command, given, progress, with_default
from voxelpipe.cli.summary import print_summary
from voxelpipe.core import defaults

NAME = "project"
OPTIONS = ("axis", "kind", "with_masks", "key")
AXES = ["S", "A", "L"]


def add_angles(parser: argparse.ArgumentParser) -> None:
    """``--angles`` (degrees) and ``--axis``: shared by ``project`` and ``project-2d``."""
    parser.add_argument("--angles", default=argparse.SUPPRESS, metavar="ANGLES",
                        help=with_default("degrees: start:stop:step (stop excluded) or a comma list",
                                          defaults.PROJECTION_ANGLES))
    parser.add_argument("--axis", choices=AXES, default=argparse.SUPPRESS,
                        help=with_default("rotation axis", defaults.PROJECTION_AXIS))


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, "rotated maximum/mean intensity projections of volumes",
                         failed="some volumes failed (listed with the reason)")
    parser.add_argument("source", metavar="IN", help="convert output folder, or one volume")
    parser.add_argument("--out", required=True, metavar="OUT", help="output folder (required)")
    add_angles(parser)
    parser.add_argument("--kind", choices=["max", "mean"], default=argparse.SUPPRESS,
                        help=with_default("projection", defaults.PROJECTION_KIND))
    parser.add_argument("--with-masks", action="store_true", default=argparse.SUPPRESS,
                        help="project masks/<name> arrays alongside (default: off)")
    parser.add_argument("--key", default=argparse.SUPPRESS, help="only this series key (default: every volume)")
    return parser


def run(args: argparse.Namespace) -> int:
    from voxelpipe.pipelines.transform import parse_angles, project_volumes  # lazy: see the cli package docstring

    angles = parse_angles(getattr(args, "angles", defaults.PROJECTION_ANGLES))
    rows = project_volumes(args.source, args.out, angles=angles, progress=progress(args), **given(args, OPTIONS))
    return print_summary(NAME, rows, args.out, label="source")
