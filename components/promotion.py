"""The ML Metadata record of what is served: pushes, labels, rollbacks.

MLMD is the source of truth; `models.config` is derived from it.

* A push is an execution of type `ckptflow.Promote` with INPUT events from
  the Model (and the ModelBlessing, if any) and an OUTPUT event to a
  `PushedModel` artifact whose uri is the version directory. Its custom
  properties are those TFX's Pusher sets (`pushed`, `pushed_destination`,
  `pushed_version`) plus `model_name`, `version`, `label` and `forced`. A
  model that is not pushed gets a `PushedModel` with `pushed`=0 (TFX
  `_MarkNotPushed`): not promoted is an outcome, and lineage stays complete.
* A label is assigned by a labelled push (the PushedModel's `label`, as of
  the execution that produced it: our `ckptflow.Promote`, or a TFX Pusher
  execution whose executor called `mark_pushed`) or by an execution of type
  `ckptflow.SetLabel` with an INPUT event from the labelled version's
  PushedModel (relabel, rollback). The current value of a label is the one
  its latest assigning execution (highest execution id) gave it.
* `sync_models_config` rewrites models.config from MLMD: for each model, the
  labelled versions plus the newest served version, with their labels.

Each execution, its new artifact and its events are written in one MLMD
transaction (`put_execution`), so a crash never leaves half a record. The
store is a `ckptflow.base.metadata.Store`, which retries its calls. Types
carry no declared properties (custom properties only), so they never clash
with the types TFX registers (TFX registers `PushedModel` with none).
Served versions and labels of one model are read with MLMD filter queries
on the `model_name` custom property, not by reading every model's records.

Pushes recorded by KFP itself are read too: their artifact type is
`tfx.PushedModel` (KFP names types by schema title) and their numeric
custom properties (`pushed`, `version`, `forced`) are doubles.

Who and why: every Promote and SetLabel execution records `user`, `host`
and the user's `user_reason` (`--reason`); `label_history` returns them.
A repeated write is idempotent: recording a version directory already
recorded from the same Model returns the existing record, and an
execution's INPUT events name each artifact once.

This module imports neither TensorFlow nor TFX.
"""

from __future__ import annotations

import dataclasses
import datetime
import getpass
import logging
import os
import socket
from typing import Iterable, Mapping, Sequence

from ml_metadata import errors as mlmd_errors
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from ckptflow.components.pusher import serving
from ckptflow.components.pusher.serving import ServedVersion
from ckptflow.base.errors import MetadataError, ServingError
from ckptflow.base.faults import fault_point
from ckptflow.base import mlmd, storage
from ckptflow.base.metadata import Store
from ckptflow.base.names import validate_model_name

PUSHED_MODEL_TYPE_NAME = "PushedModel"
# What KFP v2 calls the same type (schema title); its numbers are doubles.
KFP_PUSHED_MODEL_TYPE_NAME = "tfx.PushedModel"
PUSHED_MODEL_TYPE_NAMES = (PUSHED_MODEL_TYPE_NAME, KFP_PUSHED_MODEL_TYPE_NAME)
PROMOTE_TYPE_NAME = "ckptflow.Promote"
SET_LABEL_TYPE_NAME = "ckptflow.SetLabel"
MODEL_TYPE_NAME = "Model"
MODEL_BLESSING_TYPE_NAME = "ModelBlessing"
STABLE = "stable"

# Custom property keys TFX's Pusher sets on a PushedModel.
PUSHED_KEY = "pushed"
PUSHED_DESTINATION_KEY = "pushed_destination"
PUSHED_VERSION_KEY = "pushed_version"

_log = logging.getLogger(__name__)
_OUTPUT = metadata_store_pb2.Event.OUTPUT
_INPUT = metadata_store_pb2.Event.INPUT
_NO_VERSION = -1


