"""convert --layout: chunk and shard shapes of Zarr volumes, their content, and every reader of sharded volumes.

The documented layouts (docs/guide/convert.md) are written here as literals and checked in ``image/zarr.json``
read with plain ``json``. Content is compared with pydicom (``apply_modality_lut``, slices ordered by position
along the slice normal) for the NSCLC CT of the shared data, and with the synthetic generator's HU volume
otherwise; other readers (open_volume, masks, resample, project, the training readers) are compared with numpy
slicing of the volume read by plain zarr.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
import zarr
from pydicom.pixels import apply_modality_lut

import voxelpipe
from voxelpipe.apps.report import write_report
from voxelpipe.cli import main
from voxelpipe.core.masks import Mask
from voxelpipe.core.types import Status
from voxelpipe.pipelines.convert import convert
from voxelpipe.pipelines.transform import project_volumes, resample_volumes
from voxelpipe.reader import PatchReader, SliceReader
from voxelpipe.stores.masks import open_masks, write_masks
from voxelpipe.stores.volumes import volume_problem
from voxelpipe.stores.zarr_store import ZarrVolumeWriter
from voxelpipe.testing.synthetic import SeriesSpec, phantom_hu, write_series

# the documented layouts of a 512x512 CT: (inner chunk shape, shard shape)
DOCUMENTED_512 = {
    "slices": ([1, 512, 512], [32, 512, 512]),
    "patches": ([32, 64, 64], [32, 512, 512]),
    "balanced": ([4, 256, 256], [32, 512, 512]),
}
SYNTH = SeriesSpec(n_slices=37, rows=80, columns=72, spacing=(2.0, 0.9, 0.9))
# the same layouts on the synthetic 37x80x72 series: chunks clipped to the array, shards of whole chunks
DOCUMENTED_SYNTH = {
    "slices": ([1, 80, 72], [32, 80, 72]),
    "patches": ([32, 64, 64], [32, 128, 128]),
    "balanced": ([4, 80, 72], [32, 80, 72]),
}


def image_meta(path: str) -> dict:
    with open(os.path.join(path, "image", "zarr.json"), encoding="utf-8") as fh:
        return json.load(fh)


def grid_of(meta: dict) -> tuple[list[int], list[int] | None]:
    """(chunk shape, shard shape or None) from an array's zarr.json."""
    outer = meta["chunk_grid"]["configuration"]["chunk_shape"]
    codec = meta["codecs"][0]
    if codec["name"] == "sharding_indexed":
        return list(codec["configuration"]["chunk_shape"]), list(outer)
    return list(outer), None


def plain(path: str, name: str = "image") -> np.ndarray:
    return np.asarray(zarr.open_group(path, mode="r")[name][...])


def converted(out: Path, folder: str, **options) -> str:
    rows = convert([folder], out=str(out), workers=1, progress=False, **options)
    assert len(rows) == 1 and rows[0]["status"] == Status.DONE, rows
    return rows[0]["path"]


# ----------------------------------------------------------------------------------------------------------
# the NSCLC CT: documented grid, values equal pydicom's
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nsclc(shared_data):
    folder = shared_data / "nsclc-lung1-001" / "image"
    if not folder.is_dir():
        pytest.skip(f"{folder} not in the shared test data")
    datasets = [pydicom.dcmread(p) for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix != ".txt"]
    datasets = [ds for ds in datasets if "PixelData" in ds]
    normal = np.cross(*np.reshape(np.asarray(datasets[0].ImageOrientationPatient, float), (2, 3)))
    datasets.sort(key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))))
    reference = np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in datasets])
    return str(folder), reference


@pytest.mark.parametrize("layout", list(DOCUMENTED_512))
def test_nsclc_layout_grid_and_values(nsclc, tmp_path, layout):
    folder, reference = nsclc
    path = converted(tmp_path, folder, layout=layout)
    meta = image_meta(path)
    assert meta["shape"] == [134, 512, 512]
    assert grid_of(meta) == DOCUMENTED_512[layout]
    np.testing.assert_array_equal(plain(path), reference)
    assert volume_problem(path) == ""


def test_nsclc_default_layout_is_documented(nsclc, tmp_path):
    folder, reference = nsclc
    path = converted(tmp_path, folder)
    assert grid_of(image_meta(path)) == DOCUMENTED_512["balanced"]


@pytest.mark.skipif(importlib.util.find_spec("tensorstore") is None, reason="tensorstore is not installed")
def test_nsclc_sharded_volume_reads_in_tensorstore(nsclc, tmp_path):
    import tensorstore as ts  # optional: an independent reader of the sharding codec

    folder, reference = nsclc
    path = converted(tmp_path, folder, layout="patches")
    array = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.join(path, "image")}}).result()
    np.testing.assert_array_equal(array.read().result(), reference)


