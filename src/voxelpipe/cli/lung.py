"""``lung``: lung CT preprocessing (2 mm volumes, lung masks, crops, nodule features)."""
from __future__ import annotations

import argparse
import time

from voxelpipe.cli.options import add_command, add_executor, add_workers, float_triple, given, progress, with_default
from voxelpipe.cli.summary import summarise
from voxelpipe.core import defaults
from voxelpipe.core.types import Status

NAME = "lung"
OPTIONS = ("manifest", "spacing", "model", "threshold", "pseudonymise", "overwrite", "workers", "executor",
           "scheduler")
PRINT_SERIES = 20  # one line per finished series up to this many


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, "lung CT preprocessing: resampled volumes, lung masks, crops, nodule "
                                           "features (Data Science Bowl style)",
                         failed="some series failed (listed with the reason)")
    parser.add_argument("dirs", nargs="*", metavar="DIR",
                        help="folders of CT DICOM (one patient each, or nested); or use --manifest")
    parser.add_argument("--manifest", default=argparse.SUPPRESS, metavar="CSV",
                        help="scan's series_all.csv (or a shard) instead of folders (default none)")
    parser.add_argument("--out", required=True, metavar="ROOT", help="output ROOT folder (required)")
    parser.add_argument("--spacing", type=float_triple, default=argparse.SUPPRESS, metavar="S0,S1,S2",
                        help=with_default("output spacing mm along the volume's axes (slice, row, column)",
                                          defaults.LUNG_SPACING))
    parser.add_argument("--model", default=argparse.SUPPRESS, metavar="MODULE:FUNCTION",
                        help="nodule probability model called as f(volume, geometry) -> same-shape float array "
                             "(default: built-in HU blob detector)")
    parser.add_argument("--threshold", type=float, default=argparse.SUPPRESS, metavar="P",
                        help=with_default("nodule probability threshold", defaults.LUNG_THRESHOLD))
    parser.add_argument("--pseudonymise", action="store_true", default=argparse.SUPPRESS,
                        help="patient ids in outputs are keyed hashes (VOXELPIPE_KEY_SECRET) instead of the folder "
                             "name / PatientID (default: off)")
    parser.add_argument("--overwrite", action="store_true", default=argparse.SUPPRESS,
                        help="redo patients whose outputs are complete (default: keep them)")
    add_workers(parser)
    add_executor(parser, "per-series")
    return parser


def run(args: argparse.Namespace) -> int:
    from voxelpipe.apps.lung.pipeline import run_lung  # lazy: see the cli package docstring

    started = time.perf_counter()
    rows = run_lung(args.dirs or None, args.out, progress=progress(args), **given(args, OPTIONS))
    summary = summarise(rows)
    finished = [r for r in rows if r.get("lung_volume_ml") not in (None, "")]  # outputs in ROOT
    n_nodules = sum(int(r.get("n_nodules") or 0) for r in finished)
    print(f"lung: {summary.counts()} in {time.perf_counter() - started:.1f} s; {n_nodules} nodule(s) in "
          f"{len(finished)} series -> {args.out} (summary.csv, nodules.csv, patient_features.csv)")
    if len(finished) <= PRINT_SERIES:
        for r in finished:
            print(f"  {r['status']} {r['id']}: lung volume {r.get('lung_volume_ml', '')} ml, "
                  f"{r.get('n_nodules', '')} nodule(s), largest {r.get('largest_diameter_mm', '') or 0} mm, "
                  f"grid {r.get('shape', '')}, crop {r.get('crop_shape', '')}")
    shown = {id(r) for r in finished}
    for r in rows:
        if id(r) not in shown and r["status"] != Status.DONE:
            print(f"  {r['status']} {r.get('id') or r.get('series_key') or '?'}: {r['reason']}")
    return summary.exit_code
