"""`ckptflow history MODEL [--at TIME]`: what was served when, and who did it.

Read from MLMD only (no file is read or written):

* every push of the model (a PushedModel with pushed=1, of type
  `PushedModel` or KFP's `tfx.PushedModel`, and the execution that
  produced it), with the checkpoint (id, step) and the run it came from,
  whether it was forced or blessed;
* every label change (`ckptflow.SetLabel`: rollback, repromote, ...);
* every `ckptflow gc` that removed a version (`ckptflow.GC`).

Each entry carries the user, host and reason the execution recorded. The
order is the executions' id order, which is the order MLMD recorded them in
(and the order `current_labels` replays).

`labels_at` answers "which version held each label at TIME": the label
changes recorded at or before TIME, replayed.

Imports neither TensorFlow nor TFX.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from ml_metadata.proto import metadata_store_pb2

from ckptflow.base import mlmd
from ckptflow.base.errors import CkptflowError
from ckptflow.base.metadata import Store
from ckptflow.base.names import validate_model_name
from ckptflow.components import promotion

GC_TYPE_NAME = "ckptflow.GC"  # written by operations/gc.py

_INPUT = metadata_store_pb2.Event.INPUT
_OUTPUT = metadata_store_pb2.Event.OUTPUT


@dataclasses.dataclass(frozen=True)
class HistoryEntry:
  """One thing that happened to a served model.

  `action`: "push" (a new version; `label` is the label it assigned, if
  any), "rollback", "repromote", another SetLabel reason, or "gc" (the
  version was removed). `previous_version` is the version `label` had
  before (label changes only). `checkpoint_id`/`checkpoint_step`/`run`
  say where a pushed model came from (None when MLMD does not say).
  """

  time: str  # ISO 8601, UTC
  execution_id: int
  action: str
  model_name: str
  version: int
  label: str
  previous_version: int | None
  checkpoint_id: int | None
  checkpoint_step: int | None
  run: str | None
  forced: bool | None
  blessed: bool | None
  user: str
  host: str
  reason: str

  def as_json(self) -> dict:
    return dataclasses.asdict(self)

  def line(self) -> str:
    what = {"push": f"pushed version {self.version}"
                    + (f", labelled {self.label}" if self.label else ""),
            "gc": f"removed version {self.version} (gc)"}.get(
                self.action, f"{self.label} -> version {self.version} ({self.action}"
                + (f", was {self.previous_version})" if self.previous_version
                   is not None else ")"))
    origin = ""
    if self.checkpoint_id is not None:
      origin = f" from checkpoint {self.checkpoint_id} (step {self.checkpoint_step})"
    if self.run:
      origin += f" of run {self.run}"
    how = ""
    if self.action == "push":
      how = " forced" if self.forced else " blessed" if self.blessed else ""
    who = f"{self.user}@{self.host}" if self.user or self.host else "unknown"
    why = f": {self.reason}" if self.reason else ""
    return f"{self.time}  {what}{origin}{how}  by {who}{why}"


def parse_time(text: str, *, now: datetime.datetime | None = None) -> datetime.datetime:
  """An ISO 8601 time (`2026-11-29T14:00`, `...Z`, `...+01:00`, a date), as
  an aware UTC datetime; a time without an offset is local time.

  Raises:
    CkptflowError: unparsable, or later than now.
  """
  try:
    parsed = datetime.datetime.fromisoformat(text.strip())
  except ValueError as e:
    raise CkptflowError(f"--at {text!r} is not a time. Expected ISO 8601, e.g. "
                        "2026-11-29T14:00 (local) or 2026-11-29T14:00Z") from e
  if parsed.tzinfo is None:
    parsed = parsed.astimezone()  # local time
  parsed = parsed.astimezone(datetime.timezone.utc)
  now = now or datetime.datetime.now(datetime.timezone.utc)
  if parsed > now:
    raise CkptflowError(f"--at {text!r} ({parsed.isoformat(timespec='seconds')}) is in "
                        f"the future (now {now.isoformat(timespec='seconds')}). Expected "
                        "a time at or before now")
  return parsed


def _iso(ms: int) -> str:
  return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).isoformat(
      timespec="milliseconds")


class _Runs:
  """The pipeline_run context name of executions (cached)."""

  def __init__(self, store: Store):
    self._store = store
    self._types: dict[int, str] = {}

  def of(self, execution_id: int) -> str | None:
    contexts = self._store.get_contexts_by_execution(execution_id)
    missing = sorted({c.type_id for c in contexts} - set(self._types))
    if missing:
      for t in self._store.get_context_types_by_id(missing):
        self._types[t.id] = t.name
    runs = [c.name for c in contexts if self._types.get(c.type_id) == "pipeline_run"]
    return runs[0] if runs else None


def _producers(store: Store, artifact_ids: list[int]) -> dict[int, int]:
  """artifact id -> the first execution with an OUTPUT event to it."""
  producer: dict[int, int] = {}
  for e in store.get_events_by_artifact_ids(artifact_ids) if artifact_ids else []:
    if e.type == _OUTPUT:
      producer[e.artifact_id] = min(e.execution_id, producer.get(e.artifact_id, e.execution_id))
  return producer


def _origins(store: Store, models: dict[int, int]) -> dict[int, dict[str, Any]]:
  """Model artifact id -> checkpoint_id, checkpoint_step, run: an export's
  checkpoint (its custom properties) and that checkpoint's Trainer run; a
  Trainer's Model: the run of the execution that produced it."""
  model_ids = sorted(set(models.values()))
  if not model_ids:
    return {}
  artifacts = {a.id: a for a in store.get_artifacts_by_id(model_ids)}
  runs = _Runs(store)
  checkpoint_ids = {i: promotion.number(mlmd.property_value(a, "checkpoint_id"))
                    for i, a in artifacts.items()}
  producers = _producers(store, model_ids + [c for c in checkpoint_ids.values() if c])
  origins = {}
  for model_id, artifact in artifacts.items():
    checkpoint_id = checkpoint_ids.get(model_id)
    source = checkpoint_id if checkpoint_id else model_id
    producer = producers.get(source)
    origins[model_id] = {
        "checkpoint_id": checkpoint_id,
        "checkpoint_step": promotion.number(mlmd.property_value(artifact, "checkpoint_step"))
        if checkpoint_id else None,
        "run": runs.of(producer) if producer is not None else None}
  return origins


