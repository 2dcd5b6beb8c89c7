"""Grouping image records into series and checking each series' geometry.

A SeriesInstanceUID becomes one series, or several parts when it mixes orientations or image sizes (the
reason is recorded). A SeriesInstanceUID holding several SeriesNumbers is first split by SeriesNumber, each part
keyed by :func:`~voxelpipe.core.keys.series_number_key`. LOCALIZER / SCOUT / TOPOGRAM images and screen
captures (Secondary Capture SOP class; or DERIVED\\SECONDARY images all at one position) are left out and
counted; a series of nothing else gets a row with no slices and ``not_volume_reason`` saying why. Slices are
ordered by ImagePositionPatient projected on the slice normal, ascending, then InstanceNumber, then path.
Two SeriesInstanceUIDs (or SeriesNumbers) that get the same key are never merged: neither becomes a series
(:class:`KeyClash`, its reason naming both).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from voxelpipe.core.geometry import Steps, cluster_positions, orientation_label, signed_tilt_degrees, slice_normal
from voxelpipe.core.keys import key_clashes, series_key, series_number_key
from voxelpipe.dicom.records import FileRecord, is_derived_secondary

ORIENTATION_TOLERANCE = 1e-3  # max difference of direction cosines within one orientation

SERIES_COLUMNS = [
    "series_key", "study_instance_uid", "series_instance_uid", "modality", "series_number", "series_description",
    "n_files", "n_bytes", "rows", "columns", "n_slices", "n_positions", "spacing_min", "spacing_max",
    "spacing_median", "max_gap_mm", "missing_slices", "duplicate_positions", "incomplete_positions",
    "gantry_tilt_deg", "instance_order_matches_position", "rescale_varies", "orientation_consistent",
    "localizers_skipped", "frames_per_position", "split_reason", "orientation", "image_orientation",
    "pixel_spacing", "first_position_mm", "last_position_mm", "frame_of_reference_uid", "transfer_syntaxes",
    "multiframe_files", "mosaic", "screen_captures_skipped", "not_volume_reason", "irregular_steps",
    "gantry_tilt_source",
]
LOCALIZERS_ONLY = "localizer images only"
SCREEN_CAPTURES_ONLY = "screen captures only (Secondary Capture or DERIVED\\SECONDARY without volume geometry)"
FILE_COLUMNS = [
    "series_key", "path", "sop_instance_uid", "instance_number", "frames", "position_mm", "image_position",
    "slope", "intercept", "size_bytes", "transfer_syntax", "pixel_offset", "pixel_length",
]


@dataclass
class Series:
    """One image series (or one part of a split series) with its files in slice order."""

    key: str
    records: list[FileRecord]
    row: dict[str, object]
    file_rows: list[dict[str, object]] = field(default_factory=list)


@dataclass
class KeyClash:
    """The files of one SeriesInstanceUID (or of one SeriesNumber inside it) whose series key another one of the
    same scan gets too: they are never merged into that series; none of them becomes a series."""

    key: str
    series_uid: str
    records: list[FileRecord]
    reason: str


def group_series(records: list[FileRecord], secret: str | None = None) -> tuple[list[Series], list[KeyClash]]:
    """Group image records by SeriesInstanceUID, split by orientation/size, and check every part.

    Returns the series and the key clashes: when two SeriesInstanceUIDs (or SeriesNumbers of one) get the same
    key, neither becomes a series; each is returned as a :class:`KeyClash` whose reason names both."""
    by_uid: dict[str, list[FileRecord]] = defaultdict(list)
    for record in records:
        by_uid[record.series_uid].append(record)
    # (uid, SeriesNumber or None) -> its key, files and split note; sorted by UID, then SeriesNumber
    parts: dict[tuple[str, str | None], tuple[str, list[FileRecord], str]] = {}
    for uid in sorted(by_uid):
        members = sorted(by_uid[uid], key=lambda r: r.path)
        numbers = sorted({r.series_number for r in members}, key=_number_order)
        if len(numbers) == 1:
            parts[(uid, None)] = (series_key(uid, secret), members, "")
            continue
        note = f"SeriesInstanceUID holds {len(numbers)} SeriesNumbers ({', '.join(n or '?' for n in numbers)})"
        for number in numbers:
            group = [r for r in members if r.series_number == number]
            parts[(uid, number)] = (series_number_key(uid, number, secret), group, note)
    clashes = key_clashes({name: key for name, (key, _, _) in parts.items()})
    result: list[Series] = []
    failed: list[KeyClash] = []
    for name, (key, members, note) in parts.items():
        if key in clashes:
            others = ", ".join(_source_text(other) for other in clashes[key] if other != name)
            reason = (f"series key {key} of {_source_text(name)} is also the key of {others}: neither is used "
                      "(a key names one series)")
            failed.append(KeyClash(key, name[0], members, reason))
        else:
            result.extend(_group(key, name[0], members, note))
    return result, failed


def _source_text(name: tuple[str, str | None]) -> str:
    uid, number = name
    return f"SeriesInstanceUID {uid}" + (f" SeriesNumber {number or '?'}" if number is not None else "")


def _number_order(number: str) -> tuple:
    try:
        return (0, float(number), number)
    except ValueError:
        return (1, 0.0, number)


def _group(key: str, uid: str, members: list[FileRecord], note: str) -> list[Series]:
    """The series of the files of one SeriesInstanceUID (and SeriesNumber): localizers and screen captures left
    out and counted, the rest split by orientation / size; ``note`` starts every part's split reason."""
    localizers = [r for r in members if r.is_localizer]
    captures = [r for r in members if r.is_screen_capture and not r.is_localizer]
    images = [r for r in members if not r.is_localizer and not r.is_screen_capture]
    if not images and not captures:
        return [_localizer_only(key, uid, localizers, note)]
    if not images:
        return [_screen_captures(key, uid, captures, note, len(localizers))]
    parts, reason = _split(images)
    reason = "; ".join(text for text in (note, reason) if text)
    consistent = "orientation" not in reason
    result = []
    for index, part in enumerate(parts):
        part_key = key if len(parts) == 1 else f"{key}_{index + 1}"
        if _degenerate_capture(part):
            result.append(_screen_captures(part_key, uid, part, reason, 0))
            continue
        series = _describe(part_key, uid, part, reason)
        series.row["orientation_consistent"] = consistent and _orientations_within(part)
        series.row["localizers_skipped"] = len(localizers) if index == 0 else 0
        series.row["screen_captures_skipped"] = len(captures) if index == 0 else 0
        result.append(series)
    return result


