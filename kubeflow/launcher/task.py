"""A task's "pod" on this machine: its working directory, its environment,
its process, and the ExecutorOutput it leaves behind.

`TaskHandler` is the small interface the run uses to start a task's
container command (kfp.local's task handler); `SubprocessTaskHandler` runs
it as a subprocess in its own process group, `python` resolving to this
interpreter (the stand-in for the image, which `kubeflow/Dockerfile` builds
from the same lock file).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from typing import Mapping, Protocol, Sequence

from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from ckptflow.base import metadata
from ckptflow.kubeflow.launcher.errors import TaskFailed

WORK_DIR_NAME = ".launcher"


class TaskHandler(Protocol):
  """Runs one attempt of a task's container command to its end."""

  def run(self, command: Sequence[str], env: Mapping[str, str], work_dir: str,
          log_path: str) -> int:
    """Runs `command` in `work_dir` with exactly `env`, its output appended
    to `log_path`; returns its exit status, negative if a signal killed it."""
    ...


class SubprocessTaskHandler:
  """Runs the task's process in its own process group; a SIGTERM or Ctrl-C
  to the launcher is passed on to it, as a kubelet stops a pod. After
  `timeout` seconds the process group is killed.

  Installs a SIGTERM handler while a task runs: call `run` from the main
  thread. Not thread-safe.
  """

  def __init__(self, timeout: float | None = None):
    self._timeout = timeout
    self._child: subprocess.Popen | None = None

  def run(self, command: Sequence[str], env: Mapping[str, str], work_dir: str,
          log_path: str) -> int:
    with open(log_path, "ab") as log:
      self._child = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT,
                                     env=dict(env), cwd=work_dir, start_new_session=True)
    with open(os.path.join(work_dir, "pid"), "w") as f:
      f.write(str(self._child.pid))
    previous = signal.signal(signal.SIGTERM, self._forward_sigterm)
    try:
      return self._child.wait(timeout=self._timeout)
    except subprocess.TimeoutExpired:
      os.killpg(self._child.pid, signal.SIGKILL)
      return self._child.wait()
    except KeyboardInterrupt:
      os.killpg(self._child.pid, signal.SIGTERM)
      return self._child.wait()
    finally:
      signal.signal(signal.SIGTERM, previous)
      self._child = None

  def _forward_sigterm(self, signum, frame) -> None:
    if self._child is not None:
      os.killpg(self._child.pid, signal.SIGTERM)


def attempt_dir(run_root: str, task: str) -> str:
  """A new, empty working directory for the next attempt of `task`:
  RUN_ROOT/.launcher/TASK/attempt-N."""
  base = os.path.join(run_root, WORK_DIR_NAME, task)
  os.makedirs(base, exist_ok=True)
  attempt = 1 + sum(1 for d in os.listdir(base) if d.startswith("attempt-"))
  path = os.path.join(base, f"attempt-{attempt}")
  os.makedirs(path)
  return path


def task_env(container: pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec, *,
             run_id: str, task: str, work_dir: str, store_target: str,
             extra: Mapping[str, str]) -> dict[str, str]:
  """The environment of the task's process: this one's, as the image sets it,
  with the store as a deployment sets it, KFP's pod variables, the
  container's own `env`, then `extra`."""
  env = dict(os.environ)
  # The image's `python` is this interpreter here (same lock file).
  env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
  env["TF_USE_LEGACY_KERAS"] = "1"  # as the image sets it
  env[metadata.METADATA_ENV] = store_target
  env["KFP_POD_NAME"] = f"{run_id}-{task}-{os.path.basename(work_dir)}".lower()
  env["KFP_POD_UID"] = str(uuid.uuid4())
  for variable in container.env:
    env[variable.name] = variable.value
  env.update(extra)
  return env


def read_executor_output(task: str, output_file: str) -> pipeline_spec_pb2.ExecutorOutput:
  """The ExecutorOutput the task wrote to `output_file`; empty if it wrote
  none (a task may have nothing to add to its provisioned outputs).

  Raises:
    TaskFailed: the file is not an ExecutorOutput.
  """
  executor_output = pipeline_spec_pb2.ExecutorOutput()
  if os.path.isfile(output_file):
    with open(output_file) as f:
      try:
        json_format.Parse(f.read(), executor_output, ignore_unknown_fields=True)
      except json_format.ParseError as e:
        raise TaskFailed(f"task {task!r} wrote an unreadable executor output "
                         f"{output_file!r}: {str(e).splitlines()[0]}") from e
  return executor_output
