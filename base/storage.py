"""Storage primitives: durable writes, atomic publication, file locks.

Every write that must survive a crash, every "write, then publish", and
every inter-process lock in ckptflow goes through this module, so that each
guarantee is written once. It works on local (POSIX) file systems; object
storage plugs in here.

* `fsync_file`, `fsync_dir`, `fsync_tree`: make written bytes, and the
  directory entries that name them, durable.
* `atomic_write` / `atomic_write_all`: replace small files so that a reader
  (or a crash) sees the old content or the new, never a mix. Each file is
  written to a temp file beside it (named by `temp_prefix`), fsynced, moved
  over the old one with `os.replace`, and its directory fsynced.
* `publish_dir`: give a fully written directory its final name in one
  `os.rename`, then fsync the parent. It refuses to replace an existing name.
* `file_lock`: an `flock` on a lock file, shared or exclusive, blocking or
  not. The kernel releases it when the holder's process dies, however it
  dies.
* `nearest_existing`: the nearest existing ancestor of a path, to check a
  path can be created before creating anything; `check_creatable_dir`
  does that check for a directory, `create_dir` then creates it (both fail
  with a one-line `CkptflowError` naming the directory).
* `within_roots`, `check_within_roots`, `remove_tree`, `remove_file`: the
  one guard every delete goes through. A command is given roots (its home,
  pipeline root, serving root); it never deletes, renames or overwrites
  anything outside them, whatever a metadata record says. A refusal is
  logged and raised as `OutsideRootsError`; nothing is deleted.

Imports neither TensorFlow nor TFX.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import shutil
from typing import IO, Callable, Iterable, Iterator, Mapping, Union

from ckptflow.base.errors import CkptflowError

# What `atomic_write` writes: text (UTF-8), bytes, or a function that writes
# the file at the path it is given (e.g. a plotting library's savefig).
Content = Union[str, bytes, Callable[[str], None]]

_log = logging.getLogger(__name__)


class NotDurableError(OSError):
  """`publish_dir` renamed the directory, but fsyncing its parent failed:
  the directory is visible under its final name, but that name may not
  survive a power cut."""


# --- durability --------------------------------------------------------------


def fsync_file(file: str | IO) -> None:
  """Flushes a file's data to stable storage.

  `file` is a path, or an open file object (flushed first), e.g. the file
  just written.
  """
  if isinstance(file, str):
    fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
    return
  file.flush()
  os.fsync(file.fileno())


def fsync_dir(path: str) -> None:
  """Makes the entries of directory `path` durable: a file created, renamed
  or removed in it survives a power cut once this returns."""
  fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def fsync_tree(root: str) -> None:
  """fsyncs every file and directory under `root` (and `root` itself),
  children before their parent: a directory entry is durable once its
  directory is fsynced, after what it names."""
  for dirpath, _, filenames in os.walk(root, topdown=False):
    for name in filenames:
      fsync_file(os.path.join(dirpath, name))
    fsync_dir(dirpath)


# --- atomic writes -----------------------------------------------------------


def temp_prefix(path: str) -> str:
  """The name prefix of `atomic_write`'s temp files for `path`:
  `.<name>.tmp-` (`<name>.tmp-` if the name already starts with '.').

  Temp files live beside `path`; a killed writer leaves one behind, which
  whoever owns `path` may remove by this prefix.
  """
  name = os.path.basename(path)
  return f"{'' if name.startswith('.') else '.'}{name}.tmp-"


def _new_temp(path: str) -> str:
  """Creates an empty temp file beside `path`; returns its path.

  Its name is unique (pid and a random token; O_EXCL), so concurrent
  writers never share one, and its mode is what `open(path, "w")` would
  give (0o666 less the umask).
  """
  directory = os.path.dirname(os.path.abspath(path))
  prefix = os.path.join(directory, temp_prefix(path))
  while True:
    tmp = f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
    try:
      fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except FileExistsError:
      continue
    os.close(fd)
    return tmp


def _stage(path: str, content: Content, mode: int | None) -> str:
  """Writes `content` to a new temp file beside `path` and fsyncs it."""
  tmp = _new_temp(path)
  try:
    if callable(content):
      content(tmp)
      fsync_file(tmp)
    else:
      data = content.encode("utf-8") if isinstance(content, str) else content
      with open(tmp, "wb") as f:
        f.write(data)
        fsync_file(f)
    if mode is not None:
      os.chmod(tmp, mode)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise
  return tmp


def atomic_write_all(files: Mapping[str, Content], *, mode: int | None = None,
                     before_replace: Callable[[], None] | None = None) -> None:
  """Replaces each file in `files` (path -> content) atomically.

  Every file is written to its temp file and fsynced before any is
  replaced, so an error while writing (a full disk, a failing `content`
  function) changes none of them. Then each temp file is moved over its
  target with `os.replace`, and the targets' directories are fsynced.
  Readers see each file old or new, never partial. A process killed before
  the replace leaves the old files whole and its temp files behind (see
  `temp_prefix`); on an error, temp files are removed.

  `mode` sets the new files' permission bits (default: as `open(..., "w")`).
  `before_replace` runs after every temp file is durable and before the
  first replace (tests kill the process there).

  Raises:
    OSError: a file cannot be written or replaced.
  """
  staged: list[tuple[str, str]] = []
  try:
    for path, content in files.items():
      staged.append((_stage(path, content, mode), os.path.abspath(path)))
    if before_replace is not None:
      before_replace()
    for tmp, target in staged:
      os.replace(tmp, target)
    for directory in sorted({os.path.dirname(target) for _, target in staged}):
      fsync_dir(directory)
  finally:
    for tmp, _ in staged:
      with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def atomic_write(path: str, content: Content, *, mode: int | None = None,
                 before_replace: Callable[[], None] | None = None) -> str:
  """Replaces the file at `path` with `content` atomically; returns `path`.

  `content` is text (written as UTF-8), bytes, or a function that writes
  the file at the path it is given. Temp file beside `path`, fsync,
  `os.replace`, fsync of the directory: see `atomic_write_all`.

  Raises:
    OSError: the file cannot be written (the old file is kept).
  """
  atomic_write_all({path: content}, mode=mode, before_replace=before_replace)
  return path


# --- publishing a directory --------------------------------------------------


def publish_dir(staged: str, final: str) -> None:
  """Gives the directory `staged` the name `final` in one rename, then
  fsyncs `final`'s parent so that the new name is durable.

  `staged` must be fully written (and fsynced, if its content must survive
  a power cut: `fsync_tree`) and in the same file system as `final`; a
  reader never sees `final` partial. Also used to withdraw a directory in
  one step, by moving it to a name readers ignore.

  Refuses to replace anything: writers are expected to hold a lock that
  orders them, so an existing `final` means a writer that ignored it.

  Raises:
    FileExistsError: `final` exists (nothing is moved).
    OSError: the rename fails (nothing is moved).
    NotDurableError: the rename happened, but the parent's fsync failed.
  """
  if os.path.lexists(final):
    raise FileExistsError(errno.EEXIST, "refusing to replace an existing directory",
                          final)
  os.rename(staged, final)
  try:
    fsync_dir(os.path.dirname(os.path.abspath(final)))
  except OSError as e:
    raise NotDurableError(e.errno, f"published, but not durable: {e.strerror}",
                          final) from e


# --- locks -------------------------------------------------------------------


@contextlib.contextmanager
def file_lock(path: str, *, shared: bool = False, blocking: bool = True,
              create: bool = True) -> Iterator[bool]:
  """Holds an `flock` on the file at `path` while the block runs.

  `shared=False` takes it exclusively (one holder), `shared=True` shares it
  with other shared holders. Blocking, it waits and yields True.
  Non-blocking, it yields True if it got the lock at once and False if
  another holder has a conflicting lock (the block then runs without it).

  The lock belongs to the open file description this call makes: it orders
  processes, and threads too (each call opens the file anew), but a thread
  that takes it twice waits for itself. It is released when the block
  ends, and by the kernel when the holding process dies. It orders
  processes on one host (and on file systems that honour flock across
  hosts).

  With `create` the lock file is created if missing (mode 0o644);
  otherwise it is opened read-only.

  Raises (before the block runs):
    FileNotFoundError: `create` is False and there is no lock file.
    OSError: the lock file cannot be opened or created.
  """
  if create:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
  else:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
  try:
    operation = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    if not blocking:
      try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
      except BlockingIOError:
        yield False
        return
    else:
      fcntl.flock(fd, operation)
    yield True
  finally:
    os.close(fd)  # releases the flock


# --- paths -------------------------------------------------------------------


def nearest_existing(path: str) -> str:
  """`path` (absolute) if it exists, else its nearest existing ancestor.

  "Exists" as `os.path.lexists`: the answer may be a file or a dangling
  symlink, which is what blocks creating `path`.
  """
  probe = os.path.abspath(path)
  while not os.path.lexists(probe):
    parent = os.path.dirname(probe)
    if parent == probe:
      break
    probe = parent
  return probe


def check_creatable_dir(path: str, what: str) -> str:
  """Checks, creating nothing, that the directory `path` exists or can be
  created, and that this process can write in it; returns it, absolute.

  Raises:
    CkptflowError: `path`, or the nearest ancestor that exists, is not a
      directory, or is not writable for this user; the message names
      `what` ("serving directory", "pipeline root", ...) and both paths.
  """
  path = os.path.abspath(path)
  probe = nearest_existing(path)
  if not os.path.isdir(probe):
    raise CkptflowError(f"cannot create {what} {path!r}: {probe!r} is not a directory: "
                        "it is a file. Expected a directory path")
  if not os.access(probe, os.W_OK | os.X_OK):
    raise CkptflowError(f"{what} {path!r} is not writable ({probe!r} is read-only "
                        "for this user). Expected a directory this user can write")
  return path


def tree_size(path: str) -> int:
  """Bytes in the files under `path` (a file: its size; symlinks not
  followed, counted as 0); 0 if it does not exist."""
  if os.path.islink(path):
    return 0
  if os.path.isfile(path):
    return os.path.getsize(path)
  total = 0
  for folder, _, files in os.walk(path):
    for name in files:
      file = os.path.join(folder, name)
      if not os.path.islink(file):
        total += os.path.getsize(file)
  return total


def link_tree(source: str, target: str) -> None:
  """Makes `target` (which must not exist) a tree of hard links to the
  files under `source` (copies where a hard link is impossible, e.g.
  across file systems). Unlike a symlink, deleting `target` with any
  recursive delete (TFX's tf.io.gfile.rmtree follows a symlink to a
  directory and empties it) leaves `source` intact.
  """
  for folder, dirs, files in os.walk(source):
    relative = os.path.relpath(folder, source)
    out = os.path.normpath(os.path.join(target, relative))
    os.makedirs(out, exist_ok=relative != ".")
    for name in files:
      try:
        os.link(os.path.join(folder, name), os.path.join(out, name))
      except OSError:
        shutil.copy2(os.path.join(folder, name), os.path.join(out, name))


def create_dir(path: str, what: str) -> str:
  """Creates the directory `path` (and its parents) if missing and checks
  this process can write in it; returns it, absolute.

  Raises:
    CkptflowError: it cannot be created, or is not writable; the message
      names `what` and the path.
  """
  path = os.path.abspath(path)
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise CkptflowError(f"cannot create {what} {path!r}: {e.strerror}") from e
  if not os.access(path, os.W_OK | os.X_OK):
    raise CkptflowError(f"{what} {path!r} is not writable")
  return path


# --- roots: the only places a command may delete ------------------------------


class OutsideRootsError(CkptflowError):
  """A delete (or rename, or overwrite) was asked for outside the roots the
  command was given. Nothing was changed."""


def _is_url(uri: str) -> bool:
  return "://" in uri


def _canonical(uri: str) -> str:
  """`uri` with symlinks resolved (a local path) or as written (a URL),
  without a trailing separator."""
  if _is_url(uri):
    return uri.rstrip("/")
  return os.path.realpath(uri)


def within_roots(uri: str, roots: Iterable[str], *, strictly: bool = False) -> bool:
  """Whether `uri` is one of `roots` or lies below one.

  Local paths are compared with symlinks resolved, so a link inside a root
  that points outside it is outside. URLs (a bucket: `s3://b/x`) are
  compared as written, segment by segment. With `strictly`, a root itself
  does not count (a command may empty a root's entries, never remove it).
  """
  if not uri:
    return False
  path = _canonical(uri)
  for root in roots:
    if not root or _is_url(root) != _is_url(uri):
      continue
    base = _canonical(root)
    if path == base:
      if not strictly:
        return True
      continue
    prefix = base if base.endswith(("/", os.sep)) else base + ("/" if _is_url(root) else os.sep)
    if path.startswith(prefix):
      return True
  return False


def check_within_roots(uri: str, roots: Iterable[str], *, action: str = "delete") -> str:
  """Returns `uri` if it lies strictly below one of `roots`.

  Raises:
    OutsideRootsError: it does not; the refusal is logged as a warning and
      names the path, what was asked and the roots.
  """
  roots = tuple(r for r in roots if r)
  if within_roots(uri, roots, strictly=True):
    return uri
  message = (f"refusing to {action} {uri!r}: it is outside the roots this command was "
             f"given ({', '.join(repr(r) for r in roots) or 'none'})")
  _log.warning("%s", message)
  raise OutsideRootsError(message)


def remove_tree(path: str, roots: Iterable[str], *, missing_ok: bool = True) -> None:
  """Deletes the directory tree `path`, which must lie below one of `roots`
  (`check_within_roots`; outside, nothing is deleted).

  Raises:
    OutsideRootsError: `path` is outside `roots`.
    OSError: it cannot be deleted (or is missing and not `missing_ok`).
  """
  check_within_roots(path, roots)
  if not os.path.lexists(path):
    if missing_ok:
      return
    raise FileNotFoundError(errno.ENOENT, "no such directory", path)
  shutil.rmtree(path, ignore_errors=True)
  if os.path.lexists(path):
    raise OSError(errno.ENOTEMPTY, "cannot delete", path)


def remove_file(path: str, roots: Iterable[str]) -> None:
  """Deletes the file `path` (if it exists), which must lie below one of
  `roots` (`check_within_roots`).

  Raises:
    OutsideRootsError: `path` is outside `roots`.
  """
  check_within_roots(path, roots)
  with contextlib.suppress(FileNotFoundError):
    os.unlink(path)


__all__ = [
    "Content", "NotDurableError", "OutsideRootsError", "atomic_write", "atomic_write_all", "check_creatable_dir",
    "create_dir",
    "file_lock",
    "fsync_dir", "fsync_file", "fsync_tree", "link_tree", "nearest_existing", "publish_dir",
    "check_within_roots", "remove_file", "remove_tree", "temp_prefix", "tree_size",
    "within_roots",
]
