"""Tests for choosing a checkpoint to export and finding what made it (real
SQLite MLMD; no TensorFlow). Exporting itself is exercised end to end in
tests/test_promote_e2e.py."""

import json
import os

import pytest
from ml_metadata.proto import metadata_store_pb2

from ckptflow.operations import export as checkpoint_export
from ckptflow.components.checkpoint import (CheckpointRegistry, NewCheckpoint,
                                            get_checkpoint, set_states)
from ckptflow.base import mlmd
from ckptflow.base import storage
from ckptflow.base.errors import CheckpointError, CkptflowError
from ckptflow.base.metadata import open_store
from reliability_support import mysql_target

INPUT = metadata_store_pb2.Event.INPUT
OUTPUT = metadata_store_pb2.Event.OUTPUT
DELETED = metadata_store_pb2.Artifact.DELETED


def put_trainer(store, **props):
  """A Trainer-like execution recording settings as TFX records exec
  properties (custom properties), with Examples and Schema inputs."""
  type_id = store.put_execution_type(metadata_store_pb2.ExecutionType(name="Trainer"))
  execution = metadata_store_pb2.Execution(
      type_id=type_id, last_known_state=metadata_store_pb2.Execution.RUNNING)
  defaults = {"module": "ckptflow.pipeline.model", "feature_keys": json.dumps(["a", "b"]),
              "label_key": "species", "best_metric": "loss", "best_mode": "min"}
  for key, value in (defaults | props).items():
    if isinstance(value, int):
      execution.custom_properties[key].int_value = value
    else:
      execution.custom_properties[key].string_value = value
  examples_type = store.put_artifact_type(metadata_store_pb2.ArtifactType(name="Examples"))
  schema_type = store.put_artifact_type(metadata_store_pb2.ArtifactType(name="Schema"))
  examples = metadata_store_pb2.Artifact(type_id=examples_type, uri="/data/examples")
  schema = metadata_store_pb2.Artifact(type_id=schema_type, uri="/data/schema")
  pairs = []
  for artifact, key in ((examples, "examples"), (schema, "schema")):
    event = metadata_store_pb2.Event(type=INPUT)
    event.path.steps.add().key = key
    event.path.steps.add().index = 0
    pairs.append((artifact, event))
  execution_id, artifact_ids, _ = store.put_execution(execution, pairs, contexts=[])
  return execution_id, artifact_ids


def register(store, execution_id, step, resume_key="run-a", **metrics):
  registry = CheckpointRegistry(store, execution_id)
  return registry.register(NewCheckpoint(
      uri=f"/ckpt/{resume_key}/step-{step}", step=step, epoch=0,
      metrics=metrics or {"loss": 1.0 / step}, size_bytes=1, checksum=f"sum-{resume_key}-{step}",
      tf_version="x", fingerprint="fp", resume_key=resume_key))


def test_resolve_by_id_step_latest_and_best_in_the_latest_run(store):
  trainer, _ = put_trainer(store)
  old = register(store, trainer, 500, resume_key="run-old", loss=0.001)
  c100 = register(store, trainer, 100, loss=0.5)
  c200 = register(store, trainer, 200, loss=0.1)
  c300 = register(store, trainer, 300, loss=0.3)

  assert checkpoint_export.resolve_checkpoint(store, str(old.id)).id == old.id
  assert checkpoint_export.resolve_checkpoint(store, "step:200").id == c200.id
  assert checkpoint_export.resolve_checkpoint(store, "latest").id == c300.id
  # The older run's lower loss does not count: `best` is within the latest run.
  assert checkpoint_export.resolve_checkpoint(store, "best").id == c200.id
  assert checkpoint_export.resolve_checkpoint(store, " step:100 ").id == c100.id


def test_best_follows_the_trainers_recorded_metric_and_mode(store):
  trainer, _ = put_trainer(store, best_metric="eval_accuracy", best_mode="max")
  register(store, trainer, 100, loss=0.1, eval_accuracy=0.7)
  c200 = register(store, trainer, 200, loss=0.9, eval_accuracy=0.9)

  assert checkpoint_export.resolve_checkpoint(store, "best").id == c200.id


@pytest.mark.parametrize("spec", ["99999", "step:999", "step:", "step:-1", "newest",
                                  "", "1.5", "../1"])
def test_unknown_or_malformed_checkpoint_fails_with_one_line(store, spec):
  trainer, _ = put_trainer(store)
  register(store, trainer, 100)

  with pytest.raises(CheckpointError) as raised:
    checkpoint_export.resolve_checkpoint(store, spec)
  assert "\n" not in str(raised.value)


def test_pruned_checkpoint_is_refused_by_id_and_by_step(store):
  trainer, _ = put_trainer(store)
  pruned = register(store, trainer, 100)
  register(store, trainer, 200)
  set_states(store, [pruned.id], DELETED)

  for spec in (str(pruned.id), "step:100"):
    with pytest.raises(CheckpointError, match="DELETED"):
      checkpoint_export.resolve_checkpoint(store, spec)


def test_resolve_in_empty_store_says_to_run_first(store):
  with pytest.raises(CheckpointError, match="ckptflow run"):
    checkpoint_export.resolve_checkpoint(store, "latest")


