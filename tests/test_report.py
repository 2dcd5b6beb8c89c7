"""The `report` command: one self-contained HTML file for a convert output folder.

A small study (synthetic CT with a localizer and an RTSTRUCT, a thick CT, an MR series with a missing slice, a
series with a duplicated slice that convert fails, a file that is not DICOM) goes through the real scan, convert
and masks pipelines (workers=1); the HTML is parsed with html.parser and checked against references computed
here independently: statuses counted from the summary CSV, flags from the scan's series_all.csv, images decoded
with Pillow, middle slices read with zarr / h5py / numpy directly and windowed with numpy, mask centroids with
numpy.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

import voxelpipe
from voxelpipe.apps.report import build_report, choose_series, read_plane, view_plan, write_report
from voxelpipe.cli.app import main
from voxelpipe.core.errors import InputError
from voxelpipe.pipelines.masks import add_masks_from_manifest
from voxelpipe.testing.synthetic import SeriesSpec, sphere_contours, write_demo_study, write_rtstruct, write_series

from helpers import ct_window, decode_png_data_uri, resave, sha_key

MAX_SIDE = 256  # the README's picture size rule
COLORS = {"Ball": (255, 0, 0), "Box": (0, 255, 0)}


# ----------------------------------------------------------------------------------------------------------
# the study and its convert output
# ----------------------------------------------------------------------------------------------------------
def _write_study(folder: Path) -> dict:
    files = write_demo_study(folder)
    z = [float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in files["ct"]]
    write_rtstruct(folder / "rs.dcm", files["ct"], {"Ball": sphere_contours((5.0, -3.0, z[25]), 8.0, z),
                                                    "Box": sphere_contours((-10.0, 5.0, z[10]), 5.0, z)},
                   colors=COLORS)
    dup = SeriesSpec(n_slices=10, rows=32, columns=32, seed=3, series_number=5, series_description="dup")
    write_series(folder / "dup", dup, duplicate=[4])
    mr = SeriesSpec(n_slices=12, rows=32, columns=48, spacing=(3.0, 0.7, 0.7), seed=4, series_number=6,
                    modality="MR", series_description="mr missing")
    write_series(folder / "mr", mr, skip=[6])
    tilt = SeriesSpec(n_slices=12, rows=32, columns=32, spacing=(3.0, 0.5, 0.5), tilt_deg=12.0, seed=5,
                      series_number=7, series_description="tilted")
    write_series(folder / "tilt", tilt)
    cine = SeriesSpec(n_slices=8, rows=16, columns=16, seed=6, series_number=8, series_description="cine")
    for i, path in enumerate(write_series(folder / "cine", cine)):  # every position twice, two TriggerTimes
        def second(ds, i=i):
            ds.TriggerTime = "100"
            ds.InstanceNumber = cine.n_slices + i + 1
        resave(path, second, new_path=str(folder / "cine" / f"PH2_{i:03d}.dcm"), new_uid=True)
        resave(path, lambda ds: setattr(ds, "TriggerTime", "0"))
    (folder / "notes.dcm").write_text("not DICOM at all\n")
    return {"dup_uid": dup.series_uid, "mr_uid": mr.series_uid, "tilt_uid": tilt.series_uid,
            "cine_uid": cine.series_uid}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    facts = _write_study(root / "dicom")
    out = root / "out"
    voxelpipe.convert([str(root / "dicom")], out=str(out), workers=1, progress=False)
    add_masks_from_manifest(out / "manifest", out, workers=1, progress=False)
    html = root / "report.html"
    write_report(str(out), str(html), samples=8, seed=0, progress=False)
    return {"root": root, "out": out, "html": html, **facts}


def read_rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------------------------------------
# parsing the page
# ----------------------------------------------------------------------------------------------------------
class Page(HTMLParser):
    """Collects images, links, sections (with their text and images) and the cells of tables by id."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.images: list[dict] = []
        self.links: list[str] = []
        self.tags: Counter = Counter()
        self.sections: dict[str, dict] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self._section: dict | None = None
        self._depth = 0
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags[tag] += 1
        if tag == "section":
            self._section = {"attrs": attrs, "images": [], "text": []}
            self.sections[attrs["data-key"]] = self._section
        if tag == "img":
            self.images.append(attrs)
            if self._section is not None:
                self._section["images"].append(attrs)
        if tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        if tag == "table" and "id" in attrs:
            self._table = attrs["id"]
            self.tables[self._table] = []
        if tag == "tr" and self._table:
            self._row = []
        if tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr" and self._row is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        if tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._section is not None:
            self._section["text"].append(data)


