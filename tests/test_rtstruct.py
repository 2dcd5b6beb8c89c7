"""RTSTRUCT contours to masks (voxelpipe.dicom.rtstruct).

References, never voxelpipe's own geometry code:

* synthetic series written with pydicom, RTSTRUCTs built here with pydicom: contour points are made from
  (row, column) polygons with the DICOM definition (C.7.6.2.1.1) applied to the ImagePositionPatient,
  ImageOrientationPatient and PixelSpacing read back from each written file; the expected mask of a slice is
  the XOR of ``skimage.draw.polygon2mask`` of those (row, column) polygons. The contours' ContourImageSequence
  deliberately points at the wrong image, so only the position along the normal can place them;
* NSCLC LUNG1-001 (shared data): rt-utils (Dice), and a slice-by-slice reference built here from the image
  headers with pydicom and polygon2mask.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

import voxelpipe
from voxelpipe.core.geometry import Geometry
from voxelpipe.dicom.rtstruct import (
    FrameOfReferenceMismatchError,
    NotRtstructError,
    RoiNotFoundError,
    assign_slices,
    parse_rtstruct,
    slice_windows,
)
from voxelpipe.dicom.rtstruct import read_rtstruct_masks as parse_rtstruct_masks
from voxelpipe.pipelines.masks import report_rows
from voxelpipe.testing.synthetic import ROOT_UID, SeriesSpec, object_dataset, referenced_frame_sequence, write_series

from helpers import resave

polygon2mask = pytest.importorskip("skimage.draw", reason="scikit-image is a test dependency").polygon2mask

RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


def read_rtstruct_masks(*args, volume: str = "", **kwargs):
    """The parser's masks, and the masks pipeline's report rows for its placed ROIs."""
    masks, placed = parse_rtstruct_masks(*args, **kwargs)
    return masks, report_rows(placed, volume)


# ----------------------------------------------------------------------------------------------------------
# building synthetic series and structure sets (pydicom only)
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Plane:
    """One written image as its header says: where it is and how its pixels map to LPS."""

    path: str
    uid: str
    ipp: np.ndarray
    row_cos: np.ndarray  # direction of increasing column index
    col_cos: np.ndarray  # direction of increasing row index
    spacing: tuple[float, float]  # PixelSpacing: (between rows, between columns)
    rows: int
    columns: int

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.row_cos, self.col_cos)
        return n / np.linalg.norm(n)

    @property
    def position(self) -> float:
        return float(self.ipp @ self.normal)

    def lps(self, rc: np.ndarray, offset_mm: float = 0.0) -> np.ndarray:
        """LPS of (row, column) pixel coordinates (DICOM C.7.6.2.1.1), moved ``offset_mm`` along the normal."""
        rc = np.asarray(rc, dtype=np.float64)
        return (self.ipp[None] + rc[:, 1:2] * self.spacing[1] * self.row_cos[None]
                + rc[:, 0:1] * self.spacing[0] * self.col_cos[None] + offset_mm * self.normal[None])


def read_planes(paths: list[str]) -> list[Plane]:
    """The images' planes in ascending position along their normal."""
    planes = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        planes.append(Plane(path, str(ds.SOPInstanceUID), np.array([float(v) for v in ds.ImagePositionPatient]),
                            iop[:3], iop[3:], tuple(float(v) for v in ds.PixelSpacing), int(ds.Rows),
                            int(ds.Columns)))
    return sorted(planes, key=lambda p: p.position)


def regular(centre, radius, n, phase=0.3) -> np.ndarray:
    """(row, column) vertices of a regular n-gon (fractional coordinates)."""
    angles = phase + 2 * np.pi * np.arange(n) / n
    return np.column_stack([centre[0] + radius * np.sin(angles), centre[1] + radius * np.cos(angles)])


def xor_masks(shape, polygons) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    for polygon in polygons:
        out ^= polygon2mask(shape, polygon)
    return out


@dataclass
class RoiSpec:
    name: str
    number: int
    contours: list[tuple[str, np.ndarray]] | None  # (ContourGeometricType, (K, 3) LPS points); None: no sequence
    color: tuple[int, int, int] = (255, 0, 0)
    frame_uid: str | None = None  # default: the structure set's