def _degenerate_capture(records: list[FileRecord]) -> bool:
    """DERIVED\\SECONDARY images (screen captures such as an exam summary) that cannot be a volume: several
    instances (distinct SOPInstanceUIDs: copies of one instance are not several captures, and convert compares
    them), every one at the same position."""
    distinct = {r.sop_instance_uid or r.path for r in records}
    if len(distinct) < 2 or not all(is_derived_secondary(r.image_type) for r in records):
        return False
    first = np.asarray(records[0].slices[0].ipp)
    return all(np.allclose(np.asarray(s.ipp), first, atol=1e-3) for r in records for s in r.slices)


def _same_orientation(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return max(abs(x - y) for x, y in zip(a, b)) <= ORIENTATION_TOLERANCE


def _orientations_within(records: list[FileRecord]) -> bool:
    first = records[0].slices[0].iop
    return all(_same_orientation(first, s.iop) for r in records for s in r.slices)


def _split(images: list[FileRecord]) -> tuple[list[list[FileRecord]], str]:
    """Split files by (image size, orientation); largest part first. Returns parts and the reason text."""
    groups: list[tuple[tuple[int, int], tuple[float, ...], list[FileRecord]]] = []
    for record in images:
        size = (record.rows, record.columns)
        iop = record.slices[0].iop
        for g_size, g_iop, members in groups:
            if g_size == size and _same_orientation(g_iop, iop):
                members.append(record)
                break
        else:
            groups.append((size, iop, [record]))
    if len(groups) == 1:
        return [groups[0][2]], ""
    groups.sort(key=lambda g: (-sum(r.frames for r in g[2]), g[0], g[1]))
    reasons = []
    if len({g[0] for g in groups}) > 1:
        sizes = ", ".join(f"{r}x{c}" for r, c in dict.fromkeys(g[0] for g in groups))
        reasons.append(f"image size ({sizes})")
    iops = [g[1] for g in groups]
    if any(not _same_orientation(iops[0], other) for other in iops[1:]):
        labels = ", ".join(dict.fromkeys(orientation_label(i) for i in iops))
        reasons.append(f"orientation ({labels})")
    return [g[2] for g in groups], f"split into {len(groups)} parts by " + " and ".join(reasons)


def _localizer_only(key: str, uid: str, localizers: list[FileRecord], note: str) -> Series:
    """The row of a series of localizers only: no files listed, no slices."""
    first = localizers[0]
    row = {column: "" for column in SERIES_COLUMNS}
    row.update(
        series_key=key, study_instance_uid=first.study_uid, series_instance_uid=uid, modality=first.modality,
        series_number=first.series_number, series_description=first.series_description, n_files=0, n_bytes=0,
        rows=first.rows, columns=first.columns, n_slices=0, n_positions=0, localizers_skipped=len(localizers),
        screen_captures_skipped=0, split_reason="; ".join(text for text in (note, "only localizer images") if text),
        not_volume_reason=LOCALIZERS_ONLY,
    )
    return Series(key=key, records=[], row=row)


def _screen_captures(key: str, uid: str, captures: list[FileRecord], note: str, localizers: int) -> Series:
    """The row of a series of screen captures only: its files are listed (2-D mode converts them) but it has
    no slices, so no volume is made of it."""
    series = _describe(key, uid, captures, note)
    series.row.update(n_slices=0, n_positions=0, missing_slices=0, duplicate_positions=0, incomplete_positions=0,
                      localizers_skipped=localizers, screen_captures_skipped=len(captures),
                      not_volume_reason=SCREEN_CAPTURES_ONLY)
    return series


def _describe(key: str, uid: str, records: list[FileRecord], split_reason: str) -> Series:
    """Order the slices of one part and compute its checks."""
    first = records[0]
    normal = slice_normal(first.slices[0].iop)
    frames = [(r, s) for r in records for s in r.slices]
    ipps = np.array([s.ipp for _, s in frames], dtype=np.float64)
    positions = ipps @ normal
    unique, groups = cluster_positions(positions)
    counts = np.bincount(groups)
    mode = Counter(counts.tolist()).most_common(1)[0][0]
    steps = np.diff(unique)
    median = float(np.median(steps)) if len(steps) else 0.0
    kinds = Steps(unique)
    rescale = {(s.slope, s.intercept) for _, s in frames}
    tilt, tilt_source = _gantry_tilt(first, ipps[np.argmin(positions)], ipps[np.argmax(positions)])

    file_position = {id(r): float(np.asarray(r.slices[0].ipp) @ normal) for r in records}
    ordered = sorted(records, key=lambda r: (round(file_position[id(r)], 3),
                                             r.instance_number if r.instance_number is not None else 0, r.path))
    row = {
        "series_key": key, "study_instance_uid": first.study_uid, "series_instance_uid": uid,
        "modality": first.modality, "series_number": first.series_number,
        "series_description": first.series_description, "n_files": len(records),
        "n_bytes": sum(r.size for r in records), "rows": first.rows, "columns": first.columns,
        "n_slices": len(frames), "n_positions": len(unique),
        "spacing_min": _mm(steps.min()) if len(steps) else "", "spacing_max": _mm(steps.max()) if len(steps) else "",
        "spacing_median": _mm(median) if len(steps) else "", "max_gap_mm": _mm(steps.max()) if len(steps) else "",
        "missing_slices": kinds.missing, "irregular_steps": kinds.irregular, "gantry_tilt_source": tilt_source,
        "duplicate_positions": int(np.sum(np.maximum(counts - mode, 0))),
        "incomplete_positions": int(np.sum(counts < mode)),
        "gantry_tilt_deg": round(tilt, 3),
        "instance_order_matches_position": _instance_order_matches(records, file_position),
        "rescale_varies": len(rescale) > 1, "orientation_consistent": True, "localizers_skipped": 0,
        "frames_per_position": mode, "split_reason": split_reason,
        "orientation": orientation_label(first.slices[0].iop),
        "image_orientation": "\\".join(f"{v:g}" for v in first.slices[0].iop),
        "pixel_spacing": first.pixel_spacing,
        "first_position_mm": _mm(unique[0]), "last_position_mm": _mm(unique[-1]),
        "frame_of_reference_uid": first.frame_of_reference_uid,
        "transfer_syntaxes": "\\".join(sorted({r.transfer_syntax for r in records})),
        "multiframe_files": sum(1 for r in records if r.frames > 1 and r.mosaic is None),
        "mosaic": first.mosaic.n_images if first.mosaic is not None else "",
        "screen_captures_skipped": 0, "not_volume_reason": "",
    }
    file_rows = [
        {
            "series_key": key, "path": r.path, "sop_instance_uid": r.sop_instance_uid,
            "instance_number": "" if r.instance_number is None else r.instance_number, "frames": r.frames,
            "position_mm": _mm(file_position[id(r)]), "image_position": "\\".join(f"{v:g}" for v in r.slices[0].ipp),
            "slope": r.slices[0].slope, "intercept": r.slices[0].intercept, "size_bytes": r.size,
            "transfer_syntax": r.transfer_syntax, "pixel_offset": r.pixel_offset, "pixel_length": r.pixel_length,
        }
        for r in ordered
    ]
    return Series(key=key, records=ordered, row=row, file_rows=file_rows)


TILT_AGREEMENT_DEG = 1.0  # GantryDetectorTilt is reported when its magnitude is this close to the geometry's


def _gantry_tilt(first: FileRecord, low_ipp: np.ndarray, high_ipp: np.ndarray) -> tuple[float, str]:
    """Signed gantry tilt (degrees) and where it came from: GantryDetectorTilt (0018,1120) as written when
    present and its magnitude agrees with the geometry's within ``TILT_AGREEMENT_DEG``, else the geometry's
    signed angle (``signed_tilt_degrees``: normal -> stack direction, right-handed about the row cosine)."""
    measured = signed_tilt_degrees(low_ipp, high_ipp, first.slices[0].iop)
    try:
        tag = float(first.gantry_tilt) if first.gantry_tilt else None
    except ValueError:
        tag = None
    if tag is not None and abs(abs(tag) - abs(measured)) <= TILT_AGREEMENT_DEG:
        return tag, "GantryDetectorTilt (0018,1120)"
    return measured, "geometry"


def _instance_order_matches(records: list[FileRecord], position: dict[int, float]) -> bool | str:
    """True when ordering files by InstanceNumber gives monotonic positions; '' when numbers are missing."""
    if any(r.instance_number is None for r in records):
        return ""
    by_instance = sorted(records, key=lambda r: (r.instance_number, r.path))
    values = np.array([position[id(r)] for r in by_instance])
    steps = np.diff(values)
    return bool(np.all(steps >= -1e-3) or np.all(steps <= 1e-3))


def _mm(value: float) -> float:
    return round(float(value), 4)
