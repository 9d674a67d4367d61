"""The pipeline with its root and its serving directory in a bucket on a real
S3 server (Ceph's RADOS Gateway, `.ci/rgw`): one `ckptflow run` on the
penguins, then the commands a user runs against it, kills at the push, and
racing promotes. The home holds only the MLMD store, its lock and logs.

The tests share one run (a run costs minutes) and run in file order; each
leaves what the next ones assert true.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

from ckptflow.base import storage
from ckptflow.base.metadata import open_store
from support import E2E_EVERY, E2E_STEPS, ckptflow

pytestmark = [pytest.mark.e2e, pytest.mark.heavy]

MODEL = "penguin"
TFX_TYPES = ("Examples", "Schema", "Checkpoint", "Model", "ModelBlessing", "PushedModel")


class BucketHome:
  def __init__(self, home: pathlib.Path, bucket: str, env: dict[str, str]):
    self.home = home
    self.bucket = bucket
    self.env = env
    self.pipeline_root = f"s3://{bucket}/p"
    self.serving = f"s3://{bucket}/serving"

  def cli(self, *args: str, env: dict | None = None, check: bool = True,
          serving: bool = True) -> subprocess.CompletedProcess:
    extra = ("--serving-dir", self.serving) if serving else ()
    return ckptflow(*args, "--home", str(self.home), *extra, env=self.env | (env or {}),
                    check=check)

  def store(self):
    return open_store(str(self.home / "metadata.sqlite"), create=False)

  def doctor(self, grace: str = "0") -> tuple[int, list[dict]]:
    result = self.cli("doctor", "--json", env={"CKPTFLOW_UNCOMMITTED_GRACE_S": grace},
                      check=False)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    return result.returncode, json.loads(result.stdout)["findings"]

  def models_config(self) -> dict:
    from ckptflow.components.pusher import serving
    return {name: (sorted(s.versions), dict(s.labels))
            for name, s in serving.read_models_config(self.serving).items()}


@pytest.fixture(scope="module")
def rgw_env(rgw):
  with pytest.MonkeyPatch.context() as patch:
    for name, value in rgw.items():
      patch.setenv(name, value)
    yield dict(rgw)


@pytest.fixture(scope="module")
def bh(rgw_env, tmp_path_factory, penguins_dir) -> BucketHome:
  import uuid

  from ckptflow.base import s3
  name = f"ckptflow-e2e-{uuid.uuid4().hex[:10]}"
  s3.client().create_bucket(Bucket=name)
  where = BucketHome(tmp_path_factory.mktemp("s3e2e") / "home", name, rgw_env)
  result = ckptflow("run", "--home", str(where.home), "--data", str(penguins_dir),
                    "--pipeline-root", where.pipeline_root, "--serving-dir", where.serving,
                    "--train-steps", str(E2E_STEPS), "--checkpoint-every", str(E2E_EVERY),
                    "--model-name", MODEL, env=rgw_env)
  (where.home.parent / "run.stdout").write_text(result.stdout)
  (where.home.parent / "run.stderr").write_text(result.stderr)
  return where


def test_run_on_a_bucket_puts_every_artifact_in_it_and_only_the_store_at_home(bh):
  store = bh.store()
  for type_name in TFX_TYPES:
    artifacts = store.get_artifacts_by_type(type_name)
    assert artifacts, type_name
    for artifact in artifacts:
      assert artifact.uri.startswith(f"s3://{bh.bucket}/"), (type_name, artifact.uri)
  local = sorted(str(p.relative_to(bh.home)) for p in bh.home.rglob("*"))
  # The store, the home lock and the home's identity (which store it uses).
  assert set(local) <= {"metadata.sqlite", ".ckptflow.lock", ".ckptflow-home.json",
                        "logs"}, local
  assert "metadata.sqlite" in local
  # Checkpoints are committed prefixes in the bucket.
  for artifact in store.get_artifacts_by_type("Checkpoint"):
    if artifact.state == artifact.LIVE:
      assert storage.verify_committed(artifact.uri) == []
  # The pushed version is committed and listed in models.config.
  assert bh.models_config()[MODEL] == ([1], {"stable": 1})
  assert storage.committed(f"{bh.serving}/{MODEL}/1") is not None


def test_no_secret_in_output_store_or_bucket_objects(bh):
  secret = bh.env["AWS_SECRET_ACCESS_KEY"]
  assert secret not in (bh.home.parent / "run.stdout").read_text()
  assert secret not in (bh.home.parent / "run.stderr").read_text()
  assert secret.encode() not in (bh.home / "metadata.sqlite").read_bytes()
  for rel in storage.list_files(f"s3://{bh.bucket}"):
    if rel.endswith((".json", ".config", ".pbtxt", ".txt")):
      assert secret.encode() not in storage.read_bytes(f"s3://{bh.bucket}/{rel}"), rel


def test_checkpoints_lineage_report_and_doctor_work_on_a_bucket_home(bh, tmp_path):
  listed = json.loads(bh.cli("checkpoints", "--json", serving=False).stdout)
  rows = listed if isinstance(listed, list) else listed.get("checkpoints", listed)
  assert any(str(r.get("uri", "")).startswith("s3://") for r in rows), listed
  lineage = json.loads(bh.cli("lineage", f"{MODEL}:1", "--json", serving=False).stdout)
  assert "s3://" in json.dumps(lineage)
  bh.cli("report", "--out", str(tmp_path / "report"))
  assert (tmp_path / "report" / "index.html").is_file()
  assert bh.doctor() == (0, [])


def _checkpoint(bh, step):
  [artifact] = [a for a in bh.store().get_artifacts_by_type("Checkpoint")
                if a.properties["step"].int_value == step]
  return artifact


def _eval_examples(bh, count=24):
  import tensorflow as tf
  [examples] = bh.store().get_artifacts_by_type("Examples")
  split = f"{examples.uri}/Split-eval"
  files = [f"{split}/{name}" for name in storage.list_names(split)]
  return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")
          .take(count)]


def _restored_from_checkpoint(bh, step):
  """The model rebuilt from the run's settings and restored straight from
  the checkpoint's files in the bucket, without any ckptflow export code."""
  import tensorflow as tf
  from ckptflow.components.trainer.contract import TrainingSpec
  from ckptflow.base import mlmd
  from ckptflow.pipeline import model as model_module
  store = bh.store()
  [trainer] = [e for t in store.get_execution_types() if t.name.endswith("CheckpointingTrainer")
               for e in store.get_executions_by_type(t.name)]
  settings = mlmd.properties(trainer)
  keys = tuple(json.loads(settings["feature_keys"]))
  spec = TrainingSpec(feature_keys=keys, label_key=settings["label_key"],
                      hyperparameters=json.loads(settings["hyperparameters"]),
                      seed=settings["seed"], rng=tf.random.Generator.from_seed(1))
  model = model_module.build_training(spec).model
  model({k: tf.zeros([1, 1]) for k in keys})
  status = tf.train.Checkpoint(model=model).read(f"{_checkpoint(bh, step).uri}/ckpt")
  status.expect_partial().assert_existing_objects_matched()
  return model, keys


