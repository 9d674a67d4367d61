"""Exports any registered checkpoint as a servable SavedModel, recorded in MLMD.

`ckptflow export CHECKPOINT` and `ckptflow promote` go through here:

1. `resolve_checkpoint` turns what the user typed (an artifact id, `step:N`
   of the latest training run, `best` or `latest`) into a LIVE Checkpoint.
2. `training_of` walks MLMD events back to the Trainer execution that wrote
   it (the execution with an OUTPUT event to it): the module, feature keys,
   label, hyperparameters and seed it recorded, and the Examples and Schema
   it read (its INPUT events).
3. `export_checkpoint` rebuilds the model from that module, restores the
   checkpoint's model weights (after checking the files' sha256), writes a
   SavedModel (`serving_default` on serialized tf.Example, `serving_raw` on
   features; `components/trainer/export.py`) and records a `ckptflow.Export`
   execution: INPUT the Checkpoint, OUTPUT a new TFX `Model` artifact. An
   existing export of the same checkpoint is reused.

Guarantees:

* The checkpoint is marked protected (retention never prunes it) before the
  export's files become visible. If the export fails, the protection is put
  back as it was.
* An export is written into a `.staging` directory, fsynced, renamed into
  place (`storage.publish_dir`), and only then recorded, in one MLMD transaction (execution, Model,
  events). A killed export leaves at most a staging directory (removed by
  the next export of that checkpoint) or an unrecorded directory; never a
  record without its files.
* Exports of one checkpoint are serialised by a flock, so concurrent
  promotions of one checkpoint share one export.
* Records are not attributed to the pipeline's contexts: they are not
  pipeline runs, and TFX's resolvers must not mistake them for pipeline
  outputs. Lineage is carried by events alone.

Resolution and provenance import neither TensorFlow nor TFX; the export
imports them when it runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import logging
import os
from typing import Any, Mapping

from ml_metadata import errors as mlmd_errors
from ml_metadata.proto import metadata_store_pb2

from ckptflow.components import checkpoint as checkpoints
from ckptflow.components.checkpoint import CheckpointRecord
from ckptflow.base import home as home_layout
from ckptflow.base import storage
from ckptflow.base.errors import CheckpointError
from ckptflow.base import mlmd
from ckptflow.base.metadata import Store

EXPORT_TYPE_NAME = "ckptflow.Export"
MODEL_TYPE_NAME = "Model"
EXPORT_DIR_NAME = home_layout.EXPORT_DIR  # under the pipeline root: Home.export_root
SERVING_DIR_NAME = "Format-Serving"  # TFX's layout inside a Model artifact
STAGING_SUFFIX = ".staging"

_INPUT = metadata_store_pb2.Event.INPUT
_OUTPUT = metadata_store_pb2.Event.OUTPUT
_LIVE = metadata_store_pb2.Artifact.LIVE
_SPEC_EXPECTED = ("Expected a Checkpoint artifact id, step:N (a step of the "
                  "latest training run), best or latest")

_log = logging.getLogger(__name__)


# --- which checkpoint --------------------------------------------------------


def _pruned(record: CheckpointRecord) -> CheckpointError:
  return CheckpointError(
      f"checkpoint {record.id} (step {record.step}) is {record.state}: its files "
      "are gone. Expected a LIVE checkpoint (list them with `ckptflow checkpoints`)")


def _latest_run(records: list[CheckpointRecord]) -> list[CheckpointRecord]:
  """The checkpoints of the training run that registered the newest one (a
  run is one resume key: the executions that resumed each other)."""
  newest = max(records, key=lambda r: r.id)
  return [r for r in records if r.resume_key == newest.resume_key]


def resolve_checkpoint(store: Store, spec: str) -> CheckpointRecord:
  """The LIVE checkpoint `spec` names.

  `spec` is a Checkpoint artifact id; `step:N`, the checkpoint at step N of
  the latest training run; `latest`, that run's highest step; or `best`,
  that run's best checkpoint by the metric and mode its Trainer kept the
  best by (`best_metric`, `best_mode`; default lowest `loss`). Read-only.

  Raises:
    CheckpointError: `spec` is malformed, names no Checkpoint, or names one
      whose files were pruned (DELETED) or found damaged (ABANDONED).
  """
  text = str(spec).strip()
  if text.isdigit():
    record = checkpoints.get_checkpoint(store, int(text))
    if not record.live:
      raise _pruned(record)
    return record
  records = checkpoints.list_checkpoints(store)
  if text not in ("latest", "best") and not (text.startswith("step:") and text[5:].isdigit()):
    raise CheckpointError(f"checkpoint {text!r} is not valid. {_SPEC_EXPECTED}")
  if not records:
    raise CheckpointError(f"checkpoint {text!r}: the metadata store holds no "
                          "checkpoint. Run `ckptflow run` first")
  run = _latest_run(records)
  live = [r for r in run if r.live]
  if text.startswith("step:"):
    step = int(text[5:])
    at_step = sorted((r for r in run if r.step == step), key=lambda r: r.id)
    if not at_step:
      raise CheckpointError(
          f"checkpoint {text!r}: the latest run has no checkpoint at step {step}. "
          f"Its steps: {', '.join(str(r.step) for r in sorted(run, key=lambda r: r.step))}")
    live_at_step = [r for r in at_step if r.live]
    if not live_at_step:
      raise _pruned(at_step[-1])
    return live_at_step[-1]
  if not live:
    raise CheckpointError(f"checkpoint {text!r}: every checkpoint of the latest "
                          "run was pruned. Pass a checkpoint id instead")
  if text == "latest":
    return max(live, key=lambda r: (r.step, r.id))
  metric, mode = _best_rule(store, live)
  ranked = [r for r in live if isinstance(r.metrics.get(metric), (int, float))]
  if not ranked:
    raise CheckpointError(f"checkpoint 'best': no live checkpoint of the latest run "
                          f"records metric {metric!r}. Pass a checkpoint id instead")
  sign = 1 if mode == "min" else -1
  return min(ranked, key=lambda r: (sign * r.metrics[metric], -r.step, -r.id))


def _best_rule(store, records: list[CheckpointRecord]) -> tuple[str, str]:
  """(metric, "min"|"max") the run's Trainer ranked its checkpoints by."""
  producers = checkpoints.producer_execution_ids(store, [records[-1].id])
  execution_ids = list(producers.values())
  executions = store.get_executions_by_id(execution_ids) if execution_ids else []
  props = mlmd.properties(executions[0]) if executions else {}
  metric = props.get("best_metric") or "loss"
  mode = props.get("best_mode") if props.get("best_mode") in ("min", "max") else "min"
  return str(metric), str(mode)