@dataclasses.dataclass(frozen=True)
class ServedRecord:
  """A served version as recorded in MLMD (a PushedModel with pushed=1)."""

  artifact_id: int
  model_name: str
  version: int
  path: str
  label: str  # the label this push assigned ("" if none)
  forced: bool
  pushed_at: str  # ISO 8601, UTC, from the artifact's create time
  deleted: bool = False  # the PushedModel is DELETED (`ckptflow gc`, doctor)

  def as_json(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class LabelChange:
  """One label assignment: `label` of `model_name` moved to `version`, by
  a labelled push (reason "push", `execution_id` = the pushing execution)
  or a SetLabel execution (its reason: "rollback", "repromote", ...).
  `user_reason` is what the user gave with `--reason`; `user` and `host`
  who made the change ("" for records that do not say)."""

  execution_id: int
  model_name: str
  label: str
  version: int
  previous_version: int | None
  reason: str
  changed_at: str
  user_reason: str = ""
  user: str = ""
  host: str = ""

  def as_json(self) -> dict:
    return dataclasses.asdict(self)


# --- types -------------------------------------------------------------------


def ensure_types(store: Store) -> dict[str, int]:
  """Registers PushedModel, ckptflow.Promote and ckptflow.SetLabel if needed.

  PushedModel is registered as TFX registers it (base type MODEL, no
  declared properties); an existing registration with properties is kept.
  Returns type name -> type id.
  """
  ids = {PUSHED_MODEL_TYPE_NAME: mlmd.ensure_artifact_type(
      store, PUSHED_MODEL_TYPE_NAME, base_type=metadata_store_pb2.ArtifactType.MODEL)}
  for name in (PROMOTE_TYPE_NAME, SET_LABEL_TYPE_NAME):
    ids[name] = mlmd.ensure_execution_type(store, name)
  return ids


# --- property helpers ----------------------------------------------------------


def number(value) -> int | None:
  """An integer property value as int, whether MLMD holds it as an int
  (ours, TFX's) or as a whole double (KFP's); None otherwise."""
  if isinstance(value, bool):
    return int(value)
  if isinstance(value, int):
    return value
  if isinstance(value, float) and value.is_integer():
    return int(value)
  return None


def actor() -> tuple[str, str]:
  """(user, host) of this process, as recorded on the executions it writes."""
  try:
    user = getpass.getuser()
  except (KeyError, OSError):
    user = str(os.getuid())
  return user, socket.gethostname()


def _set_actor(execution: metadata_store_pb2.Execution, user_reason: str) -> None:
  user, host = actor()
  props = execution.custom_properties
  props["user"].string_value = user
  props["host"].string_value = host
  props["user_reason"].string_value = user_reason or ""


def _typed_artifacts(store, model_name: str | None) -> list[metadata_store_pb2.Artifact]:
  """PushedModels of both type names (of `model_name` only, if given)."""
  found = []
  for type_name in PUSHED_MODEL_TYPE_NAMES:
    if model_name is None:
      found += store.get_artifacts_by_type(type_name)
    else:
      found += store.get_artifacts(list_options=of_model(type_name, model_name))
  return found


def of_model(type_name: str, model_name: str) -> metadata_store.ListOptions:
  """List options for the records of type `type_name` whose `model_name`
  custom property is `model_name` (where every writer puts it: `mark_pushed`,
  `mark_not_pushed`, our executions)."""
  return metadata_store.ListOptions(filter_query=(
      f"type = {mlmd.quote(type_name)} AND "
      f"custom_properties.model_name.string_value = {mlmd.quote(model_name)}"))


def _iso(ms: int) -> str:
  return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).isoformat(
      timespec="milliseconds")


def mark_pushed(artifact: metadata_store_pb2.Artifact, served: ServedVersion, *,
                label: str | None, forced: bool) -> metadata_store_pb2.Artifact:
  """Sets the custom properties of a PushedModel that was pushed.

  Takes the MLMD proto, so a TFX executor can call it on
  `artifact.mlmd_artifact`: its pushes then read back like ours, and its
  `label` takes effect once TFX publishes the artifact. `label` None or ""
  assigns no label.
  """
  if label:
    serving.validate_label(label)
  props = artifact.custom_properties
  props[PUSHED_KEY].int_value = 1
  props[PUSHED_DESTINATION_KEY].string_value = served.path
  props[PUSHED_VERSION_KEY].string_value = str(served.version)
  props["model_name"].string_value = served.model_name
  props["version"].int_value = served.version
  props["label"].string_value = label or ""
  props["forced"].int_value = int(bool(forced))
  user, host = actor()  # who pushed, also when a TFX executor records it
  props["user"].string_value = user
  props["host"].string_value = host
  return artifact


def mark_not_pushed(artifact: metadata_store_pb2.Artifact, *, model_name: str,
                    reason: str) -> metadata_store_pb2.Artifact:
  """Sets the custom properties of a PushedModel that was not pushed."""
  props = artifact.custom_properties
  props[PUSHED_KEY].int_value = 0
  props["model_name"].string_value = model_name
  props["reason"].string_value = reason
  return artifact


