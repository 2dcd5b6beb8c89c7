"""`demo`: a synthetic CT study (with an RT structure set) written as real DICOM, then the whole flow run on it:
scan, convert, masks, resample, project, report."""
from __future__ import annotations

import os

import pydicom

from voxelpipe.apps.report import build_report, write_html
from voxelpipe.core import defaults
from voxelpipe.core.errors import VoxelpipeError
from voxelpipe.core.types import Status
from voxelpipe.ops.warmup import start_warmup, wait_warmup
from voxelpipe.pipelines.convert import convert
from voxelpipe.pipelines.masks import add_masks_from_manifest
from voxelpipe.pipelines.scan import scan
from voxelpipe.pipelines.transform import parse_angles, project_volumes, resample_volumes
from voxelpipe.testing.synthetic import sphere_contours, write_demo_study, write_rtstruct


class DemoStepError(VoxelpipeError):
    """A stage of the demo did not do what it should on the demo study (so the installation is broken)."""


def _require(step: str, rows: list[dict], ok: frozenset[str] = frozenset({Status.DONE}),
             count: int | None = None) -> None:
    """Raise DemoStepError unless every row of ``step`` has an ``ok`` status (and there are ``count`` rows)."""
    bad = [r for r in rows if r.get("status") not in ok]
    if bad or (count is not None and len(rows) != count):
        detail = "; ".join(f"{r.get('series_key') or r.get('volume') or r.get('source')}: {r.get('status')} "
                           f"{r.get('reason') or r.get('note') or ''}".strip() for r in bad)
        raise DemoStepError(f"demo: {step} gave {len(rows)} row(s), {len(bad)} not ok"
                            + (f" (expected {count})" if count is not None else "") + (f": {detail}" if detail else ""))


def run_demo(out: str | os.PathLike, workers: int | None = None, progress: bool = True) -> dict[str, str]:
    """Write the demo study under ``out/dicom`` and run every pipeline stage on it; print where things went."""
    out = os.fspath(out)
    # a first run compiles the masks, resample and project kernels in the background while it writes, scans and
    # converts the study (no-op when they are cached)
    warming = start_warmup([["polygon", "resample"], ["project"]])
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
    print(f"convert: {sum(r['status'] == Status.DONE for r in summary)} volume(s) -> {volumes}")
    for row in summary:
        print(f"  {row['path']}: {row['shape']} {row['dtype']}, {row['status']} {row['reason']}"
              f"(ratio {row['ratio']}, verification {row['verification']})")
    print(f"  {os.path.join(volumes, 'summary_run.csv')}")
    _require("convert", summary, count=len(result.series))
    wait_warmup(warming)
    rows = add_masks_from_manifest(manifest, volumes, workers=workers, progress=progress)
    written = [r for r in rows if r["status"] == Status.DONE]
    _require("masks", rows, count=2)
    print(f"masks: {len(written)} ROI mask(s) from the RT structure set onto their volume "
          f"({', '.join(r['roi_name'] for r in written)}) -> {os.path.join(volumes, 'masks_report.csv')}")
    resampled = os.path.join(out, "resampled_las_1mm")
    rows = resample_volumes(volumes, resampled, spacing=(1.0, 1.0, 1.0), orientation="LAS", progress=progress)
    _require("resample", rows, count=len(summary))
    print(f"resample: {len(rows)} volume(s) reoriented to LAS and resampled to 1 mm -> {resampled}")
    projections = os.path.join(out, "projections")
    rows = project_volumes(volumes, projections, angles=parse_angles(defaults.PROJECTION_ANGLES), progress=progress)
    _require("project", rows, count=len(summary))
    print(f"project: {len(rows)} volume(s), 8 maximum intensity projections each -> {projections}")
    data = build_report(volumes, samples=4, seed=0, progress=progress)
    report = write_html(data, os.path.join(volumes, "report.html"))
    if data.problems:
        raise DemoStepError(f"demo: report could not draw {'; '.join(f'{k}: {p}' for k, p in data.problems)}")
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

