"""Runs a compiled KFP v2 pipeline spec on this machine, task by task.

No Kubeflow cluster runs here, so this does, for each task of the spec in
dependency order, what KFP's driver and launcher do for a container task:

1. resolve the task's inputs: parameters (constants, with KFP's
   `{{$.pipeline_job_uuid}}`-style placeholders replaced; pipeline
   parameters; upstream output parameters) and artifacts (the upstream
   task's recorded output, with its MLMD id as the artifact name, its URI,
   its custom properties as metadata);
2. provision the outputs: `PIPELINE_ROOT/<pipeline>/<run_id>/<task>/<uuid>/<key>`
   and an output metadata file;
3. record a `system.ContainerExecution` (RUNNING, custom property
   `task_name`, INPUT events) in the run's `system.Pipeline` and
   `system.PipelineRun` contexts;
4. run exactly the task's container `command` + `args` from the spec, with
   `{{$}}` replaced by the `ExecutorInput` JSON, as a subprocess in its own
   process group (its "pod"), `python` resolving to this interpreter (the
   stand-in for the image, which `kubeflow/Dockerfile` builds from the same
   lock file), CKPTFLOW_METADATA set to the store as a deployment sets it;
5. read the `ExecutorOutput` the task wrote, record its output artifacts
   (type named by the schema title, e.g. `tfx.Model`; metadata as custom
   properties; state LIVE; OUTPUT events keyed by output name) and mark the
   execution COMPLETE, or FAILED if the process failed or was killed.

A task that fails is run again as its `retryPolicy` allows (the compiled
Trainer task has one), each time as a new attempt with fresh output URIs;
KFP waits the policy's backoff first, this launcher does not.

Not done, as on open-source KFP: `resolver` and `importer` executors are
refused; container `lifecycle` hooks (Vertex's pre-cache check) are not
run; there is no caching (every task runs). Running one task again in an
existing run (`tasks=[...]`, `--task`) takes its inputs from the latest
COMPLETE execution of each upstream task of that run, as a retry does.

  python -m ckptflow.kubeflow.launcher SPEC --pipeline-root DIR \\
      --metadata mysql://root@127.0.0.1:3306/db [--run-id ID] [--task NAME] \\
      [--param data_root=/path/to/csvs]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from typing import Mapping, Sequence

import yaml
from google.protobuf import json_format, struct_pb2
from kfp.pipeline_spec import pipeline_spec_pb2
from ml_metadata import errors as mlmd_errors
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from ckptflow.kubeflow import spec as spec_lib
from ckptflow.base import metadata
from ckptflow.base.errors import CkptflowError
from ckptflow.base.metadata import query, retry

_log = logging.getLogger(__name__)

# KFP's MLMD names (backend/src/v2/metadata/client.go).
PIPELINE_CONTEXT_TYPE = "system.Pipeline"
RUN_CONTEXT_TYPE = "system.PipelineRun"
CONTAINER_EXECUTION_TYPE = "system.ContainerExecution"
DAG_EXECUTION_TYPE = "system.DAGExecution"
WORK_DIR_NAME = ".launcher"

_PLACEHOLDER_RE = re.compile(r"\{\{\$[^}]*\}\}")


class LauncherError(CkptflowError):
  """The spec cannot be run as asked (unsupported feature, missing input)."""


class TaskFailed(LauncherError):
  """A task's process failed or was killed; its execution is FAILED."""

  exit_code = 1


@dataclasses.dataclass(frozen=True)
class TaskResult:
  task: str
  execution_id: int
  state: str
  outputs: Mapping[str, int]  # output key -> artifact id
  log_path: str


def _task_name(execution: metadata_store_pb2.Execution) -> str:
  value = execution.custom_properties.get("task_name")
  return value.string_value if value is not None else ""


# --- value conversions (KFP's metadata <-> MLMD values) ---------------------


