"""The registry commands on a real home: `history` (with `--at`), `--reason`,
`gc` (dry run, removal order, roots, a concurrent promote), KFP-typed pushes.

Pushes go through `promotion.promote` (the push the Pusher and `promote`
use) on a toy home with SavedModel-shaped directories, so no TensorFlow is
needed; every command runs as the real CLI in a subprocess, on a real MLMD
SQLite store.
"""

from __future__ import annotations

import datetime
import getpass
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
from ml_metadata.proto import metadata_store_pb2

from ckptflow.base.metadata import open_store
from ckptflow.components import checkpoint as ckpt_records
from ckptflow.components import promotion
from ckptflow.components.pusher import serving
from reliability_support import ToyHome, make_saved_model, put_model
from support import ckptflow

LIVE = metadata_store_pb2.Artifact.LIVE
DELETED = metadata_store_pb2.Artifact.DELETED


def push(toy: ToyHome, marker: str, reason: str = "", name: str = "penguin"):
  source = make_saved_model(toy.home / "exports" / marker, marker)
  record = promotion.promote(toy.store, saved_model_dir=source,
                             serving_root=str(toy.serving), model_name=name,
                             model_artifact_id=put_model(toy.store, source),
                             user_reason=reason)
  time.sleep(0.05)  # distinct millisecond times, for --at between events
  return record


def history(toy, model="penguin", *extra):
  return json.loads(ckptflow("history", model, "--home", str(toy.home), "--json",
                             *extra).stdout)


def files(root: pathlib.Path) -> dict[str, str]:
  """Every path under root -> sha256 of its bytes ("dir" for directories),
  the SQLite store included."""
  return {str(p.relative_to(root)): "dir" if p.is_dir() else
          hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.name != ".ckptflow.lock"}


def between(a: str, b: str) -> str:
  t1, t2 = datetime.datetime.fromisoformat(a), datetime.datetime.fromisoformat(b)
  return (t1 + (t2 - t1) / 2).isoformat()


@pytest.fixture
def three(tmp_path):
  toy = ToyHome(tmp_path / "home")
  toy.checkpoint(100)
  for i, reason in enumerate(("first", "second", "third"), start=1):
    push(toy, f"v{i}", reason)
  return toy


def test_history_json_lists_pushes_and_rollbacks_in_order_with_reasons_and_user(three):
  ckptflow("rollback", "penguin", "--home", str(three.home), "--reason", "latency up")
  time.sleep(0.05)
  ckptflow("rollback", "penguin", "--home", str(three.home), "--reason", "still bad")

  entries = history(three)["history"]

  assert [(e["action"], e["version"], e["label"], e["previous_version"], e["reason"])
          for e in entries] == [
      ("push", 1, "stable", None, "first"), ("push", 2, "stable", None, "second"),
      ("push", 3, "stable", None, "third"), ("rollback", 2, "stable", 3, "latency up"),
      ("rollback", 1, "stable", 2, "still bad")]
  assert {e["user"] for e in entries} == {getpass.getuser()}
  assert all(e["host"] for e in entries)
  times = [e["time"] for e in entries]
  assert times == sorted(times)
  assert promotion.current_labels(three.store, "penguin") == {"stable": 1}

  # Between each pair of events, --at answers what held the label then.
  expected = [(1, 1), (2, 2), (3, 3), (2, 3)]  # (stable, newest version)
  for (a, b), (stable, newest) in zip(zip(times, times[1:]), expected):
    state = history(three, "penguin", "--at", between(a, b))
    assert (state["labels"], state["newest_version"]) == ({"stable": stable}, newest)
  assert history(three, "penguin", "--at", times[-1])["labels"] == {"stable": 1}
  assert history(three, "penguin", "--at", "2001-01-01T00:00Z")["labels"] == {}

  text = ckptflow("history", "penguin", "--home", str(three.home)).stdout
  assert "stable -> version 2 (rollback, was 3)" in text and "latency up" in text
  # The push's reason in lineage, the rollbacks' in the report.
  assert "user_reason=third" in ckptflow("lineage", "penguin:3", "--home",
                                         str(three.home)).stdout
  ckptflow("report", "--home", str(three.home))
  page = (three.home / "report" / "index.html").read_text()
  assert "latency up" in page and "still bad" in page


