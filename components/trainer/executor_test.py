"""The Trainer executor, called directly as TFX's executor tests do: in-memory
Examples (split directories of gzipped tf.Example TFRecords written here),
Schema, Model and ModelRun artifacts, and
`Executor(context).Do(input_dict, output_dict, exec_properties)` against a
real MLMD SQLite store named by CKPTFLOW_METADATA. The context's unique id is
the MLMD execution TFX would have recorded, so the test records one first.

The model module is this file: `build_training` below follows the contract
in components/trainer/contract.py (pipeline/model.py is a layer above).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from ml_metadata.proto import metadata_store_pb2
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils, standard_artifacts

from ckptflow.base.errors import CheckpointError, DataError
from ckptflow.components import checkpoint as ckpt_records
from ckptflow.components.trainer import executor
from ckptflow.components.trainer.contract import TrainingSetup, TrainingSpec

FEATURES = ("a", "b", "c")
LABEL = "y"
STEPS = 4
EVERY = 2


# --- the model module ----------------------------------------------------------


def build_training(spec: TrainingSpec) -> TrainingSetup:
  """A softmax regression over the features, trained with SGD."""
  inputs = {key: tf.keras.layers.Input(shape=(1,), name=key, dtype=tf.float32)
            for key in spec.feature_keys}
  joined = tf.keras.layers.Concatenate()(list(inputs.values()))
  outputs = tf.keras.layers.Dense(
      3, activation="softmax",
      kernel_initializer=tf.keras.initializers.GlorotUniform(seed=spec.seed))(joined)
  model = tf.keras.Model(inputs=inputs, outputs=outputs)
  optimizer = tf.keras.optimizers.SGD(0.1)
  loss_fn = tf.keras.losses.SparseCategoricalCrossentropy()

  def train_step(features, labels):
    with tf.GradientTape() as tape:
      loss = loss_fn(labels, model(features, training=True))
    gradients = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    return {"loss": loss}

  return TrainingSetup(model=model, optimizers={"sgd": optimizer}, train_step=train_step)


# --- artifacts -----------------------------------------------------------------


def write_examples(uri: str, rows_per_split: int = 32) -> standard_artifacts.Examples:
  """An Examples artifact with train and eval splits, as ExampleGen lays
  them out (Split-<name>/ holding gzipped TFRecords of tf.Example)."""
  rng = np.random.RandomState(0)
  for split in ("train", "eval"):
    directory = os.path.join(uri, f"Split-{split}")
    os.makedirs(directory)
    with tf.io.TFRecordWriter(os.path.join(directory, "data_tfrecord-00000-of-00001.gz"),
                              options="GZIP") as writer:
      for _ in range(rows_per_split):
        feature = {key: tf.train.Feature(float_list=tf.train.FloatList(value=[rng.rand()]))
                   for key in FEATURES}
        feature[LABEL] = tf.train.Feature(
            int64_list=tf.train.Int64List(value=[rng.randint(0, 3)]))
        writer.write(tf.train.Example(
            features=tf.train.Features(feature=feature)).SerializeToString())
  examples = standard_artifacts.Examples()
  examples.uri = uri
  examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
  return examples


def write_schema(uri: str, label_type=schema_pb2.INT) -> standard_artifacts.Schema:
  """A Schema artifact as SchemaGen writes it (one schema.pbtxt)."""
  schema = schema_pb2.Schema()
  for key in FEATURES:
    schema.feature.add(name=key, type=schema_pb2.FLOAT)
  schema.feature.add(name=LABEL, type=label_type)
  os.makedirs(uri)
  with open(os.path.join(uri, "schema.pbtxt"), "w") as f:
    f.write(text_format.MessageToString(schema))
  artifact = standard_artifacts.Schema()
  artifact.uri = uri
  return artifact


class TrainerRun:
  """One Trainer execution: its artifacts, properties and MLMD execution."""

  def __init__(self, root, store, examples, schema, **props):
    self.store = store
    [self.execution_id] = store.put_executions([metadata_store_pb2.Execution(
        type_id=store.put_execution_type(metadata_store_pb2.ExecutionType(
            name="ckptflow.components.trainer.component.CheckpointingTrainer")),
        last_known_state=metadata_store_pb2.Execution.RUNNING)])
    node = os.path.join(root, "pipeline_root", "CheckpointingTrainer")
    self.node_dir = node
    self.model = standard_artifacts.Model()
    self.model.uri = os.path.join(node, "model", str(self.execution_id))
    self.model_run = standard_artifacts.ModelRun()
    self.model_run.uri = os.path.join(node, "model_run", str(self.execution_id))
    self.input_dict = {executor.EXAMPLES_KEY: [examples], executor.SCHEMA_KEY: [schema]}
    self.output_dict = {executor.MODEL_KEY: [self.model],
                        executor.MODEL_RUN_KEY: [self.model_run]}
    self.exec_properties = {
        "module": __file__, "feature_keys": json.dumps(list(FEATURES)),
        "label_key": LABEL, "train_steps": STEPS, "batch_size": 4,
        "checkpoint_every": EVERY, "seed": 1, "hyperparameters": "{}"} | props

  def do(self, unique_id: str | None = "from-execution") -> None:
    if unique_id == "from-execution":
      unique_id = str(self.execution_id)
    context = base_executor.BaseExecutor.Context(unique_id=unique_id)
    executor.Executor(context).Do(self.input_dict, self.output_dict,
                                  dict(self.exec_properties))

  def finish(self, state) -> None:
    """Records how the execution ended, as the runner would."""
    [execution] = self.store.get_executions_by_id([self.execution_id])
    execution.last_known_state = state
    self.store.put_executions([execution])

  def events(self) -> list[metadata_store_pb2.Event]:
    return self.store.get_events_by_execution_ids([self.execution_id])


@pytest.fixture
def inputs(tmp_path, store_target, monkeypatch):
  monkeypatch.setenv("CKPTFLOW_METADATA", store_target)
  root = tmp_path / "pipeline_root"
  return (write_examples(str(root / "CsvExampleGen" / "examples" / "1")),
          write_schema(str(root / "SchemaGen" / "schema" / "2")))


def checkpoint_dirs(node_dir: str) -> list[str]:
  """Every published checkpoint directory under the node's checkpoints/."""
  found = []
  for directory, subdirs, _ in os.walk(os.path.join(node_dir, "checkpoints")):
    found += [os.path.join(directory, d) for d in subdirs if d.startswith("step-")]
  return sorted(found)


