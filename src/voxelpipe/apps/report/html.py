"""The HTML of the verification report: one self-contained file (inline CSS, images as base64 PNG, no script,
no external URL) built from plain data (:class:`ReportData`). Reading the convert output and drawing the
pictures is done by :mod:`voxelpipe.apps.report.build` and the modules it uses; this module only lays them out.

Pictures are uint8 arrays (rows, columns) grey or (rows, columns, 3) RGB, encoded as PNG with Pillow and shown
in 256-px boxes (aspect kept, small images enlarged without smoothing). The page is at most 1200 px wide.

Every text (table cells, captions, attributes, the title) goes through :func:`e`, which escapes markup and shows
the characters HTML forbids in a document visibly (:func:`visible`), so DICOM values, file names and failure
reasons holding NUL or other control characters never reach the page raw.
"""
from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from voxelpipe.core.errors import InputError
from voxelpipe.core.text import INVISIBLE, visible
from voxelpipe.stores.images import PNG_LEVEL

BOX_PX = 256  # side of the box every picture is shown in (CSS px)

CSS = f"""
*{{box-sizing:border-box}}
body{{margin:0;background:#f3f4f6;color:#1f2328;font:13px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
Helvetica,Arial,sans-serif}}
main{{max-width:1200px;margin:0 auto;padding:10px 18px 40px}}
h1{{font-size:20px;margin:8px 0 2px}} h2{{font-size:16px;margin:22px 0 6px;border-bottom:1px solid #c9ced4}}
h3{{font-size:14px;margin:0 0 6px}} h4{{font-size:13px;margin:8px 0 4px}}
p{{margin:4px 0}} .muted{{color:#5c6670}}
table{{border-collapse:collapse;margin:4px 0 10px;background:#fff}}
th,td{{border:1px solid #d3d8de;padding:2px 7px;text-align:left;vertical-align:top}}
th{{background:#e8ebef;font-weight:600}} td.n{{text-align:right;font-variant-numeric:tabular-nums}}
td code,p code{{font-size:12px;word-break:break-all}}
tr.flag td{{background:#fcebd2}} tr.note td{{background:#eef4fb}} tr.problem td{{background:#f9dcd9}}
.badge{{display:inline-block;padding:0 7px;border-radius:9px;font-size:11px;color:#fff;background:#6c757d;
margin-left:4px}}
.b-failed{{background:#b03a2e}} .b-flagged{{background:#b9770e}} .b-sampled{{background:#2471a3}}
.b-problem{{background:#7d3c98}}
nav.toc ol{{columns:3 260px;margin:4px 0;padding-left:22px}} nav.toc li{{break-inside:avoid}}
a{{color:#1f5f99}}
section.series{{background:#fff;border:1px solid #d3d8de;border-radius:4px;padding:10px 14px;margin:14px 0}}
.reason{{background:#f9dcd9;padding:4px 8px;border-radius:3px;white-space:pre-wrap;word-break:break-word}}
.cols{{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1.25fr);gap:16px;align-items:start}}
.cols table{{width:100%}} .cols td{{overflow-wrap:anywhere}} table.checks td:not(:last-child){{white-space:nowrap}}
@media (max-width:900px){{.cols{{grid-template-columns:minmax(0,1fr)}}}}
.pics{{display:flex;flex-wrap:wrap;gap:8px;margin:6px 0}}
figure{{margin:0;border:1px solid #d3d8de;background:#fafbfc;padding:4px}}
figure img{{display:block;width:{BOX_PX}px;height:{BOX_PX}px;object-fit:contain;background:#000;
image-rendering:pixelated}}
figcaption{{font-size:11px;color:#5c6670;max-width:{BOX_PX}px}}
.swatch{{display:inline-block;width:10px;height:10px;border:1px solid #333;margin-right:4px}}
"""


@dataclass
class Picture:
    """One image of a series: ``kind`` axial / coronal / sagittal / mip / overlay; ``pixels`` uint8 (rows, cols)
    or (rows, cols, 3)."""

    kind: str
    caption: str
    pixels: np.ndarray