def test_history_at_takes_a_local_time_without_offset(three):
  entries = history(three)["history"]
  utc = datetime.datetime.fromisoformat(between(entries[1]["time"], entries[2]["time"]))
  local = utc.astimezone().replace(tzinfo=None).isoformat()
  assert history(three, "penguin", "--at", local)["labels"] == {"stable": 2}


def test_rollback_reason_is_recorded_on_the_set_label_execution(three):
  ckptflow("rollback", "penguin", "--home", str(three.home), "--reason", "why not")
  [change] = open_store(three.target).get_executions_by_type("ckptflow.SetLabel")
  props = {k: v.string_value for k, v in change.custom_properties.items()
           if v.HasField("string_value")}
  assert props["user_reason"] == "why not" and props["user"] == getpass.getuser()


def test_gc_dry_run_changes_nothing_then_gc_removes_unlabelled_old_versions(tmp_path):
  toy = ToyHome(tmp_path / "home")
  toy.checkpoint(100)
  pruned = toy.checkpoint(200)
  [_, pruned_record] = ckpt_records.list_checkpoints(toy.store)
  ckpt_records.set_states(toy.store, [pruned_record.id], DELETED)  # files left behind
  for i in range(1, 6):
    push(toy, f"v{i}")
  ckptflow("rollback", "penguin", "--home", str(toy.home), "--to", "2")
  canary = push(toy, "c", name="other")
  promotion.move_label(toy.store, str(toy.serving), "penguin", "canary", 4,
                       reason="relabel")
  before = files(toy.home)

  dry = json.loads(ckptflow("gc", "--home", str(toy.home), "--keep-versions", "1",
                            "--dry-run", "--json").stdout)

  assert files(toy.home) == before  # byte for byte, the store included
  would = {(r["kind"], r.get("model_name"), r.get("version")) for r in dry["removed"]}
  assert would == {("version", "penguin", 1), ("version", "penguin", 3),
                   ("checkpoint-files", None, None)}
  assert dry["bytes"] == sum(r["bytes"] for r in dry["removed"]) > 0

  done = json.loads(ckptflow("gc", "--home", str(toy.home), "--keep-versions", "1",
                             "--json").stdout)

  assert {(r["kind"], r.get("model_name"), r.get("version")) for r in done["removed"]} == would
  assert serving.list_versions(str(toy.serving), "penguin") == [2, 4, 5]
  assert not pruned.exists()
  config = serving.read_models_config(str(toy.serving))
  assert dict(config["penguin"].labels) == {"stable": 2, "canary": 4}
  assert set(config["penguin"].versions) == {2, 4, 5}
  assert config["other"].versions == (canary.version,)
  store = open_store(toy.target)
  states = {r.version: r.deleted for r in promotion.served_versions(store, "penguin")}
  assert states == {1: True, 2: False, 3: True, 4: False, 5: False}
  doctor = ckptflow("doctor", "--home", str(toy.home), check=False)
  assert doctor.returncode == 0, doctor.stdout
  entries = history(toy)["history"]
  assert [(e["action"], e["version"]) for e in entries if e["action"] == "gc"] == [
      ("gc", 1), ("gc", 3)]
  ckptflow("report", "--home", str(toy.home))
  assert (toy.home / "report" / "index.html").read_text().count("gc&#39;d (DELETED)") == 2
  # The numbers stay reserved: the next push is 6.
  assert push(toy, "v6").version == 6

  again = json.loads(ckptflow("gc", "--home", str(toy.home), "--keep-versions", "1",
                              "--json").stdout)
  # v6 took stable from 2; 4 is still canary.
  assert {r["version"] for r in again["removed"]} == {2, 5}
  assert serving.list_versions(str(toy.serving), "penguin") == [4, 6]


def test_gc_keeps_the_newest_n_versions(three):
  done = json.loads(ckptflow("gc", "--home", str(three.home), "--keep-versions", "2",
                             "--json").stdout)
  assert [r["version"] for r in done["removed"]] == [1]
  assert serving.list_versions(str(three.serving), "penguin") == [2, 3]


