"""The checkpointing Trainer's executor.

Reads the Examples and Schema into a `TrainingJob` (`job.py`), then trains
it: resumes an unfinished run (or warm-starts) from MLMD, trains with
`TrainingLoop` (or `model.fit`) registering every checkpoint in MLMD as it
goes, and exports the final model as the `Model` output.

Without a distribution strategy the job trains in this process. With one
(`distribution = "mirrored"` or `"multi_worker"`) it trains in fresh worker
processes (`workers.py`; a strategy must be created before any other
TensorFlow op, and this process has run many): their chief registers the
checkpoints against this execution and exports; this process waits, and
fails with one line naming a worker that died.

Checkpoints live under `<pipeline_root>/<node>/checkpoints/<run>/exec-<id>/`,
outside the output directories that TFX deletes when an execution fails, so
a failed or killed execution's checkpoints survive for the retry.

Under TFX's runners checkpoints are linked to the execution TFX records;
under KFP v2's container entrypoint the Trainer records an execution of its
own per attempt (`components/kubeflow/trainer_attempt.py`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Dict, List, Mapping

import tensorflow as tf
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils

from ckptflow.components.trainer import checkpoint_files, export, policies
# The job's settings and helpers, importable from here as before.
from ckptflow.components.trainer.job import (TrainerSettings, TrainingJob,  # noqa: F401
                                             load_module, make_dataset, module_fingerprint,
                                             pick_warm_start, train)
from ckptflow.components.trainer.loop import TrainingInterrupted, count_records
from ckptflow.components.trainer.registration import MlmdCheckpointSink
from ckptflow.components.trainer.worker import outcome_path
from ckptflow.components.trainer.workers import WorkerGroup, WorkerLost
from ckptflow.base import metadata, storage
from ckptflow.base.errors import CheckpointError, DataError

_log = logging.getLogger(__name__)

EXAMPLES_KEY = "examples"
SCHEMA_KEY = "schema"
MODEL_KEY = "model"
MODEL_RUN_KEY = "model_run"


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


def split_files(examples: types.Artifact, split: str) -> List[str]:
  uri = artifact_utils.get_split_uri([examples], split)
  files = sorted(os.path.join(uri, f) for f in tf.io.gfile.listdir(uri))
  if not files:
    raise DataError(f"Examples split {split!r} at {uri!r} is empty")
  return files


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

    train_files = split_files(examples, "train")
    eval_files = split_files(examples, "eval")
    node_dir = os.path.dirname(os.path.dirname(model_artifact.uri.rstrip("/")))
    run_dir = os.path.join(node_dir, "checkpoints", resume_key[:16])
    # Unfinished writes of this training run's killed attempts; other runs'
    # directories are left alone (they may be writing right now).
    checkpoint_files.sweep_staging(run_dir)
    job = TrainingJob(
        exec_properties={k: v for k, v in exec_properties.items()
                         if isinstance(v, (str, int, float, bool))},
        feature_dtypes={k: v.name for k, v in feature_dtypes.items()},
        train_files=tuple(train_files), eval_files=tuple(eval_files),
        examples_per_epoch=count_records(
            tf.data.TFRecordDataset(train_files, compression_type="GZIP")),
        checkpoint_dir=os.path.join(run_dir, f"exec-{execution_id}"),
        fingerprint=fingerprint, resume_key=resume_key, execution_id=execution_id,
        export_dir=os.path.join(model_artifact.uri, export.SERVING_DIR_NAME),
        summary_dir=os.path.join(model_run.uri, "tensorboard"))

    if settings.distribution == "none":
      outcome = self._train_here(job, store, sink, settings)
    else:
      outcome = self._train_in_workers(job, model_run.uri, sink, settings)

    final = outcome["final_checkpoint"]
    if final is not None:
      model_artifact.set_int_custom_property("checkpoint_id", final["id"])
      model_artifact.set_int_custom_property("checkpoint_step", final["step"])
    model_artifact.set_string_custom_property("fingerprint", fingerprint)
    model_artifact.set_string_custom_property("feature_dtypes", json.dumps(job.feature_dtypes))
    model_run.set_int_custom_property("final_step", outcome["final_step"])
    model_run.set_string_custom_property("metrics",
                                         json.dumps(outcome["metrics"], sort_keys=True))
    model_run.set_int_custom_property("replicas", settings.num_replicas)
    if outcome["resumed_from"] is not None:
      model_run.set_int_custom_property("resumed_from_checkpoint", outcome["resumed_from"])
    self._on_trained(sink, output_dict, checkpoint_dir=job.checkpoint_dir,
                     final_step=outcome["final_step"])
    _log.info("trained to step %d; %d checkpoint(s) registered; model at %s",
              outcome["final_step"], outcome["registered"], job.export_dir)

  @staticmethod
  def _train_here(job: TrainingJob, store, sink, settings: TrainerSettings) -> dict:
    """Trains in this process (no distribution strategy) and exports."""
    # Chosen only if there is nothing to resume: a resumed run continues
    # from its own checkpoint, whatever warm_start says.
    warm_start = None
    if settings.warm_start != "none":
      warm_start = lambda: pick_warm_start(store, settings.warm_start, settings,
                                           job.resume_key)
    trained_model, result = train(job, sink=sink, warm_start=warm_start,
                                  signal_policy=policies.OnSignal())
    export.export_saved_model(trained_model, job.export_dir, job.dtypes())
    final = result.final_checkpoint
    return {"final_step": result.final_step,
            "final_checkpoint": None if final is None else {"id": final.id, "step": final.step},
            "resumed_from": None if result.resumed_from is None else result.resumed_from.id,
            "registered": len(result.checkpoints), "metrics": dict(result.metrics)}

  @staticmethod
  def _train_in_workers(job: TrainingJob, job_dir: str, sink,
                        settings: TrainerSettings) -> dict:
    """Trains in fresh worker processes (`workers.py`, `worker.py`): the
    chief registers checkpoints against this execution and exports; this
    process waits for them and reads the chief's outcome.

    Raises:
      TrainingInterrupted: a signal stopped the workers after they saved.
      WorkerLost: a worker died; the others were stopped.
    """
    os.makedirs(job_dir, exist_ok=True)
    job_path = os.path.join(job_dir, "training_job.json")
    storage.atomic_write(job_path, job.to_json())
    _log.info("training with %s strategy: %d worker process(es), %d replica(s)",
              settings.distribution, settings.workers if settings.distribution ==
              "multi_worker" else 1, settings.num_replicas)
    group = WorkerGroup(job_path, kind=settings.distribution, workers=settings.workers)
    try:
      ended = group.start().wait()
    except WorkerLost as e:
      live = sink.live()
      if live:
        newest = max(live, key=lambda r: r.step)
        raise WorkerLost(f"{e} (checkpoint {newest.id}, step {newest.step})") from e
      raise WorkerLost(f"{e} (none registered yet: it starts over)") from e
    with open(outcome_path(job_path), encoding="utf-8") as f:
      outcome = json.load(f)
    if ended.state == "interrupted" or outcome.get("interrupted"):
      raise TrainingInterrupted(int(outcome.get("interrupted") or ended.signum or 15),
                                int(outcome["final_step"]))
    return outcome

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
