"""A local KFP run as KFP records it in ML Metadata.

KFP's MLMD names (backend/src/v2/metadata/client.go): the run is a
`system.PipelineRun` context under a `system.Pipeline` context, with a root
`system.DAGExecution` holding the pipeline parameters; each task attempt is
a `system.ContainerExecution` (custom property `task_name`, INPUT events
keyed by input name) that ends COMPLETE with its output artifacts (type
named by the schema title, e.g. `tfx.Model`; metadata as custom properties;
state LIVE; OUTPUT events keyed by output name), or FAILED.

MLMD calls are made directly on the store. Not thread-safe.
"""

from __future__ import annotations

from typing import Mapping

import yaml
from google.protobuf import json_format, struct_pb2
from kfp.pipeline_spec import pipeline_spec_pb2
from ml_metadata import errors as mlmd_errors
from ml_metadata.proto import metadata_store_pb2

from ckptflow.kubeflow.launcher.errors import LauncherError
from ckptflow.base.metadata import Store

PIPELINE_CONTEXT_TYPE = "system.Pipeline"
RUN_CONTEXT_TYPE = "system.PipelineRun"
CONTAINER_EXECUTION_TYPE = "system.ContainerExecution"
DAG_EXECUTION_TYPE = "system.DAGExecution"


def task_name(execution: metadata_store_pb2.Execution) -> str:
  value = execution.custom_properties.get("task_name")
  return value.string_value if value is not None else ""


# --- value conversions (KFP's metadata <-> MLMD values) ---------------------


def mlmd_value(value: struct_pb2.Value) -> metadata_store_pb2.Value | None:
  """A KFP metadata value as an MLMD value; None for a null."""
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


def struct_value(value: metadata_store_pb2.Value) -> struct_pb2.Value | None:
  """An MLMD value as KFP metadata; None for kinds KFP metadata cannot hold."""
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


def schema_title(artifact_type: pipeline_spec_pb2.ArtifactTypeSchema) -> str:
  """The artifact type's name: its schema title."""
  kind = artifact_type.WhichOneof("kind")
  if kind == "schema_title":
    return artifact_type.schema_title
  if kind == "instance_schema":
    title = (yaml.safe_load(artifact_type.instance_schema) or {}).get("title")
    if title:
      return str(title)
  raise LauncherError(f"artifact type {json_format.MessageToJson(artifact_type)!r} "
                      "has no schema title")


# --- the run's records ---------------------------------------------------------