# ----------------------------------------------------------------------------------------------------------
# synthetic series: odd shapes (edge chunks and shards), other stores, --chunks, the CLI
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    folder = tmp_path_factory.mktemp("layout_dicom")
    write_series(folder, SYNTH)
    hu = phantom_hu(SYNTH.n_slices, SYNTH.rows, SYNTH.columns, SYNTH.seed)
    return str(folder), hu


@pytest.fixture(scope="module")
def synth_volumes(synth, tmp_path_factory):
    """The synthetic series converted with each layout, and with plain 8x32x32 chunks."""
    folder, _ = synth
    root = tmp_path_factory.mktemp("layout_out")
    paths = {layout: converted(root / layout, folder, layout=layout) for layout in DOCUMENTED_SYNTH}
    paths["plain"] = converted(root / "plain", folder, chunks=(8, 32, 32))
    return paths


@pytest.mark.parametrize("layout", list(DOCUMENTED_SYNTH))
def test_synthetic_layout_grid_and_values(synth, synth_volumes, layout):
    _, hu = synth
    meta = image_meta(synth_volumes[layout])
    assert grid_of(meta) == DOCUMENTED_SYNTH[layout]
    np.testing.assert_array_equal(plain(synth_volumes[layout]), hu)


@pytest.mark.parametrize("store", ["dir", "zip", "sqlite"])
@pytest.mark.parametrize("layout", list(DOCUMENTED_SYNTH))
def test_every_layout_and_store_gives_the_written_samples(synth, tmp_path, layout, store):
    """Every slice and a batch of random patches, read by the training readers from each layout in each store
    kind, equal numpy indexing of the HU phantom the DICOM files were written from."""
    folder, hu = synth
    path = converted(tmp_path, folder, layout=layout, store=store)
    seen = []
    for batch in SliceReader(path, batch_size=5, prefetch=0, seed=0):
        for j, z in enumerate(batch["index"].tolist()):
            np.testing.assert_array_equal(batch["image"][j], hu[z], err_msg=f"slice {z}")
            seen.append(z)
    assert sorted(seen) == list(range(hu.shape[0]))
    size = (16, 32, 48)
    for batch in PatchReader(path, size, batch_size=4, prefetch=0, seed=3, patches_per_volume=8):
        for j, start in enumerate(batch["start"].tolist()):
            region = tuple(slice(a, a + n) for a, n in zip(start, size))
            np.testing.assert_array_equal(batch["image"][j], hu[region], err_msg=f"patch at {start}")


def test_chunks_win_over_layout(synth, tmp_path):
    folder, hu = synth
    path = converted(tmp_path, folder, chunks=(4, 40, 40), layout="patches")
    assert grid_of(image_meta(path)) == ([4, 40, 40], None)
    np.testing.assert_array_equal(plain(path), hu)


@pytest.mark.parametrize("store,suffix", [("zip", ".zarr.zip"), ("sqlite", ".zarr.sqlite")])
def test_sharded_volume_in_other_stores(synth, tmp_path, store, suffix):
    folder, hu = synth
    path = converted(tmp_path, folder, layout="patches", store=store)
    assert path.endswith(suffix)
    volume = voxelpipe.open_volume(path)
    np.testing.assert_array_equal(volume.numpy(), hu)
    assert volume_problem(path) == ""


def test_cli_layout(synth, tmp_path):
    folder, hu = synth
    assert main(["convert", folder, "--out", str(tmp_path), "--layout", "slices", "--workers", "1"]) == 0
    (path,) = [str(p) for p in (tmp_path / "data").rglob("*.zarr")]
    assert grid_of(image_meta(path)) == DOCUMENTED_SYNTH["slices"]
    np.testing.assert_array_equal(plain(path), hu)


def test_cli_rejects_unknown_layout(synth, tmp_path, capsys):
    folder, _ = synth
    with pytest.raises(SystemExit) as raised:
        main(["convert", folder, "--out", str(tmp_path), "--layout", "cubes"])
    assert raised.value.code == 2
    assert "--layout" in capsys.readouterr().err


def test_rerun_skips_a_complete_sharded_volume(synth, tmp_path):
    folder, _ = synth
    converted(tmp_path, folder, layout="balanced")
    rows = convert([folder], out=str(tmp_path), workers=1, progress=False, layout="balanced")
    assert rows[0]["status"] == Status.SKIPPED


def test_writer_4d_shards(tmp_path):
    data = np.arange(3 * 10 * 12 * 9, dtype=np.int16).reshape(3, 10, 12, 9)
    path = str(tmp_path / "v.zarr")
    writer = ZarrVolumeWriter(path, "dir", data.shape, data.dtype, (1, 4, 8, 8), {}, shards=(1, 8, 16, 16))
    for t in range(3):
        for z0 in range(0, 10, 8):
            writer.write_at((t, slice(z0, z0 + 8)), data[t, z0:z0 + 8])
    writer.finish()
    assert grid_of(image_meta(path)) == ([1, 4, 8, 8], [1, 8, 16, 16])
    np.testing.assert_array_equal(plain(path), data)


