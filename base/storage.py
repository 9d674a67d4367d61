"""Storage primitives: durable writes, atomic publication, file locks.

Every write that must survive a crash, every "write, then publish", and
every inter-process lock in ckptflow goes through this module, so that each
guarantee is written once. The primitives below work on local (POSIX)
file systems; the URI functions at the end take a local path or a bucket
URI (s3://, gs://) alike.

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
* URIs (local paths and buckets): `check_uri` (the form of a root; an
  unknown scheme is a one-line `CkptflowError`), `join`, `write_bytes`,
  `read_bytes`, `exists`, `list_names`, `list_files`, `delete_tree`,
  `copy_file`, `file_digest`; `commit` / `committed` / `verify_committed`
  (a prefix is published by a commit marker written last, holding each
  file's size and sha256: buckets have no rename); `create_if_absent` (a
  claim: O_EXCL locally, PUT If-None-Match: * on S3); `exit_process`
  (leave a process that used tensorflow-io's S3 client without its abort
  at exit).
* `within_roots`, `check_within_roots`, `remove_tree`, `remove_file`: the
  one guard every delete goes through. A command is given roots (its home,
  pipeline root, serving root); it never deletes, renames or overwrites
  anything outside them, whatever a metadata record says. A refusal is
  logged and raised as `OutsideRootsError`; nothing is deleted.

Imports neither TensorFlow nor TFX at import time: bucket URIs import
TensorFlow (and tensorflow-io for s3://) inside the functions that use
them, so metadata-only commands on local roots never do.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import sys
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



# --- URIs: local paths and buckets -------------------------------------------
#
# A "root" (pipeline root, serving directory) is a local path or a bucket
# URI (s3://bucket/prefix, gs://bucket/prefix). The functions below take
# either. Buckets go through tf.io.gfile (TensorFlow is imported lazily, only
# for remote URIs; s3:// also needs tensorflow-io, imported first). Buckets
# have no rename, no flock and no directories: a prefix is published by a
# commit marker written last (`commit`), and a claim is a conditional create
# (`create_if_absent`).

REMOTE_SCHEMES = ("s3", "gs")
COMMIT_MARKER = "commit_success.json"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_remote_touched = False


def uri_scheme(uri: str) -> str | None:
  """The URI's scheme ("s3", "gs", ...) in lower case, None for a path."""
  m = _SCHEME.match(uri)
  return m.group(1).lower() if m else None


def is_remote(uri: str) -> bool:
  """True for a bucket URI (s3://, gs://)."""
  return uri_scheme(uri) in REMOTE_SCHEMES


def check_uri(uri: str, what: str) -> str:
  """A root as given by a user, checked for form (nothing is contacted):
  a local path (returned absolute) or `s3://bucket[/prefix]` /
  `gs://bucket[/prefix]` (returned without a trailing slash).

  Raises:
    CkptflowError: an unknown scheme, or a bucket URI without a bucket.
  """
  scheme = uri_scheme(uri)
  if scheme is None:
    return os.path.abspath(uri)
  if scheme not in REMOTE_SCHEMES:
    raise CkptflowError(f"{what} {uri!r} has an unsupported scheme {scheme!r}. Expected a "
                        "local path, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX")
  rest = uri[len(scheme) + 3:].strip("/")
  bucket = rest.split("/", 1)[0]
  if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
    raise CkptflowError(f"{what} {uri!r} names no valid bucket ({bucket!r}). Expected "
                        f"{scheme}://BUCKET/PREFIX with a bucket name of 3-63 lower-case "
                        "letters, digits, '.' or '-'")
  return f"{scheme}://{rest}"


def join(uri: str, *parts: str) -> str:
  """`os.path.join` for paths, '/'-joining for bucket URIs."""
  if is_remote(uri):
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])
  return os.path.join(uri, *parts)


def remote_touched() -> bool:
  """True once this process has used a bucket through TensorFlow (see
  `exit_process`)."""
  return _remote_touched


def gfile(uri: str):
  """`tf.io.gfile`, ready for `uri`'s scheme: for s3://, tensorflow-io is
  imported and its settings derived from AWS_* (`base.s3`) first, since
  without it TensorFlow reports s3 paths as not found."""
  global _remote_touched
  import tensorflow as tf
  if uri_scheme(uri) == "s3":
    from ckptflow.base import s3
    s3.apply_tensorflow_io_environment(s3.settings())
    import tensorflow_io  # noqa: F401  registers the s3:// file system
  if is_remote(uri):
    _remote_touched = True
  return tf.io.gfile


def prepare(uri: str) -> None:
  """Makes `uri` usable by TensorFlow in this process (see `gfile`); a
  no-op for local paths. Call before handing an s3:// URI to TensorFlow
  code that opens it itself (tf.train.Checkpoint, SavedModel)."""
  if is_remote(uri):
    gfile(uri)