def _require_artifact(store, artifact_id: int, type_name: str, role: str):
  artifacts = store.get_artifacts_by_id([artifact_id])
  if not artifacts:
    raise MetadataError(f"{role} artifact id {artifact_id} is not in the "
                        f"metadata store. Expected the id of a {type_name}")
  [artifact] = artifacts
  [artifact_type] = store.get_artifact_types_by_id([artifact.type_id])
  if artifact_type.name != type_name:
    raise MetadataError(f"artifact {artifact_id} is a {artifact_type.name}. "
                        f"Expected a {type_name} as the {role}")
  return artifact


def _put_promote(store, *, model_artifact_id: int, blessing_artifact_id: int | None,
                 pushed: metadata_store_pb2.Artifact,
                 execution: metadata_store_pb2.Execution) -> int:
  # Existing artifacts are passed as events only (artifact None), so this
  # transaction cannot overwrite the Model or the blessing.
  pairs = [(None, mlmd.input_event("model", model_artifact_id))]
  if blessing_artifact_id is not None:
    pairs.append((None, mlmd.input_event("model_blessing", blessing_artifact_id)))
  pairs.append((pushed, mlmd.output_event("pushed_model")))
  try:
    _, artifact_ids, _ = store.put_execution(
        execution, mlmd.without_repeated_inputs(pairs), contexts=[])
  except mlmd_errors.AlreadyExistsError as e:
    existing = _recorded_push_of(store, pushed, model_artifact_id)
    if existing is not None:
      _log.info("%s is already recorded from Model %d as PushedModel %d",
                pushed.uri, model_artifact_id, existing)
      return existing
    raise ServingError(f"{pushed.uri!r} is already recorded as a served "
                       "version (of another Model, or with another label); a version "
                       "is recorded once") from e
  return artifact_ids[-1]


def _recorded_push_of(store, pushed: metadata_store_pb2.Artifact,
                      model_artifact_id: int) -> int | None:
  """The id of the recorded PushedModel with `pushed`'s external id if it is
  the same push recorded again (a retry): same label, forced and version,
  produced by an execution with the Model `model_artifact_id` as INPUT.
  Else None."""
  external_id = pushed.external_id
  if not external_id:
    return None
  found = store.get_artifacts_by_external_ids([external_id])
  if not found:
    return None
  for key in ("label", "forced", "version"):
    if mlmd.property_value(found[0], key) != mlmd.property_value(pushed, key):
      return None  # another request: not a repeat of this one
  producers = [e.execution_id for e in store.get_events_by_artifact_ids([found[0].id])
               if e.type == _OUTPUT]
  if not producers:
    return None
  inputs = store.get_events_by_execution_ids(producers)
  if any(e.type == _INPUT and e.artifact_id == model_artifact_id for e in inputs):
    return found[0].id
  return None


def stable_served(store: Store, model_name: str) -> "ServedRecord | None":
  """The served version of `model_name` labelled stable, if its SavedModel
  is still on local disk; None if no version holds the label, its files
  are gone or it is in a bucket (logged). The baseline of every
  evaluation: the pipeline's Evaluator and `promote`. Read-only."""
  version = current_labels(store, model_name).get(STABLE)
  if version is None:
    return None
  record = served_version(store, model_name, version)
  if storage.is_remote(record.path):
    # TFMA is handed the baseline as a local directory (a link to the
    # served version); a version in a bucket is not linked or downloaded.
    _log.warning("stable version %d of %r is in a bucket (%s); evaluating without a "
                 "baseline", version, model_name, record.path)
    return None
  if not os.path.isfile(os.path.join(record.path, "saved_model.pb")):
    _log.warning("stable version %d of %r is gone from %s; evaluating without a "
                 "baseline", version, model_name, record.path)
    return None
  return record


def pushed_models(store: Store, records: Sequence["ServedRecord"]) -> dict[int, int]:
  """PushedModel artifact id -> the Model it was pushed from (the INPUT
  under key `model` of the execution that produced it), for those of
  `records` whose producer names one. Read-only."""
  if not records:
    return {}
  events = store.get_events_by_artifact_ids([r.artifact_id for r in records])
  producer: dict[int, int] = {}
  for e in events:
    if e.type == _OUTPUT:
      producer[e.artifact_id] = min(e.execution_id, producer.get(e.artifact_id, e.execution_id))
  if not producer:
    return {}
  model_of_execution: dict[int, int] = {}
  for e in store.get_events_by_execution_ids(sorted(set(producer.values()))):
    if e.type == _INPUT and e.path.steps and e.path.steps[0].key == "model":
      model_of_execution.setdefault(e.execution_id, e.artifact_id)
  return {artifact_id: model_of_execution[execution_id]
          for artifact_id, execution_id in producer.items()
          if execution_id in model_of_execution}


