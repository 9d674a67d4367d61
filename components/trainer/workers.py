"""Worker processes of a distributed training job, on this machine.

The Trainer executor runs a distributed job (`distribution = "mirrored"` or
`"multi_worker"`) in fresh processes, because a strategy must be created
before any other TensorFlow op (`distribution.py`). `WorkerGroup` starts
them with the one worker entrypoint (`python -m
ckptflow.components.trainer.worker JOB`), each multi_worker process with a
TF_CONFIG naming the cluster on 127.0.0.1 (free ports) and its own index;
on a cluster, TFJob pods or Vertex worker pools run the same entrypoint
with the TF_CONFIG they set.

`WorkerGroup.wait()` supervises them:

* all exit 0: done; all exit `EXIT_INTERRUPTED` (a signal stopped them
  after a cluster-wide save): interrupted;
* any other exit: the group has lost that worker. The others stop at
  their next collective (1-10 s) but may then linger 20-50 s in shutdown,
  so they are killed now, and `WorkerLost` names the lost worker; the
  orchestrator restarts the job, which resumes from the last registered
  checkpoint;
* SIGTERM/SIGINT to the executor is forwarded to every worker: they save
  at one agreed step and exit interrupted.

Workers are killed if the executor dies (PR_SET_PDEATHSIG), so a killed
run leaves no training process behind. Their temporary files (a non-chief's
checkpoint copies) go to one directory per group (TMPDIR), removed when the
group ends, so a killed worker leaves none behind either.

Imports no TensorFlow.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Mapping, Sequence

from ckptflow.base import storage
from ckptflow.base.errors import CkptflowError

WORKER_MODULE = "ckptflow.components.trainer.worker"
EXIT_INTERRUPTED = 3  # stopped by a signal after the cluster-wide save
EXIT_PEER_LOST = 4  # a collective failed: another worker is gone
EXIT_ERROR = 5  # the worker failed; its message is in its error file
# Tests kill one chosen worker with a fault point (base/faults.py): only
# that worker keeps CKPTFLOW_FAULT in its environment.
FAULT_WORKER_ENV = "CKPTFLOW_FAULT_WORKER"


class WorkerLost(CkptflowError):
  """A training worker died; the job stopped and can be rerun to resume."""

  exit_code = 1


class WorkerFailed(CkptflowError):
  """A training worker stopped on an error of its own (its message)."""


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
  """`count` TCP ports free on `host` now (bound to port 0, then released)."""
  sockets = []
  try:
    for _ in range(count):
      s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
      s.bind((host, 0))
      sockets.append(s)
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def _die_with_parent() -> None:
  """In the child, before exec: SIGKILL when the parent dies (Linux)."""
  try:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except OSError:
    pass


@dataclasses.dataclass
class Outcome:
  """How a group ended: "finished" or "interrupted" (by `signum`)."""

  state: str
  signum: int | None = None


class WorkerGroup:
  """The processes of one distributed training job on this machine."""

  def __init__(self, job_path: str, *, kind: str, workers: int,
               env: Mapping[str, str] | None = None, poll_seconds: float = 0.2,
               command: Sequence[str] | None = None):
    """`command`: the program each worker runs, given the job path and
    `--error-file` (default: this interpreter with the worker module)."""
    self._job_path = job_path
    self._command = list(command or [sys.executable, "-m", WORKER_MODULE])
    self._kind = kind
    self._count = workers if kind == "multi_worker" else 1
    self._env = dict(os.environ if env is None else env)
    self._poll = poll_seconds
    self._procs: list[subprocess.Popen] = []
    self._forwarded: int | None = None
    self._scratch: str | None = None

  @property
  def pids(self) -> list[int]:
    return [p.pid for p in self._procs]

  def error_path(self, index: int) -> str:
    return f"{self._job_path}.worker-{index}.error"

  def start(self) -> "WorkerGroup":
    ports = free_ports(self._count) if self._kind == "multi_worker" else []
    self._scratch = tempfile.mkdtemp(prefix="ckptflow-workers-")
    fault_worker = self._env.get(FAULT_WORKER_ENV)
    for index in range(self._count):
      env = dict(self._env)
      env.setdefault("TF_USE_LEGACY_KERAS", "1")
      env["TMPDIR"] = self._scratch
      if self._kind == "multi_worker":
        env["TF_CONFIG"] = tf_config(ports, index)
      else:
        env.pop("TF_CONFIG", None)
      if fault_worker is not None and fault_worker != str(index):
        env.pop("CKPTFLOW_FAULT", None)
      self._procs.append(subprocess.Popen(
          [*self._command, self._job_path,
           "--error-file", self.error_path(index)],
          env=env, preexec_fn=_die_with_parent))
    return self

  def wait(self) -> Outcome:
    """Blocks until every worker has exited; see the module docstring.

    Raises:
      WorkerLost: a worker died (the others are killed).
      WorkerFailed: a worker stopped on an error of its own.
    """
    restore = self._forward_signals()
    try:
      while True:
        codes = [p.poll() for p in self._procs]
        failed = [i for i, c in enumerate(codes)
                  if c is not None and c not in (0, EXIT_INTERRUPTED)]
        if failed:
          self._fail(failed, codes)
        if all(c is not None for c in codes):
          if all(c == EXIT_INTERRUPTED for c in codes):
            return Outcome("interrupted", self._forwarded)
          if all(c == 0 for c in codes):
            return Outcome("finished")
          # Some finished, some interrupted: a stop that reached part of
          # the group only; nothing is lost, rerunning resumes.
          return Outcome("interrupted", self._forwarded)
        time.sleep(self._poll)
    finally:
      restore()
      self.kill()

  def kill(self) -> None:
    """SIGKILLs every worker still running, reaps them, and removes their
    temporary directory."""
    for p in self._procs:
      if p.poll() is None:
        p.kill()
    for p in self._procs:
      p.wait()
    if self._scratch:
      storage.remove_tree(self._scratch, (tempfile.gettempdir(),))
      self._scratch = None

  def _fail(self, failed: Sequence[int], codes: Sequence[int | None]) -> None:
    # The lost worker is the one that did not merely notice a lost peer.
    own = [i for i in failed if codes[i] != EXIT_PEER_LOST]
    index = (own or list(failed))[0]
    code = codes[index]
    self.kill()
    total = len(self._procs)
    who = f"training worker {index} of {total} (pid {self._procs[index].pid})"
    if code == EXIT_ERROR:
      message = _read(self.error_path(index)) or "an error (see its log above)"
      raise WorkerFailed(f"{who} failed: {message}")
    if code is not None and code < 0:
      cause = f"was killed by {signal.Signals(-code).name}"
    elif code == EXIT_PEER_LOST:
      cause = "lost contact with the other workers"
    else:
      cause = f"exited with status {code}"
    others = "the other workers were stopped; " if total > 1 else ""
    raise WorkerLost(f"{who} {cause}; {others}rerun to resume from the last registered "
                     "checkpoint")

  def _forward_signals(self):
    if threading.current_thread() is not threading.main_thread():
      return lambda: None

    def forward(signum, frame):
      del frame
      self._forwarded = signum
      for p in self._procs:
        if p.poll() is None:
          p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}

    def restore():
      for s, handler in previous.items():
        signal.signal(s, handler)
    return restore


def tf_config(ports: Sequence[int], index: int, host: str = "127.0.0.1") -> str:
  """The TF_CONFIG of worker `index` of a cluster on `host`:`ports`."""
  return json.dumps({"cluster": {"worker": [f"{host}:{p}" for p in ports]},
                     "task": {"type": "worker", "index": index}})


def _read(path: str) -> str:
  try:
    with open(path, encoding="utf-8") as f:
      return " ".join(f.read().split())
  except OSError:
    return ""