def _mlmd_value(value: struct_pb2.Value) -> metadata_store_pb2.Value | None:
  kind = value.WhichOneof("kind")
  result = metadata_store_pb2.Value()
  if kind == "string_value":
    result.string_value = value.string_value
  elif kind == "number_value":
    result.double_value = value.number_value
  elif kind == "bool_value":
    result.bool_value = value.bool_value
  elif kind in ("struct_value", "list_value"):
    wrapped = struct_pb2.Struct()
    wrapped.update({"value": json_format.MessageToDict(value)} if kind == "list_value"
                   else json_format.MessageToDict(value))
    result.struct_value.CopyFrom(wrapped)
  else:
    return None
  return result


def _struct_value(value: metadata_store_pb2.Value) -> struct_pb2.Value | None:
  kind = value.WhichOneof("value")
  result = struct_pb2.Value()
  if kind == "string_value":
    result.string_value = value.string_value
  elif kind in ("int_value", "double_value"):
    result.number_value = float(getattr(value, kind))
  elif kind == "bool_value":
    result.bool_value = value.bool_value
  elif kind == "struct_value":
    result.struct_value.CopyFrom(value.struct_value)
  else:
    return None
  return result


def _schema_title(artifact_type: pipeline_spec_pb2.ArtifactTypeSchema) -> str:
  kind = artifact_type.WhichOneof("kind")
  if kind == "schema_title":
    return artifact_type.schema_title
  if kind == "instance_schema":
    title = (yaml.safe_load(artifact_type.instance_schema) or {}).get("title")
    if title:
      return str(title)
  raise LauncherError(f"artifact type {json_format.MessageToJson(artifact_type)!r} "
                      "has no schema title")


# --- the run -----------------------------------------------------------------


