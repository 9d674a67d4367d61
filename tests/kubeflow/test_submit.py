"""`ckptflow submit`: a compiled spec uploaded and started with kfp.Client.

No Kubeflow cluster runs here: the accepted-run case talks to a minimal
stand-in of the KFP v2 REST API that records what the client sent.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import threading

import pytest

from support import ckptflow

from ckptflow.kubeflow import golden


@pytest.fixture
def spec(tmp_path):
  """A compiled spec (the golden one; its image and versions are masked)."""
  path = tmp_path / "pipeline.json"
  shutil.copy(golden.GOLDEN_PATH, path)
  return path


def closed_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class FakeKfpApi(http.server.BaseHTTPRequestHandler):
  """Answers the calls kfp.Client makes to start a run; records the run."""

  runs: list = []
  refuse_runs = False

  def _reply(self, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def do_GET(self):  # noqa: N802
    if self.path.startswith("/apis/v2beta1/healthz"):
      return self._reply(200, {"multi_user": False})
    if self.path.startswith("/apis/v2beta1/experiments"):
      return self._reply(200, {})
    return self._reply(404, {"message": "not found"})

  def do_POST(self):  # noqa: N802
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    if self.path == "/apis/v2beta1/experiments":
      return self._reply(200, {"experiment_id": "exp-1", "display_name": body["display_name"]})
    if self.path == "/apis/v2beta1/runs":
      if self.refuse_runs:
        return self._reply(400, {"error": "bad", "message": "invalid pipeline spec: no root"})
      type(self).runs.append(body)
      return self._reply(200, {"run_id": "run-1", "display_name": body["display_name"]})
    return self._reply(404, {"message": "not found"})

  def log_message(self, *args):
    pass


@pytest.fixture
def fake_kfp():
  FakeKfpApi.runs = []
  FakeKfpApi.refuse_runs = False
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeKfpApi)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{server.server_address[1]}", FakeKfpApi
  server.shutdown()


def test_submit_uploads_the_spec_with_parameters_and_pipeline_root(spec, fake_kfp):
  host, api = fake_kfp
  result = ckptflow("submit", "--host", host, "--spec", str(spec), "--experiment", "penguins",
                    "--param", "data_root=gs://bucket/penguins",
                    "--pipeline-root", "gs://bucket/root")
  assert result.stdout.strip() == (f"started run run-1 in experiment 'penguins': "
                                   f"{host}/#/runs/details/run-1")
  [run] = api.runs
  assert run["experiment_id"] == "exp-1"
  assert run["pipeline_spec"]["pipelineInfo"]["name"] == "ckptflow"
  assert sorted(run["pipeline_spec"]["root"]["dag"]["tasks"]) == [
      "CheckpointingTrainer", "CsvExampleGen", "Evaluator", "ExampleValidator", "Pusher",
      "SchemaGen", "StatisticsGen"]
  assert run["runtime_config"] == {"parameters": {"data_root": "gs://bucket/penguins"},
                                   "pipeline_root": "gs://bucket/root"}


def test_run_refused_by_the_server_is_a_one_line_error_with_its_reason(spec, fake_kfp):
  host, api = fake_kfp
  api.refuse_runs = True
  result = ckptflow("submit", "--host", host, "--spec", str(spec), check=False)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1
  assert lines[0].startswith(f"ckptflow: error: Kubeflow Pipelines at {host} refused the run: 400")
  assert "invalid pipeline spec: no root" in lines[0]


def test_unreachable_host_is_a_one_line_error_naming_it(spec):
  host = f"http://127.0.0.1:{closed_port()}"
  result = ckptflow("submit", "--host", host, "--spec", str(spec), check=False)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1
  assert lines[0].startswith(f"ckptflow: error: cannot reach Kubeflow Pipelines at {host}: ")


@pytest.mark.parametrize("name, text, expected", [
    ("notes.yaml", "just: a mapping\n", "is not a pipeline: it has no pipelineInfo, root, "
     "deploymentSpec"),
    ("broken.json", "{not json", "is not valid JSON"),
    ("extra.json", None, "does not parse as a KFP PipelineSpec"),
    ("pipeline.txt", "x", "has an unknown extension"),
])
def test_spec_that_is_not_a_pipeline_is_a_one_line_error_before_any_request(
    tmp_path, spec, name, text, expected):
  path = tmp_path / name
  if text is None:  # a compiled spec with a field KFP does not know
    job = json.loads(spec.read_text())
    job["pipelineSpec"]["root"]["dag"]["bogusField"] = 1
    text = json.dumps(job)
  path.write_text(text)
  host = f"http://127.0.0.1:{closed_port()}"
  result = ckptflow("submit", "--host", host, "--spec", str(path), check=False)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1
  assert expected in lines[0] and str(path) in lines[0]


def test_unknown_parameter_is_refused_before_any_request(spec):
  host = f"http://127.0.0.1:{closed_port()}"
  result = ckptflow("submit", "--host", host, "--spec", str(spec), "--param", "datta_root=/x",
                    check=False)
  assert result.returncode == 2
  assert result.stderr.strip() == ("ckptflow: error: parameter 'datta_root' is not a pipeline "
                                   "parameter. Expected one of: data_root")
