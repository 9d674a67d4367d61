"""Uploads a compiled spec to Kubeflow Pipelines and starts a run.

`submit(spec, host=...)` checks the spec locally first (it must parse as a
KFP `PipelineSpec`; parameters must be declared and of the declared type),
then uses `kfp.Client` to create (or reuse) the experiment and start a run
with the given parameters and pipeline root. Errors are one line: a spec
that is not a pipeline, a host that cannot be reached, a run the server
rejects (with its status and reason).

Imports neither TensorFlow nor TFX.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import tempfile
import urllib.parse
import warnings
from typing import Mapping

import yaml
from google.protobuf import json_format

from ckptflow.kubeflow import spec as spec_lib
from ckptflow.base.errors import CkptflowError


class SubmitError(CkptflowError):
  """Kubeflow Pipelines cannot be reached or refused the run."""


@dataclasses.dataclass(frozen=True)
class SubmittedRun:
  run_id: str
  experiment: str
  host: str
  url: str


def _check_host(host: str) -> str:
  parsed = urllib.parse.urlsplit(host.strip())
  if parsed.scheme not in ("http", "https") or not parsed.hostname:
    raise SubmitError(f"KFP host {host!r} is not an http(s) URL. Expected e.g. "
                      "http://localhost:8080 (a port-forwarded ml-pipeline-ui)")
  return host.strip().rstrip("/")


def _arguments(loaded: spec_lib.LoadedSpec, params: Mapping[str, str]) -> dict:
  declared = loaded.spec.root.input_definitions.parameters
  arguments = {}
  for name, raw in params.items():
    if name not in declared:
      raise SubmitError(f"parameter {name!r} is not a pipeline parameter. Expected "
                        f"one of: {', '.join(sorted(declared)) or 'none'}")
    value = spec_lib.coerce_parameter(name, raw, declared[name].parameter_type)
    arguments[name] = spec_lib.value_to_python(value)
  return arguments


def _package(loaded: spec_lib.LoadedSpec, directory: str) -> str:
  """The spec as the YAML package kfp.Client uploads (it takes no JSON)."""
  path = os.path.join(directory, "pipeline.yaml")
  documents = [json_format.MessageToDict(loaded.spec)]
  platform = json_format.MessageToDict(loaded.platform_spec)
  if platform:
    documents.append(platform)
  with open(path, "w", encoding="utf-8") as f:
    yaml.safe_dump_all(documents, f, sort_keys=True)
  return path


def _reason(error: BaseException) -> str:
  reason = getattr(error, "reason", None) or str(error) or type(error).__name__
  body = getattr(error, "body", None)
  if body:  # the API server's own message says what was wrong with the run
    try:
      detail = json.loads(body)
      detail = detail.get("message") or detail.get("error") or ""
    except (ValueError, AttributeError):
      detail = str(body)
    if detail:
      reason = f"{reason}: {detail}"
  return " ".join(str(reason).split())[:300]


def submit(spec_path: str, *, host: str, experiment: str | None = None,
           params: Mapping[str, str] | None = None, pipeline_root: str | None = None,
           run_name: str | None = None, namespace: str | None = None) -> SubmittedRun:
  """Starts a run of the compiled spec at `spec_path` on KFP at `host`.

  Raises:
    SpecError: the file is not a compiled pipeline, or a parameter is
      unknown or of the wrong type (nothing is sent).
    SubmitError: the host is not a URL, cannot be reached, or refused.
  """
  loaded = spec_lib.load(spec_path)
  arguments = _arguments(loaded, params or {})
  host = _check_host(host)
  experiment = experiment or "Default"
  root = pipeline_root or loaded.default_pipeline_root or None

  import kfp  # here: kfp.Client pulls in the Kubernetes client
  import kfp_server_api
  import urllib3

  unreachable = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, OSError)
  # urllib3 logs each connection retry; the error below says it once.
  quieted = [logging.getLogger(n) for n in ("urllib3", "urllib3.connectionpool")]
  previous_levels = [log.level for log in quieted]
  for log in quieted:
    log.setLevel(logging.ERROR)
  with tempfile.TemporaryDirectory(prefix="ckptflow-submit-") as directory:
    package = _package(loaded, directory)
    try:
      # kfp.Client prints links on stdout; the caller prints the run once.
      with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", FutureWarning)
        client = kfp.Client(host=host, namespace=namespace or "kubeflow")
        result = client.create_run_from_pipeline_package(
            package, arguments=arguments, run_name=run_name or f"{loaded.name} (ckptflow)",
            experiment_name=experiment, pipeline_root=root)
    except kfp_server_api.ApiException as e:
      raise SubmitError(f"Kubeflow Pipelines at {host} refused the run: "
                        f"{e.status} {_reason(e)}") from e
    except unreachable as e:
      raise SubmitError(f"cannot reach Kubeflow Pipelines at {host}: {_reason(e)}") from e
    finally:
      for log, level in zip(quieted, previous_levels):
        log.setLevel(level)
  return SubmittedRun(run_id=result.run_id, experiment=experiment, host=host,
                      url=f"{host}/#/runs/details/{result.run_id}")
