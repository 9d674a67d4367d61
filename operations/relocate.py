"""`ckptflow doctor --relocate`: make a copied or moved home a home of its own.

A home's metadata store records absolute paths (artifact uris, served
version paths, the home's own registration, `base.identity`). After
`cp -a HOME COPY` or `mv HOME NEW` those paths still name the old place, and
every command that writes refuses to work in the new one. Relocating
rewrites the records of the store the new home uses from the old roots to
the new ones:

* the old home's path becomes the new home's in every artifact's uri and
  external id, and in every string property of artifacts and executions
  (a served version's path, a push destination, an input directory);
* a serving root that was outside the old home is rewritten to
  `--serving-dir` if one is given (else left as it is);
* the home's `ckptflow.Home` registration names the new paths, and the
  identity file is written; `models.config` in the new serving root is
  rewritten from the store (TF Serving reads base paths from it).

Before anything is written it checks that the files are there: every
LIVE artifact whose old files exist must have them at its new path too
(an incomplete copy is refused, naming a missing path). It refuses a copy
that shares its store with a home that still exists (a MySQL database, or
a SQLite file outside the home): relocating would take that home's records
away; copy the database too and pass --metadata, or move the home. It
writes nothing under the old home, and nothing at all with `dry_run`. It
is idempotent: a second run finds nothing to do, and a run killed midway
is finished by running it again (records already rewritten no longer name
the old paths).

Imports neither TensorFlow nor TFX.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import uuid
from typing import Sequence

from ml_metadata.proto import metadata_store_pb2

from ckptflow.base import identity, metadata
from ckptflow.base.errors import CkptflowError
from ckptflow.base.home import Home, HomeIdentity, exclusive_lock_if_idle, read_identity, \
    write_identity
from ckptflow.base.metadata import Store
from ckptflow.components import promotion

_log = logging.getLogger(__name__)


@dataclasses.dataclass
class Relocation:
  """What relocating `new_home` from `old_home` rewrites (or rewrote)."""

  old_home: str
  new_home: str
  mapping: list[tuple[str, str]]
  artifacts: int = 0
  executions: int = 0
  applied: bool = False
  examples: list[tuple[str, str]] = dataclasses.field(default_factory=list)

  def as_json(self) -> dict:
    return dataclasses.asdict(self)

  def lines(self) -> list[str]:
    if not self.mapping:
      return [f"{self.new_home}: its metadata store already records this home; "
              "nothing to relocate"]
    verb = "rewrote" if self.applied else "would rewrite"
    out = [f"relocating {self.old_home} -> {self.new_home}"]
    out += [f"  {old} -> {new}" for old, new in self.mapping]
    out.append(f"{verb} {self.artifacts} artifact(s) and {self.executions} "
               "execution(s) in the metadata store")
    out += [f"  {old} -> {new}" for old, new in self.examples]
    if not self.applied:
      out.append("dry run: nothing was written; run without --dry-run to relocate")
    else:
      out.append(f"{self.new_home} is now a home of its own; nothing under "
                 f"{self.old_home} was touched")
    return out


def _rewriter(mapping: Sequence[tuple[str, str]]):
  """A function that replaces each old root by its new one wherever it
  appears as a whole path prefix in a string (also inside JSON)."""
  patterns = [(re.compile(r"(?<![\w.\-/])" + re.escape(old.rstrip("/"))
                          + r"(?=$|[/\"'\s,\]}])"), new.rstrip("/"))
              for old, new in sorted(mapping, key=lambda m: -len(m[0]))]

  def rewrite(text: str) -> str:
    for pattern, new in patterns:
      text = pattern.sub(lambda _: new, text)
    return text
  return rewrite


def _rewrite_properties(node, rewrite) -> bool:
  changed = False
  for properties in (node.properties, node.custom_properties):
    for value in properties.values():
      if value.WhichOneof("value") == "string_value":
        new = rewrite(value.string_value)
        if new != value.string_value:
          value.string_value = new
          changed = True
  return changed


def _origin(store: Store, target: str, where: Home
            ) -> tuple[identity.Registration | None, str, tuple[str, ...]]:
  """(registration, old home, old serving roots) of the home `where` was
  copied or moved from."""
  known = identity.registrations(store)
  mine = read_identity(where)
  if mine is not None:
    matches = [r for r in known if r.id == mine.id]
    if matches:
      return matches[0], os.path.abspath(matches[0].home), matches[0].serving_roots
  elif identity.private_store(target, where) and len(known) == 1:
    return known[0], os.path.abspath(known[0].home), known[0].serving_roots
  old = identity.origin_of(a.uri for a in store.get_artifacts()
                           if a.uri and not a.uri.startswith(where.home + os.sep))
  if old is None:
    raise CkptflowError(
        f"cannot relocate {where.home!r}: the metadata store "
        f"{metadata.describe(target)!r} does not say which home it was made in "
        "(no registration, and its artifacts are not under one <home>/pipeline_root)")
  return None, old, (os.path.join(old, "serving"),)


def relocate(target: str, where: Home, *, dry_run: bool = False) -> Relocation:
  """Rewrites the store at `target` from the home `where` was copied or
  moved from to `where` (see the module docstring).

  Raises:
    MetadataError: the store does not exist or cannot be opened.
    HomeMismatchError: the store is not the one this home was made with.
    CkptflowError: the copy is incomplete, the store is shared with a home
      that still exists, or another command is writing in the home;
      nothing is written.
  """
  if not os.path.isdir(where.home):
    raise CkptflowError(f"home {where.home!r} does not exist")
  store = metadata.open_store(target, create=False)
  try:
    identity.check(store, target, where)
    return Relocation(old_home=where.home, new_home=where.home, mapping=[])
  except identity.HomeMismatchError as e:
    mine = read_identity(where)
    if mine is not None and not any(r.id == mine.id for r in identity.registrations(store)):
      raise  # the wrong store: nothing to relocate from
    mismatch = e
  registration, old_home, old_serving = _origin(store, target, where)
  if old_home == where.home:
    raise mismatch
  mine = read_identity(where)
  recorded = identity.recordable_target(target, where)
  if (not identity.private_store(target, where) and os.path.isdir(old_home)
      and (mine is None or mine.metadata == recorded)):
    raise CkptflowError(
        f"cannot relocate {where.home!r}: it shares its metadata store "
        f"{metadata.describe(target)!r} with {old_home!r}, which still exists, and "
        f"relocating would take the records away from it. Copy the database too and "
        "pass --metadata NEW_STORE, or move the home (mv) instead of copying it")

  mapping = [(old_home, where.home)]
  for root in old_serving:
    if not root.startswith(old_home.rstrip("/") + "/") and where.serving_dir:
      mapping.append((root, where.serving_root))
  rewrite = _rewriter(mapping)

  artifacts, missing, examples = [], [], []
  for artifact in store.get_artifacts():
    changed = _rewrite_properties(artifact, rewrite)
    old_uri = artifact.uri
    if old_uri and rewrite(old_uri) != old_uri:
      artifact.uri = rewrite(old_uri)
      changed = True
      if len(examples) < 3:
        examples.append((old_uri, artifact.uri))
      if (artifact.state == metadata_store_pb2.Artifact.LIVE
          and os.path.exists(old_uri) and not os.path.exists(artifact.uri)):
        missing.append((old_uri, artifact.uri))
    if artifact.external_id and rewrite(artifact.external_id) != artifact.external_id:
      artifact.external_id = rewrite(artifact.external_id)
      changed = True
    if changed:
      artifacts.append(artifact)
  if missing:
    old_uri, new_uri = missing[0]
    raise CkptflowError(
        f"cannot relocate {where.home!r}: {len(missing)} recorded file(s) exist under "
        f"{old_home!r} but not in this home, e.g. {new_uri!r} (a copy of {old_uri!r}). "
        "Expected a complete copy: copy the whole home (cp -a), then relocate again")
  executions = [e for e in store.get_executions() if _rewrite_properties(e, rewrite)]
  plan = Relocation(old_home=old_home, new_home=where.home, mapping=mapping,
                    artifacts=len(artifacts), executions=len(executions),
                    examples=examples)
  if dry_run:
    return plan

  with exclusive_lock_if_idle(where) as idle:
    if not idle:
      raise CkptflowError(f"another ckptflow command is writing in {where.home!r}; "
                          "--relocate needs the home to itself. Run it again when "
                          "that command has finished")
    # Records first, the registration last: a relocation killed midway is
    # still seen as one, and running it again finishes it.
    if artifacts:
      store.put_artifacts(artifacts)
    if executions:
      store.put_executions(executions)
    serving_roots = [rewrite(r) for r in old_serving] + [where.serving_root]
    home_id = (registration.id if registration is not None
               else mine.id if mine is not None else uuid.uuid4().hex)
    identity.put_registration(store, registration, home_id=home_id, where=where,
                              serving_roots=serving_roots)
    # The serving root the home's runs push to stays (inside the home it is
    # recorded relative to it).
    write_identity(where, HomeIdentity(home_id, recorded, mine.serving_dir if mine else None))
    if os.path.isdir(where.serving_root):
      promotion.sync_models_config(store, where.serving_root)
  plan.applied = True
  _log.info("relocated %s -> %s: %d artifact(s), %d execution(s)", old_home,
            where.home, plan.artifacts, plan.executions)
  return plan


__all__ = ["Relocation", "relocate"]
