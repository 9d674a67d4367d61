"""Where the ML Metadata store is, and how to talk to it safely.

Retries
-------

Every call goes through one retry, in `Store` (what `open_store` returns).
MLMD's own client retry (ABORTED only, 5 times, ~2 s random waits, inside
every call) is switched off: one attempt per call underneath, so retries do
not multiply.

* What is retried: only errors that leave the store unchanged
  (`_is_retryable`): ABORTED, SQLite "database is locked"/"busy", a lost
  MySQL connection, a deadlock, "table definition has changed", and the
  schema-creation race of processes opening one new database together.
  Anything else is raised at once.
* A store call: at most 10 attempts; before attempt n+1 it waits a random
  time in [0, min(2 s, 0.05 s * 2**(n-1))] ("full jitter"), so at most
  9.15 s of waiting in all; and no retry is started whose wait would end
  more than 30 s after the first attempt began.
* Opening a store: at most 15 attempts, the same waits (at most 19.15 s in
  all), within 60 s.
* Every retry is logged as a warning (logger `ckptflow.base.metadata`);
  MLMD's own ERROR for each ABORTED call ("failed after retrying 1
  times") is filtered out, as it is not the end of the call.

A single attempt can itself take a while: with another process holding
SQLite's write lock, MLMD's SQLite layer waits about 2 s before it reports
ABORTED.

A metadata target is written as one string:

* a file path, or ``sqlite:PATH``: an MLMD SQLite file (local runs);
* ``mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE``: MySQL or MariaDB; a
  target without a password takes it from $CKPTFLOW_MYSQL_PASSWORD (the one
  rule for a password: in the target, else that variable);
* ``grpc://HOST:PORT``: an MLMD gRPC service (Kubeflow's metadata-grpc).

Executors find the store of the run they belong to through the
``CKPTFLOW_METADATA`` environment variable, which the runners set (and a
Kubeflow deployment sets on the pod), so passwords never enter the pipeline
definition or MLMD itself.

`resolve_target` decides a command's or a run's target: --metadata, else
the config file's `[run] metadata`, else $CKPTFLOW_METADATA, else the store
the home recorded when it was made (its identity file, `base.home`; a
MySQL target is recorded without its password), else HOME/metadata.sqlite.

Reads of lists: MLMD raises NotFound from some list calls (e.g.
`get_contexts_by_execution`, `get_artifacts_by_external_ids`) when nothing
matches. Every `get_*` method of `Store` that returns a list (MLMD
annotates it `List[...]`) returns [] instead. Single-record reads
(`get_artifact_type`, `get_*_by_type_and_name`, ...) keep MLMD's behaviour.

This module imports ml_metadata and tenacity (and, to explain a failed
MySQL login, PyMySQL); never TensorFlow or TFX.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import re
import socket
import typing
import urllib.parse
from typing import Any, Callable, TypeVar

import tenacity
from ml_metadata import errors as mlmd_errors
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from ckptflow.base.errors import MetadataError
from ckptflow.base.home import Home, read_identity

METADATA_ENV = "CKPTFLOW_METADATA"
# The password of a mysql:// target that carries none.
MYSQL_PASSWORD_ENV = "CKPTFLOW_MYSQL_PASSWORD"
# MLMD's client counts its own attempts of an ABORTED call down from this and
# gives up at 0: 1 means one attempt, no retry of its own (0 would never stop).
_MLMD_CLIENT_ATTEMPTS = 1

_log = logging.getLogger(__name__)
_T = TypeVar("_T")


def describe(target: str) -> str:
  """Returns `target` with any password masked, for messages and logs."""
  parsed = urllib.parse.urlsplit(target)
  if parsed.scheme == "mysql" and parsed.password:
    netloc = parsed.netloc.replace(":" + parsed.password + "@", ":***@")
    return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))
  return target


def without_password(target: str) -> str:
  """`target` with any password removed (not masked): what may be written
  down, e.g. in a home's identity file."""
  parsed = urllib.parse.urlsplit(target)
  if parsed.scheme == "mysql" and parsed.password is not None:
    userinfo, _, hostport = parsed.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urllib.parse.urlunsplit(parsed._replace(netloc=f"{user}@{hostport}"))
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
    config.retry_options.max_num_retries = _MLMD_CLIENT_ATTEMPTS
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
    if not _MYSQL_DATABASE.fullmatch(database) or database.isdigit():
      # MLMD puts the name into CREATE DATABASE / USE unquoted.
      raise MetadataError(
          f"metadata target {describe(target)!r}: database name {database!r} is not "
          "valid. Expected 1 to 64 letters, digits and '_' (not digits only)")
    config = metadata_store_pb2.ConnectionConfig()
    config.mysql.host = parsed.hostname
    config.mysql.port = port or 3306
    config.mysql.database = database
    config.mysql.user = urllib.parse.unquote(parsed.username or "root")
    config.mysql.password = (urllib.parse.unquote(parsed.password) if parsed.password
                             else os.environ.get(MYSQL_PASSWORD_ENV, ""))
    config.mysql.skip_db_creation = not create
    config.retry_options.max_num_retries = _MLMD_CLIENT_ATTEMPTS
    return config
  if parsed.scheme == "grpc":
    if not parsed.hostname or parsed.path.strip("/"):
      raise MetadataError(
          f"metadata target {target!r} is not grpc://HOST:PORT")
    client = metadata_store_pb2.MetadataStoreClientConfig()
    client.host = parsed.hostname
    client.port = port or 8080
    return client
  raise MetadataError(
      f"metadata target {describe(target)!r} has unknown scheme "
      f"{parsed.scheme!r}. Expected a SQLite path, mysql:// or grpc://")


