"""The `Checkpoint` artifact type and its records in ML Metadata.

A Checkpoint artifact is one complete, verified training checkpoint on disk
(a directory holding a `tf.train.Checkpoint` written with `write()`),
registered by the Trainer execution that produced it through an OUTPUT event.
Its MLMD state is LIVE while its files exist and DELETED once pruned; the
custom property `state` mirrors it so that it shows in any MLMD browser.

This module speaks plain ML Metadata and imports neither TensorFlow nor TFX,
so metadata-only commands stay fast. `components/checkpoint_artifact.py`
declares the same type as a TFX artifact class.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
from typing import Iterable, Mapping, Sequence

from ml_metadata import errors as mlmd_errors
from ml_metadata.proto import metadata_store_pb2

from ckptflow.base import mlmd, storage
from ckptflow.base.metadata import Store

CHECKPOINT_TYPE_NAME = "Checkpoint"

# name -> MLMD property type. The TFX artifact class is built from this too,
# so a store that TFX registered the type in accepts our registrations.
CHECKPOINT_PROPERTIES: Mapping[str, int] = {
    "step": metadata_store_pb2.INT,
    "epoch": metadata_store_pb2.INT,
    "metrics": metadata_store_pb2.STRING,  # JSON object: name -> float
    "size_bytes": metadata_store_pb2.INT,
    "checksum": metadata_store_pb2.STRING,  # sha256 over the files
    "created_at": metadata_store_pb2.STRING,  # ISO 8601, UTC
    "tf_version": metadata_store_pb2.STRING,
    "fingerprint": metadata_store_pb2.STRING,  # model code + hyperparameters
    "resume_key": metadata_store_pb2.STRING,  # fingerprint + input artifacts
    "replicas": metadata_store_pb2.INT,  # replicas in sync that trained it
}

_LIVE = metadata_store_pb2.Artifact.LIVE
_DELETED = metadata_store_pb2.Artifact.DELETED
_ABANDONED = metadata_store_pb2.Artifact.ABANDONED
# LIVE: files present and verified. DELETED: pruned, files gone.
# ABANDONED: files found damaged on restore; kept for lineage, never used.
STATE_NAMES = {_LIVE: "LIVE", _DELETED: "DELETED", _ABANDONED: "ABANDONED"}


def directory_digest(directory: str) -> tuple[int, str]:
  """(total size in bytes, sha256 over file names and contents) of a
  checkpoint directory: what a Checkpoint's `size_bytes` and `checksum`
  record. Subdirectories are not part of a checkpoint and are skipped; so
  is a bucket prefix's commit marker (`storage.COMMIT_MARKER`), so that the
  same checkpoint has the same digest on disk and in a bucket."""
  sha = hashlib.sha256()
  size = 0
  if storage.is_remote(directory):
    g = storage.gfile(directory)
    for name in storage.list_names(directory):
      path = storage.join(directory, name)
      if name == storage.COMMIT_MARKER or g.isdir(path):
        continue
      sha.update(name.encode() + b"\0")
      with g.GFile(path, "rb") as f:
        while chunk := f.read(1 << 20):
          sha.update(chunk)
          size += len(chunk)
    return size, sha.hexdigest()
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
      continue
    sha.update(name.encode() + b"\0")
    with open(path, "rb") as f:
      while chunk := f.read(1 << 20):
        sha.update(chunk)
        size += len(chunk)
  return size, sha.hexdigest()


def ensure_checkpoint_type(store: Store) -> int:
  """Registers the Checkpoint type if needed; returns its type id."""
  return mlmd.ensure_artifact_type(store, CHECKPOINT_TYPE_NAME, CHECKPOINT_PROPERTIES)


@dataclasses.dataclass(frozen=True)
class CheckpointRecord:
  """A Checkpoint artifact as read from MLMD."""

  id: int
  uri: str
  step: int
  epoch: int
  metrics: Mapping[str, float]
  size_bytes: int
  checksum: str
  created_at: str
  state: str
  fingerprint: str
  resume_key: str
  tf_version: str
  protected: str  # why it must be kept ("exported", "promoted"), or ""
  replicas: int = 1  # replicas in sync (tf.distribute) that trained it

  @property
  def live(self) -> bool:
    return self.state == "LIVE"

  def as_json(self) -> dict:
    return dataclasses.asdict(self) | {"metrics": dict(self.metrics)}

  @classmethod
  def from_artifact(cls, artifact: metadata_store_pb2.Artifact) -> "CheckpointRecord":
    props = artifact.properties
    custom = artifact.custom_properties
    return cls(
        id=artifact.id,
        uri=artifact.uri,
        step=props["step"].int_value,
        epoch=props["epoch"].int_value,
        metrics=json.loads(props["metrics"].string_value or "{}"),
        size_bytes=props["size_bytes"].int_value,
        checksum=props["checksum"].string_value,
        created_at=props["created_at"].string_value,
        state=STATE_NAMES.get(artifact.state,
                              metadata_store_pb2.Artifact.State.Name(artifact.state)),
        fingerprint=props["fingerprint"].string_value,
        resume_key=props["resume_key"].string_value,
        tf_version=props["tf_version"].string_value,
        protected=custom["protected"].string_value if "protected" in custom else "",
        # Recorded since distributed training; earlier checkpoints had one.
        replicas=props["replicas"].int_value if "replicas" in props else 1,
    )


@dataclasses.dataclass(frozen=True)
class NewCheckpoint:
  """What the Trainer knows of a checkpoint it has written and verified."""

  uri: str
  step: int
  epoch: int
  metrics: Mapping[str, float]
  size_bytes: int
  checksum: str
  tf_version: str
  fingerprint: str
  resume_key: str
  replicas: int = 1


def _now_iso() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def checkpoint_artifact(type_id: int, checkpoint: NewCheckpoint, *,
                        state: int = _LIVE) -> metadata_store_pb2.Artifact:
  """The Checkpoint artifact `CheckpointRegistry.register` writes for
  `checkpoint` (created now), not yet in the store. Its external id is its
  uri plus checksum; `state` is LIVE unless given."""
  artifact = metadata_store_pb2.Artifact(
      type_id=type_id, uri=checkpoint.uri, state=state,
      external_id=f"{checkpoint.uri}@{checkpoint.checksum}")
  mlmd.set_properties(artifact.properties, {
      "step": checkpoint.step,
      "epoch": checkpoint.epoch,
      "metrics": json.dumps(dict(checkpoint.metrics), sort_keys=True),
      "size_bytes": checkpoint.size_bytes,
      "checksum": checkpoint.checksum,
      "created_at": _now_iso(),
      "tf_version": checkpoint.tf_version,
      "fingerprint": checkpoint.fingerprint,
      "resume_key": checkpoint.resume_key,
      "replicas": checkpoint.replicas,
  })
  artifact.custom_properties["state"].string_value = STATE_NAMES[state]
  return artifact


class CheckpointRegistry:
  """Registers one Trainer execution's checkpoints in MLMD.

  Registration is idempotent: the artifact's external id is its uri plus
  checksum, so a registration retried after a lost reply, or redone by a
  restarted process, finds the artifact already there instead of making a
  second one. Not thread-safe; use one registry per thread.
  """

  def __init__(self, store: Store, execution_id: int):
    self._store = store
    self._execution_id = execution_id
    self._type_id = ensure_checkpoint_type(store)
    # The pipeline, run and node contexts of the execution, so checkpoints
    # show up in per-run queries like every other artifact of the run.
    self._contexts = store.get_contexts_by_execution(execution_id)

  @property
  def execution_id(self) -> int:
    return self._execution_id

  def register(self, checkpoint: NewCheckpoint) -> CheckpointRecord:
    """Records `checkpoint` as a LIVE artifact, OUTPUT of this execution."""
    artifact = checkpoint_artifact(self._type_id, checkpoint)
    existing = _by_external_id(self._store, artifact.external_id)
    if not existing:
      # One MLMD transaction: the artifact, its OUTPUT event and its
      # attributions to the execution's contexts. On SQLite each commit waits
      # for fsyncs, so this is a third of three separate puts' cost.
      output = mlmd.event(metadata_store_pb2.Event.OUTPUT, "checkpoints",
                          execution_id=self._execution_id, index=checkpoint.step)
      try:
        _, [artifact_id], _ = self._store.put_lineage_subgraph(
            [], [artifact], self._contexts, [(None, 0, output)])
        return get_checkpoint(self._store, artifact_id)
      except mlmd_errors.AlreadyExistsError:
        # Another attempt won the race between our lookup and our put, or
        # this put committed and its reply was lost: link what is there.
        existing = _by_external_id(self._store, artifact.external_id)
    artifact_id = existing[0].id
    self._link(artifact_id, metadata_store_pb2.Event.OUTPUT, "checkpoints",
               checkpoint.step)
    return get_checkpoint(self._store, artifact_id)

  def record_input(self, artifact_id: int, key: str) -> None:
    """Records that this execution read checkpoint `artifact_id` (resume,
    warm start) as an INPUT event under `key`."""
    self._link(artifact_id, metadata_store_pb2.Event.INPUT, key, 0)

  def _link(self, artifact_id: int, event_type: int, key: str, index: int) -> None:
    events = self._store.get_events_by_artifact_ids([artifact_id])
    if any(e.execution_id == self._execution_id and e.type == event_type
           for e in events):
      return
    event = mlmd.event(event_type, key, artifact_id=artifact_id,
                       execution_id=self._execution_id, index=index)
    self._store.put_events([event])
    attributions = [metadata_store_pb2.Attribution(context_id=c.id, artifact_id=artifact_id)
                    for c in self._contexts]
    if attributions:
      self._store.put_attributions_and_associations(attributions, [])


def _by_external_id(store: Store, external_id: str) -> list[metadata_store_pb2.Artifact]:
  return store.get_artifacts_by_external_ids([external_id])


def get_checkpoint(store: Store, artifact_id: int) -> CheckpointRecord:
  from ckptflow.base.errors import CheckpointError
  artifacts = store.get_artifacts_by_id([artifact_id])
  if not artifacts:
    raise CheckpointError(f"no artifact with id {artifact_id}")
  [artifact] = artifacts
  type_ids = [t.id for t in store.get_artifact_types_by_id([artifact.type_id])
              if t.name == CHECKPOINT_TYPE_NAME]
  if not type_ids:
    raise CheckpointError(f"artifact {artifact_id} is not a Checkpoint")
  return CheckpointRecord.from_artifact(artifact)


def list_checkpoints(store: Store) -> list[CheckpointRecord]:
  """Every Checkpoint artifact in the store, oldest first."""
  artifacts = store.get_artifacts_by_type(CHECKPOINT_TYPE_NAME)
  return sorted((CheckpointRecord.from_artifact(a) for a in artifacts),
                key=lambda r: r.id)


def set_states(store: Store, artifact_ids: Iterable[int],
               state: int, *, reason: str = "") -> None:
  """Moves checkpoints to `state` (LIVE, DELETED or ABANDONED), keeping the
  custom property `state` in step with MLMD's own state field."""
  ids = list(artifact_ids)
  if not ids:
    return
  artifacts = store.get_artifacts_by_id(ids)
  for artifact in artifacts:
    artifact.state = state
    artifact.custom_properties["state"].string_value = STATE_NAMES[state]
    if reason:
      artifact.custom_properties["state_reason"].string_value = reason
  store.put_artifacts(artifacts)


