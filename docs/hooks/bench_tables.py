"""mkdocs hook: benchmark tables generated from pytest-benchmark JSON at build time.

The page ``benchmarks.md`` holds the marker ``<!-- bench-tables -->``; this hook replaces it with tables built from
every ``docs/benchmarks/*.json`` file (the output of ``pytest --benchmark-json=FILE``). Per file: the machine and
the run's date, then one table per benchmark group (the ``group`` a benchmark sets, else its test function name),
one row per implementation (the ``impl`` parameter, else the parametrize id in brackets), with min and median in
milliseconds and each row's median divided by the ``voxelpipe`` row's median (with several voxelpipe rows, such as
``voxelpipe-1worker`` and ``voxelpipe-2workers``, the fastest of them). A group without a voxelpipe row gets no
ratio column and a note; a benchmark without statistics (skipped) is left out.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

MARKER = "<!-- bench-tables -->"
PAGE = "benchmarks.md"
OURS = "voxelpipe"

log = logging.getLogger("mkdocs.hooks.bench_tables")


def _implementation(bench: dict) -> str:
    params = bench.get("params") or {}
    if "impl" in params:
        return str(params["impl"])
    if bench.get("param") not in (None, ""):
        return str(bench["param"])
    match = re.search(r"\[(.*)\]$", bench.get("name", ""))
    return match.group(1) if match else bench.get("name", "?")


def _function(bench: dict) -> str:
    return re.sub(r"\[.*\]$", "", bench.get("name", "?"))


def _group(bench: dict) -> str:
    return bench.get("group") or _function(bench)


def _is_ours(implementation: str) -> bool:
    return implementation == OURS or implementation.split("-")[0] == OURS


def _ms(seconds: float) -> str:
    ms = seconds * 1000.0
    if ms >= 100:
        return f"{ms:,.0f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def _machine(data: dict) -> str:
    info = data.get("machine_info") or {}
    cpu = info.get("cpu") or {}
    parts = [
        cpu.get("brand_raw") or info.get("processor") or "",
        f"{cpu['count']} cores" if cpu.get("count") else "",
        f"Python {info['python_version']}" if info.get("python_version") else "",
        info.get("system", ""),
    ]
    when = data.get("datetime", "")
    commit = (data.get("commit_info") or {}).get("id", "")
    text = ", ".join(p for p in parts if p) or "machine not recorded"
    if when:
        text += f"; run {when[:19].replace('T', ' ')} UTC"
    if commit:
        text += f"; commit `{commit[:10]}`"
    return text


def render_file(path: Path) -> str:
    """Markdown tables for one pytest-benchmark JSON file."""
    data = json.loads(path.read_text(encoding="utf-8"))
    groups: dict[str, list[dict]] = {}
    for bench in data.get("benchmarks", []):
        stats = bench.get("stats") or {}
        if stats.get("median") is None:
            continue
        groups.setdefault(_group(bench), []).append(bench)
    lines = [f"### `{path.name}`", "", _machine(data), ""]
    if not groups:
        return "\n".join(lines + ["No timed benchmarks in this file.", ""])
    for group, benches in groups.items():
        ours = [b for b in benches if _is_ours(_implementation(b))]
        exact = [b for b in ours if _implementation(b) == OURS]
        base = (exact or sorted(ours, key=lambda b: b["stats"]["median"]) or [None])[0]
        reference = base["stats"]["median"] if base else None
        functions = sorted({_function(b) for b in benches})
        lines += [f"#### {group}", "", f"Test: {', '.join(f'`{f}`' for f in functions)}.", ""]
        if reference:
            lines += ["| Implementation | Min (ms) | Median (ms) | Rounds | Median / voxelpipe median |",
                      "| --- | ---: | ---: | ---: | ---: |"]
        else:
            lines += ["| Implementation | Min (ms) | Median (ms) | Rounds |", "| --- | ---: | ---: | ---: |"]
        for bench in sorted(benches, key=lambda b: (not _is_ours(_implementation(b)), b["stats"]["median"])):
            stats = bench["stats"]
            name = _implementation(bench)
            label = f"**{name}**" if _is_ours(name) else name
            row = f"| {label} | {_ms(stats['min'])} | {_ms(stats['median'])} | {stats.get('rounds', '')} |"
            if reference:
                row += f" {stats['median'] / reference:.2f}× |"
            lines.append(row)
        lines.append("")
        if base is None:
            lines += ["No ratio column: this group has no `voxelpipe` row.", ""]
        elif len(ours) > 1:
            lines += [f"Ratios are against `{_implementation(base)}`, the "
                      f"{'plain' if exact else 'fastest'} voxelpipe row.", ""]
    return "\n".join(lines)


def render_benchmarks(folder: Path) -> str:
    files = sorted(folder.glob("*.json"))
    if not files:
        return "No benchmark results are stored in `docs/benchmarks/` yet; see *Regenerating* above.\n"
    parts = []
    for path in files:
        try:
            parts.append(render_file(path))
        except (OSError, ValueError, KeyError, TypeError) as exc:  # a broken file must not break the site
            log.info("bench_tables: skipping %s: %s", path, exc)
            parts.append(f"### `{path.name}`\n\nCould not read this file: {exc}\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != PAGE or MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render_benchmarks(Path(config["docs_dir"]) / "benchmarks"))