def _blessed(store: Store, executions: list[int]) -> dict[int, bool]:
  """pushing execution id -> `blessed` of its INPUT model_blessing."""
  if not executions:
    return {}
  blessing_of = {e.execution_id: e.artifact_id
                 for e in store.get_events_by_execution_ids(executions)
                 if e.type == _INPUT and e.path.steps and e.path.steps[0].key == "model_blessing"}
  if not blessing_of:
    return {}
  blessings = {a.id: a for a in store.get_artifacts_by_id(sorted(set(blessing_of.values())))}
  return {x: promotion.number(mlmd.property_value(blessings[b], "blessed")) == 1
          for x, b in blessing_of.items() if b in blessings}


def _actor(execution, artifact=None) -> dict[str, str]:
  """user, host and reason as the execution recorded them, else (a push
  recorded by TFX's runner) as the PushedModel did."""
  def value(key):
    for node in (execution, artifact):
      found = mlmd.property_value(node, key) if node is not None else None
      if found:
        return str(found)
    return ""
  return {"user": value("user"), "host": value("host"), "reason": value("user_reason")}


def history(store: Store, model_name: str) -> list[HistoryEntry]:
  """Every push, label change and gc removal of `model_name`, in the order
  MLMD recorded them.

  Raises:
    ServingError: the model name is not valid.
    CkptflowError: the store holds nothing of `model_name`.
  """
  validate_model_name(model_name)
  records = promotion.served_versions(store, model_name)
  changes = promotion.label_history(store, model_name)
  if not records and not changes:
    known = sorted({r.model_name for r in promotion.all_served_versions(store)})
    raise CkptflowError(f"model {model_name!r} has no pushes or labels in the metadata "
                        f"store. Known models: {', '.join(known) or 'none'}")
  producers = _producers(store, [r.artifact_id for r in records])
  executions = {e.id: e for e in store.get_executions_by_id(sorted(set(producers.values())))}
  pushed_models = {a.id: a for a in store.get_artifacts_by_id(
      [r.artifact_id for r in records])} if records else {}
  models = promotion.pushed_models(store, records)
  origins = _origins(store, models)
  blessed = _blessed(store, sorted(executions))
  entries = []
  for record in records:
    execution_id = producers.get(record.artifact_id)
    execution = executions.get(execution_id) if execution_id is not None else None
    origin = origins.get(models.get(record.artifact_id, -1), {})
    entries.append(HistoryEntry(
        time=_iso(execution.create_time_since_epoch) if execution else record.pushed_at,
        execution_id=execution_id if execution_id is not None else -1,
        action="push", model_name=model_name, version=record.version, label=record.label,
        previous_version=None, checkpoint_id=origin.get("checkpoint_id"),
        checkpoint_step=origin.get("checkpoint_step"), run=origin.get("run"),
        forced=record.forced, blessed=blessed.get(execution_id) if execution_id else None,
        **_actor(execution, pushed_models.get(record.artifact_id))))
  for change in changes:
    if change.reason == "push":
      continue
    entries.append(HistoryEntry(
        time=change.changed_at, execution_id=change.execution_id, action=change.reason,
        model_name=model_name, version=change.version, label=change.label,
        previous_version=change.previous_version, checkpoint_id=None,
        checkpoint_step=None, run=None, forced=None, blessed=None,
        user=change.user, host=change.host, reason=change.user_reason))
  entries += _gc_entries(store, model_name, {r.artifact_id: r for r in records})
  return sorted(entries, key=lambda e: (e.execution_id, e.action != "push", e.version))


