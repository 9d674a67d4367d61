"""Several processes on one metadata store at once: each registers 50
checkpoints as outputs of its own execution and promotes once. Nothing is
lost, nothing is recorded twice, every process gets its own version.

Real processes, started together (they wait for a start file after their
imports), on a real SQLite file and on the MariaDB server. Each backend has
its own home and serving root, so served versions are counted per backend:
4 distinct versions (1-4) of the model per store, 8 across both.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import subprocess
import sys

import pytest
from ml_metadata.proto import metadata_store_pb2

from ckptflow.components import checkpoint as ckpt_records
from ckptflow.components import promotion
from ckptflow.components.pusher import serving
from ckptflow.base.metadata import open_store
from reliability_support import mysql_target
from support import ckptflow

# Several real processes importing TensorFlow at once.
pytestmark = pytest.mark.heavy

WORKERS = 4
CHECKPOINTS = 50
DRIVER = pathlib.Path(__file__).parent / "concurrency_driver.py"

SAVED_MODEL_CODE = """
import sys
import tensorflow as tf

class Model(tf.Module):
  def __init__(self):
    self.w = tf.Variable(tf.ones([4, 3]))

  @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
  def serve(self, x):
    return {"outputs": tf.nn.softmax(tf.matmul(x, self.w))}

model = Model()
tf.saved_model.save(model, sys.argv[1], signatures={"serving_default": model.serve})
"""


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> str:
  """A real (tiny) SavedModel with a serving_default signature."""
  path = tmp_path_factory.mktemp("model") / "saved_model"
  subprocess.run([sys.executable, "-c", SAVED_MODEL_CODE, str(path)], check=True,
                 capture_output=True, timeout=300,
                 env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"})
  return str(path)


def start_workers(target: str, home: pathlib.Path, saved_model: str,
                  start_file: pathlib.Path, tag: str) -> list[subprocess.Popen]:
  # tests/ for the helpers, then the caller's entries (where `ckptflow` comes from).
  env = os.environ | {"PYTHONPATH": os.pathsep.join(
      filter(None, [str(DRIVER.parent), os.environ.get("PYTHONPATH")]))}
  return [subprocess.Popen(
      [sys.executable, str(DRIVER), "--metadata", target, "--home", str(home),
       "--worker", f"{tag}{i}", "--checkpoints", str(CHECKPOINTS),
       "--saved-model", saved_model, "--start-file", str(start_file)],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
      for i in range(WORKERS)]


def wait_ready(workers) -> None:
  for worker in workers:
    line = worker.stdout.readline()
    if not line:  # it exited before it was ready: say why
      worker.wait(timeout=60)
      pytest.fail(f"worker exited {worker.returncode} before it was ready: "
                  f"{worker.stderr.read()[-3000:]}")
    assert json.loads(line)["event"] == "ready", worker.stderr.read()[-3000:]


def finish(workers) -> list[dict]:
  results = []
  for worker in workers:
    out, err = worker.communicate(timeout=600)
    assert worker.returncode == 0, err[-4000:]
    results.append(json.loads(out.strip().splitlines()[-1]))
  return results


def check_store(target: str, home: pathlib.Path, results: list[dict]) -> tuple[int, set]:
  """Asserts one backend's store and files; returns (checkpoints, versions)."""
  store = open_store(target, create=False)
  checkpoints = ckpt_records.list_checkpoints(store)
  artifacts = store.get_artifacts_by_type("Checkpoint")
  external_ids = [a.external_id for a in artifacts]
  assert len(external_ids) == len(set(external_ids)) == WORKERS * CHECKPOINTS
  assert len({c.uri for c in checkpoints}) == WORKERS * CHECKPOINTS
  assert all(c.live for c in checkpoints)
  # Each checkpoint is the OUTPUT of exactly the execution that wrote it.
  events = store.get_events_by_artifact_ids([c.id for c in checkpoints])
  outputs = collections.Counter(e.artifact_id for e in events
                                if e.type == metadata_store_pb2.Event.OUTPUT)
  assert set(outputs.values()) == {1} and len(outputs) == WORKERS * CHECKPOINTS
  producers = ckpt_records.producer_execution_ids(store, [c.id for c in checkpoints])
  for result in results:
    assert len(result["checkpoint_ids"]) == CHECKPOINTS
    assert {producers[i] for i in result["checkpoint_ids"]} == {result["execution_id"]}
  served = promotion.served_versions(store, "penguin")
  versions = [r.version for r in served]
  assert sorted(versions) == list(range(1, WORKERS + 1))  # distinct, none lost
  assert sorted(r["version"] for r in results) == versions
  assert serving.list_versions(str(home / "serving"), "penguin") == versions
  assert len({r.path for r in served}) == WORKERS
  doctor = ckptflow("doctor", "--home", str(home), "--metadata", target, check=False)
  assert doctor.returncode == 0, doctor.stdout + doctor.stderr[-2000:]
  return len(checkpoints), {(target, v) for v in versions}


def test_four_processes_on_one_sqlite_store_register_and_promote_without_loss(
    tmp_path, saved_model):
  home = tmp_path / "home"
  home.mkdir()
  target = str(home / "metadata.sqlite")
  start = tmp_path / "go"
  workers = start_workers(target, home, saved_model, start, "s")
  wait_ready(workers)
  start.touch()
  results = finish(workers)
  count, versions = check_store(target, home, results)
  assert (count, len(versions)) == (200, 4)


@pytest.mark.mysql
def test_four_on_sqlite_and_four_on_mariadb_at_once_record_400_checkpoints_and_8_versions(
    tmp_path, saved_model, mysql_database):
  homes = {"sqlite": tmp_path / "sqlite-home", "mysql": tmp_path / "mysql-home"}
  for home in homes.values():
    home.mkdir()
  targets = {"sqlite": str(homes["sqlite"] / "metadata.sqlite"),
             "mysql": mysql_target(mysql_database)}
  start = tmp_path / "go"
  workers = {backend: start_workers(targets[backend], homes[backend], saved_model,
                                    start, backend[0])
             for backend in targets}
  for group in workers.values():
    wait_ready(group)
  start.touch()  # all eight write at once
  results = {backend: finish(group) for backend, group in workers.items()}
  total, versions = 0, set()
  for backend in targets:
    count, served = check_store(targets[backend], homes[backend], results[backend])
    total += count
    versions |= served
  assert total == 400
  assert len(versions) == 8
