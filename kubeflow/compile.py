"""Compiles the pipeline to a KFP v2 spec with TFX's KubeflowV2DagRunner.

`compile_pipeline(config, out_dir, image=...)` builds the same
`create_pipeline(config)` as the local runners, for the "kubeflow" target
(open-source KFP v2: no Resolver nodes) or the "vertex" target (Vertex AI
Pipelines: with the Resolver), and writes:

* `OUT/pipeline.json`: a `PipelineJob` (spec + `runtimeConfig` with the
  default pipeline root and parameter values), what Vertex AI takes;
* `OUT/pipeline.yaml`: the same `PipelineSpec`, what KFP's client uploads.

The data location is the runtime parameter `data_root` (default: the
config's data directory, if any) and the pipeline root is chosen per run
(`ckptflow submit --pipeline-root`, KFP's default otherwise), so one
compiled spec serves many runs. Every task runs `image` (built from
`kubeflow/Dockerfile`), with the `--env` variables given, through
`python -m ckptflow.components.kubeflow.entry` (TFX's task entry point,
ready for s3:// pipeline roots, exiting with the executor's real status). The Trainer task
has a retry policy: KFP retries a failed (preempted) Trainer pod, which
resumes from the run's last registered checkpoint. Both files are written to a temporary name and
renamed (`storage.atomic_write_all`), so a failed compile leaves no half-written spec.

TFX is imported inside `compile_pipeline` only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import warnings
from typing import Mapping, Sequence

import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from ckptflow.base import metadata, names, storage
from ckptflow.pipeline.config import PipelineConfig
from ckptflow.base.errors import CkptflowError

_log = logging.getLogger(__name__)

IMAGE_ENV = "CKPTFLOW_IMAGE"
DATA_ROOT_PARAMETER = "data_root"
TRAINER_TASK = "CheckpointingTrainer"
# A preempted Trainer pod is retried and resumes from its last checkpoint.
DEFAULT_TRAINER_RETRIES = 3
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
KUBEFLOW_TARGETS = ("kubeflow", "vertex")
JSON_NAME = "pipeline.json"
TFX_TASK_ENTRY = "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"
CKPTFLOW_TASK_ENTRY = "ckptflow.components.kubeflow.entry"
YAML_NAME = "pipeline.yaml"

# registry[:port]/path[:tag][@sha256:digest], lower-case path components
# (the grammar of github.com/distribution/reference, simplified).
_IMAGE_RE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$")


class CompileError(CkptflowError):
  """The pipeline cannot be compiled as asked (image, target, output path)."""


@dataclasses.dataclass(frozen=True)
class CompiledSpec:
  json_path: str
  yaml_path: str
  pipeline_name: str
  image: str
  target: str
  tasks: tuple[str, ...]


def resolve_image(image: str | None) -> str:
  """The container image every task runs: `image`, else $CKPTFLOW_IMAGE.

  Raises:
    CompileError: none is given, or it is not an image reference.
  """
  chosen = (image if image is not None else os.environ.get(IMAGE_ENV, "")).strip()
  if not chosen:
    raise CompileError(f"no container image: pass --image IMAGE (built from "
                       f"kubeflow/Dockerfile) or set {IMAGE_ENV}")
  if not _IMAGE_RE.match(chosen):
    raise CompileError(f"image {chosen!r} is not a container image reference. "
                       "Expected e.g. registry.example.com/team/ckptflow:0.1.0")
  return chosen


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
  """`NAME=VALUE` pairs for every task's container environment.

  Raises:
    CompileError: a pair is malformed, or a metadata target in it holds a
      password (a compiled spec is not a secret store).
  """
  env = names.parse_assignments(pairs, flag="--env", name_pattern=_ENV_NAME_RE,
                                name_expected="an environment variable name",
                                error=CompileError)
  for name, value in env.items():
    if "://" in value and metadata.describe(value) != value:
      raise CompileError(f"task environment {name}={metadata.describe(value)} holds a "
                         "password; a compiled spec is not a secret store. Set it on the "
                         "task pods from a Kubernetes Secret instead (kubeflow/README.md)")
  return env


def _retry_policy(retries: int) -> dict:
  """KFP's task retry policy: `retries` more attempts, backing off 30 s,
  60 s, ... up to 10 minutes."""
  return {"maxRetryCount": retries, "backoffDuration": "30s", "backoffFactor": 2.0,
          "backoffMaxDuration": "600s"}


def _add_parameter_default(job: dict, name: str, value: str) -> None:
  """TFX compiles runtime parameters without their default; KFP's client
  and UI read it from the spec's root inputDefinitions."""
  parameter = job["pipelineSpec"]["root"]["inputDefinitions"]["parameters"][name]
  parameter["defaultValue"] = value
  parameter["isOptional"] = True


def _yaml_text(spec: dict, description: str) -> str:
  header = (f"# PIPELINE DEFINITION\n# Name: {spec['pipelineInfo']['name']}\n"
            f"# Description: {description}\n")
  return header + yaml.safe_dump(spec, sort_keys=True)


def _write_atomically(out_dir: str, files: dict[str, str]) -> None:
  """Writes every file under a temporary name first, then renames each."""
  try:
    storage.atomic_write_all({os.path.join(out_dir, name): text
                              for name, text in files.items()},
                             mode=0o644)  # a spec is not secret
  except OSError as e:
    raise CompileError(f"cannot write the compiled spec to {out_dir!r}: {e.strerror}") from e


