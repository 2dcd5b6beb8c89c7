"""Shared fixtures, markers and the end-of-run tables of the benchmarks.

Every item under benches/ is marked ``bench`` at collection; one that uses the ``shared_data`` fixture is also
marked ``real_data``. Markers only select: ``python -m pytest`` still runs every benchmark once (untimed, pyproject
addopts ``--benchmark-disable``); ``-m "not bench"`` leaves them out.

``benchmarks_enabled``: a session fixture, True when this run times benchmarks (``--benchmark-enable`` given, or
``--benchmark-disable`` absent), False in the default smoke run. Modules use it to shrink their data so that the
smoke run stays quick.

``shared_data``: the real DICOM test data (``$VOXELPIPE_TEST_DATA``, else ../shared/data beside the repository);
the case skips when it is absent.

At the end of a timed run every module's ``_common.RatioTable`` with timed rows is printed in the terminal summary.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from _common import SHARED_DATA_SKIP, render_tables, shared_data_root

BENCHES = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``bench`` on every item under benches/ (this hook sees every collected item: filter by path);
    ``real_data`` on those using ``shared_data``."""
    for item in items:
        if Path(item.path).is_relative_to(BENCHES):
            item.add_marker(pytest.mark.bench)
            if "shared_data" in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.real_data)


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


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_root()
    if not path.is_dir():
        pytest.skip(SHARED_DATA_SKIP)
    return path


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    for title, lines in render_tables():
        terminalreporter.write_sep("-", title)
        for line in lines:
            terminalreporter.write_line(line)
