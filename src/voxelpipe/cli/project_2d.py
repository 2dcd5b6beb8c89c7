"""``project-2d``: rotated MIPs of every subject of a ``petct`` file into a 2-D subject file."""
from __future__ import annotations

import argparse

from voxelpipe.cli.options import add_command, add_workers, given, progress
from voxelpipe.cli.project import add_angles
from voxelpipe.cli.summary import print_summary
from voxelpipe.core import defaults

NAME = "project-2d"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, "rotated MIPs of every subject of a petct file into a 2-D file, with "
                                           "the mask projections",
                         failed="some subjects failed (listed with the reason)")
    parser.add_argument("source", help="petct output .h5 / .zarr")
    parser.add_argument("--out", required=True, help="2-D output .h5 / .zarr (required)")
    add_angles(parser)
    add_workers(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    # lazy: see the cli package docstring
    from voxelpipe.apps.petct.project2d import project_2d
    from voxelpipe.pipelines.transform import parse_angles

    angles = parse_angles(getattr(args, "angles", defaults.PROJECTION_ANGLES))
    rows = project_2d(args.source, args.out, angles, progress=progress(args), **given(args, ("axis", "workers")))
    return print_summary(NAME, rows, args.out, label="subject", detail=f"; {len(angles)} angles each")
