"""The checkpointing Trainer's executor.

Reads the Examples and Schema, builds the user's training setup, resumes an
unfinished run (or warm-starts) from MLMD, trains with `TrainingLoop`
registering every checkpoint in MLMD as it goes, and exports the final
model as the `Model` output.

Checkpoints live under `<pipeline_root>/<node>/checkpoints/<run>/exec-<id>/`,
outside the output directories that TFX deletes when an execution fails, so
a failed or killed execution's checkpoints survive for the retry.

Under TFX's runners checkpoints are linked to the execution TFX records;
under KFP v2's container entrypoint the Trainer records an execution of its
own per attempt (`components/kubeflow/trainer_attempt.py`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import sys
from typing import Any, Dict, List, Mapping

import tensorflow as tf
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils

from ckptflow.components.checkpoint import CheckpointRecord, list_checkpoints
from ckptflow.components.trainer import checkpoint_files, export, policies
from ckptflow.components.trainer.contract import TrainingSetup, TrainingSpec
from ckptflow.components.trainer.keras_callback import fit_with_checkpoints
from ckptflow.components.trainer.loop import LoopSettings, TrainingLoop, count_records
from ckptflow.components.trainer.registration import MlmdCheckpointSink
from ckptflow.base import metadata
from ckptflow.base.errors import CheckpointError, ConfigError, DataError

_log = logging.getLogger(__name__)

EXAMPLES_KEY = "examples"
SCHEMA_KEY = "schema"
MODEL_KEY = "model"
MODEL_RUN_KEY = "model_run"


@dataclasses.dataclass(frozen=True)
class TrainerSettings:
  """The Trainer's execution properties, parsed and typed."""

  module: str
  style: str
  feature_keys: tuple[str, ...]
  label_key: str
  train_steps: int
  batch_size: int
  checkpoint_every: int
  checkpoint_every_seconds: float
  checkpoint_at_epoch_end: bool
  keep_last: int
  keep_best: int
  best_metric: str
  best_mode: str
  keep_every: int
  warm_start: str
  async_checkpoint: bool
  eval_every: int
  seed: int
  hyperparameters: Mapping[str, Any]
  warm_start_mode: str = "weights"
  warm_start_step: bool = False

  @classmethod
  def from_exec_properties(cls, props: Mapping[str, Any]) -> "TrainerSettings":
    return cls(
        module=props["module"],
        style=props.get("style") or "loop",
        feature_keys=tuple(json.loads(props["feature_keys"])),
        label_key=props["label_key"],
        train_steps=int(props["train_steps"]),
        batch_size=int(props["batch_size"]),
        checkpoint_every=int(props["checkpoint_every"]),
        checkpoint_every_seconds=float(props.get("checkpoint_every_seconds") or 0),
        checkpoint_at_epoch_end=bool(int(props.get("checkpoint_at_epoch_end") or 0)),
        keep_last=int(props.get("keep_last") or 0),
        keep_best=int(props.get("keep_best") or 0),
        best_metric=props.get("best_metric") or "loss",
        best_mode=props.get("best_mode") or "min",
        keep_every=int(props.get("keep_every") or 0),
        warm_start=props.get("warm_start") or "none",
        async_checkpoint=bool(int(props.get("async_checkpoint") or 0)),
        eval_every=int(props.get("eval_every") or 0),
        seed=int(props.get("seed") or 0),
        hyperparameters=json.loads(props.get("hyperparameters") or "{}"),
        warm_start_mode=props.get("warm_start_mode") or "weights",
        warm_start_step=bool(int(props.get("warm_start_step") or 0)),
    )

  def save_policy(self) -> policies.SavePolicy:
    rules: list[policies.SavePolicy] = [policies.EveryNSteps(self.checkpoint_every)]
    if self.checkpoint_every_seconds:
      rules.append(policies.EveryNSeconds(self.checkpoint_every_seconds))
    if self.checkpoint_at_epoch_end:
      rules.append(policies.AtEpochEnd())
    return policies.AnySave(tuple(rules))

  def retention_policy(self) -> policies.RetentionPolicy:
    rules: list[policies.RetentionPolicy] = []
    if self.keep_last:
      rules.append(policies.KeepLast(self.keep_last))
    if self.keep_best:
      rules.append(policies.KeepBest(self.keep_best, self.best_metric, self.best_mode))
    if self.keep_every:
      rules.append(policies.KeepEveryNSteps(self.keep_every))
    return policies.KeepAny(tuple(rules))

  def result_affecting(self) -> dict:
    """The settings that change what training computes (not how it is
    checkpointed), for the run's fingerprint."""
    return {"style": self.style, "feature_keys": list(self.feature_keys),
            "label_key": self.label_key,
            "train_steps": self.train_steps, "batch_size": self.batch_size,
            "seed": self.seed, "hyperparameters": dict(self.hyperparameters)}