def _check_inputs(store, model_artifact_id: int, blessing_artifact_id: int | None,
                  forced: bool) -> None:
  _require_artifact(store, model_artifact_id, MODEL_TYPE_NAME, "model")
  if blessing_artifact_id is not None:
    blessing = _require_artifact(store, blessing_artifact_id,
                                 MODEL_BLESSING_TYPE_NAME, "blessing")
    if not forced and mlmd.property_value(blessing, "blessed") != 1:
      raise ServingError(
          f"model blessing {blessing_artifact_id} is not blessed (blessed="
          f"{mlmd.property_value(blessing, 'blessed')}). Expected blessed=1, or push with "
          "forced=True")


# --- pushes ------------------------------------------------------------------


def record_push(store: Store, *, model_artifact_id: int,
                served: ServedVersion, label: str | None, forced: bool,
                blessing_artifact_id: int | None = None,
                serving_root: str, user_reason: str = "") -> int:
  """Records that the Model `model_artifact_id` is served as `served`, and
  that this push assigns `label` (None: no label) to it.

  One transaction: a COMPLETE `ckptflow.Promote` execution, INPUT events from
  the Model and the blessing, and an OUTPUT event to a new LIVE PushedModel
  (uri = the version directory). The execution records `user`, `host` and
  `user_reason`. A version directory is recorded at most once (the
  PushedModel's external id is its path): recording it again from the same
  Model returns the existing PushedModel. Does not touch
  models.config (see `sync_models_config`). Returns the PushedModel's
  artifact id.

  Raises:
    ServingError: `served` is not a version directory under `serving_root`,
      the label is invalid, the blessing is not blessed and `forced` is
      False, or the version is already recorded. Nothing is written.
    MetadataError: the model or blessing id is unknown or of the wrong type.
  """
  if label:
    serving.validate_label(label)
  expected = serving.version_path(serving_root, served.model_name, served.version)
  given = served.path if storage.is_remote(served.path) else os.path.abspath(served.path)
  if given != expected or not serving.version_exists(serving_root, served.model_name,
                                                       served.version):
    raise ServingError(f"served version path {served.path!r} is not a version "
                       f"directory of serving root {serving_root!r}. Expected "
                       f"{expected!r}")
  _check_inputs(store, model_artifact_id, blessing_artifact_id, forced)
  type_ids = ensure_types(store)
  pushed = metadata_store_pb2.Artifact(
      type_id=type_ids[PUSHED_MODEL_TYPE_NAME], uri=expected,
      state=metadata_store_pb2.Artifact.LIVE,
      external_id=f"ckptflow.served:{expected}")
  mark_pushed(pushed, dataclasses.replace(served, path=expected),
              label=label, forced=forced)
  execution = metadata_store_pb2.Execution(
      type_id=type_ids[PROMOTE_TYPE_NAME],
      last_known_state=metadata_store_pb2.Execution.COMPLETE)
  props = execution.custom_properties
  props["model_name"].string_value = served.model_name
  props["version"].int_value = served.version
  props["label"].string_value = label or ""
  props["forced"].int_value = int(bool(forced))
  props["outcome"].string_value = "pushed"
  _set_actor(execution, user_reason)
  return _put_promote(store, model_artifact_id=model_artifact_id,
                      blessing_artifact_id=blessing_artifact_id,
                      pushed=pushed, execution=execution)


def record_not_pushed(store: Store, *, model_artifact_id: int,
                      model_name: str, reason: str,
                      blessing_artifact_id: int | None = None,
                      user_reason: str = "") -> int:
  """Records that the Model was considered for serving and not pushed.

  A `ckptflow.Promote` execution with an OUTPUT PushedModel whose `pushed`
  is 0 and `reason` says why (e.g. "not blessed"). Returns its artifact id.

  Raises:
    ServingError: the model name is invalid.
    MetadataError: the model or blessing id is unknown or of the wrong type.
  """
  validate_model_name(model_name)
  _check_inputs(store, model_artifact_id, blessing_artifact_id, forced=True)
  type_ids = ensure_types(store)
  pushed = metadata_store_pb2.Artifact(
      type_id=type_ids[PUSHED_MODEL_TYPE_NAME],
      state=metadata_store_pb2.Artifact.LIVE)
  mark_not_pushed(pushed, model_name=model_name, reason=reason)
  execution = metadata_store_pb2.Execution(
      type_id=type_ids[PROMOTE_TYPE_NAME],
      last_known_state=metadata_store_pb2.Execution.COMPLETE)
  execution.custom_properties["model_name"].string_value = model_name
  execution.custom_properties["outcome"].string_value = "not_pushed"
  execution.custom_properties["reason"].string_value = reason
  _set_actor(execution, user_reason)
  return _put_promote(store, model_artifact_id=model_artifact_id,
                      blessing_artifact_id=blessing_artifact_id,
                      pushed=pushed, execution=execution)


