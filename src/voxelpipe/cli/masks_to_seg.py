"""``masks-to-seg``: write a converted volume's masks as a DICOM SEG referencing its source instances."""
from __future__ import annotations

import argparse
import logging

from voxelpipe.cli.options import EXIT_OK, add_command, comma_names
from voxelpipe.core import defaults
from voxelpipe.core.errors import InputError

NAME = "masks-to-seg"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, "write a converted volume's masks as a DICOM SEG (BINARY, one segment "
                                           "per mask) referencing the source instances",
                         failed=None,
                         description="Write the masks of OUT/data/<key>.zarr as a DICOM Segmentation object "
                                     "(needs highdicom: voxelpipe[seg]). Each slice's source instance is named "
                                     "by OUT/meta/<key>.slices.csv and found in --dicom by SOPInstanceUID.")
    parser.add_argument("out", metavar="OUT", help="convert output folder (holds data/<key>.zarr and meta/)")
    parser.add_argument("--key", required=True, help="the volume's series key: data/<key>.zarr (required)")
    parser.add_argument("--masks", type=comma_names, default=argparse.SUPPRESS, metavar="A,B",
                        help="comma-separated mask names, one segment each in this order (default: every mask, "
                             "sorted by name)")
    parser.add_argument("--dicom", default=argparse.SUPPRESS, metavar="DIR",
                        help="folder holding the source DICOM files, matched by SOPInstanceUID (default: the "
                             "file paths recorded in meta/<key>.slices.csv)")
    parser.add_argument("--out", dest="path", required=True, metavar="SEG.dcm",
                        help="the SEG file to write, atomically (required)")
    parser.add_argument("--algorithm", default=argparse.SUPPRESS, metavar="NAME",
                        help="segments are AUTOMATIC, made by this algorithm (default: MANUAL, no algorithm)")
    parser.add_argument("--algorithm-version", default=argparse.SUPPRESS, metavar="V",
                        help=f"AlgorithmVersion with --algorithm (default {defaults.SEG_ALGORITHM_VERSION})")
    parser.add_argument("--category", dest="categories", nargs="+", default=argparse.SUPPRESS,
                        metavar="MASK=SCHEME:VALUE:MEANING",
                        help="segmented property category per mask (default: by mask name, see the guide; else "
                             "SCT:85756007:Tissue)")
    parser.add_argument("--type", dest="types", nargs="+", default=argparse.SUPPRESS,
                        metavar="MASK=SCHEME:VALUE:MEANING",
                        help="segmented property type per mask, e.g. GTV=SCT:108369006:Neoplasm (default: by mask "
                             "name, see the guide; else SCT:85756007:Tissue)")
    parser.add_argument("--series-description", default=argparse.SUPPRESS,
                        help=f"SeriesDescription of the SEG (default {defaults.SEG_SERIES_DESCRIPTION!r})")
    parser.add_argument("--series-number", type=int, default=argparse.SUPPRESS,
                        help=f"SeriesNumber of the SEG (default {defaults.SEG_SERIES_NUMBER})")
    return parser


def mask_codes(option: str, items: list[str]) -> dict[str, str]:
    """``["MASK=SCHEME:VALUE:MEANING", ...]`` -> {mask: code text}.

    Raises:
        InputError: an item of another form, or a mask named twice.
    """
    codes: dict[str, str] = {}
    for text in items:
        mask, sep, code = text.partition("=")
        mask, code = mask.strip(), code.strip()
        if not sep or not mask or code.count(":") < 2:
            raise InputError(f"{option} takes MASK=SCHEME:VALUE:MEANING (e.g. GTV=SCT:108369006:Neoplasm), got "
                             f"{text!r}")
        if mask in codes:
            raise InputError(f"{option} names mask {mask!r} twice")
        codes[mask] = code
    return codes


def run(args: argparse.Namespace) -> int:
    # lazy: see the cli package docstring
    from voxelpipe.stores.dicom_seg import masks_to_seg

    if logging.getLogger("voxelpipe").getEffectiveLevel() > logging.DEBUG:
        # highdicom logs every module it copies at INFO; its warnings still show, its details with --log-level DEBUG
        logging.getLogger("highdicom").setLevel(logging.WARNING)
    options = {}
    for name, option in (("categories", "--category"), ("types", "--type")):
        if getattr(args, name, None):
            options[name] = mask_codes(option, getattr(args, name))
    for name in ("algorithm", "algorithm_version", "series_description", "series_number"):
        if hasattr(args, name):
            options[name] = getattr(args, name)
    result = masks_to_seg(args.out, args.key, args.path, masks=getattr(args, "masks", None),
                          dicom=getattr(args, "dicom", None), **options)
    empty = f" ({len(result['empty_segments'])} empty: {', '.join(result['empty_segments'])})" \
        if result["empty_segments"] else ""
    print(f"masks-to-seg: {len(result['segments'])} segment(s){empty}, {result['frames']} frame(s) -> "
          f"{result['path']}")
    return EXIT_OK
