"""mkdocs hook: the API reference pages list their modules from the source tree at build time.

A page under ``reference/api/`` holds a line ``<!-- api-modules: voxelpipe.core -->``; this hook replaces it with
one mkdocstrings directive for the package (its docstring only) and one per module found below
``src/voxelpipe/core/`` (subpackages included, names starting with ``_`` left out), in file-name order. Each
object is thus documented once, in the module that defines it, and never again as a package re-export; and a
module that is added, moved or split shows up on the next build without editing any list. The only list is the
package pages themselves (``nav`` in mkdocs.yml, ``docs/reference/api/*.md``).
"""
from __future__ import annotations

import re
from pathlib import Path

MARKER = re.compile(r"^<!-- api-modules: ([A-Za-z_][\w.]*) -->$", re.MULTILINE)
SRC = Path(__file__).resolve().parents[2] / "src"


def _directive(name: str, package: bool) -> str:
    options = ["members: false"] if package else []
    options.append("show_submodules: false")
    return "\n".join([f"::: {name}", "    options:", *(f"      {o}" for o in options), ""])


def module_names(package: str, src: Path = SRC) -> list[tuple[str, bool]]:
    """``(dotted name, is_package)`` of ``package`` and every public module and subpackage below it."""
    folder = src.joinpath(*package.split("."))
    if not (folder / "__init__.py").is_file():
        raise FileNotFoundError(f"api_modules: {package} is not a package under {src}")
    names = [(package, True)]
    for path in sorted(folder.iterdir()):
        if path.name.startswith(("_", ".")):
            continue
        if path.is_dir() and (path / "__init__.py").is_file():
            names += module_names(f"{package}.{path.name}", src)
        elif path.suffix == ".py":
            names.append((f"{package}.{path.stem}", False))
    return names


def render(package: str) -> str:
    return "\n".join(_directive(name, is_package) for name, is_package in module_names(package))


def on_page_markdown(markdown: str, page, config, files) -> str:
    if not page.file.src_uri.startswith("reference/api/"):
        return markdown
    return MARKER.sub(lambda match: render(match.group(1)), markdown)