def open_store(target: str, *, create: bool = True) -> "Store":
  """Opens the MLMD store at `target`, as a `Store` whose calls are retried.

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
  if isinstance(config, metadata_store_pb2.ConnectionConfig) and config.HasField("mysql"):
    # MLMD's MySQL client waits minutes for a host that does not answer, and
    # then reports no reason: try the network first, with a bound.
    unreachable = _mysql_unreachable(config.mysql)
    if unreachable:
      raise MetadataError(f"cannot open metadata store {describe(target)!r}: {unreachable}")
  try:
    # A larger budget than a single call's: processes that open one new
    # MySQL database together wait out the one creating the schema.
    client = _run_retried(functools.partial(_connect, config), OPEN_POLICY,
                          what="opening the metadata store")
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
  if isinstance(config, metadata_store_pb2.MetadataStoreClientConfig):
    _check_grpc_reachable(config)
  return Store(client)


# How long opening a gRPC store waits for the server to answer a first call.
GRPC_PROBE_TIMEOUT_SECONDS = 10


def _check_grpc_reachable(config: metadata_store_pb2.MetadataStoreClientConfig) -> None:
  """A gRPC client connects lazily, at its first call: make one (with a
  deadline) so that an unreachable server is reported here, once, in one
  line, rather than by whichever call comes first."""
  probe_config = metadata_store_pb2.MetadataStoreClientConfig()
  probe_config.CopyFrom(config)
  probe_config.client_timeout_sec = GRPC_PROBE_TIMEOUT_SECONDS
  where = f"{config.host}:{config.port}"
  try:
    _connect(probe_config).get_artifact_types()
  except (mlmd_errors.UnavailableError, mlmd_errors.DeadlineExceededError) as e:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    reason = re.sub(r"^.*?Failed to connect to remote host: (connect: )?", "", reason)
    raise MetadataError(f"cannot reach the metadata gRPC server at {where}: "
                        f"{reason}. Expected an MLMD gRPC service (metadata-grpc) "
                        "listening there") from e
  except mlmd_errors.StatusError as e:
    raise MetadataError(f"the server at {where} is not an MLMD gRPC service: "
                        f"{str(e).strip().splitlines()[0] if str(e).strip() else e}") from e


class _WithoutMlmdGiveUpMessage(logging.Filter):
  """Drops the ERROR MLMD's client logs (through absl) whenever a call is
  ABORTED once it has no retries of its own left, i.e. on every ABORTED
  here: `Store` retries it, logs that, and raises the error if it gives up."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.msg != "%s failed after retrying %d times."