def _served_record(artifact: metadata_store_pb2.Artifact) -> ServedRecord | None:
  # Numbers may be ints (ours, TFX's) or doubles (KFP's).
  if number(mlmd.property_value(artifact, PUSHED_KEY)) != 1:
    return None
  model_name = mlmd.property_value(artifact, "model_name")
  version = number(mlmd.property_value(artifact, "version"))
  if version is None:
    pushed_version = mlmd.property_value(artifact, PUSHED_VERSION_KEY)
    if isinstance(pushed_version, str) and pushed_version.isdigit():
      version = int(pushed_version)
    else:
      version = number(pushed_version)
  if not isinstance(model_name, str) or not model_name or version is None:
    return None  # a PushedModel from a pusher that does not name its version
  return ServedRecord(
      artifact_id=artifact.id, model_name=model_name, version=version,
      path=mlmd.property_value(artifact, PUSHED_DESTINATION_KEY) or artifact.uri,
      label=mlmd.property_value(artifact, "label") or "",
      forced=bool(number(mlmd.property_value(artifact, "forced"))),
      pushed_at=_iso(artifact.create_time_since_epoch),
      deleted=artifact.state == metadata_store_pb2.Artifact.DELETED)


def _served_records(artifacts: Sequence[metadata_store_pb2.Artifact]) -> list[ServedRecord]:
  records = [r for a in artifacts if (r := _served_record(a)) is not None]
  return sorted(records, key=lambda r: (r.model_name, r.version, r.artifact_id))


def all_served_versions(store: Store) -> list[ServedRecord]:
  """Every served version of every model, by model name then version
  (PushedModels of both type names)."""
  return _served_records(_typed_artifacts(store, None))


def served_versions(store: Store, model_name: str) -> list[ServedRecord]:
  """Served versions of `model_name` recorded in MLMD, oldest version first.

  Any PushedModel (or KFP's tfx.PushedModel) with pushed=1 and the
  model_name / version (or pushed_version) custom properties counts,
  whichever executor wrote it, DELETED ones included (their numbers stay
  reserved). One filtered MLMD read per type name: only that model's.
  """
  validate_model_name(model_name)
  artifacts = _typed_artifacts(store, model_name)
  return [r for r in _served_records(artifacts) if r.model_name == model_name]


def served_version(store: Store, model_name: str,
                   version: int) -> ServedRecord:
  """The record of one served version.

  Raises:
    ServingError: `model_name` has no served version `version`.
  """
  records = [r for r in served_versions(store, model_name) if r.version == version]
  if not records:
    known = [r.version for r in served_versions(store, model_name)]
    raise ServingError(
        f"model {model_name!r} has no served version {version!r}. Served "
        f"versions: {', '.join(map(str, known)) or 'none'}")
  return records[-1]


# --- labels ------------------------------------------------------------------


