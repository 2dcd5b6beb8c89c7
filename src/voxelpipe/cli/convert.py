"""``convert``: DICOM series to volumes (Zarr, HDF5, NPZ) with their geometry."""
from __future__ import annotations

import argparse

from voxelpipe.cli.options import (
    add_command,
    add_executor,
    add_levels,
    add_workers,
    given,
    int_triple,
    non_negative_int,
    positive_int,
    progress,
    with_default,
    yes_no,
)
from voxelpipe.cli.summary import print_summary
from voxelpipe.core import defaults
from voxelpipe.core.types import Executor, Format, Phi, PhilipsScaling, StoreKind, TiltPolicy, UnevenPolicy
from voxelpipe.execution.pool import start_forkserver
from voxelpipe.execution.workers import default_workers

NAME = "convert"
OPTIONS = ("manifest", "fmt", "store", "mode", "workers", "shard_id", "num_shards", "overwrite", "verify_slices",
           "chunks", "layout", "clevel", "levels", "summary_suffix", "executor", "scheduler", "uneven", "tilt",
           "philips_scaling", "nifti_gzip", "max_frame_bytes", "phi")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, "convert DICOM series to volumes (Zarr, HDF5, NPZ, NIfTI) with geometry",
                         failed="some series failed (listed with the reason)")
    parser.add_argument("dirs", nargs="*", metavar="DIR", help="DICOM folders (scanned first); or use --manifest")
    parser.add_argument("--manifest", default=argparse.SUPPRESS, metavar="CSV",
                        help="series CSV from scan (series_all.csv or a shard) (default: scan the DIRs)")
    parser.add_argument("--out", required=True, metavar="OUT", help="output folder (required)")
    parser.add_argument("--format", dest="fmt", choices=[f.value for f in Format], default=argparse.SUPPRESS,
                        help=with_default("output format", defaults.CONVERT_FORMAT))
    parser.add_argument("--store", choices=[s.value for s in StoreKind], default=argparse.SUPPRESS,
                        help=with_default("Zarr store kind", defaults.CONVERT_STORE))
    parser.add_argument("--mode", choices=["3d", "2d"], default=argparse.SUPPRESS,
                        help=with_default("3d: one volume per series; 2d: one array per file",
                                          defaults.CONVERT_MODE))
    add_workers(parser)
    parser.add_argument("--shard-id", type=non_negative_int, default=argparse.SUPPRESS, metavar="I",
                        help="convert only shard I of --num-shards (default: every series)")
    parser.add_argument("--num-shards", type=positive_int, default=argparse.SUPPRESS, metavar="N",
                        help="number of shards for --shard-id (default none)")
    parser.add_argument("--overwrite", action="store_true", default=argparse.SUPPRESS,
                        help="redo series whose output is complete (default: keep them)")
    parser.add_argument("--verify-slices", type=non_negative_int, default=argparse.SUPPRESS, metavar="N",
                        help=with_default("slices per series checked by MD5 against pydicom's decode; 0 = off",
                                          defaults.CONVERT_VERIFY_SLICES))
    parser.add_argument("--layout", choices=list(defaults.VOLUME_LAYOUTS), default=argparse.SUPPRESS,
                        help=with_default("Zarr chunk and shard shapes (Z,Y,X; 'all' = the whole axis): slices for "
                                          "2-D training, patches for 3-D patches, balanced for both: "
                                          + "; ".join(layout_text(name) for name in defaults.VOLUME_LAYOUTS),
                                          defaults.VOLUME_LAYOUT))
    parser.add_argument("--chunks", type=int_triple, default=argparse.SUPPRESS, metavar="Z,Y,X",
                        help="plain chunk shape (no shards), instead of --layout; slab depth = Z "
                             "(default: the layout's)")
    parser.add_argument("--clevel", type=int, default=argparse.SUPPRESS, metavar="L",
                        help=with_default("Blosc zstd level 0-9 (NIfTI: gzip level, 0 = 6)", defaults.VOLUME_CLEVEL))
    add_levels(parser)
    parser.add_argument("--summary-suffix", default=argparse.SUPPRESS, metavar="S",
                        help="summary_<S>.csv and volumes_<S>.h5 (default run; shardII for a scan shard file, "
                             "shardIIofNN for --shard-id)")
    parser.add_argument("--uneven", choices=[p.value for p in UnevenPolicy], default=argparse.SUPPRESS,
                        help=with_default("series whose slice steps differ: resample onto a uniform grid along the "
                                          "slice normal, keep the slices as they are, or fail the series",
                                          defaults.CONVERT_UNEVEN))
    parser.add_argument("--tilt", choices=[p.value for p in TiltPolicy], default=argparse.SUPPRESS,
                        help=with_default("gantry-tilted series: correct (resample onto an orthogonal grid) or keep "
                                          "the sheared volume", defaults.CONVERT_TILT))
    parser.add_argument("--philips-scaling", choices=[p.value for p in PhilipsScaling], default=argparse.SUPPRESS,
                        help=with_default("Philips MR intensities: display (DICOM rescale) or precise (Philips' "
                                          "private scale slope, as dcm2niix)", defaults.CONVERT_PHILIPS_SCALING))
    parser.add_argument("--nifti-gzip", type=yes_no, default=argparse.SUPPRESS, metavar="yes|no",
                        help=with_default("with --format nifti: .nii.gz (yes) or .nii (no)",
                                          "yes" if defaults.NIFTI_GZIP else "no"))
    parser.add_argument("--max-frame-bytes", type=positive_int, default=argparse.SUPPRESS, metavar="BYTES",
                        help=with_default("a series with a frame larger than this (Rows x Columns x SamplesPerPixel "
                                          "x BitsAllocated / 8) fails before any pixel is decoded",
                                          defaults.CONVERT_MAX_FRAME_BYTES))
    parser.add_argument("--phi", choices=[p.value for p in Phi], default=argparse.SUPPRESS,
                        help="confidentiality profile attributes in the volumes' attributes, meta/ and NIfTI "
                             "sidecars: keep, pseudonymise (needs VOXELPIPE_KEY_SECRET) or drop (default: the "
                             "choice recorded in the manifest's scan.json; keep when it has none; DIRs are "
                             "scanned with this choice)")
    add_executor(parser, "per-series")
    return parser


def layout_text(name: str) -> str:
    """``name: chunks ZxYxX in shards ZxYxX`` of a layout of ``defaults.VOLUME_LAYOUTS`` (0 shown as ``all``)."""
    chunks, shards = defaults.VOLUME_LAYOUTS[name]

    def shape(values: tuple[int, ...]) -> str:
        return "x".join(str(v) if v else "all" for v in values)

    return f"{name}: chunks {shape(chunks)}" + (f" in shards {shape(shards)}" if shards else "")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "executor", defaults.EXECUTOR) == Executor.POOL and (getattr(args, "workers", None)
                                                                         or default_workers()) > 1:
        start_forkserver()  # the workers' imports load on another core while this process imports the pipeline
    from voxelpipe.pipelines.convert import convert  # lazy: see the cli package docstring

    rows = convert(args.dirs or None, out=args.out, progress=progress(args), **given(args, OPTIONS))
    return print_summary(NAME, rows, args.out, label="series_key")