def test_promote_pushes_the_next_version_into_the_bucket_and_it_predicts_as_its_checkpoint(bh):
  step = E2E_EVERY * 2
  result = json.loads(bh.cli("promote", f"step:{step}", "--force", "--json").stdout)
  assert result["served"]["version"] == 2
  path = result["served"]["path"]
  assert path == f"{bh.serving}/{MODEL}/2"
  assert storage.verify_committed(path) == []
  assert bh.models_config()[MODEL] == ([2], {"stable": 2})

  import tensorflow as tf
  storage.prepare(path)
  serialized = _eval_examples(bh)
  model, keys = _restored_from_checkpoint(bh, step)
  features = tf.io.parse_example(
      tf.constant(serialized), {k: tf.io.FixedLenFeature([1], tf.float32) for k in keys})
  expected = model(features, training=False).numpy()
  served = tf.saved_model.load(path)
  outputs = served.signatures["serving_default"](examples=tf.constant(serialized))["outputs"]
  np.testing.assert_allclose(outputs.numpy(), expected, rtol=1e-6, atol=1e-7)
  assert bh.doctor() == (0, [])


def test_rollback_on_a_bucket_moves_stable_back_and_models_config_follows(bh):
  labels_before = bh.models_config()[MODEL][1]
  assert labels_before == {"stable": 2}
  bh.cli("rollback", MODEL)
  assert bh.models_config()[MODEL][1] == {"stable": 1}
  assert bh.doctor() == (0, [])


