"""Fault injection: a real `ckptflow run` (or a promoting process) is killed
with SIGKILL at each named fault point; `ckptflow doctor` then sees exactly
what the kill left, the next `ckptflow run` recovers it and completes, and
`ckptflow doctor` reports zero findings.

The tests share one home (each pipeline run costs most of a minute) and run
in file order; each starts by checking that the home is clean, so a failure
points at its own fault. Training steps change between trainer faults so
that the Trainer really runs again (unchanged inputs are served from TFX's
cache; whether the Evaluator and Pusher run again also depends on whether
the latest blessed model, the Evaluator's baseline, moved). The blessing
threshold is zero so that every new model is pushed.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from ckptflow.components import checkpoint as ckpt_records
from ckptflow.components import promotion
from ckptflow.components.pusher import serving
from ckptflow.base.metadata import open_store
from support import ckptflow

pytestmark = [pytest.mark.e2e, pytest.mark.heavy]  # kills real runs at fault points

KILLED = -signal.SIGKILL
EVERY = 20
CONFIG = """
[training]
checkpoint_every = 20

[evaluation]
lower_bound = 0.0
allowed_regression = 1.0
"""


class FaultHome:
  def __init__(self, home: pathlib.Path, data: pathlib.Path, config: pathlib.Path):
    self.home = home
    self.data = data
    self.config = config
    self.serving = home / "serving"

  def run(self, steps: int, fault: str | None = None, after: int = 0):
    env = {"CKPTFLOW_FAULT": fault or "", "CKPTFLOW_FAULT_AFTER": str(after)}
    return ckptflow("run", "--home", str(self.home), "--data", str(self.data),
                    "--config", str(self.config), "--train-steps", str(steps),
                    env=env, check=False)

  def promote(self, fault: str, label: str = "stable"):
    driver = pathlib.Path(__file__).parent / "promote_driver.py"
    env = {"CKPTFLOW_FAULT": fault, "CKPTFLOW_FAULT_AFTER": "0"}
    return subprocess.run([sys.executable, str(driver), "--home", str(self.home),
                           "--label", label], capture_output=True, text=True,
                          env=os.environ | env, timeout=300)

  def doctor(self) -> tuple[int, list[dict]]:
    result = ckptflow("doctor", "--home", str(self.home), "--json", check=False)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    return result.returncode, json.loads(result.stdout)["findings"]

  def assert_clean(self) -> None:
    code, findings = self.doctor()
    assert (code, findings) == (0, []), findings

  def store(self):
    return open_store(str(self.home / "metadata.sqlite"), create=False)

  def stable(self) -> int:
    return promotion.current_labels(self.store(), "penguin")["stable"]

  def config_labels(self) -> dict:
    return dict(serving.read_models_config(str(self.serving))["penguin"].labels)


def kinds(findings) -> list[str]:
  return sorted(f["kind"] for f in findings)


def completed(result) -> None:
  assert result.returncode == 0, result.stderr[-4000:]


def recovered(result, kind: str) -> None:
  assert f"recovered from an earlier crash: {kind}" in result.stderr, result.stderr[-4000:]


@pytest.fixture(scope="module")
def fh(tmp_path_factory, penguins_dir) -> FaultHome:
  root = tmp_path_factory.mktemp("faults")
  config = root / "config.toml"
  config.write_text(CONFIG)
  home = FaultHome(root / "home", penguins_dir, config)
  completed(home.run(60))
  return home


def test_kill_during_checkpoint_write_leaves_staging_that_next_run_removes(fh):
  fh.assert_clean()
  killed = fh.run(80, fault="checkpoint-write", after=1)  # the 2nd write dies
  assert killed.returncode == KILLED, killed.stderr[-3000:]
  code, findings = fh.doctor()
  assert code == 1 and kinds(findings) == ["checkpoint-staging"]
  assert findings[0]["subject"].endswith("step-00000040.staging")

  nxt = fh.run(80)
  completed(nxt)
  recovered(nxt, "checkpoint-staging")
  fh.assert_clean()
  steps = sorted(r.step for r in ckpt_records.list_checkpoints(fh.store())
                 if r.live and "step-" in r.uri)
  assert 80 in steps and 20 in steps


def test_kill_between_checkpoint_rename_and_registration_leaves_orphan_that_next_run_deletes(fh):
  fh.assert_clean()
  before = {r.uri for r in ckpt_records.list_checkpoints(fh.store())}
  killed = fh.run(100, fault="checkpoint-register", after=1)
  assert killed.returncode == KILLED, killed.stderr[-3000:]
  code, findings = fh.doctor()
  assert code == 1 and kinds(findings) == ["checkpoint-orphan"]
  orphan = findings[0]["subject"]
  assert orphan.endswith("step-00000040") and orphan not in before
  # The checkpoint before it was registered: the next run resumes from it.
  registered = [r for r in ckpt_records.list_checkpoints(fh.store()) if r.uri not in before]
  assert [r.step for r in registered] == [20]

  nxt = fh.run(100)
  completed(nxt)
  recovered(nxt, "checkpoint-orphan")
  assert not pathlib.Path(orphan).exists()
  fh.assert_clean()
  store = fh.store()
  events = store.get_events_by_artifact_ids([registered[0].id])
  assert any(e.type == e.INPUT for e in events)  # restored by the next run


def test_kill_during_push_copy_leaves_staging_that_next_run_removes(fh):
  fh.assert_clean()
  versions = serving.list_versions(str(fh.serving), "penguin")
  stable = fh.stable()
  killed = fh.promote("push-copy")
  assert killed.returncode == KILLED, killed.stderr[-3000:]
  code, findings = fh.doctor()
  assert code == 1 and kinds(findings) == ["push-staging"]
  assert serving.list_versions(str(fh.serving), "penguin") == versions

  nxt = fh.run(100)
  completed(nxt)
  recovered(nxt, "push-staging")
  fh.assert_clean()
  assert not pathlib.Path(findings[0]["subject"]).exists()
  assert fh.stable() >= stable
  assert fh.config_labels() == {"stable": fh.stable()}


def test_kill_during_models_config_replacement_keeps_old_config_and_next_run_unpublishes(fh):
  fh.assert_clean()
  config_before = (fh.serving / "models.config").read_text()
  versions = serving.list_versions(str(fh.serving), "penguin")
  killed = fh.promote("models-config-replace")
  assert killed.returncode == KILLED, killed.stderr[-3000:]
  # The version was published and recorded; only the config write died.
  assert (fh.serving / "models.config").read_text() == config_before
  code, findings = fh.doctor()
  assert code == 1
  assert kinds(findings) == ["models-config", "models-config"]
  [temp] = [f for f in findings if ".models.config.tmp-" in f["subject"]]
  [stale] = [f for f in findings if f["subject"].endswith("/models.config")]
  new_version = max(serving.list_versions(str(fh.serving), "penguin"))
  assert new_version not in versions
  assert fh.stable() == new_version

  assert stale["repair"] == "rewritten from MLMD"

  nxt = fh.run(100)
  completed(nxt)
  recovered(nxt, "models-config")
  fh.assert_clean()
  assert not pathlib.Path(temp["subject"]).exists()
  assert fh.stable() >= new_version
  assert fh.config_labels() == {"stable": fh.stable()}


def test_kill_between_promote_push_and_its_record_unpublishes_the_version(fh):
  fh.assert_clean()
  stable = fh.stable()
  high_water = (fh.serving / "penguin" / ".last_version").read_text().strip()
  killed = fh.promote("push-record")
  assert killed.returncode == KILLED, killed.stderr[-3000:]
  code, findings = fh.doctor()
  assert code == 1 and kinds(findings) == ["version-unrecorded"]
  unrecorded = findings[0]["subject"]
  assert int(pathlib.Path(unrecorded).name) == int(high_water) + 1

  # Nothing loads it: models.config still says what MLMD says.
  assert fh.config_labels() == {"stable": stable}

  nxt = fh.run(100)
  completed(nxt)
  recovered(nxt, "version-unrecorded")
  assert not pathlib.Path(unrecorded).exists()
  fh.assert_clean()
  assert fh.config_labels() == {"stable": fh.stable()}
  # Its number is never given to another version.
  promoted = fh.promote(fault="")
  assert promoted.returncode == 0, promoted.stderr[-3000:]
  assert json.loads(promoted.stdout)["version"] > int(pathlib.Path(unrecorded).name)
  fh.assert_clean()


def test_kill_between_pipeline_push_and_its_mlmd_record_is_undone_and_pushed_again(fh):
  fh.assert_clean()
  versions_before = serving.list_versions(str(fh.serving), "penguin")
  killed = fh.run(120, fault="push-record")
  assert killed.returncode == KILLED, killed.stderr[-3000:]
  code, findings = fh.doctor()
  assert code == 1 and kinds(findings) == ["models-config", "version-unrecorded"]
  unrecorded = int(pathlib.Path(
      [f for f in findings if f["kind"] == "version-unrecorded"][0]["subject"]).name)
  # The killed Pusher had already listed its version as stable.
  assert fh.config_labels() == {"stable": unrecorded}

  nxt = fh.run(120)  # Trainer and Evaluator cached; the Pusher runs again
  completed(nxt)
  recovered(nxt, "version-unrecorded")
  fh.assert_clean()
  versions = serving.list_versions(str(fh.serving), "penguin")
  assert unrecorded not in versions
  assert set(versions) - set(versions_before) == {unrecorded + 1}
  assert fh.stable() == unrecorded + 1
  assert fh.config_labels() == {"stable": unrecorded + 1}
