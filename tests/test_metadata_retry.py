"""Retries where they are safe, and idempotent registration where a retry
may repeat a write that was in fact committed. Real stores: a SQLite file
locked by another process, a MariaDB connection killed by the server."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest
from ml_metadata import errors as mlmd_errors
from ml_metadata.proto import metadata_store_pb2

from ckptflow.components import checkpoint as ckpt_records
from ckptflow.components.checkpoint import CheckpointRegistry
from ckptflow.base import metadata
from reliability_support import (mysql_admin, mysql_database, mysql_target,  # noqa: F401
                                 register_checkpoint, start_execution, write_checkpoint_dir)


def test_retry_gives_up_after_a_bounded_number_of_logged_attempts(caplog):
  calls = []

  def always_aborted():
    calls.append(1)
    raise mlmd_errors.AbortedError("transaction conflict")

  with caplog.at_level(logging.WARNING, logger="ckptflow.base.metadata"):
    with pytest.raises(mlmd_errors.AbortedError):
      metadata.retry(always_aborted, what="a conflicting write", attempts=4,
                     base_delay=0.001)
  assert len(calls) == 4
  warnings = [r.getMessage() for r in caplog.records]
  assert len(warnings) == 3
  assert all(w.startswith("a conflicting write failed (transaction conflict); retry ")
             for w in warnings)


@pytest.mark.parametrize("error", [
    mlmd_errors.AlreadyExistsError("duplicate external id"),
    mlmd_errors.InvalidArgumentError("bad property"),
    mlmd_errors.InternalError("mysql_query failed: errno: syntax error"),
    RuntimeError("Error when executing query: file is not a database"),
], ids=["already-exists", "invalid-argument", "internal-other", "corrupt-file"])
def test_errors_that_may_have_changed_the_store_or_will_not_pass_are_not_retried(error):
  calls = []

  def failing():
    calls.append(1)
    raise error

  with pytest.raises(type(error)):
    metadata.retry(failing, what="a write", base_delay=0.001)
  assert len(calls) == 1


def test_retry_returns_once_a_retryable_error_clears():
  outcomes = [mlmd_errors.InternalError("database is locked"),
              mlmd_errors.AbortedError("conflict"), "ok"]

  def flaky():
    outcome = outcomes.pop(0)
    if isinstance(outcome, Exception):
      raise outcome
    return outcome

  assert metadata.retry(flaky, what="a read", base_delay=0.001) == "ok"
  assert outcomes == []


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