def label_history(store: Store, model_name: str,
                  label: str | None = None) -> list[LabelChange]:
  """Every label assignment of `model_name` (of `label` only, if given), in
  execution-id order: labelled pushes (reason "push", execution = the one
  that produced the PushedModel) and SetLabel executions. A PushedModel no
  execution produced has no place in that order and assigns nothing."""
  changes: list[LabelChange] = []
  executions = store.get_executions(
      list_options=of_model(SET_LABEL_TYPE_NAME, model_name))
  for execution in sorted(executions, key=lambda e: e.id):
    if mlmd.property_value(execution, "model_name") != model_name:
      continue
    previous = number(mlmd.property_value(execution, "previous_version"))
    changes.append(LabelChange(
        execution_id=execution.id, model_name=model_name,
        label=mlmd.property_value(execution, "label"),
        version=number(mlmd.property_value(execution, "version")),
        previous_version=None if previous in (None, _NO_VERSION) else previous,
        reason=mlmd.property_value(execution, "reason") or "",
        changed_at=_iso(execution.create_time_since_epoch),
        **_actor_of(execution)))
  pushes = {r.artifact_id: r for r in served_versions(store, model_name) if r.label}
  if pushes:
    events = store.get_events_by_artifact_ids(list(pushes))
    # The producer is the first execution with an OUTPUT event: TFX links a
    # cached rerun of the Pusher (a CACHED execution) to the same PushedModel
    # with an OUTPUT event of its own, which assigns nothing anew.
    producers: dict[int, int] = {}
    for e in events:
      if e.type == _OUTPUT:
        producers[e.artifact_id] = min(e.execution_id,
                                       producers.get(e.artifact_id, e.execution_id))
    pushers = {e.id: e for e in store.get_executions_by_id(sorted(set(producers.values())))}
    for artifact_id, record in pushes.items():
      if artifact_id in producers:
        pusher = pushers.get(producers[artifact_id])
        changes.append(LabelChange(
            execution_id=producers[artifact_id], model_name=model_name,
            label=record.label, version=record.version, previous_version=None,
            reason="push", changed_at=record.pushed_at,
            **(_actor_of(pusher) if pusher is not None else {})))
  changes.sort(key=lambda c: (c.execution_id, c.reason != "push"))
  # Replay, to give each push the version its label had before it.
  current: dict[str, int] = {}
  replayed = []
  for change in changes:
    if change.reason == "push":
      change = dataclasses.replace(change, previous_version=current.get(change.label))
    current[change.label] = change.version
    replayed.append(change)
  return [c for c in replayed if label is None or c.label == label]


def _actor_of(execution: metadata_store_pb2.Execution) -> dict[str, str]:
  """user_reason, user and host as an execution recorded them ("" if not)."""
  return {key: str(mlmd.property_value(execution, key) or "")
          for key in ("user_reason", "user", "host")}


def current_labels(store: Store, model_name: str) -> dict[str, int]:
  """label -> version for `model_name`: what each label's latest assignment
  (labelled push or SetLabel, by execution id) gave it."""
  labels = {}
  for change in label_history(store, model_name):
    labels[change.label] = change.version
  return dict(sorted(labels.items()))


def set_label(store: Store, model_name: str, label: str,
              version: int, reason: str, *, user_reason: str = "") -> int:
  """Points `label` of `model_name` at served version `version` (relabel,
  e.g. canary to stable, or rollback).

  Records a COMPLETE `ckptflow.SetLabel` execution (custom properties
  model_name, label, version, previous_version (-1 if none), reason (what
  kind of change), user_reason (the user's `--reason`), user, host) with an
  INPUT event from the version's PushedModel, in one transaction. Does not
  touch models.config: call `sync_models_config` after (holding
  `serving.models_config_lock` around both keeps previous_version exact
  when several processes relabel at once). Returns the execution id.

  Raises:
    ServingError: the label is invalid, or `version` is not a served version
      of `model_name` whose directory exists. Nothing is written.
  """
  serving.validate_label(label)
  record = served_version(store, model_name, version)
  if not _path_published(record.path):
    raise ServingError(f"version {version} of {model_name!r} is recorded but its "
                       f"directory {record.path!r} is gone. Expected a served "
                       "version that still exists")
  previous = current_labels(store, model_name).get(label, _NO_VERSION)
  type_ids = ensure_types(store)
  execution = metadata_store_pb2.Execution(
      type_id=type_ids[SET_LABEL_TYPE_NAME],
      last_known_state=metadata_store_pb2.Execution.COMPLETE)
  props = execution.custom_properties
  props["model_name"].string_value = model_name
  props["label"].string_value = label
  props["version"].int_value = version
  props["previous_version"].int_value = previous
  props["reason"].string_value = reason
  _set_actor(execution, user_reason)
  event = mlmd.input_event("pushed_model", record.artifact_id)
  execution_id, _, _ = store.put_execution(execution, [(None, event)], contexts=[])
  return execution_id


def _stable_stack(history: Sequence[LabelChange]) -> list[int]:
  """Replays `stable` changes: a promotion pushes, a rollback pops back to
  its target (so rolling back twice goes two promotions back, not forth)."""
  stack: list[int] = []
  for change in history:
    if change.reason == "rollback":
      if change.version in stack:
        del stack[len(stack) - stack[::-1].index(change.version):]
      else:
        stack[-1:] = [change.version]
    else:
      stack.append(change.version)
  return stack


