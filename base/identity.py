"""Which home a metadata store belongs to, and whether this is that home.

A home is registered in its store as a `ckptflow.Home` context named by
the home's id, with the home's absolute path, its pipeline root and the
serving roots commands have written to; the same id is in the home's
identity file (`base.home.read_identity`). A store may hold several homes
(a MySQL database shared by homes), each with its own context.

`check(store, target, where)` is what every command that writes in a home
calls before it writes (`run`, `doctor`, `promote`, `export`, `rollback`);
it stops with one line (`HomeMismatchError`, exit 2) when:

* the home's store registers it under another path: the home was copied
  or moved (its files and its store came along, and the store's records
  still name the old place). `ckptflow doctor --relocate` makes it a home
  of its own;
* the home's id is not in the store given: the home was made with another
  store (`--metadata`);
* the home has no identity yet (made by a ckptflow that wrote none), has
  a pipeline root, and the store has records, none of them inside the
  home and some outside every registered home: a copy or a move of an old
  home (a store shared by old homes has records inside each of them, and a
  new home has no pipeline root yet).

With `adopt` (what a writing command calls once it has checked its input
and holds the home), a home without an identity that passes is registered
and given its identity file; a serving root not registered yet is added.
Without `adopt` nothing is written.

Imports neither TensorFlow nor TFX.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import uuid
from typing import Iterable, Sequence

from ml_metadata.proto import metadata_store_pb2

from ckptflow.base import metadata, mlmd, storage
from ckptflow.base.errors import CkptflowError
from ckptflow.base.home import Home, HomeIdentity, read_identity, write_identity
from ckptflow.base.metadata import Store

CONTEXT_TYPE = "ckptflow.Home"
_PROPERTIES = {"home": metadata_store_pb2.STRING,
               "pipeline_root": metadata_store_pb2.STRING,
               "serving_roots": metadata_store_pb2.STRING}  # a JSON list


class HomeMismatchError(CkptflowError):
  """The home and its metadata store do not belong together (a copy, a
  move, or another store); nothing was written."""


@dataclasses.dataclass(frozen=True)
class Registration:
  """A home as its store records it (a `ckptflow.Home` context)."""

  context_id: int
  id: str
  home: str
  pipeline_root: str
  serving_roots: tuple[str, ...]

  @property
  def roots(self) -> tuple[str, ...]:
    return (self.home, self.pipeline_root, *self.serving_roots)


def registrations(store: Store) -> list[Registration]:
  """Every home registered in `store`, oldest first."""
  found = []
  for context in store.get_contexts_by_type(CONTEXT_TYPE):
    props = mlmd.properties(context)
    try:
      serving_roots = tuple(json.loads(str(props.get("serving_roots") or "[]")))
    except ValueError:
      serving_roots = ()
    found.append(Registration(context_id=context.id, id=context.name,
                              home=str(props.get("home") or ""),
                              pipeline_root=str(props.get("pipeline_root") or ""),
                              serving_roots=serving_roots))
  return sorted(found, key=lambda r: r.context_id)


def put_registration(store: Store, registration: Registration | None, *, home_id: str,
                     where: Home, serving_roots: Sequence[str]) -> None:
  """Creates (registration None) or rewrites the `ckptflow.Home` context of
  home `home_id` so that it names `where` and `serving_roots`."""
  type_id = mlmd.ensure_context_type(store, CONTEXT_TYPE, _PROPERTIES)
  context = metadata_store_pb2.Context(type_id=type_id, name=home_id)
  if registration is not None:
    context.id = registration.context_id
  mlmd.set_properties(context.properties, {
      "home": where.home, "pipeline_root": where.pipeline_root,
      "serving_roots": json.dumps(sorted(set(serving_roots)))})
  store.put_contexts([context])


def recordable_target(target: str, where: Home) -> str | None:
  """What the identity file records for `target`: None for the home's own
  metadata.sqlite (it moves with the home), else the target without its
  password."""
  path = metadata.sqlite_path(target)
  if path is not None and os.path.abspath(path) == where.metadata_sqlite:
    return None
  if path is not None:
    return os.path.abspath(path)
  return metadata.without_password(target)


def private_store(target: str, where: Home) -> bool:
  """Whether `target` is the home's own metadata.sqlite (copied with it)."""
  return recordable_target(target, where) is None


def _local_uris(store: Store) -> Iterable[str]:
  for artifact in store.get_artifacts():
    if artifact.uri and "://" not in artifact.uri and os.path.isabs(artifact.uri):
      yield artifact.uri


_ORIGIN = re.compile(r"^(/.*?)/pipeline_root(?:/|$)")


def origin_of(uris: Iterable[str]) -> str | None:
  """The home the records were made in, read from the uris of the
  pipeline's artifacts (`<home>/pipeline_root/...`), if exactly one."""
  homes = {m.group(1) for uri in uris if (m := _ORIGIN.match(uri))}
  return homes.pop() if len(homes) == 1 else None