def load_module(module: str):
  """Imports the user's model module: an import path, or a .py file."""
  try:
    if module.endswith(".py"):
      if not os.path.isfile(module):
        raise ConfigError(f"config: training.module file {module!r} does not exist")
      name = "ckptflow_user_module_" + hashlib.sha256(module.encode()).hexdigest()[:8]
      spec = importlib.util.spec_from_file_location(name, module)
      loaded = importlib.util.module_from_spec(spec)
      sys.modules[name] = loaded
      spec.loader.exec_module(loaded)
      return loaded
    return importlib.import_module(module)
  except ImportError as e:
    raise ConfigError(f"config: training.module {module!r} cannot be imported: {e}") from e


def module_fingerprint(module, settings: TrainerSettings) -> str:
  """sha256 of the model code and the settings that affect the result."""
  sha = hashlib.sha256()
  sha.update(inspect.getsource(module).encode())
  sha.update(json.dumps(settings.result_affecting(), sort_keys=True).encode())
  return sha.hexdigest()


def read_feature_dtypes(schema_uri: str, settings: TrainerSettings) -> tuple[dict, tf.DType]:
  """Feature -> tf dtype, and the label dtype, from the Schema artifact."""
  from tensorflow_metadata.proto.v0 import schema_pb2
  schema = io_utils.SchemaReader().read(io_utils.get_only_uri_in_dir(schema_uri))
  types_by_name = {f.name: f.type for f in schema.feature}
  numeric = {schema_pb2.FLOAT: tf.float32, schema_pb2.INT: tf.int64}
  dtypes = {}
  for key in settings.feature_keys:
    if key not in types_by_name:
      raise DataError(f"feature column {key!r} is not in the data's schema")
    if types_by_name[key] not in numeric:
      raise DataError(f"feature column {key!r} is not numeric (schema type "
                      f"{schema_pb2.FeatureType.Name(types_by_name[key])})")
    dtypes[key] = numeric[types_by_name[key]]
  label_type = types_by_name.get(settings.label_key)
  if label_type is None:
    raise DataError(f"label column {settings.label_key!r} is not in the data's schema")
  if label_type != schema_pb2.INT:
    raise DataError(f"label column {settings.label_key!r} has type "
                    f"{schema_pb2.FeatureType.Name(label_type)}; expected integer class ids")
  return dtypes, tf.int64


def make_dataset(files: List[str], feature_dtypes: Mapping[str, tf.DType],
                 label_key: str, batch_size: int, seed: int, *,
                 training: bool) -> tf.data.Dataset:
  """Batches of (features, labels) from gzipped tf.Example TFRecords.

  Deterministic: files in sorted order, seeded shuffle, no parallel
  interleaving, so a restored iterator continues exactly where it was.
  """
  spec = export.parse_spec(feature_dtypes) | {
      label_key: tf.io.FixedLenFeature([1], tf.int64)}

  def parse(serialized):
    parsed = tf.io.parse_example(serialized, spec)
    labels = parsed.pop(label_key)
    return export.as_model_inputs(parsed), labels

  dataset = tf.data.TFRecordDataset(sorted(files), compression_type="GZIP")
  if training:
    dataset = dataset.repeat().shuffle(1024, seed=seed, reshuffle_each_iteration=True)
  dataset = dataset.batch(batch_size, drop_remainder=training).map(parse)
  return dataset


def split_files(examples: types.Artifact, split: str) -> List[str]:
  uri = artifact_utils.get_split_uri([examples], split)
  files = sorted(os.path.join(uri, f) for f in tf.io.gfile.listdir(uri))
  if not files:
    raise DataError(f"Examples split {split!r} at {uri!r} is empty")
  return files


