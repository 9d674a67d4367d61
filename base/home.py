"""The home: where everything a local run makes lives, and its lock.

`Home(home, serving_dir=None)` is the layout of one home directory, worked
out once (every path absolute)::

  HOME/metadata.sqlite          the MLMD store (unless another is named)
  HOME/pipeline_root/           TFX artifacts; checkpoints under
                                <node>/checkpoints/, exports under
                                CheckpointExport/
  HOME/serving/                 the TF Serving root (or `serving_dir`):
    models.config               its model config
  HOME/report/                  `ckptflow report`'s default output
  HOME/data/sample/             the generated sample dataset
  HOME/kubeflow/                `ckptflow compile`'s default output
  HOME/.ckptflow.lock           the home lock
  HOME/.ckptflow-home.json      the home's identity (`HomeIdentity`)

A home knows itself: `HOME/.ckptflow-home.json` (written atomically) holds
the id under which the home is registered in its metadata store (a
`ckptflow.Home` context, `base.identity`) and, unless the store is the
home's own `metadata.sqlite`, which store that is (a MySQL target without
its password: passwords are never written). A copy or a move of a home
carries the file along, and the store's registration still names the old
paths: that is how a copy or a move is recognised (`base.identity`).

The home lock says which ckptflow commands may run in one home at once.
Every command that writes to a home (`run`, `promote`, `rollback`, ...)
holds it *shared* while it writes (`shared_lock`), so any number of them
run side by side. Crash recovery (`ckptflow doctor --repair`, and the
recovery pass `ckptflow run` makes before it starts) deletes files that no
MLMD record owns; it needs the lock *exclusively* (`exclusive_lock_if_idle`),
so it never mistakes the half-finished work of a live command for the
leftovers of a dead one. It is a kernel `flock` (`storage.file_lock`): a
killed holder releases it at once. It orders processes on one host (and on
file systems that honour flock across hosts).

Imports neither TensorFlow nor TFX.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Iterator

from ckptflow.base import storage
from ckptflow.base.errors import CkptflowError

METADATA_SQLITE = "metadata.sqlite"
PIPELINE_ROOT = "pipeline_root"
SERVING_DIR = "serving"
MODELS_CONFIG = "models.config"  # what TF Serving reads, in the serving root
REPORT_DIR = "report"
SAMPLE_DATA_DIR = os.path.join("data", "sample")
KUBEFLOW_DIR = "kubeflow"
LOCK_NAME = ".ckptflow.lock"
IDENTITY_NAME = ".ckptflow-home.json"
# The Trainer's checkpoints: pipeline_root/<node>/checkpoints/step-N.
CHECKPOINTS_DIR = "checkpoints"
# `ckptflow export`'s SavedModels: pipeline_root/CheckpointExport/checkpoint-<id>/.
EXPORT_DIR = "CheckpointExport"


@dataclasses.dataclass(frozen=True)
class Home:
  """The layout of a home directory: `Home(home, serving_dir=None)`.

  `home` is made absolute; `serving_dir` is the serving root asked for
  (None: HOME/serving) and `pipeline_dir` the pipeline root (None:
  HOME/pipeline_root), each a path (made absolute) or a bucket URI
  (s3://, gs://; kept, see `storage.check_uri`), so that
  `dataclasses.replace(where, home=...)` moves a default serving root along.
  Every other path, `serving_root` included, is derived on construction.
  Nothing is read or created on disk, except by `checkpoint_roots()`, which
  lists what exists.

  Raises (on construction):
    CkptflowError: `home` is empty.
  """

  home: str
  serving_dir: str | None = None
  pipeline_dir: str | None = None
  serving_root: str = dataclasses.field(init=False)
  metadata_sqlite: str = dataclasses.field(init=False)
  pipeline_root: str = dataclasses.field(init=False)
  models_config: str = dataclasses.field(init=False)
  report_dir: str = dataclasses.field(init=False)
  sample_data_dir: str = dataclasses.field(init=False)
  kubeflow_dir: str = dataclasses.field(init=False)
  export_root: str = dataclasses.field(init=False)
  lock_file: str = dataclasses.field(init=False)
  identity_file: str = dataclasses.field(init=False)

  def __post_init__(self):
    if not isinstance(self.home, (str, os.PathLike)) or not str(self.home):
      raise CkptflowError(f"home {self.home!r} is not valid. Expected a directory path")
    home = os.path.abspath(self.home)
    # A serving root or pipeline root may be a bucket URI (s3://, gs://):
    # kept as given, joined with '/'; a path is made absolute.
    serving_dir = storage.check_uri(self.serving_dir, "serving directory") \
        if self.serving_dir else None
    serving_root = serving_dir or os.path.join(home, SERVING_DIR)
    pipeline_dir = storage.check_uri(self.pipeline_dir, "pipeline root") \
        if self.pipeline_dir else None
    pipeline_root = pipeline_dir or os.path.join(home, PIPELINE_ROOT)
    paths = {
        "home": home,
        "serving_dir": serving_dir,
        "pipeline_dir": pipeline_dir,
        "serving_root": serving_root,
        "metadata_sqlite": os.path.join(home, METADATA_SQLITE),
        "pipeline_root": pipeline_root,
        "models_config": storage.join(serving_root, MODELS_CONFIG),
        "report_dir": os.path.join(home, REPORT_DIR),
        "sample_data_dir": os.path.join(home, SAMPLE_DATA_DIR),
        "kubeflow_dir": os.path.join(home, KUBEFLOW_DIR),
        "export_root": storage.join(pipeline_root, EXPORT_DIR),
        "lock_file": os.path.join(home, LOCK_NAME),
        "identity_file": os.path.join(home, IDENTITY_NAME),
    }
    for name, value in paths.items():
      object.__setattr__(self, name, value)

  @property
  def roots(self) -> tuple[str, ...]:
    """What a command working in this home may delete below: the home,
    the serving root and the pipeline root (either may lie outside it,
    e.g. in a bucket)."""
    return tuple(dict.fromkeys((self.home, self.serving_root, self.pipeline_root)))

  def checkpoint_roots(self) -> list[str]:
    """`pipeline_root/<node>/checkpoints` of every node that has one, sorted."""
    if storage.is_remote(self.pipeline_root):
      return [path for node in storage.list_names(self.pipeline_root)
              if storage.exists(path := storage.join(self.pipeline_root, node, CHECKPOINTS_DIR))]
    try:
      nodes = sorted(os.scandir(self.pipeline_root), key=lambda e: e.name)
    except FileNotFoundError:
      return []
    return [path for e in nodes
            if e.is_dir() and os.path.isdir(path := os.path.join(e.path, CHECKPOINTS_DIR))]


@dataclasses.dataclass(frozen=True)
class HomeIdentity:
  """What HOME/.ckptflow-home.json says: `id`, the name of the home's
  `ckptflow.Home` context in its store, `metadata`, the store (None: the
  home's own metadata.sqlite; a MySQL target is kept without its
  password), and `serving_dir`, the serving root the home's last `run`
  pushed to when it is not HOME/serving (a bucket URI, an absolute path, or
  a path relative to the home): commands given no --serving-dir use it."""

  id: str
  metadata: str | None = None
  serving_dir: str | None = None


def read_identity(home: str | Home) -> HomeIdentity | None:
  """The home's identity file, or None if it has none (a new home, or one
  made by a ckptflow that wrote none).

  Raises:
    CkptflowError: the file exists but is not an identity file.
  """
  where = _as_home(home)
  try:
    with open(where.identity_file, encoding="utf-8") as f:
      document = json.load(f)
  except (FileNotFoundError, NotADirectoryError):
    return None
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise CkptflowError(f"home identity file {where.identity_file!r} is unreadable "
                        f"({e}). Expected the JSON file ckptflow writes; remove it to "
                        "have the home adopted again") from e
  if (not isinstance(document, dict) or not isinstance(document.get("id"), str)
      or not document["id"] or not isinstance(document.get("metadata"), (str, type(None)))
      or not isinstance(document.get("serving_dir"), (str, type(None)))):
    raise CkptflowError(f"home identity file {where.identity_file!r} is not "
                        "{\"id\": ..., \"metadata\": ..., \"serving_dir\": ...}. Expected "
                        "the JSON file ckptflow writes; remove it to have the home adopted "
                        "again")
  return HomeIdentity(id=document["id"], metadata=document.get("metadata") or None,
                      serving_dir=document.get("serving_dir") or None)


def write_identity(home: str | Home, identity: HomeIdentity) -> str:
  """Writes the home's identity file atomically; returns its path."""
  where = _as_home(home)
  text = json.dumps({"id": identity.id, "metadata": identity.metadata,
                     "serving_dir": identity.serving_dir}, indent=2, sort_keys=True) + "\n"
  try:
    return storage.atomic_write(where.identity_file, text)
  except OSError as e:
    raise CkptflowError(f"cannot write the home identity file "
                        f"{where.identity_file!r}: {e.strerror or e}") from e


