"""The fixtures every test directory shares, in one place.

Loaded as a pytest plugin (`-p ckptflow_fixtures` in pyproject.toml's
addopts; tests/ is on pytest's pythonpath), so tests under tests/ and the
unit tests beside the code (components/**/*_test.py, operations/*_test.py,
...) see the same fixtures. A conftest.py would reach only its own
directory, and one at the repository root would be a module of the
`ckptflow` package, which the layers contract covers.

Fixtures: the real datasets, one end-to-end pipeline run that every test
needing a finished run shares (a run costs about a minute), a fresh MLMD
SQLite store, a fresh MariaDB database, a toy home with checkpoints and a
served version, and the Ceph RADOS Gateway (S3) with a fresh bucket per
test. Helpers are imported inside the fixtures, so loading the plugin
imports neither ckptflow nor MLMD.
"""

from __future__ import annotations

import os
import pathlib

import pytest

# Before anything imports TensorFlow: TFX 1.16 and TFMA 0.47 expect Keras 2.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from support import E2E_EVERY, E2E_STEPS, OUTPUT_ENV, PENGUINS, ckptflow  # noqa: E402


@pytest.fixture(scope="session")
def penguins_dir() -> pathlib.Path:
  if not (PENGUINS / "penguins_processed.csv").is_file():
    pytest.fail(f"penguins data not found at {PENGUINS}; set CKPTFLOW_PENGUINS")
  return PENGUINS


@pytest.fixture(scope="session")
def e2e_home(tmp_path_factory, penguins_dir) -> pathlib.Path:
  """A home after one full `ckptflow run` on the penguins data.

  Shared by every test that requests it: a test that changes the home must
  leave what the others assert true (or work on a home of its own). The
  run is a default one (standard error not a terminal, no variables that
  change what it prints); its output is kept in run1.stdout / run1.stderr."""
  home = tmp_path_factory.mktemp("e2e") / "home"
  result = ckptflow("run", "--home", str(home), "--data", str(penguins_dir),
                    "--train-steps", str(E2E_STEPS), "--checkpoint-every", str(E2E_EVERY),
                    "--model-name", "penguin", unset=OUTPUT_ENV)
  (home / "run1.stdout").write_text(result.stdout)
  (home / "run1.stderr").write_text(result.stderr)
  return home


@pytest.fixture
def store_target(tmp_path) -> str:
  """The metadata target of `store`: a SQLite file in the test's tmp dir
  (what CKPTFLOW_METADATA names for an executor under test)."""
  return str(tmp_path / "m.sqlite")


@pytest.fixture
def store(store_target):
  """A real MLMD store on a fresh, empty SQLite file."""
  from ckptflow.base.metadata import open_store
  return open_store(store_target)


@pytest.fixture
def toy(tmp_path):
  """A home with a SQLite store, two registered checkpoints (steps 100 and
  200) and one served version ("penguin" 1, labelled stable)."""
  from reliability_support import ToyHome
  home = ToyHome(tmp_path / "home")
  home.checkpoint(100)
  home.checkpoint(200)
  home.promote(marker="v1")
  return home


@pytest.fixture
def mysql_database():
  """A fresh, empty database on the MariaDB server; dropped afterwards.

  Skipped when the server is unreachable, unless CKPTFLOW_REQUIRE_MYSQL is
  set (CI sets it), in which case the test fails.
  """
  import uuid

  from reliability_support import MYSQL_HOST, MYSQL_PORT, mysql_admin, mysql_reachable
  if not mysql_reachable():
    if os.environ.get("CKPTFLOW_REQUIRE_MYSQL"):
      pytest.fail(f"MariaDB at {MYSQL_HOST}:{MYSQL_PORT} is unreachable and "
                  "CKPTFLOW_REQUIRE_MYSQL is set")
    pytest.skip(f"MariaDB at {MYSQL_HOST}:{MYSQL_PORT} is unreachable")
  name = f"ckptflow_test_{uuid.uuid4().hex[:12]}"
  mysql_admin(f"CREATE DATABASE `{name}`")
  try:
    yield name
  finally:
    mysql_admin(f"DROP DATABASE IF EXISTS `{name}`", check=False)


@pytest.fixture(scope="session")
def rgw() -> dict[str, str]:
  """The Ceph RADOS Gateway the object-storage tests use (one per session,
  started by `.ci/rgw`, which reuses a running one): its AWS_* settings.

  Skipped when Ceph is not installed, unless CKPTFLOW_REQUIRE_RGW is set
  (`.ci/run` sets it), in which case the test fails.
  """
  import shutil
  import subprocess

  from support import REPO
  required = bool(os.environ.get("CKPTFLOW_REQUIRE_RGW"))
  if shutil.which("radosgw") is None and not required:
    pytest.skip("Ceph's radosgw is not installed (run .ci/rgw to install and start it)")
  result = subprocess.run([str(REPO / ".ci" / "rgw")], capture_output=True, text=True,
                          timeout=900)
  if result.returncode != 0:
    message = f"the RGW server did not start: {result.stderr.strip()[-2000:]}"
    if required:
      pytest.fail(message)
    pytest.skip(message)
  return dict(line.split("=", 1) for line in result.stdout.split() if "=" in line)


@pytest.fixture
def bucket(rgw, monkeypatch) -> str:
  """A fresh, empty bucket on the session's RGW, with AWS_* set to its
  settings for the test (subprocesses inherit them); emptied and removed
  afterwards. Yields its name."""
  import uuid

  for name, value in rgw.items():
    monkeypatch.setenv(name, value)
  from ckptflow.base import s3
  client = s3.client()
  name = f"ckptflow-{uuid.uuid4().hex[:12]}"
  client.create_bucket(Bucket=name)
  yield name
  paginator = client.get_paginator("list_objects_v2")
  for page in paginator.paginate(Bucket=name):
    for item in page.get("Contents", []):
      client.delete_object(Bucket=name, Key=item["Key"])
  client.delete_bucket(Bucket=name)


_exit_status: list[int] = []


def pytest_sessionfinish(session, exitstatus):
  _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
  """After a test used a bucket through tensorflow-io in this process, its
  S3 client would abort the interpreter's exit (SIGABRT,
  tensorflow/io#2039) and turn a green session red: leave with pytest's
  real status instead (`storage.exit_process`), once everything is
  reported."""
  import sys
  storage = sys.modules.get("ckptflow.base.storage")
  if storage is not None and storage.remote_touched() and _exit_status:
    storage.exit_process(_exit_status[-1])