def _same_place(recorded: str, home: str) -> bool:
  """Whether the recorded home is `home` (one directory reached through a
  symlink counts as the same, while the recorded one still exists)."""
  return (os.path.abspath(recorded) == home
          or (os.path.exists(recorded) and os.path.realpath(recorded) == os.path.realpath(home)))


def _moved_message(where: Home, old_home: str, target: str, why: str) -> str:
  how = "copied" if os.path.isdir(old_home) else "moved"
  return (f"home {where.home!r} was {how} from {old_home!r}: {why}. Nothing was "
          f"changed. Run `ckptflow doctor --relocate --home {where.home}` to make it "
          f"a home of its own (nothing under {old_home!r} is touched), or use "
          f"--home {old_home}")


def check(store: Store, target: str, where: Home, *, adopt: bool = False
          ) -> Registration | None:
  """Checks that `store` (at `target`) is the store of the home `where`
  (see the module docstring); with `adopt`, registers a home that has no
  identity yet. Returns its registration (None: not registered, and not
  `adopt`).

  Raises:
    HomeMismatchError: the home was copied or moved, or `store` is not its
      store; nothing was written.
  """
  identity = read_identity(where)
  known = registrations(store)
  if identity is not None:
    matches = [r for r in known if r.id == identity.id]
    if not matches:
      expected = identity.metadata or where.metadata_sqlite
      raise HomeMismatchError(
          f"home {where.home!r} is registered in the metadata store "
          f"{metadata.describe(expected)!r}, not in {metadata.describe(target)!r}. "
          f"Expected its own store: pass --metadata {metadata.describe(expected)} "
          "(or no --metadata)")
    [registration] = matches[:1]
    if not _same_place(registration.home, where.home):
      raise HomeMismatchError(_moved_message(
          where, registration.home, target,
          f"its metadata store records the files of {registration.home!r}"))
    if adopt and where.serving_root not in registration.serving_roots:
      put_registration(store, registration, home_id=registration.id, where=where,
                       serving_roots=[*registration.serving_roots, where.serving_root])
    return registration

  own = [r for r in known if _same_place(r.home, where.home)]
  if own:  # registered, but the identity file is gone: write it again
    if adopt:
      write_identity(where, HomeIdentity(own[0].id, recordable_target(target, where)))
    return own[0]
  if private_store(target, where) and known:
    raise HomeMismatchError(_moved_message(
        where, known[0].home, target,
        f"its metadata.sqlite is the store of {known[0].home!r}"))
  mine_roots = [*where.roots, where.pipeline_root]
  roots = list(mine_roots)
  for registration in known:
    roots.extend(registration.roots)
  uris = list(_local_uris(store))
  outside = [u for u in uris if not storage.within_roots(u, roots)]
  # Records both inside and outside: a store shared with homes that are
  # not registered yet. Only outside, and files here: this home is a copy
  # or a move (a new home, with no pipeline root yet, is neither).
  if (outside and os.path.isdir(where.pipeline_root)
      and not any(storage.within_roots(u, mine_roots) for u in uris)):
    origin = origin_of(outside)
    if origin is not None and origin != where.home:
      raise HomeMismatchError(_moved_message(
          where, origin, target, f"its metadata store records files under "
          f"{origin!r} (e.g. {outside[0]!r})"))
    raise HomeMismatchError(
        f"home {where.home!r} has no identity yet and its metadata store "
        f"{metadata.describe(target)!r} records files outside it (e.g. {outside[0]!r}), "
        "so it cannot be adopted. Nothing was changed. Use the --home (and "
        "--serving-dir) the store was made with, or run `ckptflow doctor "
        f"--relocate --home {where.home}`")
  if not adopt:
    return None
  home_id = uuid.uuid4().hex
  put_registration(store, None, home_id=home_id, where=where,
                   serving_roots=[where.serving_root])
  write_identity(where, HomeIdentity(home_id, recordable_target(target, where)))
  return next(r for r in registrations(store) if r.id == home_id)


def remember_serving_dir(where: Home) -> None:
  """Records `where.serving_dir` (None: HOME/serving) in the home's
  identity file as the serving root that commands given no --serving-dir
  use (`run` calls it once the home is checked and adopted). A directory
  inside the home is recorded relative to it, so that a copy of the home
  uses its own."""
  recorded = read_identity(where)
  value = where.serving_dir
  if value and not storage.is_remote(value) and storage.within_roots(value, [where.home]):
    value = os.path.relpath(value, where.home)
  if recorded is not None and recorded.serving_dir != value:
    write_identity(where, dataclasses.replace(recorded, serving_dir=value))


def serving_dir_of(home: str) -> str | None:
  """The serving root the home's runs push to when it is not HOME/serving
  (its identity file; a relative one is inside the home), or None."""
  recorded = read_identity(home)
  value = recorded.serving_dir if recorded is not None else None
  if value and not storage.is_remote(value) and not os.path.isabs(value):
    return os.path.join(os.path.abspath(home), value)
  return value


__all__ = ["CONTEXT_TYPE", "HomeMismatchError", "Registration", "check", "origin_of",
           "private_store", "put_registration", "recordable_target", "registrations",
           "remember_serving_dir", "serving_dir_of"]
