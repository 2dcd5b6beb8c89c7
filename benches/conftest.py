"""Shared helpers for the benchmarks.

``bench_summary``: a session fixture to register a section for the end-of-run terminal summary. A benchmark
module calls ``bench_summary(title, render)``; ``render()`` is called once when the session finishes and returns
the lines to print (an empty list or None prints nothing, e.g. when benchmarks were disabled). Registering the
same title again replaces the earlier renderer, so every case of a module may register it.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest

_SECTIONS = pytest.StashKey[dict]()


@pytest.fixture(scope="session")
def bench_summary(request) -> Callable[[str, Callable[[], Iterable[str] | None]], None]:
    sections = request.config.stash.setdefault(_SECTIONS, {})

    def register(title: str, render: Callable[[], Iterable[str] | None]) -> None:
        sections[title] = render

    return register


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    for title, render in config.stash.get(_SECTIONS, {}).items():
        lines = list(render() or [])
        if not lines:
            continue
        terminalreporter.write_sep("-", title)
        for line in lines:
            terminalreporter.write_line(line)
