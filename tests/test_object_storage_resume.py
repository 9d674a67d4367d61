"""A `ckptflow run` on a bucket (Ceph RGW) killed with SIGKILL while a
checkpoint is being uploaded: the unfinished prefix (no commit marker) is
never registered, doctor lists it, the next run removes it, resumes from
the newest committed checkpoint in the bucket and ends with exactly the
weights of an uninterrupted run on local disk."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest

from ckptflow.base import storage
from ckptflow.base.metadata import open_store
from ckptflow.components import checkpoint as ckpt
from support import ckptflow

pytestmark = [pytest.mark.e2e, pytest.mark.heavy]  # three pipeline runs, one killed

STEPS = ("--train-steps", "300", "--checkpoint-every", "100")


def _variables(prefix: str) -> dict[str, np.ndarray]:
  import tensorflow as tf
  storage.prepare(prefix)
  reader = tf.train.load_checkpoint(prefix)
  # Every tensor but the object graph and the data iterator's state (a
  # variant, not comparable as an array; the step and weights show where
  # the data stream was).
  return {name: reader.get_tensor(name)
          for name, dtype in reader.get_variable_to_dtype_map().items()
          if dtype != tf.variant and not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")}


def _doctor(home, serving, grace):
  result = ckptflow("doctor", "--home", str(home), "--serving-dir", serving, "--json",
                    env={"CKPTFLOW_UNCOMMITTED_GRACE_S": grace}, check=False)
  assert result.returncode in (0, 1), result.stderr[-2000:]
  return result.returncode, json.loads(result.stdout)["findings"]


def test_kill_during_checkpoint_upload_resumes_from_the_bucket_bit_for_bit(
    bucket, tmp_path, penguins_dir):
  home = tmp_path / "home"
  root, serving = f"s3://{bucket}/p", f"s3://{bucket}/serving"
  args = ("run", "--home", str(home), "--data", str(penguins_dir), *STEPS,
          "--pipeline-root", root, "--serving-dir", serving)
  # Killed after the step-200 files are written, before their commit marker.
  killed = ckptflow(*args, check=False,
                    env={"CKPTFLOW_FAULT": "checkpoint-write", "CKPTFLOW_FAULT_AFTER": "1"})
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

  store = open_store(str(home / "metadata.sqlite"), create=False)
  [saved] = ckpt.list_checkpoints(store)
  assert saved.step == 100 and saved.uri.startswith(root)
  unfinished = saved.uri.replace("step-00000100", "step-00000200")
  assert storage.exists(unfinished) and storage.committed(unfinished) is None
  assert _doctor(home, serving, grace="3600") == (0, [])
  code, findings = _doctor(home, serving, grace="0")
  assert code == 1
  assert [(f["kind"], f["subject"]) for f in findings] == [("checkpoint-staging", unfinished)]

  resumed = ckptflow(*args)
  assert "served model:    " + serving in resumed.stdout
  store = open_store(str(home / "metadata.sqlite"), create=False)
  records = ckpt.list_checkpoints(store)
  assert sorted(r.step for r in records) == [100, 200, 300]
  [model_run] = store.get_artifacts_by_type("ModelRun")
  assert model_run.custom_properties["resumed_from_checkpoint"].int_value == saved.id
  for record in records:
    assert storage.verify_committed(record.uri) == []
  assert _doctor(home, serving, grace="0") == (0, [])

  local_home = tmp_path / "local"
  ckptflow("run", "--home", str(local_home), "--data", str(penguins_dir), *STEPS)
  local_store = open_store(str(local_home / "metadata.sqlite"), create=False)
  [local_final] = [r for r in ckpt.list_checkpoints(local_store) if r.step == 300]
  [bucket_final] = [r for r in records if r.step == 300]
  local_vars = _variables(f"{local_final.uri}/ckpt")
  bucket_vars = _variables(f"{bucket_final.uri}/ckpt")
  assert local_vars.keys() == bucket_vars.keys() and local_vars
  for name, value in local_vars.items():
    np.testing.assert_array_equal(bucket_vars[name], value, err_msg=name)


def test_kill_during_the_trainers_export_to_a_bucket_leaves_nothing_registered(
    bucket, tmp_path, penguins_dir):
  """SIGKILL after the Trainer's SavedModel is written to the bucket and
  before its commit marker: no Model is recorded, doctor lists the
  unfinished export (after the grace period) and removes it, and the next
  run exports, pushes and leaves doctor clean."""
  home = tmp_path / "home"
  root, serving = f"s3://{bucket}/p", f"s3://{bucket}/serving"
  args = ("run", "--home", str(home), "--data", str(penguins_dir), *STEPS,
          "--pipeline-root", root, "--serving-dir", serving)
  killed = ckptflow(*args, check=False, env={"CKPTFLOW_FAULT": "export-write"})
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

  store = open_store(str(home / "metadata.sqlite"), create=False)
  assert store.get_artifacts_by_type("Model") == []
  assert store.get_artifacts_by_type("PushedModel") == []
  assert sorted(r.step for r in ckpt.list_checkpoints(store)) == [100, 200, 300]
  assert _doctor(home, serving, grace="3600") == (0, [])
  code, findings = _doctor(home, serving, grace="0")
  assert code == 1
  [(kind, unfinished)] = [(f["kind"], f["subject"]) for f in findings]
  assert kind == "export-staging" and unfinished.startswith(root)
  assert unfinished.endswith("/Format-Serving") and storage.committed(unfinished) is None

  repaired = ckptflow("doctor", "--repair", "--home", str(home), "--serving-dir", serving,
                      "--json", env={"CKPTFLOW_UNCOMMITTED_GRACE_S": "0"}, check=False)
  assert repaired.returncode in (0, 1), repaired.stderr[-2000:]
  assert not storage.exists(unfinished)
  assert _doctor(home, serving, grace="0") == (0, [])

  rerun = ckptflow(*args)
  assert "served model:    " + serving in rerun.stdout
  store = open_store(str(home / "metadata.sqlite"), create=False)
  [model] = store.get_artifacts_by_type("Model")
  assert storage.verify_committed(model.uri + "/Format-Serving") == []
  assert _doctor(home, serving, grace="0") == (0, [])
