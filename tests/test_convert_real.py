"""`convert` on the real DICOM data in ../shared/data, against independent readers: pydicom
(``apply_modality_lut`` per slice, slices ordered here by ImagePositionPatient on the normal), SimpleITK's
``ImageSeriesReader`` and dcm2niix's NIfTI affine. Skipped when the shared data (or a tool) is absent."""
from __future__ import annotations

import itertools
import struct
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

import voxelpipe

from helpers import dcm2niix_executable, sha_key

ATOL_MM = 1e-4



def normal_of(ds) -> np.ndarray:
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    return normal / np.linalg.norm(normal)


def read_series(folder: Path, pixels: bool = True) -> list[pydicom.Dataset]:
    """Every file of a single-series folder, ordered by ImagePositionPatient projected on the normal."""
    datasets = [pydicom.dcmread(p, stop_before_pixels=not pixels) for p in sorted(folder.iterdir()) if p.is_file()]
    normal = normal_of(datasets[0])
    return sorted(datasets, key=lambda ds: float(np.asarray(ds.ImagePositionPatient, dtype=float) @ normal))


def series_folder(shared_data: Path, name: str) -> Path:
    folder = shared_data / name
    if not folder.is_dir():
        pytest.skip(f"{folder} not in the shared test data")
    return folder


@pytest.fixture(scope="module")
def ct_pet(shared_data, tmp_path_factory):
    """NSCLC CT and STS PET converted in one run with two worker processes."""
    ct = series_folder(shared_data, "nsclc-lung1-001/image")
    pet = series_folder(shared_data, "sts001-pet/image")
    out = tmp_path_factory.mktemp("ct_pet")
    rows = voxelpipe.convert([str(ct), str(pet)], out=str(out), workers=2, progress=False)
    volumes = {}
    for name, folder in (("ct", ct), ("pet", pet)):
        datasets = read_series(folder)
        key = sha_key(str(datasets[0].SeriesInstanceUID))
        (row,) = [r for r in rows if r["series_key"] == key]
        assert row["status"] == "done", row["reason"]
        assert row["verification"] == "ok 2/2"
        volumes[name] = (folder, datasets, voxelpipe.open_volume(row["path"]))
    assert len(rows) == 2
    return volumes


# ----------------------------------------------------------------------------------------------------------
# values against pydicom
# ----------------------------------------------------------------------------------------------------------
def test_ct_values_equal_modality_lut_exactly(ct_pet):
    _, datasets, volume = ct_pet["ct"]
    reference = np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in datasets])
    assert np.all(reference == np.round(reference)) and reference.min() >= -32768 and reference.max() <= 32767
    assert volume.shape == reference.shape == (134, 512, 512)
    assert volume.dtype == np.int16
    np.testing.assert_array_equal(volume.numpy(), reference)


