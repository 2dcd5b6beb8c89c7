"""``petct-index``: find PET/CT studies (CT, PET, mask) in a project folder and index the complete ones."""
from __future__ import annotations

import argparse

from voxelpipe.cli.options import EXIT_ITEMS_FAILED, EXIT_OK, add_command, add_workers, given, progress

NAME = "petct-index"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, "find PET/CT studies (CT, PET, mask) in a project folder",
                         failed="no study folder was complete (the incomplete ones are listed with what is "
                                "missing)")
    parser.add_argument("project", help="project folder: <patient>/<study>/ holding DICOM series or sub-folders")
    parser.add_argument("--out", required=True,
                        help="index CSV of complete studies (the incomplete ones go to <out stem>_incomplete.csv "
                             "with what is missing) (required)")
    parser.add_argument("--export-zip", default=argparse.SUPPRESS, metavar="ZIP",
                        help="also write the studies as zipped NIfTI (<hash>/<hash>_ct.nii.gz, _petsuv.nii.gz, "
                             "_mask.nii.gz) (default: none)")
    parser.add_argument("--mapping", default=argparse.SUPPRESS,
                        help="write the private subject-ID mapping here (CSV) (default: not written)")
    add_workers(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from voxelpipe.apps.petct.index import incomplete_path, index_project  # lazy: see the cli package docstring

    rows, incomplete = index_project(args.project, args.out, progress=progress(args),
                                     **given(args, ("export_zip", "mapping", "workers")))
    missing: dict[str, int] = {}
    for row in incomplete:
        for part in filter(None, row["missing"].split(";")):
            missing[part] = missing.get(part, 0) + 1
    text = ", ".join(f"{name} {count}" for name, count in sorted(missing.items()))
    print(f"petct-index: {len(rows) + len(incomplete)} study folder(s): {len(rows)} complete -> {args.out}; "
          f"{len(incomplete)} incomplete -> {incomplete_path(args.out)}" + (f" (missing: {text})" if text else ""))
    if getattr(args, "mapping", None):
        print(f"petct-index: private subject mapping -> {args.mapping}")
    if getattr(args, "export_zip", None):
        print(f"petct-index: zipped NIfTI of {len(rows)} subject(s) -> {args.export_zip}")
    return EXIT_OK if rows else EXIT_ITEMS_FAILED
