"""Where the ML Metadata store is, and how to talk to it safely.

A metadata target is written as one string:

* a file path, or ``sqlite:PATH``: an MLMD SQLite file (local runs);
* ``mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE``: MySQL or MariaDB;
* ``grpc://HOST:PORT``: an MLMD gRPC service (Kubeflow's metadata-grpc).

Executors find the store of the run they belong to through the
``CKPTFLOW_METADATA`` environment variable, which the runners set (and a
Kubeflow deployment sets on the pod), so passwords never enter the pipeline
definition or MLMD itself.

This module imports ml_metadata only; never TensorFlow or TFX.
"""

from __future__ import annotations

import logging
import os
import random
import re
import socket
import time
import urllib.parse
from typing import Callable, TypeVar

from ml_metadata import errors as mlmd_errors
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from ckptflow.base.errors import MetadataError

METADATA_ENV = "CKPTFLOW_METADATA"

_log = logging.getLogger(__name__)
_T = TypeVar("_T")


def describe(target: str) -> str:
  """Returns `target` with any password masked, for messages and logs."""
  parsed = urllib.parse.urlsplit(target)
  if parsed.scheme == "mysql" and parsed.password:
    netloc = parsed.netloc.replace(":" + parsed.password + "@", ":***@")
    return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))
  return target


def sqlite_path(target: str) -> str | None:
  """The SQLite file `target` names, or None if it names a server."""
  if target.startswith("sqlite:"):
    path = target[len("sqlite:"):]
    return path[2:] if path.startswith("///") else path
  if "://" in target:
    return None
  return target


