"""`LocalRun`: one KFP run of a compiled spec, executed on this machine task
by task in dependency order, recorded in ML Metadata as KFP records it.

For each task it does what KFP's driver and launcher do for a container
task: build the ExecutorInput (`executor_input`), record a RUNNING
ContainerExecution (`recorder`), run exactly the task's container command
with its placeholders resolved (`placeholders`) through a task handler in
its own working directory (`task`), then record the outputs the task wrote
and mark the execution COMPLETE, or FAILED. Which tasks run, and in which
order, comes from the task graph (`graph`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import tempfile
import time
import uuid
from typing import Mapping, Sequence

from google.protobuf import json_format, struct_pb2
from kfp.pipeline_spec import pipeline_spec_pb2
from ml_metadata.proto import metadata_store_pb2

from ckptflow.base import metadata, storage
from ckptflow.kubeflow import spec as spec_lib
from ckptflow.kubeflow.launcher import executor_input as executor_input_lib
from ckptflow.kubeflow.launcher import graph, placeholders
from ckptflow.kubeflow.launcher import task as task_lib
from ckptflow.kubeflow.launcher.errors import LauncherError, TaskFailed
from ckptflow.kubeflow.launcher.recorder import RunRecorder
from ckptflow.base.metadata import Store

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TaskResult:
  task: str
  execution_id: int
  state: str
  outputs: Mapping[str, int]  # output key -> artifact id
  log_path: str


class LocalRun:
  """One KFP run of a compiled spec, executed here, recorded in MLMD.

  Not thread-safe. Tasks run one at a time, in dependency order.
  """

  def __init__(self, loaded: spec_lib.LoadedSpec, *, pipeline_root: str, store_target: str,
               run_id: str | None = None, parameters: Mapping[str, str] | None = None,
               env: Mapping[str, str] | None = None, task_timeout: float | None = None,
               retries: bool = True, handler: task_lib.TaskHandler | None = None,
               work_root: str | None = None):
    self._loaded = loaded
    self._spec = loaded.spec
    self._deployment = loaded.deployment()
    self._pipeline_name = self._spec.pipeline_info.name
    self.run_id = run_id or str(uuid.uuid4())
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.run_id):
      raise LauncherError(f"run id {self.run_id!r} is invalid. Expected letters, "
                          "digits, '_', '.', '-'")
    root = pipeline_root or loaded.default_pipeline_root
    if not root:
      raise LauncherError("no pipeline root: pass --pipeline-root DIR (the spec "
                          "has no default)")
    self.pipeline_root = root
    self.run_root = f"{root.rstrip('/')}/{self._pipeline_name}/{self.run_id}"
    # Each task attempt's own working directory (its pod's local disk):
    # under the run root on a local root, in a local temporary directory
    # when the root is a bucket (tasks then share only the bucket and MLMD).
    self.work_root = work_root or (
        tempfile.mkdtemp(prefix=f"ckptflow-launcher-{self.run_id}-")
        if storage.is_remote(root) else self.run_root)
    self._store_target = store_target
    self._store = metadata.open_store(store_target)
    self._recorder = RunRecorder(self._store, pipeline_name=self._pipeline_name,
                                 run_id=self.run_id, run_root=self.run_root)
    self._env = dict(env or {})
    self._handler = handler or task_lib.SubprocessTaskHandler(timeout=task_timeout)
    self._retries = retries
    self._parameters = self._resolve_pipeline_parameters(parameters or {})

  # -- public ---------------------------------------------------------------

  @property
  def store(self) -> Store:
    return self._store

  def task_order(self) -> list[str]:
    """Task names in dependency order (ties by name)."""
    return graph.task_order(self._spec.root.dag.tasks)

  def run(self, tasks: Sequence[str] | None = None) -> list[TaskResult]:
    """Runs `tasks` (default: all) in dependency order; stops at the first
    failure (TaskFailed)."""
    order = self.task_order()
    if tasks:
      unknown = [t for t in tasks if t not in order]
      if unknown:
        raise LauncherError(f"task {unknown[0]!r} is not in the spec. Expected one "
                            f"of: {', '.join(order)}")
      order = [t for t in order if t in tasks]
    self._check_supported(order)
    self._recorder.open()
    dag_id = self._recorder.root_dag(self._parameters)
    results = []
    try:
      for name in order:
        results.append(self._run_with_retries(name, dag_id))
    except TaskFailed:
      self._recorder.close_dag(dag_id, metadata_store_pb2.Execution.FAILED)
      raise
    if all(self._recorder.completed(task) for task in self.task_order()):
      self._recorder.close_dag(dag_id, metadata_store_pb2.Execution.COMPLETE)
    return results

  # -- the spec -------------------------------------------------------------

  def _resolve_pipeline_parameters(self, given: Mapping[str, str]) -> dict[str, struct_pb2.Value]:
    declared = self._spec.root.input_definitions.parameters
    unknown = sorted(set(given) - set(declared))
    if unknown:
      raise LauncherError(f"parameter {unknown[0]!r} is not a pipeline parameter. "
                          f"Expected one of: {', '.join(sorted(declared)) or 'none'}")
    values = {}
    for name, definition in declared.items():
      if name in given:
        values[name] = spec_lib.coerce_parameter(name, given[name], definition.parameter_type)
      elif name in self._loaded.parameter_values:
        values[name] = spec_lib.coerce_parameter(
            name, self._loaded.parameter_values[name], definition.parameter_type)
      elif definition.HasField("default_value"):
        values[name] = definition.default_value
      else:
        raise LauncherError(f"pipeline parameter {name!r} has no value and no "
                            f"default: pass --param {name}=VALUE")
    return values

  def _check_supported(self, order: Sequence[str]) -> None:
    for name in order:
      executor = self._executor(name)
      kind = executor.WhichOneof("spec")
      if kind == "resolver":
        raise LauncherError(
            f"task {name!r} is a TFX Resolver node (a 'resolver' executor), which "
            "open-source KFP v2 does not run. Compile with --target kubeflow")
      if kind != "container":
        raise LauncherError(f"task {name!r} has a {kind!r} executor; this launcher "
                            "runs container tasks only")
      task = self._spec.root.dag.tasks[name]
      if task.trigger_policy.condition or task.WhichOneof("iterator"):
        raise LauncherError(f"task {name!r} has a condition or an iterator; this "
                            "launcher runs plain container tasks only")

  def _component(self, name: str) -> pipeline_spec_pb2.ComponentSpec:
    ref = self._spec.root.dag.tasks[name].component_ref.name
    if ref not in self._spec.components:
      raise LauncherError(f"task {name!r} refers to component {ref!r}, which the "
                          "spec does not define")
    return self._spec.components[ref]

  def _executor(self, name: str) -> pipeline_spec_pb2.PipelineDeploymentConfig.ExecutorSpec:
    label = self._component(name).executor_label
    if label not in self._deployment.executors:
      raise LauncherError(f"task {name!r} has executor {label!r}, which the spec's "
                          "deploymentSpec does not define")
    return self._deployment.executors[label]

  def _container(self, name: str
                 ) -> pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec:
    container = self._executor(name).container
    if not container.command and not container.args:
      raise LauncherError(f"task {name!r} has no container command")
    if not container.image:
      raise LauncherError(f"task {name!r} has no container image")
    return container

  # -- running --------------------------------------------------------------

  def _run_with_retries(self, name: str, dag_id: int) -> TaskResult:
    """Runs `name`, and again after a failure as its retryPolicy allows (KFP
    waits the policy's backoff first; here the retry starts at once)."""
    policy = self._spec.root.dag.tasks[name].retry_policy
    retries = policy.max_retry_count if self._retries else 0
    for attempt in range(retries + 1):
      try:
        return self._run_task(name, dag_id)
      except TaskFailed as e:
        if attempt == retries:
          raise
        _log.warning("%s; retry %d/%d", e, attempt + 1, retries)
    raise AssertionError("unreachable")

  def _run_task(self, name: str, dag_id: int) -> TaskResult:
    """One attempt of task `name`: a new working directory, new output URIs,
    a new execution."""
    work_dir = task_lib.attempt_dir(self.work_root, name)
    component = self._component(name)
    inputs, input_ids = executor_input_lib.inputs(
        name, self._spec.root.dag.tasks[name], component, parameters=self._parameters,
        recorder=self._recorder, run_id=self.run_id, dag_id=dag_id)
    executor_input = pipeline_spec_pb2.ExecutorInput(
        inputs=inputs, outputs=executor_input_lib.outputs(
            name, component, run_root=self.run_root, work_dir=work_dir))
    container = self._container(name)
    command = placeholders.command(container, executor_input, run_id=self.run_id,
                                   run_root=self.run_root, task=name, dag_id=dag_id)
    env = task_lib.task_env(container, run_id=self.run_id, task=name, work_dir=work_dir,
                            store_target=self._store_target, extra=self._env)
    execution = self._recorder.start_task(
        name, dag_id=dag_id, image=container.image, pod_name=env["KFP_POD_NAME"],
        pod_uid=env["KFP_POD_UID"], parameter_values=inputs.parameter_values,
        input_ids=input_ids)

    log_path = os.path.join(work_dir, "executor.log")
    with open(os.path.join(work_dir, "executor_input.json"), "w") as f:
      f.write(json_format.MessageToJson(executor_input))
    _log.info("task %s: execution %d, running %s (log: %s)", name, execution.id,
              " ".join(command[:4]), log_path)
    started = time.monotonic()
    returncode = self._handler.run(command, env, work_dir, log_path)
    elapsed = time.monotonic() - started
    if returncode != 0:
      how = (f"was killed by signal {-returncode}" if returncode < 0
             else f"exited with status {returncode}")
      self._recorder.fail_task(execution)
      raise TaskFailed(f"task {name!r} {how} after {elapsed:.0f}s; its log: {log_path}")
    try:
      executor_output = task_lib.read_executor_output(name, executor_input.outputs.output_file)
    except TaskFailed:
      self._recorder.fail_task(execution)
      raise
    outputs = self._recorder.complete_task(execution, executor_input, executor_output)
    _log.info("task %s: COMPLETE in %.0fs", name, elapsed)
    return TaskResult(task=name, execution_id=execution.id, state="COMPLETE",
                      outputs=outputs, log_path=log_path)