def write_rtstruct(path: str | Path, planes: list[Plane], rois: list[RoiSpec], *, frame_uid: str | None = None,
                   implicit: bool = False, label: str = "synthetic") -> str:
    """An RT Structure Set referencing the series of ``planes``; every contour's ContourImageSequence points at
    the first image (wrong on purpose: voxelpipe must place contours by position)."""
    ref = pydicom.dcmread(planes[0].path, stop_before_pixels=True)
    frame_uid = frame_uid or str(ref.FrameOfReferenceUID)
    ds = object_dataset(RTSTRUCT_CLASS, "RTSTRUCT",
                        transfer_syntax=ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)
    ds.PatientID = ref.PatientID
    ds.StudyInstanceUID = ref.StudyInstanceUID
    ds.SeriesInstanceUID = generate_uid(ROOT_UID)
    ds.SeriesNumber = 99
    ds.StructureSetLabel = label
    image = Dataset()
    image.ReferencedSOPClassUID = ref.SOPClassUID
    image.ReferencedSOPInstanceUID = planes[0].uid
    ds.ReferencedFrameOfReferenceSequence = referenced_frame_sequence(frame_uid, ref.StudyInstanceUID,
                                                                      ref.SeriesInstanceUID, [image])
    ds.StructureSetROISequence = DicomSequence()
    ds.ROIContourSequence = DicomSequence()
    ds.RTROIObservationsSequence = DicomSequence()
    for roi in rois:
        item = Dataset()
        item.ROINumber = roi.number
        item.ReferencedFrameOfReferenceUID = roi.frame_uid or frame_uid
        item.ROIName = roi.name
        item.ROIGenerationAlgorithm = "MANUAL"
        ds.StructureSetROISequence.append(item)
        contour_item = Dataset()
        contour_item.ROIDisplayColor = list(roi.color)
        contour_item.ReferencedROINumber = roi.number
        if roi.contours is not None:
            contour_item.ContourSequence = DicomSequence()
            for kind, points in roi.contours:
                contour = Dataset()
                contour.ContourImageSequence = DicomSequence([image])
                contour.ContourGeometricType = kind
                contour.NumberOfContourPoints = len(points)
                contour.ContourData = [f"{v:.6f}" for v in np.asarray(points).ravel()]
                contour_item.ContourSequence.append(contour)
        ds.ROIContourSequence.append(contour_item)
        observation = Dataset()
        observation.ObservationNumber = roi.number
        observation.ReferencedROINumber = roi.number
        observation.RTROIInterpretedType = "ORGAN"
        ds.RTROIObservationsSequence.append(observation)
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


def rounded(points: np.ndarray) -> np.ndarray:
    """The points as they are stored (ContourData written with 6 decimals)."""
    return np.array([float(f"{v:.6f}") for v in np.asarray(points).ravel()]).reshape(-1, 3)


@dataclass
class Case:
    name: str
    folder: Path
    paths: list[str]
    planes: list[Plane]
    shape: tuple[int, int, int]
    rtstruct: str = ""
    expected: dict[str, np.ndarray] = field(default_factory=dict)  # ROI name -> expected mask
    extra: dict = field(default_factory=dict)

    def empty(self) -> np.ndarray:
        return np.zeros(self.shape, dtype=bool)


def _even_case(root: Path) -> Case:
    """Axial, even spacing, row and column spacing different: holes, islands, report cases."""
    spec = SeriesSpec(n_slices=10, rows=40, columns=48, spacing=(2.5, 0.8, 0.6), origin=(-14.0, -16.0, -20.0),
                      seed=41)
    folder = root / "study" / "even"
    paths = write_series(folder, spec)
    planes = read_planes(paths)
    shape = (len(planes), spec.rows, spec.columns)
    case = Case("even", folder, paths, planes, shape)
    image = shape[1:]

    outer, inner = regular((19.3, 23.6), 14.2, 9), regular((19.1, 23.2), 6.3, 7)
    island = regular((19.1, 23.2), 2.6, 5, phase=0.1)
    pair = [regular((10.2, 12.4), 5.5, 6), regular((28.7, 35.1), 6.1, 8, phase=0.7)]
    ring = case.empty()
    ring[3] = xor_masks(image, [outer, inner])
    ring[4] = xor_masks(image, [outer, inner, island])
    ring[5] = xor_masks(image, pair)
    ring_contours = ([("CLOSED_PLANAR", planes[3].lps(p)) for p in (outer, inner)]
                     + [("CLOSED_PLANAR", planes[4].lps(p)) for p in (outer, inner, island)]
                     + [("CLOSED_PLANAR", planes[5].lps(p)) for p in pair])

    triangle = np.array([[5.2, 5.7], [15.4, 8.1], [9.3, 20.6]])
    open_line = np.array([[30.0, 3.3], [33.1, 12.2], [36.4, 4.8]])
    gtv = case.empty()
    gtv[6] = polygon2mask(image, triangle)

    on_slice = regular((20.0, 24.0), 8.4, 10)
    off = case.empty()
    off[2] = polygon2mask(image, on_slice)
    off_position = planes[-1].position + 2 * spec.spacing[0]

    warped_rc = regular((20.0, 20.0), 7.0, 8)
    warped = planes[7].lps(warped_rc)
    warped[::2] += 3.0 * planes[7].normal  # every other point 3 mm off the plane: not planar

    other = regular((12.0, 30.0), 4.4, 6)
    gtv_slash = case.empty()
    gtv_slash[8] = polygon2mask(image, other)

    rois = [
        RoiSpec("Ring", 1, ring_contours, (0, 255, 0)),
        RoiSpec("GTV 1", 2, [("CLOSED_PLANAR", planes[6].lps(triangle)), ("OPEN_PLANAR", planes[6].lps(open_line))]),
        RoiSpec("Off", 3, [("CLOSED_PLANAR", planes[2].lps(on_slice)),
                           ("CLOSED_PLANAR", planes[-1].lps(on_slice, 2 * spec.spacing[0]))]),
        RoiSpec("Marker", 4, [("POINT", planes[5].lps(np.array([[20.0, 20.0]])))]),
        RoiSpec("Empty", 5, None),
        RoiSpec("Warped", 6, [("CLOSED_PLANAR", warped)]),
        RoiSpec("GTV/1", 7, [("CLOSED_PLANAR", planes[8].lps(other))]),
    ]
    case.rtstruct = write_rtstruct(folder / "rtstruct_even.dcm", planes, rois)
    case.expected = {"Ring": ring, "GTV 1": gtv, "Off": off, "Empty": case.empty(), "Warped": case.empty(),
                     "GTV/1": gtv_slash}
    case.extra = {"off_position": off_position, "rois": rois, "spec": spec}
    return case