def _as_home(home: str | Home) -> Home:
  return home if isinstance(home, Home) else Home(home)


@contextlib.contextmanager
def shared_lock(home: str | Home) -> Iterator[None]:
  """Holds the home's shared lock: "a ckptflow command is writing here".

  Blocks while a recovery holds the exclusive lock. A home that does not
  exist yet has nothing to protect: nothing is locked (or created).

  Raises:
    CkptflowError: the lock file cannot be created in `home`.
  """
  where = _as_home(home)
  if not os.path.isdir(where.home):
    yield
    return
  stack = contextlib.ExitStack()
  try:
    stack.enter_context(storage.file_lock(where.lock_file, shared=True))
  except OSError as e:
    raise CkptflowError(f"cannot open the home lock {where.lock_file!r}: "
                        f"{e.strerror}") from e
  with stack:
    yield


@contextlib.contextmanager
def exclusive_lock_if_idle(home: str | Home, *, create: bool = True) -> Iterator[bool]:
  """Tries to take the home's exclusive lock without waiting.

  Yields True while holding it (no other ckptflow command is writing in
  `home`), False if another command holds the lock. A home that does not
  exist counts as idle (nothing is locked). With `create=False` a home
  without a lock file (or one that cannot be opened) counts as idle and
  nothing is created.

  Raises:
    CkptflowError: `create` is set and the lock file cannot be created.
  """
  where = _as_home(home)
  stack = contextlib.ExitStack()
  try:
    idle = stack.enter_context(storage.file_lock(
        where.lock_file, shared=False, blocking=False, create=create))
  except FileNotFoundError:
    idle = True  # no home, or no lock file: nobody holds it
  except OSError as e:
    if create:
      raise CkptflowError(f"cannot open the home lock {where.lock_file!r}: "
                          f"{e.strerror}") from e
    idle = True
  with stack:
    yield idle


__all__ = ["CHECKPOINTS_DIR", "EXPORT_DIR", "IDENTITY_NAME", "Home", "HomeIdentity",
           "LOCK_NAME", "exclusive_lock_if_idle", "read_identity", "shared_lock",
           "write_identity"]
