"""KFP placeholders (`{{$...}}`) in a task's constants and container command,
resolved as KFP's driver and launcher resolve them.

`constant(text, ...)` replaces the run and task placeholders that KFP's
driver replaces when they are a whole constant input value;
`command(container, executor_input, ...)` replaces every placeholder in the
container's command and args, `{{$}}` by the ExecutorInput JSON. A
placeholder this module does not know is refused, never passed on as text.
"""

from __future__ import annotations

import json
import re

from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from ckptflow.kubeflow import spec as spec_lib
from ckptflow.kubeflow.launcher.errors import LauncherError

PLACEHOLDER_RE = re.compile(r"\{\{\$[^}]*\}\}")
_INPUT_PARAMETER_RE = re.compile(r"\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}")
_ARTIFACT_URI_RE = re.compile(r"\{\{\$\.(inputs|outputs)\.artifacts\['([^']+)'\]\.uri\}\}")


def constant(text: str, *, run_id: str, task: str, dag_id: int) -> str:
  """`text` resolved if it is one of the run/task placeholders KFP's driver
  replaces when they are a whole constant value; else `text` unchanged."""
  return {
      "{{$.pipeline_job_name}}": run_id,
      "{{$.pipeline_job_resource_name}}": run_id,
      "{{$.pipeline_job_uuid}}": run_id,
      "{{$.pipeline_task_name}}": task,
      "{{$.pipeline_task_uuid}}": str(dag_id),
  }.get(text, text)


def command(container: pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec,
            executor_input: pipeline_spec_pb2.ExecutorInput, *, run_id: str,
            run_root: str, task: str, dag_id: int) -> list[str]:
  """The container's `command` + `args` with every placeholder replaced.

  Raises:
    LauncherError: a placeholder this launcher does not resolve.
  """
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
      return run_root
    simple = constant(text, run_id=run_id, task=task, dag_id=dag_id)
    if simple != text:
      return simple
    found = _INPUT_PARAMETER_RE.fullmatch(text)
    if found and found.group(1) in inputs.parameter_values:
      value = spec_lib.value_to_python(inputs.parameter_values[found.group(1)])
      return value if isinstance(value, str) else json.dumps(value)
    found = _ARTIFACT_URI_RE.fullmatch(text)
    if found:
      side = inputs if found.group(1) == "inputs" else outputs
      if found.group(2) in side.artifacts:
        return side.artifacts[found.group(2)].artifacts[0].uri
    raise LauncherError(f"task {task!r} uses placeholder {text!r}, which this "
                        "launcher does not resolve")

  return [PLACEHOLDER_RE.sub(replace, part)
          for part in list(container.command) + list(container.args)]
