"""What the report shows, read from ML Metadata and the home's files.

`collect(store, serving_root)` returns plain dataclasses (`ReportData`):
the training runs (checkpoints grouped by resume key, each marked by what
became of it, with the per-step scalars of the Trainer's TensorBoard event
files), the served versions, the label history and the versions
models.config serves now. Read-only on MLMD and on the home; a problem with
models.config or with an event file is recorded in the data (`notes`,
`event_file_problems`), not raised.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

from ml_metadata.proto import metadata_store_pb2

from ckptflow.base.errors import CkptflowError
from ckptflow.components import checkpoint as checkpoints_lib
from ckptflow.components import promotion
from ckptflow.components.checkpoint import CheckpointRecord
from ckptflow.operations import lineage as lineage_lib
from ckptflow.operations.report.events import read_event_scalars
from ckptflow.base.metadata import Store

# What became of a checkpoint, lowest priority first: a checkpoint gets the
# last category that applies.
CATEGORIES = ("pruned", "abandoned", "kept", "exported", "promoted", "served")
CATEGORY_MEANING = {
    "pruned": "deleted by retention (state DELETED; record kept for lineage)",
    "abandoned": "files found damaged on resume (state ABANDONED)",
    "kept": "files present (state LIVE)",
    "exported": "exported as a SavedModel (protected from pruning)",
    "promoted": "pushed to serving (protected from pruning)",
    "served": "behind a version models.config serves now",
}


@dataclasses.dataclass(frozen=True)
class MarkedCheckpoint:
  record: CheckpointRecord
  category: str
  execution_id: int | None
  served_as: tuple[str, ...]  # "model:version (label)" it is behind


@dataclasses.dataclass
class TrainingRun:
  """The checkpoints (and event-file scalars) of one resume key."""

  resume_key: str
  checkpoints: list[MarkedCheckpoint]
  execution_ids: list[int]
  scalars: dict[str, list[tuple[int, float]]]  # tag -> [(step, value)]
  event_files: int = 0
  event_file_problems: list[str] = dataclasses.field(default_factory=list)

  @property
  def short(self) -> str:
    return self.resume_key[:8] or "(no key)"


@dataclasses.dataclass
class ReportData:
  runs: list[TrainingRun]
  served: list[promotion.ServedRecord]
  labels: dict[str, list[promotion.LabelChange]]  # model -> history
  serving_now: dict[str, set[int]]  # model -> versions models.config serves
  notes: list[str]


def _tensorboard_dirs(store: Store,
                      execution_ids: Sequence[int]) -> dict[int, str]:
  """execution id -> its ModelRun output's tensorboard/ folder."""
  if not execution_ids:
    return {}
  events = store.get_events_by_execution_ids(list(execution_ids))
  outputs = {e.artifact_id: e.execution_id for e in events
             if e.type == metadata_store_pb2.Event.OUTPUT}
  if not outputs:
    return {}
  artifacts = store.get_artifacts_by_id(list(outputs))
  type_ids = {a.type_id for a in artifacts}
  names = {t.id: t.name for t in store.get_artifact_types_by_id(list(type_ids))}
  found = {}
  for artifact in artifacts:
    if names.get(artifact.type_id) == "ModelRun" and artifact.uri:
      found[outputs[artifact.id]] = os.path.join(artifact.uri, "tensorboard")
  return found


def _category(record: CheckpointRecord, served: bool) -> str:
  if served:
    return "served"
  if record.protected in ("promoted", "exported"):
    return record.protected
  if record.protected:
    return "exported"
  return {"LIVE": "kept", "DELETED": "pruned", "ABANDONED": "abandoned"}.get(record.state,
                                                                               "pruned")


def collect(store: Store, serving_root: str) -> ReportData:
  """Everything the report shows, read from MLMD and the home's files."""
  notes: list[str] = []
  records = checkpoints_lib.list_checkpoints(store)
  producers = checkpoints_lib.producer_execution_ids(store, [r.id for r in records]) \
      if records else {}
  served = promotion.all_served_versions(store)
  models = sorted({r.model_name for r in served})
  labels = {m: promotion.label_history(store, m) for m in models}
  labels_now = {m: promotion.current_labels(store, m) for m in models}
  try:
    states = promotion.serving_states(store, serving_root)
    serving_now = {m: set(s.versions) for m, s in states.items()}
  except CkptflowError as e:
    notes.append(f"could not tell which versions models.config serves: {e}")
    serving_now = {}
  behind = lineage_lib.checkpoints_behind(store, served, serving_now, labels_now)

  by_key: dict[str, TrainingRun] = {}
  for record in records:
    run = by_key.setdefault(record.resume_key, TrainingRun(
        resume_key=record.resume_key, checkpoints=[], execution_ids=[], scalars={}))
    execution_id = producers.get(record.id)
    run.checkpoints.append(MarkedCheckpoint(
        record=record, category=_category(record, record.id in behind),
        execution_id=execution_id, served_as=tuple(behind.get(record.id, ()))))
    if execution_id is not None and execution_id not in run.execution_ids:
      run.execution_ids.append(execution_id)
  runs = sorted(by_key.values(), key=lambda r: max(c.record.id for c in r.checkpoints))

  boards = _tensorboard_dirs(store, sorted({e for r in runs for e in r.execution_ids}))
  for run in runs:
    for execution_id in sorted(run.execution_ids):  # later executions win a step
      directory = boards.get(execution_id)
      if not directory or not os.path.isdir(directory):
        continue
      try:
        scalars, files = read_event_scalars(directory)
      except (OSError, ValueError, CkptflowError) as e:  # a damaged file is noted
        run.event_file_problems.append(str(e))
        continue
      run.event_files += files
      for tag, points in scalars.items():
        merged = dict(run.scalars.get(tag, []))
        merged.update(points)
        run.scalars[tag] = sorted(merged.items())
  return ReportData(runs=runs, served=served, labels=labels, serving_now=serving_now,
                    notes=notes)
