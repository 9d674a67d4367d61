"""The whole local pipeline, a promotion, a rollback and a lineage walk with
MLMD on the MariaDB server (`--metadata mysql://...`), checked in MySQL."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
from ml_metadata.proto import metadata_store_pb2

from ckptflow.operations import lineage
from ckptflow.components import promotion
from ckptflow.components.pusher import serving
from ckptflow.base.metadata import open_store
from reliability_support import mysql_admin, mysql_target
from support import ckptflow

pytestmark = [pytest.mark.e2e, pytest.mark.mysql]

COMPONENTS = ("CsvExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator",
              "CheckpointingTrainer", "Evaluator", "Pusher")


def test_pipeline_promotion_rollback_and_lineage_run_on_mariadb(
    tmp_path, penguins_dir, mysql_database):
  home = tmp_path / "home"
  target = mysql_target(mysql_database)
  result = ckptflow("run", "--home", str(home), "--metadata", target,
                    "--data", str(penguins_dir), "--train-steps", "60",
                    "--checkpoint-every", "20", "--model-name", "penguin")
  assert f"metadata store:  {target}" in result.stdout
  assert not (home / "metadata.sqlite").exists()  # nothing went to SQLite
  tables = mysql_admin(f"SHOW TABLES FROM `{mysql_database}`").stdout.split()
  assert "Artifact" in tables and "Execution" in tables

  store = open_store(target, create=False)
  states = {}
  for execution_type in store.get_execution_types():
    short = execution_type.name.rsplit(".", 1)[-1]
    for execution in store.get_executions_by_type(execution_type.name):
      states.setdefault(short, []).append(execution.last_known_state)
  for component in COMPONENTS:
    assert states.get(component) == [metadata_store_pb2.Execution.COMPLETE], component
  checkpoints = store.get_artifacts_by_type("Checkpoint")
  assert sorted(a.properties["step"].int_value for a in checkpoints) == [20, 40, 60]
  [trainer] = store.get_executions_by_type(
      [t.name for t in store.get_execution_types()
       if t.name.endswith("CheckpointingTrainer")][0])
  events = store.get_events_by_artifact_ids([a.id for a in checkpoints])
  assert {e.execution_id for e in events
          if e.type == metadata_store_pb2.Event.OUTPUT} == {trainer.id}
  assert [r.version for r in promotion.served_versions(store, "penguin")] == [1]

  listing = ckptflow("checkpoints", "--home", str(home), "--metadata", target, "--json")
  assert len(json.loads(listing.stdout)["checkpoints"]) == 3
  # The home remembers its store: a plain `checkpoints --home` finds it.
  assert json.loads((home / ".ckptflow-home.json").read_text())["metadata"] == target
  plain = ckptflow("checkpoints", "--home", str(home), "--json",
                   env={"CKPTFLOW_METADATA": ""})
  assert json.loads(plain.stdout) == json.loads(listing.stdout)

  # `ckptflow promote`: export an earlier checkpoint (the last one is behind
  # the version the pipeline pushed), evaluate it against the stable
  # version, push it (forced, so the outcome does not hang on a metric).
  promoted = ckptflow("promote", "step:40", "--force", "--json", "--home", str(home),
                      "--metadata", target)
  document = json.loads(promoted.stdout)
  assert document["outcome"] == "pushed"
  assert document["served"]["version"] == 2
  store = open_store(target, create=False)
  assert promotion.current_labels(store, "penguin") == {"stable": 2}
  assert serving.read_models_config(str(home / "serving"))["penguin"].labels == {"stable": 2}
  export_model = store.get_artifacts_by_id([document["export"]["model_artifact_id"]])[0]
  assert export_model.custom_properties["checkpoint_step"].int_value == 40

  # The library's promote in a process of its own (the TFX Model), then
  # `ckptflow rollback` and `ckptflow lineage`, all on MariaDB.
  # The pipeline's own Model (served as version 1), pushed again, forced.
  driver = pathlib.Path(__file__).parent / "promote_driver.py"
  trainer_model = min(store.get_artifacts_by_type("Model"), key=lambda a: a.id)
  pushed = subprocess.run([sys.executable, str(driver), "--home", str(home),
                           "--metadata", target, "--model-id", str(trainer_model.id),
                           "--saved-model", os.path.join(trainer_model.uri, "Format-Serving")],
                          capture_output=True, text=True, timeout=300, env=os.environ.copy())
  assert pushed.returncode == 0, pushed.stderr[-3000:]
  assert json.loads(pushed.stdout)["version"] == 3

  rolled = ckptflow("rollback", "penguin", "--json", "--home", str(home), "--metadata", target)
  assert (json.loads(rolled.stdout)["previous_version"],
          json.loads(rolled.stdout)["version"]) == (3, 2)
  assert serving.read_models_config(str(home / "serving"))["penguin"].labels == {"stable": 2}

  walked = ckptflow("lineage", "penguin:2", "--json", "--home", str(home),
                    "--metadata", target)
  type_names = {node["type"] for node in json.loads(walked.stdout)["nodes"]}
  assert {"PushedModel", "Model", "Checkpoint", "Examples", "Schema"} <= type_names
  graph = lineage.lineage(store, "penguin:3")
  assert {"PushedModel", "Model", "Examples", "Schema"} <= {
      node.type_name for node in graph.nodes.values()}

  doctor = ckptflow("doctor", "--home", str(home), "--metadata", target, check=False)
  assert doctor.returncode == 0, doctor.stdout + doctor.stderr[-2000:]
