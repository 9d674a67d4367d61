"""`ckptflow doctor`: every kind of disagreement between MLMD and the files of
a home is found, and `--repair` resolves it (real SQLite MLMD, real files,
the real CLI in a subprocess where the exit code matters)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from ml_metadata.proto import metadata_store_pb2

from ckptflow.components import checkpoint as ckpt_records
from ckptflow.components import promotion
from ckptflow.components.pusher import serving
from ckptflow.operations import doctor
from ckptflow.base.home import shared_lock
from reliability_support import ToyHome, tree
from support import ckptflow

LIVE = metadata_store_pb2.Artifact.LIVE


def kinds(findings):
  return sorted(f.kind for f in findings)


def test_consistent_home_has_no_findings_and_exits_0(toy):
  result = ckptflow("doctor", "--home", str(toy.home))
  assert result.returncode == 0
  assert "no findings" in result.stdout


def test_findings_exit_1_and_repair_exits_0_then_clean(toy):
  toy.checkpoint(300, register=False)
  result = ckptflow("doctor", "--home", str(toy.home), check=False)
  assert result.returncode == 1
  assert result.stdout.startswith("checkpoint-orphan")
  repaired = ckptflow("doctor", "--home", str(toy.home), "--repair", check=False)
  assert repaired.returncode == 0, repaired.stderr
  assert "[repaired: deleted]" in repaired.stdout
  assert ckptflow("doctor", "--home", str(toy.home)).returncode == 0


def test_json_lists_findings_with_kind_subject_and_repair(toy):
  orphan = toy.checkpoint(300, register=False)
  result = ckptflow("doctor", "--home", str(toy.home), "--json", check=False)
  document = json.loads(result.stdout)
  assert result.returncode == 1
  assert document["remaining"] == 1
  [finding] = document["findings"]
  assert (finding["kind"], finding["subject"], finding["repaired"]) == (
      "checkpoint-orphan", str(orphan), False)


def test_unregistered_checkpoint_dir_is_an_orphan_and_repair_deletes_it(toy):
  orphan = toy.checkpoint(300, register=False)
  assert kinds(toy.findings()) == ["checkpoint-orphan"]
  toy.findings(fix=True)
  assert not orphan.exists()
  assert toy.findings() == []


def test_staging_leftover_is_found_and_deleted(toy):
  staging = (toy.home / "pipeline_root/CheckpointingTrainer/checkpoints/run/exec-9"
             / "step-00000300.staging")
  staging.mkdir(parents=True)
  (staging / "ckpt.index").write_bytes(b"partial")
  assert kinds(toy.findings()) == ["checkpoint-staging"]
  toy.findings(fix=True)
  assert not staging.exists()
  assert toy.findings() == []


def test_live_checkpoint_without_files_is_marked_deleted_with_reason(toy):
  [first, _] = ckpt_records.list_checkpoints(toy.store)
  shutil.rmtree(first.uri)
  [finding] = toy.findings()
  assert (finding.kind, finding.artifact_id) == ("checkpoint-missing", first.id)
  toy.findings(fix=True)
  [artifact] = toy.store.get_artifacts_by_id([first.id])
  assert artifact.state == metadata_store_pb2.Artifact.DELETED
  assert artifact.custom_properties["state"].string_value == "DELETED"
  assert "missing" in artifact.custom_properties["state_reason"].string_value
  assert toy.findings() == []


def test_checkpoint_whose_bytes_changed_is_marked_abandoned_and_kept(toy):
  [first, _] = ckpt_records.list_checkpoints(toy.store)
  with open(os.path.join(first.uri, "ckpt.index"), "ab") as f:
    f.write(b"flipped")
  [finding] = toy.findings()
  assert (finding.kind, finding.artifact_id) == ("checkpoint-corrupt", first.id)
  assert toy.findings(verify_checksums=False) == []
  toy.findings(fix=True)
  [artifact] = toy.store.get_artifacts_by_id([first.id])
  assert artifact.state == metadata_store_pb2.Artifact.ABANDONED
  assert os.path.isdir(first.uri)  # kept for inspection, never used again
  assert toy.findings() == []


def test_files_of_a_pruned_checkpoint_are_deleted(toy):
  [first, _] = ckpt_records.list_checkpoints(toy.store)
  ckpt_records.set_states(toy.store, [first.id], metadata_store_pb2.Artifact.DELETED)
  assert kinds(toy.findings()) == ["checkpoint-pruned"]
  toy.findings(fix=True)
  assert not os.path.exists(first.uri)
  assert toy.findings() == []


def test_served_version_without_record_is_unlisted_then_deleted_and_number_not_reused(toy):
  # What a Pusher killed after its push and models.config write, before
  # TFX published its PushedModel, leaves behind.
  source = toy.home / "exports" / "pending"
  shutil.copytree(toy.home / "serving" / "penguin" / "1", source)
  served = serving.push_saved_model(str(source), str(toy.serving), "penguin")
  promotion.sync_models_config(toy.store, str(toy.serving), pending=served,
                               pending_label="stable")
  assert serving.read_models_config(str(toy.serving))["penguin"].labels == {"stable": 2}
  assert kinds(toy.findings()) == ["models-config", "version-unrecorded"]
  toy.findings(fix=True)
  assert serving.list_versions(str(toy.serving), "penguin") == [1]
  assert serving.read_models_config(str(toy.serving))["penguin"].labels == {"stable": 1}
  assert toy.findings() == []
  assert toy.promote(marker="v3").version == 3


def test_recorded_version_whose_directory_is_gone_is_marked_deleted_and_stays_reserved(toy):
  record = toy.promote(marker="v2")
  shutil.rmtree(record.path)
  # models.config still loads the vanished version as stable: also found.
  [config, missing] = sorted(toy.findings(), key=lambda f: f.kind)
  assert config.kind == "models-config"
  assert (missing.kind, missing.artifact_id) == ("version-missing", record.artifact_id)
  toy.findings(fix=True)
  assert serving.read_models_config(str(toy.serving))["penguin"].versions == (1,)
  [artifact] = toy.store.get_artifacts_by_id([record.artifact_id])
  assert artifact.state == metadata_store_pb2.Artifact.DELETED
  assert toy.findings() == []
  assert toy.promote(marker="v3").version == 3


def test_stale_push_staging_and_config_temp_file_are_deleted(toy):
  staging = toy.serving / "penguin" / ".staging-7-999999"
  staging.mkdir()
  temp = toy.serving / ".models.config.tmp-4242"
  temp.write_text("half")
  assert kinds(toy.findings()) == ["models-config", "push-staging"]
  toy.findings(fix=True)
  assert not staging.exists() and not temp.exists()
  assert toy.findings() == []


def test_models_config_that_disagrees_with_mlmd_is_rewritten(toy):
  toy.promote(marker="v2")
  serving.write_models_config(str(toy.serving), {
      "penguin": serving.ModelServingState(versions=(1,), labels={"stable": 1})})
  [finding] = toy.findings()
  assert finding.kind == "models-config"
  assert "stable" in finding.detail
  toy.findings(fix=True)
  assert serving.read_models_config(str(toy.serving))["penguin"].labels == {"stable": 2}
  assert toy.findings() == []


def test_lost_models_config_is_found_and_rebuilt(toy):
  os.unlink(toy.serving / "models.config")
  assert kinds(toy.findings()) == ["models-config"]
  toy.findings(fix=True)
  assert serving.read_models_config(str(toy.serving))["penguin"].versions == (1,)


def test_checkpoints_outside_the_home_are_not_doctors_business(toy, tmp_path):
  elsewhere = ToyHome(tmp_path / "other")  # its own store; register there
  registry = ckpt_records.CheckpointRegistry(toy.store, toy.execution_id)
  from reliability_support import register_checkpoint, write_checkpoint_dir
  outside = write_checkpoint_dir(elsewhere.home, toy.execution_id, 900)
  register_checkpoint(registry, outside, 900)
  shutil.rmtree(outside)
  assert toy.findings() == []


def test_repair_is_refused_while_another_command_holds_the_home(toy):
  orphan = toy.checkpoint(300, register=False)
  holder = subprocess.Popen(
      [sys.executable, "-c",
       "import sys, time\n"
       "from ckptflow.base.home import shared_lock\n"
       "with shared_lock(sys.argv[1]):\n"
       "  print('held', flush=True); time.sleep(60)\n", str(toy.home)],
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    before = tree(toy.home)
    result = ckptflow("doctor", "--home", str(toy.home), "--repair", check=False)
    report = ckptflow("doctor", "--home", str(toy.home), check=False)
  finally:
    holder.kill()
    holder.wait()
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("ckptflow: error: another ckptflow command is writing in")
  assert tree(toy.home) == before
  assert orphan.exists()
  assert report.returncode == 1
  assert "another ckptflow command is writing" in report.stdout


def test_recover_does_nothing_while_another_command_holds_the_home(toy):
  orphan = toy.checkpoint(300, register=False)
  with shared_lock(str(toy.home)):
    assert doctor.recover(toy.target, toy.where()) == []
  assert orphan.exists()
  [repaired] = doctor.recover(toy.target, toy.where())
  assert repaired.kind == "checkpoint-orphan" and repaired.repaired
  assert not orphan.exists()


def test_doctor_on_missing_store_fails_with_one_line_and_creates_nothing(tmp_path):
  home = tmp_path / "nothing"
  result = ckptflow("doctor", "--home", str(home), check=False)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(
      "ckptflow: error: no metadata store at")
  assert not home.exists()


def test_doctor_does_not_import_tensorflow_or_tfx(toy):
  code = ("import sys\n"
          "from ckptflow.cli import main as cli\n"
          "rc = cli.main(['doctor', '--home', sys.argv[1]])\n"
          "heavy = [m for m in ('tensorflow', 'tfx') if m in sys.modules]\n"
          "print(rc, heavy)\n")
  result = subprocess.run([sys.executable, "-c", code, str(toy.home)],
                          capture_output=True, text=True, check=True)
  assert result.stdout.strip().splitlines()[-1] == "0 []"


def test_digest_matches_the_trainers_on_a_real_checkpoint(tmp_path):
  import tensorflow as tf
  from ckptflow.components.trainer import checkpoint_files
  directory = tmp_path / "step-00000001"
  directory.mkdir()
  tf.train.Checkpoint(v=tf.Variable([1.0, 2.0, 3.0])).write(
      checkpoint_files.prefix(str(directory)))
  assert doctor.checkpoint_digest(str(directory)) == checkpoint_files.digest(str(directory))


def test_unfinished_and_unrecorded_exports_are_found_and_deleted(toy):
  exports = toy.home / "pipeline_root" / "CheckpointExport" / "checkpoint-1"
  staging = exports / "export-20260101T000000000000.staging"
  orphan = exports / "export-20260101T000001000000"
  recorded = exports / "export-20260101T000002000000"
  for path in (staging, orphan, recorded):
    (path / "Format-Serving").mkdir(parents=True)
  from reliability_support import put_model
  put_model(toy.store, str(recorded))
  assert kinds(toy.findings()) == ["export-orphan", "export-staging"]
  toy.findings(fix=True)
  assert not staging.exists() and not orphan.exists() and recorded.exists()
  assert toy.findings() == []
