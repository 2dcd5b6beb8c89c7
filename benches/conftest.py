"""Shared helpers for the benchmarks.

``bench_summary``: a session fixture to register a section for the end-of-run terminal summary. A benchmark
module calls ``bench_summary(title, render)``; ``render()`` is called once when the session finishes and returns
the lines to print (an empty list or None prints nothing, e.g. when benchmarks were disabled). Registering the
same title again replaces the earlier renderer, so every case of a module may register it.

``benchmarks_enabled``: a session fixture, True when this run times benchmarks (``--benchmark-enable`` given, or
``--benchmark-disable`` absent), False in the default smoke run (pyproject addopts ``--benchmark-disable``).
Modules use it to shrink their data so that the smoke run stays quick.
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


def benchmarks_are_enabled(config: pytest.Config) -> bool:
    """pytest-benchmark's own decision (its session), else its rule: disabled by ``--benchmark-disable`` unless
    ``--benchmark-enable`` is given."""
    session = getattr(config, "_benchmarksession", None)
    if session is not None:
        return not session.disabled
    try:
        disabled = config.getoption("benchmark_disable")
        enabled = config.getoption("benchmark_enable")
    except ValueError:  # pytest-benchmark not installed
        return False
    return bool(enabled or not disabled)


@pytest.fixture(scope="session")
def benchmarks_enabled(request) -> bool:
    return benchmarks_are_enabled(request.config)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    for title, render in config.stash.get(_SECTIONS, {}).items():
        lines = list(render() or [])
        if not lines:
            continue
        terminalreporter.write_sep("-", title)
        for line in lines:
            terminalreporter.write_line(line)
