"""``aggregate``: merge the ``summary_*.csv`` of convert's shards into ``summary_all.csv``."""
from __future__ import annotations

import argparse
import os

from voxelpipe.cli.options import EXIT_OK, add_command

NAME = "aggregate"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, "merge the summary_*.csv of shards into summary_all.csv", failed=None)
    parser.add_argument("out", metavar="OUT", help="output folder of convert")
    return parser


def run(args: argparse.Namespace) -> int:
    from voxelpipe.pipelines.convert import aggregate  # lazy: see the cli package docstring

    rows = aggregate(args.out)
    print(f"aggregate: {len(rows)} series -> {os.path.join(args.out, 'summary_all.csv')}")
    return EXIT_OK
