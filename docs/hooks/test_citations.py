"""mkdocs hook: every test a page cites must exist.

Pages back their statements with tests cited as ``tests/<file>.py::<test_name>`` (in backticks). This hook checks,
at build time, that each cited file exists under the repository root and defines ``def <test_name>`` (a test
function, or a method of a test class); a citation that does not resolve is logged as a warning, which fails
``mkdocs build --strict``. So a guarantee cannot keep citing a test that was renamed or deleted.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.test_citations")

CITATION = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")
_ROOT = Path(__file__).resolve().parents[2]


def _defines(path: Path, name: str) -> bool:
    text = path.read_text(encoding="utf-8")
    return re.search(rf"^\s*(?:async\s+)?def {re.escape(name)}\(", text, re.MULTILINE) is not None


def on_page_markdown(markdown: str, page, config, files) -> str:
    for file, name in CITATION.findall(markdown):
        path = _ROOT / file
        if not path.is_file():
            log.warning("%s cites %s::%s, but %s does not exist", page.file.src_path, file, name, file)
        elif not _defines(path, name):
            log.warning("%s cites %s::%s, but %s defines no test %s", page.file.src_path, file, name, file, name)
    return markdown
