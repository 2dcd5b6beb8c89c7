"""``suv``: the body-weight SUV factor and its audit record per PET series, one JSON object per line."""
from __future__ import annotations

import argparse
import json
import sys

from voxelpipe.cli.options import EXIT_ITEMS_FAILED, EXIT_OK, add_command
from voxelpipe.core.errors import VoxelpipeError

NAME = "suv"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, "PET body-weight SUV factor and its audit record, as JSON per series",
                         failed="some series got no factor (each named on stderr, the others still printed; no "
                                "PET file at all is a bad request)",
                         description="Print one JSON object per PET series (one line each) on stdout: the "
                                     "body-weight SUV factor and its audit record.")
    parser.add_argument("paths", nargs="+", metavar="PET_FILE_OR_DIR", help="PET DICOM files or folders")
    return parser


def run(args: argparse.Namespace) -> int:
    # lazy: see the cli package docstring
    from voxelpipe.apps.petct.suv import NoPetError, find_pet_series, series_record
    from voxelpipe.dicom.suv import suv_factors

    series = find_pet_series(args.paths)
    if not series:
        raise NoPetError(f"{', '.join(args.paths)}: no PET (Modality PT) DICOM file found")
    failed = 0
    for uid, datasets in series.items():
        try:
            result = suv_factors(datasets)
        except VoxelpipeError as exc:
            failed += 1
            print(f"voxelpipe suv: no SUV factor for series {uid or '(no SeriesInstanceUID)'} "
                  f"({len(datasets)} file(s), first {datasets[0].filename}): {exc}", file=sys.stderr)
            continue
        print(json.dumps(series_record(uid, datasets, result)), flush=True)
    return EXIT_ITEMS_FAILED if failed else EXIT_OK
