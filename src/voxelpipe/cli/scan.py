"""``scan``: find DICOM files, read their headers, write the metadata table and the series manifest."""
from __future__ import annotations

import argparse
import logging

from voxelpipe.cli.options import (
    EXIT_OK,
    add_command,
    add_executor,
    add_workers,
    given,
    positive_int,
    progress,
    with_default,
)
from voxelpipe.core import defaults
from voxelpipe.core.types import ColumnNames, Phi

NAME = "scan"
# what makes scan exit 1: the request was fine, the outputs could not be written
log = logging.getLogger("voxelpipe")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, "find DICOM files, read headers, write the metadata table and the "
                                           "series manifest", failed=None)
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="folders (searched at any depth) or files")
    parser.add_argument("--out", required=True, metavar="MANIFEST", help="manifest folder to write (required)")
    parser.add_argument("--shards", type=positive_int, default=argparse.SUPPRESS, metavar="N",
                        help=with_default("number of byte-balanced shard files", defaults.SCAN_SHARDS))
    add_workers(parser)
    parser.add_argument("--table-format", choices=["csv", "parquet"], default=argparse.SUPPRESS,
                        help=with_default("parquet: also write metadata.parquet (needs pyarrow)",
                                          defaults.SCAN_TABLE_FORMAT))
    parser.add_argument("--phi", choices=[p.value for p in Phi], default=argparse.SUPPRESS,
                        help=with_default("attributes of the DICOM confidentiality profile (names, IDs, dates, "
                                          "institutions, UIDs, ...) in every table: keep, pseudonymise (keyed "
                                          "hashes; needs VOXELPIPE_KEY_SECRET) or drop; file paths are kept",
                                          defaults.SCAN_PHI))
    parser.add_argument("--column-names", choices=[c.value for c in ColumnNames], default=argparse.SUPPRESS,
                        help=with_default("metadata columns: name (\"Patient's Name (0010, 0010)\") or keyword "
                                          "(PatientName)", defaults.SCAN_COLUMN_NAMES))
    add_executor(parser, "header-reading")
    return parser


def run(args: argparse.Namespace) -> int:
    from voxelpipe.pipelines.scan import scan  # lazy: see the cli package docstring

    result = scan(args.dirs, out=args.out, progress=progress(args),
                  **given(args, ("shards", "workers", "table_format", "executor", "scheduler", "phi",
                                      "column_names")))
    print(f"scan: {result.n_files} files in {result.seconds:.1f} s: {len(result.series)} series, "
          f"{len(result.objects)} objects, {len(result.unreadable)} unreadable -> {args.out}")
    return EXIT_OK