def test_gc_never_follows_a_version_symlinked_outside_the_roots(three, tmp_path):
  outside = tmp_path / "outside" / "1"
  version_dir = three.serving / "penguin" / "1"
  os.makedirs(outside.parent)
  os.rename(version_dir, outside)
  os.symlink(outside, version_dir)
  before = files(outside.parent)

  done = json.loads(ckptflow("gc", "--home", str(three.home), "--keep-versions", "1",
                             "--json").stdout)

  assert {r["version"] for r in done["removed"]} == {2}
  assert [s["path"] for s in done["skipped"]] == [str(version_dir)]
  assert files(outside.parent) == before and version_dir.is_symlink()


_PROMOTER = """
import pathlib, sys, time
sys.path.insert(0, {tests!r})
from reliability_support import ToyHome, make_saved_model, put_model
from ckptflow.components import promotion
from ckptflow.base.home import shared_lock
toy = ToyHome(pathlib.Path({home!r}))
for i in range({count}):
  source = make_saved_model(toy.home / "exports" / f"race{{i}}", f"race{{i}}")
  with shared_lock(str(toy.home)):
    record = promotion.promote(toy.store, saved_model_dir=source,
                               serving_root=str(toy.serving), model_name="penguin",
                               model_artifact_id=put_model(toy.store, source))
  print(record.version, flush=True)
"""