def pick_warm_start(store, choice: str, settings: TrainerSettings,
                    exclude_key: str) -> CheckpointRecord:
  """The checkpoint `warm_start` names: latest, best, or an artifact id."""
  candidates = [r for r in list_checkpoints(store) if r.live and r.resume_key != exclude_key]
  if choice.isdigit():
    matches = [r for r in list_checkpoints(store) if r.id == int(choice)]
    if not matches:
      raise CheckpointError(f"warm_start: no Checkpoint artifact with id {choice}")
    if not matches[0].live:
      raise CheckpointError(f"warm_start: checkpoint {choice} is {matches[0].state}, "
                            "its files are gone")
    return matches[0]
  if not candidates:
    raise CheckpointError(f"warm_start={choice!r}: the store holds no live checkpoint "
                          "of an earlier run")
  if choice == "latest":
    return max(candidates, key=lambda r: r.id)
  ranked = [r for r in candidates if settings.best_metric in r.metrics]
  if not ranked:
    raise CheckpointError(f"warm_start='best': no checkpoint records metric "
                          f"{settings.best_metric!r}")
  sign = 1 if settings.best_mode == "min" else -1
  return min(ranked, key=lambda r: (sign * r.metrics[settings.best_metric], -r.id))


class Executor(base_executor.BaseExecutor):
  """Trains with checkpoints registered in MLMD; exports the final model."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    self._train(input_dict, output_dict, exec_properties)

  def _train(self, input_dict: Dict[str, List[types.Artifact]],
             output_dict: Dict[str, List[types.Artifact]],
             exec_properties: Dict[str, Any]) -> None:
    self._log_startup(input_dict, output_dict, exec_properties)
    settings = TrainerSettings.from_exec_properties(exec_properties)
    examples = artifact_utils.get_single_instance(input_dict[EXAMPLES_KEY])
    schema = artifact_utils.get_single_instance(input_dict[SCHEMA_KEY])
    model_artifact = artifact_utils.get_single_instance(output_dict[MODEL_KEY])
    model_run = artifact_utils.get_single_instance(output_dict[MODEL_RUN_KEY])

    feature_dtypes, _ = read_feature_dtypes(schema.uri, settings)
    module = load_module(settings.module)
    fingerprint = module_fingerprint(module, settings)
    resume_key = hashlib.sha256(
        f"{fingerprint}|{examples.uri}|{schema.uri}".encode()).hexdigest()

    store = metadata.open_store(metadata.target_from_env())
    sink = self._checkpoint_sink(store, resume_key, exec_properties,
                                 {EXAMPLES_KEY: examples.uri, SCHEMA_KEY: schema.uri})
    execution_id = sink.execution_id

    tf.keras.utils.set_random_seed(settings.seed)
    tf.config.experimental.enable_op_determinism()
    rng = tf.random.Generator.from_seed(settings.seed)
    spec = TrainingSpec(feature_keys=settings.feature_keys, label_key=settings.label_key,
                        hyperparameters=settings.hyperparameters, seed=settings.seed, rng=rng)
    train_files = split_files(examples, "train")
    eval_files = split_files(examples, "eval")
    batches = make_dataset(train_files, feature_dtypes, settings.label_key,
                           settings.batch_size, settings.seed, training=True)
    eval_batches = make_dataset(eval_files, feature_dtypes, settings.label_key,
                                settings.batch_size, settings.seed, training=False)
    examples_per_epoch = count_records(
        tf.data.TFRecordDataset(train_files, compression_type="GZIP"))

    node_dir = os.path.dirname(os.path.dirname(model_artifact.uri.rstrip("/")))
    run_dir = os.path.join(node_dir, "checkpoints", resume_key[:16])
    # Unfinished writes of this training run's killed attempts; other runs'
    # directories are left alone (they may be writing right now).
    checkpoint_files.sweep_staging(run_dir)
    loop_settings = LoopSettings(
        train_steps=settings.train_steps,
        checkpoint_dir=os.path.join(run_dir, f"exec-{execution_id}"),
        fingerprint=fingerprint, resume_key=resume_key,
        examples_per_epoch=examples_per_epoch, batch_size=settings.batch_size,
        async_checkpoint=settings.async_checkpoint, eval_every=settings.eval_every)
    # Chosen only if there is nothing to resume: a resumed run continues
    # from its own checkpoint, whatever warm_start says.
    warm_start = None
    if settings.warm_start != "none":
      warm_start = lambda: pick_warm_start(store, settings.warm_start, settings, resume_key)

    if settings.style == "fit":
      trained_model, result = self._fit(module, spec, settings, batches, loop_settings,
                                        sink, warm_start)
    else:
      trained_model, result = self._loop(module, spec, settings, batches, eval_batches,
                                         loop_settings, sink, warm_start,
                                         os.path.join(model_run.uri, "tensorboard"))
    resumed = result.resumed_from

    export_dir = os.path.join(model_artifact.uri, export.SERVING_DIR_NAME)
    export.export_saved_model(trained_model, export_dir, feature_dtypes)
    final = result.final_checkpoint
    if final is not None:
      model_artifact.set_int_custom_property("checkpoint_id", final.id)
      model_artifact.set_int_custom_property("checkpoint_step", final.step)
    model_artifact.set_string_custom_property("fingerprint", fingerprint)
    model_artifact.set_string_custom_property(
        "feature_dtypes", json.dumps({k: v.name for k, v in feature_dtypes.items()}))
    model_run.set_int_custom_property("final_step", result.final_step)
    model_run.set_string_custom_property("metrics", json.dumps(result.metrics, sort_keys=True))
    if resumed is not None:
      model_run.set_int_custom_property("resumed_from_checkpoint", resumed.id)
    self._on_trained(sink, output_dict, checkpoint_dir=loop_settings.checkpoint_dir,
                     final_step=result.final_step)
    _log.info("trained to step %d; %d checkpoint(s) registered; model at %s",
              result.final_step, len(result.checkpoints), export_dir)

  @staticmethod
  def _loop(module, spec, settings, batches, eval_batches, loop_settings, sink,
            warm_start, summary_dir):
    if not hasattr(module, "build_training"):
      raise ConfigError(f"training.style='loop' needs {settings.module}.build_training(spec)")
    setup = module.build_training(spec)
    if not isinstance(setup, TrainingSetup):
      raise ConfigError(f"{settings.module}.build_training must return a TrainingSetup. "
                        f"Received: {type(setup).__name__}")
    loop = TrainingLoop(
        setup, batches=batches, eval_batches=eval_batches, rng=spec.rng,
        settings=loop_settings, save_policy=settings.save_policy(),
        retention=settings.retention_policy(), sink=sink,
        signal_policy=policies.OnSignal(), summary_dir=summary_dir)
    resumed = loop.resume()
    if resumed is None and warm_start is not None:
      loop.warm_start(warm_start(), mode=settings.warm_start_mode,
                      restore_step=settings.warm_start_step)
    return setup.model, loop.run(resumed)

  @staticmethod
  def _fit(module, spec, settings, batches, loop_settings, sink, warm_start):
    if not hasattr(module, "build_keras_model"):
      raise ConfigError(f"training.style='fit' needs {settings.module}.build_keras_model(spec)")
    model = module.build_keras_model(spec)
    if not isinstance(model, tf.keras.Model) or model.optimizer is None:
      raise ConfigError(f"{settings.module}.build_keras_model must return a compiled "
                        "tf.keras.Model")
    result = fit_with_checkpoints(
        model, batches=batches, settings=loop_settings, save_policy=settings.save_policy(),
        retention=settings.retention_policy(), sink=sink, warm_start=warm_start,
        warm_start_mode=settings.warm_start_mode,
        warm_start_step=settings.warm_start_step, signal_policy=policies.OnSignal())
    return model, result

  def _checkpoint_sink(self, store, resume_key: str, exec_properties: Dict[str, Any],
                       input_uris: Mapping[str, str]) -> MlmdCheckpointSink:
    """Where checkpoints are registered: against the execution a TFX runner
    made for this run. TFX's Python executor operator passes that MLMD
    execution id as the context's unique id (python_executor_operator.py).
    The Kubeflow variant (`components/kubeflow/components.py`) overrides
    this: KFP's entrypoint runs no TFX runner and records no execution."""
    unique_id = getattr(self._context, "_unique_id", None)
    if unique_id is None or not str(unique_id).isdigit():
      raise CheckpointError(
          "the Trainer executor runs without a TFX execution id (got "
          f"{unique_id!r}); on Kubeflow use KubeflowCheckpointingTrainer")
    return MlmdCheckpointSink(store, int(unique_id), resume_key)

  def _on_trained(self, sink: MlmdCheckpointSink, output_dict, *, checkpoint_dir: str,
                  final_step: int) -> None:
    """Called once training and export have succeeded; TFX records the
    execution itself, so nothing is left to do here."""
