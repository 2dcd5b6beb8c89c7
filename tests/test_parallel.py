"""voxelpipe.execution.pool: executor options, the missing dask extra, and ``on_error`` on the process pool."""
from __future__ import annotations

import sys

import pytest

from voxelpipe.core.errors import InputError
from voxelpipe.execution import check_executor, imap
from voxelpipe.pipelines.convert import convert


@pytest.mark.parametrize("executor, scheduler, message", [
    ("dask", None, "needs --scheduler"),
    ("pool", "tcp://127.0.0.1:8786", "needs --executor dask"),
    ("spark", None, "executor must be one of"),
    ("dask", "http://head:8787", "not a dask scheduler address"),  # the dashboard's address
    ("dask", "head", "not a dask scheduler address"),
])
def test_bad_executor_options_fail_before_any_work(tmp_path, executor, scheduler, message):
    with pytest.raises(InputError, match=message):
        convert([str(tmp_path)], out=str(tmp_path / "out"), executor=executor, scheduler=scheduler,
                progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("address", ["tcp://10.1.2.3:8786", "head-node:8786", "tls://head.example:8786",
                                     "tcp://[::1]:8786"])
def test_scheduler_addresses_dask_accepts_pass(address):
    check_executor("dask", address)


def test_dask_executor_without_the_extra_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(InputError, match=r"voxelpipe\[dask\]"):
        list(imap(abs, [1, 2], workers=7, executor="dask-local"))


def _raise_on_three(i: int) -> int:
    if i == 3:
        raise ValueError(f"bad item {i}")
    return i


@pytest.mark.parametrize("workers", [1, 2])
def test_on_error_replaces_a_raising_task_and_the_rest_run(workers):
    results = list(imap(_raise_on_three, range(6), workers=workers,
                        on_error=lambda item, exc: ("failed", item, str(exc))))
    assert results == [0, 1, 2, ("failed", 3, "bad item 3"), 4, 5]


@pytest.mark.parametrize("workers", [1, 2])
def test_without_on_error_the_exception_propagates(workers):
    with pytest.raises(ValueError, match="bad item 3"):
        list(imap(_raise_on_three, range(6), workers=workers))
