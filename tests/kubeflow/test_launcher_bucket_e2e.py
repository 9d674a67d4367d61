"""End to end on a bucket: `ckptflow compile --pipeline-root s3://...`, then
the local launcher runs every task's own container command (through
`ckptflow.components.kubeflow.entry`), each in its own working directory,
sharing nothing but the RGW bucket and the metadata store, as pods do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from ckptflow.base import metadata, storage
from support import ckptflow

pytestmark = [pytest.mark.e2e, pytest.mark.heavy]  # a launcher run, one process per task

# As the launcher records them (KFP's schema titles).
TFX_TYPES = ("tfx.Examples", "tfx.Schema", "tfx.Model", "tfx.ModelBlessing", "tfx.PushedModel")


def test_compiled_pipeline_runs_task_by_task_on_a_bucket(bucket, tmp_path, penguins_dir):
  root, serving = f"s3://{bucket}/kfp", f"s3://{bucket}/serving"
  spec = tmp_path / "spec"
  ckptflow("compile", "--target", "kubeflow", "--out", str(spec),
           "--image", "registry.example.com/ckptflow:e2e", "--data", str(penguins_dir),
           "--home", str(tmp_path / "home"), "--pipeline-root", root,
           "--serving-dir", serving, "--model-name", "penguin", "--train-steps", "200",
           "--checkpoint-every", "100")
  compiled = (spec / "pipeline.json").read_text()
  assert json.loads(compiled)["runtimeConfig"]["gcsOutputDirectory"] == root
  assert os.environ["AWS_SECRET_ACCESS_KEY"] not in compiled

  target = str(tmp_path / "metadata.sqlite")
  run_id = f"bucket-{uuid.uuid4().hex[:8]}"
  work = tmp_path / "pods"
  result = subprocess.run(
      [sys.executable, "-m", "ckptflow.kubeflow.launcher", str(spec / "pipeline.json"),
       "--metadata", target, "--run-id", run_id],
      capture_output=True, text=True, timeout=3600,
      env=os.environ | {"TF_USE_LEGACY_KERAS": "1", "TMPDIR": str(work.mkdir() or work)})
  assert result.returncode == 0, result.stderr[-4000:]
  assert os.environ["AWS_SECRET_ACCESS_KEY"] not in result.stdout + result.stderr

  store = metadata.open_store(target, create=False)
  for type_name in TFX_TYPES:
    artifacts = store.get_artifacts_by_type(type_name)
    assert artifacts, type_name
    assert all(a.uri.startswith(f"{root}/") or a.uri.startswith(f"{serving}/")
               for a in artifacts), [a.uri for a in artifacts]
  checkpoints = store.get_artifacts_by_type("Checkpoint")
  assert sorted(c.properties["step"].int_value for c in checkpoints) == [100, 200]
  for checkpoint in checkpoints:
    assert checkpoint.uri.startswith(f"{root}/")
    assert storage.verify_committed(checkpoint.uri) == []
  assert storage.committed(f"{serving}/penguin/1") is not None
  # Every task ran in a working directory of its own, none under the bucket.
  attempts = sorted(p.relative_to(work).parts[2:] for p in work.glob("*/.launcher/*/attempt-*"))
  assert len(attempts) == 7 and len({a[0] for a in attempts}) == 7, attempts