logging.getLogger("absl").addFilter(_WithoutMlmdGiveUpMessage())


def _connect(config: metadata_store_pb2.ConnectionConfig
             | metadata_store_pb2.MetadataStoreClientConfig) -> metadata_store.MetadataStore:
  """An MLMD client that tries each call once: `Store` does the retrying."""
  client = metadata_store.MetadataStore(config)
  # A ConnectionConfig carries retry_options (set by `connection_config`);
  # the gRPC client config has no such field and the client always starts
  # from 5, so set the same count on the client itself.
  client._max_num_retries = _MLMD_CLIENT_ATTEMPTS  # pylint: disable=protected-access
  return client


_MYSQL_DATABASE = re.compile(r"[A-Za-z0-9_]{1,64}")
# How long opening a MySQL store (and explaining why it failed) waits for
# the server to accept a connection, and to answer.
MYSQL_PROBE_TIMEOUT_SECONDS = 10
# MySQL client and server error codes the diagnosis names.
_MYSQL_ERRORS = {
    1044: "user {user!r} has no access to database {database!r}",
    1045: "the server refused user {user!r}: wrong password, or no such user",
    1049: "database {database!r} does not exist. Expected an existing database "
          "(`ckptflow run` creates it)",
    2013: "the server closed the connection during the MySQL handshake. Expected "
          "a MySQL/MariaDB server on that port",
}


def _mysql_unreachable(mysql: metadata_store_pb2.MySQLDatabaseConfig) -> str | None:
  """Why no TCP connection to the MySQL server can be opened (as the MySQL
  client's error 2005 or 2003 would say), or None if one can."""
  where = f"{mysql.host}:{mysql.port}"
  try:
    socket.getaddrinfo(mysql.host, mysql.port, type=socket.SOCK_STREAM)
  except socket.gaierror as e:
    return (f"MySQL error 2005: unknown MySQL server host {mysql.host!r} "
            f"({e.strerror}). Expected a host name or address that resolves")
  try:
    with socket.create_connection((mysql.host, mysql.port),
                                  timeout=MYSQL_PROBE_TIMEOUT_SECONDS):
      pass
  except TimeoutError:
    return (f"MySQL error 2003: no answer from {where} within "
            f"{MYSQL_PROBE_TIMEOUT_SECONDS} s (connect timeout): the host is "
            "unreachable or a firewall drops the connection")
  except ConnectionRefusedError:
    return (f"MySQL error 2003: connection to {where} refused: no MySQL server "
            "reachable there. Expected a running MySQL/MariaDB server")
  except OSError as e:
    return (f"MySQL error 2003: cannot connect to {where} "
            f"({e.strerror or type(e).__name__}). Expected a running MySQL/MariaDB "
            "server")
  return None


