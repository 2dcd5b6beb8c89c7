"""``resample``: reorient and resample converted volumes onto a new grid."""
from __future__ import annotations

import argparse

from voxelpipe.cli.options import add_command, add_levels, float_triple, given, int_triple, progress, with_default
from voxelpipe.cli.summary import print_summary
from voxelpipe.core import defaults

NAME = "resample"
OPTIONS = ("spacing", "shape", "like", "order", "orientation", "key", "levels")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, "reorient and resample converted volumes onto a new grid",
                         failed="some volumes failed (listed with the reason)")
    parser.add_argument("source", metavar="IN", help="convert output folder, or one volume")
    parser.add_argument("--out", required=True, metavar="OUT", help="output folder (required)")
    grid = parser.add_mutually_exclusive_group()
    grid.add_argument("--spacing", type=float_triple, default=argparse.SUPPRESS, metavar="S0,S1,S2",
                      help="new spacing, mm, along the array axes (default none; give one of --spacing, --shape, "
                           "--like)")
    grid.add_argument("--shape", type=int_triple, default=argparse.SUPPRESS, metavar="N0,N1,N2",
                      help="new shape (default none)")
    grid.add_argument("--like", default=argparse.SUPPRESS, metavar="REF",
                      help="a volume whose grid to resample onto (default none)")
    parser.add_argument("--order", choices=["linear", "nearest", "label"], default=argparse.SUPPRESS,
                        help=with_default("interpolation (label: masks, linear then >= 0.5)",
                                          defaults.RESAMPLE_ORDER))
    parser.add_argument("--orientation", default=argparse.SUPPRESS, metavar="CODE",
                        help="reorient first to an axis code, e.g. LAS, RAS, LPS (default: keep the orientation)")
    parser.add_argument("--key", default=argparse.SUPPRESS, help="only this series key (default: every volume)")
    add_levels(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from voxelpipe.pipelines.transform import resample_volumes  # lazy: see the cli package docstring

    rows = resample_volumes(args.source, args.out, progress=progress(args), **given(args, OPTIONS))
    return print_summary(NAME, rows, args.out, label="source")
