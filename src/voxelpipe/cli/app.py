"""Command line: ``python -m voxelpipe <command>``.

Every option can also be set through an environment variable ``VOXELPIPE_<OPTION>`` (upper case, dashes as
underscores, e.g. ``VOXELPIPE_WORKERS=2``); a flag on the command line wins over the environment.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from voxelpipe._version import __version__
from voxelpipe.core.errors import VoxelpipeError

log = logging.getLogger("voxelpipe")

ENV_PREFIX = "VOXELPIPE_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_name(action: argparse.Action) -> str:
    return ENV_PREFIX + action.dest.upper()


def apply_env_defaults(parser: argparse.ArgumentParser, environ: dict[str, str] | None = None) -> None:
    """Turn ``VOXELPIPE_<OPTION>`` variables into defaults of the matching options (flags still win)."""
    environ = os.environ if environ is None else environ
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                apply_env_defaults(sub, environ)
            continue
        if not action.option_strings or action.dest in ("help", "version"):
            continue
        name = env_name(action)
        if name not in environ:
            continue
        text = environ[name]
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            lowered = text.strip().lower()
            if lowered not in _TRUE | _FALSE:
                parser.error(f"{name}={text!r}: expected one of 1/0, true/false, yes/no, on/off")
            value = (lowered in _TRUE) == isinstance(action, argparse._StoreTrueAction)
        elif action.nargs in ("+", "*"):
            value = [_convert(parser, action, name, part) for part in text.split(os.pathsep) if part]
        else:
            value = _convert(parser, action, name, text)
        action.default = value
        action.required = False
        action.help = (action.help or "") + f" [set from {name}]"


def _convert(parser: argparse.ArgumentParser, action: argparse.Action, name: str, text: str):
    try:
        value = action.type(text) if action.type else text
    except (TypeError, ValueError):
        parser.error(f"{name}={text!r}: not a valid value for {'/'.join(action.option_strings)}")
    if action.choices is not None and value not in action.choices:
        parser.error(f"{name}={text!r}: choose from {', '.join(map(str, action.choices))}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _add_executor(parser: argparse.ArgumentParser, what: str) -> None:
    """--executor / --scheduler: where the per-item tasks of a command run."""
    parser.add_argument("--executor", choices=["pool", "dask", "dask-local"], default="pool",
                        help=f"where the {what} tasks run: pool (processes of this machine, default), dask (a "
                             "running dask.distributed scheduler, see --scheduler) or dask-local (a LocalCluster "
                             "of --workers processes); needs the dask extra for the last two")
    parser.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                        help="address of the dask scheduler for --executor dask")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m voxelpipe",
        description="DICOM folders to machine-learning-ready data. Every option can also be set through an "
                    "environment variable VOXELPIPE_<OPTION> (e.g. VOXELPIPE_WORKERS=2); flags win.",
    )
    parser.add_argument("--version", action="version", version=f"voxelpipe {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging level of the 'voxelpipe' logger (default INFO)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or progress log lines")
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    scan = commands.add_parser("scan", help="find DICOM files, read headers, write the metadata table and "
                                            "the series manifest")
    scan.add_argument("dirs", nargs="+", metavar="DIR", help="folders (searched at any depth) or files")
    scan.add_argument("--out", required=True, metavar="MANIFEST", help="manifest folder to write")
    scan.add_argument("--shards", type=_positive_int, default=16, help="number of byte-balanced shard files "
                                                                        "(default 16)")
    scan.add_argument("--workers", type=_positive_int, default=None,
                      help="worker processes (default: number of cores; 1 runs in this process)")
    scan.add_argument("--table-format", choices=["csv", "parquet"], default="csv",
                      help="also write metadata.parquet (needs pyarrow) (default csv)")
    _add_executor(scan, "header-reading")
    scan.set_defaults(func=_run_scan)

    convert = commands.add_parser("convert", help="convert DICOM series to volumes (Zarr, HDF5, NPZ) with geometry")
    convert.add_argument("dirs", nargs="*", metavar="DIR", help="DICOM folders (scanned first); or use --manifest")
    convert.add_argument("--manifest", metavar="CSV", help="series CSV from scan (series_all.csv or a shard)")
    convert.add_argument("--out", required=True, metavar="OUT", help="output folder")
    convert.add_argument("--format", dest="fmt", choices=["zarr", "hdf5", "npz"], default="zarr",
                         help="output format (default zarr)")
    convert.add_argument("--store", choices=["dir", "zip", "sqlite"], default="dir",
                         help="Zarr store kind (default dir)")
    convert.add_argument("--mode", choices=["3d", "2d"], default="3d", help="one volume per series (3d)")
    convert.add_argument("--workers", type=_positive_int, default=None,
                         help="worker processes (default: number of cores; 1 runs in this process)")
    convert.add_argument("--shard-id", type=int, default=None, help="convert only shard I of --num-shards")
    convert.add_argument("--num-shards", type=_positive_int, default=None, help="number of shards")
    convert.add_argument("--overwrite", action="store_true", help="redo series whose output is complete")
    convert.add_argument("--verify-slices", type=int, default=2,
                         help="slices per series checked by MD5 against pydicom's decode (default 2; 0 = off)")
    convert.add_argument("--chunks", type=_chunks, default=None, metavar="Z,Y,X",
                         help="chunk shape (default 8,256,256; slab depth = Z)")
    convert.add_argument("--clevel", type=int, default=1, help="Blosc zstd level 0-9 (default 1)")
    convert.add_argument("--summary-suffix", default=None, metavar="S",
                         help="summary_<S>.csv and volumes_<S>.h5 (default run; shardII for a scan shard file, shardIIofNN for --shard-id)")
    _add_executor(convert, "per-series")
    convert.set_defaults(func=_run_convert)

    aggregate = commands.add_parser("aggregate", help="merge the summary_*.csv of shards into summary_all.csv")
    aggregate.add_argument("out", metavar="OUT", help="output folder of convert")
    aggregate.set_defaults(func=_run_aggregate)

    resample = commands.add_parser("resample", help="reorient and resample converted volumes onto a new grid")
    resample.add_argument("source", metavar="IN", help="convert output folder, or one volume")
    resample.add_argument("--out", required=True, metavar="OUT", help="output folder")
    grid = resample.add_mutually_exclusive_group()
    grid.add_argument("--spacing", type=_floats3, default=None, metavar="S0,S1,S2", help="new spacing, mm")
    grid.add_argument("--shape", type=_chunks, default=None, metavar="N0,N1,N2", help="new shape")
    grid.add_argument("--like", default=None, metavar="REF", help="a volume whose grid to resample onto")
    resample.add_argument("--order", choices=["linear", "nearest", "label"], default="linear",
                          help="interpolation (label: masks, linear then >= 0.5) (default linear)")
    resample.add_argument("--orientation", default=None, metavar="CODE",
                          help="reorient first to an axis code, e.g. LAS, RAS, LPS")
    resample.add_argument("--key", default=None, help="only this series key")
    resample.set_defaults(func=_run_resample)

    project = commands.add_parser("project", help="rotated maximum/mean intensity projections of volumes")
    project.add_argument("source", metavar="IN", help="convert output folder, or one volume")
    project.add_argument("--out", required=True, metavar="OUT", help="output folder")
    project.add_argument("--angles", default="0:360:45", help="start:stop:step or a comma list, degrees "
                                                              "(default 0:360:45)")
    project.add_argument("--axis", default="S", choices=["S", "A", "L"], help="rotation axis (default S)")
    project.add_argument("--kind", choices=["max", "mean"], default="max", help="projection (default max)")
    project.add_argument("--with-masks", action="store_true", help="project masks/<name> arrays alongside")
    project.add_argument("--key", default=None, help="only this series key")
    project.set_defaults(func=_run_project)

    contours = commands.add_parser("contours", help="masks from text polygon contours (cardiac MRI challenge "
                                   "layout): image/mask pairs as npz or Zarr, optional PNG overlays")
    contours.add_argument("--link", required=True, help="link.csv: patient_id (DICOM folder), original_id "
                          "(contour folder)")
    contours.add_argument("--dicom-dir", required=True, help="folder holding one DICOM folder per patient_id")
    contours.add_argument("--contour-dir", required=True, help="folder holding one contour folder per original_id")
    contours.add_argument("--out", required=True, help="output folder")
    contours.add_argument("--contours", default="i,o", help="contour kinds to read, comma separated "
                          "(i = inner/endocardium, o = outer/epicardium) (default i,o)")
    contours.add_argument("--format", dest="fmt", default="npz", choices=["npz", "zarr"],
                          help="npz (one file per pair, a folder per patient) or zarr (default npz)")
    contours.add_argument("--overlay", action="store_true", help="also write a PNG overlay per pair")
    contours.add_argument("--overwrite", action="store_true", help="rewrite outputs that are already complete")
    contours.add_argument("--workers", type=_positive_int, default=None,
                          help="worker processes, one patient per task (default: serial below 8 patients, "
                               "then one per 4 patients up to the cores)")
    contours.set_defaults(func=_run_contours)

    masks = commands.add_parser("masks", help="rasterise RTSTRUCT or SEG objects onto converted volumes as "
                                "masks/<name>")
    masks.add_argument("--volume", help="a converted Zarr volume (OUT/data/<key>.zarr)")
    source = masks.add_mutually_exclusive_group()
    source.add_argument("--rtstruct", help="RTSTRUCT file for --volume")
    source.add_argument("--seg", help="DICOM SEG file for --volume")
    masks.add_argument("--manifest", help="scan output folder (or its objects.csv): every RTSTRUCT/SEG found "
                       "there goes onto its referenced series' volume under --out")
    masks.add_argument("--out", help="convert output folder holding data/<key>.zarr (with --manifest)")
    masks.add_argument("--roi", nargs="+", default=None, help="only these ROI / segment names (default: all)")
    masks.add_argument("--report", default=None, help="write the per-ROI report here as CSV (default: "
                       "masks_report.csv beside the volume's data folder)")
    masks.add_argument("--workers", type=_positive_int, default=None, help="worker processes (default: cores)")
    _add_executor(masks, "per-volume")
    masks.set_defaults(func=_run_masks)

    suv = commands.add_parser("suv", help="PET body-weight SUV factor and its audit record, as JSON per series")
    suv.add_argument("paths", nargs="+", metavar="PET_FILE_OR_DIR", help="PET DICOM files or folders")
    suv.set_defaults(func=_run_suv)

    index = commands.add_parser("petct-index", help="find PET/CT studies (CT, PET, mask) in a project folder")
    index.add_argument("project", help="project folder: <patient>/<study>/ holding DICOM series or sub-folders")
    index.add_argument("--out", required=True, help="index CSV of complete studies (the incomplete ones go to "
                       "<out stem>_incomplete.csv with what is missing)")
    index.add_argument("--export-zip", default=None, metavar="ZIP", help="also write the studies as zipped NIfTI "
                       "(<hash>/<hash>_ct.nii.gz, _petsuv.nii.gz, _mask.nii.gz)")
    index.add_argument("--mapping", default=None, help="write the private subject-ID mapping here (CSV)")
    index.add_argument("--workers", type=_positive_int, default=None, help="worker processes (default: cores)")
    index.set_defaults(func=_run_petct_index)

    petct = commands.add_parser("petct", help="PET/CT preparation: SUV, reorient, resample to the CT grid, "
                                "iso-contour masks, normalised HDF5/Zarr per subject")
    petct.add_argument("source", help="INDEX.csv from petct-index, or project.zip in the zipped NIfTI form")
    petct.add_argument("--out", required=True, help="OUT.h5 or OUT.zarr (reruns skip subjects already present)")
    petct.add_argument("--shape", type=_chunks, default=None, help="output grid X,Y,Z voxels")
    petct.add_argument("--spacing", type=_floats3, default=None, help="output spacing X,Y,Z mm")
    petct.add_argument("--orientation", default="LAS", help="axis codes of the output arrays (default LAS)")
    petct.add_argument("--iso", type=float, default=0.41, help="mask_iso: fraction of each lesion's SUVmax "
                       "(default 0.41, EANM)")
    petct.add_argument("--iso-suv", type=float, default=None, help="mask_iso: absolute SUV threshold instead")
    petct.add_argument("--ct-window", type=_floats2, default=(-1000.0, 1000.0), help="CT HU clip range "
                       "LOW,HIGH scaled to [0, 1] (default -1000,1000)")
    petct.add_argument("--suv-window", type=_floats2, default=(0.0, 20.0), help="SUV clip range LOW,HIGH "
                       "scaled to [0, 1] (default 0,20)")
    petct.add_argument("--roi", nargs="+", default=None, help="mask ROI / segment names to use (default: all)")
    petct.add_argument("--workers", type=_positive_int, default=None, help="worker processes (default: cores)")
    _add_executor(petct, "per-subject")
    petct.set_defaults(func=_run_petct)

    merge = commands.add_parser("merge", help="merge subject files (HDF5 or Zarr) of petct into one")
    merge.add_argument("inputs", nargs="+", help="input .h5 / .zarr files")
    merge.add_argument("--out", required=True, help="merged .h5 / .zarr")
    merge.add_argument("--on-duplicate", default="error", choices=["error", "skip"],
                       help="a subject key in several inputs: error (default) or keep the first")
    merge.set_defaults(func=_run_merge)

    project2d = commands.add_parser("project-2d", help="rotated MIPs of every subject of a petct file into a "
                                    "2-D file, with the mask projections")
    project2d.add_argument("source", help="petct output .h5 / .zarr")
    project2d.add_argument("--out", required=True, help="2-D output .h5 / .zarr")
    project2d.add_argument("--angles", default="0:360:45", help="degrees: a list 0,45,90 or start:stop:step "
                           "(default 0:360:45)")
    project2d.add_argument("--axis", default="S", choices=["S", "A", "L"], help="rotation axis (default S)")
    project2d.add_argument("--workers", type=_positive_int, default=None, help="worker processes (default: cores)")
    project2d.set_defaults(func=_run_project_2d)

    lung = commands.add_parser("lung", help="lung CT preprocessing: 2 mm volumes, lung masks, crops, nodule "
                               "features (Data Science Bowl style)")
    lung.add_argument("dirs", nargs="*", metavar="DIR", help="folders of CT DICOM (one patient each, or nested)")
    lung.add_argument("--manifest", default=None, help="scan's series_all.csv (or a shard) instead of folders")
    lung.add_argument("--out", required=True, help="output ROOT folder")
    lung.add_argument("--spacing", type=_floats3, default=(2.0, 2.0, 2.0), help="output spacing mm along the "
                      "volume's axes (slice, row, column) (default 2,2,2)")
    lung.add_argument("--model", default=None, metavar="MODULE:FUNCTION", help="nodule probability model called "
                      "as f(volume, geometry) -> same-shape float array (default: built-in HU blob detector)")
    lung.add_argument("--threshold", type=float, default=0.5, help="nodule probability threshold (default 0.5)")
    lung.add_argument("--pseudonymise", action="store_true", help="patient ids in outputs are keyed hashes "
                      "(VOXELPIPE_KEY_SECRET) instead of the folder name / PatientID")
    lung.add_argument("--overwrite", action="store_true", help="redo patients whose outputs are complete")
    lung.add_argument("--workers", type=_positive_int, default=None, help="worker processes (default: cores)")
    _add_executor(lung, "per-series")
    lung.set_defaults(func=_run_lung)

    report = commands.add_parser("report", help="self-contained HTML verification report of a convert output")
    report.add_argument("out", metavar="OUT", help="output folder of convert")
    report.add_argument("--html", default=None, metavar="FILE", help="HTML file to write (default OUT/report.html)")
    report.add_argument("--samples", type=int, default=8, metavar="N",
                        help="series sampled for pictures, besides every failed or flagged one (default 8)")
    report.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    report.set_defaults(func=_run_report)

    demo = commands.add_parser("demo", help="write a small synthetic CT study as DICOM and run the pipeline on it")
    demo.add_argument("--out", default="voxelpipe-demo", help="folder for the demo (default ./voxelpipe-demo)")
    demo.add_argument("--workers", type=_positive_int, default=None, help="worker processes (default: cores)")
    demo.set_defaults(func=_run_demo)
    return parser


def _run_scan(args: argparse.Namespace) -> int:
    from voxelpipe.pipelines.scan import scan

    result = scan(args.dirs, out=args.out, shards=args.shards, workers=args.workers,
                  table_format=args.table_format, progress=not args.no_progress, executor=args.executor,
                  scheduler=args.scheduler)
    print(f"scanned {result.n_files} files in {result.seconds:.1f} s: {len(result.series)} series, "
          f"{len(result.objects)} objects, {len(result.unreadable)} unreadable -> {args.out}")
    return 0


def _chunks(text: str) -> tuple[int, int, int]:
    parts = tuple(int(v) for v in text.split(","))
    if len(parts) != 3 or min(parts) < 1:
        raise ValueError(text)
    return parts


def _floats3(text: str) -> tuple[float, float, float]:
    parts = tuple(float(v) for v in text.split(","))
    if len(parts) != 3 or min(parts) <= 0:
        raise ValueError(text)
    return parts


def _floats2(text: str) -> tuple[float, float]:
    parts = tuple(float(v) for v in text.split(","))
    if len(parts) != 2 or not parts[0] < parts[1]:
        raise ValueError(text)
    return parts


def _report(rows: list[dict], verb: str, out: str) -> int:
    failed = [r for r in rows if r["status"] == "failed"]
    print(f"{verb} {len(rows) - len(failed)}, failed {len(failed)} volume(s) -> {out}")
    for row in failed:
        print(f"  failed {row['source']}: {row['reason']}")
    return 1 if failed else 0


def _run_resample(args: argparse.Namespace) -> int:
    from voxelpipe.pipelines.transform import resample_volumes

    rows = resample_volumes(args.source, args.out, spacing=args.spacing, shape=args.shape, like=args.like,
                            order=args.order, orientation=args.orientation, key=args.key,
                            progress=not args.no_progress)
    return _report(rows, "resampled", args.out)


def _run_project(args: argparse.Namespace) -> int:
    from voxelpipe.pipelines.transform import parse_angles, project_volumes

    rows = project_volumes(args.source, args.out, angles=parse_angles(args.angles), axis=args.axis,
                           kind=args.kind, with_masks=args.with_masks, key=args.key, progress=not args.no_progress)
    return _report(rows, "projected", args.out)


def _run_convert(args: argparse.Namespace) -> int:
    from voxelpipe.pipelines.convert import convert

    summary = convert(args.dirs or None, out=args.out, manifest=args.manifest, fmt=args.fmt, store=args.store,
                      mode=args.mode, workers=args.workers, shard_id=args.shard_id, num_shards=args.num_shards,
                      overwrite=args.overwrite, verify_slices=args.verify_slices, chunks=args.chunks,
                      clevel=args.clevel, summary_suffix=args.summary_suffix, progress=not args.no_progress,
                      executor=args.executor, scheduler=args.scheduler)
    failed = [r for r in summary if r["status"] == "failed"]
    done = sum(1 for r in summary if r["status"] == "converted")
    skipped = sum(1 for r in summary if r["status"] == "skipped")
    print(f"converted {done}, skipped {skipped}, failed {len(failed)} series -> {args.out}")
    for row in failed:
        print(f"  failed {row['series_key']}: {row['reason']}")
    return 1 if failed else 0


def _run_aggregate(args: argparse.Namespace) -> int:
    from voxelpipe.pipelines.convert import aggregate

    rows = aggregate(args.out)
    print(f"aggregated {len(rows)} series -> {args.out}/summary_all.csv")
    return 0


def _run_contours(args: argparse.Namespace) -> int:
    from voxelpipe.apps.contours.pipeline import contours_command

    return contours_command(args)


def _run_masks(args: argparse.Namespace) -> int:
    from voxelpipe.pipelines.masks import masks_command

    return masks_command(args)


def _run_suv(args: argparse.Namespace) -> int:
    from voxelpipe.apps.petct.suv import suv_command

    return suv_command(args)


def _run_petct_index(args: argparse.Namespace) -> int:
    from voxelpipe.apps.petct.index import petct_index_command

    return petct_index_command(args)


def _run_petct(args: argparse.Namespace) -> int:
    from voxelpipe.apps.petct.pipeline import petct_command

    return petct_command(args)


def _run_merge(args: argparse.Namespace) -> int:
    from voxelpipe.apps.petct.merge import merge_command

    return merge_command(args)


def _run_project_2d(args: argparse.Namespace) -> int:
    from voxelpipe.apps.petct.project2d import project_2d_command

    return project_2d_command(args)


def _run_lung(args: argparse.Namespace) -> int:
    from voxelpipe.apps.lung.pipeline import lung_command

    return lung_command(args)


def _run_report(args: argparse.Namespace) -> int:
    from voxelpipe.apps.report.build import report_command

    return report_command(args)


def _run_demo(args: argparse.Namespace) -> int:
    from voxelpipe.apps.demo import run_demo

    run_demo(args.out, workers=args.workers, progress=not args.no_progress)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    apply_env_defaults(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    try:
        return args.func(args)
    except VoxelpipeError as exc:
        log.error("%s", exc)
        return 2
    except FileNotFoundError as exc:
        log.error("%s", exc)
        return 2
