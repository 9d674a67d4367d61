"""A `ckptflow run` stopped by SIGINT or SIGTERM mid-training: the Trainer
saves and registers a checkpoint, and the command ends with one line naming
the step saved and the command that resumes, with the signal's conventional
exit status, and leaves nothing half-written beyond that checkpoint."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
from ml_metadata.proto import metadata_store_pb2

from ckptflow.base import metadata
from ckptflow.components import checkpoint as ckpt
from support import ckptflow

pytestmark = [pytest.mark.e2e, pytest.mark.heavy]  # a real run, stopped with a real signal


def wait_for_checkpoints(home, process, count: int, timeout: float = 900) -> None:
  root = home / "pipeline_root" / "CheckpointingTrainer" / "checkpoints"
  deadline = time.monotonic() + timeout
  while len(list(root.glob("*/*/step-*"))) < count:
    if process.poll() is not None:
      pytest.fail(f"the run ended before training saved {count} checkpoints: "
                  f"{process.stderr.read()[-3000:]}")
    if time.monotonic() > deadline:
      process.kill()
      pytest.fail(f"no {count} checkpoints within {timeout} s")
    time.sleep(0.2)


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_during_training_saves_then_ends_with_one_line_and_its_exit_status(
    tmp_path, penguins_dir, signum, status):
  home = tmp_path / "home"
  args = ["run", "--home", str(home), "--data", str(penguins_dir),
          "--train-steps", "1000000", "--checkpoint-every", "50"]
  process = subprocess.Popen([sys.executable, "-m", "ckptflow.cli", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=os.environ | {"TF_USE_LEGACY_KERAS": "1"})
  try:
    wait_for_checkpoints(home, process, 2)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=300)
  finally:
    if process.poll() is None:
      process.kill()

  assert process.returncode == status, stderr[-3000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  last = stderr.strip().splitlines()[-1]
  name = signal.Signals(signum).name
  assert last.startswith(f"ckptflow: error: interrupted by {name} at step "), last
  step = int(last.split(" at step ")[1].split(":")[0])
  resume = last.split("resume with: ")[1]
  assert shlex.split(resume) == ["ckptflow", *args]

  # The step it names is a LIVE, registered checkpoint, the newest one.
  store = metadata.open_store(str(home / "metadata.sqlite"), create=False)
  records = ckpt.list_checkpoints(store)
  newest = max(records, key=lambda r: r.step)
  assert newest.step == step and newest.live and os.path.isdir(newest.uri)
  # Nothing half-written: no staging leftovers, no model pushed, and doctor
  # finds MLMD and the files in agreement.
  leftovers = [p for p in (home / "pipeline_root").rglob("*") if ".staging" in p.name]
  assert leftovers == []
  assert not (home / "serving" / "penguin").exists() or not any(
      (home / "serving" / "penguin").iterdir())
  assert store.get_artifacts_by_type("PushedModel") == []
  [trainer] = [e for e in store.get_executions()
               if e.id in ckpt.producer_execution_ids(store, [newest.id]).values()]
  assert trainer.last_known_state != metadata_store_pb2.Execution.COMPLETE
  doctor = ckptflow("doctor", "--home", str(home), check=False)
  assert doctor.returncode == 0, doctor.stdout + doctor.stderr[-2000:]
  assert "no findings" in doctor.stdout
