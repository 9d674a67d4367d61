"""A task's ExecutorInput, built as KFP's driver builds it.

Inputs: parameters (constants, with KFP's run/task placeholders replaced;
pipeline parameters; upstream output parameters) and artifacts (the
upstream task's recorded output, with its MLMD id as the artifact name, its
URI, its properties as metadata), read from the latest COMPLETE execution
of each upstream task in the run. Outputs: provisioned under
`RUN_ROOT/<task>/<uuid>/<key>`, with a fresh uuid per attempt, and an
output metadata file in the attempt's working directory.
"""

from __future__ import annotations

import os
import uuid
from typing import Mapping

from google.protobuf import struct_pb2
from kfp.pipeline_spec import pipeline_spec_pb2

from ckptflow.kubeflow.launcher import placeholders
from ckptflow.kubeflow.launcher.errors import LauncherError
from ckptflow.kubeflow.launcher.recorder import RunRecorder, struct_value


def inputs(name: str, task: pipeline_spec_pb2.PipelineTaskSpec,
           component: pipeline_spec_pb2.ComponentSpec, *,
           parameters: Mapping[str, struct_pb2.Value], recorder: RunRecorder,
           run_id: str, dag_id: int) -> tuple[pipeline_spec_pb2.ExecutorInput.Inputs,
                                              dict[str, list[int]]]:
  """Task `name`'s resolved inputs, and input key -> the artifact ids read.

  Raises:
    LauncherError: an input the launcher does not support, or an upstream
      task that has not completed or did not write what is read.
  """
  definitions = component.input_definitions
  resolved = pipeline_spec_pb2.ExecutorInput.Inputs()
  for key, spec in task.inputs.parameters.items():
    kind = spec.WhichOneof("kind")
    if kind == "runtime_value":
      value = struct_pb2.Value()
      value.CopyFrom(spec.runtime_value.constant)
      if value.WhichOneof("kind") == "string_value":
        value.string_value = placeholders.constant(value.string_value, run_id=run_id,
                                                   task=name, dag_id=dag_id)
    elif kind == "component_input_parameter":
      if spec.component_input_parameter not in parameters:
        raise LauncherError(f"task {name!r} reads pipeline parameter "
                            f"{spec.component_input_parameter!r}, which is not declared")
      value = parameters[spec.component_input_parameter]
    elif kind == "task_output_parameter":
      producer = recorder.latest_complete(spec.task_output_parameter.producer_task)
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
    resolved.parameter_values[key].CopyFrom(value)
  input_ids: dict[str, list[int]] = {}
  for key, spec in task.inputs.artifacts.items():
    if spec.WhichOneof("kind") != "task_output_artifact":
      raise LauncherError(f"task {name!r} input artifact {key!r} does not come from "
                          "an upstream task; this launcher does not support it")
    producer_task = spec.task_output_artifact.producer_task
    producer = recorder.latest_complete(producer_task)
    outputs = recorder.outputs_of(producer.id)
    output_key = spec.task_output_artifact.output_artifact_key
    if output_key not in outputs:
      raise LauncherError(f"task {producer_task!r} recorded no output {output_key!r} "
                          f"that task {name!r} reads")
    artifact = outputs[output_key]
    runtime = resolved.artifacts[key].artifacts.add()
    runtime.name = str(artifact.id)  # KFP: the MLMD id, as text
    runtime.uri = artifact.uri
    runtime.type.CopyFrom(definitions.artifacts[key].artifact_type)
    for prop, value in list(artifact.properties.items()) + list(
        artifact.custom_properties.items()):
      converted = struct_value(value)
      if converted is not None:
        runtime.metadata.fields[prop].CopyFrom(converted)
    input_ids.setdefault(key, []).append(artifact.id)
  return resolved, input_ids


def outputs(name: str, component: pipeline_spec_pb2.ComponentSpec, *, run_root: str,
            work_dir: str) -> pipeline_spec_pb2.ExecutorInput.Outputs:
  """Task `name`'s provisioned outputs for one attempt run in `work_dir`."""
  definitions = component.output_definitions
  provisioned = pipeline_spec_pb2.ExecutorInput.Outputs()
  salt = str(uuid.uuid4())
  for key, definition in definitions.artifacts.items():
    runtime = provisioned.artifacts[key].artifacts.add()
    runtime.uri = f"{run_root}/{name}/{salt}/{key}"
    runtime.type.CopyFrom(definition.artifact_type)
  for key in definitions.parameters:
    provisioned.parameters[key].output_file = os.path.join(work_dir, "outputs", key)
  # KFP's launcher: /tmp/kfp_outputs/output_metadata.json in the pod.
  provisioned.output_file = os.path.join(work_dir, "kfp_outputs", "output_metadata.json")
  return provisioned
