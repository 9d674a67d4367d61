"""`ckptflow doctor`: do the metadata store and the files of a home agree?

These must agree: the checkpoint directories under
`HOME/pipeline_root/<node>/checkpoints/` and the `Checkpoint` artifacts in
MLMD; the SavedModels `ckptflow export` writes and their `Model` artifacts;
the version directories under the serving root and the `PushedModel`
records and labels in MLMD, from which `models.config` is derived. A crash
between two steps of a write (files first, then the record) can leave them
apart; `check` lists every disagreement as a `Finding`, and `repair` resolves
each one in the direction that loses nothing that was ever recorded:

================== ===================================== =====================
kind               what                                  repair
================== ===================================== =====================
checkpoint-staging a `.staging` checkpoint write that     delete it
                   never finished
checkpoint-orphan  a `step-N` checkpoint directory no     delete it (nothing
                   Checkpoint artifact names              can find or trust it)
checkpoint-pruned  files of a checkpoint recorded as      delete them
                   DELETED (pruning died midway)
checkpoint-missing a LIVE Checkpoint whose directory is   mark it DELETED,
                   gone                                   with the reason
checkpoint-corrupt a LIVE Checkpoint whose files do not   mark it ABANDONED,
                   match its recorded sha256              keep the files
export-staging     an unfinished `ckptflow export`, or   delete it
                   the Trainer's unmarked export in a
                   bucket
export-orphan      an exported SavedModel no Model       delete it
                   artifact names (killed before its
                   record)
push-staging       a push's staging directory whose      delete it
                   push is dead
version-unrecorded a served version directory without a  unlist it from
                   PushedModel record (killed between     models.config, then
                   the push and its record)               delete it; its number
                                                          is never reused
version-missing    a PushedModel record whose version     mark the record
                   directory is gone                      DELETED (the number
                                                          stays reserved)
models-config      models.config does not say what MLMD   rewrite it from MLMD
                   says should be served, or a temp file  (`sync_models_config`)
                   of a killed writer is left beside it
================== ===================================== =====================

An unrecorded version directory is removed rather than recorded because
nothing in MLMD says which Model it holds: recording it would invent
lineage. TF Serving never loaded it unless a killed Pusher had already
listed it, and the repair unlists it before deleting it.

Scope: artifacts whose files are under HOME (checkpoints) or under the
serving root (served versions); a store shared by several homes is checked
one home at a time, and a home must be used with one store only.

Nothing outside the home and its serving root is ever deleted or renamed:
every repair goes through `storage.remove_tree` / `remove_file`, which
refuse a path outside those roots (the finding is then reported as
refused, not repaired). Before it looks, doctor checks that the store is
this home's (`base.identity.check`): in a copied or moved home it stops
with one line that says to run `ckptflow doctor --relocate`
(`operations/relocate.py`).

Repairs that delete files need the home's exclusive lock
(`base.home.exclusive_lock_if_idle`): they are refused while another ckptflow
command is writing in the home, so a live command's half-finished work is
never taken for debris.

Where it looks is a `base.home.Home`: the home, its pipeline root (and the
checkpoint roots in it) and its serving root.

Roots in a bucket (s3://, gs://): checkpoints, exports and versions there
are published by a commit marker (`storage.commit`), not a rename; a step
or version prefix without one is an unfinished write, reported as
`checkpoint-staging` / `export-staging` / `push-staging` once it is older than the grace
period (CKPTFLOW_UNCOMMITTED_GRACE_S, default 3600 s: a writer in another
pod may still be at work, and pods share no lock). Checkpoint roots in a
bucket are found from the store (the Trainer's Checkpoint and Model
artifacts), since the home does not name them. Versions there are removed
by deleting their commit marker first (no rename).

Imports neither TensorFlow nor TFX.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
from typing import Iterable, Sequence

from ml_metadata.proto import metadata_store_pb2

from ckptflow.components import checkpoint as ckpt_records
from ckptflow.components import promotion
from ckptflow.components.pusher import serving
from ckptflow.base import identity, metadata, names, storage
from ckptflow.base.errors import CkptflowError, ServingError
from ckptflow.base.home import Home, exclusive_lock_if_idle
from ckptflow.base.metadata import Store

_log = logging.getLogger(__name__)

# The Trainer's layout (components/trainer/checkpoint_files.py and
# executor.py); restated here so that doctor does not import TensorFlow.
# Its checkpoint roots are `Home.checkpoint_roots()`.
CHECKPOINT_DIR_RE = re.compile(r"step-\d+")
CHECKPOINT_STAGING_SUFFIX = ".staging"
# `ckptflow export`'s layout (operations/export.py):
# Home.export_root/checkpoint-<id>/export-<time>[.staging].
EXPORT_PREFIX = "export-"
SERVING_DIR_NAME = "Format-Serving"  # TFX's layout inside a Model artifact

_UNPUBLISH_PREFIX = ".unrecorded-"

UNCOMMITTED_GRACE_ENV = "CKPTFLOW_UNCOMMITTED_GRACE_S"
DEFAULT_UNCOMMITTED_GRACE_S = 3600.0


def uncommitted_grace() -> float:
  """Seconds an uncommitted bucket prefix is left alone (see the module
  docstring)."""
  raw = os.environ.get(UNCOMMITTED_GRACE_ENV, "").strip()
  if not raw:
    return DEFAULT_UNCOMMITTED_GRACE_S
  try:
    value = float(raw)
  except ValueError:
    value = -1.0
  if value < 0:
    raise CkptflowError(f"{UNCOMMITTED_GRACE_ENV} is {raw!r}. Expected a number of "
                        "seconds >= 0")
  return value


def _stale(prefix: str) -> bool:
  """An uncommitted bucket prefix whose newest object is older than the
  grace period."""
  return storage.age_seconds(prefix) >= uncommitted_grace()

KINDS = ("checkpoint-staging", "checkpoint-orphan", "checkpoint-pruned",
         "checkpoint-missing", "checkpoint-corrupt", "export-staging",
         "export-orphan", "push-staging", "version-unrecorded", "version-missing",
         "models-config")


@dataclasses.dataclass
class Finding:
  """One disagreement between the store and the files.

  `subject` is the path (or artifact) concerned, `detail` one line saying
  what is wrong, `repair` what `repair` does about it; `repaired` is set
  once it has; `refused` says why a repair was refused (a path outside the
  home's roots).
  """

  kind: str
  subject: str
  detail: str
  repair: str
  artifact_id: int | None = None
  repaired: bool = False
  refused: str = ""

  def as_json(self) -> dict:
    return dataclasses.asdict(self)

  def line(self) -> str:
    done = f"  [repaired: {self.repair}]" if self.repaired else ""
    if self.refused:
      done = f"  [not repaired: {self.refused}]"
    return f"{self.kind:<19} {self.subject}: {self.detail}{done}"


def checkpoint_digest(directory: str) -> tuple[int, str]:
  """(size in bytes, sha256) of a checkpoint directory, exactly as the
  Trainer records it (`components.checkpoint.directory_digest`)."""
  return ckpt_records.directory_digest(directory)


def _under(path: str, root: str) -> bool:
  # Symlinks resolved: a home reached through a link is the same home.
  return storage.within_roots(path, [root])


# --- checks ------------------------------------------------------------------


def _checkpoint_dirs(roots: Iterable[str]) -> tuple[list[str], list[str]]:
  """(step-N directories, .staging directories) under the checkpoint roots."""
  finals, staging = [], []
  for root in roots:
    if storage.is_remote(root):
      for prefix in _remote_step_prefixes(root):
        if storage.committed(prefix) is not None:
          finals.append(prefix)
        elif _stale(prefix):
          staging.append(prefix)
      continue
    for dirpath, dirnames, _ in os.walk(root):
      for name in sorted(dirnames):
        path = os.path.join(dirpath, name)
        if name.endswith(CHECKPOINT_STAGING_SUFFIX):
          staging.append(path)
        elif CHECKPOINT_DIR_RE.fullmatch(name):
          finals.append(path)
      # A checkpoint directory holds files only: do not descend into one.
      dirnames[:] = [n for n in dirnames if not n.endswith(CHECKPOINT_STAGING_SUFFIX)
                     and not CHECKPOINT_DIR_RE.fullmatch(n)]
  return sorted(finals), sorted(staging)


def _remote_step_prefixes(root: str) -> list[str]:
  """The `step-N` prefixes at any depth under the bucket root `root`."""
  found: list[str] = []
  for rel in storage.list_files(root):
    parts = rel.split("/")
    for depth, part in enumerate(parts[:-1]):
      if CHECKPOINT_DIR_RE.fullmatch(part):
        prefix = storage.join(root, *parts[:depth + 1])
        if not found or found[-1] != prefix:
          found.append(prefix)
        break
  return sorted(set(found))


def remote_checkpoint_roots(store, where: Home) -> list[str]:
  """Checkpoint roots in a bucket: those of `where`'s pipeline root if it
  is one, and `<pipeline root>/<node>/checkpoints` of every Trainer
  artifact (Checkpoint, Model) the store holds in a bucket."""
  roots = set(where.checkpoint_roots()) if storage.is_remote(where.pipeline_root) else set()
  for record in ckpt_records.list_checkpoints(store):
    if storage.is_remote(record.uri) and "/checkpoints/" in record.uri:
      roots.add(record.uri.split("/checkpoints/", 1)[0] + "/checkpoints")
  for model in store.get_artifacts_by_type("Model"):
    parts = model.uri.rstrip("/").rsplit("/", 2)
    if storage.is_remote(model.uri) and len(parts) == 3 and parts[1] == "model":
      node_dir = parts[0]
      if storage.exists(candidate := storage.join(node_dir, "checkpoints")):
        roots.add(candidate)
  return sorted(roots)


def _in_scope(uri: str, where: Home) -> bool:
  """A checkpoint doctor checks for `where`: under the home, or in a bucket."""
  return storage.is_remote(uri) or _under(uri, where.home)


def _checkpoint_exists(uri: str) -> bool:
  if storage.is_remote(uri):
    return storage.committed(uri) is not None
  return os.path.isdir(uri)


def _check_checkpoints(store, where: Home, verify_checksums: bool) -> list[Finding]:
  findings = []
  records = [r for r in ckpt_records.list_checkpoints(store) if _in_scope(r.uri, where)]
  by_uri: dict[str, list[ckpt_records.CheckpointRecord]] = {}
  for record in records:
    key = record.uri if storage.is_remote(record.uri) else os.path.realpath(record.uri)
    by_uri.setdefault(key, []).append(record)
  local_roots = [] if storage.is_remote(where.pipeline_root) else where.checkpoint_roots()
  finals, staging = _checkpoint_dirs(local_roots + remote_checkpoint_roots(store, where))
  for path in staging:
    findings.append(Finding(
        "checkpoint-staging", path, "unfinished checkpoint write (its writer died)",
        "deleted"))
  for path in finals:
    owners = by_uri.get(path if storage.is_remote(path) else os.path.realpath(path), [])
    if not owners and storage.is_remote(path) and not _stale(path):
      continue  # committed, maybe registering right now in another pod
    if not owners:
      findings.append(Finding(
          "checkpoint-orphan", path, "checkpoint directory has no Checkpoint "
          "artifact (its writer died before registering it)", "deleted"))
    elif all(r.state == "DELETED" for r in owners):
      findings.append(Finding(
          "checkpoint-pruned", path, f"files of pruned checkpoint {owners[-1].id} "
          "are still on disk", "deleted", artifact_id=owners[-1].id))
  for record in records:
    if not record.live:
      continue
    if not _checkpoint_exists(record.uri):
      findings.append(Finding(
          "checkpoint-missing", f"checkpoint {record.id}",
          f"LIVE, but its directory {record.uri!r} is gone",
          "marked DELETED", artifact_id=record.id))
    elif verify_checksums:
      _, actual = checkpoint_digest(record.uri)
      if actual != record.checksum:
        findings.append(Finding(
            "checkpoint-corrupt", f"checkpoint {record.id}",
            f"files in {record.uri!r} do not match the recorded sha256 "
            f"(recorded {record.checksum[:12]}, found {actual[:12]})",
            "marked ABANDONED", artifact_id=record.id))
  return findings


def _model_root(checkpoint_root: str) -> str:
  """`<node>/model` beside the Trainer node's `<node>/checkpoints`."""
  return storage.join(checkpoint_root.rstrip("/").rsplit("/", 1)[0], "model")


def _remote_trainer_exports(store, where: Home) -> list[Finding]:
  """Unfinished Trainer exports in a bucket: a `<node>/model/<id>/Format-Serving`
  prefix beside a bucket checkpoint root with no commit marker, older than
  the grace period (its process died between writing and committing; TFX
  never published its Model)."""
  findings = []
  for checkpoint_root in remote_checkpoint_roots(store, where):
    model_root = _model_root(checkpoint_root)
    if not storage.exists(model_root):
      continue
    for name in storage.list_names(model_root):
      export_dir = storage.join(model_root, name, SERVING_DIR_NAME)
      if (storage.exists(export_dir) and storage.committed(export_dir) is None
          and _stale(export_dir)):
        findings.append(Finding("export-staging", export_dir,
                                "unfinished Trainer export (no commit marker: its "
                                "process died)", "deleted"))
  return findings


def _check_exports(store, where: Home) -> list[Finding]:
  root = where.export_root
  exports = []
  if storage.is_remote(root):
    return []  # `ckptflow export` writes to local roots only
  with contextlib.suppress(FileNotFoundError):
    for checkpoint_dir in sorted(os.scandir(root), key=lambda e: e.name):
      if not checkpoint_dir.is_dir():
        continue
      for entry in sorted(os.scandir(checkpoint_dir.path), key=lambda e: e.name):
        if entry.is_dir() and entry.name.startswith(EXPORT_PREFIX):
          exports.append(entry.path)
  if not exports:
    return []
  models = store.get_artifacts_by_type("Model")
  recorded = {os.path.realpath(m.uri) for m in models if m.uri}
  findings = []
  for path in exports:
    if path.endswith(CHECKPOINT_STAGING_SUFFIX):
      findings.append(Finding("export-staging", path,
                              "unfinished export (its process died)", "deleted"))
    elif os.path.realpath(path) not in recorded:
      findings.append(Finding(
          "export-orphan", path, "exported SavedModel has no Model artifact (its "
          "process died before recording it)", "deleted"))
  return findings


def _model_names(serving_root: str) -> list[str]:
  if storage.is_remote(serving_root):
    return [names.ModelName(n) for n in storage.list_names(serving_root)
            if not n.startswith(".") and names.model_name_problem(n) is None
            and n != serving.MODELS_CONFIG]
  try:
    entries = sorted(os.scandir(serving_root), key=lambda e: e.name)
  except FileNotFoundError:
    return []
  found = []
  for entry in entries:
    if not entry.is_dir() or entry.name.startswith("."):
      continue
    if names.model_name_problem(entry.name) is None:
      found.append(names.ModelName(entry.name))
  return found


def _pushed_states(store, artifact_ids: Sequence[int]) -> dict[int, int]:
  if not artifact_ids:
    return {}
  artifacts = store.get_artifacts_by_id(list(artifact_ids))
  return {a.id: a.state for a in artifacts}


def _check_serving(store, where: Home) -> list[Finding]:
  findings = []
  root = where.serving_root
  records = [r for r in promotion.all_served_versions(store)
             if _under(r.path, root)]
  states = _pushed_states(store, [r.artifact_id for r in records])
  recorded = {(r.model_name, r.version) for r in records}
  for record in records:
    if states.get(record.artifact_id) == metadata_store_pb2.Artifact.DELETED:
      continue
    if not _version_exists(record.path):
      findings.append(Finding(
          "version-missing", record.path,
          f"version {record.version} of {record.model_name!r} is recorded "
          f"(PushedModel {record.artifact_id}) but its directory is gone",
          "record marked DELETED", artifact_id=record.artifact_id))
  for model_name in _model_names(root):
    for version in serving.list_versions(root, model_name):
      if (model_name, version) not in recorded:
        findings.append(Finding(
            "version-unrecorded", serving.version_path(root, model_name, version),
            f"version {version} of {model_name!r} has no PushedModel record "
            "(its push died before recording it)",
            "unlisted from models.config and deleted"))
    for path in serving.stale_staging_dirs(root, model_name):
      if storage.is_remote(path):
        if _stale(path):
          findings.append(Finding("push-staging", path, "version without a commit "
                                  "marker: a push that died mid-copy", "deleted"))
        continue
      findings.append(Finding("push-staging", path,
                              "staging directory of a push that died", "deleted"))
  findings.extend(_check_models_config(store, root))
  return findings


def _check_models_config(store, root: str) -> list[Finding]:
  findings = []
  config_path = serving.models_config_path(root)
  with contextlib.suppress(FileNotFoundError, NotADirectoryError):
    for entry in ([] if storage.is_remote(root) else sorted(os.scandir(root),
                                                             key=lambda e: e.name)):
      if entry.name.startswith(serving.MODELS_CONFIG_TMP_PREFIX):
        findings.append(Finding(
            "models-config", entry.path,
            "temp file of a models.config writer that died", "deleted"))
  expected = promotion.serving_states(store, root)
  try:
    actual = serving.read_models_config(root)
  except ServingError as e:
    findings.append(Finding("models-config", config_path, str(e),
                            "rewritten from MLMD"))
    return findings
  if actual != expected:
    findings.append(Finding(
        "models-config", config_path,
        f"says {_describe_states(actual)}; MLMD says {_describe_states(expected)}",
        "rewritten from MLMD"))
  return findings


def _describe_states(states) -> str:
  if not states:
    return "nothing is served"
  return "; ".join(
      f"{name} versions {list(s.versions)} labels {dict(s.labels)}"
      for name, s in sorted(states.items()))


def check(store: Store, where: Home, *,
          verify_checksums: bool = True) -> list[Finding]:
  """Every disagreement between `store` and the files of `where`.

  Read-only. `verify_checksums` re-hashes every LIVE checkpoint under the
  home (reads all their bytes); without it a checkpoint is only checked to
  exist.
  """
  return (_check_checkpoints(store, where, verify_checksums)
          + _check_exports(store, where) + _remote_trainer_exports(store, where)
          + _check_serving(store, where))


# --- repairs -----------------------------------------------------------------


def _version_exists(path: str) -> bool:
  if storage.is_remote(path):
    return storage.committed(path) is not None
  return os.path.isdir(path)


def _delete_roots(store, where: Home) -> tuple[str, ...]:
  """Where repairs may delete: the home's roots, the bucket checkpoint
  roots the store names (`remote_checkpoint_roots`) and, beside each, its
  Trainer's `model` prefix (`_remote_trainer_exports`)."""
  checkpoint_roots = remote_checkpoint_roots(store, where)
  return tuple(where.roots) + tuple(checkpoint_roots) + tuple(
      _model_root(root) for root in checkpoint_roots)


def _remove_tree(path: str, roots: Sequence[str]) -> None:
  # On a bucket `remove_tree` deletes the commit marker first.
  try:
    storage.remove_tree(path, roots)
  except storage.OutsideRootsError:
    raise
  except OSError as e:
    raise CkptflowError(f"cannot delete {path!r}: {e.strerror or e}") from e


def _unpublish_version(path: str, roots: Sequence[str]) -> None:
  storage.check_within_roots(path, roots, action="unpublish")
  if storage.is_remote(path):
    _remove_tree(path, roots)  # its marker first: unlisted in one step
    return
  # Rename to a non-numeric name first: TF Serving (and our version
  # listing) stop seeing the version in one step, whatever happens next.
  hidden = os.path.join(os.path.dirname(path),
                        f"{_UNPUBLISH_PREFIX}{os.path.basename(path)}-{os.getpid()}")
  storage.publish_dir(path, hidden)
  _remove_tree(hidden, roots)


def _mark_deleted(store, artifact_id: int, reason: str) -> None:
  [artifact] = store.get_artifacts_by_id([artifact_id])
  artifact.state = metadata_store_pb2.Artifact.DELETED
  artifact.custom_properties["state_reason"].string_value = reason
  store.put_artifacts([artifact])


def _apply(store, where: Home, finding: Finding) -> None:
  roots = _delete_roots(store, where)
  kind = finding.kind
  if kind in ("checkpoint-staging", "checkpoint-orphan", "checkpoint-pruned",
              "export-staging", "export-orphan", "push-staging"):
    _remove_tree(finding.subject, roots)
  elif kind == "checkpoint-missing":
    ckpt_records.set_states(store, [finding.artifact_id],
                            metadata_store_pb2.Artifact.DELETED,
                            reason="doctor: checkpoint directory missing")
  elif kind == "checkpoint-corrupt":
    ckpt_records.set_states(store, [finding.artifact_id],
                            metadata_store_pb2.Artifact.ABANDONED,
                            reason="doctor: files do not match the recorded sha256")
  elif kind == "version-missing":
    _mark_deleted(store, finding.artifact_id, "doctor: version directory missing")
  elif kind == "models-config":
    if os.path.basename(finding.subject).startswith(serving.MODELS_CONFIG_TMP_PREFIX):
      storage.remove_file(finding.subject, roots)
    else:
      promotion.sync_models_config(store, where.serving_root)
  elif kind == "version-unrecorded":
    _unpublish_version(finding.subject, roots)
  else:
    raise AssertionError(f"unknown finding kind {kind!r}")


# Repairs run in this order: MLMD state first, then models.config from MLMD
# (which never lists an unrecorded version), and only then the deletion of
# unrecorded version directories, so that models.config never names a
# version directory that is gone.
_REPAIR_ORDER = ("checkpoint-missing", "checkpoint-corrupt", "version-missing",
                 "checkpoint-staging", "checkpoint-orphan", "checkpoint-pruned",
                 "export-staging", "export-orphan", "push-staging", "models-config",
                 "version-unrecorded")


def repair(store: Store, where: Home,
           findings: Sequence[Finding]) -> list[Finding]:
  """Resolves `findings` (see the module docstring); marks each repaired.

  The caller must hold the home's exclusive lock (`exclusive_lock_if_idle`).
  A repair that would delete or rename outside `where.roots` is refused
  (logged, and the finding's `refused` says why); the others go on.

  Raises:
    CkptflowError: a file cannot be deleted or MLMD cannot be written; the
      findings already repaired stay marked.
  """
  for kind in _REPAIR_ORDER:
    for finding in findings:
      if finding.kind != kind:
        continue
      try:
        _apply(store, where, finding)
      except storage.OutsideRootsError as e:
        finding.refused = str(e)
        continue
      finding.repaired = True
      _log.info("repaired %s %s: %s", finding.kind, finding.subject, finding.repair)
  return list(findings)


def diagnose(target: str, where: Home, *, fix: bool = False,
             verify_checksums: bool = True) -> tuple[list[Finding], bool]:
  """Checks (and with `fix`, repairs) the home `where` against the store at
  `target`. Returns (findings, whether another command holds the home).

  Raises:
    MetadataError: the store does not exist or cannot be opened.
    HomeMismatchError: the store is not this home's (a copy or a move of a
      home; `operations.relocate`); nothing is written.
    CkptflowError: `fix` is set and another ckptflow command is writing in
      the home.
  """
  store = metadata.open_store(target, create=False)
  identity.check(store, target, where)
  if not fix:
    with exclusive_lock_if_idle(where, create=False) as idle:
      return check(store, where, verify_checksums=verify_checksums), not idle
  if not os.path.isdir(where.home):
    raise CkptflowError(f"home {where.home!r} does not exist")
  with exclusive_lock_if_idle(where) as idle:
    if not idle:
      raise CkptflowError(
          f"another ckptflow command is writing in {where.home!r}; --repair needs "
          "the home to itself. Run it again when that command has finished")
    identity.check(store, target, where, adopt=True)
    findings = check(store, where, verify_checksums=verify_checksums)
    return repair(store, where, findings), False


def recover(target: str, where: Home) -> list[Finding]:
  """The recovery a writing command makes before it starts: repairs what
  killed commands left (every finding but checksum mismatches, which would
  cost a read of every checkpoint), if no other command is writing in the
  home; otherwise does nothing. Returns what it repaired.

  Raises:
    HomeMismatchError: the store is not this home's; nothing is written.
  """
  path = metadata.sqlite_path(target)
  if not os.path.isdir(where.home) or (path is not None and not os.path.isfile(path)):
    return []  # nothing was ever written here
  with exclusive_lock_if_idle(where) as idle:
    if not idle:
      _log.info("another ckptflow command is writing in %s; skipping recovery",
                where.home)
      return []
    store = metadata.open_store(target, create=False)
    identity.check(store, target, where, adopt=True)
    findings = repair(store, where, check(store, where, verify_checksums=False))
  for finding in findings:
    if finding.repaired:
      _log.warning("recovered from an earlier crash: %s %s (%s)", finding.kind,
                   finding.subject, finding.repair)
  return [f for f in findings if f.repaired]