def rollback(store: Store, serving_root: str,
             model_name: str, to_version: int | None = None, *,
             user_reason: str = "") -> tuple[int, int]:
  """Moves the `stable` label back, and rewrites models.config.

  Without `to_version`: to the stable version before the current one, as
  promotions and earlier rollbacks left it (rolling back twice goes two
  promotions back), skipping versions whose directory is gone. With it: to
  that served version, whose directory must exist (rolling back to the
  current version only rewrites models.config). `user_reason` (the
  user's `--reason`) is recorded with the change. Returns (previous, new).

  Raises:
    ServingError: no stable label, only one served version, no earlier
      stable version, or
      `to_version` is not a served version with a directory. Nothing is
      written.
  """
  validate_model_name(model_name)
  # Checked once before taking the lock, so a refused rollback creates
  # nothing (not even the lock file), and again under it, where it counts.
  _rollback_target(store, serving_root, model_name, to_version)
  with serving.models_config_lock(serving_root):
    current, target = _rollback_target(store, serving_root, model_name, to_version)
    if target != current:
      set_label(store, model_name, STABLE, target, reason="rollback",
                user_reason=user_reason)
    sync_models_config(store, serving_root)
  return current, target


def _rollback_target(store, serving_root: str, model_name: str,
                     to_version: int | None) -> tuple[int, int]:
  """(current stable version, version to roll back to); see `rollback`."""
  current = current_labels(store, model_name).get(STABLE)
  if current is None:
    raise ServingError(f"model {model_name!r} has no {STABLE!r} version, so "
                       "there is nothing to roll back. Promote a version first")
  served = {r.version for r in served_versions(store, model_name)}

  def usable(version: int) -> bool:
    return version in served and serving.version_exists(serving_root, model_name, version)

  if to_version is None:
    stack = _stable_stack(label_history(store, model_name, STABLE))
    candidates = [v for v in reversed(stack[:-1]) if v != current and usable(v)]
    if not candidates and not [v for v in served if v != current and usable(v)]:
      raise ServingError(f"model {model_name!r} has only one served version "
                         f"({current}), so there is nothing to roll back to. "
                         "Promote another version first")
    if not candidates:
      raise ServingError(f"model {model_name!r} has no earlier {STABLE!r} "
                         f"version to roll back to from version {current}. "
                         "Pass the version to roll back to")
    return current, candidates[0]
  if isinstance(to_version, bool) or not isinstance(to_version, int) or not usable(to_version):
    raise ServingError(
        f"cannot roll back {model_name!r} to version {to_version!r}. Expected "
        f"a served version whose directory exists: "
        f"{', '.join(str(v) for v in sorted(served) if usable(v)) or 'none'}")
  return current, to_version


def move_label(store: Store, serving_root: str, model_name: str, label: str,
               version: int, *, reason: str, user_reason: str = "") -> int | None:
  """Points `label` of `model_name` at the existing served `version` (a
  re-promotion: `reason` "repromote") and rewrites models.config, under
  `models_config_lock`. Records a SetLabel only if the label moves (a
  repeated call changes nothing: idempotent). Returns the version the label
  had before (None: none).

  Raises:
    ServingError: as `set_label`. Nothing is written.
  """
  validate_model_name(model_name)
  serving.validate_label(label)
  with serving.models_config_lock(serving_root):
    previous = current_labels(store, model_name).get(label)
    if previous != version:
      set_label(store, model_name, label, version, reason=reason,
                user_reason=user_reason)
    sync_models_config(store, serving_root)
  return previous


def serving_states(store: Store, serving_root: str, *,
                   pending: ServedVersion | None = None,
                   pending_label: str | None = None,
                   exclude: Mapping[str, Iterable[int]] | None = None
                   ) -> dict[str, serving.ModelServingState]:
  """What models.config should say, from MLMD: per model, its labelled
  versions plus its newest served version, limited to versions whose
  directory exists under `serving_root` (a label on a missing version is
  left out, with a warning).

  `pending` is a pushed version MLMD does not hold yet (a TFX executor's
  PushedModel is published only after the executor returns): it counts as
  served and, with `pending_label`, as the latest assignment of that label.
  `exclude` (model name -> versions) are left out as if their directories
  were gone: versions `ckptflow gc` is about to remove.

  Raises:
    ServingError: `pending` is not a version directory of `serving_root`.
  """
  by_model: dict[str, set[int]] = {}
  excluded = {name: set(versions) for name, versions in (exclude or {}).items()}
  for record in all_served_versions(store):
    if record.version in excluded.get(record.model_name, ()):
      continue
    if serving.version_exists(serving_root, record.model_name, record.version):
      by_model.setdefault(record.model_name, set()).add(record.version)
  if pending is not None:
    path = serving.version_path(serving_root, pending.model_name, pending.version)
    if not serving.version_exists(serving_root, pending.model_name, pending.version):
      raise ServingError(f"pending version {pending.path!r} is not a version "
                         f"directory of {serving_root!r}. Expected {path!r}")
    by_model.setdefault(pending.model_name, set()).add(pending.version)
    if pending_label:
      serving.validate_label(pending_label)
  states = {}
  for model_name, present in sorted(by_model.items()):
    assigned = current_labels(store, model_name)
    if pending is not None and pending_label and pending.model_name == model_name:
      assigned[pending_label] = pending.version
    labels = {}
    for label, version in assigned.items():
      if version in present:
        labels[label] = version
      else:
        _log.warning("label %r of model %r names version %d, which is not in "
                     "%r; leaving it out of models.config", label, model_name,
                     version, serving_root)
    states[model_name] = serving.ModelServingState(
        versions=tuple(set(labels.values()) | {max(present)}), labels=labels)
  return states