# --- where it came from --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Training:
  """The Trainer execution that wrote a checkpoint, as MLMD records it.

  `exec_properties` are its recorded execution properties (module,
  feature_keys JSON, label_key, hyperparameters JSON, seed, ...);
  `examples`, `schema` the artifacts it read (None if not recorded);
  `model` the Model it output (None if it never finished).
  """

  execution_id: int
  exec_properties: Mapping[str, Any]
  examples: metadata_store_pb2.Artifact | None
  schema: metadata_store_pb2.Artifact | None
  model: metadata_store_pb2.Artifact | None


def _first_key(event: metadata_store_pb2.Event) -> str:
  return next((s.key for s in event.path.steps if s.HasField("key")), "")


def training_of(store: Store, record: CheckpointRecord) -> Training:
  """The Trainer execution that produced `record` (its OUTPUT event), with
  its recorded settings and its input and output artifacts. Read-only.

  Raises:
    CheckpointError: no execution produced the checkpoint, or it does not
      record the settings a rebuild needs (module, feature_keys, label_key).
  """
  producers = checkpoints.producer_execution_ids(store, [record.id])
  if record.id not in producers:
    raise CheckpointError(f"checkpoint {record.id} has no producing execution in "
                          "the metadata store. Expected one written by the Trainer")
  execution_id = producers[record.id]
  [execution] = store.get_executions_by_id([execution_id])
  props = mlmd.properties(execution)
  missing = [k for k in ("module", "feature_keys", "label_key") if not props.get(k)]
  if missing:
    raise CheckpointError(
        f"execution {execution_id}, which wrote checkpoint {record.id}, does not "
        f"record {missing[0]!r}. Expected a CheckpointingTrainer execution")
  events = store.get_events_by_execution_ids([execution_id])
  wanted = {(_INPUT, "examples"): None, (_INPUT, "schema"): None, (_OUTPUT, "model"): None}
  for event in events:
    slot = (event.type, _first_key(event))
    if slot in wanted:
      wanted[slot] = event.artifact_id
  ids = [i for i in wanted.values() if i is not None]
  found = {a.id: a for a in (store.get_artifacts_by_id(ids) if ids else [])}
  return Training(
      execution_id=execution_id, exec_properties=props,
      examples=found.get(wanted[(_INPUT, "examples")]),
      schema=found.get(wanted[(_INPUT, "schema")]),
      model=found.get(wanted[(_OUTPUT, "model")]))


