"""The Trainer's `CheckpointSink` backed by ML Metadata.

Checkpoints of one training run share a `resume_key` (model code,
hyperparameters and input artifacts). A run is resumed from LIVE checkpoints
with its key whose producing execution did not finish (killed, failed,
preempted); retention applies across all executions of one run.
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


class MlmdCheckpointSink:
  """Records one Trainer execution's checkpoints in MLMD."""

  def __init__(self, store: Store, execution_id: int,
               resume_key: str):
    self._store = store
    self._resume_key = resume_key
    self._registry = CheckpointRegistry(store, execution_id)

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
    return checkpoints_with_key(self._store, self._resume_key)

  def mark_deleted(self, records: Sequence[CheckpointRecord]) -> None:
    ckpt_records.set_states(self._store, [r.id for r in records],
                            metadata_store_pb2.Artifact.DELETED)

  def mark_abandoned(self, record: CheckpointRecord, reason: str) -> None:
    ckpt_records.set_states(self._store, [record.id],
                            metadata_store_pb2.Artifact.ABANDONED, reason=reason)