@pytest.mark.heavy
def test_training_registers_each_checkpoint_as_an_output_and_exports_the_model(
    tmp_path, store, inputs):
  run = TrainerRun(str(tmp_path), store, *inputs)

  run.do()

  # MLMD: one Checkpoint per interval, LIVE, an OUTPUT of this execution.
  records = sorted(ckpt_records.list_checkpoints(store), key=lambda r: r.step)
  assert [r.step for r in records] == list(range(EVERY, STEPS + 1, EVERY))
  outputs = {e.artifact_id for e in run.events()
             if e.type == metadata_store_pb2.Event.OUTPUT}
  assert outputs == {r.id for r in records}
  assert len({r.resume_key for r in records}) == 1
  for record in records:
    assert record.live and "loss" in record.metrics and record.size_bytes > 0
    # On disk: outside the Model's output directory (TFX deletes those when
    # an execution fails), under the node's checkpoints/ for this execution.
    assert record.uri.startswith(os.path.join(
        run.node_dir, "checkpoints", records[0].resume_key[:16],
        f"exec-{run.execution_id}") + os.sep)
    assert os.path.isfile(os.path.join(record.uri, "ckpt.index"))
  assert checkpoint_dirs(run.node_dir) == [r.uri for r in records]
  # The Model: a SavedModel under Format-Serving, tied to the last checkpoint.
  assert tf.saved_model.contains_saved_model(os.path.join(run.model.uri, "Format-Serving"))
  assert run.model.get_int_custom_property("checkpoint_id") == records[-1].id
  assert run.model.get_int_custom_property("checkpoint_step") == STEPS
  assert json.loads(run.model.get_string_custom_property("feature_dtypes")) == {
      key: "float32" for key in FEATURES}
  assert len(run.model.get_string_custom_property("fingerprint")) == 64
  # The ModelRun: where training ended and its last metrics.
  assert run.model_run.get_int_custom_property("final_step") == STEPS
  assert "loss" in json.loads(run.model_run.get_string_custom_property("metrics"))
  assert not run.model_run.has_custom_property("resumed_from_checkpoint")


@pytest.mark.heavy
def test_execution_that_did_not_finish_is_resumed_by_the_next_from_its_last_checkpoint(
    tmp_path, store, inputs):
  first = TrainerRun(str(tmp_path), store, *inputs)
  first.do()
  first.finish(metadata_store_pb2.Execution.FAILED)  # e.g. killed during the export
  [last] = [r for r in ckpt_records.list_checkpoints(store) if r.step == STEPS]

  retry = TrainerRun(str(tmp_path), store, *inputs)
  retry.do()

  assert retry.model_run.get_int_custom_property("resumed_from_checkpoint") == last.id
  assert retry.model_run.get_int_custom_property("final_step") == STEPS
  inputs_read = [(e.artifact_id, e.path.steps[0].key) for e in retry.events()
                 if e.type == metadata_store_pb2.Event.INPUT]
  assert inputs_read == [(last.id, "resumed_from")]
  # Nothing was trained again: no checkpoint of the retry's own.
  assert sorted(r.step for r in ckpt_records.list_checkpoints(store)) == [EVERY, STEPS]
  assert tf.saved_model.contains_saved_model(os.path.join(retry.model.uri, "Format-Serving"))


@pytest.mark.parametrize("unique_id", [None, "not-an-execution-id"], ids=["none", "not-a-number"])
def test_executor_without_a_tfx_execution_id_refuses_before_training(
    tmp_path, store, inputs, unique_id):
  run = TrainerRun(str(tmp_path), store, *inputs)

  with pytest.raises(CheckpointError, match="runs without a TFX execution id"):
    run.do(unique_id)

  assert ckpt_records.list_checkpoints(store) == []
  assert not os.path.exists(run.node_dir)


@pytest.mark.parametrize("props, schema_label, message", [
    ({"feature_keys": json.dumps(["a", "wingspan"])}, schema_pb2.INT,
     "feature column 'wingspan' is not in the data's schema"),
    ({"label_key": "species"}, schema_pb2.INT,
     "label column 'species' is not in the data's schema"),
    ({}, schema_pb2.FLOAT, "label column 'y' has type FLOAT; expected integer class ids"),
], ids=["unknown-feature", "unknown-label", "label-not-integer"])
def test_schema_that_does_not_fit_the_settings_fails_naming_the_column(
    tmp_path, store, store_target, monkeypatch, props, schema_label, message):
  monkeypatch.setenv("CKPTFLOW_METADATA", store_target)
  examples = write_examples(str(tmp_path / "examples"), rows_per_split=4)
  schema = write_schema(str(tmp_path / "schema"), label_type=schema_label)
  run = TrainerRun(str(tmp_path), store, examples, schema, **props)

  with pytest.raises(DataError) as raised:
    run.do()

  assert message in str(raised.value)
  assert ckpt_records.list_checkpoints(store) == []
  assert not os.path.exists(run.node_dir)
