"""A large synthetic DICOM tree, written fast, for the scale test and the scale benchmark.

Layout: ``ROOT/P<patient>/ST<study>/SE<series number>/<file>``: many small CT series (16×16 or 32×32, 20–100
slices, four rescale kinds: int16, 12-bit unsigned, slope 2, fractional → float32, some with a gantry tilt, some
numbered against their position), a few LOCALIZER images (inside series, and one series of localizers only)
and a few broken files (empty, text, random bytes, truncated pixel data, truncated header, no pixel data, no
position).

Speed: every series has one template, the dataset ``synthetic.slice_dataset`` builds, serialised once by
pydicom. Each file is a copy of the template's bytes with its SOP Instance UID, InstanceNumber,
ImagePositionPatient and SliceLocation overwritten in place (fixed-width values) and its pixels appended
(~20,000 files in a few seconds, where ``dcmwrite`` per file takes ~4 ms).

What each series should become is recorded here, independently of voxelpipe's reader: ``ScaleSeries.files`` in
slice order (ascending position along the slice normal) and ``ScaleSeries.expected()``, the HU volume
(slice, row, column) recomputed from the same formula the writer stored (``stored_values``).
"""
from __future__ import annotations

import io
import os
import struct
import time
from dataclasses import dataclass, field, replace

import numpy as np
from pydicom.dataset import Dataset

from voxelpipe.testing.synthetic import ROOT_UID, SeriesSpec, slice_dataset, slice_geometry, write_localizer

TREE_UID = ROOT_UID + "8."  # scale trees: <TREE_UID><seed>.<kind>.<numbers>
MIN_SLICES, MAX_SLICES = 20, 100
LOCALIZERS_IN_SERIES = 6  # plus one series of 2 localizers only
LOCALIZER_ONLY_FILES = 2
# rescale kinds: (name, probability, unsigned 12-bit, slope, intercept)
RESCALES = (("int16", 0.55, False, 1.0, 0.0), ("uint12", 0.25, True, 1.0, -1024.0),
            ("slope2", 0.10, False, 2.0, -1000.0), ("fractional", 0.10, False, 0.5, -1024.25))
# broken files: name -> the kind scan's unreadable_files.csv gives it (README, `scan`); a CT Image Storage file
# without pixel data cannot be told from one cut before them: `unreadable` (truncated)
BROKEN_KINDS = {"empty.dcm": "not_dicom", "notes.txt": "not_dicom", "random.bin": "not_dicom",
                "truncated_pixels.dcm": "unreadable", "truncated_header.dcm": "unreadable",
                "no_pixels.dcm": "unreadable", "no_position.dcm": "no_geometry"}
# fixed widths of InstanceNumber, of each ImagePositionPatient value and of SliceLocation
_WIDTH_IS, _WIDTH_DS, _WIDTH_LOCATION = 6, 11, 12


def stored_values(series_index: int, n_slices: int, rows: int, columns: int, unsigned: bool) -> np.ndarray:
    """Stored pixel values (slice, row, column) of series ``series_index``, slice 0 = lowest position:
    ``(97·s + 13·k + 7·r + 3·c + r·c) mod 4096``, minus 1024 when signed (uint16 or int16)."""
    k = np.arange(n_slices, dtype=np.int64)[:, None, None]
    r = np.arange(rows, dtype=np.int64)[None, :, None]
    c = np.arange(columns, dtype=np.int64)[None, None, :]
    values = (97 * series_index + 13 * k + 7 * r + 3 * c + r * c) % 4096
    return values.astype(np.uint16) if unsigned else (values - 1024).astype(np.int16)


@dataclass(frozen=True)
class ScaleSeries:
    """One image series of the tree and what converting it must give."""

    index: int
    series_uid: str
    study_uid: str
    patient_id: str
    folder: str
    files: tuple[str, ...]  # slice order: ascending position along the normal
    rows: int
    columns: int
    rescale: str  # a RESCALES name
    unsigned: bool
    slope: float
    intercept: float
    spacing: tuple[float, float, float]  # mm (slice, row, column)
    tilt_deg: float
    origin: tuple[float, ...]  # ImagePositionPatient of slice 0 as written (LPS mm)
    reversed_numbers: bool  # InstanceNumber runs against the position
    localizers: tuple[str, ...] = ()  # LOCALIZER files carrying this series' UID

    @property
    def n_slices(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n_slices, self.rows, self.columns)

    def stored(self) -> np.ndarray:
        return stored_values(self.index, self.n_slices, self.rows, self.columns, self.unsigned)

    def expected(self) -> np.ndarray:
        """The HU volume (slice, row, column), float64: stored × slope + intercept."""
        return self.stored().astype(np.float64) * self.slope + self.intercept

    @property
    def expected_dtype(self) -> np.dtype:
        """README's rule: int16 when slope and intercept are integral and every value fits, else float32."""
        integral = self.slope == round(self.slope) and self.intercept == round(self.intercept)
        return np.dtype(np.int16 if integral else np.float32)  # every integral kind here fits int16


