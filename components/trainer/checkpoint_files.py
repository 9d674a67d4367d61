"""A checkpoint on disk: staged, verified, then published by a rename.

Each checkpoint is a directory `step-00000300/` holding one
`tf.train.Checkpoint` written with `write()` under the prefix `ckpt`. It is
written into a sibling staging directory whose name ends in `.staging`,
checked (its index opens and lists variables) and hashed, and only then
fsynced and renamed to its final name (`storage.publish_dir`), as Orbax
commits a temporary directory. A crash
at any point leaves either no final directory or a complete one; staging
leftovers are swept on the next start.
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
  if not any(n.startswith(PREFIX + ".data-") for n in os.listdir(directory)):
    raise CheckpointError(f"checkpoint {directory!r} has no data shard")


def verify_against_record(directory: str, checksum: str) -> None:
  """Raises CheckpointError unless `directory` holds exactly the bytes that
  were registered (same sha256)."""
  if not os.path.isdir(directory):
    raise CheckpointError(f"checkpoint directory {directory!r} is missing")
  _, actual = digest(directory)
  if actual != checksum:
    raise CheckpointError(f"checkpoint {directory!r} does not match its recorded "
                          f"checksum (expected {checksum[:12]}…, found {actual[:12]}…)")


def publish(staged: str, final: str) -> None:
  """Flushes the staged files and renames `staged` to `final` atomically,
  then fsyncs `final`'s parent."""
  storage.fsync_tree(staged)
  if os.path.exists(final):
    # A directory left by an attempt whose registration never happened (the
    # process died between rename and MLMD); it is not in MLMD, replace it.
    storage.remove_tree(final, (os.path.dirname(final),))
  storage.publish_dir(staged, final)


def sweep_staging(root: str) -> list[str]:
  """Removes staging leftovers under `root` (from killed writers)."""
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
