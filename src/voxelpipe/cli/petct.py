"""``petct``: PET/CT preparation (SUV, reorientation, resampling to the CT grid, iso-contour masks, normalised
subject files)."""
from __future__ import annotations

import argparse

from voxelpipe.cli.options import (
    add_command,
    add_executor,
    add_levels,
    add_workers,
    float_pair,
    float_triple,
    given,
    int_triple,
    progress,
    with_default,
)
from voxelpipe.cli.summary import print_summary
from voxelpipe.core import defaults

NAME = "petct"
OPTIONS = ("shape", "spacing", "orientation", "iso", "iso_suv", "ct_window", "suv_window", "rois", "workers",
           "executor", "scheduler", "levels")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, "PET/CT preparation: SUV, reorient, resample to the CT grid, "
                                           "iso-contour masks, normalised HDF5/Zarr per subject",
                         failed="some subjects failed (listed with the reason)")
    parser.add_argument("source", help="INDEX.csv from petct-index, or project.zip in the zipped NIfTI form")
    parser.add_argument("--out", required=True,
                        help="OUT.h5 or OUT.zarr (reruns skip subjects already present) (required)")
    parser.add_argument("--shape", type=int_triple, default=argparse.SUPPRESS, metavar="X,Y,Z",
                        help="output grid, voxels (default: the CT's)")
    parser.add_argument("--spacing", type=float_triple, default=argparse.SUPPRESS, metavar="X,Y,Z",
                        help="output spacing, mm (default: the CT's, or what --shape gives)")
    parser.add_argument("--orientation", default=argparse.SUPPRESS, metavar="CODE",
                        help=with_default("axis codes of the output arrays", defaults.PETCT_ORIENTATION))
    parser.add_argument("--iso", type=float, default=argparse.SUPPRESS, metavar="FRACTION",
                        help=with_default("mask_iso: fraction of each lesion's SUVmax (EANM)", defaults.PETCT_ISO))
    parser.add_argument("--iso-suv", type=float, default=argparse.SUPPRESS, metavar="SUV",
                        help="mask_iso: absolute SUV threshold instead of --iso (default none)")
    parser.add_argument("--ct-window", type=float_pair, default=argparse.SUPPRESS, metavar="LOW,HIGH",
                        help=with_default("CT HU clip range scaled to [0, 1]", defaults.PETCT_CT_WINDOW))
    parser.add_argument("--suv-window", type=float_pair, default=argparse.SUPPRESS, metavar="LOW,HIGH",
                        help=with_default("SUV clip range scaled to [0, 1]", defaults.PETCT_SUV_WINDOW))
    parser.add_argument("--roi", dest="rois", nargs="+", default=argparse.SUPPRESS, metavar="NAME",
                        help="mask ROI / segment names to use (default: all)")
    add_workers(parser)
    add_executor(parser, "per-subject")
    add_levels(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from voxelpipe.apps.petct.pipeline import run_petct, status_path  # lazy: see the cli package docstring

    rows = run_petct(args.source, args.out, progress=progress(args), **given(args, OPTIONS))
    return print_summary(NAME, rows, f"{args.out} (status: {status_path(args.out)})", label="subject_id")