class LocalRun:
  """One KFP run of a compiled spec, executed here, recorded in MLMD.

  Not thread-safe. Tasks run one at a time, in dependency order.
  """

  def __init__(self, loaded: spec_lib.LoadedSpec, *, pipeline_root: str, store_target: str,
               run_id: str | None = None, parameters: Mapping[str, str] | None = None,
               env: Mapping[str, str] | None = None, task_timeout: float | None = None,
               retries: bool = True):
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
    self._store_target = store_target
    self._store = metadata.open_store(store_target)
    self._env = dict(env or {})
    self._timeout = task_timeout
    self._retries = retries
    self._parameters = self._resolve_pipeline_parameters(parameters or {})
    self._child: subprocess.Popen | None = None

  # -- public ---------------------------------------------------------------

  @property
  def store(self) -> metadata_store.MetadataStore:
    return self._store

  def task_order(self) -> list[str]:
    """Task names in dependency order (ties by name)."""
    tasks = self._spec.root.dag.tasks
    upstream = {name: set(task.dependent_tasks) | {
        spec.task_output_artifact.producer_task
        for spec in task.inputs.artifacts.values()
        if spec.WhichOneof("kind") == "task_output_artifact"} | {
        spec.task_output_parameter.producer_task
        for spec in task.inputs.parameters.values()
        if spec.WhichOneof("kind") == "task_output_parameter"}
                for name, task in tasks.items()}
    for name, needs in upstream.items():
      unknown = needs - set(tasks)
      if unknown:
        raise LauncherError(f"task {name!r} depends on unknown task {sorted(unknown)[0]!r}")
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(tasks):
      ready = sorted(n for n in tasks if n not in done and upstream[n] <= done)
      if not ready:
        raise LauncherError("the spec's tasks depend on each other in a cycle: "
                            f"{', '.join(sorted(set(tasks) - done))}")
      order.append(ready[0])
      done.add(ready[0])
    return order

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
    contexts = self._contexts()
    dag_id = self._root_dag(contexts)
    results = []
    try:
      for name in order:
        results.append(self._run_with_retries(name, contexts, dag_id))
    except TaskFailed:
      self._close_dag(dag_id, metadata_store_pb2.Execution.FAILED)
      raise
    if all(self._completed(task, contexts) for task in self.task_order()):
      self._close_dag(dag_id, metadata_store_pb2.Execution.COMPLETE)
    return results

  # -- setup ----------------------------------------------------------------

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

  def _context_type_id(self, name: str) -> int:
    return retry(lambda: self._store.put_context_type(metadata_store_pb2.ContextType(name=name)),
                 what=f"registering context type {name}")

  def _contexts(self) -> list[metadata_store_pb2.Context]:
    """The run's KFP contexts (pipeline, run), created if needed."""
    found = []
    for type_name, name, props in (
        (PIPELINE_CONTEXT_TYPE, self._pipeline_name, {}),
        (RUN_CONTEXT_TYPE, self.run_id, {"pipeline_root": self.run_root,
                                          "namespace": "", "resource_name": self.run_id,
                                          "store_session_info": ""})):
      type_id = self._context_type_id(type_name)
      context = self._store.get_context_by_type_and_name(type_name, name)
      if context is None:
        context = metadata_store_pb2.Context(type_id=type_id, name=name)
        for key, value in props.items():
          context.custom_properties[key].string_value = value
        try:
          [context.id] = retry(lambda: self._store.put_contexts([context]),
                               what=f"creating context {name}")
        except mlmd_errors.AlreadyExistsError:  # a concurrent launcher made it first
          context = self._store.get_context_by_type_and_name(type_name, name)
          if context is None:
            raise
      found.append(context)
    pipeline_context, run_context = found
    parents = query(lambda: self._store.get_parent_contexts_by_context(run_context.id),
                    what="reading the run's parent context")
    if not parents:
      retry(lambda: self._store.put_parent_contexts([metadata_store_pb2.ParentContext(
          child_id=run_context.id, parent_id=pipeline_context.id)]),
            what="linking the run to its pipeline")
    return found

  def _execution_type_id(self, name: str) -> int:
    return retry(lambda: self._store.put_execution_type(
        metadata_store_pb2.ExecutionType(name=name)), what=f"registering {name}")

  def _root_dag(self, contexts: list[metadata_store_pb2.Context]) -> int:
    type_id = self._execution_type_id(DAG_EXECUTION_TYPE)
    existing = [e for e in query(lambda: self._store.get_executions_by_context(contexts[1].id),
                                 what="reading the run's executions")
                if e.type_id == type_id and "parent_dag_id" not in e.custom_properties]
    if existing:
      return existing[0].id
    execution = metadata_store_pb2.Execution(
        type_id=type_id, last_known_state=metadata_store_pb2.Execution.RUNNING)
    execution.custom_properties["display_name"].string_value = ""
    execution.custom_properties["task_name"].string_value = ""
    inputs = execution.custom_properties["inputs"].struct_value
    for name, value in self._parameters.items():
      inputs.fields[name].CopyFrom(value)
    execution_id, _, _ = retry(lambda: self._store.put_execution(
        execution, [], contexts, force_reuse_context=True), what="recording the run")
    return execution_id

  def _run_with_retries(self, name: str, contexts, dag_id: int) -> TaskResult:
    """Runs `name`, and again after a failure as its retryPolicy allows (KFP
    waits the policy's backoff first; here the retry starts at once)."""
    policy = self._spec.root.dag.tasks[name].retry_policy
    retries = policy.max_retry_count if self._retries else 0
    for attempt in range(retries + 1):
      try:
        return self._run_task(name, contexts, dag_id)
      except TaskFailed as e:
        if attempt == retries:
          raise
        _log.warning("%s; retry %d/%d", e, attempt + 1, retries)
    raise AssertionError("unreachable")

  def _close_dag(self, dag_id: int, state: int) -> None:
    [dag] = retry(lambda: self._store.get_executions_by_id([dag_id]), what="reading the run")
    dag.last_known_state = state
    retry(lambda: self._store.put_executions([dag]), what="closing the run")

  def _completed(self, task: str, contexts) -> bool:
    try:
      self._latest_complete(task, contexts)
    except LauncherError:
      return False
    return True

  # -- inputs -----------------------------------------------------------------

  def _latest_complete(self, task: str, contexts) -> metadata_store_pb2.Execution:
    type_id = self._execution_type_id(CONTAINER_EXECUTION_TYPE)
    done = [e for e in query(lambda: self._store.get_executions_by_context(contexts[1].id),
                             what="reading the run's executions")
            if e.type_id == type_id and _task_name(e) == task
            and e.last_known_state == metadata_store_pb2.Execution.COMPLETE]
    if not done:
      raise LauncherError(f"upstream task {task!r} has not completed in run "
                          f"{self.run_id!r}: run it first")
    return max(done, key=lambda e: e.id)

  def _outputs_of(self, execution_id: int) -> dict[str, metadata_store_pb2.Artifact]:
    events = query(lambda: self._store.get_events_by_execution_ids([execution_id]),
                   what="reading a task's outputs")
    outputs = {e.path.steps[0].key: e.artifact_id for e in events
               if e.type == metadata_store_pb2.Event.OUTPUT and e.path.steps}
    artifacts = {a.id: a for a in query(
        lambda: self._store.get_artifacts_by_id(list(outputs.values())),
        what="reading a task's output artifacts")} if outputs else {}
    return {key: artifacts[artifact_id] for key, artifact_id in outputs.items()}

  def _placeholder_value(self, text: str, name: str, dag_id: int) -> str:
    """KFP's driver replaces these when they are a whole constant value."""
    return {
        "{{$.pipeline_job_name}}": self.run_id,
        "{{$.pipeline_job_resource_name}}": self.run_id,
        "{{$.pipeline_job_uuid}}": self.run_id,
        "{{$.pipeline_task_name}}": name,
        "{{$.pipeline_task_uuid}}": str(dag_id),
    }.get(text, text)

  def _inputs(self, name: str, contexts, dag_id: int) -> tuple[
      pipeline_spec_pb2.ExecutorInput.Inputs, dict[str, list[int]]]:
    task = self._spec.root.dag.tasks[name]
    definitions = self._component(name).input_definitions
    inputs = pipeline_spec_pb2.ExecutorInput.Inputs()
    for key, spec in task.inputs.parameters.items():
      kind = spec.WhichOneof("kind")
      if kind == "runtime_value":
        value = struct_pb2.Value()
        value.CopyFrom(spec.runtime_value.constant)
        if value.WhichOneof("kind") == "string_value":
          value.string_value = self._placeholder_value(value.string_value, name, dag_id)
      elif kind == "component_input_parameter":
        if spec.component_input_parameter not in self._parameters:
          raise LauncherError(f"task {name!r} reads pipeline parameter "
                              f"{spec.component_input_parameter!r}, which is not declared")
        value = self._parameters[spec.component_input_parameter]
      elif kind == "task_output_parameter":
        producer = self._latest_complete(spec.task_output_parameter.producer_task, contexts)
        outputs = producer.custom_properties["outputs"].struct_value.fields
        key_out = spec.task_output_parameter.output_parameter_key
        if key_out not in outputs:
          raise LauncherError(f"task {name!r} reads output parameter {key_out!r} of "
                              f"{spec.task_output_parameter.producer_task!r}, which it "
                              "did not write")
        value = outputs[key_out]
      else:
        raise LauncherError(f"task {name!r} input parameter {key!r} is a {kind!r}; "
                            "this launcher does not support it")
      inputs.parameter_values[key].CopyFrom(value)
    input_ids: dict[str, list[int]] = {}
    for key, spec in task.inputs.artifacts.items():
      if spec.WhichOneof("kind") != "task_output_artifact":
        raise LauncherError(f"task {name!r} input artifact {key!r} does not come from "
                            "an upstream task; this launcher does not support it")
      producer_task = spec.task_output_artifact.producer_task
      producer = self._latest_complete(producer_task, contexts)
      outputs = self._outputs_of(producer.id)
      output_key = spec.task_output_artifact.output_artifact_key
      if output_key not in outputs:
        raise LauncherError(f"task {producer_task!r} recorded no output {output_key!r} "
                            f"that task {name!r} reads")
      artifact = outputs[output_key]
      runtime = inputs.artifacts[key].artifacts.add()
      runtime.name = str(artifact.id)  # KFP: the MLMD id, as text
      runtime.uri = artifact.uri
      runtime.type.CopyFrom(definitions.artifacts[key].artifact_type)
      for prop, value in list(artifact.properties.items()) + list(
          artifact.custom_properties.items()):
        converted = _struct_value(value)
        if converted is not None:
          runtime.metadata.fields[prop].CopyFrom(converted)
      input_ids.setdefault(key, []).append(artifact.id)
    return inputs, input_ids

  def _outputs(self, name: str, task_dir: str) -> pipeline_spec_pb2.ExecutorInput.Outputs:
    definitions = self._component(name).output_definitions
    outputs = pipeline_spec_pb2.ExecutorInput.Outputs()
    salt = str(uuid.uuid4())
    for key, definition in definitions.artifacts.items():
      runtime = outputs.artifacts[key].artifacts.add()
      runtime.uri = f"{self.run_root}/{name}/{salt}/{key}"
      runtime.type.CopyFrom(definition.artifact_type)
    for key in definitions.parameters:
      outputs.parameters[key].output_file = os.path.join(task_dir, "outputs", key)
    # KFP's launcher: /tmp/kfp_outputs/output_metadata.json in the pod.
    outputs.output_file = os.path.join(task_dir, "kfp_outputs", "output_metadata.json")
    return outputs

  # -- running ----------------------------------------------------------------

  def _command(self, name: str, executor_input: pipeline_spec_pb2.ExecutorInput,
               dag_id: int) -> list[str]:
    container = self._executor(name).container
    if not container.command and not container.args:
      raise LauncherError(f"task {name!r} has no container command")
    if not container.image:
      raise LauncherError(f"task {name!r} has no container image")
    as_json = json_format.MessageToJson(executor_input)
    inputs = executor_input.inputs
    outputs = executor_input.outputs

    def replace(match: re.Match) -> str:
      text = match.group(0)
      if text == "{{$}}":
        return as_json
      if text in ("{{$.outputs.output_file}}", "{{$.outputMetadataUri}}"):
        return outputs.output_file
      if text == "{{$.pipeline_root}}":
        return self.run_root
      simple = self._placeholder_value(text, name, dag_id)
      if simple != text:
        return simple
      found = re.fullmatch(r"\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}", text)
      if found and found.group(1) in inputs.parameter_values:
        value = spec_lib.value_to_python(inputs.parameter_values[found.group(1)])
        return value if isinstance(value, str) else json.dumps(value)
      found = re.fullmatch(r"\{\{\$\.(inputs|outputs)\.artifacts\['([^']+)'\]\.uri\}\}", text)
      if found:
        side = inputs if found.group(1) == "inputs" else outputs
        if found.group(2) in side.artifacts:
          return side.artifacts[found.group(2)].artifacts[0].uri
      raise LauncherError(f"task {name!r} uses placeholder {text!r}, which this "
                          "launcher does not resolve")

    return [_PLACEHOLDER_RE.sub(replace, part)
            for part in list(container.command) + list(container.args)]

  def _task_env(self, name: str, attempt_dir: str) -> dict[str, str]:
    container = self._executor(name).container
    env = dict(os.environ)
    # The image's `python` is this interpreter here (same lock file).
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["TF_USE_LEGACY_KERAS"] = "1"  # as the image sets it
    env[metadata.METADATA_ENV] = self._store_target
    env["KFP_POD_NAME"] = f"{self.run_id}-{name}-{os.path.basename(attempt_dir)}".lower()
    env["KFP_POD_UID"] = str(uuid.uuid4())
    for variable in container.env:
      env[variable.name] = variable.value
    env.update(self._env)
    return env

  def _attempt_dir(self, name: str) -> str:
    base = os.path.join(self.run_root, WORK_DIR_NAME, name)
    os.makedirs(base, exist_ok=True)
    attempt = 1 + sum(1 for d in os.listdir(base) if d.startswith("attempt-"))
    path = os.path.join(base, f"attempt-{attempt}")
    os.makedirs(path)
    return path

  def _run_task(self, name: str, contexts, dag_id: int) -> TaskResult:
    attempt_dir = self._attempt_dir(name)
    inputs, input_ids = self._inputs(name, contexts, dag_id)
    executor_input = pipeline_spec_pb2.ExecutorInput(
        inputs=inputs, outputs=self._outputs(name, attempt_dir))
    command = self._command(name, executor_input, dag_id)
    env = self._task_env(name, attempt_dir)

    execution = metadata_store_pb2.Execution(
        type_id=self._execution_type_id(CONTAINER_EXECUTION_TYPE),
        last_known_state=metadata_store_pb2.Execution.RUNNING)
    custom = execution.custom_properties
    custom["display_name"].string_value = name
    custom["task_name"].string_value = name
    custom["parent_dag_id"].int_value = dag_id
    custom["image"].string_value = self._executor(name).container.image
    custom["pod_name"].string_value = env["KFP_POD_NAME"]
    custom["pod_uid"].string_value = env["KFP_POD_UID"]
    custom["namespace"].string_value = ""
    for key, value in inputs.parameter_values.items():
      custom["inputs"].struct_value.fields[key].CopyFrom(value)
    events = []
    for key, ids in sorted(input_ids.items()):
      for artifact_id in ids:
        event = metadata_store_pb2.Event(artifact_id=artifact_id,
                                         type=metadata_store_pb2.Event.INPUT)
        event.path.steps.add().key = key
        events.append((None, event))
    execution.id, _, _ = retry(lambda: self._store.put_execution(
        execution, events, contexts, force_reuse_context=True),
                               what=f"recording task {name}")

    log_path = os.path.join(attempt_dir, "executor.log")
    with open(os.path.join(attempt_dir, "executor_input.json"), "w") as f:
      f.write(json_format.MessageToJson(executor_input))
    _log.info("task %s: execution %d, running %s (log: %s)", name, execution.id,
              " ".join(command[:4]), log_path)
    started = time.monotonic()
    returncode = self._spawn(command, env, attempt_dir, log_path)
    elapsed = time.monotonic() - started
    if returncode != 0:
      how = (f"was killed by signal {-returncode}" if returncode < 0
             else f"exited with status {returncode}")
      self._finish(execution, metadata_store_pb2.Execution.FAILED, [], contexts)
      raise TaskFailed(f"task {name!r} {how} after {elapsed:.0f}s; its log: {log_path}")
    outputs = self._record_outputs(name, execution, executor_input, contexts)
    _log.info("task %s: COMPLETE in %.0fs", name, elapsed)
    return TaskResult(task=name, execution_id=execution.id, state="COMPLETE",
                      outputs=outputs, log_path=log_path)

  def _spawn(self, command: list[str], env: dict[str, str], attempt_dir: str,
             log_path: str) -> int:
    """Runs the task's process in its own process group; a SIGTERM or Ctrl-C
    to the launcher is passed on to it, as a kubelet stops a pod."""
    with open(log_path, "ab") as log:
      self._child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                     env=env, cwd=attempt_dir, start_new_session=True)
    with open(os.path.join(attempt_dir, "pid"), "w") as f:
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

  def _record_outputs(self, name: str, execution: metadata_store_pb2.Execution,
                      executor_input: pipeline_spec_pb2.ExecutorInput,
                      contexts) -> dict[str, int]:
    executor_output = pipeline_spec_pb2.ExecutorOutput()
    output_file = executor_input.outputs.output_file
    if os.path.isfile(output_file):
      with open(output_file) as f:
        try:
          json_format.Parse(f.read(), executor_output, ignore_unknown_fields=True)
        except json_format.ParseError as e:
          self._finish(execution, metadata_store_pb2.Execution.FAILED, [], contexts)
          raise TaskFailed(f"task {name!r} wrote an unreadable executor output "
                           f"{output_file!r}: {str(e).splitlines()[0]}") from e
    pairs = []
    for key, provisioned in sorted(executor_input.outputs.artifacts.items()):
      runtime = pipeline_spec_pb2.RuntimeArtifact()
      runtime.CopyFrom(provisioned.artifacts[0])
      if key in executor_output.artifacts and executor_output.artifacts[key].artifacts:
        written = executor_output.artifacts[key].artifacts[0]
        if written.uri:
          runtime.uri = written.uri
        runtime.metadata.MergeFrom(written.metadata)
      type_name = _schema_title(runtime.type)
      type_id = retry(lambda: self._store.put_artifact_type(
          metadata_store_pb2.ArtifactType(name=type_name)),
                      what=f"registering artifact type {type_name}")
      artifact = metadata_store_pb2.Artifact(type_id=type_id, uri=runtime.uri,
                                             state=metadata_store_pb2.Artifact.LIVE)
      for prop, value in runtime.metadata.fields.items():
        converted = _mlmd_value(value)
        if converted is not None:
          artifact.custom_properties[prop].CopyFrom(converted)
      if "display_name" not in artifact.custom_properties:
        artifact.custom_properties["display_name"].string_value = key
      event = metadata_store_pb2.Event(type=metadata_store_pb2.Event.OUTPUT)
      event.path.steps.add().key = key
      pairs.append((artifact, event))
    for key, value in executor_output.parameter_values.items():
      execution.custom_properties["outputs"].struct_value.fields[key].CopyFrom(value)
    artifact_ids = self._finish(execution, metadata_store_pb2.Execution.COMPLETE,
                                pairs, contexts)
    return {event.path.steps[0].key: artifact_id
            for (_, event), artifact_id in zip(pairs, artifact_ids)}

  def _finish(self, execution: metadata_store_pb2.Execution, state: int, pairs,
              contexts) -> list[int]:
    execution.last_known_state = state
    _, artifact_ids, _ = retry(lambda: self._store.put_execution(
        execution, pairs, contexts, force_reuse_context=True),
                               what="publishing a task's execution")
    return artifact_ids


