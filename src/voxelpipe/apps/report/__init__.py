"""``report``: one self-contained HTML verification report of a ``convert`` output folder.

:func:`build_report` gathers what the page shows (:class:`ReportData`), :func:`write_html` renders it,
:func:`write_report` does both. Modules: ``runs`` (reading the output folder), ``checks`` (geometry checks of the
scan), ``pictures`` (planes, MIP, overlays), ``sections`` (one series), ``build`` (the report), ``html`` (the page).
"""
from voxelpipe.apps.report.build import build_report, choose_series, html_path, write_html, write_report
from voxelpipe.apps.report.checks import is_flagged, series_checks
from voxelpipe.apps.report.html import Picture, ReportData, SeriesSection, render, visible
from voxelpipe.apps.report.pictures import (
                                            CT_WINDOW,
                                            MAX_SIDE,
                                            ViewPlan,
                                            display_size,
                                            mask_centroid,
                                            read_plane,
                                            square_pixels,
                                            view_plan,
                                            view_plans,
)

__all__ = ["CT_WINDOW", "MAX_SIDE", "Picture", "ReportData", "SeriesSection", "ViewPlan", "build_report",
           "choose_series", "display_size", "html_path", "is_flagged", "mask_centroid", "read_plane", "render",
           "series_checks", "square_pixels", "view_plan", "view_plans", "visible", "write_html", "write_report"]
