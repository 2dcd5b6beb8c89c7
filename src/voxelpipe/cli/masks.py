"""``masks``: rasterise RTSTRUCT or SEG objects onto converted volumes as ``labels/<name>``."""
from __future__ import annotations

import argparse
import os

from voxelpipe.cli.options import add_command, add_executor, add_workers, given, progress
from voxelpipe.cli.summary import summarise
from voxelpipe.core import defaults
from voxelpipe.core.errors import InputError
from voxelpipe.core.types import Status

NAME = "masks"
PRINT_ALL_ROWS = 40  # the summary lists every row up to this many, else only the failed ones


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, "rasterise RTSTRUCT or SEG objects onto converted volumes as "
                                           "labels/<name>",
                         failed="some ROI, object or volume failed (listed in the report)",
                         description="Rasterise RTSTRUCT or SEG objects onto converted volumes as labels/<name>: "
                                     "one volume (--volume with --rtstruct or --seg), or every object of a scan "
                                     "(--manifest with --out).")
    parser.add_argument("--volume", default=argparse.SUPPRESS,
                        help="a converted Zarr volume (OUT/data/<key>.zarr) or NIfTI volume (OUT/data/<key>.nii.gz; "
                             "masks go beside it as <key>_<mask>.nii.gz) (default none)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--rtstruct", default=argparse.SUPPRESS, help="RTSTRUCT file for --volume (default none)")
    source.add_argument("--seg", default=argparse.SUPPRESS, help="DICOM SEG file for --volume (default none)")
    parser.add_argument("--manifest", default=argparse.SUPPRESS,
                        help="scan output folder (or its objects.csv): every RTSTRUCT/SEG found there goes onto "
                             "its referenced series' volume under --out (default none)")
    parser.add_argument("--out", default=argparse.SUPPRESS,
                        help="convert output folder holding data/<key>.zarr, with --manifest (default none)")
    parser.add_argument("--roi", dest="rois", nargs="+", default=argparse.SUPPRESS, metavar="NAME",
                        help="only these ROI / segment names (default: all)")
    parser.add_argument("--report", default=argparse.SUPPRESS,
                        help="write the per-ROI report here as CSV (default: masks_report.csv in the convert "
                             "output folder)")
    add_workers(parser, "number of cores; --manifest only")
    add_executor(parser, "per-volume")
    return parser


def run(args: argparse.Namespace) -> int:
    # lazy: see the cli package docstring
    from voxelpipe.pipelines.masks import REPORT_NAME, add_masks, add_masks_from_manifest, default_report

    volume, manifest, out = (getattr(args, name, None) for name in ("volume", "manifest", "out"))
    if manifest:
        if volume or hasattr(args, "rtstruct") or hasattr(args, "seg"):
            raise InputError("--manifest takes the objects from scan's objects.csv: leave out --volume, "
                             "--rtstruct and --seg")
        if not out:
            raise InputError("--manifest needs --out, the convert output folder holding data/<key>.zarr")
        rows = add_masks_from_manifest(manifest, out, progress=progress(args),
                                       **given(args, ("rois", "workers", "report", "executor", "scheduler")))
        report = getattr(args, "report", None) or os.path.join(out, REPORT_NAME)
    else:
        if getattr(args, "executor", defaults.EXECUTOR) != defaults.EXECUTOR or getattr(args, "scheduler", None):
            raise InputError("--executor and --scheduler go with --manifest (one volume runs in this process)")
        if not volume or not (hasattr(args, "rtstruct") or hasattr(args, "seg")):
            raise InputError("give --volume with --rtstruct or --seg, or --manifest with --out")
        rows = add_masks(volume, **given(args, ("rtstruct", "seg", "rois", "report")))
        report = getattr(args, "report", None) or default_report(volume)
    for line in summary_lines(rows, report):
        print(line)
    return summarise(rows).exit_code


def summary_lines(rows: list[dict], report: str) -> list[str]:
    """``masks: <counts> on N volume(s) (E empty mask(s)) -> report R`` and one line per row (only the failed
    ones when there are more than PRINT_ALL_ROWS rows)."""
    volumes = len({r["volume"] for r in rows if r["volume"]})
    empty = sum(1 for r in rows if r["status"] == Status.DONE and not int(r["voxels"] or 0))
    lines = [f"masks: {summarise(rows).counts()} on {volumes} volume(s) ({empty} empty mask(s)) -> report {report}"]
    shown = rows if len(rows) <= PRINT_ALL_ROWS else [r for r in rows if r["status"] == Status.FAILED]
    for row in shown:
        what = row["roi_name"] or os.path.basename(row["source"])
        line = f"  {row['status']:<7} {row['source_kind']:<8} {what}"
        if row["mask_name"]:
            line += f" -> labels/{row['mask_name']}: {row['voxels']} voxels, {float(row['volume_ml']):.2f} mL"
        if row["note"]:
            line += f" ({row['note']})"
        lines.append(line)
    return lines
