"""`ckptflow gc`: removes what nothing needs any more, and frees its storage.

What goes (`plan`):

* **served versions** that hold no label and are not among the newest
  `keep_versions` versions of their model (the newest version always
  stays: models.config lists it);
* **exports** (`ckptflow export` / `promote` SavedModels, LIVE `Model`
  artifacts of `ckptflow.Export` executions) that no kept served version
  was pushed from and whose checkpoint is not protected as "exported" (a
  user's explicit export), but for the newest `keep_exports` of them;
* **files of pruned checkpoints** still on disk (their artifact is DELETED
  already).

Never: a labelled version, the newest version of a model, or anything whose
path (symlinks resolved) is outside the home's roots (`Home.roots`: the
home, its pipeline root included, and the serving root); such a candidate
is skipped and said so, and every delete goes through the storage guard
(`storage.remove_tree`), which refuses anything outside them again. Served
versions in a bucket (`--serving-dir s3://...`) are listed as skipped, not
removed: this version collects served versions on disk only.

How a served version goes (`collect`), so that TF Serving never loads a
half-removed version:

1. unlisted from models.config (rewritten from MLMD without it), under the
   models.config lock, held for the whole removal of the model's versions
   so that a concurrent relabel or rollback waits and then sees the result;
2. its directory renamed to a non-numeric `.staging-` name (TF Serving and
   version listings stop seeing it in one step) and deleted;
3. its PushedModel marked DELETED (the number stays reserved), in one MLMD
   transaction with a `ckptflow.GC` execution that has every removed
   artifact as INPUT (key `removed`) and records `model_name`, `user`,
   `host` and the settings: `history` and the report show it.

Exports and checkpoint files are deleted, then their records updated (a
`ckptflow.GC` execution without a model name). A kill mid-way leaves files
gone with a LIVE record or a `.staging-` leftover: `doctor --repair` fixes
both. The whole collection holds the home's shared lock (no repair runs
meanwhile); a concurrent `promote` is not disturbed: a new push is never a
candidate, and relabels wait for the models.config lock.

`--dry-run` reads only: nothing is locked, created or changed.

Imports neither TensorFlow nor TFX.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

from ml_metadata.proto import metadata_store_pb2

from ckptflow.base import mlmd, storage
from ckptflow.base.errors import CkptflowError
from ckptflow.base.home import Home, shared_lock
from ckptflow.base.metadata import Store
from ckptflow.components import checkpoint as checkpoints
from ckptflow.components import promotion
from ckptflow.components.pusher import serving
from ckptflow.operations.export import EXPORT_TYPE_NAME
from ckptflow.operations.history import GC_TYPE_NAME

_log = logging.getLogger(__name__)
_LIVE = metadata_store_pb2.Artifact.LIVE
_DELETED = metadata_store_pb2.Artifact.DELETED
_OUTPUT = metadata_store_pb2.Event.OUTPUT

VERSION, EXPORT, CHECKPOINT_FILES = "version", "export", "checkpoint-files"


@dataclasses.dataclass(frozen=True)
class Removal:
  """One thing gc removes (or, in a dry run, would remove)."""

  kind: str  # VERSION, EXPORT or CHECKPOINT_FILES
  artifact_id: int
  path: str
  bytes: int
  model_name: str | None = None
  version: int | None = None

  def as_json(self) -> dict:
    return dataclasses.asdict(self)

  def line(self) -> str:
    what = (f"{self.model_name} version {self.version}" if self.kind == VERSION
            else f"{self.kind} (artifact {self.artifact_id})")
    return f"{what}: {self.path} ({self.bytes} bytes)"


@dataclasses.dataclass(frozen=True)
class Skipped:
  """A candidate gc leaves alone, and why (outside the roots)."""

  kind: str
  artifact_id: int
  path: str
  why: str

  def as_json(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class GcResult:
  dry_run: bool
  keep_versions: int
  keep_exports: int
  removed: list[Removal]
  skipped: list[Skipped]

  @property
  def bytes(self) -> int:
    return sum(r.bytes for r in self.removed)

  def as_json(self) -> dict:
    return {"dry_run": self.dry_run, "keep_versions": self.keep_versions,
            "keep_exports": self.keep_exports, "bytes": self.bytes,
            "removed": [r.as_json() for r in self.removed],
            "skipped": [s.as_json() for s in self.skipped]}

  def lines(self) -> list[str]:
    verb = "would remove" if self.dry_run else "removed"
    out = [f"{verb} {r.line()}" for r in self.removed]
    out += [f"skipped {s.kind} {s.path}: {s.why}" for s in self.skipped]
    out.append(f"{verb} {len(self.removed)} item(s), {self.bytes} bytes"
               + (" (dry run: nothing changed)" if self.dry_run else ""))
    return out


def check_settings(keep_versions: int, keep_exports: int) -> None:
  """Raises CkptflowError unless keep_versions >= 1 and keep_exports >= 0."""
  if isinstance(keep_versions, bool) or not isinstance(keep_versions, int) \
     or keep_versions < 1:
    raise CkptflowError(f"--keep-versions is {keep_versions!r}. Expected an integer >= 1 "
                        "(the newest version of a model is always kept)")
  if isinstance(keep_exports, bool) or not isinstance(keep_exports, int) or keep_exports < 0:
    raise CkptflowError(f"--keep-exports is {keep_exports!r}. Expected an integer >= 0")


def _roots(where: Home) -> tuple[str, ...]:
  """What gc may delete below: the home (its pipeline root included) and
  the serving root (`Home.roots`)."""
  return where.roots


def _version_removals(store: Store, where: Home, keep_versions: int,
                      model_name: str) -> tuple[list[Removal], list[Skipped]]:
  records = [r for r in promotion.served_versions(store, model_name) if not r.deleted
             and serving.version_exists(where.serving_root, model_name, r.version)]
  if not records:
    return [], []
  labelled = set(promotion.current_labels(store, model_name).values())
  versions = sorted({r.version for r in records})
  newest = set(versions[-keep_versions:])
  removals, skipped = [], []
  for record in records:
    if record.version in labelled or record.version in newest:
      continue
    path = serving.version_path(where.serving_root, model_name, record.version)
    if storage.is_remote(path):
      skipped.append(Skipped(VERSION, record.artifact_id, path,
                             "in a bucket: gc removes served versions on disk only"))
      continue
    if not storage.within_roots(path, _roots(where), strictly=True) or os.path.islink(path):
      skipped.append(Skipped(VERSION, record.artifact_id, path,
                             "outside the home's roots"))
      continue
    removals.append(Removal(VERSION, record.artifact_id, path, storage.tree_size(path),
                            model_name=model_name, version=record.version))
  return removals, skipped


def _kept_models(store: Store, where: Home, removed: set[int]) -> set[int]:
  """Models that a served version which stays was pushed from."""
  kept = [r for r in promotion.all_served_versions(store)
          if not r.deleted and r.artifact_id not in removed]
  return set(promotion.pushed_models(store, kept).values())


def _export_removals(store: Store, where: Home, keep_exports: int,
                     removed_versions: set[int]) -> tuple[list[Removal], list[Skipped]]:
  executions = store.get_executions_by_type(EXPORT_TYPE_NAME)
  if not executions:
    return [], []
  outputs = [e.artifact_id for e in store.get_events_by_execution_ids(
      [x.id for x in executions]) if e.type == _OUTPUT]
  models = [a for a in store.get_artifacts_by_id(outputs) if a.state == _LIVE]
  needed = _kept_models(store, where, removed_versions)
  checkpoint_ids = sorted({c for a in models
                           if (c := promotion.number(mlmd.property_value(a, "checkpoint_id")))})
  explicit = {a.id for a in store.get_artifacts_by_id(checkpoint_ids)
              if mlmd.property_value(a, "protected") == "exported"}
  candidates = [a for a in models if a.id not in needed and os.path.isdir(a.uri)
                and promotion.number(mlmd.property_value(a, "checkpoint_id")) not in explicit]
  candidates.sort(key=lambda a: a.id)
  if keep_exports:
    candidates = candidates[:-keep_exports]
  removals, skipped = [], []
  for artifact in candidates:
    if not storage.within_roots(artifact.uri, [where.export_root], strictly=True):
      skipped.append(Skipped(EXPORT, artifact.id, artifact.uri, "outside the home's roots"))
      continue
    removals.append(Removal(EXPORT, artifact.id, artifact.uri,
                            storage.tree_size(artifact.uri)))
  return removals, skipped


def _checkpoint_file_removals(store: Store, where: Home) -> tuple[list[Removal],
                                                                  list[Skipped]]:
  removals, skipped = [], []
  roots = where.checkpoint_roots()
  for record in checkpoints.list_checkpoints(store):
    if record.live or record.state != "DELETED" or not os.path.isdir(record.uri):
      continue
    if not storage.within_roots(record.uri, roots, strictly=True):
      skipped.append(Skipped(CHECKPOINT_FILES, record.id, record.uri,
                             "outside the home's roots"))
      continue
    removals.append(Removal(CHECKPOINT_FILES, record.id, record.uri,
                            storage.tree_size(record.uri)))
  return removals, skipped


def plan(store: Store, where: Home, *, keep_versions: int, keep_exports: int
         ) -> tuple[list[Removal], list[Skipped]]:
  """What gc would remove (see the module docstring). Read-only."""
  check_settings(keep_versions, keep_exports)
  removals: list[Removal] = []
  skipped: list[Skipped] = []
  for model_name in sorted({r.model_name for r in promotion.all_served_versions(store)}):
    found, left = _version_removals(store, where, keep_versions, model_name)
    removals += found
    skipped += left
  found, left = _export_removals(store, where, keep_exports,
                                 {r.artifact_id for r in removals})
  removals += found
  skipped += left
  found, left = _checkpoint_file_removals(store, where)
  return removals + found, skipped + left


def _record_gc(store: Store, removals: list[Removal], *, model_name: str,
               keep_versions: int, keep_exports: int) -> None:
  """Marks the removed artifacts DELETED and records the `ckptflow.GC`
  execution with them as INPUTs, in one transaction."""
  if not removals:
    return
  artifacts = {a.id: a for a in store.get_artifacts_by_id([r.artifact_id for r in removals])}
  execution = metadata_store_pb2.Execution(
      type_id=mlmd.ensure_execution_type(store, GC_TYPE_NAME),
      last_known_state=metadata_store_pb2.Execution.COMPLETE)
  user, host = promotion.actor()
  mlmd.set_properties(execution.custom_properties, {
      "model_name": model_name, "user": user, "host": host,
      "keep_versions": keep_versions, "keep_exports": keep_exports,
      "bytes": sum(r.bytes for r in removals),
      "removed": json.dumps([r.as_json() for r in removals])})
  pairs = []
  for index, removal in enumerate(removals):
    artifact = artifacts[removal.artifact_id]
    if removal.kind == CHECKPOINT_FILES:
      pairs.append((None, mlmd.input_event("removed", artifact.id, index=index)))
      continue
    artifact.state = _DELETED
    artifact.custom_properties["state_reason"].string_value = "removed by ckptflow gc"
    if removal.kind == EXPORT:
      artifact.custom_properties["state"].string_value = "DELETED"
    event = mlmd.event(metadata_store_pb2.Event.INPUT, "removed", index=index)
    pairs.append((artifact, event))
  store.put_execution(execution, pairs, contexts=[])


def _unpublish(path: str, roots) -> None:
  # A non-numeric name first: TF Serving and version listings stop seeing
  # the version in one step; a kill before the delete leaves a `.staging-`
  # directory of a dead process, which doctor and the next push clean up.
  hidden = os.path.join(os.path.dirname(path), f"{serving.STAGING_PREFIX}gc"
                        f"{os.path.basename(path)}-{os.getpid()}")
  storage.check_within_roots(path, roots, action="rename")
  storage.publish_dir(path, hidden)
  storage.remove_tree(hidden, roots)


def _check_writable(where: Home) -> None:
  for path, what in ((where.home, "home"), (where.serving_root, "serving directory"),
                     (where.pipeline_root, "pipeline root")):
    if os.path.isdir(path) and not os.access(path, os.W_OK | os.X_OK):
      raise CkptflowError(f"{what} {path!r} is not writable (a read-only file system, "
                          "or read-only for this user), so gc can remove nothing. "
                          "Expected a home this user can write")


def collect(store: Store, where: Home, *, keep_versions: int = 3, keep_exports: int = 0,
            dry_run: bool = False) -> GcResult:
  """Removes (or, with `dry_run`, lists) what `plan` finds.

  Raises (before anything is changed):
    CkptflowError: bad settings, or the home is not writable.
  """
  check_settings(keep_versions, keep_exports)
  if dry_run:
    removals, skipped = plan(store, where, keep_versions=keep_versions,
                             keep_exports=keep_exports)
    return GcResult(True, keep_versions, keep_exports, removals, skipped)
  _check_writable(where)
  removed: list[Removal] = []
  with shared_lock(where):
    with serving.models_config_lock(where.serving_root):
      # Decided under the lock: labels cannot move while we remove.
      removals, skipped = plan(store, where, keep_versions=keep_versions,
                               keep_exports=keep_exports)
      versions = [r for r in removals if r.kind == VERSION]
      if versions:
        exclude: dict[str, set[int]] = {}
        for r in versions:
          exclude.setdefault(r.model_name, set()).add(r.version)
        promotion.sync_models_config(store, where.serving_root, exclude=exclude)
      for model_name in sorted({r.model_name for r in versions}):
        of_model = [r for r in versions if r.model_name == model_name]
        for removal in of_model:
          _unpublish(removal.path, _roots(where))
        _record_gc(store, of_model, model_name=model_name, keep_versions=keep_versions,
                   keep_exports=keep_exports)
        removed += of_model
    others = [r for r in removals if r.kind != VERSION]
    for removal in others:
      storage.remove_tree(removal.path, _roots(where))
    _record_gc(store, others, model_name="", keep_versions=keep_versions,
               keep_exports=keep_exports)
    removed += others
  for removal in removed:
    _log.info("gc removed %s", removal.line())
  return GcResult(False, keep_versions, keep_exports, removed, skipped)


__all__ = ["CHECKPOINT_FILES", "EXPORT", "GcResult", "Removal", "Skipped", "VERSION",
           "check_settings", "collect", "plan"]
