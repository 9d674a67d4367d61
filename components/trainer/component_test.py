"""The CheckpointingTrainer component: its spec wiring and the checks that
fail when the pipeline is built, before anything runs."""

from __future__ import annotations

import json

import pytest
from tfx import types
from tfx.types import standard_artifacts

from ckptflow.components.trainer import executor
from ckptflow.components.trainer.component import CheckpointingTrainer


def trainer(**overrides) -> CheckpointingTrainer:
  arguments = dict(
      examples=types.Channel(type=standard_artifacts.Examples),
      schema=types.Channel(type=standard_artifacts.Schema),
      module="my_project.model", feature_keys=["a", "b"], label_key="y",
      train_steps=100, batch_size=8, checkpoint_every=10)
  return CheckpointingTrainer(**(arguments | overrides))


def test_parameters_are_encoded_as_tfx_exec_properties():
  component = trainer(checkpoint_at_epoch_end=True, async_checkpoint=True,
                      checkpoint_every_seconds=30, keep_last=3,
                      hyperparameters={"units": [8], "learning_rate": 0.1})

  props = component.exec_properties
  assert json.loads(props["feature_keys"]) == ["a", "b"]
  assert props["hyperparameters"] == '{"learning_rate": 0.1, "units": [8]}'
  assert (props["checkpoint_at_epoch_end"], props["async_checkpoint"]) == (1, 1)
  assert props["checkpoint_every_seconds"] == 30.0
  assert (props["module"], props["style"], props["label_key"]) == (
      "my_project.model", "loop", "y")
  assert (props["train_steps"], props["batch_size"], props["checkpoint_every"],
          props["keep_last"], props["warm_start"]) == (100, 8, 10, 3, "none")
  # What the executor reads back is what was given.
  settings = executor.TrainerSettings.from_exec_properties(props)
  assert settings.feature_keys == ("a", "b")
  assert settings.hyperparameters == {"units": [8], "learning_rate": 0.1}
  assert settings.checkpoint_at_epoch_end and settings.async_checkpoint


def test_inputs_outputs_and_executor_are_wired():
  component = trainer()

  assert set(component.inputs) == {executor.EXAMPLES_KEY, executor.SCHEMA_KEY}
  assert component.outputs[executor.MODEL_KEY].type is standard_artifacts.Model
  assert component.outputs[executor.MODEL_RUN_KEY].type is standard_artifacts.ModelRun
  assert component.executor_spec.executor_class is executor.Executor
  assert not any("checkpoint" in key for key in component.outputs)  # registered, not returned


@pytest.mark.parametrize("overrides, message", [
    ({"style": "estimator"}, "style must be 'loop' or 'fit'. Received: 'estimator'"),
    ({"feature_keys": []}, "needs at least one feature key"),
    ({"feature_keys": ["a", "y"]}, "label 'y' is also listed as a feature"),
    ({"train_steps": 0}, "must be positive. Received: 0, 8, 10"),
    ({"batch_size": -1}, "must be positive. Received: 100, -1, 10"),
    ({"checkpoint_every": 0}, "must be positive. Received: 100, 8, 0"),
])
def test_bad_parameters_fail_when_the_pipeline_is_built(overrides, message):
  with pytest.raises(ValueError) as raised:
    trainer(**overrides)
  assert message in str(raised.value)


@pytest.mark.parametrize("channel, wrong", [
    ("examples", standard_artifacts.Schema),
    ("schema", standard_artifacts.Examples),
])
def test_channel_of_the_wrong_artifact_type_fails_when_the_pipeline_is_built(channel, wrong):
  with pytest.raises(TypeError) as raised:
    trainer(**{channel: types.Channel(type=wrong)})
  # TFX's spec check names the argument and both types.
  assert channel in str(raised.value)
  assert wrong.TYPE_NAME in str(raised.value)