def _uneven_case(root: Path) -> Case:
    """Axial, slices 4 and 7 left out: positions 0 2 4 6 10 12 16 18 mm (+ origin); local steps matter."""
    spec = SeriesSpec(n_slices=10, rows=32, columns=36, spacing=(2.0, 0.7, 0.9), origin=(-12.0, -11.0, 5.0),
                      seed=42)
    folder = root / "study" / "uneven"
    paths = write_series(folder, spec, skip=[4, 7])
    planes = read_planes(paths)
    shape = (len(planes), spec.rows, spec.columns)
    case = Case("uneven", folder, paths, planes, shape)
    image = shape[1:]
    a, b = regular((15.5, 17.2), 9.3, 11), regular((16.1, 18.4), 7.7, 9)
    near = regular((12.2, 14.9), 6.4, 7)
    blob = case.empty()
    blob[4] = polygon2mask(image, a)  # volume slice 4 = written slice 5
    blob[6] = polygon2mask(image, b)  # volume slice 6 = written slice 8
    # 1.8 mm above volume slice 3 (position 6 mm): its next neighbour is 4 mm away, so its window reaches 2 mm up
    # (a mean-step window of +-1.29 mm would miss it)
    blob[3] = polygon2mask(image, near)
    rois = [RoiSpec("Blob", 1, [("CLOSED_PLANAR", planes[4].lps(a)), ("CLOSED_PLANAR", planes[6].lps(b)),
                                ("CLOSED_PLANAR", planes[3].lps(near, 1.8))]),
            # beyond the last slice by 1.2 mm: its window reaches 1 mm (half its one neighbouring step)
            RoiSpec("Beyond", 2, [("CLOSED_PLANAR", planes[-1].lps(a, 1.2))])]
    case.rtstruct = write_rtstruct(folder / "rtstruct_uneven.dcm", planes, rois)
    case.expected = {"Blob": blob, "Beyond": case.empty()}
    positions = np.array([p.position for p in planes])
    case.extra = {"positions": positions, "spec": spec}
    return case


