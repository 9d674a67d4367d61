"""WorkerGroup with real processes: a lost worker is named, the others are
killed at once, signals reach every worker. The processes are small Python
programs standing in for training workers (no TensorFlow)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pytest

from ckptflow.components.trainer import workers
from ckptflow.components.trainer.workers import (EXIT_ERROR, EXIT_INTERRUPTED, EXIT_PEER_LOST,
                                                 WorkerFailed, WorkerGroup, WorkerLost)

# A worker: reports its TF_CONFIG index and pid, then behaves per its index.
PROGRAM = r"""
import json, os, signal, sys, time
job, _, error_file = sys.argv[1:4]
index = json.loads(os.environ.get("TF_CONFIG", '{"task": {"index": 0}}'))["task"]["index"]
plan = json.load(open(job))[str(index)]
open(f"{job}.{index}.pid", "w").write(str(os.getpid()))
open(f"{job}.{index}.tmpdir", "w").write(os.environ["TMPDIR"])
open(os.path.join(os.environ["TMPDIR"], f"scratch-{index}"), "w").write("x")
stop = []
signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))
if plan == "kill-self":
  time.sleep(0.5); os.kill(os.getpid(), signal.SIGKILL)
if plan == "error":
  open(error_file, "w").write("config: the module is broken"); sys.exit(%d)
if plan == "peer-lost":
  time.sleep(0.2); sys.exit(%d)
deadline = time.time() + 60
while time.time() < deadline and not stop:
  time.sleep(0.05)
sys.exit(%d if stop else 0)
""" % (EXIT_ERROR, EXIT_PEER_LOST, EXIT_INTERRUPTED)


def group(tmp_path, plan: dict, count: int, poll: float = 0.2) -> WorkerGroup:
  job = tmp_path / "job.json"
  job.write_text(json.dumps(plan))
  program = tmp_path / "worker.py"
  program.write_text(PROGRAM)
  return WorkerGroup(str(job), kind="multi_worker", workers=count,
                     command=[sys.executable, str(program)], poll_seconds=poll)


def test_a_killed_worker_is_named_and_the_others_are_stopped_at_once(tmp_path):
  g = group(tmp_path, {"0": "wait", "1": "kill-self", "2": "wait"}, 3).start()
  with pytest.raises(WorkerLost, match=r"^training worker 1 of 3 \(pid \d+\) was killed by "
                     r"SIGKILL; the other workers were stopped; rerun to resume"):
    g.wait()
  # The survivors (which would wait a minute) were killed, not waited for,
  # and reaped: none is left running.
  assert [p.returncode for p in g._procs] == [-signal.SIGKILL] * 3
  for pid in g.pids:
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)
  # Their temporary files went with them: one directory for the group.
  [scratch] = {(tmp_path / f"job.json.{i}.tmpdir").read_text() for i in range(3)
               if (tmp_path / f"job.json.{i}.tmpdir").exists()}
  assert not os.path.exists(scratch)


def test_a_worker_that_only_lost_its_peer_is_not_the_one_named(tmp_path):
  # Worker 0 exits first, noticing a lost peer; worker 1 was killed. Both
  # are gone at the group's first look (a slow poll): worker 1 is named.
  g = group(tmp_path, {"0": "peer-lost", "1": "kill-self"}, 2, poll=3.0).start()
  with pytest.raises(WorkerLost, match="training worker 1 of 2"):
    g.wait()


def test_a_worker_error_is_reported_with_its_own_message(tmp_path):
  g = group(tmp_path, {"0": "wait", "1": "error"}, 2).start()
  with pytest.raises(WorkerFailed, match="worker 1 of 2 .* failed: config: the module is broken"):
    g.wait()


def test_sigterm_to_the_executor_reaches_every_worker_and_ends_interrupted(tmp_path):
  g = group(tmp_path, {"0": "wait", "1": "wait"}, 2).start()
  pid_files = [tmp_path / f"job.json.{i}.pid" for i in range(2)]
  while not all(p.exists() for p in pid_files):
    time.sleep(0.05)
  signal.setitimer(signal.ITIMER_REAL, 0.3)
  previous = signal.signal(signal.SIGALRM, lambda s, f: os.kill(os.getpid(), signal.SIGTERM))
  try:
    outcome = g.wait()
  finally:
    signal.signal(signal.SIGALRM, previous)
  assert outcome.state == "interrupted" and outcome.signum == signal.SIGTERM


def test_each_worker_gets_its_own_tf_config_on_free_loopback_ports():
  ports = workers.free_ports(2)
  assert len(set(ports)) == 2
  config = json.loads(workers.tf_config(ports, 1))
  assert config == {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                    "task": {"type": "worker", "index": 1}}