@dataclass
class ScaleTree:
    """A written tree: its series, localizer files and broken files (path → expected unreadable kind)."""

    root: str
    seed: int
    series: list[ScaleSeries]
    localizers: list[str]  # every LOCALIZER file (in series and in the localizer-only series)
    localizer_only_uids: list[str]
    broken: dict[str, str]
    seconds: float = 0.0
    by_uid: dict[str, ScaleSeries] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.by_uid = {s.series_uid: s for s in self.series}

    @property
    def n_files(self) -> int:
        return sum(s.n_slices for s in self.series) + len(self.localizers) + len(self.broken)

    def all_files(self) -> set[str]:
        return {p for s in self.series for p in s.files} | set(self.localizers) | set(self.broken)


def _plan_sizes(rng: np.random.Generator, budget: int) -> list[int]:
    """Slices per series, MIN..MAX each, summing to ``budget`` (the last one absorbs the remainder)."""
    if budget < MIN_SLICES:
        raise ValueError(f"a scale tree needs room for at least one series of {MIN_SLICES} slices")
    sizes: list[int] = []
    while sum(sizes) < budget:
        sizes.append(int(rng.integers(MIN_SLICES, MAX_SLICES + 1)))
    excess = sum(sizes) - budget
    sizes[-1] -= excess
    if sizes[-1] < MIN_SLICES and len(sizes) > 1:
        last = sizes.pop()
        sizes[-1] += last
    return sizes


def _uid(seed: int, *parts: int) -> str:
    """A tree UID; numbers are offset by 10000 so each component has a fixed width and no leading zero."""
    return TREE_UID + f"{seed}." + ".".join(str(p) for p in parts)


def _sop_uid(seed: int, series: int, slice_number: int) -> str:
    return _uid(seed, 3, 10000 + series, 10000 + slice_number)


def _ipp_text(ipp: list[float]) -> str:
    return "\\".join(f"{v:>{_WIDTH_DS}.4f}" for v in ipp)


class _Template:
    """One series' file bytes with the byte slots of the per-file values (explicit VR little endian)."""

    SLOTS = {"meta_uid": (0x0002, 0x0003, b"UI"), "sop_uid": (0x0008, 0x0018, b"UI"),
             "number": (0x0020, 0x0013, b"IS"), "position": (0x0020, 0x0032, b"DS"),
             "location": (0x0020, 0x1041, b"DS")}

    def __init__(self, ds: Dataset):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
        pixel_tag = struct.pack("<HH", 0x7FE0, 0x0010)
        at = data.rfind(pixel_tag)
        assert data[at + 4:at + 6] in (b"OW", b"OB"), "PixelData must be the last element, explicit VR"
        self.pixel_bytes = struct.unpack("<I", data[at + 8:at + 12])[0]
        assert at + 12 + self.pixel_bytes == len(data)
        self.head = data[:at + 12]  # everything up to the pixel values
        self.slots: dict[str, tuple[int, int]] = {}
        for name, (group, element, vr) in self.SLOTS.items():
            pattern = struct.pack("<HH", group, element) + vr
            assert self.head.count(pattern) == 1, f"{name}: element header not unique in the template"
            pos = self.head.index(pattern)
            self.slots[name] = (pos + 8, struct.unpack("<H", self.head[pos + 6:pos + 8])[0])

    def file_bytes(self, values: dict[str, str], pixels: bytes) -> bytes:
        """The file: template head with ``values`` (slot name → text, padded to the slot) + ``pixels``."""
        buf = bytearray(self.head)
        for name, text in values.items():
            offset, length = self.slots[name]
            raw = text.encode("ascii")
            pad = b"\0" if name.endswith("uid") else b" "
            assert len(raw) <= length and length - len(raw) <= 1, f"{name}: {text!r} does not fit {length} bytes"
            buf[offset:offset + length] = raw + pad * (length - len(raw))
        assert len(pixels) == self.pixel_bytes
        return bytes(buf) + pixels


def _positions(spec: SeriesSpec) -> np.ndarray:
    """ImagePositionPatient (n_slices, 3) of every slice index, as ``synthetic.slice_geometry`` places them
    (linear in the index: computed from slices 0 and 1 rather than per slice, which is slow)."""
    first = np.array(slice_geometry(spec, 0)[0])
    step = np.array(slice_geometry(spec, 1)[0]) - first
    return first + np.arange(spec.n_slices)[:, None] * step


