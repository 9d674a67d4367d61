"""Reading compiled KFP v2 pipeline specs, strictly.

`ckptflow compile` writes the same pipeline twice: `pipeline.json`, a
`PipelineJob` (the spec under `pipelineSpec`, plus `runtimeConfig` with the
default pipeline root and parameter values; what Vertex AI takes), and
`pipeline.yaml`, the bare `PipelineSpec` (what KFP's client uploads; a
second YAML document, if any, is the Kubernetes `PlatformSpec`).

`load` accepts either file (or a directory holding them) and parses the
spec into KFP's `PipelineSpec` proto with unknown fields rejected, so a
file that is not a pipeline fails here with one line instead of deep in a
launcher or an API server.

Imports neither TensorFlow nor TFX.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import yaml
from google.protobuf import json_format, struct_pb2
from kfp.pipeline_spec import pipeline_spec_pb2

from ckptflow.base.errors import CkptflowError

SPEC_FILES = ("pipeline.yaml", "pipeline.json")


class SpecError(CkptflowError):
  """A file is not a compiled KFP v2 pipeline spec."""


@dataclasses.dataclass(frozen=True)
class LoadedSpec:
  """A parsed pipeline spec and what came with it."""

  path: str
  spec: pipeline_spec_pb2.PipelineSpec
  platform_spec: pipeline_spec_pb2.PlatformSpec
  # From a PipelineJob's runtimeConfig (pipeline.json); empty for YAML.
  default_pipeline_root: str
  parameter_values: Mapping[str, Any]

  @property
  def name(self) -> str:
    return self.spec.pipeline_info.name

  def deployment(self) -> pipeline_spec_pb2.PipelineDeploymentConfig:
    """The spec's deploymentSpec (a Struct in the proto) as its message."""
    deployment = pipeline_spec_pb2.PipelineDeploymentConfig()
    json_format.ParseDict(json_format.MessageToDict(self.spec.deployment_spec), deployment)
    return deployment


def _read(path: str) -> list[Any]:
  """The file's documents (one for JSON, one or more for YAML)."""
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except UnicodeDecodeError as e:
    raise SpecError(f"pipeline spec {path!r} is not a text file") from e
  except OSError as e:
    raise SpecError(f"cannot read pipeline spec {path!r}: {e.strerror}") from e
  if path.endswith(".json"):
    try:
      return [json.loads(text)]
    except json.JSONDecodeError as e:
      raise SpecError(f"pipeline spec {path!r} is not valid JSON: {e.msg} at "
                      f"line {e.lineno}") from e
  if path.endswith((".yaml", ".yml")):
    try:
      return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
      where = getattr(e, "problem_mark", None)
      line = f" at line {where.line + 1}" if where is not None else ""
      raise SpecError(f"pipeline spec {path!r} is not valid YAML{line}") from e
  raise SpecError(f"pipeline spec {path!r} has an unknown extension. Expected "
                  ".json (PipelineJob), .yaml or .yml (PipelineSpec)")


def resolve_path(path: str) -> str:
  """`path`, or the compiled spec inside it if it is a directory."""
  if os.path.isdir(path):
    for name in SPEC_FILES:
      candidate = os.path.join(path, name)
      if os.path.isfile(candidate):
        return candidate
    raise SpecError(f"directory {path!r} holds no compiled pipeline spec. "
                    f"Expected {' or '.join(SPEC_FILES)} (ckptflow compile --out DIR)")
  if not os.path.exists(path):
    raise SpecError(f"pipeline spec {path!r} does not exist")
  return path


def load(path: str) -> LoadedSpec:
  """Reads and strictly parses a compiled spec (file or directory).

  Raises:
    SpecError: the file is missing, unreadable, not JSON/YAML, or not a KFP
      v2 pipeline spec (a field KFP does not know, a missing pipeline name,
      root DAG or deployment section).
  """
  path = resolve_path(path)
  documents = _read(path)
  if not documents or not isinstance(documents[0], dict):
    raise SpecError(f"pipeline spec {path!r} is not a pipeline: expected a "
                    "mapping with pipelineInfo, root and deploymentSpec")
  document = documents[0]
  runtime: dict = {}
  if "pipelineSpec" in document:  # a PipelineJob (pipeline.json)
    runtime = document.get("runtimeConfig") or {}
    document = document["pipelineSpec"]
    if not isinstance(document, dict):
      raise SpecError(f"pipeline spec {path!r}: pipelineSpec is not a mapping")
  missing = [k for k in ("pipelineInfo", "root", "deploymentSpec") if k not in document]
  if missing:
    raise SpecError(f"pipeline spec {path!r} is not a pipeline: it has no "
                    f"{', '.join(missing)}. Expected the output of ckptflow compile")
  spec = pipeline_spec_pb2.PipelineSpec()
  try:
    json_format.ParseDict(document, spec, ignore_unknown_fields=False)
  except json_format.ParseError as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else "parse error"
    raise SpecError(f"pipeline spec {path!r} does not parse as a KFP "
                    f"PipelineSpec: {first}") from e
  if not spec.pipeline_info.name or not spec.root.dag.tasks:
    raise SpecError(f"pipeline spec {path!r} is not a pipeline: it has no "
                    "pipeline name or no tasks")
  platform = pipeline_spec_pb2.PlatformSpec()
  for extra in documents[1:]:
    try:
      json_format.ParseDict(extra, platform, ignore_unknown_fields=False)
    except json_format.ParseError as e:
      raise SpecError(f"pipeline spec {path!r}: its second document is not a "
                      f"KFP PlatformSpec: {str(e).splitlines()[0]}") from e
  values = {}
  for key, value in (runtime.get("parameterValues") or {}).items():
    values[key] = value
  return LoadedSpec(path=path, spec=spec, platform_spec=platform,
                    default_pipeline_root=runtime.get("gcsOutputDirectory", "") or "",
                    parameter_values=values)


def value_to_python(value: struct_pb2.Value) -> Any:
  """A protobuf Value as plain Python (numbers stay floats, like KFP)."""
  return json_format.MessageToDict(value)


def coerce_parameter(name: str, raw: Any, parameter_type: int) -> struct_pb2.Value:
  """A pipeline parameter value (text from the command line, or a JSON
  value) as the Value its declared type asks for.

  Raises:
    SpecError: `raw` is not a value of that type.
  """
  types = pipeline_spec_pb2.ParameterType
  value = struct_pb2.Value()
  try:
    if parameter_type == types.STRING:
      value.string_value = str(raw)
    elif parameter_type == types.NUMBER_INTEGER:
      value.number_value = int(raw)
    elif parameter_type == types.NUMBER_DOUBLE:
      value.number_value = float(raw)
    elif parameter_type == types.BOOLEAN:
      text = str(raw).lower()
      if text not in ("true", "false"):
        raise ValueError(raw)
      value.bool_value = text == "true"
    else:
      json_format.ParseDict(json.loads(raw) if isinstance(raw, str) else raw, value)
  except (ValueError, TypeError, json_format.ParseError) as e:
    raise SpecError(f"parameter {name} is {raw!r}. Expected a "
                    f"{types.Name(parameter_type)} value") from e
  return value
