"""Shared fixtures: the real datasets, and one end-to-end pipeline run that
every test needing a finished run shares (a run costs about a minute)."""

from __future__ import annotations

import os
import pathlib

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from support import E2E_EVERY, E2E_STEPS, PENGUINS, ckptflow  # noqa: E402


@pytest.fixture(scope="session")
def penguins_dir() -> pathlib.Path:
  if not (PENGUINS / "penguins_processed.csv").is_file():
    pytest.fail(f"penguins data not found at {PENGUINS}; set CKPTFLOW_PENGUINS")
  return PENGUINS


@pytest.fixture(scope="session")
def e2e_home(tmp_path_factory, penguins_dir) -> pathlib.Path:
  """A home after one full `ckptflow run` on the penguins data."""
  home = tmp_path_factory.mktemp("e2e") / "home"
  result = ckptflow("run", "--home", str(home), "--data", str(penguins_dir),
                    "--train-steps", str(E2E_STEPS), "--checkpoint-every", str(E2E_EVERY),
                    "--model-name", "penguin")
  (home / "run1.stdout").write_text(result.stdout)
  return home