def _file_values(positions: np.ndarray, seed: int, index: int, j: int, k: int) -> dict[str, str]:
    """The per-file slot values of acquisition ``j`` (InstanceNumber j + 1) at slice index ``k``."""
    ipp = positions[k]
    uid = _sop_uid(seed, index, j)
    return {"meta_uid": uid, "sop_uid": uid, "number": f"{j + 1:>{_WIDTH_IS}d}", "position": _ipp_text(ipp),
            "location": f"{ipp[2]:>{_WIDTH_LOCATION}.4f}"}


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def _series_spec(rng: np.random.Generator, seed: int, index: int, n_slices: int, patient: int, study_uid: str,
                 series_number: int) -> SeriesSpec:
    size = int(rng.choice([16, 32]))
    pixel = float(rng.choice([0.5, 0.7, 0.8, 1.0]))
    return SeriesSpec(
        n_slices=n_slices, rows=size, columns=size,
        spacing=(float(rng.choice([1.0, 1.25, 2.0, 2.5, 3.0, 5.0])), pixel, pixel),
        origin=(-size * pixel / 2, -size * pixel / 2, float(rng.integers(-400, 100)) / 2),
        tilt_deg=10.0 if rng.random() < 0.05 else 0.0, series_description=f"scale series {index}",
        series_number=series_number, patient_id=f"VP-SCALE-{patient:04d}", study_uid=study_uid,
        series_uid=_uid(seed, 2, 10000 + index), seed=index)


def _write_series(root: str, rng: np.random.Generator, seed: int, index: int, spec: SeriesSpec,
                  patient: int) -> tuple[ScaleSeries, _Template]:
    """Write one series through its byte template; returns its record (files in slice order) and template."""
    name, _, unsigned, slope, intercept = RESCALES[rng.choice(len(RESCALES), p=[r[1] for r in RESCALES])]
    spec.slope, spec.intercept = slope, intercept
    folder = os.path.join(root, f"P{patient:04d}", f"ST{spec.study_uid.rsplit('.', 1)[-1]}",
                          f"SE{spec.series_number:03d}")
    os.makedirs(folder, exist_ok=True)
    ds = slice_dataset(spec, 0, 1)
    ds.PatientName = f"Scale^P{patient:04d}"
    ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
    if unsigned:
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
    placeholder = _sop_uid(seed, index, 89999)  # same width as every file's UID
    ds.file_meta.MediaStorageSOPInstanceUID = placeholder
    ds.SOPInstanceUID = placeholder
    # placeholders that reserve each slot's width (pydicom strips padding; the files get padded values)
    ds.InstanceNumber = "1" * _WIDTH_IS
    ds.ImagePositionPatient = ["1" * _WIDTH_DS] * 3
    ds.SliceLocation = "1" * _WIDTH_LOCATION
    ds.PixelData = bytes(spec.rows * spec.columns * 2)
    template = _Template(ds)

    stored = stored_values(index, spec.n_slices, spec.rows, spec.columns, unsigned)
    reversed_numbers = bool(rng.random() < 0.3)
    named = bool(rng.random() < 0.5)
    positions = _positions(spec)
    files: list[str] = [""] * spec.n_slices
    origin: tuple[float, ...] = ()
    for j in range(spec.n_slices):  # j: acquisition (InstanceNumber - 1); k: slice index by position
        k = spec.n_slices - 1 - j if reversed_numbers else j
        values = _file_values(positions, seed, index, j, k)
        if k == 0:
            origin = tuple(float(v) for v in values["position"].split("\\"))
        data = template.file_bytes(values, stored[k].tobytes())
        file_name = f"IM{j + 1:05d}.dcm" if named else f"{int(rng.integers(1 << 48)):012x}"
        files[k] = os.path.join(folder, file_name)
        _write(files[k], data)
    return ScaleSeries(index=index, series_uid=spec.series_uid, study_uid=spec.study_uid,
                       patient_id=spec.patient_id, folder=folder, files=tuple(files), rows=spec.rows,
                       columns=spec.columns, rescale=name, unsigned=unsigned, slope=slope, intercept=intercept,
                       spacing=spec.spacing, tilt_deg=spec.tilt_deg, origin=origin,
                       reversed_numbers=reversed_numbers), template