def connection_config(
    target: str, *, create: bool = True
) -> metadata_store_pb2.ConnectionConfig | metadata_store_pb2.MetadataStoreClientConfig:
  """Parses a metadata target string into the MLMD proto that opens it.

  Raises:
    MetadataError: the string is not a metadata target this module knows.
  """
  path = sqlite_path(target)
  if path is not None:
    if not path:
      raise MetadataError("metadata target is empty. Expected a SQLite path, "
                          "mysql://USER:PASS@HOST:PORT/DB or grpc://HOST:PORT")
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = os.path.abspath(path)
    config.sqlite.connection_mode = (
        metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
        if create else metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE)
    return config
  parsed = urllib.parse.urlsplit(target)
  try:
    port = parsed.port
  except ValueError as e:
    raise MetadataError(
        f"metadata target {describe(target)!r} has a bad port") from e
  if parsed.scheme == "mysql":
    database = parsed.path.lstrip("/")
    if not parsed.hostname or not database or "/" in database:
      raise MetadataError(
          f"metadata target {describe(target)!r} is not "
          "mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
    config = metadata_store_pb2.ConnectionConfig()
    config.mysql.host = parsed.hostname
    config.mysql.port = port or 3306
    config.mysql.database = database
    config.mysql.user = urllib.parse.unquote(parsed.username or "root")
    config.mysql.password = urllib.parse.unquote(parsed.password or "")
    config.mysql.skip_db_creation = not create
    return config
  if parsed.scheme == "grpc":
    if not parsed.hostname:
      raise MetadataError(
          f"metadata target {target!r} is not grpc://HOST:PORT")
    client = metadata_store_pb2.MetadataStoreClientConfig()
    client.host = parsed.hostname
    client.port = port or 8080
    return client
  raise MetadataError(
      f"metadata target {describe(target)!r} has unknown scheme "
      f"{parsed.scheme!r}. Expected a SQLite path, mysql:// or grpc://")


def open_store(target: str, *, create: bool = True) -> metadata_store.MetadataStore:
  """Opens the MLMD store at `target`.

  With `create=False` a SQLite file must already exist: commands that only
  read metadata must not leave an empty store behind a mistyped --home.

  Raises:
    MetadataError: the store does not exist, cannot be reached, or is not an
      MLMD store (a corrupted file, a wrong password).
  """
  path = sqlite_path(target)
  if path is not None and not create and not os.path.isfile(path):
    raise MetadataError(f"no metadata store at {path!r}: run `ckptflow run` "
                        "first, or pass the --home that holds metadata.sqlite")
  if path is not None and create:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
      raise MetadataError(f"metadata directory {parent!r} does not exist")
  config = connection_config(target, create=create)
  try:
    # More attempts than a single call gets: processes that open one new
    # MySQL database together wait out the one creating the schema.
    return retry(lambda: metadata_store.MetadataStore(config),
                 what="opening the metadata store", attempts=15)
  except (mlmd_errors.StatusError, RuntimeError) as e:
    # MLMD raises RuntimeError, not a StatusError, for a SQLite file that is
    # not a database; its text then goes on with the failed query.
    text = str(e).strip()
    first_line = re.sub(r"\s+query:\s+[A-Z]+\s.*$", "",
                        text.splitlines()[0]) if text else type(e).__name__
    if isinstance(config, metadata_store_pb2.ConnectionConfig) and config.HasField("mysql"):
      first_line = _why_mysql_failed(config.mysql, first_line)
    raise MetadataError(
        f"cannot open metadata store {describe(target)!r}: {first_line}") from e


def _why_mysql_failed(mysql: metadata_store_pb2.MySQLDatabaseConfig, error: str) -> str:
  """MLMD reports every failed MySQL connection as "mysql_real_connect
  failed" with an empty reason; tell a server that cannot be reached from
  one that refuses the login."""
  if "mysql_real_connect" not in error:
    return error
  try:
    with socket.create_connection((mysql.host, mysql.port), timeout=5):
      pass
  except OSError as e:
    reason = e.strerror or type(e).__name__
    return (f"no MySQL server reachable at {mysql.host}:{mysql.port} ({reason}). "
            "Expected a running MySQL/MariaDB server")
  how = "does not exist" if mysql.skip_db_creation else "cannot be created"
  return (f"the server at {mysql.host}:{mysql.port} refused user {mysql.user!r}: "
          f"wrong password, no access to database {mysql.database!r}, or it "
          f"{how}")


def _is_retryable(error: BaseException) -> bool:
  """Whether `error` leaves the store unchanged, so trying again is safe.

  ABORTED is MLMD's transaction-conflict code (MLMD's own client retries only
  that one). SQLite "database is locked"/"busy" and a lost MySQL connection
  fail the whole transaction before anything is committed. MySQL's "table
  definition has changed, please retry transaction" aborts the transaction
  too. Several processes opening one empty MySQL database at once race to
  create MLMD's schema and all but one fail (MLMD raises RuntimeError, or
  an error saying "concurrent connection to the empty database. Please
  retry"); schema creation is idempotent, so opening again is safe.
  """
  text = str(error).lower()
  if isinstance(error, RuntimeError):
    return any(marker in text for marker in _SCHEMA_RACE_MARKERS)
  if isinstance(error, mlmd_errors.AbortedError):
    return True
  if isinstance(error, mlmd_errors.StatusError):
    if any(marker in text for marker in _SCHEMA_RACE_MARKERS):
      return True
  if isinstance(error, (mlmd_errors.InternalError, mlmd_errors.UnavailableError)):
    return any(marker in text for marker in (
        "database is locked", "busy", "lost connection",
        "server has gone away", "can't connect", "deadlock",
        "table definition has changed"))
  return False


_SCHEMA_RACE_MARKERS = ("concurrent connection to the empty database",
                        "no schema_version can be found",
                        "table definition has changed")


def retry(operation: Callable[[], _T], *, what: str, attempts: int = 8,
          base_delay: float = 0.05, max_delay: float = 2.0) -> _T:
  """Runs `operation`, retrying errors that are safe to retry.

  Jittered exponential backoff ("full jitter"), bounded in attempts; every
  retry is logged. Any other error is raised at once. Operations passed here
  must be single MLMD calls (each one transaction) or idempotent sequences.
  """
  for attempt in range(1, attempts + 1):
    try:
      return operation()
    except (mlmd_errors.StatusError, RuntimeError) as e:
      if attempt == attempts or not _is_retryable(e):
        raise
      delay = random.uniform(0, min(max_delay, base_delay * 2 ** attempt))
      _log.warning("%s failed (%s); retry %d/%d in %.2fs", what,
                   str(e).splitlines()[0] if str(e) else type(e).__name__,
                   attempt, attempts - 1, delay)
      time.sleep(delay)
  raise AssertionError("unreachable")


# What KFP sets in every task's pod (from its metadata-grpc-configmap).
KFP_METADATA_HOST_ENV = "METADATA_GRPC_SERVICE_HOST"
KFP_METADATA_PORT_ENV = "METADATA_GRPC_SERVICE_PORT"


def target_from_env() -> str:
  """The metadata target of the current run, from CKPTFLOW_METADATA; in a
  Kubeflow Pipelines pod without it, KFP's own metadata gRPC service."""
  target = os.environ.get(METADATA_ENV, "").strip()
  kfp_host = os.environ.get(KFP_METADATA_HOST_ENV, "").strip()
  if not target and kfp_host:
    port = os.environ.get(KFP_METADATA_PORT_ENV, "").strip() or "8080"
    target = f"grpc://{kfp_host}:{port}"
  if not target:
    raise MetadataError(
        f"{METADATA_ENV} is not set: the executor cannot find the run's "
        "metadata store. Run through `ckptflow run`, or set it to the "
        "pipeline's metadata target")
  return target


def query(operation: Callable[[], list], *, what: str) -> list:
  """Runs a read through `retry`; MLMD's NotFound for "no such rows" is an
  empty list (several MLMD list calls raise it instead of returning [])."""
  try:
    return retry(operation, what=what)
  except mlmd_errors.NotFoundError:
    return []
