"""``contours``: masks from text polygon contours (cardiac MRI challenge layout) as image/mask pairs."""
from __future__ import annotations

import argparse
import os

from voxelpipe.cli.options import EXIT_ITEMS_FAILED, EXIT_OK, add_command, add_workers, given, progress, with_default
from voxelpipe.core import defaults

NAME = "contours"
OPTIONS = ("kinds", "fmt", "overlay", "workers", "overwrite")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, "masks from text polygon contours (cardiac MRI challenge layout): "
                                           "image/mask pairs as npz or Zarr, optional PNG overlays",
                         failed="some contour files could not be paired or written (OUT/problems.csv)")
    parser.add_argument("--link", required=True, help="link.csv: patient_id (DICOM folder), original_id "
                                                      "(contour folder) (required)")
    parser.add_argument("--dicom-dir", required=True,
                        help="folder holding one DICOM folder per patient_id (required)")
    parser.add_argument("--contour-dir", required=True,
                        help="folder holding one contour folder per original_id (required)")
    parser.add_argument("--out", required=True, help="output folder (required)")
    parser.add_argument("--contours", dest="kinds", default=argparse.SUPPRESS, metavar="KINDS",
                        help=with_default("contour kinds to read, comma separated (i = inner/endocardium, "
                                          "o = outer/epicardium)", defaults.CONTOUR_KINDS))
    parser.add_argument("--format", dest="fmt", choices=["npz", "zarr"], default=argparse.SUPPRESS,
                        help=with_default("npz (one file per pair, a folder per patient) or zarr",
                                          defaults.CONTOUR_FORMAT))
    parser.add_argument("--overlay", action="store_true", default=argparse.SUPPRESS,
                        help="also write a PNG overlay per pair (default: off)")
    parser.add_argument("--overwrite", action="store_true", default=argparse.SUPPRESS,
                        help="rewrite outputs that are already complete (default: keep them)")
    add_workers(parser, "serial below a handful of patients, then one process per few patients up to the cores")
    return parser


def run(args: argparse.Namespace) -> int:
    from voxelpipe.apps.contours import convert_contours  # lazy: see the cli package docstring

    result = convert_contours(args.link, args.dicom_dir, args.contour_dir, args.out, progress=progress(args),
                              **given(args, OPTIONS))
    note = f" (see {os.path.join(args.out, 'problems.csv')})" if result.problems else ""
    print(f"contours: {len(result.written)} pair(s) written, {len(result.skipped)} kept, "
          f"{len(result.problems)} problem(s){note}, {result.patients} patient(s) in {result.seconds:.1f} s "
          f"-> {args.out}")
    return EXIT_ITEMS_FAILED if result.problems else EXIT_OK
