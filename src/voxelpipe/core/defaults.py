"""Default values shared by the library signatures and the command line.

Each default is written here once: the library function names it in its signature and the command line reads it
(to show it in ``--help``) without importing the heavy module that does the work. Units: mm for spacings, degrees
for angles; shapes and chunks in array axis order (slice, row, column) unless the name says otherwise.
"""
from __future__ import annotations

from voxelpipe.core.types import (
    ColumnNames,
    Executor,
    Format,
    Phi,
    PhilipsScaling,
    StoreKind,
    TiltPolicy,
    UnevenPolicy,
)

# where per-item tasks run (voxelpipe.core.types.Executor)
EXECUTOR = Executor.POOL

# scan
SCAN_SHARDS = 16  # byte-balanced shard files of the series manifest
SCAN_TABLE_FORMAT = "csv"  # csv, or parquet (metadata also as Parquet)
SCAN_PHI = Phi.KEEP  # confidentiality profile attributes: keep, pseudonymise (needs VOXELPIPE_KEY_SECRET), drop
SCAN_COLUMN_NAMES = ColumnNames.NAME  # metadata columns "Name (gggg, eeee)"; keyword: DICOM keywords

# convert
CONVERT_FORMAT = Format.ZARR
CONVERT_STORE = StoreKind.DIR
CONVERT_MODE = "3d"  # one volume per series; 2d: one array per file
VOLUME_CHUNKS = (8, 256, 256)  # plain Zarr chunk shape (slice, row, column) of save_volume; convert --chunks
# convert --layout: name -> (chunk shape, shard shape or None), (slice, row, column); 0 = the array's whole extent
# on that axis (a shard's extent rounded up to whole chunks). Figures: benches/bench_reader.py, docs/guide/convert.md
VOLUME_LAYOUTS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int] | None]] = {
    "slices": ((1, 0, 0), (32, 0, 0)),  # one slice per chunk, 32 slices per shard
    "patches": ((32, 64, 64), (32, 0, 0)),  # small blocks for random 3-D patches
    "balanced": ((4, 256, 256), (32, 0, 0)),  # slices and patches both fast
}
VOLUME_LAYOUT = "balanced"  # convert's default layout (when --chunks is not given)
VOLUME_CLEVEL = 1  # Blosc zstd level 0-9
VOLUME_LEVELS = 1  # OME-Zarr pyramid levels of Zarr volumes (1 = full resolution only)
CONVERT_UNEVEN = UnevenPolicy.RESAMPLE  # uneven slice steps: resample onto a uniform grid (dcm2niix's _Eq)
CONVERT_TILT = TiltPolicy.CORRECT  # gantry tilt: resample onto an orthogonal grid (dcm2niix's _Tilt)
CONVERT_PHILIPS_SCALING = PhilipsScaling.PRECISE  # dcm2niix's default (-p y)
NIFTI_GZIP = True  # --format nifti writes .nii.gz (False: .nii)
# largest frame (Rows x Columns x SamplesPerPixel x BitsAllocated / 8) convert decodes: 512 MiB, 10x the largest
# real single frames (a 16-bit 5355 x 4915 mammogram is 53 MB; whole-slide pathology is stored in tiles of 256 to
# 4096 pixels); a header claiming more is refused before anything is allocated
CONVERT_MAX_FRAME_BYTES = 512 * 1024 * 1024
CONVERT_VERIFY_SLICES = 2  # slices per series checked by MD5 against pydicom's decode; 0 = off

# resample / project (converted volumes) and project-2d (petct subject files)
RESAMPLE_ORDER = "linear"  # linear, nearest, label
PROJECTION_ANGLES = "0:360:45"  # start:stop:step (stop excluded) or a comma list, degrees
PROJECTION_AXIS = "S"  # rotation axis code
PROJECTION_KIND = "max"  # max or mean intensity projection

# petct
PETCT_ORIENTATION = "LAS"  # axis codes of the output arrays
PETCT_ISO = 0.41  # mask_iso: fraction of each lesion's SUVmax (EANM)
PETCT_CT_WINDOW = (-1000.0, 1000.0)  # CT clip range, HU, scaled to [0, 1]
PETCT_SUV_WINDOW = (0.0, 20.0)  # SUV clip range, scaled to [0, 1]

# merge
MERGE_ON_DUPLICATE = "error"  # a subject key in several inputs: error, or skip (keep the first)

# lung
LUNG_SPACING = (2.0, 2.0, 2.0)  # output spacing mm along (slice, row, column)
LUNG_THRESHOLD = 0.5  # nodule probability threshold

# report
REPORT_SAMPLES = 8  # series sampled for pictures, besides every failed or flagged one
REPORT_SEED = 0  # seed of the sample

# contours
CONTOUR_KINDS = ("i", "o")  # i = inner (endocardium), o = outer (epicardium)
CONTOUR_FORMAT = "npz"  # npz (one file per pair) or zarr (one group per patient)

# masks-to-seg
SEG_SERIES_NUMBER = 300  # SeriesNumber of a written SEG
SEG_SERIES_DESCRIPTION = "voxelpipe segmentation"  # SeriesDescription of a written SEG
SEG_ALGORITHM_VERSION = "unknown"  # AlgorithmVersion when --algorithm is given without --algorithm-version

# export-nnunet
NNUNET_RAW = "nnUNet_raw"  # folder of nnU-Net raw datasets, inside the convert output when no --out (or nnUNet_raw)
NNUNET_FILE_ENDING = ".nii.gz"  # nnU-Net's file_ending of images and label maps
NNUNET_SUMMARY = "export_summary.csv"  # one row per volume, in the dataset folder

# demo
DEMO_OUT = "voxelpipe-demo"  # folder the demo writes to

__all__ = [name for name in dir() if name.isupper()]