def rotation(axis, degrees) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    t = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def _oblique_case(root: Path) -> Case:
    """Oblique slices (rotated 25 deg about (1, 2, 3)), slice 3 left out (uneven along the normal)."""
    spec = SeriesSpec(n_slices=8, rows=36, columns=36, spacing=(3.0, 0.75, 0.75), seed=43)
    folder = root / "oblique"
    skip = [3]
    paths = write_series(folder, spec, skip=skip)
    r = rotation((1, 2, 3), 25)
    row_cos, col_cos, normal = r[:, 0], r[:, 1], r[:, 2]
    base = np.array([-10.0, -12.0, 30.0])
    written = [i for i in range(spec.n_slices) if i not in skip]
    for path, index in zip(paths, written):
        def edit(ds, index=index):
            ds.ImageOrientationPatient = [f"{v:.10f}" for v in np.concatenate([row_cos, col_cos])]
            ds.ImagePositionPatient = [f"{v:.6f}" for v in base + index * spec.spacing[0] * normal]
        resave(path, edit)
    planes = read_planes(paths)
    shape = (len(planes), spec.rows, spec.columns)
    case = Case("oblique", folder, paths, planes, shape)
    image = shape[1:]
    outer, inner = regular((17.3, 18.2), 11.6, 10), regular((17.0, 18.9), 4.4, 6)
    square = np.array([[5.5, 6.5], [5.5, 20.5], [14.5, 20.5], [14.5, 6.5]])
    ring = case.empty()
    ring[2] = xor_masks(image, [outer, inner])
    ring[3] = polygon2mask(image, square)  # volume slice 3 = written slice 4
    rois = [RoiSpec("Ring", 1, [("CLOSED_PLANAR", planes[2].lps(p)) for p in (outer, inner)]
                    + [("CLOSED_PLANAR", planes[3].lps(square))])]
    case.rtstruct = write_rtstruct(folder / "rtstruct_oblique.dcm", planes, rois)
    case.expected = {"Ring": ring}
    # a second structure set for reruns: the same ROI name, another shape
    moved = regular((20.0, 16.0), 8.2, 7)
    ring_b = case.empty()
    ring_b[5] = polygon2mask(image, moved)
    case.extra = {"rtstruct_b": write_rtstruct(folder.parent / "rtstruct_oblique_b.dcm", planes,
                                               [RoiSpec("Ring", 1, [("CLOSED_PLANAR", planes[5].lps(moved))])]),
                  "expected_b": {"Ring": ring_b}}
    return case


def build_cases(root: Path) -> dict[str, Case]:
    """Every synthetic case (series + RTSTRUCT), plus the structure sets the manifest test needs."""
    cases = {"even": _even_case(root), "uneven": _uneven_case(root), "oblique": _oblique_case(root)}
    even = cases["even"]
    # in the study folder for the manifest form: another frame of reference, and a series nobody converted
    even.extra["rtstruct_other_frame"] = write_rtstruct(
        root / "study" / "rtstruct_other_frame.dcm", even.planes,
        [RoiSpec("Ring", 1, even.extra["rois"][0].contours)], frame_uid=generate_uid(ROOT_UID))
    orphan = read_planes(write_series(root / "orphan_series", SeriesSpec(n_slices=3, rows=8, columns=8, seed=44)))
    even.extra["rtstruct_orphan"] = write_rtstruct(
        root / "study" / "rtstruct_orphan.dcm", orphan,
        [RoiSpec("Lost", 1, [("CLOSED_PLANAR", orphan[1].lps(regular((4, 4), 2.5, 5)))])])
    return cases


def convert_case(case: Case, out: Path, store: str = "dir") -> str:
    """Convert the case's folder (its one series; the structure set in it is an object); returns the volume.
    Uneven and tilted slices are kept as acquired (the placement rules under test work on the kept grid)."""
    summary = voxelpipe.convert([str(case.folder)], out=str(out), store=store, workers=1, progress=False,
                                uneven="keep", tilt="keep")
    rows = [r for r in summary if r["status"] == "done"]
    assert len(rows) == 1, summary
    return rows[0]["path"]


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, Case]:
    root = tmp_path_factory.mktemp("rtstruct_cases")
    built = build_cases(root)
    for case in built.values():
        case.extra["volume"] = convert_case(case, root / "done" / case.name)
    return built


def open_geometry(path: str) -> tuple[Geometry, dict]:
    volume = voxelpipe.open_volume(path)
    return volume.geometry, volume.attrs


def by_name(masks) -> dict:
    return {m.attrs["roi_name"]: m for m in masks}


def rows_by_name(rows) -> dict:
    return {r["roi_name"]: r for r in rows}


# ----------------------------------------------------------------------------------------------------------
# synthetic
# ----------------------------------------------------------------------------------------------------------
def test_ring_holes_islands_and_disjoint_parts_match_polygon2mask(cases):
    case = cases["even"]
    geometry, attrs = open_geometry(case.extra["volume"])
    masks, rows = read_rtstruct_masks(case.rtstruct, geometry, frame_of_reference_uid=attrs["frame_of_reference_uid"])
    found = by_name(masks)
    for name in ("Ring", "GTV 1", "Off", "GTV/1"):
        assert found[name].array.dtype == np.uint8
        np.testing.assert_array_equal(found[name].array.astype(bool), case.expected[name], err_msg=name)
    ring = found["Ring"]
    # the hole is empty on slice 3, and slice 4 is slice 3 plus the island inside that hole
    island = polygon2mask(case.shape[1:], regular((19.1, 23.2), 2.6, 5, phase=0.1))
    hole = polygon2mask(case.shape[1:], regular((19.1, 23.2), 6.3, 7))
    assert island.sum() > 5 and not np.any(ring.array[3][hole]) and np.all(hole[island])
    np.testing.assert_array_equal(ring.array[4].astype(bool), ring.array[3].astype(bool) | island)
    assert ring.attrs["color"] == [0, 255, 0] and ring.attrs["roi_number"] == 1
    assert ring.attrs["source_kind"] == "RTSTRUCT"
    assert ring.attrs["source_sop_instance_uid"] == pydicom.dcmread(case.rtstruct).SOPInstanceUID
    assert ring.attrs["voxels"] == int(case.expected["Ring"].sum())
    spacing = case.extra["spec"].spacing
    assert ring.attrs["volume_ml"] == pytest.approx(case.expected["Ring"].sum() * np.prod(spacing) / 1000, rel=1e-9)
    assert ring.attrs["contours"] == 7 and ring.attrs["contours_unmatched"] == 0