def test_training_of_finds_settings_examples_and_schema_through_events(store):
  trainer, (examples_id, schema_id) = put_trainer(store, seed=7)
  record = register(store, trainer, 100)

  training = checkpoint_export.training_of(store, record)

  assert training.execution_id == trainer
  assert training.exec_properties["seed"] == 7
  assert json.loads(training.exec_properties["feature_keys"]) == ["a", "b"]
  assert training.examples.id == examples_id and training.examples.uri == "/data/examples"
  assert training.schema.id == schema_id
  assert training.model is None


def test_training_of_an_execution_without_settings_fails(store):
  trainer, _ = put_trainer(store, module="")
  record = register(store, trainer, 100)

  with pytest.raises(CheckpointError, match="'module'"):
    checkpoint_export.training_of(store, record)


def put_export(store, checkpoint_id, uri):
  model_type = mlmd.ensure_artifact_type(
      store, "Model", base_type=metadata_store_pb2.ArtifactType.MODEL)
  export_type = mlmd.ensure_execution_type(store, checkpoint_export.EXPORT_TYPE_NAME)
  model = metadata_store_pb2.Artifact(type_id=model_type, uri=uri,
                                      state=metadata_store_pb2.Artifact.LIVE)
  model.custom_properties["checkpoint_step"].int_value = 100
  execution = metadata_store_pb2.Execution(
      type_id=export_type, last_known_state=metadata_store_pb2.Execution.COMPLETE)
  _, ids, _ = store.put_execution(execution, [
      (None, mlmd.input_event("checkpoint", checkpoint_id)),
      (model, mlmd.output_event("model"))], contexts=[])
  return ids[-1]


def test_find_export_returns_newest_export_whose_files_exist(store, tmp_path):
  trainer, _ = put_trainer(store)
  record = register(store, trainer, 100)
  assert checkpoint_export.find_export(store, record.id) is None
  present = tmp_path / "present"
  (present / "Format-Serving").mkdir(parents=True)
  (present / "Format-Serving" / "saved_model.pb").write_bytes(b"pb")
  kept = put_export(store, record.id, str(present))
  put_export(store, record.id, str(tmp_path / "gone"))  # newer, files missing

  found = checkpoint_export.find_export(store, record.id)

  assert found.model_artifact_id == kept and found.reused
  assert found.saved_model_dir == str(present / "Format-Serving")


def test_protect_never_downgrades_and_restore_puts_back_what_was_there(store):
  trainer, _ = put_trainer(store)
  record = register(store, trainer, 100)

  before = checkpoint_export.protect(store, record.id, "exported")
  assert before is None and get_checkpoint(store, record.id).protected == "exported"
  assert checkpoint_export.protect(store, record.id, "promoted") == "exported"
  checkpoint_export.protect(store, record.id, "exported")
  assert get_checkpoint(store, record.id).protected == "promoted"

  checkpoint_export.restore_protection(store, record.id, None)
  [artifact] = store.get_artifacts_by_id([record.id])
  assert "protected" not in artifact.custom_properties


def test_model_type_registered_by_tfx_is_reused_not_redefined(store):
  tfx_like = metadata_store_pb2.ArtifactType(name="Model",
                                             base_type=metadata_store_pb2.ArtifactType.MODEL)
  type_id = store.put_artifact_type(tfx_like)

  assert mlmd.ensure_artifact_type(store, "Model") == type_id


def test_creatable_dir_check_refuses_a_path_under_a_file_and_creates_nothing(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")

  with pytest.raises(CkptflowError, match="not a directory"):
    storage.check_creatable_dir(str(blocker / "serving"), "serving directory")
  assert storage.check_creatable_dir(str(tmp_path / "a" / "b"), "x") == str(
      tmp_path / "a" / "b")
  assert not os.path.exists(tmp_path / "a")


def test_export_modules_import_without_tensorflow_or_tfx():
  import subprocess
  import sys
  code = ("import sys\n"
          "import ckptflow.operations.export, "
          "ckptflow.operations.promote, "
          "ckptflow.operations.evaluation\n"
          "heavy = sorted(m for m in ('tensorflow', 'tfx', 'tensorflow_model_analysis') "
          "if m in sys.modules)\n"
          "assert not heavy, heavy\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]



@pytest.mark.mysql
def test_choosing_finding_and_protecting_a_checkpoint_work_on_mariadb(mysql_database, tmp_path):
  store = open_store(mysql_target(mysql_database))
  trainer, _ = put_trainer(store)
  register(store, trainer, 100, loss=0.2)
  c200 = register(store, trainer, 200, loss=0.1)
  c300 = register(store, trainer, 300, loss=0.3)
  present = tmp_path / "export"
  (present / "Format-Serving").mkdir(parents=True)
  (present / "Format-Serving" / "saved_model.pb").write_bytes(b"pb")

  assert checkpoint_export.resolve_checkpoint(store, "best").id == c200.id
  assert checkpoint_export.resolve_checkpoint(store, "latest").id == c300.id
  model_id = put_export(store, c200.id, str(present))
  assert checkpoint_export.find_export(store, c200.id).model_artifact_id == model_id
  assert checkpoint_export.protect(store, c200.id, "promoted") is None
  assert get_checkpoint(store, c200.id).protected == "promoted"
