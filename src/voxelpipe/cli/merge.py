"""``merge``: merge subject files (HDF5 or Zarr) of ``petct`` / ``project-2d`` into one."""
from __future__ import annotations

import argparse

from voxelpipe.cli.options import EXIT_OK, add_command, given, with_default
from voxelpipe.core import defaults

NAME = "merge"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, "merge subject files (HDF5 or Zarr) of petct into one", failed=None)
    parser.add_argument("inputs", nargs="+", help="input .h5 / .zarr files")
    parser.add_argument("--out", required=True, help="merged .h5 / .zarr (required)")
    parser.add_argument("--on-duplicate", choices=["error", "skip"], default=argparse.SUPPRESS,
                        help=with_default("a subject key in several inputs: error, or skip (keep the first)",
                                          defaults.MERGE_ON_DUPLICATE))
    return parser


def run(args: argparse.Namespace) -> int:
    from voxelpipe.apps.petct.merge import merge  # lazy: see the cli package docstring

    result = merge(args.inputs, args.out, **given(args, ("on_duplicate",)))
    for row in result["inputs"]:
        print(f"{row['path']}: {row['subjects']} subjects, {row['copied']} copied, {row['skipped']} skipped "
              f"(duplicates), {row['incomplete']} incomplete left out")
    print(f"{result['out']}: {result['written']} subjects written (expected {result['expected']}, verified)")
    for item in result["skipped"]:
        print(f"skipped duplicate {item['subject']} from {item['path']} (kept {item['kept_from']})")
    return EXIT_OK
