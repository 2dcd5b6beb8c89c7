"""``export-nnunet``: converted volumes and their masks as an nnU-Net v2 raw dataset."""
from __future__ import annotations

import argparse

from voxelpipe.cli.options import add_command, comma_names, given, progress
from voxelpipe.cli.summary import print_summary
from voxelpipe.core import defaults
from voxelpipe.core.types import Status

NAME = "export-nnunet"
PRINT_ROWS = 20  # one line per volume up to this many, else only the failed ones


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, "write converted volumes and their masks as an nnU-Net v2 raw dataset "
                                           "(imagesTr, labelsTr, dataset.json)",
                         failed="some volume failed (listed with the reason)",
                         description="Write the converted volumes of a convert output folder and their masks as an "
                                     "nnU-Net v2 raw dataset <out>/Dataset<ID>_<NAME>: imagesTr/<case>_0000.nii.gz, "
                                     "labelsTr/<case>.nii.gz (background 0, then --labels 1..n, painted in that "
                                     "order: where masks overlap the later label wins), dataset.json and "
                                     f"{defaults.NNUNET_SUMMARY}. A volume lacking a requested mask is skipped.")
    parser.add_argument("source", metavar="OUT", help="convert output folder (volumes in OUT/data/<key>.zarr with "
                                                      "masks added by masks or contours)")
    parser.add_argument("--dataset-id", required=True, metavar="ID",
                        help="nnU-Net dataset id 1..999 (500 and up avoid its pretrained datasets) (required)")
    parser.add_argument("--name", required=True, help="dataset name: letters, digits, '_', '-' (required)")
    parser.add_argument("--labels", required=True, type=comma_names, metavar="A,B,...",
                        help="mask names in label order (A = 1, B = 2, ...); later labels overwrite earlier ones "
                             "where masks overlap (required)")
    parser.add_argument("--channels", type=comma_names, default=argparse.SUPPRESS, metavar="NAME",
                        help="the name of the image channel, e.g. CT (nnU-Net normalises 'CT' by its "
                             "intensities, any other name per image) (default: the volumes' modality)")
    parser.add_argument("--out", default=argparse.SUPPRESS, metavar="RAW",
                        help="nnU-Net raw folder that gets Dataset<ID>_<NAME> (default: the nnUNet_raw environment "
                             f"variable, else OUT/{defaults.NNUNET_RAW})")
    parser.add_argument("--overwrite", action="store_true", default=argparse.SUPPRESS,
                        help="rewrite every case and drop cases this export does not produce (default: keep "
                             "complete cases)")
    return parser


def run(args: argparse.Namespace) -> int:
    from voxelpipe.apps.nnunet.export import dataset_root, export_nnunet  # lazy: see the cli package docstring

    options = given(args, ("channels", "out", "overwrite"))
    rows = export_nnunet(args.source, dataset_id=args.dataset_id, name=args.name, labels=args.labels,
                         progress=progress(args), **options)
    root = dataset_root(args.source, args.dataset_id, args.name, getattr(args, "out", None))
    cases = sum(1 for r in rows if r["status"] != Status.FAILED and r.get("image"))
    code = print_summary(NAME, rows, root, "case", f"; {cases} training case(s)")
    if len(rows) <= PRINT_ROWS:
        for row in rows:
            if row["status"] != Status.FAILED:
                print(f"  {row['status']:<7} {row['case']}: {row['reason'] or row.get('label_voxels', '')}")
    return code