def test_pet_values_equal_modality_lut_with_per_slice_slope(ct_pet):
    _, datasets, volume = ct_pet["pet"]
    slopes = {float(ds.RescaleSlope) for ds in datasets}
    assert len(slopes) > 100  # precondition: the slope really differs per slice
    reference = np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in datasets])
    assert volume.shape == reference.shape == (267, 128, 128)
    assert volume.dtype == np.float32
    np.testing.assert_allclose(volume.numpy(), reference.astype(np.float32), rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------------------------------------
# geometry against SimpleITK
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ct", "pet"])
def test_geometry_equals_simpleitk(ct_pet, name):
    sitk = pytest.importorskip("SimpleITK")
    folder, datasets, volume = ct_pet[name]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    reader.LoadPrivateTagsOff()
    image = reader.Execute()
    g = volume.geometry
    assert tuple(reversed(image.GetSize())) == volume.shape
    np.testing.assert_allclose(g.origin, image.GetOrigin(), atol=ATOL_MM)
    np.testing.assert_allclose(g.spacing[::-1], image.GetSpacing(), atol=ATOL_MM)  # ITK: (x, y, z)
    itk_direction = np.asarray(image.GetDirection()).reshape(3, 3)  # column j = direction of ITK index j
    np.testing.assert_allclose(g.direction[:, ::-1], itk_direction, atol=ATOL_MM)
    # ITK's voxel index -> physical point agrees with our affine at the far corner too
    far = [n - 1 for n in image.GetSize()]
    np.testing.assert_allclose(g.affine @ np.r_[far[::-1], 1.0], np.r_[image.TransformIndexToPhysicalPoint(far), 1.0],
                               atol=1e-3)
    # origin is the first slice's ImagePositionPatient (our own pydicom ordering)
    np.testing.assert_allclose(g.origin, np.asarray(datasets[0].ImagePositionPatient, dtype=float), atol=ATOL_MM)


# ----------------------------------------------------------------------------------------------------------
# affine against dcm2niix
# ----------------------------------------------------------------------------------------------------------


def read_nifti(path: Path) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray]:
    """(dims i, j, k), the 4x4 sform and the voxel data as [i, j, k] (scaled by scl_slope/inter)."""
    try:
        import nibabel
    except ImportError:
        nibabel = None
    if nibabel is not None:
        image = nibabel.load(str(path))
        assert int(image.header["sform_code"]) > 0
        return tuple(int(v) for v in image.shape[:3]), np.asarray(image.header.get_sform(), dtype=float), \
            np.asarray(image.dataobj)[..., 0] if image.ndim == 4 else np.asarray(image.dataobj)
    raw = path.read_bytes()
    assert struct.unpack("<i", raw[:4])[0] == 348, "not a little-endian NIfTI-1 file"
    dims = struct.unpack("<8h", raw[40:56])
    datatype = struct.unpack("<h", raw[70:72])[0]
    vox_offset = int(struct.unpack("<f", raw[108:112])[0])
    scl_slope, scl_inter = struct.unpack("<2f", raw[112:120])
    sform_code = struct.unpack("<h", raw[254:256])[0]
    assert sform_code > 0, "dcm2niix wrote no sform"
    sform = np.eye(4)
    for r, offset in enumerate((280, 296, 312)):
        sform[r] = struct.unpack("<4f", raw[offset:offset + 16])
    shape = tuple(dims[1:4])
    dtype = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64, 512: np.uint16}[datatype]
    count = int(np.prod(shape))
    data = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"), count=count, offset=vox_offset)
    data = data.reshape(shape[::-1]).transpose(2, 1, 0)  # NIfTI is stored with i fastest
    if scl_slope not in (0.0, 1.0) or scl_inter != 0.0:
        data = data * (scl_slope or 1.0) + scl_inter
    return shape, sform, data


def axis_mapping(ours: np.ndarray, shape: tuple[int, ...], theirs: np.ndarray, their_shape: tuple[int, ...],
                 atol: float) -> list[tuple[tuple[int, ...], tuple[bool, ...], np.ndarray]]:
    """Every permutation/flip M of our index axes with theirs_affine @ M == our affine (and matching sizes).

    Our axis a becomes their axis perm[a], reversed when flip[a]."""
    found = []
    for perm in itertools.permutations(range(3)):
        if any(their_shape[perm[a]] != shape[a] for a in range(3)):
            continue
        for flip in itertools.product((False, True), repeat=3):
            m = np.zeros((4, 4))
            m[3, 3] = 1.0
            for a in range(3):
                m[perm[a], a] = -1.0 if flip[a] else 1.0
                m[perm[a], 3] = shape[a] - 1 if flip[a] else 0.0
            if np.allclose(theirs @ m, ours, atol=atol):
                found.append((perm, flip, m))
    return found