def test_report_rows_say_what_happened_to_every_roi(cases):
    case = cases["even"]
    geometry, attrs = open_geometry(case.extra["volume"])
    masks, rows = read_rtstruct_masks(case.rtstruct, geometry, frame_of_reference_uid=attrs["frame_of_reference_uid"])
    report = rows_by_name(rows)
    assert [r["roi_name"] for r in rows] == ["Ring", "GTV 1", "Off", "Marker", "Empty", "Warped", "GTV/1"]
    assert report["Ring"]["status"] == "done" and report["Ring"]["note"] == ""
    # open contour skipped with a note, the closed one filled
    assert report["GTV 1"]["status"] == "done" and report["GTV 1"]["contours_skipped"] == 1
    assert "OPEN_PLANAR" in report["GTV 1"]["note"]
    # the contour off every slice: counted, its position in the note
    off = report["Off"]
    assert off["status"] == "done" and off["contours"] == 2 and off["contours_unmatched"] == 1
    assert f"{case.extra['off_position']:.2f}" in off["note"] and "off every slice" in off["note"]
    # a POINT-only ROI has no area: skipped, no mask
    assert report["Marker"]["status"] == "skipped" and "POINT" in report["Marker"]["note"]
    assert "Marker" not in by_name(masks)
    # no contours: an empty mask is written and reported
    assert report["Empty"]["status"] == "done" and "no contours" in report["Empty"]["note"]
    assert by_name(masks)["Empty"].array.sum() == 0
    # non-planar CLOSED_PLANAR: skipped and noted
    assert report["Warped"]["status"] == "done" and report["Warped"]["contours_skipped"] == 1
    assert "not in a slice plane" in report["Warped"]["note"] and "not planar" in report["Warped"]["note"]
    # store-safe, distinct mask names
    assert report["GTV 1"]["mask_name"] == "GTV_1" and report["GTV/1"]["mask_name"] == "GTV_1_2"
    assert set(rows[0]) == {"volume", "source", "source_kind", "roi_name", "mask_name", "roi_number", "status",
                            "voxels", "volume_ml", "contours", "contours_unmatched", "contours_skipped", "note"}


def test_uneven_spacing_uses_the_local_step(cases):
    case = cases["uneven"]
    geometry, attrs = open_geometry(case.extra["volume"])
    np.testing.assert_allclose(geometry.slice_positions, case.extra["positions"], atol=1e-6)
    masks, rows = read_rtstruct_masks(case.rtstruct, geometry)
    found, report = by_name(masks), rows_by_name(rows)
    np.testing.assert_array_equal(found["Blob"].array.astype(bool), case.expected["Blob"])
    assert report["Blob"]["contours_unmatched"] == 0
    assert report["Beyond"]["status"] == "done" and report["Beyond"]["contours_unmatched"] == 1
    # volume: every slice stands for the width of its window (midpoint to midpoint)
    p = case.extra["positions"]
    mid = (p[1:] + p[:-1]) / 2
    width = np.diff(np.concatenate(([p[0] - (p[1] - p[0]) / 2], mid, [p[-1] + (p[-1] - p[-2]) / 2])))
    spec = case.extra["spec"]
    expected_ml = float(case.expected["Blob"].sum(axis=(1, 2)) @ width) * spec.spacing[1] * spec.spacing[2] / 1000
    assert report["Blob"]["volume_ml"] == pytest.approx(expected_ml, rel=1e-6)


def test_oblique_slices_with_a_missing_slice(cases):
    case = cases["oblique"]
    geometry, attrs = open_geometry(case.extra["volume"])
    masks, rows = read_rtstruct_masks(case.rtstruct, geometry, frame_of_reference_uid=attrs["frame_of_reference_uid"])
    np.testing.assert_array_equal(by_name(masks)["Ring"].array.astype(bool), case.expected["Ring"])
    assert rows[0]["contours_unmatched"] == 0 and rows[0]["contours_skipped"] == 0


