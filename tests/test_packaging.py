"""The package list in pyproject.toml names every package in the tree (a
wheel or a container image built from it would otherwise miss modules that
the editable install finds)."""

from __future__ import annotations

import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUTSIDE = {".venv", "tests", "benchmarks", "build"}


def test_every_package_in_the_tree_is_listed_in_pyproject():
  listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())
               ["tool"]["setuptools"]["packages"])
  found = {".".join(("ckptflow",) + init.parent.relative_to(ROOT).parts)
           for init in ROOT.rglob("__init__.py")
           if not OUTSIDE & set(init.relative_to(ROOT).parts)}
  assert found == listed
