"""Retries where they are safe, bounded in attempts and in time, in one
place (`metadata.Store`); and idempotent registration where a retry may
repeat a write that was in fact committed. Real stores: MLMD's real client
on a SQLite file (failing where it sends a request), a SQLite file locked by
another process, a MariaDB connection killed by the server."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import time

import pytest
from ml_metadata import errors as mlmd_errors
from ml_metadata.proto import metadata_store_pb2

from ckptflow.components import checkpoint as ckpt_records
from ckptflow.components.checkpoint import CheckpointRegistry
from ckptflow.base import metadata
from reliability_support import (mysql_admin, mysql_target, register_checkpoint,
                                 start_execution, write_checkpoint_dir)


def _fail_inner_calls(store: metadata.Store, monkeypatch, error: Exception) -> list[str]:
  """Makes every call of the real MLMD client under `store` fail with
  `error` where MLMD sends the request (below MLMD's own retry loop, which
  is switched off); returns the list each attempt's method is appended to."""
  attempts = []

  def failing(method_name, request, response):
    attempts.append(method_name)
    raise error

  monkeypatch.setattr(store.client, "_call_method", failing)
  return attempts


@pytest.mark.parametrize("error", [
    mlmd_errors.AbortedError("transaction conflict"),
    mlmd_errors.InternalError("database is locked"),
], ids=["aborted", "sqlite-locked"])
def test_a_call_that_keeps_failing_is_tried_a_bounded_number_of_times_in_bounded_time(
    tmp_path, monkeypatch, caplog, error):
  store = metadata.open_store(str(tmp_path / "m.sqlite"))
  type_id = store.put_artifact_type(metadata_store_pb2.ArtifactType(name="Thing"))
  attempts = _fail_inner_calls(store, monkeypatch, error)
  policy = metadata.CALL_POLICY

  started = time.monotonic()
  with caplog.at_level(logging.WARNING):
    with pytest.raises(type(error)):
      store.put_artifacts([metadata_store_pb2.Artifact(type_id=type_id, uri="/x")])
  elapsed = time.monotonic() - started

  # One attempt each time: MLMD's client does not retry ABORTED underneath.
  assert attempts == ["PutArtifacts"] * policy.attempts == ["PutArtifacts"] * 10
  assert policy.max_total_wait == pytest.approx(9.15)
  assert elapsed <= policy.max_total_wait + 1.0
  warnings = [r.getMessage() for r in caplog.records if r.name == "ckptflow.base.metadata"]
  assert len(warnings) == policy.attempts - 1
  first_line = str(error).splitlines()[0]
  assert all(w.startswith(f"MLMD put_artifacts failed ({first_line}); retry ")
             for w in warnings), warnings
  waits = [float(re.search(r" in ([0-9.]+)s$", w).group(1)) for w in warnings]
  assert sum(waits) <= policy.max_total_wait
  # MLMD's client no longer reports each ABORTED as a failure of its own.
  assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_retries_stop_at_the_deadline_even_with_attempts_left(tmp_path, monkeypatch):
  store = metadata.open_store(str(tmp_path / "m.sqlite"))
  store = metadata.Store(store.client, metadata.RetryPolicy(
      attempts=100, first_wait=0.2, max_wait=0.2, deadline=1.0))
  attempts = _fail_inner_calls(store, monkeypatch,
                               mlmd_errors.AbortedError("transaction conflict"))

  started = time.monotonic()
  with pytest.raises(mlmd_errors.AbortedError):
    store.get_artifacts_by_type("Thing")
  elapsed = time.monotonic() - started

  assert 1 < len(attempts) < 100
  assert elapsed < 1.5


def test_mlmd_client_retry_is_switched_off_for_every_kind_of_target(tmp_path):
  store = metadata.open_store(str(tmp_path / "m.sqlite"))
  assert store.client._max_num_retries == 1  # pylint: disable=protected-access
  for target in (str(tmp_path / "m.sqlite"), "mysql://u:p@db:3306/mlmd"):
    assert metadata.connection_config(target).retry_options.max_num_retries == 1


@pytest.mark.parametrize("error", [
    mlmd_errors.AlreadyExistsError("duplicate external id"),
    mlmd_errors.InvalidArgumentError("bad property"),
    mlmd_errors.InternalError("mysql_query failed: errno: syntax error"),
    RuntimeError("Error when executing query: file is not a database"),
], ids=["already-exists", "invalid-argument", "internal-other", "corrupt-file"])
def test_errors_that_may_have_changed_the_store_or_will_not_pass_are_not_retried(
    tmp_path, monkeypatch, error):
  store = metadata.open_store(str(tmp_path / "m.sqlite"))
  attempts = _fail_inner_calls(store, monkeypatch, error)

  with pytest.raises(type(error)):
    store.put_executions([])
  assert len(attempts) == 1