def corners(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Physical positions of the 8 corner voxel centres of a grid."""
    points = np.array([[*c, 1.0] for c in itertools.product(*[(0, n - 1) for n in shape])])
    return (points @ affine.T)[:, :3]


def assert_same_point_sets(a: np.ndarray, b: np.ndarray, atol: float) -> None:
    distances = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    assert distances.min(axis=1).max() <= atol and distances.min(axis=0).max() <= atol, distances


@pytest.mark.parametrize("name", ["ct", "pet"])
def test_affine_equals_dcm2niix(ct_pet, name, tmp_path):
    exe = dcm2niix_executable()
    if exe is None:
        pytest.skip("dcm2niix executable not found (pip install dcm2niix)")
    folder, _, volume = ct_pet[name]
    result = subprocess.run([exe, "-z", "n", "-o", str(tmp_path), "-f", "out", str(folder)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    niftis = sorted(tmp_path.glob("*.nii"))
    assert [p.name for p in niftis] == ["out.nii"], result.stdout[-2000:]
    their_shape, sform, data = read_nifti(niftis[0])
    ours = np.asarray(volume.geometry.affine_ras)
    atol = 2e-3  # the sform is float32: ~1e-4 relative on positions of a few hundred mm
    mappings = axis_mapping(ours, volume.shape, sform, their_shape, atol)
    assert len(mappings) == 1, f"no pure permutation/flip maps our affine_ras\n{ours}\nto dcm2niix's\n{sform}"
    perm, flip, _ = mappings[0]
    # the 8 corner voxel centres are the same physical points, whichever way each tool indexes them
    # (0.01 mm: the float32 slice step of the sform, times a few hundred slices, drifts by a few µm)
    assert_same_point_sets(corners(ours, volume.shape), corners(sform, their_shape), atol=0.01)
    # and the voxel values agree under that mapping (dcm2niix applies the same rescale)
    ours_view = np.transpose(data, perm)  # axis a of the view = their axis perm[a]
    ours_view = ours_view[tuple(slice(None, None, -1) if f else slice(None) for f in flip)]
    if name == "ct":
        np.testing.assert_array_equal(volume.numpy(), ours_view)
    else:
        np.testing.assert_allclose(volume.numpy(), ours_view, rtol=1e-5, atol=1e-3)


# ----------------------------------------------------------------------------------------------------------
# enhanced multi-frame, cine MR
# ----------------------------------------------------------------------------------------------------------
def test_enhanced_multiframe_equals_single_frame_series(shared_data, tmp_path):
    base = series_folder(shared_data, "dcmqi-seg/segmentations/24x38x3")
    multiframe, single = base / "multiframe", base / "image"
    mf = pydicom.dcmread(multiframe / "mf.dcm")
    assert int(mf.NumberOfFrames) == 3
    datasets = read_series(single)
    rows = voxelpipe.convert([str(multiframe), str(single)], out=str(tmp_path / "out"), workers=1, progress=False)
    by_key = {r["series_key"]: r for r in rows}
    volumes = {}
    for name, uid in (("mf", mf.SeriesInstanceUID), ("single", datasets[0].SeriesInstanceUID)):
        row = by_key[sha_key(str(uid))]
        assert row["status"] == "done", row["reason"]
        volumes[name] = voxelpipe.open_volume(row["path"])
    reference = np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in datasets])
    np.testing.assert_array_equal(volumes["single"].numpy(), reference)
    np.testing.assert_array_equal(volumes["mf"].numpy(), reference)
    # the single-frame series geometry from pydicom
    row_spacing, col_spacing = (float(v) for v in datasets[0].PixelSpacing)
    single_g, mf_g = volumes["single"].geometry, volumes["mf"].geometry
    np.testing.assert_allclose(single_g.spacing[1:], [row_spacing, col_spacing], atol=ATOL_MM)
    np.testing.assert_allclose(single_g.origin, np.asarray(datasets[0].ImagePositionPatient, float), atol=ATOL_MM)
    for name in ("spacing", "origin", "direction", "affine", "slice_positions"):
        np.testing.assert_allclose(getattr(mf_g, name), getattr(single_g, name), atol=ATOL_MM, err_msg=name)


def test_cardiac_cine_mr_is_4d_by_phase(shared_data, tmp_path):
    folder = series_folder(shared_data, "cardiac-mri/dicoms/SCD0000101")
    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    normal = normal_of(datasets[0])
    positions = np.array([float(np.asarray(ds.ImagePositionPatient, dtype=float) @ normal) for ds in datasets])
    unique = np.unique(np.round(positions, 2))
    assert np.min(np.diff(unique)) > 1.0  # precondition: rounding does not split or merge positions
    n_positions = len(unique)
    rows = voxelpipe.convert([str(folder)], out=str(tmp_path / "out"), workers=1, progress=False)
    (row,) = rows
    assert row["status"] == "done", row["reason"]
    volume = voxelpipe.open_volume(row["path"])
    assert volume.shape == (20, n_positions, 256, 256)
    tag = volume.attrs["frame_tag"]
    assert tag and tag in pydicom.datadict.keyword_dict, tag
    # the named tag tells the 20 phases apart at every position
    at = {p: [ds for ds, q in zip(datasets, np.round(positions, 2)) if q == p] for p in unique}
    for p, members in at.items():
        values = [float(getattr(ds, tag)) for ds in members]
        assert len(set(values)) == len(values) == 20, (p, tag, values)
    # frames ordered by that tag, slices by position: every image lands where pydicom says
    array = volume.numpy()
    for z, p in enumerate(unique):
        for t, ds in enumerate(sorted(at[p], key=lambda d: float(getattr(d, tag)))):
            np.testing.assert_array_equal(array[t, z], apply_modality_lut(ds.pixel_array, ds),
                                          err_msg=f"frame {t} slice {z}")
    first = sorted(at[unique[0]], key=lambda d: float(getattr(d, tag)))[0]
    np.testing.assert_allclose(volume.geometry.origin, np.asarray(first.ImagePositionPatient, float), atol=ATOL_MM)