# --- records -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExportRecord:
  """A checkpoint exported as a `Model` artifact (TFX layout: the SavedModel
  is `uri/Format-Serving`). `reused`: an earlier export was found."""

  model_artifact_id: int
  execution_id: int
  checkpoint_id: int
  checkpoint_step: int
  uri: str
  reused: bool = False

  @property
  def saved_model_dir(self) -> str:
    return os.path.join(self.uri, SERVING_DIR_NAME)

  def as_json(self) -> dict:
    return dataclasses.asdict(self) | {"saved_model_dir": self.saved_model_dir}


def find_export(store: Store, checkpoint_id: int) -> ExportRecord | None:
  """The newest complete export of checkpoint `checkpoint_id` whose Model is
  LIVE and whose SavedModel is on disk, or None. Read-only."""
  try:
    export_type = store.get_execution_type(EXPORT_TYPE_NAME)
  except mlmd_errors.NotFoundError:
    return None
  events = store.get_events_by_artifact_ids([checkpoint_id])
  execution_ids = sorted({e.execution_id for e in events if e.type == _INPUT})
  if not execution_ids:
    return None
  executions = [e for e in store.get_executions_by_id(execution_ids)
                if e.type_id == export_type.id
                and e.last_known_state == metadata_store_pb2.Execution.COMPLETE]
  if not executions:
    return None
  outputs = [e for e in store.get_events_by_execution_ids([x.id for x in executions])
             if e.type == _OUTPUT]
  models = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in outputs])}
  for out in sorted(outputs, key=lambda e: e.artifact_id, reverse=True):
    model = models.get(out.artifact_id)
    if model is None or model.state != _LIVE:
      continue
    if not os.path.isfile(os.path.join(model.uri, SERVING_DIR_NAME, "saved_model.pb")):
      _log.warning("export Model %d of checkpoint %d is recorded but its files at %s "
                   "are gone; exporting again", model.id, checkpoint_id, model.uri)
      continue
    return ExportRecord(model_artifact_id=model.id, execution_id=out.execution_id,
                        checkpoint_id=checkpoint_id,
                        checkpoint_step=mlmd.properties(model).get("checkpoint_step", -1),
                        uri=model.uri, reused=True)
  return None


def _record_export(store, record: CheckpointRecord, uri: str, *, fingerprint: str,
                   feature_dtypes: Mapping[str, str], module: str) -> ExportRecord:
  model_type_id = mlmd.ensure_artifact_type(store, MODEL_TYPE_NAME,
                                            base_type=metadata_store_pb2.ArtifactType.MODEL)
  export_type_id = mlmd.ensure_execution_type(store, EXPORT_TYPE_NAME)
  model = metadata_store_pb2.Artifact(type_id=model_type_id, uri=uri, state=_LIVE)
  props = model.custom_properties
  props["checkpoint_id"].int_value = record.id
  props["checkpoint_step"].int_value = record.step
  props["fingerprint"].string_value = record.fingerprint or fingerprint
  props["fingerprint_matches"].int_value = int(fingerprint == record.fingerprint)
  props["feature_dtypes"].string_value = json.dumps(dict(feature_dtypes))
  # TFX reads a Model without tfx_version as a pre-0.x layout (no
  # Format-Serving); ours is the current layout.
  props["tfx_version"].string_value = _tfx_version()
  execution = metadata_store_pb2.Execution(
      type_id=export_type_id, last_known_state=metadata_store_pb2.Execution.COMPLETE)
  exec_props = execution.custom_properties
  exec_props["checkpoint_id"].int_value = record.id
  exec_props["checkpoint_step"].int_value = record.step
  exec_props["module"].string_value = module
  exec_props["exported_at"].string_value = datetime.datetime.now(
      datetime.timezone.utc).isoformat(timespec="milliseconds")
  # The checkpoint is passed as an event only (artifact None), so this
  # transaction cannot overwrite it.
  execution_id, artifact_ids, _ = store.put_execution(execution, [
      (None, mlmd.input_event("checkpoint", record.id)),
      (model, mlmd.output_event("model"))], contexts=[])
  return ExportRecord(model_artifact_id=artifact_ids[-1], execution_id=execution_id,
                      checkpoint_id=record.id, checkpoint_step=record.step, uri=uri)