@pytest.mark.heavy
def test_gc_during_concurrent_promotions_does_not_disturb_them(tmp_path):
  toy = ToyHome(tmp_path / "home")
  for i in range(6):
    push(toy, f"v{i}")
  env = os.environ | {"PYTHONPATH": os.pathsep.join(
      filter(None, [str(pathlib.Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
  promoter = subprocess.Popen(
      [sys.executable, "-c", _PROMOTER.format(tests=str(pathlib.Path(__file__).parent),
                                              home=str(toy.home), count=8)],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
  gcs = 0
  while promoter.poll() is None or gcs == 0:
    ckptflow("gc", "--home", str(toy.home), "--keep-versions", "1")
    gcs += 1
  out, err = promoter.communicate(timeout=300)

  assert promoter.returncode == 0, err[-3000:]
  pushed = [int(v) for v in out.split()]
  assert pushed == list(range(7, 15))
  store = open_store(toy.target)
  assert promotion.current_labels(store, "penguin") == {"stable": 14}
  assert (toy.serving / "penguin" / "14" / "saved_model.pb").read_bytes() == b"race7"
  config = serving.read_models_config(str(toy.serving))
  assert dict(config["penguin"].labels) == {"stable": 14}
  records = {r.version: r for r in promotion.served_versions(store, "penguin")}
  assert sorted(records) == list(range(1, 15))  # every push recorded once
  for version, record in records.items():
    on_disk = (toy.serving / "penguin" / str(version)).is_dir()
    assert on_disk == (not record.deleted), version
  assert ckptflow("doctor", "--home", str(toy.home), check=False).returncode == 0


# --- pushes recorded by KFP ------------------------------------------------------


def kfp_push(toy, version: int, label: str = "stable"):
  """A push as KFP records it: type tfx.PushedModel, numbers as doubles."""
  store = toy.store
  source = make_saved_model(toy.home / "exports" / f"kfp{version}", f"kfp{version}")
  model_id = put_model(store, source)
  target = toy.serving / "penguin" / str(version)
  make_saved_model(target, f"kfp{version}")
  type_id = store.put_artifact_type(metadata_store_pb2.ArtifactType(name="tfx.PushedModel"),
                                    can_add_fields=True)
  artifact = metadata_store_pb2.Artifact(type_id=type_id, uri=str(target), state=LIVE)
  props = artifact.custom_properties
  props["pushed"].double_value = 1.0
  props["pushed_version"].double_value = float(version)
  props["pushed_destination"].string_value = str(target)
  props["model_name"].string_value = "penguin"
  props["label"].string_value = label
  execution_type = store.put_execution_type(
      metadata_store_pb2.ExecutionType(name="system.ContainerExecution"))
  execution = metadata_store_pb2.Execution(
      type_id=execution_type, last_known_state=metadata_store_pb2.Execution.COMPLETE)
  input_event = metadata_store_pb2.Event(type=metadata_store_pb2.Event.INPUT,
                                         artifact_id=model_id)
  input_event.path.steps.add().key = "model"
  output_event = metadata_store_pb2.Event(type=metadata_store_pb2.Event.OUTPUT)
  output_event.path.steps.add().key = "pushed_model"
  store.put_execution(execution, [(None, input_event), (artifact, output_event)],
                      contexts=[])
  time.sleep(0.05)


def test_pushes_recorded_by_kfp_are_read_by_promotion_rollback_lineage_and_history(
    tmp_path):
  toy = ToyHome(tmp_path / "home")
  kfp_push(toy, 1)
  kfp_push(toy, 2)

  assert [r.version for r in promotion.served_versions(toy.store, "penguin")] == [1, 2]
  assert promotion.current_labels(toy.store, "penguin") == {"stable": 2}
  # promote reserves the KFP numbers: the next push is 3.
  assert push(toy, "ours").version == 3
  rolled = json.loads(ckptflow("rollback", "penguin", "--home", str(toy.home),
                               "--json").stdout)
  assert (rolled["previous_version"], rolled["version"]) == (3, 2)
  lineage = json.loads(ckptflow("lineage", "penguin:1", "--home", str(toy.home),
                                "--json").stdout)
  root = {n["key"]: n for n in lineage["nodes"]}[lineage["root"]]
  assert root["type"] == "tfx.PushedModel"
  entries = history(toy)["history"]
  assert [(e["action"], e["version"]) for e in entries] == [
      ("push", 1), ("push", 2), ("push", 3), ("rollback", 2)]
  config = serving.read_models_config(str(toy.serving))
  assert dict(config["penguin"].labels) == {"stable": 2}


def export_of(toy: ToyHome, step: int, protection: str):
  """A recorded `ckptflow export` of the toy checkpoint at `step` (the
  SavedModel-shaped files under the home's export root), protected as
  `protection`."""
  from ckptflow.operations import export
  [record] = [r for r in ckpt_records.list_checkpoints(toy.store) if r.step == step]
  uri = toy.home / "pipeline_root" / "CheckpointExport" / f"checkpoint-{record.id}" / "e"
  make_saved_model(uri / "Format-Serving", f"export{step}")
  exported = export._record_export(toy.store, record, str(uri), fingerprint="f",
                                   feature_dtypes={}, module="m")
  ckpt_records.set_protected(toy.store, record.id, protection)
  return exported


def test_gc_removes_exports_no_kept_version_needs_but_keeps_explicit_ones(tmp_path):
  toy = ToyHome(tmp_path / "home")
  for step in (100, 200, 300):
    toy.checkpoint(step)
  old = export_of(toy, 100, "promoted")
  kept = export_of(toy, 200, "promoted")
  explicit = export_of(toy, 300, "exported")
  for exported in (old, kept):
    promotion.promote(toy.store, saved_model_dir=exported.saved_model_dir,
                      serving_root=str(toy.serving), model_name="penguin",
                      model_artifact_id=exported.model_artifact_id)

  # --keep-exports 1 keeps the newest unneeded export (the only one).
  spared = json.loads(ckptflow("gc", "--home", str(toy.home), "--keep-versions", "1",
                               "--keep-exports", "1", "--dry-run", "--json").stdout)
  assert [r["kind"] for r in spared["removed"]] == ["version"]

  done = json.loads(ckptflow("gc", "--home", str(toy.home), "--keep-versions", "1",
                             "--json").stdout)

  assert {(r["kind"], r["artifact_id"]) for r in done["removed"]} == {
      ("version", promotion.served_versions(toy.store, "penguin")[0].artifact_id),
      ("export", old.model_artifact_id)}
  assert not os.path.exists(old.uri)
  assert os.path.isdir(kept.uri) and os.path.isdir(explicit.uri)
  store = open_store(toy.target)
  states = {a.id: a.state for a in store.get_artifacts_by_id(
      [old.model_artifact_id, kept.model_artifact_id, explicit.model_artifact_id])}
  assert states == {old.model_artifact_id: DELETED, kept.model_artifact_id: LIVE,
                    explicit.model_artifact_id: LIVE}
