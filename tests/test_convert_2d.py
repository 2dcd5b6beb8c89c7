"""2-D mode: every compressed (and uncompressed) image file bundled with pydicom and pydicom-data converts to
exactly pydicom's own decode (``pixel_array``, then ``apply_modality_lut`` for grey images)."""
from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

import voxelpipe
from voxelpipe.core.keys import series_key
from voxelpipe.stores.volumes import open_volume

DEFLATED = "1.2.840.10008.1.2.1.99"


def _reference(path: str):
    """pydicom's decode of a file, or None when pydicom cannot decode it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array
    except Exception:
        return None
    if "SeriesInstanceUID" not in ds or ds.get("Modality") in ("RTDOSE", "SEG"):
        return None  # not an image series: scan lists it as unusable (no series) or as an object
    if "PerFrameFunctionalGroupsSequence" in ds or "ImagePositionPatient" in ds and ds.get("NumberOfFrames", 1) > 1:
        return None  # per-frame rescale: apply_modality_lut reads only top-level values
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        pixels = pixels[None]
    if int(ds.get("SamplesPerPixel", 1)) == 1:
        pixels = apply_modality_lut(pixels, ds) if "ModalityLUTSequence" not in ds else None
    return ds, pixels


def _is_compressed(path: str) -> bool:
    """True for a file whose transfer syntax is compressed (JPEG, JPEG-LS, JPEG 2000, RLE) or deflated."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        syntax = meta.TransferSyntaxUID
        return syntax == DEFLATED or syntax.is_compressed
    except Exception:
        return False


def _local_test_files() -> list[str]:
    """pydicom's bundled test files and pydicom-data's, from disk (no download)."""
    import pydicom.data

    folders = [os.path.join(os.path.dirname(pydicom.data.__file__), "test_files")]
    try:
        import pydicom_data

        folders.append(os.path.dirname(pydicom_data.__file__))
    except ImportError:
        pass
    return sorted(os.path.join(d, f) for folder in folders for d, _, names in os.walk(folder) for f in names)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    files = [f for f in _local_test_files() if _is_compressed(f)]
    references = {}
    source = tmp_path_factory.mktemp("pydicom_files")
    for index, path in enumerate(sorted(files)):
        reference = _reference(path)
        if reference is None or reference[1] is None:
            continue
        copy = source / f"{index:03d}_{os.path.basename(path)}"
        shutil.copy(path, copy)
        references[str(copy)] = reference
    out = tmp_path_factory.mktemp("out2d")
    summary = voxelpipe.convert([str(source)], out=str(out), mode="2d", workers=1, progress=False)
    return references, summary, out


def test_every_file_converts_to_pydicoms_pixels(converted):
    references, summary, out = converted
    assert len(references) >= 20, "expected a corpus of compressed test files (is pydicom-data installed?)"
    failed = [r for r in summary if r["status"] != "done"]
    stored = {}
    for row in summary:
        if row["status"] != "done":
            continue
        group = open_volume_instances(row["path"])
        stored.update(group)
    checked = 0
    problems = []
    for path, (ds, expected) in references.items():
        uid = ds.SOPInstanceUID
        candidates = [stored.get(series_key(uid)), stored.get(series_key(f"{uid}|{path}"))]
        matches = [a for a in candidates if a is not None and a.shape == expected.shape
                   and np.array_equal(a, expected.astype(a.dtype))
                   and np.array_equal(expected.astype(a.dtype), expected)]
        if not matches:
            problems.append(os.path.basename(path))
        checked += 1
    assert not problems, f"differ from pydicom: {problems}; failed series: {[r['reason'] for r in failed]}"
    assert checked == len(references)


def open_volume_instances(path: str) -> dict[str, np.ndarray]:
    """Every instance array of a 2-D series store (zarr group), keyed by its name."""
    import zarr

    from voxelpipe.stores.zarr_store import open_store, store_kind

    group = zarr.open_group(store=open_store(path, store_kind(path), "r"), mode="r")
    return {name: np.asarray(array[...]) for name, array in group.arrays()}


def test_open_volume_rejects_missing_path(tmp_path):
    with pytest.raises(voxelpipe.VoxelpipeError):
        open_volume(tmp_path / "missing.zarr")
