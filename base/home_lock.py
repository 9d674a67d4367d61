"""The home lock: which ckptflow commands may run in one home at once.

Every command that writes to a home (`run`, `promote`, `rollback`, ...)
holds a *shared* `flock` on `HOME/.ckptflow.lock` while it writes, so any
number of them run side by side. Crash recovery (`ckptflow doctor --repair`,
and the recovery pass `ckptflow run` makes before it starts) deletes files
that no MLMD record owns; it needs the *exclusive* lock, so it never mistakes
the half-finished work of a live command for the leftovers of a dead one.

The lock is a kernel `flock`: a killed holder releases it at once. It orders
processes on one host (and on file systems that honour flock across hosts).

Imports neither TensorFlow nor TFX.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Iterator

from ckptflow.base.errors import CkptflowError

LOCK_NAME = ".ckptflow.lock"


def lock_path(home: str) -> str:
  return os.path.join(os.path.abspath(home), LOCK_NAME)


def _open(home: str, *, create: bool) -> int | None:
  path = lock_path(home)
  try:
    if create:
      return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
  except FileNotFoundError:
    return None
  except OSError as e:
    if not create:
      return None
    raise CkptflowError(f"cannot open the home lock {path!r}: {e.strerror}") from e


@contextlib.contextmanager
def shared(home: str) -> Iterator[None]:
  """Holds the home's shared lock: "a ckptflow command is writing here".

  Blocks while a recovery holds the exclusive lock. A home that does not
  exist yet has nothing to protect: nothing is locked (or created).

  Raises:
    CkptflowError: the lock file cannot be created in `home`.
  """
  if not os.path.isdir(home):
    yield
    return
  fd = _open(home, create=True)
  assert fd is not None
  try:
    fcntl.flock(fd, fcntl.LOCK_SH)
    yield
  finally:
    os.close(fd)


@contextlib.contextmanager
def exclusive_if_idle(home: str, *, create: bool = True) -> Iterator[bool]:
  """Tries to take the home's exclusive lock without waiting.

  Yields True while holding it (no other ckptflow command is writing in
  `home`), False if another command holds the lock. With `create=False` a
  home without a lock file counts as idle and nothing is created.
  """
  fd = _open(home, create=create)
  if fd is None:
    yield True
    return
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      yield False
      return
    yield True
  finally:
    os.close(fd)