def test_gantry_tilt(tmp_path):
    """Tilted slices: the affine's slice axis is sheared; every slice's own origin must be used in-plane."""
    spec = SeriesSpec(n_slices=6, rows=24, columns=28, spacing=(2.5, 0.9, 0.8), tilt_deg=15.0, seed=45)
    case = Case("tilt", tmp_path / "tilt", [], [], (6, 24, 28))
    case.paths = write_series(case.folder, spec)
    case.planes = read_planes(case.paths)
    polygons = {1: regular((11.2, 13.3), 7.6, 9), 4: regular((12.6, 14.1), 5.2, 6)}
    path = write_rtstruct(tmp_path / "rt.dcm", case.planes,
                          [RoiSpec("T", 1, [("CLOSED_PLANAR", case.planes[k].lps(p)) for k, p in polygons.items()])])
    volume = convert_case(case, tmp_path / "out")
    geometry, attrs = open_geometry(volume)
    masks, rows = read_rtstruct_masks(path, geometry, frame_of_reference_uid=attrs["frame_of_reference_uid"])
    expected = case.empty()
    for k, polygon in polygons.items():
        expected[k] = polygon2mask(case.shape[1:], polygon)
    np.testing.assert_array_equal(masks[0].array.astype(bool), expected)


def test_contours_from_several_planes_on_one_slice_use_the_nearest(cases, tmp_path):
    """Contours drawn on a finer grid than the volume's: two planes fall in one slice's window; filling both
    would cancel their overlap (even-odd), so only the plane nearest to the slice is used."""
    case = cases["even"]
    near, far = regular((20.0, 24.0), 9.0, 10), regular((21.0, 25.0), 8.0, 7)
    path = write_rtstruct(tmp_path / "planes.dcm", case.planes, [RoiSpec("P", 1, [
        ("CLOSED_PLANAR", case.planes[3].lps(near, 0.5)), ("CLOSED_PLANAR", case.planes[3].lps(far, -0.9))])])
    geometry, _ = open_geometry(case.extra["volume"])
    masks, rows = read_rtstruct_masks(path, geometry)
    expected = case.empty()
    expected[3] = polygon2mask(case.shape[1:], near)
    np.testing.assert_array_equal(masks[0].array.astype(bool), expected)
    assert rows[0]["contours_skipped"] == 1 and "nearest plane" in rows[0]["note"]
    assert "not exactly in one plane" not in rows[0]["note"]


def test_implicit_vr_file_reads_the_same_points(cases, tmp_path):
    case = cases["even"]
    implicit = write_rtstruct(tmp_path / "implicit.dcm", case.planes, case.extra["rois"], implicit=True)
    a, b = parse_rtstruct(case.rtstruct), parse_rtstruct(implicit)
    for ra, rb, spec in zip(a.rois, b.rois, case.extra["rois"]):
        np.testing.assert_array_equal(ra.points, rb.points)
        if spec.contours:
            np.testing.assert_array_equal(ra.points, np.concatenate([rounded(p) for _, p in spec.contours]))
            assert ra.types == [k for k, _ in spec.contours]


def test_roi_selection_and_missing_names(cases):
    case = cases["even"]
    geometry, _ = open_geometry(case.extra["volume"])
    masks, rows = read_rtstruct_masks(case.rtstruct, geometry, rois=["ring", "7"])
    assert [m.attrs["roi_name"] for m in masks] == ["Ring", "GTV/1"]
    assert sum(r["status"] == "skipped" and r["note"] == "not among the requested ROIs" for r in rows) == 5
    with pytest.raises(RoiNotFoundError) as info:
        read_rtstruct_masks(case.rtstruct, geometry, rois=["Ring", "Liver"])
    message = str(info.value)
    assert case.rtstruct in message and "'Liver'" in message and "'GTV 1'" in message and "(3006,0026)" in message


def test_frame_of_reference_mismatch_and_not_an_rtstruct(cases):
    case = cases["even"]
    geometry, attrs = open_geometry(case.extra["volume"])
    with pytest.raises(FrameOfReferenceMismatchError) as info:
        read_rtstruct_masks(case.extra["rtstruct_other_frame"], geometry,
                            frame_of_reference_uid=attrs["frame_of_reference_uid"])
    assert attrs["frame_of_reference_uid"] in str(info.value) and "(3006,0010)" in str(info.value)
    with pytest.raises(NotRtstructError) as info:
        read_rtstruct_masks(case.paths[0], geometry)
    assert case.paths[0] in str(info.value) and "SOPClassUID" in str(info.value)
    assert isinstance(info.value, voxelpipe.VoxelpipeError)