def _tfx_version() -> str:
  try:
    return importlib.metadata.version("tfx")
  except importlib.metadata.PackageNotFoundError:
    return "1.16.0"


# --- protection --------------------------------------------------------------


def protect(store: Store, checkpoint_id: int, reason: str) -> str | None:
  """`checkpoint.protect`: marks the checkpoint protected, never downgrading
  "promoted"; returns the protection it had before."""
  return checkpoints.protect(store, checkpoint_id, reason)


def restore_protection(store: Store, checkpoint_id: int,
                       before: str | None) -> None:
  """Puts the checkpoint's protection back to `before` (None: removes it)."""
  [artifact] = store.get_artifacts_by_id([checkpoint_id])
  custom = artifact.custom_properties
  if before is None:
    if "protected" not in custom:
      return
    del custom["protected"]
  else:
    custom["protected"].string_value = before
  store.put_artifacts([artifact])


# --- files -------------------------------------------------------------------


# --- rebuild and export (TensorFlow) -------------------------------------------


@dataclasses.dataclass(frozen=True)
class RebuiltModel:
  """A model rebuilt from its module and restored from a checkpoint."""

  model: Any  # tf.keras.Model
  feature_dtypes: Mapping[str, Any]  # feature -> tf.DType, as in tf.Examples
  fingerprint: str  # of the module and settings now (compare the checkpoint's)
  module: str


def rebuild_model(store: Store, record: CheckpointRecord,
                  training: Training | None = None) -> RebuiltModel:
  """Rebuilds the model `record`'s Trainer trained, with the recorded module,
  hyperparameters and seed, and restores the checkpoint's model weights.

  The checkpoint's files must match their recorded sha256, and every
  variable of the rebuilt model must be restored from the checkpoint. If the
  module's code or settings no longer fingerprint as they did when the
  checkpoint was written, a warning is logged (`RebuiltModel.fingerprint`
  is today's).

  Raises:
    CheckpointError: the files changed, or the checkpoint does not restore
      into the rebuilt model (e.g. the architecture changed).
    ConfigError: the module cannot be imported.
  """
  import tensorflow as tf

  from ckptflow.components.trainer import checkpoint_files
  from ckptflow.components.trainer.contract import TrainingSetup, TrainingSpec
  from ckptflow.components.trainer.executor import (TrainerSettings, load_module,
                                                    module_fingerprint, read_feature_dtypes)

  training = training or training_of(store, record)
  props = dict(training.exec_properties)
  try:
    settings = TrainerSettings.from_exec_properties(props)
  except (KeyError, ValueError, TypeError) as e:
    raise CheckpointError(f"execution {training.execution_id}, which wrote checkpoint "
                          f"{record.id}, records unusable settings: {e!r}") from e
  module = load_module(settings.module)
  fingerprint = module_fingerprint(module, settings)
  if record.fingerprint and fingerprint != record.fingerprint:
    # The model code, or how ckptflow fingerprints settings, changed since
    # training. Not an error by itself: a different architecture fails the
    # restore below; the export records that the fingerprints differ.
    _log.warning("checkpoint %d was fingerprinted %s… when written; %r and its "
                 "settings fingerprint %s… now", record.id, record.fingerprint[:12],
                 settings.module, fingerprint[:12])

  # Artifacts in a bucket: tensorflow-io and its S3 settings before
  # TensorFlow opens them.
  storage.prepare(record.uri)
  if training.schema is not None:
    storage.prepare(training.schema.uri)
    feature_dtypes, _ = read_feature_dtypes(training.schema.uri, settings)
  elif training.model is not None and mlmd.properties(training.model).get("feature_dtypes"):
    recorded = json.loads(mlmd.properties(training.model)["feature_dtypes"])
    feature_dtypes = {k: tf.as_dtype(recorded[k]) for k in settings.feature_keys}
  else:
    raise CheckpointError(f"execution {training.execution_id} records neither its "
                          "Schema nor its features' dtypes, so the serving signature "
                          "cannot be built")

  tf.keras.utils.set_random_seed(settings.seed)
  spec = TrainingSpec(feature_keys=settings.feature_keys, label_key=settings.label_key,
                      hyperparameters=settings.hyperparameters, seed=settings.seed,
                      rng=tf.random.Generator.from_seed(settings.seed))
  if (props.get("style") or "loop") == "fit":
    model = module.build_keras_model(spec)
  else:
    setup = module.build_training(spec)
    if not isinstance(setup, TrainingSetup):
      raise CheckpointError(f"{settings.module}.build_training returned "
                            f"{type(setup).__name__}. Expected a TrainingSetup")
    model = setup.model
  # Create every variable first, so that "all matched" below means every
  # weight of the model came from the checkpoint.
  model({k: tf.zeros([1, 1], tf.float32) for k in settings.feature_keys}, training=False)

  checkpoint_files.verify_against_record(record.uri, record.checksum)
  try:
    status = tf.train.Checkpoint(model=model).read(checkpoint_files.prefix(record.uri))
    # Optimizers, step, RNG and data position are in the file, not needed.
    status.expect_partial()
    status.assert_existing_objects_matched()
  except (tf.errors.OpError, AssertionError, ValueError) as e:
    raise CheckpointError(f"checkpoint {record.id} does not restore into the model "
                          f"{settings.module} builds: {str(e).splitlines()[0]}") from e
  return RebuiltModel(model=model, feature_dtypes=feature_dtypes,
                      fingerprint=fingerprint, module=settings.module)


