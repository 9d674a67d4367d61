"""The Pusher executor, called directly as TFX's executor tests do: in-memory
artifacts, `Executor().Do(input_dict, output_dict, exec_properties)`, a real
MLMD SQLite store named by CKPTFLOW_METADATA, and the serving root on disk.

The executor writes nothing to MLMD itself: TFX publishes its PushedModel
after Do returns. `publish` does what TFX's publisher does with it, so a
test can check how the next push reads the record back.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from ml_metadata.proto import metadata_store_pb2
from tfx.types import standard_artifacts, standard_component_specs

from ckptflow.base.errors import ServingError
from ckptflow.components import promotion
from ckptflow.components.checkpoint import CheckpointRegistry, NewCheckpoint, get_checkpoint
from ckptflow.components.pusher import serving
from ckptflow.components.pusher.executor import Executor

MODEL_NAME = "penguin"


@pytest.fixture
def pusher(tmp_path, store_target, monkeypatch):
  """A blessed Model (a SavedModel-shaped directory under Format-Serving)
  and the Pusher's inputs, outputs and exec properties around it."""
  monkeypatch.setenv("CKPTFLOW_METADATA", store_target)
  return PusherRun(tmp_path)


class PusherRun:
  """One Pusher execution's artifacts and properties."""

  def __init__(self, root):
    self.root = root
    self.serving_root = str(root / "serving")
    self.model = standard_artifacts.Model()
    self.model.uri = str(root / "pipeline_root" / "Trainer" / "model" / "3")
    self.saved_model = os.path.join(self.model.uri, "Format-Serving")
    os.makedirs(os.path.join(self.saved_model, "variables"))
    with open(os.path.join(self.saved_model, "saved_model.pb"), "wb") as f:
      f.write(b"saved-model-bytes")
    with open(os.path.join(self.saved_model, "variables",
                           "variables.data-00000-of-00001"), "wb") as f:
      f.write(b"\0" * 64)
    self.blessing = standard_artifacts.ModelBlessing()
    self.blessing.uri = str(root / "pipeline_root" / "Evaluator" / "blessing" / "4")
    self.blessing.set_int_custom_property("blessed", 1)
    self.exec_properties = {
        standard_component_specs.PUSH_DESTINATION_KEY: json.dumps(
            {"filesystem": {"base_directory": os.path.join(self.serving_root, MODEL_NAME)}}),
    }
    self.pushed = []

  def do(self) -> standard_artifacts.PushedModel:
    """Runs the executor once with a fresh PushedModel output; returns it."""
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(self.root / "pipeline_root" / "Pusher" / "pushed_model"
                     / str(len(self.pushed) + 5))
    self.pushed.append(pushed)
    Executor().Do(
        {standard_component_specs.MODEL_KEY: [self.model],
         standard_component_specs.MODEL_BLESSING_KEY: [self.blessing]},
        {standard_component_specs.PUSHED_MODEL_KEY: [pushed]},
        dict(self.exec_properties))
    return pushed


def publish(store, artifact) -> int:
  """Records `artifact` as an OUTPUT of a completed Pusher execution, as
  TFX's publisher does once Do has returned; returns its id."""
  artifact.mlmd_artifact.type_id = store.put_artifact_type(artifact.artifact_type)
  artifact.mlmd_artifact.state = metadata_store_pb2.Artifact.LIVE
  execution_type = store.put_execution_type(
      metadata_store_pb2.ExecutionType(name="ckptflow.components.pusher.component.Pusher"))
  execution = metadata_store_pb2.Execution(
      type_id=execution_type, last_known_state=metadata_store_pb2.Execution.COMPLETE)
  event = metadata_store_pb2.Event(type=metadata_store_pb2.Event.OUTPUT)
  event.path.steps.add().key = standard_component_specs.PUSHED_MODEL_KEY
  event.path.steps.add().index = 0
  _, [artifact_id], _ = store.put_execution(
      execution, [(artifact.mlmd_artifact, event)], contexts=[])
  return artifact_id


def tree(root: str) -> list[str]:
  """Every path under `root`, relative, sorted (empty if it does not exist)."""
  return sorted(os.path.relpath(os.path.join(d, n), root)
                for d, dirs, files in os.walk(root) for n in dirs + files)


def mlmd_counts(store) -> tuple[int, int]:
  return len(store.get_artifacts()), len(store.get_executions())