def test_a_bad_contour_is_skipped_with_its_reason(cases, tmp_path):
    case = cases["even"]
    path = write_rtstruct(tmp_path / "bad.dcm", case.planes, [case.extra["rois"][1]])

    def cut(ds):  # the triangle loses one value: 8 numbers, not a multiple of 3
        contour = ds.ROIContourSequence[0].ContourSequence[0]
        contour.ContourData = contour.ContourData[:8]
    resave(path, cut)
    geometry, _ = open_geometry(case.extra["volume"])
    masks, rows = read_rtstruct_masks(path, geometry)
    assert rows[0]["contours_skipped"] == 2 and "not a multiple of 3" in rows[0]["note"]
    assert rows[0]["status"] == "skipped"  # its only remaining contour is open: nothing to fill

    # a value that is not a number: that contour only is skipped, the other ROI is untouched
    path = write_rtstruct(tmp_path / "text.dcm", case.planes, [case.extra["rois"][1], case.extra["rois"][6]])
    data = Path(path).read_bytes()
    value = f"{rounded(case.extra['rois'][1].contours[0][1])[1, 0]:.6f}".encode()
    assert data.count(value) == 1
    Path(path).write_bytes(data.replace(value, value[:-2] + b"x1"))
    masks, rows = read_rtstruct_masks(path, geometry)
    assert rows[0]["contours_skipped"] == 2 and "is not a list of numbers" in rows[0]["note"]
    np.testing.assert_array_equal(by_name(masks)["GTV/1"].array.astype(bool), case.expected["GTV/1"])


def test_slice_windows_and_assignment_rule():
    geometry = Geometry((4, 2, 2), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), slice_positions=[0.0, 2.0, 6.0, 7.0])
    lower, upper = slice_windows(geometry)
    np.testing.assert_allclose(lower, [-1.0, 1.0, 4.0, 6.5])
    np.testing.assert_allclose(upper, [1.0, 4.0, 6.5, 7.5])
    positions = np.array([-1.0, -1.01, 1.0, 3.9, 4.0, 4.01, 6.5, 7.5, 7.51])
    np.testing.assert_array_equal(assign_slices(positions, positions, geometry), [0, -1, 0, 1, 1, 2, 2, 3, -1])
    # a contour whose points straddle two windows is on no slice
    np.testing.assert_array_equal(assign_slices(np.array([0.5]), np.array([1.5]), geometry), [-1])


# ----------------------------------------------------------------------------------------------------------
# NSCLC LUNG1-001: rt-utils and a pydicom reference
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nsclc(shared_data, tmp_path_factory):
    folder = shared_data / "nsclc-lung1-001"
    out = tmp_path_factory.mktemp("nsclc")
    summary = voxelpipe.convert([str(folder / "image")], out=str(out), workers=1, progress=False)
    assert summary[0]["status"] == "done"
    rtstruct = str(folder / "mask_rtstruct" / "1-1.dcm")
    volume = voxelpipe.open_volume(summary[0]["path"])
    masks, rows = read_rtstruct_masks(rtstruct, volume.geometry,
                                      frame_of_reference_uid=volume.attrs["frame_of_reference_uid"])
    with open(out / "meta" / f"{summary[0]['series_key']}.slices.csv", newline="") as fh:
        slice_uids = [r["sop_instance_uid"] for r in csv.DictReader(fh)]
    return {"folder": folder, "rtstruct": rtstruct, "volume": volume, "masks": by_name(masks),
            "rows": rows_by_name(rows), "slice_uids": slice_uids}


def test_nsclc_volumes_are_plausible(nsclc):
    rows = nsclc["rows"]
    print("\nNSCLC LUNG1-001 ROI volumes (voxelpipe):")
    for name, row in rows.items():
        print(f"  {name:<12} {row['voxels']:>8} voxels {row['volume_ml']:>9.1f} mL  {row['contours']} contours")
    assert set(rows) == {"GTV-1", "Spinal-Cord", "Lung-Left", "Lung-Right"}
    assert all(r["status"] == "done" and r["contours_unmatched"] == 0 and r["contours_skipped"] == 0
               for r in rows.values())
    assert 1000 < rows["Lung-Left"]["volume_ml"] < 4000 and 1000 < rows["Lung-Right"]["volume_ml"] < 4500
    assert 10 < rows["GTV-1"]["volume_ml"] < 500
    assert 10 < rows["Spinal-Cord"]["volume_ml"] < 100


