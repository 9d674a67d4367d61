"""Interrupt-and-resume with real processes and real signals.

Each test runs tests/trainer_driver.py (the real TrainingLoop or model.fit
callback, the real MLMD sink on a SQLite file) in subprocesses: killed with
SIGKILL at a random step or stopped with SIGTERM, then run again.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from ml_metadata.proto import metadata_store_pb2

from ckptflow.components import checkpoint as ckpt
from ckptflow.components.trainer import checkpoint_files
from ckptflow.base import metadata
from support import DRIVER

# Real training processes, killed and resumed: minutes, not seconds.
pytestmark = pytest.mark.heavy

STEPS = 120
EVERY = 20


def drive(tmp, name: str, *flags: str, fault_after: int | None = None,
          store: str = "store.sqlite") -> tuple[int, list[dict]]:
  """Runs the driver once; returns (exit code, its JSON event lines)."""
  env = os.environ | {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
  env.pop("CKPTFLOW_FAULT", None)
  if fault_after is not None:
    env |= {"CKPTFLOW_FAULT": "train-step", "CKPTFLOW_FAULT_AFTER": str(fault_after)}
  result = subprocess.run(
      [sys.executable, str(DRIVER), "--store", str(tmp / store), "--dir", str(tmp / "ckpts"),
       "--data", str(tmp.penguins), "--steps", str(STEPS), "--every", str(EVERY),
       "--out", str(tmp / f"{name}.npz"), *flags],
      capture_output=True, text=True, env=env, timeout=300)
  events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
  if result.returncode not in (0, -signal.SIGKILL, 3):
    raise AssertionError(f"driver failed ({result.returncode}):\n{result.stderr[-3000:]}")
  return result.returncode, events


class Workdir(type(__import__("pathlib").Path())):
  penguins: object


@pytest.fixture
def work(tmp_path, penguins_dir):
  work = Workdir(tmp_path)
  work.penguins = penguins_dir / "penguins_processed.csv"
  return work


@pytest.fixture(scope="module")
def baselines(tmp_path_factory, penguins_dir):
  """Variables after uninterrupted runs, per training style."""
  results = {}
  for style, flags in (("loop", ()), ("fit", ("--fit",))):
    work = Workdir(tmp_path_factory.mktemp(f"baseline-{style}"))
    work.penguins = penguins_dir / "penguins_processed.csv"
    code, events = drive(work, "baseline", *flags)
    assert code == 0 and events[-1]["final_step"] == STEPS
    results[style] = dict(np.load(work / "baseline.npz"))
  return results


def _records(work) -> list[ckpt.CheckpointRecord]:
  return ckpt.list_checkpoints(metadata.open_store(str(work / "store.sqlite"), create=False))


def _assert_same_variables(expected: dict, path) -> None:
  actual = dict(np.load(path))
  assert sorted(actual) == sorted(expected)
  different = [k for k in expected if not np.array_equal(expected[k], actual[k])]
  assert different == [], f"variables differ from the uninterrupted run: {different}"


@pytest.mark.parametrize("seed, style, flags", [
    (1, "loop", ()),
    (2, "loop", ()),
    (3, "loop", ("--async-save",)),
    (4, "fit", ("--fit",)),
])
def test_sigkill_at_random_step_resumes_within_one_interval_and_matches_uninterrupted_run(
    work, baselines, seed, style, flags):
  kill_step = random.Random(seed).randint(EVERY + 1, STEPS - 1)
  code, _ = drive(work, "run", *flags, fault_after=kill_step - 1)
  assert code == -signal.SIGKILL
  registered_before = [r for r in _records(work) if r.live]
  last_registered = max(r.step for r in registered_before)
  assert last_registered <= kill_step

  code, events = drive(work, "run", *flags)
  assert code == 0
  finished = events[-1]
  assert finished["resumed_step"] == last_registered
  # Redone steps: at most one interval; with async saving the checkpoint
  # whose write was in flight at the kill may be lost too (one more).
  intervals = 2 if "--async-save" in flags else 1
  assert kill_step - finished["resumed_step"] <= intervals * EVERY
  assert finished["final_step"] == STEPS
  _assert_same_variables(baselines[style], work / "run.npz")

  # The resumed execution records the checkpoint it resumed from as INPUT.
  store = metadata.open_store(str(work / "store.sqlite"), create=False)
  [resumed_from] = [r for r in registered_before if r.step == last_registered]
  inputs = [e for e in store.get_events_by_artifact_ids([resumed_from.id])
            if e.type == metadata_store_pb2.Event.INPUT]
  assert len(inputs) == 1 and inputs[0].execution_id == events[0]["execution_id"]


def test_sigterm_saves_and_registers_a_checkpoint_before_exiting(work):
  env = os.environ | {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
  process = subprocess.Popen(
      [sys.executable, str(DRIVER), "--store", str(work / "store.sqlite"),
       "--dir", str(work / "ckpts"), "--data", str(work.penguins), "--steps", "1000000",
       "--every", "1000000", "--out", str(work / "run.npz")],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
  assert json.loads(process.stdout.readline())["event"] == "started"
  time.sleep(2.0)  # well into training
  process.send_signal(signal.SIGTERM)
  stdout, stderr = process.communicate(timeout=120)
  assert process.returncode == 3, stderr[-2000:]
  stopped_at = json.loads(stdout.strip().splitlines()[-1])["step"]
  assert stopped_at > 0
  [record] = _records(work)
  assert record.step == stopped_at and record.live
  checkpoint_files.verify_against_record(record.uri, record.checksum)
  checkpoint_files.verify_readable(record.uri)


def test_corrupted_newest_checkpoint_is_skipped_and_resume_uses_the_previous(work, baselines):
  code, _ = drive(work, "run", fault_after=70)  # killed at step 71: 20, 40, 60 saved
  assert code == -signal.SIGKILL
  newest = max(_records(work), key=lambda r: r.step)
  assert newest.step == 60 and newest.live
  [data_file] = [n for n in os.listdir(newest.uri) if n.startswith("ckpt.data-")]
  with open(os.path.join(newest.uri, data_file), "r+b") as f:
    f.seek(16)
    f.write(b"\xde\xad\xbe\xef" * 4)

  code, events = drive(work, "run")
  assert code == 0
  assert events[-1]["resumed_step"] == 40
  records = {r.id: r for r in _records(work)}
  assert records[newest.id].state == "ABANDONED"
  # The redone step 60 is a new checkpoint of the resumed execution.
  assert sorted(r.step for r in records.values() if r.live) == [20, 40, 60, 80, 100, 120]
  # Every checkpoint MLMD calls LIVE is readable and matches its checksum.
  for record in records.values():
    if record.live:
      checkpoint_files.verify_against_record(record.uri, record.checksum)
  # Deterministic training: resuming earlier still ends at the same weights.
  _assert_same_variables(baselines["loop"], work / "run.npz")


def test_keep_last_prunes_files_and_marks_artifacts_deleted_in_step(work):
  code, _ = drive(work, "run", "--keep-last", "2")
  assert code == 0
  records = _records(work)
  live = sorted(r.step for r in records if r.live)
  deleted = sorted(r.step for r in records if r.state == "DELETED")
  assert live == [100, 120]
  assert deleted == [20, 40, 60, 80]
  on_disk = sorted(os.path.join(root, d) for root, dirs, _ in os.walk(work / "ckpts")
                   for d in dirs if d.startswith("step-"))
  assert on_disk == sorted(r.uri for r in records if r.live)
  store = metadata.open_store(str(work / "store.sqlite"), create=False)
  for artifact in store.get_artifacts_by_type("Checkpoint"):
    assert artifact.custom_properties["state"].string_value == (
        "LIVE" if artifact.state == metadata_store_pb2.Artifact.LIVE else "DELETED")


def test_protected_checkpoint_survives_retention(work):
  code, _ = drive(work, "run", "--keep-last", "2", fault_after=49)  # saved 20, 40
  assert code == -signal.SIGKILL
  first = min(_records(work), key=lambda r: r.step)
  store = metadata.open_store(str(work / "store.sqlite"), create=False)
  ckpt.set_protected(store, first.id, "promoted")

  code, _ = drive(work, "run", "--keep-last", "2")
  assert code == 0
  records = _records(work)
  assert sorted(r.step for r in records if r.live) == [first.step, 100, 120]
  assert os.path.isdir(first.uri)