class RunRecorder:
  """The MLMD records of one run: its contexts, its root DAG execution, and
  an execution per task attempt. `open()` must be called before anything
  that records."""

  def __init__(self, store: Store, *, pipeline_name: str,
               run_id: str, run_root: str):
    self._store = store
    self._pipeline_name = pipeline_name
    self._run_id = run_id
    self._run_root = run_root
    self._contexts: list[metadata_store_pb2.Context] = []

  def open(self) -> None:
    """Finds or creates the run's KFP contexts (pipeline, run), the run
    linked to its pipeline; safe against a concurrent launcher of the same
    run."""
    found = []
    for type_name, name, props in (
        (PIPELINE_CONTEXT_TYPE, self._pipeline_name, {}),
        (RUN_CONTEXT_TYPE, self._run_id, {"pipeline_root": self._run_root,
                                           "namespace": "", "resource_name": self._run_id,
                                           "store_session_info": ""})):
      type_id = self._store.put_context_type(metadata_store_pb2.ContextType(name=type_name))
      context = self._store.get_context_by_type_and_name(type_name, name)
      if context is None:
        context = metadata_store_pb2.Context(type_id=type_id, name=name)
        for key, value in props.items():
          context.custom_properties[key].string_value = value
        try:
          [context.id] = self._store.put_contexts([context])
        except mlmd_errors.AlreadyExistsError:  # a concurrent launcher made it first
          context = self._store.get_context_by_type_and_name(type_name, name)
          if context is None:
            raise
      found.append(context)
    pipeline_context, run_context = found
    if not self._store.get_parent_contexts_by_context(run_context.id):
      self._store.put_parent_contexts([metadata_store_pb2.ParentContext(
          child_id=run_context.id, parent_id=pipeline_context.id)])
    self._contexts = found

  def _execution_type_id(self, name: str) -> int:
    return self._store.put_execution_type(metadata_store_pb2.ExecutionType(name=name))

  def _run_executions(self) -> list[metadata_store_pb2.Execution]:
    return self._store.get_executions_by_context(self._contexts[1].id)

  def _put(self, execution: metadata_store_pb2.Execution, pairs) -> tuple[int, list[int]]:
    execution_id, artifact_ids, _ = self._store.put_execution(
        execution, pairs, self._contexts, force_reuse_context=True)
    return execution_id, artifact_ids

  # -- the root DAG -----------------------------------------------------------

  def root_dag(self, parameters: Mapping[str, struct_pb2.Value]) -> int:
    """The id of the run's root DAG execution, recorded RUNNING with the
    pipeline `parameters` if the run has none yet."""
    type_id = self._execution_type_id(DAG_EXECUTION_TYPE)
    existing = [e for e in self._run_executions()
                if e.type_id == type_id and "parent_dag_id" not in e.custom_properties]
    if existing:
      return existing[0].id
    execution = metadata_store_pb2.Execution(
        type_id=type_id, last_known_state=metadata_store_pb2.Execution.RUNNING)
    execution.custom_properties["display_name"].string_value = ""
    execution.custom_properties["task_name"].string_value = ""
    inputs = execution.custom_properties["inputs"].struct_value
    for name, value in parameters.items():
      inputs.fields[name].CopyFrom(value)
    execution_id, _ = self._put(execution, [])
    return execution_id

  def close_dag(self, dag_id: int, state: int) -> None:
    [dag] = self._store.get_executions_by_id([dag_id])
    dag.last_known_state = state
    self._store.put_executions([dag])

  # -- reading upstream tasks ---------------------------------------------------

  def latest_complete(self, task: str) -> metadata_store_pb2.Execution:
    """The latest COMPLETE execution of `task` in this run.

    Raises:
      LauncherError: `task` has not completed in this run.
    """
    type_id = self._execution_type_id(CONTAINER_EXECUTION_TYPE)
    done = [e for e in self._run_executions()
            if e.type_id == type_id and task_name(e) == task
            and e.last_known_state == metadata_store_pb2.Execution.COMPLETE]
    if not done:
      raise LauncherError(f"upstream task {task!r} has not completed in run "
                          f"{self._run_id!r}: run it first")
    return max(done, key=lambda e: e.id)

  def completed(self, task: str) -> bool:
    try:
      self.latest_complete(task)
    except LauncherError:
      return False
    return True

  def outputs_of(self, execution_id: int) -> dict[str, metadata_store_pb2.Artifact]:
    """output key -> the artifact `execution_id` recorded for it."""
    events = self._store.get_events_by_execution_ids([execution_id])
    outputs = {e.path.steps[0].key: e.artifact_id for e in events
               if e.type == metadata_store_pb2.Event.OUTPUT and e.path.steps}
    artifacts = {a.id: a for a in self._store.get_artifacts_by_id(
        list(outputs.values()))} if outputs else {}
    return {key: artifacts[artifact_id] for key, artifact_id in outputs.items()}

  # -- a task attempt -------------------------------------------------------------

  def start_task(self, task: str, *, dag_id: int, image: str, pod_name: str, pod_uid: str,
                 parameter_values: Mapping[str, struct_pb2.Value],
                 input_ids: Mapping[str, list[int]]) -> metadata_store_pb2.Execution:
    """Records a RUNNING ContainerExecution of `task` with an INPUT event per
    input artifact; returns it, its id set."""
    execution = metadata_store_pb2.Execution(
        type_id=self._execution_type_id(CONTAINER_EXECUTION_TYPE),
        last_known_state=metadata_store_pb2.Execution.RUNNING)
    custom = execution.custom_properties
    custom["display_name"].string_value = task
    custom["task_name"].string_value = task
    custom["parent_dag_id"].int_value = dag_id
    custom["image"].string_value = image
    custom["pod_name"].string_value = pod_name
    custom["pod_uid"].string_value = pod_uid
    custom["namespace"].string_value = ""
    for key, value in parameter_values.items():
      custom["inputs"].struct_value.fields[key].CopyFrom(value)
    events = []
    for key, ids in sorted(input_ids.items()):
      for artifact_id in ids:
        event = metadata_store_pb2.Event(artifact_id=artifact_id,
                                         type=metadata_store_pb2.Event.INPUT)
        event.path.steps.add().key = key
        events.append((None, event))
    execution.id, _ = self._put(execution, events)
    return execution

  def fail_task(self, execution: metadata_store_pb2.Execution) -> None:
    """Marks the attempt FAILED, with no outputs."""
    execution.last_known_state = metadata_store_pb2.Execution.FAILED
    self._put(execution, [])

  def complete_task(self, execution: metadata_store_pb2.Execution,
                    executor_input: pipeline_spec_pb2.ExecutorInput,
                    executor_output: pipeline_spec_pb2.ExecutorOutput) -> dict[str, int]:
    """Records the attempt's output artifacts (each provisioned output, with
    the URI and metadata the task wrote for it) and output parameters, and
    marks it COMPLETE, in one MLMD transaction; returns output key ->
    artifact id."""
    pairs = []
    for key, provisioned in sorted(executor_input.outputs.artifacts.items()):
      runtime = pipeline_spec_pb2.RuntimeArtifact()
      runtime.CopyFrom(provisioned.artifacts[0])
      if key in executor_output.artifacts and executor_output.artifacts[key].artifacts:
        written = executor_output.artifacts[key].artifacts[0]
        if written.uri:
          runtime.uri = written.uri
        runtime.metadata.MergeFrom(written.metadata)
      type_name = schema_title(runtime.type)
      type_id = self._store.put_artifact_type(metadata_store_pb2.ArtifactType(name=type_name))
      artifact = metadata_store_pb2.Artifact(type_id=type_id, uri=runtime.uri,
                                             state=metadata_store_pb2.Artifact.LIVE)
      for prop, value in runtime.metadata.fields.items():
        converted = mlmd_value(value)
        if converted is not None:
          artifact.custom_properties[prop].CopyFrom(converted)
      if "display_name" not in artifact.custom_properties:
        artifact.custom_properties["display_name"].string_value = key
      event = metadata_store_pb2.Event(type=metadata_store_pb2.Event.OUTPUT)
      event.path.steps.add().key = key
      pairs.append((artifact, event))
    for key, value in executor_output.parameter_values.items():
      execution.custom_properties["outputs"].struct_value.fields[key].CopyFrom(value)
    execution.last_known_state = metadata_store_pb2.Execution.COMPLETE
    _, artifact_ids = self._put(execution, pairs)
    return {event.path.steps[0].key: artifact_id
            for (_, event), artifact_id in zip(pairs, artifact_ids)}
