"""Command line: ``python -m voxelpipe <command>``; :func:`main` parses, runs the command and returns its exit
status.

One module per command (``scan``, ``convert``, ``aggregate``, ``resample``, ``project``, ``contours``, ``masks``,
``masks_to_seg``, ``suv``, ``petct_index``, ``petct``, ``merge``, ``project_2d``, ``lung``, ``report``,
``export_nnunet``, ``demo``), each with ``add_parser(subparsers)`` (its options and help) and ``run(args) -> int``
(calls the library function, prints the one-line summary). :mod:`voxelpipe.cli.app` assembles them
(``build_parser``) and holds ``main``;
:mod:`voxelpipe.cli.options` the shared option types and helpers; :mod:`voxelpipe.cli.summary` the status counts.

Lazy imports: every ``run`` imports its pipeline inside the function, on purpose, so that building the parser
(``--help``, the generated CLI reference) loads none of pydicom, numba, zarr. Defaults shown in ``--help`` come
from :mod:`voxelpipe.core.defaults`, the same constants the library signatures use; an option left out is not
passed at all, so the library's own default applies.

Exit status, the same for every command (decided in ``main`` for errors):

- 0: everything ok (every item done or skipped);
- 1: the run finished but some items failed (failed rows, problems; each command's ``--help`` says which);
- 2: bad request: an argparse usage error, an invalid option or environment value, an ``InputError`` or other
  error raised on purpose about the request (``VoxelpipeError``), a missing input path (``FileNotFoundError``).

Environment: every option can also be set through ``VOXELPIPE_<LONG OPTION>`` (upper case, dashes as
underscores: ``--format`` -> ``VOXELPIPE_FORMAT``, ``--no-progress`` -> ``VOXELPIPE_NO_PROGRESS``); booleans take
1/0, true/false, yes/no, on/off; options taking several values split the variable on ``os.pathsep``. A flag on
the command line wins, also over another member of its mutually exclusive group (``--spacing | --shape | --like``)
set in the environment.
"""
from voxelpipe.cli.app import main

__all__ = ["main"]