def nsclc_reference_polygons(nsclc) -> dict[str, dict[int, list[np.ndarray]]]:
    """ROI name -> slice -> (row, column) polygons: every contour placed on the image whose plane it lies in and
    mapped with that image's own IPP, IOP and PixelSpacing (read with pydicom)."""
    if "polygons" in nsclc:
        return nsclc["polygons"]
    planes = read_planes([str(p) for p in sorted((nsclc["folder"] / "image").iterdir())])
    assert [p.uid for p in planes] == nsclc["slice_uids"]
    positions = np.array([p.position for p in planes])
    step = float(np.median(np.diff(positions)))
    ds = pydicom.dcmread(nsclc["rtstruct"])
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    result: dict[str, dict[int, list[np.ndarray]]] = {}
    for item in ds.ROIContourSequence:
        per_slice = result.setdefault(names[int(item.ReferencedROINumber)], {})
        for contour in item.ContourSequence:
            points = np.array(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            z = float(np.mean(points @ planes[0].normal))
            k = int(np.argmin(np.abs(positions - z)))
            assert abs(positions[k] - z) < step / 2
            plane = planes[k]
            d = points - plane.ipp
            rc = np.column_stack([d @ plane.col_cos / plane.spacing[0], d @ plane.row_cos / plane.spacing[1]])
            per_slice.setdefault(k, []).append(rc)
    nsclc["polygons"] = result
    return result


def distance_to_outline(pixels: np.ndarray, polygons: list[np.ndarray]) -> np.ndarray:
    """Distance (pixels) from every (row, column) in ``pixels`` to the nearest edge of ``polygons``."""
    starts = np.concatenate([p for p in polygons])
    ends = np.concatenate([np.roll(p, -1, axis=0) for p in polygons])
    edge = ends - starts
    length2 = np.maximum((edge ** 2).sum(axis=1), 1e-12)
    rel = pixels[:, None, :] - starts[None]
    t = np.clip((rel * edge[None]).sum(axis=2) / length2[None], 0, 1)
    nearest = starts[None] + t[..., None] * edge[None]
    return np.sqrt(((pixels[:, None, :] - nearest) ** 2).sum(axis=2)).min(axis=1)


def test_nsclc_matches_rt_utils(nsclc):
    """rt-utils (OpenCV fillPoly on rounded vertices) also sets every pixel the outline passes through, so its
    masks are about one pixel wider all round; the Dice gap is that band, largest relative to the area for the
    thin spinal cord. Every voxel where the two disagree must lie on the outline (within 1.5 pixels of an edge:
    vertex rounding <= 0.71 plus a pixel the line touches <= 0.71)."""
    rt_utils = pytest.importorskip("rt_utils", reason="rt-utils is a test dependency")
    builder = rt_utils.RTStructBuilder.create_from(str(nsclc["folder"] / "image"), nsclc["rtstruct"])
    # rt-utils orders its slices by position too; check it by instance UID instead of assuming it
    their_uids = [ds.SOPInstanceUID for ds in builder.series_data]
    assert their_uids == nsclc["slice_uids"]
    polygons = nsclc_reference_polygons(nsclc)
    print("\nDice against rt-utils:")
    for name, mask in nsclc["masks"].items():
        theirs = np.moveaxis(builder.get_roi_mask_by_name(name), 2, 0)  # (rows, cols, slices) -> (slices, ...)
        ours = mask.array.astype(bool)
        assert theirs.shape == ours.shape
        dice = 2 * np.sum(ours & theirs) / (ours.sum() + theirs.sum())
        only_ours, only_theirs = int(np.sum(ours & ~theirs)), int(np.sum(theirs & ~ours))
        print(f"  {name:<12} Dice {dice:.4f}  only voxelpipe {only_ours}  only rt-utils {only_theirs}")
        farthest = 0.0
        for k in np.unique(np.nonzero(ours != theirs)[0]):
            pixels = np.argwhere(ours[k] != theirs[k]).astype(np.float64)
            assert k in polygons[name], (name, k)
            farthest = max(farthest, float(distance_to_outline(pixels, polygons[name][k]).max()))
        assert farthest <= 1.5, (name, farthest)
        assert only_ours <= 0.001 * ours.sum(), name
        assert dice >= (0.93 if name == "Spinal-Cord" else 0.98), (name, dice)


def test_nsclc_matches_a_pydicom_polygon2mask_reference(nsclc):
    """The reference polygons filled with polygon2mask, XOR per slice: the pixel-centre rule, exactly."""
    shape = nsclc["volume"].shape
    for name, per_slice in nsclc_reference_polygons(nsclc).items():
        expected = np.zeros(shape, dtype=bool)
        for k, polygons in per_slice.items():
            expected[k] = xor_masks(shape[1:], polygons)
        ours = nsclc["masks"][name].array.astype(bool)
        differ = int(np.sum(ours != expected))
        print(f"\n  {name}: {differ} voxel(s) differ from the pydicom/polygon2mask reference of {expected.sum()}")
        assert differ == 0, name