def set_protected(store: Store, artifact_id: int, reason: str) -> None:
  """Marks a checkpoint as never to be pruned (it was exported or promoted)."""
  [artifact] = store.get_artifacts_by_id([artifact_id])
  artifact.custom_properties["protected"].string_value = reason
  store.put_artifacts([artifact])


def protect(store: Store, checkpoint_id: int, reason: str) -> str | None:
  """Marks the checkpoint protected with `reason`, unless it already is
  ("promoted" is never downgraded to "exported"). Returns the protection
  it had before (None: none), so a failed export or push can put it back."""
  [artifact] = store.get_artifacts_by_id([checkpoint_id])
  custom = artifact.custom_properties
  before = custom["protected"].string_value if "protected" in custom else None
  if before != reason and not (before == "promoted" and reason == "exported"):
    set_protected(store, checkpoint_id, reason)
  return before


def producer_execution_ids(store: Store, artifact_ids: Sequence[int]) -> dict[int, int]:
  """artifact id -> id of the execution that has it as OUTPUT."""
  events = store.get_events_by_artifact_ids(list(artifact_ids))
  return {e.artifact_id: e.execution_id for e in events
          if e.type == metadata_store_pb2.Event.OUTPUT}


# The Trainer's final Model came from its last checkpoint. TFX publishes the
# Model (and the Trainer's OUTPUT event to it) only after the executor
# returns, so the Trainer cannot link the two itself; the first component
# that reads the Model (the Pusher) records it, as an execution like an
# export's: INPUT the Checkpoint, OUTPUT the Model.
TRAINER_EXPORT_TYPE_NAME = "ckptflow.TrainerExport"


