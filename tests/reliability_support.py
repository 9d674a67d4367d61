"""Builders for the reliability tests: homes with real MLMD records,
checkpoint directories and served versions, made without TensorFlow.

A checkpoint here is a directory with the Trainer's file names whose bytes
are arbitrary: doctor and the registry only hash them. Tests that need a
loadable checkpoint or SavedModel make a real one with TensorFlow.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import uuid

from ml_metadata.proto import metadata_store_pb2

from ckptflow.components import promotion
from ckptflow.components.checkpoint import CheckpointRegistry, NewCheckpoint
from ckptflow.operations import doctor
from ckptflow.base.home import Home
from ckptflow.base.metadata import open_store

CHECKPOINTS = pathlib.Path("pipeline_root", "CheckpointingTrainer", "checkpoints")
MYSQL_HOST = os.environ.get("CKPTFLOW_TEST_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("CKPTFLOW_TEST_MYSQL_PORT", "3306"))


def start_execution(store, type_name: str = "test.Trainer") -> int:
  """Records a RUNNING execution, as a runner does before an executor runs."""
  type_id = store.put_execution_type(metadata_store_pb2.ExecutionType(name=type_name))
  [execution_id] = store.put_executions([metadata_store_pb2.Execution(
      type_id=type_id, last_known_state=metadata_store_pb2.Execution.RUNNING)])
  return execution_id


def write_checkpoint_dir(home: pathlib.Path, execution_id: int, step: int,
                         payload: bytes = b"w") -> pathlib.Path:
  directory = home / CHECKPOINTS / "run" / f"exec-{execution_id}" / f"step-{step:08d}"
  directory.mkdir(parents=True)
  (directory / "ckpt.index").write_bytes(b"index:" + payload + str(step).encode())
  (directory / "ckpt.data-00000-of-00001").write_bytes(payload * 256)
  return directory


def register_checkpoint(registry: CheckpointRegistry, directory: pathlib.Path,
                        step: int):
  size, checksum = doctor.checkpoint_digest(str(directory))
  return registry.register(NewCheckpoint(
      uri=str(directory), step=step, epoch=0, metrics={"loss": 1.0 / step},
      size_bytes=size, checksum=checksum, tf_version="test", fingerprint="f",
      resume_key="k"))


def make_saved_model(path: pathlib.Path, marker: str = "m") -> str:
  """A directory shaped like a SavedModel (enough for a push)."""
  (path / "variables").mkdir(parents=True)
  (path / "saved_model.pb").write_bytes(marker.encode())
  (path / "variables" / "variables.data-00000-of-00001").write_bytes(b"\0" * 128)
  return str(path)


def put_model(store, uri: str) -> int:
  type_id = store.put_artifact_type(metadata_store_pb2.ArtifactType(
      name="Model", base_type=metadata_store_pb2.ArtifactType.MODEL),
      can_add_fields=True, can_omit_fields=True)
  [artifact_id] = store.put_artifacts([metadata_store_pb2.Artifact(
      type_id=type_id, uri=uri, state=metadata_store_pb2.Artifact.LIVE)])
  return artifact_id


class ToyHome:
  """A home with a SQLite store, checkpoints of one execution, and pushes."""

  def __init__(self, root: pathlib.Path):
    self.home = root
    self.home.mkdir(parents=True, exist_ok=True)
    self.target = str(root / "metadata.sqlite")
    self.store = open_store(self.target)
    self.execution_id = start_execution(self.store)
    self.registry = CheckpointRegistry(self.store, self.execution_id)
    self.serving = root / "serving"

  def checkpoint(self, step: int, *, register: bool = True) -> pathlib.Path:
    directory = write_checkpoint_dir(self.home, self.execution_id, step)
    if register:
      register_checkpoint(self.registry, directory, step)
    return directory

  def promote(self, name: str = "penguin", marker: str = "m") -> promotion.ServedRecord:
    source = make_saved_model(self.home / "exports" / uuid.uuid4().hex, marker)
    model_id = put_model(self.store, source)
    return promotion.promote(self.store, saved_model_dir=source,
                             serving_root=str(self.serving), model_name=name,
                             model_artifact_id=model_id)

  def where(self) -> Home:
    return Home(str(self.home))

  def findings(self, **kwargs) -> list[doctor.Finding]:
    findings, _ = doctor.diagnose(self.target, self.where(), **kwargs)
    return findings


def tree(root: pathlib.Path) -> dict[str, int]:
  """Every file and directory under `root` with its size (dirs: -1), to
  compare before and after a command that must write nothing. The home lock
  file and SQLite's journal are left out (opening a store may create one)."""
  listing = {}
  if not root.exists():
    return listing
  for path in sorted(root.rglob("*")):
    if path.name in (".ckptflow.lock",) or path.name.endswith("-journal"):
      continue
    listing[str(path.relative_to(root))] = -1 if path.is_dir() else path.stat().st_size
  return listing


def mlmd_counts(target: str) -> tuple[int, int, int, int]:
  """(artifacts, executions, events, contexts) in the store at `target`."""
  store = open_store(target, create=False)
  executions = store.get_executions()
  return (len(store.get_artifacts()), len(executions),
          len(store.get_events_by_execution_ids([e.id for e in executions])),
          len(store.get_contexts()))


# --- MariaDB -------------------------------------------------------------------


def mysql_admin(sql: str, *, check: bool = True) -> subprocess.CompletedProcess:
  """Runs `sql` as root on the test server through the `mariadb` client."""
  client = shutil.which("mariadb") or shutil.which("mysql")
  if client is None:
    raise RuntimeError("no mariadb/mysql client on PATH")
  return subprocess.run([client, "-uroot", f"-h{MYSQL_HOST}", f"-P{MYSQL_PORT}",
                         "-N", "-e", sql], capture_output=True, text=True,
                        check=check, timeout=60)


def mysql_reachable() -> bool:
  try:
    return mysql_admin("select 1", check=False).returncode == 0
  except (RuntimeError, subprocess.TimeoutExpired):
    return False


def mysql_target(database: str) -> str:
  return f"mysql://root@{MYSQL_HOST}:{MYSQL_PORT}/{database}"