def exit_process(status: int) -> None:
  """Ends the process with `status`. After a bucket was used through
  tensorflow-io, its S3 client aborts the process at interpreter exit
  (SIGABRT, "pure virtual method called": tensorflow/io#2039); then output
  is flushed and the process leaves through `os._exit`, skipping the
  teardown that aborts, so the caller sees the real status."""
  if not _remote_touched:
    raise SystemExit(status)
  import logging
  logging.shutdown()
  for stream in (sys.stdout, sys.stderr):
    with contextlib.suppress(Exception):
      stream.flush()
  os._exit(status)


def write_bytes(uri: str, data: bytes | str) -> None:
  """Writes one file or object whole. Local: `atomic_write` (parent
  directories created as needed, as a bucket needs none). Bucket: one PUT
  (an object is visible whole or not at all)."""
  if not is_remote(uri):
    os.makedirs(os.path.dirname(os.path.abspath(uri)), exist_ok=True)
    atomic_write(uri, data)
    return
  data = data.encode("utf-8") if isinstance(data, str) else data
  with gfile(uri).GFile(uri, "wb") as f:
    f.write(data)


def read_bytes(uri: str) -> bytes:
  """Reads one file or object. Raises FileNotFoundError if missing."""
  if not is_remote(uri):
    with open(uri, "rb") as f:
      return f.read()
  g = gfile(uri)
  import tensorflow as tf
  try:
    with g.GFile(uri, "rb") as f:
      return f.read()
  except tf.errors.NotFoundError as e:
    raise FileNotFoundError(errno.ENOENT, "no such object", uri) from e


def exists(uri: str) -> bool:
  """True if a file, directory, object or non-empty prefix is at `uri`."""
  if not is_remote(uri):
    return os.path.lexists(uri)
  return gfile(uri).exists(uri)


def list_names(uri: str) -> list[str]:
  """The names directly under `uri` (files and sub-directories or
  prefixes), sorted; [] if nothing is there."""
  if not is_remote(uri):
    return sorted(os.listdir(uri)) if os.path.isdir(uri) else []
  g = gfile(uri)
  if not g.isdir(uri):
    return []
  return sorted(name.rstrip("/") for name in g.listdir(uri))


def list_files(uri: str) -> list[str]:
  """Every file under `uri`, as paths relative to it ('/'-separated),
  sorted; [] if nothing is there."""
  if not is_remote(uri):
    found = []
    for dirpath, _, filenames in os.walk(uri):
      rel = os.path.relpath(dirpath, uri)
      found += [name if rel == "." else f"{rel}/{name}".replace(os.sep, "/")
                for name in filenames]
    return sorted(found)
  g = gfile(uri)
  if not g.isdir(uri):
    return []
  found = []
  for dirpath, _, filenames in g.walk(uri):
    rel = dirpath[len(uri):].strip("/")
    found += [f"{rel}/{name}" if rel else name for name in filenames]
  return sorted(found)


def delete_tree(uri: str) -> None:
  """Removes `uri` and everything under it; nothing there is not an
  error. On a bucket, objects go one by one: a reader may see some gone.
  Unguarded: callers that delete what a record or a listing names use
  `remove_tree`, which checks the command's roots first."""
  if not is_remote(uri):
    if os.path.isdir(uri) and not os.path.islink(uri):
      shutil.rmtree(uri)
    elif os.path.lexists(uri):
      os.unlink(uri)
    return
  g = gfile(uri)
  if g.isdir(uri):
    g.rmtree(uri)
  elif g.exists(uri):
    g.remove(uri)


def copy_file(src: str, dst: str) -> None:
  """Copies one file between any two locations (local or bucket),
  replacing `dst`; a local `dst` is fsynced."""
  if not is_remote(src) and not is_remote(dst):
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    shutil.copyfile(src, dst)
    fsync_file(dst)
    return
  g = gfile(dst if is_remote(dst) else src)
  if not is_remote(dst):
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
  g.copy(src, dst, overwrite=True)


def file_digest(uri: str) -> tuple[int, str]:
  """(size in bytes, sha256 hex) of one file or object.

  Raises:
    FileNotFoundError: there is none.
  """
  sha = hashlib.sha256()
  size = 0
  if not is_remote(uri):
    with open(uri, "rb") as f:
      while chunk := f.read(1 << 20):
        sha.update(chunk)
        size += len(chunk)
    return size, sha.hexdigest()
  g = gfile(uri)
  import tensorflow as tf
  try:
    with g.GFile(uri, "rb") as f:
      while chunk := f.read(1 << 20):
        sha.update(chunk)
        size += len(chunk)
  except tf.errors.NotFoundError as e:
    raise FileNotFoundError(errno.ENOENT, "no such object", uri) from e
  return size, sha.hexdigest()


def age_seconds(uri: str) -> float:
  """Seconds since the newest file under `uri` (or `uri` itself) was
  last modified; infinity if there is none."""
  import time
  if not is_remote(uri):
    paths = [uri] if os.path.isfile(uri) else [join(uri, rel) for rel in list_files(uri)]
    mtimes = [os.stat(p).st_mtime for p in paths if os.path.exists(p)]
  else:
    g = gfile(uri)
    paths = [join(uri, rel) for rel in list_files(uri)] or ([uri] if g.exists(uri) else [])
    mtimes = [g.stat(p).mtime_nsec / 1e9 for p in paths]
  return time.time() - max(mtimes) if mtimes else float("inf")


