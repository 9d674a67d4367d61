"""Atomic, versioned pushes to a TF Serving base path, and its models.config.

Layout of a serving root (what TF Serving reads)::

  SERVING_ROOT/models.config            text-proto ModelServerConfig
  SERVING_ROOT/<model_name>/<version>/  one complete SavedModel per version
  SERVING_ROOT/<model_name>/.lock       flock taken by every push
  SERVING_ROOT/<model_name>/.last_version   highest version ever published

Guarantees:

* A version directory appears only by one rename of a fully written and
  fsynced, non-numeric staging directory (`.staging-<version>-<pid>`). TF
  Serving ignores non-numeric names, so it never sees a partial version, even
  if the pushing process is killed at any instruction.
* Versions are never reused and never overwritten: pushes to one model are
  serialised by an exclusive `flock` on `<model_name>/.lock` (between
  processes and between threads, each push opens its own lock file
  description), and the next version is above every numeric entry present,
  the `.last_version` high-water mark and any versions the caller reserves
  (e.g. those recorded in ML Metadata), so deleting a version directory does
  not free its number.
* `models.config` is replaced atomically (temp file, fsync, rename over the
  old file: `storage.atomic_write`) under a lock on
  `SERVING_ROOT/.models.config.lock`; readers see the old or the new file,
  never a mix.

Files are made durable, published and locked with `base/storage.py`.

This module imports neither TensorFlow nor TFX.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import stat
import threading
from typing import Iterable, Iterator, Mapping

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from ckptflow.base import storage
from ckptflow.base.errors import ServingError
from ckptflow.base.faults import fault_point
# One rule for model names (base/names.py); re-exported here for callers
# that check a name where they push or list.
from ckptflow.base.names import validate_model_name

SAVED_MODEL_PB = "saved_model.pb"
MODELS_CONFIG = "models.config"
LOCK_FILE = ".lock"
LAST_VERSION_FILE = ".last_version"
STAGING_PREFIX = ".staging-"
_MODELS_CONFIG_LOCK = ".models.config.lock"
# Temp files of models.config writers: `.models.config.tmp-<pid>-<token>`.
MODELS_CONFIG_TMP_PREFIX = storage.temp_prefix(MODELS_CONFIG)

_LABEL_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def validate_label(label: str) -> str:
  """Returns `label` if it is a valid TF Serving version label.

  Raises:
    ServingError: `label` is not a letter followed by letters, digits, '_'
      or '-'.
  """
  if not isinstance(label, str) or not _LABEL_RE.fullmatch(label):
    raise ServingError(f"version label {label!r} is not valid. Expected a "
                       "letter followed by letters, digits, '_' or '-' "
                       "(e.g. stable, canary)")
  return label


@dataclasses.dataclass(frozen=True)
class ServedVersion:
  """One published version: `path` is SERVING_ROOT/<model_name>/<version>."""

  model_name: str
  version: int
  path: str


@dataclasses.dataclass(frozen=True)
class ModelServingState:
  """What TF Serving should do with one model: the versions it loads, and
  labels (e.g. {"stable": 3, "canary": 5}) that each name a loaded version.

  Raises (on construction):
    ServingError: a version is not a non-negative int, a label is not valid,
      or a label names a version that is not loaded.
  """

  versions: tuple[int, ...]
  labels: Mapping[str, int] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    versions = tuple(sorted(set(_as_version(v) for v in self.versions)))
    labels = {validate_label(k): _as_version(v) for k, v in dict(self.labels).items()}
    unloaded = {k: v for k, v in labels.items() if v not in versions}
    if unloaded:
      raise ServingError(
          f"labels {unloaded} name versions that are not loaded. Received "
          f"versions {list(versions)}; expected every labelled version among them")
    object.__setattr__(self, "versions", versions)
    object.__setattr__(self, "labels", dict(sorted(labels.items())))


def _as_version(value) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ServingError(f"version {value!r} is not valid. Expected an int >= 0")
  return value


def _root(serving_root: str) -> str:
  """The serving root: a bucket URI as given, a path made absolute."""
  if storage.is_remote(serving_root):
    return storage.check_uri(serving_root, "serving root")
  return os.path.abspath(serving_root)


def model_dir(serving_root: str, model_name: str) -> str:
  """The TF Serving base path of `model_name` (absolute, or a bucket URI)."""
  return storage.join(_root(serving_root), validate_model_name(model_name))


def version_path(serving_root: str, model_name: str, version: int) -> str:
  """SERVING_ROOT/<model_name>/<version> (absolute, or a bucket URI)."""
  return storage.join(model_dir(serving_root, model_name), str(_as_version(version)))


def version_exists(serving_root: str, model_name: str, version: int) -> bool:
  """True if the version is published: its directory exists (on a bucket:
  its commit marker, written after every file)."""
  path = version_path(serving_root, model_name, version)
  if storage.is_remote(path):
    return storage.committed(path) is not None
  return os.path.isdir(path)


def _numeric(name: str) -> int | None:
  # TF Serving parses version directory names as int64.
  if name.isascii() and name.isdigit() and int(name) < 2 ** 63:
    return int(name)
  return None


def list_versions(serving_root: str, model_name: str) -> list[int]:
  """Published versions of `model_name`: its numeric directories, ascending.

  A model that was never pushed has none. Staging directories are never
  listed (they are not numeric).
  """
  base = model_dir(serving_root, model_name)
  if storage.is_remote(base):
    return sorted(v for name in storage.list_names(base) if (v := _numeric(name)) is not None
                  and storage.committed(storage.join(base, name)) is not None)
  try:
    with os.scandir(base) as it:
      entries = list(it)
  except FileNotFoundError:
    return []
  except OSError as e:
    raise ServingError(f"cannot list versions in {base!r}: {e.strerror}") from e
  return sorted(v for e in entries
                if (v := _numeric(e.name)) is not None and e.is_dir())


# Lock files held by this thread, so that nested use (sync_models_config ->
# write_models_config) does not deadlock on its own flock.
_held_locks = threading.local()


@contextlib.contextmanager
def _exclusive_lock(path: str) -> Iterator[None]:
  held = _held_locks.__dict__.setdefault("paths", set())
  if path in held:
    yield
    return
  with storage.file_lock(path):
    held.add(path)
    try:
      yield
    finally:
      held.discard(path)


def _push_lock(serving_root: str, model_name: str):
  return _exclusive_lock(os.path.join(model_dir(serving_root, model_name), LOCK_FILE))


@contextlib.contextmanager
def models_config_lock(serving_root: str) -> Iterator[None]:
  """Holds the exclusive lock that orders writers of models.config.

  Hold it around "read the serving state from MLMD, then write
  models.config" so that a slower writer cannot replace a newer config with
  an older one. Re-entrant within one thread.

  Raises:
    ServingError: the serving root cannot be created or written.
  """
  if storage.is_remote(serving_root):
    # No flock on a bucket: models.config is one PUT of the state derived
    # from MLMD, re-derived until it is stable (promotion.sync_models_config).
    yield
    return
  root = _ensure_serving_root(serving_root)
  with _exclusive_lock(os.path.join(root, _MODELS_CONFIG_LOCK)):
    yield


def _ensure_serving_root(serving_root: str) -> str:
  """Creates the serving root if needed; returns it (absolute).

  Checks before creating anything, so that a root that cannot be written
  leaves nothing behind.
  """
  root = os.path.abspath(serving_root)
  if os.path.isdir(root):
    if not os.access(root, os.W_OK | os.X_OK):
      raise ServingError(f"serving root {serving_root!r} is not writable. "
                         "Expected a directory this user can write")
    return root
  existing = storage.nearest_existing(root)
  if existing == root or not os.path.isdir(existing):
    raise ServingError(
        f"serving root {serving_root!r} cannot be created: {existing!r} is "
        "not a directory. Expected a directory path this user can write")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise ServingError(f"serving root {serving_root!r} cannot be created: "
                       f"{existing!r} is not writable")
  try:
    os.makedirs(root, exist_ok=True)
    storage.fsync_dir(os.path.dirname(root))
  except OSError as e:
    raise ServingError(
        f"serving root {serving_root!r} cannot be created: {e.strerror}") from e
  return root


def _read_last_version(base: str) -> int:
  path = os.path.join(base, LAST_VERSION_FILE)
  try:
    with open(path, encoding="ascii") as f:
      text = f.read().strip()
  except FileNotFoundError:
    return 0
  except (OSError, UnicodeDecodeError) as e:
    raise ServingError(f"cannot read the version high-water mark {path!r}: {e}") from e
  if _numeric(text) is None:
    raise ServingError(
        f"version high-water mark {path!r} holds {text[:40]!r}. Expected a "
        "non-negative integer; write the highest version ever pushed into it")
  return int(text)


def _write_last_version(base: str, version: int) -> None:
  # Replaced atomically: a reader sees the old or the new number, never "".
  storage.atomic_write(os.path.join(base, LAST_VERSION_FILE), f"{version}\n")


def _staging_dirs(base: str) -> list[str]:
  try:
    with os.scandir(base) as entries:
      return sorted(e.path for e in entries if e.name.startswith(STAGING_PREFIX))
  except FileNotFoundError:
    return []


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def stale_staging_dirs(serving_root: str, model_name: str) -> list[str]:
  """Staging directories of `model_name` that no push is writing.

  Left behind by pushes that were killed. If no push holds the model's lock
  (or this thread does), every staging directory is stale; otherwise the
  ones whose process is gone are. Read-only: creates and removes nothing
  (the next push removes them).
  """
  base = model_dir(serving_root, model_name)
  if storage.is_remote(base):
    return unfinished_remote_versions(serving_root, model_name)
  staging = _staging_dirs(base)
  if not staging:
    return []
  lock_path = os.path.join(base, LOCK_FILE)
  if lock_path in _held_locks.__dict__.get("paths", set()):
    return staging
  try:
    with storage.file_lock(lock_path, blocking=False, create=False) as no_push_running:
      pass  # a probe: released at once
  except FileNotFoundError:  # no push ever took the lock
    return staging
  if no_push_running:
    return staging
  stale = []
  for path in staging:
    pid = os.path.basename(path).rsplit("-", 1)[-1]
    if not pid.isdigit() or not _pid_alive(int(pid)):
      stale.append(path)
  return stale


def unfinished_remote_versions(serving_root: str, model_name: str) -> list[str]:
  """Numeric version prefixes of a bucket model without a commit marker:
  pushes that were killed (or are running right now)."""
  base = model_dir(serving_root, model_name)
  return [storage.join(base, name) for name in storage.list_names(base)
          if _numeric(name) is not None
          and storage.committed(storage.join(base, name)) is None]


def _check_saved_model(saved_model_dir: str) -> str:
  if storage.is_remote(saved_model_dir):
    if not storage.exists(storage.join(saved_model_dir, SAVED_MODEL_PB)):
      raise ServingError(f"{saved_model_dir!r} is not a SavedModel: it has no "
                         f"{SAVED_MODEL_PB}. Expected a tf.saved_model export")
    return saved_model_dir
  source = os.path.abspath(saved_model_dir)
  if not os.path.isdir(source):
    raise ServingError(f"SavedModel directory {saved_model_dir!r} does not "
                       "exist. Expected a directory holding saved_model.pb")
  if not os.path.isfile(os.path.join(source, SAVED_MODEL_PB)):
    raise ServingError(f"{saved_model_dir!r} is not a SavedModel: it has no "
                       f"{SAVED_MODEL_PB}. Expected a tf.saved_model export")
  return source


def _varint(data: bytes, pos: int) -> tuple[int, int]:
  value = shift = 0
  while True:
    if pos >= len(data):
      raise ValueError("truncated varint")
    byte = data[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    if not byte & 0x80:
      return value, pos
    shift += 7


def saved_model_signatures(saved_model_dir: str, tag: str = "serve") -> set[str]:
  """Names of the signatures of the MetaGraph tagged `tag` (what TF Serving
  loads) in the SavedModel at `saved_model_dir`, read without TensorFlow.

  saved_model.pb is a `SavedModel` proto: field 2 holds MetaGraphDefs, which
  TensorBoard's copy of the TF protos parses (package `tensorboard`, so it
  never clashes with TensorFlow's own).

  Raises:
    ServingError: the directory is not a SavedModel, or saved_model.pb does
      not parse.
  """
  from tensorboard.compat.proto import meta_graph_pb2
  from google.protobuf.message import DecodeError
  path = os.path.join(_check_saved_model(saved_model_dir), SAVED_MODEL_PB)
  with open(path, "rb") as f:
    data = f.read()
  names: set[str] = set()
  pos = 0
  try:
    while pos < len(data):
      key, pos = _varint(data, pos)
      field, wire_type = key >> 3, key & 7
      if wire_type == 0:
        _, pos = _varint(data, pos)
      elif wire_type == 1:
        pos += 8
      elif wire_type == 5:
        pos += 4
      elif wire_type == 2:
        length, pos = _varint(data, pos)
        chunk, pos = data[pos:pos + length], pos + length
        if field == 2:
          meta_graph = meta_graph_pb2.MetaGraphDef()
          meta_graph.ParseFromString(chunk)
          if tag in meta_graph.meta_info_def.tags:
            names |= set(meta_graph.signature_def)
      else:
        raise ValueError(f"wire type {wire_type}")
      if pos > len(data):
        raise ValueError("truncated field")
  except (ValueError, DecodeError) as e:
    raise ServingError(f"{path!r} is not a SavedModel proto ({e}). Expected a "
                       "tf.saved_model export") from e
  return names


def check_signature(saved_model_dir: str, signature: str = "serving_default") -> None:
  """Raises ServingError unless the SavedModel's `serve` MetaGraph has
  `signature` (TF Serving's default signature, which clients and TFMA use)."""
  # `__saved_model_init_op` and the like are TF's internals, not signatures.
  found = {n for n in saved_model_signatures(saved_model_dir) if not n.startswith("__")}
  if signature not in found:
    raise ServingError(
        f"SavedModel {saved_model_dir!r} has no {signature!r} signature (it has: "
        f"{', '.join(sorted(found)) or 'none'}). Expected a SavedModel exported "
        f"with a {signature!r} signature")


def _copy_file(src: str, dst: str) -> None:
  with open(src, "rb") as fin, open(dst, "xb") as fout:
    shutil.copyfileobj(fin, fout, 1 << 20)
    storage.fsync_file(fout)


def _copy_saved_model(source: str, staging: str) -> None:
  """Copies the SavedModel at `source` into the empty dir `staging`, fsynced.

  saved_model.pb is copied last (as TFX does): a reader that checks for it
  never sees a half-copied model even without the staged rename.
  """
  made_dirs = [staging]
  copied = 0

  def copy(src: str, dst: str) -> None:
    nonlocal copied
    if not stat.S_ISREG(os.stat(src).st_mode):
      raise ServingError(f"{src!r} in the SavedModel is not a regular file. "
                         "Expected files and directories only")
    _copy_file(src, dst)
    copied += 1
    if copied == 1:
      fault_point("push-copy")

  for root, dirnames, filenames in os.walk(source, followlinks=True):
    dirnames.sort()
    relative = os.path.relpath(root, source)
    out_root = staging if relative == "." else os.path.join(staging, relative)
    if relative != ".":
      os.mkdir(out_root)
      made_dirs.append(out_root)
    for name in sorted(filenames):
      if relative == "." and name == SAVED_MODEL_PB:
        continue
      copy(os.path.join(root, name), os.path.join(out_root, name))
  copy(os.path.join(source, SAVED_MODEL_PB), os.path.join(staging, SAVED_MODEL_PB))
  # Children before parents: a directory entry is durable once its
  # directory is fsynced.
  for directory in reversed(made_dirs):
    storage.fsync_dir(directory)


def push_saved_model(saved_model_dir: str, serving_root: str, model_name: str,
                     *, reserved_versions: Iterable[int] = ()) -> ServedVersion:
  """Publishes a copy of a SavedModel as the next version of `model_name`.

  The new version is 1 + the highest of: every numeric entry in the model's
  base path, the `.last_version` high-water mark, and `reserved_versions`
  (versions recorded elsewhere, e.g. in MLMD, that must not be reused).

  Order (each step durable before the next): take the model's flock; remove
  stale staging dirs; copy into `.staging-<version>-<pid>` (saved_model.pb
  last) and fsync every file and directory; rename it to `<version>` and
  fsync the base path (`storage.publish_dir`); raise the high-water mark. A process killed at any point
  leaves no numeric directory that is partial; its staging dir is removed by
  the next push.

  Safe to call concurrently from several processes and threads on one host
  (and on file systems where flock is honoured across hosts).

  Raises:
    ServingError: the model name is not valid, the source is not a SavedModel
      (nothing is written), the serving root cannot be written (nothing is
      written), the high-water mark is corrupt, or the copy fails (the
      staging dir is removed).
  """
  validate_model_name(model_name)
  reserved = [_as_version(v) for v in reserved_versions]
  source = _check_saved_model(saved_model_dir)
  if storage.is_remote(serving_root):
    return _push_to_bucket(source, _root(serving_root), model_name, reserved)
  root = _ensure_serving_root(serving_root)
  base = os.path.join(root, model_name)
  try:
    if not os.path.isdir(base):
      os.makedirs(base, exist_ok=True)
      storage.fsync_dir(root)
  except OSError as e:
    raise ServingError(f"cannot create the model base path {base!r}: {e.strerror}") from e

  with _push_lock(root, model_name):
    # We hold the lock, so no other push is writing any staging dir.
    for path in _staging_dirs(base):
      with contextlib.suppress(OSError):
        storage.remove_tree(path, (root,))
    with os.scandir(base) as entries:
      present = [v for e in entries if (v := _numeric(e.name)) is not None]
    version = 1 + max([0, _read_last_version(base), *present, *reserved])
    final = os.path.join(base, str(version))
    staging = os.path.join(base, f"{STAGING_PREFIX}{version}-{os.getpid()}")
    try:
      os.mkdir(staging)
      _copy_saved_model(source, staging)
      fault_point("push-rename")
      try:
        storage.publish_dir(staging, final)
      except FileExistsError as e:  # only a writer that ignores the lock
        raise ServingError(f"version directory {final!r} appeared during the "
                           "push; refusing to overwrite it") from e
    except storage.NotDurableError as e:  # renamed: the version is visible
      raise ServingError(f"version {version} of {model_name!r} is published, "
                         "but fsyncing its base path failed: "
                         f"{e.strerror or e}") from e
    except BaseException as e:
      with contextlib.suppress(OSError):
        storage.remove_tree(staging, (root,))
      if isinstance(e, OSError):
        raise ServingError(f"pushing {saved_model_dir!r} to {final!r} failed: "
                           f"{e.strerror or e}") from e
      raise
    try:
      _write_last_version(base, version)
    except OSError as e:
      raise ServingError(f"version {version} of {model_name!r} is published, "
                         "but recording it in the high-water mark failed: "
                         f"{e.strerror or e}") from e
  return ServedVersion(model_name=model_name, version=version, path=final)


CLAIMS_DIR = ".claims"  # non-numeric: TF Serving ignores it


def _push_to_bucket(source: str, root: str, model_name: str,
                    reserved: list[int]) -> ServedVersion:
  """`push_saved_model` for a serving root in a bucket, where there is no
  rename and no flock.

  The version number is claimed first with a conditional create of
  `<model>/.claims/<version>` (`storage.create_if_absent`: one winner per
  number, whatever the number of pushers); a loser tries the next number.
  Claims are never removed, so they are also the high-water mark. Then the
  files are copied under `<model>/<version>/`, saved_model.pb last, and the
  commit marker written after them: a version without its marker is never
  listed (`list_versions`) nor put in models.config, and doctor removes it.
  """
  base = storage.join(root, model_name)
  claims = storage.join(base, CLAIMS_DIR)
  taken = [v for name in storage.list_names(claims) if (v := _numeric(name)) is not None]
  present = [v for name in storage.list_names(base) if (v := _numeric(name)) is not None]
  version = 1 + max([0, *taken, *present, *reserved])
  try:
    while not storage.create_if_absent(storage.join(claims, str(version)),
                                       f"{os.getpid()}\n"):
      version += 1
  except OSError as e:
    raise ServingError(f"cannot claim a version of {model_name!r} in {base!r}: {e}") from e
  final = storage.join(base, str(version))
  files = storage.list_files(source)
  ordered = [f for f in files if f != SAVED_MODEL_PB and f != storage.COMMIT_MARKER]
  try:
    for i, rel in enumerate(ordered + [SAVED_MODEL_PB]):
      storage.copy_file(storage.join(source, rel), storage.join(final, rel))
      if i == 0:
        fault_point("push-copy")
    fault_point("push-rename")
    storage.commit(final)
  except Exception as e:
    with contextlib.suppress(Exception):
      storage.remove_tree(final, (root,))
    raise ServingError(f"pushing {source!r} to {final!r} failed: {e}") from e
  return ServedVersion(model_name=model_name, version=version, path=final)


def models_config_path(serving_root: str) -> str:
  return storage.join(_root(serving_root), MODELS_CONFIG)


def build_models_config(serving_root: str, states: Mapping[str, ModelServingState]
                        ) -> model_server_config_pb2.ModelServerConfig:
  """The ModelServerConfig for `states`: one entry per model, sorted by name,
  each loading exactly its listed versions (the `specific` policy)."""
  config = model_server_config_pb2.ModelServerConfig()
  config_list = config.model_config_list
  for name in sorted(states):
    state = states[name]
    if not isinstance(state, ModelServingState):
      raise ServingError(f"state of model {name!r} is {type(state).__name__}. "
                         "Expected a ModelServingState")
    if not state.versions:
      raise ServingError(f"model {name!r} has no version to load. Expected at "
                         "least one version")
    entry = config_list.config.add()
    entry.name = validate_model_name(name)
    entry.base_path = model_dir(serving_root, name)
    entry.model_platform = "tensorflow"
    entry.model_version_policy.specific.versions.extend(state.versions)
    for label, version in state.labels.items():
      entry.version_labels[label] = version
  return config


def write_models_config(serving_root: str,
                        states: Mapping[str, ModelServingState]) -> str:
  """Replaces SERVING_ROOT/models.config with the config for `states`.

  Atomic (`storage.atomic_write`): the text proto is written to a temp file
  beside it (`.models.config.tmp-*`), fsynced, and moved over the old file
  in one rename; a killed writer leaves the old file whole, and its temp
  file, which the next write (or `ckptflow doctor --repair`) removes. Holds
  `models_config_lock`. Returns the file's path.

  Raises:
    ServingError: a state is invalid, or the serving root cannot be written
      (the old file is kept).
  """
  config = build_models_config(serving_root, states)
  text = text_format.MessageToString(config)
  if storage.is_remote(serving_root):
    target = models_config_path(serving_root)
    fault_point("models-config-replace")
    try:
      storage.write_bytes(target, text)  # one PUT: old or new, never partial
    except Exception as e:
      raise ServingError(f"cannot write {target!r}: {e}") from e
    return target
  with models_config_lock(serving_root):
    root = os.path.abspath(serving_root)
    with os.scandir(root) as entries:
      leftovers = [e.path for e in entries
                   if e.name.startswith(MODELS_CONFIG_TMP_PREFIX)]
    for path in leftovers:  # from killed writers; we hold the lock
      storage.remove_file(path, (root,))
    target = os.path.join(root, MODELS_CONFIG)
    try:
      storage.atomic_write(target, text,
                           before_replace=lambda: fault_point("models-config-replace"))
    except OSError as e:
      raise ServingError(f"cannot write {target!r}: {e.strerror or e}") from e
  return target


def read_models_config(serving_root: str) -> dict[str, ModelServingState]:
  """Parses SERVING_ROOT/models.config; {} if there is none.

  Raises:
    ServingError: the file is not a ModelServerConfig text proto, or a model
      does not use the `specific` version policy ckptflow writes.
  """
  path = models_config_path(serving_root)
  try:
    text = storage.read_bytes(path).decode("utf-8")
  except FileNotFoundError:
    return {}
  except (OSError, UnicodeDecodeError) as e:
    raise ServingError(f"cannot read {path!r}: {e}") from e
  config = model_server_config_pb2.ModelServerConfig()
  try:
    text_format.Parse(text, config)
  except text_format.ParseError as e:
    raise ServingError(f"{path!r} is not a ModelServerConfig text proto: "
                       f"{str(e).splitlines()[0]}") from e
  states = {}
  for entry in config.model_config_list.config:
    policy = entry.model_version_policy.WhichOneof("policy_choice")
    if policy != "specific":
      raise ServingError(f"model {entry.name!r} in {path!r} uses version policy "
                         f"{policy or 'default (latest)'!r}. Expected 'specific'")
    states[entry.name] = ModelServingState(
        versions=tuple(entry.model_version_policy.specific.versions),
        labels=dict(entry.version_labels))
  return states


__all__ = [
    "ModelServingState", "ServedVersion", "build_models_config", "check_signature",
    "list_versions",
    "model_dir", "models_config_lock", "models_config_path", "push_saved_model",
    "read_models_config", "saved_model_signatures", "stale_staging_dirs",
    "validate_label",
    "unfinished_remote_versions", "version_exists", "version_path", "write_models_config",
]