def parse(path) -> tuple[str, Page]:
    text = Path(path).read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    return text, page


# ----------------------------------------------------------------------------------------------------------
# independent references
# ----------------------------------------------------------------------------------------------------------
def expected_size(n_rows: int, n_cols: int, s_rows: float, s_cols: float) -> tuple[int, int]:
    """(width, height) of a picture with square pixels: the finer spacing, unless the longer side would pass
    MAX_SIDE pixels."""
    pixel = max(min(s_rows, s_cols), max(n_rows * s_rows, n_cols * s_cols) / MAX_SIDE)
    return round(n_cols * s_cols / pixel), round(n_rows * s_rows / pixel)


def percentile_window(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    lo, hi = np.percentile(x, [1, 99])
    return np.rint(np.clip((x - lo) / (hi - lo) * 255.0, 0, 255)).astype(np.uint8)


def zarr_image(path: str):
    import zarr

    group = zarr.open_group(store=zarr.storage.LocalStore(path, read_only=True), mode="r")
    return group, group["image"]


def flagged_in_scan(row: dict) -> bool:
    return int(row["missing_slices"] or 0) > 0 or int(row["duplicate_positions"] or 0) > 0 \
        or int(row["incomplete_positions"] or 0) > 0 or row["split_reason"] != "" \
        or row["orientation_consistent"] == "False" \
        or (row["instance_order_matches_position"] == "False" and row["frames_per_position"] == "1") \
        or float(row["gantry_tilt_deg"] or 0) > 0.05 \
        or float(row["spacing_max"] or 0) - float(row["spacing_min"] or 0) > 0.01


# ----------------------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------------------
def test_every_image_is_an_inline_png_of_the_expected_size(study):
    _, page = parse(study["html"])
    assert page.images
    summary = {r["series_key"]: r for r in read_rows(study["out"] / "summary_run.csv")}
    for key, section in page.sections.items():
        if not section["images"]:
            continue
        meta = json.loads((study["out"] / "meta" / f"{key}.series.json").read_text())
        direction = np.asarray(meta["direction"])
        assert np.argmax(np.abs(direction), axis=0).tolist() == [2, 1, 0]  # axes 0, 1, 2 closest to S, P, L
        n0, n1, n2 = meta["shape"]
        s0, s1, s2 = meta["spacing"]
        expected = {"axial": expected_size(n1, n2, s1, s2), "coronal": expected_size(n0, n2, s0, s2),
                    "sagittal": expected_size(n0, n1, s0, s1), "mip": expected_size(n0, n2, s0, s2),
                    "overlay": expected_size(n1, n2, s1, s2)}
        assert summary[key]["status"] == "done"
        for attrs in section["images"]:
            image = decode_png_data_uri(attrs["src"])
            assert image.size == expected[attrs["data-kind"]], (key, attrs["data-kind"])
            assert image.mode == ("RGB" if attrs["data-kind"] == "overlay" else "L")
            assert len(np.unique(np.asarray(image))) > 2  # not blank


def test_summary_counts_equal_the_summary_csv(study):
    text, page = parse(study["html"])
    rows = read_rows(study["out"] / "summary_run.csv")
    shown = {r[0]: int(r[1]) for r in page.tables["status-counts"][1:] if r[0] != "total"}
    assert shown == Counter(r["status"] for r in rows)
    assert dict(page.tables["status-counts"][1:])["total"] == str(len(rows))
    unreadable = read_rows(study["out"] / "manifest" / "unreadable_files.csv")
    assert len(unreadable) == 1
    assert f'<span id="unreadable-total">{len(unreadable)}</span>' in text
    assert [r[0] for r in page.tables["unreadable-groups"][1:]] == ["not_dicom"]
    converted = [r for r in rows if r["status"] == "done"]
    ratio = sum(int(r["bytes_in"]) for r in converted) / sum(int(r["bytes_out"]) for r in converted)
    facts = dict(page.tables["run-facts"][1:])
    assert facts["compression ratio (bytes in / bytes out, converted series)"].startswith(f"{ratio:.3f} ")
    seconds = json.loads((study["out"] / "summary_run.json").read_text())["seconds"]
    files = sum(int(r["n_files"]) for r in converted)
    assert facts["throughput (converted series)"].startswith(f"{files / seconds:.1f} files/s")
    assert page.tables["runs"][1][:6] == ["summary_run.csv", str(len(rows)), str(len(converted)), "0",
                                          str(len(rows) - len(converted)), str(files)]


def test_failed_series_show_their_reason_and_no_images(study):
    _, page = parse(study["html"])
    failed = [r for r in read_rows(study["out"] / "summary_run.csv") if r["status"] == "failed"]
    assert [r["series_key"] for r in failed] == [sha_key(study["dup_uid"])]
    groups = page.tables["failure-groups"][1:]
    for row in failed:
        section = page.sections[row["series_key"]]
        assert section["attrs"]["data-status"] == "failed" and "failed" in section["attrs"]["data-roles"]
        assert row["reason"] and row["reason"] in "".join(section["text"])
        assert section["images"] == []
        assert any(row["series_key"] in g[2] for g in groups)
        assert f"#series-{row['series_key']}" in page.links


def test_failed_flagged_and_sampled_sections(study):
    _, page = parse(study["html"])
    rows = read_rows(study["out"] / "summary_run.csv")
    scan_rows = {r["series_key"]: r for r in read_rows(study["out"] / "manifest" / "series_all.csv")}
    flagged = {k for k in (r["series_key"] for r in rows) if flagged_in_scan(scan_rows[k])}
    # the duplicated slice (failed), the missing slice and the gantry tilt (converted)
    assert flagged == {sha_key(study[k]) for k in ("dup_uid", "mr_uid", "tilt_uid")}
    roles = {k: s["attrs"]["data-roles"].split() for k, s in page.sections.items()}
    assert {k for k, r in roles.items() if "flagged" in r} == flagged
    assert {k for k, r in roles.items() if "failed" in r} == {r["series_key"] for r in rows if r["status"] == "failed"}
    # 8 samples asked, 3 converted series left unflagged (two CTs, the cine): all drawn
    sampled = {r["series_key"] for r in rows if r["status"] == "done"} - flagged
    assert {k for k, r in roles.items() if r == ["sampled"]} == sampled
    for key, section in page.sections.items():
        if section["attrs"]["data-status"] != "done":
            continue
        kinds = Counter(img["data-kind"] for img in section["images"])
        masks = os.listdir(study["out"] / "data" / f"{key}.zarr" / "labels") \
            if (study["out"] / "data" / f"{key}.zarr" / "labels").is_dir() else []
        masks = [m for m in masks if m != "zarr.json"]
        assert kinds == Counter({"axial": 1, "coronal": 1, "sagittal": 1, "mip": 1,
                                 **({"overlay": len(masks)} if masks else {})}), key
    assert sum(1 for s in page.sections.values() for i in s["images"] if i["data-kind"] == "overlay") == 2


def test_axial_mid_slice_equals_an_independent_window(study):
    _, page = parse(study["html"])
    checked, four_d = 0, False
    for key, section in page.sections.items():
        for attrs in section["images"]:
            if attrs["data-kind"] != "axial":
                continue
            group, array = zarr_image(str(study["out"] / "data" / f"{key}.zarr"))
            frame = (0,) * (array.ndim - 3)  # 4-D volumes: frame 0
            middle = np.asarray(array[frame + (array.shape[-3] // 2,)])
            expected = ct_window(middle) if group.attrs["modality"] == "CT" else percentile_window(middle)
            np.testing.assert_array_equal(np.asarray(decode_png_data_uri(attrs["src"])), expected)
            checked += 1
            four_d = four_d or array.ndim == 4
    assert checked == 5 and four_d


def test_overlay_is_the_plane_through_the_mask_centroid(study):
    _, page = parse(study["html"])
    key = next(k for k, s in page.sections.items() if any(i["data-kind"] == "overlay" for i in s["images"]))
    group, array = zarr_image(str(study["out"] / "data" / f"{key}.zarr"))
    masks = {name: np.asarray(group["labels"][name]["0"]) for name in ("Ball", "Box")}
    overlays = [np.asarray(decode_png_data_uri(i["src"])) for i in page.sections[key]["images"]
                if i["data-kind"] == "overlay"]
    for name, rgb in zip(sorted(masks), overlays):  # one per mask, in name order
        z = int(round(np.argwhere(masks[name]).mean(axis=0)[0]))
        union = np.any([m[z] != 0 for m in masks.values()], axis=0)
        coloured = (rgb[..., 0] != rgb[..., 1]) | (rgb[..., 1] != rgb[..., 2])
        assert coloured.any() and not (coloured & ~union).any(), name
        assert (rgb[coloured & (masks[name][z] != 0)] == COLORS[name]).all(axis=1).any()
        grey = ct_window(np.asarray(array[z]))
        np.testing.assert_array_equal(rgb[~coloured][:, 0], grey[~coloured])


def test_no_external_urls_no_script(study):
    text, page = parse(study["html"])
    lowered = re.sub(r'src="data:image/png;base64,[a-z0-9+/=]+"', "", text.lower())
    assert "base64" not in lowered  # every data URI was an img src
    for needle in ("http:", "https:", "ftp:", "file:", "url(", "@import", "//", 'src="/'):
        assert needle not in lowered, needle
    assert page.tags["script"] == 0 and page.tags["link"] == 0 and page.tags["iframe"] == 0
    assert all(i["src"].startswith("data:image/png;base64,") for i in page.images)
    assert all(h.startswith("#") for h in page.links)
    anchors = {f"#series-{k}" for k in page.sections} | {"#summary", "#failures", "#unreadable", "#problems",
                                                          "#series"}
    assert set(page.links) <= anchors


def test_cli_report_with_sample_and_seed(study, tmp_path, capsys):
    target = tmp_path / "r.html"
    code = main(["--no-progress", "report", str(study["out"]), "--html", str(target), "--samples", "1",
                 "--seed", "3"])
    assert code == 0 and "1 sampled" in capsys.readouterr().out
    _, page = parse(target)
    roles = [s["attrs"]["data-roles"] for s in page.sections.values()]
    everyone = [s["attrs"]["data-roles"] for s in parse(study["html"])[1].sections.values()]
    assert roles.count("sampled") == 1 and len(roles) == 1 + sum(r != "sampled" for r in everyone)
    again = tmp_path / "again.html"
    main(["--no-progress", "report", str(study["out"]), "--html", str(again), "--samples", "1", "--seed", "3"])
    assert list(parse(again)[1].sections) == list(page.sections)


def test_cli_subprocess_writes_the_default_file(study, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(study["out"], out)
    result = subprocess.run([sys.executable, "-m", "voxelpipe", "--no-progress", "report", str(out),
                             "--samples", "0"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    _, page = parse(out / "report.html")
    assert all("sampled" not in s["attrs"]["data-roles"] for s in page.sections.values())


def test_sample_is_seeded_and_drawn_from_converted_series():
    rows = [{"series_key": f"k{i:02d}", "status": "done"} for i in range(20)]
    rows += [{"series_key": "bad", "status": "failed"}, {"series_key": "odd", "status": "done"}]
    manifest = {"odd": {"missing_slices": "2"}}
    first = choose_series(rows, manifest, 5, seed=7)
    assert [r["series_key"] for r, _ in first[:2]] == ["bad", "odd"]
    assert first[0][1] == ["failed"] and first[1][1] == ["flagged"]
    picks = [r["series_key"] for r, roles in first[2:]]
    assert len(set(picks)) == 5 and all(k.startswith("k") for k in picks)
    assert choose_series(rows, manifest, 5, seed=7) == first
    assert {r["series_key"] for r, _ in choose_series(rows, manifest, 5, seed=8)[2:]} != set(picks)


def test_planes_are_read_one_at_a_time(study):
    """The views index the lazy array with one integer and two full slices: only that plane is read."""
    volume = voxelpipe.open_volume(str(study["out"] / "data" / f"{_ct_key(study)}.zarr"))

    class Recorder:
        def __init__(self, array):
            self.array, self.selections = array, []

        def __getitem__(self, selection):
            self.selections.append(selection)
            return self.array[selection]

    recorder = Recorder(volume.array)
    for view, axis in (("axial", 0), ("coronal", 1), ("sagittal", 2)):
        plan = view_plan(volume.geometry, view)
        assert plan.axis == axis
        plane = read_plane(recorder, plan, 7)
        selection = recorder.selections[-1]
        assert [isinstance(s, int) for s in selection] == [a == axis for a in range(3)]
        assert all(s == slice(None) for a, s in enumerate(selection) if a != axis)
        assert plane.ndim == 2


def test_big_volumes_are_strided_for_the_mip(study, monkeypatch):
    from voxelpipe.apps.report import pictures as report

    volume = voxelpipe.open_volume(str(study["out"] / "data" / f"{_ct_key(study)}.zarr"))  # 40 x 64 x 64
    monkeypatch.setattr(report, "MIP_MAX_VOXELS", 20 * 32 * 32)
    picture = report.mip_picture(volume, ())
    assert "strided by 2" in picture.caption
    s0, s1, s2 = volume.geometry.spacing
    assert picture.pixels.shape == expected_size(20, 32, 2 * s0, 2 * s2)[::-1]
    assert len(np.unique(picture.pixels)) > 2


def _ct_key(study) -> str:
    rows = read_rows(study["out"] / "summary_run.csv")
    return next(r["series_key"] for r in rows if r["shape"] == "40x64x64")


def test_unreadable_and_missing_volumes_are_problem_rows(study, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(study["out"], out)
    rows = read_rows(out / "summary_run.csv")
    converted = [r["series_key"] for r in rows if r["status"] == "done"]
    broken, gone = converted[0], converted[1]
    for chunk in (out / "data" / f"{broken}.zarr" / "image" / "c").rglob("*"):
        if chunk.is_file():
            chunk.write_bytes(b"garbage, not a Blosc frame")
    shutil.rmtree(out / "data" / f"{gone}.zarr")
    code = main(["--no-progress", "report", str(out), "--html", str(tmp_path / "r.html")])
    assert code == 1
    printed = capsys.readouterr().out
    assert f"problem {broken}" in printed and f"problem {gone}" in printed
    _, page = parse(tmp_path / "r.html")
    problems = {r[0]: r[1] for r in page.tables["problems"][1:]}
    assert set(problems) == {broken, gone} and "volume not found" in problems[gone]
    assert page.sections[broken]["images"] == [] and page.sections[gone]["images"] == []
    for image in page.images:
        decode_png_data_uri(image["src"])


def test_missing_folder_or_summaries_is_an_input_error(tmp_path, caplog):
    with pytest.raises(InputError, match=str(tmp_path / "nowhere")):
        build_report(tmp_path / "nowhere", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: no summary"):
        build_report(tmp_path / "empty", progress=False)
    assert main(["--no-progress", "report", str(tmp_path / "empty")]) == 2
    assert "no summary" in caplog.text
    with pytest.raises(InputError, match="samples"):
        build_report(tmp_path / "empty", samples=-1, progress=False)


def test_shard_summaries_then_summary_all(study, tmp_path):
    out = tmp_path / "out"
    manifest = study["out"] / "manifest" / "series_all.csv"
    for shard in range(2):
        voxelpipe.convert(manifest=str(manifest), out=str(out), shard_id=shard, num_shards=2, workers=1,
                          progress=False)
    shards = sorted(out.glob("summary_shard*.csv"))
    assert len(shards) == 2
    data = build_report(out, samples=0, progress=False)
    statuses = Counter(r["status"] for p in shards for r in read_rows(p))
    assert data.status_counts == statuses and len(data.runs) == 2
    assert data.facts[0] == ("summary rows from", ", ".join(p.name for p in shards))
    voxelpipe.aggregate(str(out))
    data = build_report(out, samples=0, progress=False)
    assert data.status_counts == Counter(r["status"] for r in read_rows(out / "summary_all.csv"))
    assert data.facts[0] == ("summary rows from", "summary_all.csv")


@pytest.mark.parametrize("fmt", ["hdf5", "npz", "zip"])
def test_hdf5_npz_and_zip_outputs(study, tmp_path, fmt):
    out = tmp_path / "out"
    voxelpipe.convert(manifest=str(study["out"] / "manifest" / "series_all.csv"), out=str(out),
                      fmt="zarr" if fmt == "zip" else fmt, store="zip" if fmt == "zip" else "dir", workers=1,
                      progress=False)
    html = write_report(str(out), samples=8, progress=False)
    _, page = parse(html)
    key = _ct_key(study)
    axial = next(i for i in page.sections[key]["images"] if i["data-kind"] == "axial")
    if fmt == "hdf5":
        import h5py

        (path,) = out.glob("data/volumes_*.h5")
        with h5py.File(path, "r") as fh:
            middle = fh[key][20]
    elif fmt == "npz":
        with np.load(out / "data" / f"{key}.npz") as data:
            middle = data["image"][20]
    else:
        import zarr

        store = zarr.storage.ZipStore(out / "data" / f"{key}.zarr.zip", mode="r", read_only=True)
        middle = np.asarray(zarr.open_group(store=store, mode="r")["image"][20])
        store.close()
    np.testing.assert_array_equal(np.asarray(decode_png_data_uri(axial["src"])), ct_window(middle))
    assert not page.tables.get("problems")
    converted = [r for r in read_rows(out / "summary_run.csv") if r["status"] == "done"]
    assert sum(1 for s in page.sections.values() for i in s["images"] if i["data-kind"] == "mip") == len(converted)


def test_headless_chromium_screenshot(study, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium / chromium-browser not on PATH: the screenshot test needs a headless browser")
    shot = tmp_path / "shot.png"
    profile = tempfile.mkdtemp(dir=tmp_path)
    log = tmp_path / "chromium.log"
    with open(log, "wb") as fh:  # a file, not a pipe: chromium's helper processes may hold a pipe open
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1280,2000",
                        Path(study["html"]).resolve().as_uri()], stdin=subprocess.DEVNULL, stdout=fh, stderr=fh,
                       timeout=60)
    assert shot.is_file(), log.read_text(errors="replace")[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        pixels = np.asarray(image.convert("RGB")).astype(np.uint32)
    colours = np.unique((pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2])
    assert len(colours) > 50  # text, tables, badges and the greyscale pictures: far from blank