def commit(prefix: str) -> dict[str, dict]:
  """Publishes the files under `prefix` by writing its commit marker,
  `COMMIT_MARKER`, last: a JSON object mapping each file (relative path)
  to its size and sha256. Returns that mapping.

  The pattern of Orbax's `commit_success.txt`: on a bucket, where there is
  no rename, files are written under their final names and the marker
  makes the prefix complete; a prefix without its marker is unfinished and
  is never registered, restored, exported or served (`committed`).
  """
  files = {}
  for rel in list_files(prefix):
    if rel == COMMIT_MARKER:
      continue
    size, sha = file_digest(join(prefix, rel))
    files[rel] = {"size": size, "sha256": sha}
  if not files:
    raise FileNotFoundError(errno.ENOENT, "nothing to commit", prefix)
  write_bytes(join(prefix, COMMIT_MARKER),
              json.dumps({"files": files}, indent=1, sort_keys=True) + "\n")
  return files


def committed(prefix: str) -> dict[str, dict] | None:
  """The files `prefix`'s commit marker lists (see `commit`), or None if
  it has no marker (unfinished: never use it)."""
  try:
    data = read_bytes(join(prefix, COMMIT_MARKER))
  except FileNotFoundError:
    return None
  return json.loads(data)["files"]


def verify_committed(prefix: str) -> list[str]:
  """What is wrong with the committed prefix `prefix`: [] if its marker
  exists and every file it lists is there with its recorded size and
  sha256; else one line per problem."""
  files = committed(prefix)
  if files is None:
    return [f"{prefix}: no commit marker"]
  problems = []
  for rel, want in sorted(files.items()):
    path = join(prefix, rel)
    try:
      size, sha = file_digest(path)
    except (FileNotFoundError, OSError):
      problems.append(f"{path}: missing")
      continue
    if (size, sha) != (want["size"], want["sha256"]):
      problems.append(f"{path}: content differs from its commit marker")
  return problems


def create_if_absent(uri: str, data: bytes | str) -> bool:
  """Creates the file or object `uri` holding `data` unless it exists;
  True if this call created it. Two concurrent callers never both get
  True: locally O_CREAT|O_EXCL, on S3 a PUT with If-None-Match: * (HTTP
  412 when it exists). Used to claim a name (a served version) without a
  lock.

  Raises:
    OSError: it cannot be created (other than because it exists).
  """
  data = data.encode("utf-8") if isinstance(data, str) else data
  scheme = uri_scheme(uri)
  if scheme is None:
    os.makedirs(os.path.dirname(os.path.abspath(uri)), exist_ok=True)
    try:
      fd = os.open(uri, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:
      return False
    try:
      os.write(fd, data)
      os.fsync(fd)
    finally:
      os.close(fd)
    fsync_dir(os.path.dirname(os.path.abspath(uri)))
    return True
  if scheme == "s3":
    from ckptflow.base import s3
    return s3.create_if_absent(uri, data)
  raise OSError(errno.ENOTSUP, f"no conditional create for {scheme}:// here", uri)


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
  """Deletes the directory tree `path` (a local path or a bucket prefix),
  which must lie below one of `roots` (`check_within_roots`; outside,
  nothing is deleted).

  Raises:
    OutsideRootsError: `path` is outside `roots`.
    OSError: it cannot be deleted (or is missing and not `missing_ok`).
  """
  check_within_roots(path, roots)
  if is_remote(path):
    if not exists(path):
      if missing_ok:
        return
      raise FileNotFoundError(errno.ENOENT, "no such prefix", path)
    # Its commit marker first: a removal cut short leaves an unfinished
    # prefix (found and removed again later), never a committed one with
    # files missing.
    delete_tree(join(path, COMMIT_MARKER))
    delete_tree(path)
    return
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
  if is_remote(path):
    delete_tree(path)
    return
  with contextlib.suppress(FileNotFoundError):
    os.unlink(path)


__all__ = [
    "COMMIT_MARKER", "REMOTE_SCHEMES", "age_seconds", "check_uri", "commit", "committed",
    "copy_file", "create_if_absent", "delete_tree", "exists", "exit_process", "file_digest",
    "gfile", "is_remote", "join", "list_files", "list_names", "prepare", "read_bytes",
    "remote_touched", "uri_scheme", "verify_committed", "write_bytes",
    "Content", "NotDurableError", "OutsideRootsError", "atomic_write", "atomic_write_all", "check_creatable_dir",
    "create_dir",
    "file_lock",
    "fsync_dir", "fsync_file", "fsync_tree", "link_tree", "nearest_existing", "publish_dir",
    "check_within_roots", "remove_file", "remove_tree", "temp_prefix", "tree_size",
    "within_roots",
]