def build_job(config: PipelineConfig, *, image: str, target: str = "kubeflow",
              feature_keys: tuple[str, ...] | None = None,
              pipeline_root: str | None = None,
              trainer_retries: int = DEFAULT_TRAINER_RETRIES,
              env: Mapping[str, str] | None = None) -> dict:
  """The compiled `PipelineJob` as a dict (nothing written).

  Args:
    config: the pipeline's configuration.
    image: the container image of every task (see `resolve_image`).
    target: "kubeflow" (open-source KFP v2) or "vertex".
    feature_keys: the feature columns; by default read from the header of
      the data in `config.data.path`.
    pipeline_root: the default pipeline root written to `runtimeConfig`
      (none by default: KFP's own default root applies).
    trainer_retries: how often KFP retries a failed (preempted) Trainer
      task, each retry resuming from the last registered checkpoint.
    env: environment variables for every task's container (see
      `parse_env`), e.g. CKPTFLOW_METADATA.
  """
  if isinstance(trainer_retries, bool) or not isinstance(trainer_retries, int) \
      or trainer_retries < 0:
    raise CompileError(f"trainer retries is {trainer_retries!r}. Expected a "
                       "non-negative integer")
  if target not in KUBEFLOW_TARGETS:
    raise CompileError(f"target {target!r} is unknown. Expected one of "
                       f"{', '.join(KUBEFLOW_TARGETS)}")
  if pipeline_root and storage.uri_scheme(pipeline_root) is not None:
    # s3://, gs:// (checked for form only: the bucket is the cluster's).
    pipeline_root = storage.check_uri(pipeline_root, "pipeline root")
  if feature_keys is None:
    feature_keys = config.data.resolved_features()
  data_default = os.path.abspath(config.data.path) if config.data.path else ""

  with warnings.catch_warnings():
    # Google client libraries TFX imports warn about versions, many times.
    warnings.simplefilter("ignore", FutureWarning)
    from tfx.orchestration import data_types
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner
    from ckptflow.pipeline.pipeline import create_pipeline

  data_root = data_types.RuntimeParameter(name=DATA_ROOT_PARAMETER, ptype=str,
                                          default=data_default or None)
  pipeline = create_pipeline(config, feature_keys=tuple(feature_keys), data_root=data_root,
                             target=target, pipeline_root=pipeline_root or "")
  runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
      kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(
          default_image=image, use_pipeline_spec_2_1=True))
  job = runner.run(pipeline, parameter_values=(
      {DATA_ROOT_PARAMETER: data_default} if data_default else None), write_out=False)
  if data_default:
    _add_parameter_default(job, DATA_ROOT_PARAMETER, data_default)
  if trainer_retries:
    job["pipelineSpec"]["root"]["dag"]["tasks"][TRAINER_TASK]["retryPolicy"] = (
        _retry_policy(trainer_retries))
  for executor in job["pipelineSpec"]["deploymentSpec"]["executors"].values():
    # TFX's task entry point, wrapped: tensorflow-io for s3:// roots, and
    # the executor's real exit status (components/kubeflow/entry.py).
    container = executor.get("container", {})
    if container.get("command") == ["python", "-m", TFX_TASK_ENTRY]:
      container["command"] = ["python", "-m", CKPTFLOW_TASK_ENTRY]
  if env:
    for executor in job["pipelineSpec"]["deploymentSpec"]["executors"].values():
      if "container" in executor:
        executor["container"]["env"] = [{"name": k, "value": v} for k, v in sorted(env.items())]
  # What we write must be what KFP reads: parse it back, unknown fields fatal.
  json_format.ParseDict(job["pipelineSpec"], pipeline_spec_pb2.PipelineSpec(),
                        ignore_unknown_fields=False)
  return job


def compile_pipeline(config: PipelineConfig, out_dir: str, *, image: str | None,
                     target: str = "kubeflow",
                     feature_keys: tuple[str, ...] | None = None,
                     pipeline_root: str | None = None,
                     trainer_retries: int = DEFAULT_TRAINER_RETRIES,
                     env: Mapping[str, str] | None = None) -> CompiledSpec:
  """Compiles `config` and writes `out_dir/pipeline.json` and `.yaml`.

  Raises:
    CompileError: no or a malformed image, an unknown target, an output
      directory that cannot be written.
    ConfigError, DataError: the config does not match its data.
  """
  image = resolve_image(image)
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise CompileError(f"output directory {out_dir!r} is a file")
  job = build_job(config, image=image, target=target, feature_keys=feature_keys,
                  pipeline_root=pipeline_root, trainer_retries=trainer_retries, env=env)
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise CompileError(f"cannot create output directory {out_dir!r}: {e.strerror}") from e
  description = f"ckptflow pipeline compiled for target {target!r} by TFX's KubeflowV2DagRunner"
  _write_atomically(out_dir, {
      JSON_NAME: json.dumps(job, indent=2, sort_keys=True) + "\n",
      YAML_NAME: _yaml_text(job["pipelineSpec"], description),
  })
  tasks = tuple(sorted(job["pipelineSpec"]["root"]["dag"]["tasks"]))
  _log.info("compiled %d tasks for %s into %s", len(tasks), target, out_dir)
  return CompiledSpec(json_path=os.path.join(out_dir, JSON_NAME),
                      yaml_path=os.path.join(out_dir, YAML_NAME),
                      pipeline_name=job["pipelineSpec"]["pipelineInfo"]["name"],
                      image=image, target=target, tasks=tasks)
