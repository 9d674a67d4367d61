"""The Trainer's `CheckpointSink` backed by ML Metadata.

Checkpoints of one training run share a `resume_key` (model code,
hyperparameters and input artifacts). A run is resumed from LIVE checkpoints
with its key whose producing execution did not finish (killed, failed,
preempted); retention applies across all executions of one run.

The Trainer reads a run's live checkpoints after every save, to prune. That
read follows the run's own events (`checkpoints_of_executions`: the OUTPUT
events of the run's executions, then those artifacts by id, both indexed
lookups), so its time depends on the run, not on how many checkpoints the
store holds; the filter query on `resume_key` (`checkpoints_with_key`, a
scan of property rows that grows with the store) runs once per execution,
to find which executions belong to the run.
"""

from __future__ import annotations

import logging
from typing import Sequence

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from ckptflow.components import checkpoint as ckpt_records
from ckptflow.components.checkpoint import (CHECKPOINT_TYPE_NAME, CheckpointRecord,
                                            CheckpointRegistry, NewCheckpoint)
from ckptflow.base import mlmd
from ckptflow.base.metadata import Store

_log = logging.getLogger(__name__)

_FINISHED = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)


def checkpoints_with_key(store: Store, resume_key: str, *,
                         live_only: bool = True) -> list[CheckpointRecord]:
  """Checkpoints of the training run `resume_key`, newest step first."""
  condition = (f"type = {mlmd.quote(CHECKPOINT_TYPE_NAME)} AND "
               f"properties.resume_key.string_value = {mlmd.quote(resume_key)}")
  if live_only:
    condition += " AND state = LIVE"
  artifacts = store.get_artifacts(
      list_options=metadata_store.ListOptions(filter_query=condition))
  records = [CheckpointRecord.from_artifact(a) for a in artifacts]
  return sorted(records, key=lambda r: (r.step, r.id), reverse=True)


def checkpoints_of_executions(store: Store, execution_ids, resume_key: str, *,
                              live_only: bool = True) -> list[CheckpointRecord]:
  """Checkpoints with `resume_key` that the executions `execution_ids` have
  as OUTPUT, newest step first: read through those executions' events and
  the artifacts' ids (no filter query over the store)."""
  ids = sorted(set(execution_ids))
  if not ids:
    return []
  outputs = sorted({e.artifact_id for e in store.get_events_by_execution_ids(ids)
                    if e.type == metadata_store_pb2.Event.OUTPUT})
  if not outputs:
    return []
  type_id = ckpt_records.ensure_checkpoint_type(store)
  records = [CheckpointRecord.from_artifact(a) for a in store.get_artifacts_by_id(outputs)
             if a.type_id == type_id
             and (not live_only or a.state == metadata_store_pb2.Artifact.LIVE)
             and mlmd.property_value(a, "resume_key") == resume_key]
  return sorted(records, key=lambda r: (r.step, r.id), reverse=True)


class MlmdCheckpointSink:
  """Records one Trainer execution's checkpoints in MLMD."""

  def __init__(self, store: Store, execution_id: int,
               resume_key: str):
    self._store = store
    self._resume_key = resume_key
    self._registry = CheckpointRegistry(store, execution_id)
    self._run_executions: set[int] | None = None  # the run's, found once

  @property
  def execution_id(self) -> int:
    return self._registry.execution_id

  def resume_candidates(self) -> Sequence[CheckpointRecord]:
    records = checkpoints_with_key(self._store, self._resume_key)
    if not records:
      return []
    producers = ckpt_records.producer_execution_ids(self._store, [r.id for r in records])
    execution_ids = sorted(set(producers.values()) - {self.execution_id})
    executions = self._store.get_executions_by_id(execution_ids) if execution_ids else []
    unfinished = {e.id for e in executions if e.last_known_state not in _FINISHED}
    return [r for r in records if producers.get(r.id) in unfinished]

  def register(self, checkpoint: NewCheckpoint) -> CheckpointRecord:
    return self._registry.register(checkpoint)

  def record_restored(self, record: CheckpointRecord, key: str) -> None:
    self._registry.record_input(record.id, key)

  def live(self) -> Sequence[CheckpointRecord]:
    """The run's live checkpoints: those of this execution and of the
    executions that held live checkpoints of the run when it was first
    asked (one filter query), read through their events after that."""
    if self._run_executions is None:
      records = checkpoints_with_key(self._store, self._resume_key)
      producers = ckpt_records.producer_execution_ids(self._store, [r.id for r in records])
      self._run_executions = set(producers.values()) | {self.execution_id}
    return checkpoints_of_executions(self._store, self._run_executions, self._resume_key)

  def mark_deleted(self, records: Sequence[CheckpointRecord]) -> None:
    ckpt_records.set_states(self._store, [r.id for r in records],
                            metadata_store_pb2.Artifact.DELETED)

  def mark_abandoned(self, record: CheckpointRecord, reason: str) -> None:
    ckpt_records.set_states(self._store, [record.id],
                            metadata_store_pb2.Artifact.ABANDONED, reason=reason)
