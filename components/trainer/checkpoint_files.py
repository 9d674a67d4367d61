"""A checkpoint on disk: staged, verified, then published by a rename.

Each checkpoint is a directory `step-00000300/` holding one
`tf.train.Checkpoint` written with `write()` under the prefix `ckpt`. It is
written into a sibling staging directory whose name ends in `.staging`,
checked (its index opens and lists variables) and hashed, and only then
fsynced and renamed to its final name (`storage.publish_dir`), as Orbax
commits a temporary directory. A crash
at any point leaves either no final directory or a complete one; staging
leftovers are swept on the next start.

On a bucket (s3://, gs://) there is no rename: the checkpoint is written
under its final name, checked and hashed there, and published by its commit
marker (`storage.commit`, written last, holding each file's sha256). A
step directory without its marker is an unfinished write: never registered
or restored, and removed by the next start's sweep (and by doctor).
"""

from __future__ import annotations

import contextlib
import logging
import os

import tensorflow as tf

from ckptflow.components.checkpoint import directory_digest
from ckptflow.base import storage
from ckptflow.base.errors import CheckpointError

PREFIX = "ckpt"
STAGING_SUFFIX = ".staging"

_log = logging.getLogger(__name__)


def final_dir(root: str, step: int) -> str:
  return os.path.join(root, f"step-{step:08d}")


def staging_dir(root: str, step: int) -> str:
  return final_dir(root, step) + STAGING_SUFFIX


def write_dir(root: str, step: int) -> str:
  """Where the checkpoint at `step` is written before it is published: its
  staging directory on disk, its final prefix on a bucket."""
  return final_dir(root, step) if storage.is_remote(root) else staging_dir(root, step)


def prefix(directory: str) -> str:
  return os.path.join(directory, PREFIX)


def digest(directory: str) -> tuple[int, str]:
  """(total size in bytes, sha256 over file names and contents)."""
  return directory_digest(directory)


def verify_readable(directory: str) -> None:
  """Raises CheckpointError unless the checkpoint's index opens and lists
  at least one variable whose data shard is present."""
  try:
    reader = tf.train.load_checkpoint(prefix(directory))
    names = reader.get_variable_to_shape_map()
  except (tf.errors.OpError, ValueError) as e:
    raise CheckpointError(f"checkpoint {directory!r} is unreadable: "
                          f"{str(e).splitlines()[0]}") from e
  if not names:
    raise CheckpointError(f"checkpoint {directory!r} holds no variables")
  if not any(n.startswith(PREFIX + ".data-") for n in storage.list_names(directory)):
    raise CheckpointError(f"checkpoint {directory!r} has no data shard")


def verify_against_record(directory: str, checksum: str) -> None:
  """Raises CheckpointError unless `directory` holds exactly the bytes that
  were registered (same sha256)."""
  if storage.is_remote(directory):
    if storage.committed(directory) is None:
      raise CheckpointError(f"checkpoint {directory!r} is missing or has no commit marker")
  elif not os.path.isdir(directory):
    raise CheckpointError(f"checkpoint directory {directory!r} is missing")
  _, actual = digest(directory)
  if actual != checksum:
    raise CheckpointError(f"checkpoint {directory!r} does not match its recorded "
                          f"checksum (expected {checksum[:12]}…, found {actual[:12]}…)")


def publish(staged: str, final: str) -> None:
  """Flushes the staged files and renames `staged` to `final` atomically,
  then fsyncs `final`'s parent. On a bucket `staged` is `final`
  (`write_dir`): its commit marker is written last."""
  if storage.is_remote(final):
    if staged != final:
      raise ValueError(f"on a bucket a checkpoint is written in place: {staged!r} != {final!r}")
    storage.commit(final)
    return
  storage.fsync_tree(staged)
  if os.path.exists(final):
    # A directory left by an attempt whose registration never happened (the
    # process died between rename and MLMD); it is not in MLMD, replace it.
    storage.remove_tree(final, (os.path.dirname(final),))
  storage.publish_dir(staged, final)


def uncommitted(root: str) -> list[str]:
  """Step prefixes under the bucket root `root` (at any depth) that have
  no commit marker: unfinished writes."""
  found = []
  for rel in storage.list_files(root):
    parts = rel.split("/")
    for depth, part in enumerate(parts[:-1]):
      if part.startswith("step-"):
        prefix = storage.join(root, *parts[:depth + 1])
        if prefix not in found and storage.committed(prefix) is None:
          found.append(prefix)
        break
  return found


def sweep_staging(root: str) -> list[str]:
  """Removes staging leftovers under `root` (from killed writers): staging
  directories on disk, step prefixes without a commit marker on a bucket."""
  if storage.is_remote(root):
    removed = uncommitted(root)
    for prefix in removed:
      storage.remove_tree(prefix, (root,))
    if removed:
      _log.info("removed %d unfinished checkpoint write(s) under %s", len(removed), root)
    return removed
  removed = []
  if not os.path.isdir(root):
    return removed
  for dirpath, dirnames, _ in os.walk(root):
    for name in list(dirnames):
      if name.endswith(STAGING_SUFFIX):
        path = os.path.join(dirpath, name)
        with contextlib.suppress(OSError):
          storage.remove_tree(path, (root,))
        removed.append(path)
        dirnames.remove(name)
  if removed:
    _log.info("removed %d unfinished checkpoint write(s) under %s", len(removed), root)
  return removed