# --- command line ------------------------------------------------------------


def _parse_params(pairs: Sequence[str]) -> dict[str, str]:
  params = {}
  for pair in pairs:
    name, sep, value = pair.partition("=")
    if not sep or not name:
      raise LauncherError(f"--param {pair!r} is not NAME=VALUE")
    params[name] = value
  return params


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m ckptflow.kubeflow.launcher",
      description="Run a compiled KFP v2 spec here, task by task, as KFP would.")
  parser.add_argument("spec", help="pipeline.json, pipeline.yaml, or the compile directory")
  parser.add_argument("--pipeline-root", default="",
                      help="where outputs go (default: the spec's runtimeConfig)")
  parser.add_argument("--metadata", default=None,
                      help="MLMD store for the run (default: $CKPTFLOW_METADATA)")
  parser.add_argument("--run-id", default=None, help="run id (default: a new UUID); "
                      "an existing run's id reruns tasks in it")
  parser.add_argument("--task", action="append", default=[],
                      help="run only this task (repeatable); its upstream tasks must "
                      "have completed in the run")
  parser.add_argument("--param", action="append", default=[], help="NAME=VALUE")
  parser.add_argument("--task-timeout", type=float, default=None, help="seconds per task")
  parser.add_argument("--no-retries", action="store_true",
                      help="ignore the tasks' retry policies (a failed task ends the run)")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                      format="%(asctime)s %(levelname).1s launcher: %(message)s")
  logging.getLogger("ckptflow").setLevel(logging.INFO)  # progress; not MLMD's chatter
  try:
    target = args.metadata or os.environ.get(metadata.METADATA_ENV, "").strip()
    if not target:
      raise LauncherError(f"no metadata store: pass --metadata TARGET or set "
                          f"{metadata.METADATA_ENV}")
    run = LocalRun(spec_lib.load(args.spec), pipeline_root=args.pipeline_root,
                   store_target=target, run_id=args.run_id,
                   parameters=_parse_params(args.param), task_timeout=args.task_timeout,
                   retries=not args.no_retries)
    print(json.dumps({"run_id": run.run_id, "run_root": run.run_root}), flush=True)
    for result in run.run(args.task or None):
      print(json.dumps(dataclasses.asdict(result), sort_keys=True), flush=True)
  except CkptflowError as e:
    print(f"launcher: error: {' '.join(str(e).split())}", file=sys.stderr)
    return e.exit_code
  return 0


if __name__ == "__main__":
  sys.exit(main())
