"""Option types and helpers shared by the command modules: value parsers (positive int, Z,Y,X triples, LOW,HIGH
pairs), the common options (--workers, --executor/--scheduler), help text that shows a default read from
:mod:`voxelpipe.core.defaults`, the exit-status epilog, and :func:`given` (the options a user actually set)."""
from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from voxelpipe.core import defaults
from voxelpipe.core.types import Executor

# exit statuses of every command (see the cli package docstring)
EXIT_OK = 0
EXIT_ITEMS_FAILED = 1
EXIT_BAD_REQUEST = 2
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})  # booleans on the command line and in VOXELPIPE_* variables
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def yes_no(text: str) -> bool:
    """A boolean option value: yes/no, true/false, on/off, 1/0."""
    lowered = text.strip().lower()
    if lowered not in TRUE_WORDS | FALSE_WORDS:
        raise ValueError(text)
    return lowered in TRUE_WORDS


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def int_triple(text: str) -> tuple[int, int, int]:
    """``A,B,C``: three integers >= 1 (a shape or chunk shape in array axis order)."""
    parts = tuple(int(v) for v in text.split(","))
    if len(parts) != 3 or min(parts) < 1:
        raise ValueError(text)
    return parts


def float_triple(text: str) -> tuple[float, float, float]:
    """``A,B,C``: three numbers > 0 (a spacing in mm)."""
    parts = tuple(float(v) for v in text.split(","))
    if len(parts) != 3 or min(parts) <= 0:
        raise ValueError(text)
    return parts


def float_pair(text: str) -> tuple[float, float]:
    """``LOW,HIGH`` with LOW < HIGH (a value window)."""
    parts = tuple(float(v) for v in text.split(","))
    if len(parts) != 2 or not parts[0] < parts[1]:
        raise ValueError(text)
    return parts


# argparse names a type in its error message by the function's __name__
positive_int.__name__ = "positive integer"
non_negative_int.__name__ = "integer >= 0"
int_triple.__name__ = "three positive integers A,B,C"
float_triple.__name__ = "three positive numbers A,B,C"
float_pair.__name__ = "LOW,HIGH pair"


def show(value: Any) -> str:
    """A default as a user types it: tuples comma-joined, ``None`` as ``none``."""
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)):
        return ",".join(show(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def with_default(text: str, value: Any) -> str:
    """``text (default VALUE)``; argparse's ``%`` formatting is escaped."""
    return f"{text} (default {show(value)})".replace("%", "%%")


def comma_names(text: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` (an option naming masks, labels or channels); blanks around names
    dropped; an empty list is a usage error."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def exit_epilog(failed: str | None) -> str:
    """The exit-status paragraph of a command's ``--help``; ``failed``: what makes it exit 1 (None: it never
    does)."""
    one = f"1 = the run finished but {failed}, or it stopped because an output could not be written (disk full); "
    one = one if failed else "1 = the run stopped because an output could not be written (disk full); "
    return (f"Exit status: 0 = everything ok; {one}2 = bad request, refused before anything was written (usage "
            "error, invalid option or environment value, missing or unusable input, an output folder another run "
            "holds or that cannot be written). Every option can also be set through the environment variable "
            "VOXELPIPE_<LONG OPTION> (upper case, dashes as underscores, e.g. --table-format -> "
            "VOXELPIPE_TABLE_FORMAT; booleans 1/0, true/false, yes/no, on/off; lists separated by the path "
            "separator); a flag on the command line wins.")


def add_command(subparsers: argparse._SubParsersAction, name: str, summary: str, failed: str | None,
                description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand parser with its one-line ``summary`` (shown in the command list), a description and the
    exit-status epilog."""
    return subparsers.add_parser(name, help=summary, description=description or summary,
                                 epilog=exit_epilog(failed))


def add_workers(parser: argparse.ArgumentParser, default: str = "number of cores; 1 runs in this process") -> None:
    """``--workers N``: worker processes; ``default`` describes what happens without it."""
    parser.add_argument("--workers", type=positive_int, default=argparse.SUPPRESS, metavar="N",
                        help=f"worker processes (default: {default})")


def add_levels(parser: argparse.ArgumentParser) -> None:
    """``--levels N``: OME-Zarr pyramid levels of the Zarr volumes a command writes."""
    parser.add_argument("--levels", type=positive_int, default=argparse.SUPPRESS, metavar="N",
                        help=with_default("OME-Zarr pyramid levels of Zarr outputs, each halving the axes that are "
                                          "long enough, for viewers; 1 = full resolution only",
                                          defaults.VOLUME_LEVELS))


def add_executor(parser: argparse.ArgumentParser, what: str) -> None:
    """``--executor`` / ``--scheduler``: where the per-item tasks of a command run."""
    parser.add_argument("--executor", choices=[e.value for e in Executor], default=argparse.SUPPRESS,
                        help=with_default(f"where the {what} tasks run: pool (processes of this machine), dask (a "
                                          "running dask.distributed scheduler, see --scheduler) or dask-local (a "
                                          "LocalCluster of --workers processes); needs the dask extra for the "
                                          "last two", defaults.EXECUTOR))
    parser.add_argument("--scheduler", default=argparse.SUPPRESS, metavar="tcp://HOST:PORT",
                        help="address of the dask scheduler for --executor dask (default none)")


def given(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The options among ``names`` that were set (on the command line or through the environment), as keyword
    arguments; an option left out is not passed, so the library's own default applies."""
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def progress(args: argparse.Namespace) -> bool:
    """Whether to show progress (the global ``--no-progress``)."""
    return not getattr(args, "no_progress", False)


__all__ = ["EXIT_OK", "EXIT_ITEMS_FAILED", "EXIT_BAD_REQUEST", "positive_int", "non_negative_int", "int_triple",
           "float_triple", "float_pair", "show", "with_default", "exit_epilog", "add_command", "add_workers",
           "add_executor", "given", "progress"]