def _write_broken(folder: str, spec: SeriesSpec, template: _Template, rng: np.random.Generator,
                  seed: int, index: int) -> dict[str, str]:
    """The BROKEN_KINDS files in ``folder`` (beside the series of ``spec``); returns path → expected kind."""
    paths = {name: os.path.join(folder, name) for name in BROKEN_KINDS}
    _write(paths["empty.dcm"], b"")
    _write(paths["notes.txt"], b"Notes about this study.\nNothing to see here.\n" * 20)
    noise = bytearray(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    noise[:2] = b"\xff\xfe"  # no plausible first DICOM group, and no 'DICM' at 128
    noise[128:132] = b"XXXX"
    _write(paths["random.bin"], bytes(noise))
    # a valid header (an acquisition number no slice uses), half the pixel data
    full = template.file_bytes(_file_values(_positions(spec), seed, index, 89999, 0),
                               bytes(template.pixel_bytes))
    _write(paths["truncated_pixels.dcm"], full[:len(full) - template.pixel_bytes // 2])
    description = spec.series_description.encode()
    assert template.head.count(description) == 1
    cut = template.head.index(description) + len(description) // 2
    _write(paths["truncated_header.dcm"], template.head[:cut])
    no_pixels = slice_dataset(spec, 0, 9001)
    no_pixels.save_as(paths["no_pixels.dcm"], enforce_file_format=True)
    no_position = slice_dataset(spec, 0, 9002)
    del no_position.ImagePositionPatient
    no_position.PixelData = bytes(spec.rows * spec.columns * 2)
    no_position.save_as(paths["no_position.dcm"], enforce_file_format=True)
    return {paths[name]: kind for name, kind in BROKEN_KINDS.items()}


def write_scale_tree(root: str | os.PathLike, n_files: int = 20000, seed: int = 0) -> ScaleTree:
    """Write a tree of exactly ``n_files`` files under ``root`` (an empty or new folder); returns its record.

    Files: image series (20–100 slices each, ~60 on average: ~330 series for 20,000 files), 8 LOCALIZER
    images (6 inside series, 2 forming a series of their own) and 7 broken files (``BROKEN_KINDS``).
    The same ``seed`` writes the same tree (names, UIDs, pixels, geometry; the few files pydicom writes itself,
    localizers and two broken files, get fresh SOP Instance UIDs).
    """
    started = time.perf_counter()
    root = os.fspath(root)
    rng = np.random.default_rng(seed)
    extras = LOCALIZERS_IN_SERIES + LOCALIZER_ONLY_FILES + len(BROKEN_KINDS)
    sizes = _plan_sizes(rng, n_files - extras)
    series: list[ScaleSeries] = []
    specs: list[SeriesSpec] = []
    templates: list[_Template] = []
    patient, study, left_in_study, left_in_patient, number = -1, 0, 0, 0, 1
    study_uid = ""
    for index, n_slices in enumerate(sizes):
        if left_in_study == 0:
            if left_in_patient == 0:
                patient += 1
                left_in_patient = int(rng.integers(1, 3))
            left_in_patient -= 1
            study += 1
            study_uid = _uid(seed, 1, 10000 + study)
            left_in_study = int(rng.integers(1, 4))
            number = 1
        left_in_study -= 1
        number += 1
        spec = _series_spec(rng, seed, index, n_slices, patient, study_uid, number)
        record, template = _write_series(root, rng, seed, index, spec, patient)
        series.append(record)
        specs.append(spec)
        templates.append(template)

    localizers: list[str] = []
    with_localizer = sorted(rng.choice(len(series), size=min(LOCALIZERS_IN_SERIES, len(series)), replace=False))
    for i in with_localizer:
        path = write_localizer(series[i].folder, specs[i], name="LOCALIZER.dcm")
        series[i] = _with_localizers(series[i], (path,))
        localizers.append(path)
    missing = LOCALIZERS_IN_SERIES - len(with_localizer)  # fewer series than localizers: more in the last
    for n in range(missing):
        path = write_localizer(series[-1].folder, specs[-1], name=f"LOCALIZER{n + 2}.dcm")
        series[-1] = _with_localizers(series[-1], series[-1].localizers + (path,))
        localizers.append(path)
    only = SeriesSpec(n_slices=1, rows=32, columns=32, series_description="scale localizers only",
                      series_number=99, patient_id=specs[0].patient_id, study_uid=specs[0].study_uid,
                      series_uid=_uid(seed, 2, 99999))
    only_folder = os.path.join(os.path.dirname(series[0].folder), "SE099")
    localizers += [write_localizer(only_folder, only, name=f"LOC{n:02d}.dcm") for n in range(LOCALIZER_ONLY_FILES)]

    host = int(rng.integers(len(series)))
    broken = _write_broken(series[host].folder, specs[host], templates[host], rng, seed, host)
    tree = ScaleTree(root=root, seed=seed, series=series, localizers=localizers, localizer_only_uids=[only.series_uid],
                     broken=broken, seconds=time.perf_counter() - started)
    assert tree.n_files == n_files, (tree.n_files, n_files)
    return tree


def _with_localizers(series: ScaleSeries, paths: tuple[str, ...]) -> ScaleSeries:
    return replace(series, localizers=paths)


__all__ = ["ScaleSeries", "ScaleTree", "stored_values", "write_scale_tree", "BROKEN_KINDS", "RESCALES"]
