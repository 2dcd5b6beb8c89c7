"""`demo`: a synthetic CT study written as real DICOM, then the pipeline run on it."""
from __future__ import annotations

import os

from ..synthetic import write_demo_study
from .convert import convert
from .scan import scan
from .transform import parse_angles, project_volumes, resample_volumes


def run_demo(out: str | os.PathLike, workers: int | None = None, progress: bool = True) -> dict[str, str]:
    """Write the demo study under ``out/dicom`` and run every pipeline stage on it; print where things went."""
    out = os.fspath(out)
    dicom_dir = os.path.join(out, "dicom")
    files = write_demo_study(dicom_dir)
    n_files = sum(len(v) for v in files.values())
    print(f"wrote {n_files} synthetic DICOM files -> {dicom_dir}")
    manifest = os.path.join(out, "manifest")
    result = scan([dicom_dir], out=manifest, shards=2, workers=workers, progress=progress)
    print(f"scan: {len(result.series)} series, {sum(int(s['localizers_skipped'] or 0) for s in result.series)} "
          f"localizer(s) skipped, {len(result.unreadable)} unreadable -> {manifest}")
    for row in result.series:
        print(f"  series {row['series_key']}: {row['modality']} {row['n_slices']} slices "
              f"{row['rows']}x{row['columns']}, spacing {row['spacing_median']} mm")
    for name in ("metadata.csv", "series_all.csv", "series_files.csv", "objects.csv", "unreadable_files.csv"):
        print(f"  {os.path.join(manifest, name)}")
    volumes = os.path.join(out, "volumes")
    summary = convert(manifest=os.path.join(manifest, "series_all.csv"), out=volumes, workers=workers,
                      progress=progress, overwrite=True)
    print(f"convert: {sum(r['status'] == 'converted' for r in summary)} volume(s) -> {volumes}")
    for row in summary:
        print(f"  {row['path']}: {row['shape']} {row['dtype']}, {row['status']} {row['reason']}"
              f"(ratio {row['ratio']}, verification {row['verification']})")
    print(f"  {os.path.join(volumes, 'summary_run.csv')}")
    resampled = os.path.join(out, "resampled_las_1mm")
    rows = resample_volumes(volumes, resampled, spacing=(1.0, 1.0, 1.0), orientation="LAS", progress=progress)
    print(f"resample: {len(rows)} volume(s) reoriented to LAS and resampled to 1 mm -> {resampled}")
    projections = os.path.join(out, "projections")
    rows = project_volumes(volumes, projections, angles=parse_angles("0:360:45"), progress=progress)
    print(f"project: {len(rows)} volume(s), 8 maximum intensity projections each -> {projections}")
    return {"dicom": dicom_dir, "manifest": manifest, "volumes": volumes, "resampled": resampled,
            "projections": projections}
