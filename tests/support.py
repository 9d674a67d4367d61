"""Helpers shared by the tests (importable as `support`)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
PENGUINS = pathlib.Path(os.environ.get(
    "CKPTFLOW_PENGUINS", REPO.parent / "shared" / "data" / "penguins"))

# The end-to-end run's settings: short, but with several checkpoints.
E2E_STEPS = 300
E2E_EVERY = 100


# Set by a user to change what ckptflow prints; a test of the defaults runs
# without them.
OUTPUT_ENV = ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")


def ckptflow(*args: str, env: dict | None = None, check: bool = True,
             timeout: float = 900, unset: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
  """Runs the real `ckptflow` CLI in a subprocess (without the environment
  variables named in `unset`)."""
  full_env = os.environ | {"TF_USE_LEGACY_KERAS": "1"} | (env or {})
  for name in unset:
    full_env.pop(name, None)
  result = subprocess.run([sys.executable, "-m", "ckptflow.cli", *args],
                          capture_output=True, text=True, env=full_env, timeout=timeout)
  if check and result.returncode != 0:
    raise AssertionError(f"ckptflow {' '.join(args)} exited {result.returncode}:\n"
                         f"{result.stderr[-4000:]}")
  return result

DRIVER = REPO / "tests" / "trainer_driver.py"


def finish_execution(store, execution_id: int, state: int) -> None:
  [execution] = store.get_executions_by_id([execution_id])
  execution.last_known_state = state
  store.put_executions([execution])
