"""``merge`` of subject files: every subject kept (data and attrs equal), duplicates an error or skipped,
counts verified, HDF5 ↔ Zarr in any mix, the output published atomically; the CLI through voxelpipe.cli.main."""
from __future__ import annotations

import os

import numpy as np
import pytest

from voxelpipe.apps.petct.merge import MergeError, merge
from voxelpipe.cli.app import main
from voxelpipe.core.errors import InputError
from voxelpipe.stores.subject_store import SubjectStore, open_subject_store


def make_subject(seed: int, shape=(5, 6, 4)):
    rng = np.random.default_rng(seed)
    image = rng.random((2, *shape), dtype=np.float32)
    mask = (rng.random((1, *shape)) > 0.6).astype(np.uint8)
    return image, mask, mask * (rng.random((1, *shape)) > 0.5).astype(np.uint8), \
        {"seed": seed, "geometry": {"shape": list(shape), "spacing": [1.0, 2.0, 3.0]}}


def build(path, subjects: dict) -> str:
    with open_subject_store(path, "a") as store:
        for key, seed in subjects.items():
            store.write(key, *make_subject(seed))
    return str(path)


def check_subject(store, key: str, seed: int) -> None:
    image, mask, mask_iso, attrs = make_subject(seed)
    data = store.read(key)
    np.testing.assert_array_equal(data["image"], image)
    np.testing.assert_array_equal(data["mask"], mask)
    np.testing.assert_array_equal(data["mask_iso"], mask_iso)
    assert data["attrs"] == attrs


@pytest.mark.parametrize("out_name", ["all.h5", "all.zarr"])
def test_merge_keeps_every_subject_across_kinds(tmp_path, out_name):
    a = build(tmp_path / "a.h5", {"s1": 1, "s2": 2})
    b = build(tmp_path / "b.zarr", {"s3": 3})
    c = build(tmp_path / "c.hdf5", {"s4": 4, "s5": 5})
    out = tmp_path / out_name
    result = merge([a, b, c], out)
    assert result["expected"] == result["written"] == 5
    assert [r["copied"] for r in result["inputs"]] == [2, 1, 2]
    assert result["skipped"] == [] and result["incomplete"] == []
    with open_subject_store(out) as store:
        assert store.subjects() == ["s1", "s2", "s3", "s4", "s5"]
        for key, seed in {"s1": 1, "s2": 2, "s3": 3, "s4": 4, "s5": 5}.items():
            check_subject(store, key, seed)
        assert store.attrs["layout_version"] == 1
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]  # temporary output gone


def test_duplicate_is_an_error_naming_both_files(tmp_path):
    a = build(tmp_path / "a.h5", {"s1": 1, "s2": 2})
    b = build(tmp_path / "b.zarr", {"s2": 20, "s3": 3})
    out = tmp_path / "all.h5"
    with pytest.raises(InputError, match=r"subject s2 is in both .*a\.h5 and .*b\.zarr"):
        merge([a, b], out)
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]


def test_duplicate_skip_keeps_the_first(tmp_path):
    a = build(tmp_path / "a.zarr", {"s1": 1, "s2": 2})
    b = build(tmp_path / "b.h5", {"s2": 20, "s3": 3})
    out = tmp_path / "all.zarr"
    result = merge([a, b], out, on_duplicate="skip")
    assert result["written"] == 3
    assert result["skipped"] == [{"subject": "s2", "path": b, "kept_from": a}]
    with open_subject_store(out) as store:
        assert store.subjects() == ["s1", "s2", "s3"]
        check_subject(store, "s2", 2)  # the first input's copy


def test_incomplete_subjects_left_out_and_reported(tmp_path, monkeypatch):
    a = build(tmp_path / "a.h5", {"s1": 1})
    backend = type(open_subject_store(a)._backend)
    with monkeypatch.context() as patch:
        patch.setattr(backend, "mark_complete", lambda self, name: (_ for _ in ()).throw(RuntimeError("crash")))
        with open_subject_store(a, "a") as store, pytest.raises(RuntimeError):
            store.write("half", *make_subject(9))
    result = merge([a], tmp_path / "all.h5")
    assert result["written"] == 1 and result["incomplete"] == [{"subject": "half", "path": a}]
    with open_subject_store(tmp_path / "all.h5") as store:
        assert store.subjects() == ["s1"] and store.incomplete() == []


def test_output_replaced_and_checked(tmp_path):
    a = build(tmp_path / "a.h5", {"s1": 1})
    b = build(tmp_path / "b.h5", {"s2": 2})
    out = build(tmp_path / "all.zarr", {"old": 7})
    merge([a, b], out)
    with open_subject_store(out) as store:
        assert store.subjects() == ["s1", "s2"]
    with pytest.raises(InputError, match="also an input"):
        merge([a, out], out)
    with pytest.raises(InputError, match="given twice"):
        merge([a, a], tmp_path / "x.h5")
    with pytest.raises(InputError, match="on_duplicate"):
        merge([a], tmp_path / "x.h5", on_duplicate="last")
    with pytest.raises(InputError, match="no such subject file"):
        merge([str(tmp_path / "missing.h5")], tmp_path / "x.h5")


def test_count_verification_fails_when_a_copy_is_lost(tmp_path, monkeypatch):
    a = build(tmp_path / "a.h5", {"s1": 1, "s2": 2})
    out = tmp_path / "all.h5"
    real = SubjectStore.copy_subject

    def lossy(self, source, subject, name=None):
        if subject != "s2":
            real(self, source, subject, name)

    monkeypatch.setattr(SubjectStore, "copy_subject", lossy)
    with pytest.raises(MergeError, match="holds 1 subjects, expected 2"):
        merge([a], out)
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]


def test_merge_cli(tmp_path, capsys):
    a = build(tmp_path / "a.h5", {"s1": 1, "s2": 2})
    b = build(tmp_path / "b.zarr", {"s2": 20, "s3": 3})
    out = tmp_path / "all.h5"
    assert main(["--no-progress", "merge", a, b, "--out", str(out)]) == 2  # duplicate s2
    assert not out.exists()
    assert main(["--no-progress", "merge", a, b, "--out", str(out), "--on-duplicate", "skip"]) == 0
    printed = capsys.readouterr().out
    assert "3 subjects written (expected 3, verified)" in printed
    assert "skipped duplicate s2" in printed
    with open_subject_store(out) as store:
        assert store.subjects() == ["s1", "s2", "s3"]
