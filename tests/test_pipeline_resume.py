"""A `ckptflow run` killed with SIGKILL mid-training resumes under TFX."""

from __future__ import annotations

import re
import signal

import pytest
from ml_metadata.proto import metadata_store_pb2

from ckptflow.components import checkpoint as ckpt
from ckptflow.base import metadata
from support import ckptflow

pytestmark = [pytest.mark.e2e, pytest.mark.heavy]  # kills a real run and resumes it


def test_killed_run_resumes_from_its_last_registered_checkpoint(tmp_path, penguins_dir):
  home = tmp_path / "home"
  args = ("run", "--home", str(home), "--data", str(penguins_dir),
          "--train-steps", "300", "--checkpoint-every", "100")
  killed = ckptflow(*args, check=False,
                    env={"CKPTFLOW_FAULT": "train-step", "CKPTFLOW_FAULT_AFTER": "149"})
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

  store = metadata.open_store(str(home / "metadata.sqlite"), create=False)
  [saved] = ckpt.list_checkpoints(store)
  assert saved.step == 100 and saved.live
  [killed_execution] = ckpt.producer_execution_ids(store, [saved.id]).values()
  [execution] = store.get_executions_by_id([killed_execution])
  assert execution.last_known_state == metadata_store_pb2.Execution.RUNNING

  resumed = ckptflow(*args)
  # It says so, on standard error (not a terminal: log lines).
  assert f"resumed from checkpoint {saved.id} at step 100" in resumed.stderr
  assert "training: step 100/300 (continuing from step 100)" in resumed.stderr
  assert re.search(r"training finished: step 300/300, [\d.]+ steps/s", resumed.stderr)
  store = metadata.open_store(str(home / "metadata.sqlite"), create=False)
  records = ckpt.list_checkpoints(store)
  assert sorted(r.step for r in records) == [100, 200, 300]
  producers = ckpt.producer_execution_ids(store, [r.id for r in records])
  resumed_execution = producers[max(records, key=lambda r: r.step).id]
  assert resumed_execution != killed_execution
  assert {producers[r.id] for r in records if r.step > 100} == {resumed_execution}

  # The resumed Trainer execution consumed the checkpoint it resumed from.
  inputs = [e for e in store.get_events_by_execution_ids([resumed_execution])
            if e.type == metadata_store_pb2.Event.INPUT]
  assert saved.id in {e.artifact_id for e in inputs}
  [execution] = store.get_executions_by_id([resumed_execution])
  assert execution.last_known_state == metadata_store_pb2.Execution.COMPLETE
  [model_run] = [a for a in store.get_artifacts_by_type("ModelRun")]
  assert model_run.custom_properties["resumed_from_checkpoint"].int_value == saved.id
  assert model_run.custom_properties["final_step"].int_value == 300
  assert (home / "serving" / "penguin" / "1" / "saved_model.pb").is_file()
