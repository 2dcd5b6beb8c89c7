"""The HTML verification report of a convert output folder."""
from voxelpipe.apps.report.build import build_report, write_html

__all__ = ["build_report", "write_html"]