def test_promoting_a_served_checkpoint_again_on_a_bucket_moves_the_label_to_its_version(bh):
  # No --serving-dir: the home remembers the serving root its run pushed to.
  again = json.loads(bh.cli("promote", f"step:{E2E_EVERY * 2}", "--force", "--json",
                            "--reason", "back to step 200", serving=False).stdout)
  assert again["serving_root"] == bh.serving
  assert again["outcome"] == "relabelled" and again["served"]["version"] == 2
  assert bh.models_config()[MODEL] == ([2], {"stable": 2})
  assert storage.committed(f"{bh.serving}/{MODEL}/3") is None  # no copy pushed
  history = json.loads(bh.cli("history", MODEL, "--json", serving=False).stdout)
  entries = history["history"]
  assert entries[-1]["version"] == 2 and "back to step 200" in json.dumps(entries[-1])
  assert bh.doctor() == (0, [])


def test_gc_lists_bucket_versions_as_skipped_and_removes_none(bh):
  planned = json.loads(bh.cli("gc", "--keep-versions", "1", "--json", serving=False).stdout)
  skipped = {(s["kind"], s["path"]): s["why"] for s in planned["skipped"]}
  assert skipped == {("version", f"{bh.serving}/{MODEL}/1"):
                     "in a bucket: gc removes served versions on disk only"}, planned
  assert not [r for r in planned["removed"] if r["kind"] == "version"]
  assert storage.committed(f"{bh.serving}/{MODEL}/1") is not None
  assert bh.doctor() == (0, [])


def test_push_killed_mid_copy_is_never_listed_and_doctor_removes_it(bh):
  model = "penguin_killed"
  killed = bh.cli("promote", "latest", "--force", "--model-name", model, "--json",
                  env={"CKPTFLOW_FAULT": "push-copy"}, check=False)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  partial = f"{bh.serving}/{model}/1"
  assert storage.exists(partial) and storage.committed(partial) is None
  assert model not in bh.models_config()
  # Within the grace period a live pusher may own it: not reported.
  assert bh.doctor(grace="3600") == (0, [])
  code, findings = bh.doctor(grace="0")
  assert code == 1 and [(f["kind"], f["subject"]) for f in findings] == [
      ("push-staging", partial)]
  repaired = bh.cli("doctor", "--repair", "--json",
                    env={"CKPTFLOW_UNCOMMITTED_GRACE_S": "0"}, check=False)
  assert repaired.returncode in (0, 1), repaired.stderr[-2000:]
  assert not storage.exists(partial)
  assert bh.doctor() == (0, [])
  # The claimed number is never reused: the next push takes 2.
  rerun = json.loads(bh.cli("promote", "latest", "--force", "--model-name", model,
                            "--json").stdout)
  assert rerun["served"]["version"] == 2
  assert bh.models_config()[model] == ([2], {"stable": 2})


def test_two_promotes_racing_on_one_bucket_model_get_distinct_versions(bh):
  model = "penguin_race"
  command = [sys.executable, "-m", "ckptflow.cli", "promote", "--force",
             "--model-name", model, "--home", str(bh.home), "--serving-dir", bh.serving,
             "--json"]
  env = os.environ | bh.env | {"TF_USE_LEGACY_KERAS": "1"}
  # Two checkpoints (promotions of one checkpoint take turns), labelled
  # differently, so that models.config must list both versions.
  racers = [subprocess.Popen(command + [spec, "--label", label], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
            for spec, label in ((f"step:{E2E_EVERY * 2}", "stable"), ("latest", "canary"))]
  outputs = [racer.communicate(timeout=900) for racer in racers]
  for racer, (_, stderr) in zip(racers, outputs):
    assert racer.returncode == 0, stderr[-3000:]
  documents = [json.loads(stdout) for stdout, _ in outputs]
  assert [d["label"] for d in documents] == ["stable", "canary"]
  served = {d["label"]: d["served"]["version"] for d in documents}
  assert sorted(served.values()) == [1, 2]
  assert bh.models_config()[model] == ([1, 2], served)
  assert bh.doctor() == (0, [])