def _gc_entries(store: Store, model_name: str,
                records: dict[int, promotion.ServedRecord]) -> list[HistoryEntry]:
  executions = store.get_executions(list_options=promotion.of_model(GC_TYPE_NAME,
                                                                    model_name))
  if not executions:
    return []
  removed = [e for e in store.get_events_by_execution_ids([x.id for x in executions])
             if e.type == _INPUT and e.artifact_id in records]
  by_id = {x.id: x for x in executions}
  return [HistoryEntry(
      time=_iso(by_id[e.execution_id].create_time_since_epoch), execution_id=e.execution_id,
      action="gc", model_name=model_name, version=records[e.artifact_id].version,
      label="", previous_version=None, checkpoint_id=None, checkpoint_step=None, run=None,
      forced=None, blessed=None, **_actor(by_id[e.execution_id])) for e in removed]


@dataclasses.dataclass(frozen=True)
class LabelsAt:
  """What was served at `at`: each label's version, and the newest version
  (the one models.config lists besides the labelled ones)."""

  model_name: str
  at: str
  labels: dict[str, int]
  newest_version: int | None

  def as_json(self) -> dict:
    return dataclasses.asdict(self)


def labels_at(store: Store, model_name: str, at: datetime.datetime,
              entries: list[HistoryEntry] | None = None) -> LabelsAt:
  """Which version held each label of `model_name` at `at` (aware), by
  replaying the history entries recorded at or before it."""
  entries = history(store, model_name) if entries is None else entries
  when = at.astimezone(datetime.timezone.utc)
  labels: dict[str, int] = {}
  present: set[int] = set()
  for entry in entries:
    if datetime.datetime.fromisoformat(entry.time) > when:
      continue
    if entry.action == "push":
      present.add(entry.version)
      if entry.label:
        labels[entry.label] = entry.version
    elif entry.action == "gc":
      present.discard(entry.version)
    else:
      labels[entry.label] = entry.version
  return LabelsAt(model_name=model_name, at=when.isoformat(timespec="milliseconds"),
                  labels=dict(sorted(labels.items())),
                  newest_version=max(present) if present else None)


__all__ = ["GC_TYPE_NAME", "HistoryEntry", "LabelsAt", "history", "labels_at", "parse_time"]