def record_model_source(store: Store, model_id: int, checkpoint_id: int) -> int | None:
  """Records that Model `model_id` was written from Checkpoint
  `checkpoint_id`: a COMPLETE `ckptflow.TrainerExport` execution with an
  INPUT event from the checkpoint and an OUTPUT event to the Model, in the
  contexts (pipeline, run, node) of the execution that produced the Model.
  Returns its id, or None when nothing was written:
  the link is already recorded (idempotent: the execution's name is unique
  per Model), or either artifact is not in this store with its type (a
  Model tracked by another store). One MLMD transaction."""
  artifacts = {a.id: a for a in store.get_artifacts_by_id([model_id, checkpoint_id])}
  if model_id not in artifacts or checkpoint_id not in artifacts:
    return None
  type_names = {t.id: t.name for t in store.get_artifact_types_by_id(
      sorted({a.type_id for a in artifacts.values()}))}
  if (type_names.get(artifacts[model_id].type_id) != "Model"
      or type_names.get(artifacts[checkpoint_id].type_id) != CHECKPOINT_TYPE_NAME):
    return None
  type_id = mlmd.ensure_execution_type(store, TRAINER_EXPORT_TYPE_NAME)
  name = f"model-{model_id}"
  if store.get_execution_by_type_and_name(TRAINER_EXPORT_TYPE_NAME, name) is not None:
    return None
  checkpoint = CheckpointRecord.from_artifact(artifacts[checkpoint_id])
  execution = metadata_store_pb2.Execution(
      type_id=type_id, name=name, last_known_state=metadata_store_pb2.Execution.COMPLETE)
  mlmd.set_properties(execution.custom_properties, {
      "checkpoint_id": checkpoint.id, "checkpoint_step": checkpoint.step,
      "model_id": model_id})
  producers = sorted(e.execution_id for e in store.get_events_by_artifact_ids([model_id])
                     if e.type == metadata_store_pb2.Event.OUTPUT)
  contexts = store.get_contexts_by_execution(producers[0]) if producers else []
  try:
    # Both artifacts are passed as events only (artifact None), so this
    # transaction cannot overwrite them.
    execution_id, _, _ = store.put_execution(execution, [
        (None, mlmd.input_event("checkpoint", checkpoint_id)),
        (None, mlmd.output_event("model", artifact_id=model_id))], contexts=contexts)
  except mlmd_errors.AlreadyExistsError:
    return None  # another process recorded it between our lookup and our put
  return execution_id