@dataclass
class SeriesSection:
    """What the report shows for one series. ``roles``: why it is shown (failed / flagged / sampled);
    ``facts``: (label, value) rows of the geometry table; ``checks``: (column, value, verdict, meaning) with
    verdict ok / flag / note; ``legend``: (mask name, RGB, detail); ``problem``: why pictures are missing."""

    key: str
    status: str
    roles: list[str]
    reason: str = ""
    facts: list[tuple[str, str]] = field(default_factory=list)
    checks: list[tuple[str, str, str, str]] = field(default_factory=list)
    pictures: list[Picture] = field(default_factory=list)
    legend: list[tuple[str, tuple[int, int, int], str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problem: str = ""


@dataclass
class ReportData:
    """Everything on the page. ``status_counts``: status → series; ``failure_groups``: (reason, series keys);
    ``unreadable_groups``: (kind, reason, count, example paths); ``runs``: one dict per summary file;
    ``problems``: (series key, what could not be read)."""

    out: str
    generated: str
    version: str
    facts: list[tuple[str, str]]
    status_counts: dict[str, int]
    failure_groups: list[tuple[str, list[str]]]
    unreadable_total: int
    unreadable_groups: list[tuple[str, str, int, list[str]]]
    unreadable_source: str
    runs: list[dict]
    problems: list[tuple[str, str]]
    sections: list[SeriesSection]
    notes: list[str] = field(default_factory=list)


# characters that are a parse error in an HTML document (WHATWG "control" and "noncharacter" code points, less
# the ASCII whitespace tab, newline and carriage return) and lone surrogates (undecodable bytes of file names)
def e(value: object) -> str:
    """HTML-escaped text of ``value``, its forbidden characters shown by :func:`visible`."""
    return html.escape(visible("" if value is None else str(value)), quote=True)


def png_data_uri(pixels: np.ndarray) -> str:
    """``data:image/png;base64,...`` of a uint8 grey (rows, cols) or RGB (rows, cols, 3) array."""
    data = np.ascontiguousarray(pixels)
    if data.dtype != np.uint8 or data.ndim not in (2, 3) or (data.ndim == 3 and data.shape[2] != 3):
        raise InputError(f"report picture must be uint8 (rows, cols) or (rows, cols, 3), got {data.dtype} "
                         f"{data.shape}")
    buffer = io.BytesIO()
    Image.fromarray(data).save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, table_id: str = "", cls: str = "",
          row_classes: Sequence[str] | None = None, numeric: Sequence[int] = ()) -> str:
    """A table; ``rows`` hold HTML already (escape text with :func:`e`); ``numeric``: right-aligned columns."""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = []
    for index, row in enumerate(rows):
        row_cls = row_classes[index] if row_classes else ""
        cells = "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        body.append(f'<tr class="{row_cls}">{cells}</tr>' if row_cls else f"<tr>{cells}</tr>")
    ident = (f' id="{e(table_id)}"' if table_id else "") + (f' class="{e(cls)}"' if cls else "")
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def series_anchor(key: str) -> str:
    """The HTML id of a series' section."""
    return "series-" + key


def _link(key: str) -> str:
    return f'<a href="#{e(series_anchor(key))}">{e(key)}</a>'


def _badges(roles: Iterable[str]) -> str:
    return "".join(f'<span class="badge b-{e(r)}">{e(r)}</span>' for r in roles)


def _summary(data: ReportData) -> str:
    parts = ['<h2 id="summary">Run summary</h2>']
    total = sum(data.status_counts.values())
    rows = [(f"{e(status)}", str(count)) for status, count in data.status_counts.items()]
    parts.append(table(["status", "series"], rows + [("<b>total</b>", f"<b>{total}</b>")], table_id="status-counts",
                       numeric=[1]))
    parts.append(table(["measure", "value"], [(e(k), e(v)) for k, v in data.facts], table_id="run-facts"))
    for note in data.notes:
        parts.append(f'<p class="muted">{e(note)}</p>')
    if data.runs:
        headers = ["summary", "series", "done", "skipped", "failed", "files", "MB in", "MB out", "ratio",
                   "seconds", "files/s", "MB/s"]
        rows = [[e(r.get(h, "")) for h in headers] for r in data.runs]
        parts.append("<h4>Runs (one per summary file)</h4>")
        parts.append(table(headers, rows, table_id="runs", numeric=list(range(1, len(headers)))))

    parts.append('<h2 id="failures">Failure reasons</h2>')
    if data.failure_groups:
        rows = [(f"<code>{e(reason)}</code>", str(len(keys)), ", ".join(_link(k) for k in keys))
                for reason, keys in data.failure_groups]
        parts.append(table(["reason", "series", "keys"], rows, table_id="failure-groups", numeric=[1]))
    else:
        parts.append('<p class="muted">No series failed.</p>')

    parts.append('<h2 id="unreadable">Unreadable files</h2>')
    source = f' (from <code>{e(data.unreadable_source)}</code>)' if data.unreadable_source else ""
    parts.append(f'<p><span id="unreadable-total">{data.unreadable_total}</span> file(s) found by the scan were '
                 f"not used{source}.</p>")
    if data.unreadable_groups:
        rows = [(e(kind), f"<code>{e(reason)}</code>", str(count), "<br>".join(f"<code>{e(p)}</code>" for p in ex))
                for kind, reason, count, ex in data.unreadable_groups]
        parts.append(table(["kind", "reason", "files", "examples"], rows, table_id="unreadable-groups",
                           numeric=[2]))

    parts.append('<h2 id="problems">Report problems</h2>')
    if data.problems:
        rows = [(_link(key), f"<code>{e(what)}</code>") for key, what in data.problems]
        parts.append(table(["series", "problem"], rows, table_id="problems",
                           row_classes=["problem"] * len(rows)))
    else:
        parts.append('<p class="muted">Every volume shown could be read.</p>')
    return "\n".join(parts)


def _figure(picture: Picture, key: str) -> str:
    rows, cols = picture.pixels.shape[:2]
    return (f'<figure><img src="{png_data_uri(picture.pixels)}" data-kind="{e(picture.kind)}" '
            f'data-series="{e(key)}" alt="{e(picture.kind)} {e(key)}" title="{cols}x{rows} px">'
            f"<figcaption>{e(picture.caption)}</figcaption></figure>")


def _section(section: SeriesSection) -> str:
    roles = " ".join(section.roles)
    parts = [f'<section class="series" id="{e(series_anchor(section.key))}" data-key="{e(section.key)}" '
             f'data-status="{e(section.status)}" data-roles="{e(roles)}">',
             f"<h3>{e(section.key)} <span class=\"muted\">{e(section.status)}</span>{_badges(section.roles)}"
             f"{_badges(['problem']) if section.problem else ''}</h3>"]
    if section.reason:
        parts.append(f'<p class="reason">{e(section.reason)}</p>')
    if section.problem:
        parts.append(f'<p class="reason problem">could not draw the pictures: {e(section.problem)}</p>')
    if section.pictures:
        parts.append('<div class="pics">' + "".join(_figure(p, section.key) for p in section.pictures) + "</div>")
    if section.legend:
        items = "".join(f'<span style="margin-right:12px"><span class="swatch" '
                        f'style="background:rgb({r},{g},{b})"></span>{e(name)} <span class="muted">{e(detail)}</span>'
                        f"</span>" for name, (r, g, b), detail in section.legend)
        parts.append(f'<p class="legend">masks: {items}</p>')
    for note in section.notes:
        parts.append(f'<p class="muted">{e(note)}</p>')
    columns = []
    if section.facts:
        columns.append("<div><h4>Geometry</h4>" + table(["item", "value"], [(e(k), e(v)) for k, v in section.facts])
                       + "</div>")
    if section.checks:
        rows = [(f"<code>{e(c)}</code>", e(v), e(verdict), e(meaning)) for c, v, verdict, meaning in section.checks]
        classes = [verdict if verdict in ("flag", "note") else "" for _, _, verdict, _ in section.checks]
        columns.append("<div><h4>Checks (scan)</h4>" + table(["column", "value", "verdict", "meaning"], rows,
                                                              cls="checks", row_classes=classes) + "</div>")
    if columns:
        parts.append('<div class="cols">' + "".join(columns) + "</div>")
    parts.append("</section>")
    return "\n".join(parts)


def _toc(data: ReportData) -> str:
    items = "".join(f'<li><a href="#{e(series_anchor(s.key))}">{e(s.key)}</a>{_badges(s.roles)}'
                    f"{_badges(['problem']) if s.problem else ''}</li>" for s in data.sections)
    return ('<nav class="toc"><h2>Contents</h2><p><a href="#summary">Run summary</a> · '
            '<a href="#failures">Failure reasons</a> · <a href="#unreadable">Unreadable files</a> · '
            '<a href="#problems">Report problems</a> · <a href="#series">Series</a></p>'
            + (f"<ol>{items}</ol>" if items else "") + "</nav>")


def render(data: ReportData) -> str:
    """The whole HTML document."""
    sections = "\n".join(_section(s) for s in data.sections)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>voxelpipe report: {e(data.out)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<h1>voxelpipe verification report</h1>
<p class="muted">output folder <code>{e(data.out)}</code> · written {e(data.generated)} ·
voxelpipe {e(data.version)}</p>
{_toc(data)}
{_summary(data)}
<h2 id="series">Series ({len(data.sections)})</h2>
<p class="muted">Every failed or flagged series and a seeded random sample of the converted ones. Slices are the
middle array plane across each patient axis, shown as radiologists do (axial: anterior up, patient right on the
left; coronal: superior up, patient right on the left; sagittal: superior up, anterior on the left), resampled to
square millimetre pixels; the MIP is an anterior maximum intensity projection (same layout as coronal).</p>
{sections or '<p class="muted">No series to show.</p>'}
</main>
</body>
</html>
"""


__all__ = ["Picture", "SeriesSection", "ReportData", "render", "png_data_uri", "table", "e", "visible",
           "series_anchor", "BOX_PX", "INVISIBLE"]