def sync_models_config(store: Store, serving_root: str, *,
                       pending: ServedVersion | None = None,
                       pending_label: str | None = None,
                       exclude: Mapping[str, Iterable[int]] | None = None
                       ) -> dict[str, serving.ModelServingState]:
  """Rewrites SERVING_ROOT/models.config from MLMD (see `serving_states`,
  also for `pending` and `exclude`).

  Reads MLMD and replaces the file while holding `models_config_lock`, so
  concurrent syncs cannot leave an older state on disk. Returns the states
  written.
  """
  with serving.models_config_lock(serving_root):
    states = serving_states(store, serving_root, pending=pending,
                            pending_label=pending_label, exclude=exclude)
    serving.write_models_config(serving_root, states)
  if storage.is_remote(serving_root):
    # No lock on a bucket: a concurrent sync may have written an older state
    # after ours. Re-derive and rewrite until what MLMD says is what was
    # written; the last sync to finish writes every version recorded before.
    for _ in range(_REMOTE_SYNC_ROUNDS):
      again = serving_states(store, serving_root, pending=pending,
                             pending_label=pending_label)
      if again == states and serving.read_models_config(serving_root) == states:
        break
      states = again
      serving.write_models_config(serving_root, states)
  return states


_REMOTE_SYNC_ROUNDS = 5


def _path_published(path: str) -> bool:
  """A served version's directory exists (on a bucket: is committed)."""
  if storage.is_remote(path):
    return storage.committed(path) is not None
  return os.path.isdir(path)


def promote(store: Store, *, saved_model_dir: str,
            serving_root: str, model_name: str, model_artifact_id: int,
            label: str = STABLE, forced: bool = False,
            blessing_artifact_id: int | None = None,
            required_signature: str | None = None,
            user_reason: str = "") -> ServedRecord:
  """Pushes a SavedModel, records the push (which assigns `label`), and
  rewrites models.config.

  Versions recorded in MLMD are reserved, so a wiped serving root never
  reuses a number. Inputs are checked before anything is copied. A crash
  between steps leaves a state the next sync repairs: an unrecorded version
  directory is never loaded (models.config lists versions explicitly).

  With `required_signature` (e.g. "serving_default"), a SavedModel without
  that signature is refused before anything is written.

  Raises:
    ServingError, MetadataError: as `push_saved_model`, `record_push`, and
      `serving.check_signature`.
  """
  validate_model_name(model_name)
  serving.validate_label(label)
  if required_signature:
    serving.check_signature(saved_model_dir, required_signature)
  _check_inputs(store, model_artifact_id, blessing_artifact_id, forced)
  reserved = [r.version for r in served_versions(store, model_name)]
  served = serving.push_saved_model(saved_model_dir, serving_root, model_name,
                                    reserved_versions=reserved)
  fault_point("push-record")  # published, not yet recorded
  record_push(store, model_artifact_id=model_artifact_id, served=served,
              label=label, forced=forced,
              blessing_artifact_id=blessing_artifact_id, serving_root=serving_root,
              user_reason=user_reason)
  sync_models_config(store, serving_root)
  return served_version(store, model_name, served.version)


__all__ = [
    "LabelChange", "ServedRecord", "all_served_versions", "current_labels",
    "ensure_types", "label_history", "mark_not_pushed", "mark_pushed", "move_label",
    "number", "of_model", "promote", "pushed_models",
    "record_not_pushed", "record_push", "rollback", "served_version",
    "served_versions", "serving_states", "set_label", "sync_models_config",
]