def _why_mysql_failed(mysql: metadata_store_pb2.MySQLDatabaseConfig, error: str) -> str:
  """MLMD reports every failed MySQL connection as "mysql_real_connect
  failed" with an empty reason and code. Find out what failed by doing the
  same steps again: open a TCP connection (`_mysql_unreachable`), then log
  in with a MySQL client (PyMySQL), whose error codes say what the server
  refused: 2005 unknown host, 2003 no connection (refused, or a connect
  timeout), 2013 lost during the handshake, 1045 wrong password, 1044 no
  access to the database, 1049 unknown database."""
  where = f"{mysql.host}:{mysql.port}"
  if "Unknown database" in error:
    return f"MySQL error 1049 at {where}: " + _MYSQL_ERRORS[1049].format(
        user=mysql.user, database=mysql.database)
  if "mysql_real_connect" not in error:
    return error
  unreachable = _mysql_unreachable(mysql)
  if unreachable:
    return unreachable
  import pymysql  # pylint: disable=import-outside-toplevel
  try:
    pymysql.connect(host=mysql.host, port=mysql.port, user=mysql.user,
                    password=mysql.password,
                    database=mysql.database if mysql.skip_db_creation else None,
                    connect_timeout=MYSQL_PROBE_TIMEOUT_SECONDS,
                    read_timeout=MYSQL_PROBE_TIMEOUT_SECONDS).close()
  except pymysql.err.MySQLError as e:
    code = e.args[0] if e.args and isinstance(e.args[0], int) else None
    if code in _MYSQL_ERRORS:
      hint = ("" if mysql.password or code not in (1044, 1045) else
              f"; no password was given: put it in the target "
              f"(--metadata mysql://{mysql.user}:PASSWORD@{mysql.host}:{mysql.port}/"
              f"{mysql.database}) or set {MYSQL_PASSWORD_ENV}")
      return f"MySQL error {code} at {where}: " + _MYSQL_ERRORS[code].format(
          user=mysql.user, database=mysql.database) + hint
    if code is None:  # PyMySQL's own protocol errors carry no code
      return (f"the service at {where} is not a MySQL server (its answer is not "
              f"the MySQL protocol: {e}). Expected a MySQL/MariaDB server on that port")
    detail = e.args[1] if len(e.args) > 1 else str(e)
    return f"MySQL error {code} at {where}: {detail}"
  return (f"the server at {where} accepts user {mysql.user!r}, but MLMD's MySQL "
          "client could not connect: it needs the mysql_native_password "
          "authentication plugin for that user")