def test_opening_a_store_waits_out_a_mysql_deadlock_of_the_schema_creation_race(
    tmp_path, monkeypatch):
  # Processes opening one new MySQL database together: MariaDB may roll back
  # one's schema transaction as a deadlock (seen with 4 processes at once).
  real = metadata.metadata_store.MetadataStore
  failures = [RuntimeError("mysql_query aborted: errno: Deadlock found when trying to "
                           "get lock; try restarting transaction")]

  def connect(config):
    if failures:
      raise failures.pop(0)
    return real(config)

  monkeypatch.setattr(metadata.metadata_store, "MetadataStore", connect)
  store = metadata.open_store(str(tmp_path / "m.sqlite"))
  assert failures == []
  assert store.get_artifacts() == []


def test_a_call_returns_once_a_retryable_error_clears(tmp_path, monkeypatch):
  store = metadata.open_store(str(tmp_path / "m.sqlite"))
  real = store.client._call_method  # pylint: disable=protected-access
  outcomes = [mlmd_errors.InternalError("database is locked"),
              mlmd_errors.AbortedError("conflict")]

  def flaky(method_name, request, response):
    if outcomes:
      raise outcomes.pop(0)
    return real(method_name, request, response)

  monkeypatch.setattr(store.client, "_call_method", flaky)
  type_id = store.put_artifact_type(metadata_store_pb2.ArtifactType(name="Thing"))
  assert outcomes == []
  assert [t.id for t in store.get_artifact_types()] == [type_id]


def test_list_reads_return_empty_where_mlmd_raises_not_found_and_single_reads_raise(tmp_path):
  store = metadata.open_store(str(tmp_path / "m.sqlite"))
  with pytest.raises(mlmd_errors.NotFoundError):
    store.client.get_contexts_by_execution(12345)  # MLMD itself: NotFound

  assert store.get_contexts_by_execution(12345) == []
  assert store.get_artifacts_by_external_ids(["nothing"]) == []
  assert {"get_contexts_by_execution", "get_artifacts_by_external_ids",
          "get_events_by_artifact_ids", "get_executions"} <= metadata.LIST_READS
  assert "get_artifact_type" not in metadata.LIST_READS
  with pytest.raises(mlmd_errors.NotFoundError):
    store.get_artifact_type("Nothing")


def test_checkpoint_registered_again_after_a_lost_reply_is_recorded_once(tmp_path):
  store = metadata.open_store(str(tmp_path / "m.sqlite"))
  execution_id = start_execution(store)
  registry = CheckpointRegistry(store, execution_id)
  directory = write_checkpoint_dir(tmp_path, execution_id, 10)
  first = register_checkpoint(registry, directory, 10)
  # A process restarted after its registration committed, or a retry after
  # a reply that never arrived, registers the same bytes again.
  again = register_checkpoint(CheckpointRegistry(store, execution_id), directory, 10)
  assert again.id == first.id
  assert len(store.get_artifacts_by_type("Checkpoint")) == 1
  events = store.get_events_by_artifact_ids([first.id])
  assert [(e.execution_id, e.type) for e in events] == [
      (execution_id, metadata_store_pb2.Event.OUTPUT)]


def test_registration_waits_out_another_process_holding_the_sqlite_write_lock(tmp_path):
  path = tmp_path / "m.sqlite"
  store = metadata.open_store(str(path))
  execution_id = start_execution(store)
  registry = CheckpointRegistry(store, execution_id)
  holder = subprocess.Popen(
      [sys.executable, "-c",
       "import sqlite3, sys, time\n"
       "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
       "c.execute('BEGIN EXCLUSIVE')\n"
       "print('locked', flush=True)\n"
       "time.sleep(2)\n"
       "c.execute('COMMIT')\n", str(path)],
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    started = time.monotonic()
    record = register_checkpoint(registry, write_checkpoint_dir(tmp_path, execution_id, 5), 5)
    waited = time.monotonic() - started
  finally:
    holder.wait(timeout=30)
  assert waited > 1.0  # it really was blocked
  assert [r.id for r in ckpt_records.list_checkpoints(store)] == [record.id]


def _connection_ids(database: str) -> list[str]:
  return mysql_admin("SELECT id FROM information_schema.processlist "
                     f"WHERE db = '{database}'").stdout.split()


@pytest.mark.mysql
def test_mysql_connection_killed_between_transactions_is_retried_and_registers_once(
    tmp_path, mysql_database, caplog):
  store = metadata.open_store(mysql_target(mysql_database))
  execution_id = start_execution(store)
  registry = CheckpointRegistry(store, execution_id)
  register_checkpoint(registry, write_checkpoint_dir(tmp_path, execution_id, 1), 1)
  connections = _connection_ids(mysql_database)
  assert connections
  for connection in connections:  # as a server restart or a proxy timeout would
    mysql_admin(f"KILL {connection}")
  with caplog.at_level(logging.WARNING, logger="ckptflow.base.metadata"):
    record = register_checkpoint(
        registry, write_checkpoint_dir(tmp_path, execution_id, 2), 2)
  assert any("lost connection" in r.getMessage().lower()
             or "server has gone away" in r.getMessage().lower()
             for r in caplog.records), [r.getMessage() for r in caplog.records]
  steps = sorted(r.step for r in ckpt_records.list_checkpoints(store))
  assert steps == [1, 2]
  assert record.step == 2
