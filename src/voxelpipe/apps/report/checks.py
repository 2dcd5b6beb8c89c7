"""Geometry checks of one series from the scan manifest (columns of ``series_all.csv``), and the flag they raise."""
from __future__ import annotations

GANTRY_TILT_TOLERANCE_DEG = 0.05
SPACING_TOLERANCE_MM = 0.01  # uneven spacing: max - min step above this and above 1 % of the median step


def number(text: object) -> float:
    """``float(text)``, or 0.0 when ``text`` is empty or not a number."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return 0.0


def series_checks(row: dict) -> list[tuple[str, str, str, str]]:
    """The geometry checks of one manifest row.

    Args:
        row: A row of the scan's ``series_all.csv`` (column -> text); spacings in mm, tilt in degrees.

    Returns:
        (column, value, verdict, meaning) per check; verdict ``flag`` when the check says something is off,
        ``note`` for what is unusual but handled, else ``ok``.
    """
    def check(column: str, off: bool, meaning: str, verdict: str = "flag") -> tuple[str, str, str, str]:
        return column, str(row.get(column, "")), verdict if off else "ok", meaning

    lo, hi, median = (number(row.get(c)) for c in ("spacing_min", "spacing_max", "spacing_median"))
    uneven = hi - lo > max(SPACING_TOLERANCE_MM, 0.01 * median)
    repeated = number(row.get("frames_per_position")) > 1  # phases numbered one after another: not a fault
    return [
        check("missing_slices", number(row.get("missing_slices")) > 0,
              "slices missing: steps that are whole multiples (2, 3, ...) of the regular (median) step"),
        check("irregular_steps", number(row.get("irregular_steps")) > 0,
              "steps that are no whole multiple of the regular step (uneven spacing; convert --uneven)"),
        check("duplicate_positions", number(row.get("duplicate_positions")) > 0,
              "images beyond the usual number at a position"),
        check("incomplete_positions", number(row.get("incomplete_positions")) > 0,
              "positions with fewer images than the others"),
        ("spacing_min..spacing_max", f"{row.get('spacing_min', '')}..{row.get('spacing_max', '')}",
         "flag" if uneven else "ok", "uneven steps between slices (mm)"),
        check("gantry_tilt_deg", abs(number(row.get("gantry_tilt_deg"))) > GANTRY_TILT_TOLERANCE_DEG,
              "slices not stacked along their normal (degrees, signed; convert --tilt)"),
        check("instance_order_matches_position", str(row.get("instance_order_matches_position")) == "False",
              "InstanceNumber order follows the positions", "note" if repeated else "flag"),
        check("orientation_consistent", str(row.get("orientation_consistent")) == "False",
              "one orientation in the series"),
        check("split_reason", bool(row.get("split_reason")), "why the series was split"),
        check("rescale_varies", str(row.get("rescale_varies")) == "True", "rescale differs between images "
              "(usual for PET)", "note"),
        check("frames_per_position", number(row.get("frames_per_position")) > 1,
              "images per position (> 1: 4-D volume)", "note"),
        check("localizers_skipped", number(row.get("localizers_skipped")) > 0, "localizer images left out",
              "note"),
        check("mosaic", number(row.get("mosaic")) > 0, "Siemens MOSAIC: tiles per file, unpacked into slices",
              "note"),
    ]


def regrid_flagged(summary_row: dict | None) -> bool:
    """True when a convert summary row says the series was uneven or tilted: regridded (``regrid`` set), kept
    unevenly spaced (``uniform`` False) or kept sheared (``sheared`` True)."""
    if not summary_row:
        return False
    return bool(summary_row.get("regrid")) or str(summary_row.get("uniform")) == "False" \
        or str(summary_row.get("sheared")) == "True"


def is_flagged(row: dict | None) -> bool:
    """True when a check of the manifest row ``row`` says ``flag``; False for None or an empty row."""
    return bool(row) and any(verdict == "flag" for _, _, verdict, _ in series_checks(row))


__all__ = ["GANTRY_TILT_TOLERANCE_DEG", "SPACING_TOLERANCE_MM", "is_flagged", "number", "regrid_flagged",
           "series_checks"]