def _is_retryable(error: BaseException) -> bool:
  """Whether `error` leaves the store unchanged, so trying again is safe.

  ABORTED is MLMD's transaction-conflict code (MLMD's own client retries only
  that one). SQLite "database is locked"/"busy" and a lost MySQL connection
  fail the whole transaction before anything is committed. MySQL's "table
  definition has changed, please retry transaction" aborts the transaction
  too. Several processes opening one empty MySQL database at once race to
  create MLMD's schema and all but one fail (MLMD raises RuntimeError, or
  an error saying "concurrent connection to the empty database. Please
  retry", or MySQL's "Deadlock found when trying to get lock; try
  restarting transaction", which rolled the transaction back); schema
  creation is idempotent, so opening again is safe.
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
                        "table definition has changed",
                        "deadlock found when trying to get lock")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
  """How often, and for how long, a failed store operation is tried again.

  At most `attempts` attempts. Before attempt n+1 it waits a random time in
  [0, min(max_wait, first_wait * 2**(n-1))] (exponential backoff with full
  jitter, so processes that collided do not collide again in step). No
  retry is started whose wait would end more than `deadline` seconds after
  the first attempt began.
  """

  attempts: int
  first_wait: float
  max_wait: float
  deadline: float

  @property
  def max_total_wait(self) -> float:
    """The most this policy can sleep in all, whatever happens."""
    waits = sum(min(self.max_wait, self.first_wait * 2 ** n)
                for n in range(self.attempts - 1))
    return min(waits, self.deadline)


# The numbers quoted in the module docstring ("Retries").
CALL_POLICY = RetryPolicy(attempts=10, first_wait=0.05, max_wait=2.0, deadline=30.0)
OPEN_POLICY = RetryPolicy(attempts=15, first_wait=0.05, max_wait=2.0, deadline=60.0)


def _log_retry(what: str, policy: RetryPolicy) -> Callable[[tenacity.RetryCallState], None]:
  def log(state: tenacity.RetryCallState) -> None:
    error = state.outcome.exception()
    _log.warning("%s failed (%s); retry %d/%d in %.2fs", what,
                 str(error).splitlines()[0] if str(error) else type(error).__name__,
                 state.attempt_number, policy.attempts - 1, state.upcoming_sleep)
  return log


def _run_retried(operation: Callable[[], _T], policy: RetryPolicy, *, what: str) -> _T:
  """Runs `operation`, retrying the errors `_is_retryable` allows as
  `policy` says, each retry logged; the last error is raised as it is."""
  retrying = tenacity.Retrying(
      stop=(tenacity.stop_after_attempt(policy.attempts)
            | tenacity.stop_before_delay(policy.deadline)),
      wait=tenacity.wait_random_exponential(multiplier=policy.first_wait,
                                            max=policy.max_wait),
      retry=tenacity.retry_if_exception(_is_retryable),
      before_sleep=_log_retry(what, policy),
      reraise=True)
  return retrying(operation)


def _returns_list(method: Callable[..., Any]) -> bool:
  try:
    hint = typing.get_type_hints(method).get("return")
  except Exception:  # pylint: disable=broad-except
    return False  # an annotation that does not resolve: not known to be a list
  return typing.get_origin(hint) is list


# Public methods of MLMD's client, and which of them are list reads.
_MLMD_METHODS = {name: method for name, method in inspect.getmembers(
    metadata_store.MetadataStore, inspect.isfunction)
                 if name.startswith(("get_", "put_"))}
LIST_READS = frozenset(name for name, method in _MLMD_METHODS.items()
                       if name.startswith("get_") and _returns_list(method))


class Store:
  """An MLMD store whose every call is retried in one place.

  It has the methods of `ml_metadata.metadata_store.MetadataStore`
  (`put_artifacts`, `get_executions_by_id`, ...), with the same arguments
  and results, with two differences:

  * errors that leave the store unchanged are retried by `CALL_POLICY`
    (see "Retries" in the module docstring); others are raised at once;
  * the list reads (`LIST_READS`: every `get_*` method that returns a
    list) return [] where MLMD raises NotFound for "nothing matches".

  A call is one MLMD transaction (or, for a paged list read, a sequence of
  reads), so trying it again is safe. Call sites must not wrap it in a
  retry of their own. It keeps no state between calls: it is as
  thread-safe as the MLMD client underneath.
  """

  def __init__(self, client: metadata_store.MetadataStore,
               policy: RetryPolicy = CALL_POLICY):
    self._client = client
    self._policy = policy

  @property
  def client(self) -> metadata_store.MetadataStore:
    """The ml_metadata client underneath. Its calls are tried once each."""
    return self._client

  @property
  def policy(self) -> RetryPolicy:
    return self._policy

  def __getattr__(self, name: str) -> Callable[..., Any]:
    if name not in _MLMD_METHODS:
      raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")
    method = getattr(self._client, name)
    list_read = name in LIST_READS

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
      operation = functools.partial(method, *args, **kwargs)
      try:
        return _run_retried(operation, self._policy, what=f"MLMD {name}")
      except mlmd_errors.NotFoundError:
        if list_read:
          return []
        raise

    return call


# What KFP sets in every task's pod (from its metadata-grpc-configmap).
KFP_METADATA_HOST_ENV = "METADATA_GRPC_SERVICE_HOST"
KFP_METADATA_PORT_ENV = "METADATA_GRPC_SERVICE_PORT"


def resolve_target(explicit: str | None, home: str) -> str:
  """The metadata target of a command or a run: the one rule, in one place.

  `explicit` is what the user chose: the --metadata flag, else the config
  file's `[run] metadata` (callers pass whichever is set; "" and None mean
  neither). Without it: $CKPTFLOW_METADATA, else the store the home's
  identity file records (a MySQL target without its password, which then
  comes from $CKPTFLOW_MYSQL_PASSWORD), else HOME/metadata.sqlite.

  Raises:
    CkptflowError: the home's identity file is damaged.
  """
  chosen = (explicit or "").strip()
  if chosen:
    return chosen
  env = _env_target()
  if env:
    return env
  where = Home(home)
  identity = read_identity(where)
  if identity is not None and identity.metadata:
    return identity.metadata
  return where.metadata_sqlite


def _env_target() -> str:
  return os.environ.get(METADATA_ENV, "").strip()


def target_from_env() -> str:
  """The metadata target of the run an executor belongs to: CKPTFLOW_METADATA
  (the runners set it to `resolve_target`'s answer); in a Kubeflow Pipelines
  pod without it, KFP's own metadata gRPC service.

  Raises:
    MetadataError: neither is set.
  """
  target = _env_target()
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