def test_writer_refuses_a_partial_shard(tmp_path):
    writer = ZarrVolumeWriter(str(tmp_path / "v.zarr"), "dir", (20, 8, 8), np.int16, (4, 8, 8), {},
                              shards=(8, 8, 8))
    try:
        with pytest.raises(voxelpipe.core.errors.StoreError, match="whole shard"):
            writer.write(0, np.zeros((4, 8, 8), np.int16))
    finally:
        writer.abort()


# ----------------------------------------------------------------------------------------------------------
# every reader of volumes on sharded volumes
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def with_mask(synth_volumes):
    """The patches-layout volume and the plain one, each with the same mask."""
    image = plain(synth_volumes["patches"])
    mask = (image > 0).astype(np.uint8)
    for name in ("patches", "plain"):
        write_masks(synth_volumes[name], [Mask(name="body", array=mask)])
    return synth_volumes, mask


def test_mask_on_sharded_volume_has_the_image_grid(with_mask):
    paths, mask = with_mask
    with open(os.path.join(paths["patches"], "labels", "body", "0", "zarr.json"), encoding="utf-8") as fh:
        meta = json.load(fh)
    assert grid_of(meta) == DOCUMENTED_SYNTH["patches"]
    np.testing.assert_array_equal(np.asarray(open_masks(paths["patches"])["body"][...]), mask)
    np.testing.assert_array_equal(plain(paths["patches"], "labels/body/0"), mask)


def test_open_volume_reads_sharded(synth_volumes):
    for layout in DOCUMENTED_SYNTH:
        volume = voxelpipe.open_volume(synth_volumes[layout])
        reference = plain(synth_volumes[layout])
        np.testing.assert_array_equal(volume.numpy(), reference)
        np.testing.assert_array_equal(np.asarray(volume.array[5:30, 10:70, 3:60]), reference[5:30, 10:70, 3:60])


def test_resample_and_project_read_sharded(with_mask, tmp_path):
    """The outputs of a sharded and a plain-chunked copy of the same volume are the same."""
    paths, _ = with_mask
    outputs = {}
    for name in ("patches", "plain"):
        out = tmp_path / name
        rows = resample_volumes(paths[name], str(out / "resampled"), spacing=(3.0, 1.5, 1.5), progress=False)
        assert rows[0]["status"] == Status.DONE, rows
        resampled = voxelpipe.open_volume(rows[0]["path"]).numpy()
        rows = project_volumes(paths[name], str(out / "projected"), angles=[0.0, 90.0], with_masks=True,
                               progress=False)
        assert rows[0]["status"] == Status.DONE, rows
        group = zarr.open_group(rows[0]["path"], mode="r")
        outputs[name] = (resampled, np.asarray(group["image"][...]), np.asarray(group["masks/body"][...]))
    for sharded, plain_chunks in zip(outputs["patches"], outputs["plain"]):
        np.testing.assert_array_equal(sharded, plain_chunks)


def test_training_readers_read_sharded(with_mask):
    paths, mask = with_mask
    path = paths["patches"]
    image = plain(path)
    slices = SliceReader(path, masks=["body"], batch_size=1, prefetch=0, seed=1)
    for k in range(0, slices.samples_per_epoch, 5):
        batch = slices.batch(0, k)
        z = int(batch["index"][0])
        np.testing.assert_array_equal(batch["image"][0], image[z])
        np.testing.assert_array_equal(batch["mask"][0, 0], mask[z])
    patches = PatchReader(path, (16, 32, 48), masks=["body"], batch_size=1, prefetch=0, seed=2,
                          patches_per_volume=6, foreground=0.5)
    for k in range(6):
        batch = patches.batch(0, k)
        z, y, x = (int(v) for v in batch["start"][0])
        region = np.s_[z:z + 16, y:y + 32, x:x + 48]
        np.testing.assert_array_equal(batch["image"][0], image[region])
        np.testing.assert_array_equal(batch["mask"][0, 0], mask[region])


def test_report_reads_sharded(synth_volumes, with_mask):
    out = Path(synth_volumes["patches"]).parents[1]
    html = Path(write_report(str(out), samples=8, progress=False)).read_text(encoding="utf-8")
    assert 'data-kind="axial"' in html and 'data-kind="overlay"' in html  # the image and its mask were read


def test_a_missing_shard_makes_the_volume_incomplete(synth, tmp_path):
    folder, _ = synth
    path = converted(tmp_path, folder, layout="balanced")  # 37 slices: shards at z 0 and 32
    assert volume_problem(path) == ""
    os.remove(os.path.join(path, "image", "c", "0", "0", "0"))
    assert volume_problem(path) == "1 of 2 shards missing"
