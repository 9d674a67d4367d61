"""The local KFP launcher's refusals: what open-source KFP would not run,
and inputs it cannot resolve, end with one line before any task runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ckptflow.kubeflow import golden


def launch(spec_path, tmp_path, *args):
  return subprocess.run(
      [sys.executable, "-m", "ckptflow.kubeflow.launcher", str(spec_path),
       "--pipeline-root", str(tmp_path / "root"),
       "--metadata", str(tmp_path / "metadata.sqlite"), *args],
      capture_output=True, text=True, timeout=300,
      env=os.environ | {"TF_USE_LEGACY_KERAS": "1"})


def golden_job() -> dict:
  with open(golden.GOLDEN_PATH, encoding="utf-8") as f:
    return json.load(f)


def one_line_error(result) -> str:
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2, result.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith("launcher: error: "), lines
  return lines[0]


def test_resolver_task_is_refused_as_open_source_kfp_does(tmp_path):
  job = golden_job()
  spec = job["pipelineSpec"]
  spec["deploymentSpec"]["executors"]["Evaluator_executor"] = {"resolver": {
      "outputArtifactQueries": {"model": {"filter": 'schema_title="tfx.Model"'}}}}
  path = tmp_path / "pipeline.json"
  path.write_text(json.dumps(job))

  error = one_line_error(launch(path, tmp_path))

  assert "task 'Evaluator' is a TFX Resolver node" in error
  assert not (tmp_path / "root" / "ckptflow").exists()  # nothing ran


@pytest.mark.parametrize("args, expected", [
    (["--param", "data_rot=/x"], "parameter 'data_rot' is not a pipeline parameter"),
    (["--task", "Trainer"], "task 'Trainer' is not in the spec"),
    (["--task", "Pusher"], "upstream task 'CheckpointingTrainer' has not completed in run"),
])
def test_unresolvable_request_is_refused_before_any_task_runs(tmp_path, args, expected):
  error = one_line_error(launch(golden.GOLDEN_PATH, tmp_path, "--run-id", "r1", *args))
  assert expected in error


def test_spec_that_is_not_a_pipeline_is_refused(tmp_path):
  path = tmp_path / "pipeline.yaml"
  path.write_text("- a\n- list\n")
  error = one_line_error(launch(path, tmp_path))
  assert f"pipeline spec '{path}' is not a pipeline" in error
