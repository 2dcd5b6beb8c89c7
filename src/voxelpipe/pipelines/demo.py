"""`demo`: a synthetic CT study (with an RT structure set) written as real DICOM, then the whole flow run on it:
scan, convert, masks, resample, project, report."""
from __future__ import annotations

import os

import pydicom

from ..synthetic import sphere_contours, write_demo_study, write_rtstruct
from .convert import convert
from .masks import add_masks_from_manifest
from .report import write_report
from .scan import scan
from .transform import parse_angles, project_volumes, resample_volumes


def run_demo(out: str | os.PathLike, workers: int | None = None, progress: bool = True) -> dict[str, str]:
    """Write the demo study under ``out/dicom`` and run every pipeline stage on it; print where things went."""
    out = os.fspath(out)
    dicom_dir = os.path.join(out, "dicom")
    files = write_demo_study(dicom_dir)
    files["rtstruct"] = [_write_structures(dicom_dir, files["ct"])]
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
    rows = add_masks_from_manifest(manifest, volumes, workers=workers, progress=progress)
    written = [r for r in rows if r["status"] == "written"]
    print(f"masks: {len(written)} ROI mask(s) from the RT structure set onto their volume "
          f"({', '.join(r['roi_name'] for r in written)}) -> {os.path.join(volumes, 'masks_report.csv')}")
    resampled = os.path.join(out, "resampled_las_1mm")
    rows = resample_volumes(volumes, resampled, spacing=(1.0, 1.0, 1.0), orientation="LAS", progress=progress)
    print(f"resample: {len(rows)} volume(s) reoriented to LAS and resampled to 1 mm -> {resampled}")
    projections = os.path.join(out, "projections")
    rows = project_volumes(volumes, projections, angles=parse_angles("0:360:45"), progress=progress)
    print(f"project: {len(rows)} volume(s), 8 maximum intensity projections each -> {projections}")
    report = write_report(volumes, samples=4, progress=progress)
    print(f"report: open {report} in a browser (summary, slices with mask overlays, MIPs, geometry, checks)")
    return {"dicom": dicom_dir, "manifest": manifest, "volumes": volumes, "resampled": resampled,
            "projections": projections, "report": report}


def _write_structures(dicom_dir: str, ct_files: list[str]) -> str:
    """An RT structure set on the demo CT: a 'Lesion' sphere (r 8 mm) and a 'Core' sphere (r 15 mm)."""
    z = sorted(float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in ct_files)
    rois = {"Lesion": sphere_contours((5.0, -3.0, z[25]), 8.0, z), "Core": sphere_contours((0.0, 0.0, z[18]), 15.0, z)}
    os.makedirs(os.path.join(dicom_dir, "rtstruct"), exist_ok=True)
    return write_rtstruct(os.path.join(dicom_dir, "rtstruct", "RS_demo.dcm"), ct_files, rois,
                          colors={"Lesion": (255, 60, 60), "Core": (60, 200, 255)})