def test_blessed_model_is_published_as_version_1_labelled_stable_in_models_config(
    pusher, store):
  pushed = pusher.do()

  version_dir = os.path.join(pusher.serving_root, MODEL_NAME, "1")
  with open(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
    assert f.read() == b"saved-model-bytes"
  assert os.path.isfile(os.path.join(version_dir, "variables",
                                     "variables.data-00000-of-00001"))
  # Nothing but the published version (dot files are the pusher's own).
  assert [n for n in os.listdir(os.path.join(pusher.serving_root, MODEL_NAME))
          if not n.startswith(".")] == ["1"]
  assert pushed.get_int_custom_property("pushed") == 1
  assert pushed.get_string_custom_property("pushed_version") == "1"
  assert pushed.get_string_custom_property("pushed_destination") == version_dir
  assert pushed.get_string_custom_property("model_name") == MODEL_NAME
  assert pushed.get_int_custom_property("version") == 1
  assert pushed.get_string_custom_property("label") == "stable"
  # models.config is written by the executor: TFX publishes the record later.
  state = serving.read_models_config(pusher.serving_root)[MODEL_NAME]
  assert sorted(state.versions) == [1]
  assert dict(state.labels) == {"stable": 1}
  assert store.get_artifacts() == []

  artifact_id = publish(store, pushed)

  [record] = promotion.served_versions(store, MODEL_NAME)
  assert (record.artifact_id, record.version, record.label, record.path) == (
      artifact_id, 1, "stable", version_dir)
  assert promotion.current_labels(store, MODEL_NAME) == {"stable": 1}


def test_version_recorded_in_mlmd_is_not_reused_after_the_serving_root_is_wiped(
    pusher, store):
  publish(store, pusher.do())
  shutil.rmtree(pusher.serving_root)

  second = pusher.do()

  assert second.get_string_custom_property("pushed_version") == "2"
  assert [n for n in os.listdir(os.path.join(pusher.serving_root, MODEL_NAME))
          if not n.startswith(".")] == ["2"]
  state = serving.read_models_config(pusher.serving_root)[MODEL_NAME]
  assert sorted(state.versions) == [2]
  assert dict(state.labels) == {"stable": 2}


def test_second_push_is_the_next_version_and_takes_the_label(pusher, store):
  publish(store, pusher.do())

  second = pusher.do()

  assert second.get_string_custom_property("pushed_version") == "2"
  state = serving.read_models_config(pusher.serving_root)[MODEL_NAME]
  assert sorted(state.versions) == [2]
  assert dict(state.labels) == {"stable": 2}
  publish(store, second)
  assert [r.version for r in promotion.served_versions(store, MODEL_NAME)] == [1, 2]


def test_label_from_custom_config_names_the_pushed_version(pusher, store):
  pusher.exec_properties[standard_component_specs.CUSTOM_CONFIG_KEY] = json.dumps(
      {"label": "canary"})

  pushed = pusher.do()

  assert pushed.get_string_custom_property("label") == "canary"
  state = serving.read_models_config(pusher.serving_root)[MODEL_NAME]
  assert dict(state.labels) == {"canary": 1}
  publish(store, pushed)
  assert promotion.current_labels(store, MODEL_NAME) == {"canary": 1}


def test_model_that_is_not_blessed_is_recorded_as_not_pushed_and_nothing_is_written(
    pusher, store):
  pusher.blessing.set_int_custom_property("blessed", 0)
  before = mlmd_counts(store)

  pushed = pusher.do()

  assert pushed.get_int_custom_property("pushed") == 0
  assert pushed.get_string_custom_property("model_name") == MODEL_NAME
  assert pushed.get_string_custom_property("reason") == "model not blessed"
  assert not os.path.exists(pusher.serving_root)
  assert mlmd_counts(store) == before
  # Recorded, it is a PushedModel that names no served version.
  publish(store, pushed)
  assert promotion.served_versions(store, MODEL_NAME) == []


@pytest.mark.parametrize("destination, custom_config, message", [
    ({"filesystem": {}}, None, "base_directory is not set"),
    ({"filesystem": {"base_directory": "SERVING/bad name"}}, None, "bad name"),
    ({"filesystem": {"base_directory": "SERVING/penguin"}}, {"label": "1-not-a-label"},
     "1-not-a-label"),
], ids=["no-base-directory", "bad-model-name", "bad-label"])
def test_bad_destination_or_label_fails_before_anything_is_written(
    pusher, store, destination, custom_config, message):
  if "base_directory" in destination["filesystem"]:
    destination["filesystem"]["base_directory"] = destination["filesystem"][
        "base_directory"].replace("SERVING", pusher.serving_root)
  pusher.exec_properties[standard_component_specs.PUSH_DESTINATION_KEY] = json.dumps(
      destination)
  if custom_config is not None:
    pusher.exec_properties[standard_component_specs.CUSTOM_CONFIG_KEY] = json.dumps(
        custom_config)
  before = mlmd_counts(store)

  with pytest.raises(ServingError, match=message):
    pusher.do()

  assert tree(pusher.serving_root) == []
  assert not pusher.pushed[-1].has_custom_property("pushed")
  assert mlmd_counts(store) == before


def _register_source_checkpoint(store, pusher) -> int:
  """A Checkpoint in the store, named by the Model's `checkpoint_id` as the
  Trainer names the checkpoint its final Model was written from."""
  type_id = store.put_execution_type(metadata_store_pb2.ExecutionType(name="Trainer"))
  trainer_id, _, _ = store.put_execution(
      metadata_store_pb2.Execution(type_id=type_id), [], contexts=[])
  record = CheckpointRegistry(store, trainer_id).register(NewCheckpoint(
      uri=str(pusher.root / "checkpoints" / "step-300"), step=300, epoch=0,
      metrics={"loss": 0.1}, size_bytes=1, checksum="sum", tf_version="x",
      fingerprint="fp", resume_key="run"))
  pusher.model.set_int_custom_property("checkpoint_id", record.id)
  return record.id


def test_checkpoint_behind_a_pushed_model_is_protected_from_pruning(pusher, store):
  checkpoint_id = _register_source_checkpoint(store, pusher)

  pusher.do()

  assert get_checkpoint(store, checkpoint_id).protected == "promoted"


def test_checkpoint_behind_a_model_not_blessed_stays_unprotected(pusher, store):
  checkpoint_id = _register_source_checkpoint(store, pusher)
  pusher.blessing.set_int_custom_property("blessed", 0)

  pusher.do()

  assert get_checkpoint(store, checkpoint_id).protected == ""
