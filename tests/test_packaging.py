"""The wheel ships every package of the source tree: pyproject's explicit ``packages`` list (needed for the
``kernels`` package-dir mapping) names every folder of ``src/voxelpipe`` that has an ``__init__.py``."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_source_package_is_listed_in_pyproject():
    pyproject = ROOT / "pyproject.toml"
    source = ROOT / "src" / "voxelpipe"
    if not pyproject.is_file() or not source.is_dir():
        pytest.skip("runs from a source checkout (pyproject.toml and src/ beside tests/)")
    listed = set(tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(source.parent).parts) for init in source.rglob("__init__.py")
             if not init.relative_to(source).parts[0] == "kernels"}
    assert found - listed == set(), f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"