def export_checkpoint(store: Store, record: CheckpointRecord, *,
                      export_root: str, reuse: bool = True) -> ExportRecord:
  """Exports checkpoint `record` as a SavedModel `Model` artifact under
  `export_root` (or returns its existing export, with `reuse`).

  See the module docstring for the guarantees. The new Model's uri is
  `export_root/checkpoint-<id>/export-<UTC time>`.

  Raises:
    CheckpointError: the checkpoint is pruned (also if pruned meanwhile), its
      files changed, or it does not restore into its module's model.
    CkptflowError: `export_root` cannot be written (nothing is written).
  """
  if not record.live:
    raise _pruned(record)
  storage.check_creatable_dir(export_root, "export directory")
  training = training_of(store, record)
  roots = (os.path.abspath(export_root),)  # all this export may delete below
  directory = os.path.join(roots[0], f"checkpoint-{record.id}")
  os.makedirs(directory, exist_ok=True)
  with storage.file_lock(os.path.join(directory, ".lock")):
    if reuse:
      existing = find_export(store, record.id)
      if existing is not None:
        protect(store, record.id, "exported")
        return existing
    with os.scandir(directory) as entries:  # we hold the lock: no export runs
      for entry in entries:
        if entry.name.endswith(STAGING_SUFFIX):
          with contextlib.suppress(OSError):
            storage.remove_tree(entry.path, roots)
    before = protect(store, record.id, "exported")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    uri = os.path.join(directory, f"export-{stamp}")
    staging = uri + STAGING_SUFFIX
    published = False
    try:
      current = checkpoints.get_checkpoint(store, record.id)
      if not current.live:  # pruned between resolving and protecting
        raise _pruned(current)
      rebuilt = rebuild_model(store, current, training)
      from ckptflow.components.trainer import export as saved_model_export
      os.mkdir(staging)
      saved_model_export.export_saved_model(
          rebuilt.model, os.path.join(staging, SERVING_DIR_NAME), rebuilt.feature_dtypes)
      storage.fsync_tree(staging)
      try:
        storage.publish_dir(staging, uri)  # rename, then fsync `directory`
      except storage.NotDurableError:
        published = True  # visible under `uri`: removed below
        raise
      published = True
      return _record_export(
          store, current, uri, fingerprint=rebuilt.fingerprint, module=rebuilt.module,
          feature_dtypes={k: v.name for k, v in rebuilt.feature_dtypes.items()})
    except BaseException:
      with contextlib.suppress(OSError):
        storage.remove_tree(staging, roots)
      if published:
        with contextlib.suppress(OSError):
          storage.remove_tree(uri, roots)
      with contextlib.suppress(Exception):
        restore_protection(store, record.id, before)
      raise


__all__ = [
    "EXPORT_DIR_NAME", "EXPORT_TYPE_NAME", "ExportRecord", "RebuiltModel", "Training",
    "export_checkpoint", "find_export", "protect", "rebuild_model",
    "resolve_checkpoint", "restore_protection", "training_of",
]
