"""End to end: the compiled Kubeflow spec, run task by task by the local
launcher (each task's own container command), with MLMD on MariaDB.

One launcher run of the whole pipeline is shared by the module; the tests
at the end rerun single tasks of that run (an Evaluator that must find its
baseline without a Resolver; a Trainer killed mid-training, then retried).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid

import pytest
from ml_metadata.proto import metadata_store_pb2

from reliability_support import mysql_admin, mysql_reachable, mysql_target
from support import ckptflow

from ckptflow.operations import lineage as lineage_lib
from ckptflow.base import metadata

pytestmark = [pytest.mark.e2e, pytest.mark.mysql, pytest.mark.heavy]  # launcher runs

# Long enough that a kill lands mid-training (about 100 steps/s here), short
# enough to keep the run to minutes: 10 checkpoints.
TRAIN_STEPS = 1000
EVERY = 100
ORDER = ["CsvExampleGen", "StatisticsGen", "SchemaGen", "CheckpointingTrainer",
         "Evaluator", "ExampleValidator", "Pusher"]
COMPLETE = metadata_store_pb2.Execution.COMPLETE
FAILED = metadata_store_pb2.Execution.FAILED


@dataclasses.dataclass
class KfpRun:
  spec: pathlib.Path
  root: pathlib.Path
  serving: pathlib.Path
  target: str
  run_id: str
  results: list[dict]

  def store(self):
    return metadata.open_store(self.target, create=False)

  def launcher(self, *args: str, check: bool = True, timeout: float = 1800):
    return launch(self, *args, check=check, timeout=timeout)


def launcher_command(run: KfpRun, *args: str) -> list[str]:
  return [sys.executable, "-m", "ckptflow.kubeflow.launcher", str(run.spec / "pipeline.json"),
          "--pipeline-root", str(run.root), "--metadata", run.target,
          "--run-id", run.run_id, *args]


def launch(run: KfpRun, *args: str, check: bool = True, timeout: float = 1800):
  result = subprocess.run(launcher_command(run, *args), capture_output=True, text=True,
                          timeout=timeout, env=os.environ | {"TF_USE_LEGACY_KERAS": "1"})
  if check and result.returncode != 0:
    raise AssertionError(f"launcher {' '.join(args)} exited {result.returncode}:\n"
                         f"{result.stderr[-4000:]}")
  return result


@pytest.fixture(scope="module")
def kfp_run(tmp_path_factory, penguins_dir):
  if not mysql_reachable():
    if os.environ.get("CKPTFLOW_REQUIRE_MYSQL"):
      pytest.fail("MariaDB is unreachable and CKPTFLOW_REQUIRE_MYSQL is set")
    pytest.skip("MariaDB is unreachable")
  base = tmp_path_factory.mktemp("kfp")
  database = f"ckptflow_kfp_{uuid.uuid4().hex[:12]}"
  mysql_admin(f"CREATE DATABASE `{database}`")
  try:
    ckptflow("compile", "--target", "kubeflow", "--out", str(base / "spec"),
             "--image", "registry.example.com/ckptflow:e2e", "--data", str(penguins_dir),
             "--home", str(base / "home"), "--serving-dir", str(base / "serving"),
             "--model-name", "penguin", "--train-steps", str(TRAIN_STEPS),
             "--checkpoint-every", str(EVERY))
    run = KfpRun(spec=base / "spec", root=base / "root", serving=base / "serving",
                 target=mysql_target(database), run_id=f"e2e-{uuid.uuid4().hex[:8]}",
                 results=[])
    result = run.launcher()
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["run_id"] == run.run_id
    run.results = lines[1:]
    yield run
  finally:
    mysql_admin(f"DROP DATABASE IF EXISTS `{database}`", check=False)


# --- helpers -------------------------------------------------------------------


def type_names(store) -> dict[int, str]:
  return {t.id: t.name for t in store.get_artifact_types()} | {
      -t.id: t.name for t in store.get_execution_types()}


def run_executions(store, run_id: str) -> list[metadata_store_pb2.Execution]:
  context = store.get_context_by_type_and_name("system.PipelineRun", run_id)
  return sorted(store.get_executions_by_context(context.id), key=lambda e: e.id)


def task_executions(store, run_id: str, task: str) -> list[metadata_store_pb2.Execution]:
  names = type_names(store)
  return [e for e in run_executions(store, run_id)
          if names[-e.type_id] == "system.ContainerExecution"
          and e.custom_properties["task_name"].string_value == task]


def trainer_attempts(store, run_id: str) -> list[metadata_store_pb2.Execution]:
  attempts = store.get_executions_by_type("ckptflow.KubeflowTrainer")
  return sorted((e for e in attempts if e.custom_properties["run_id"].string_value == run_id),
                key=lambda e: e.custom_properties["attempt"].int_value)


def outputs_of(store, execution_id: int) -> dict[str, list[metadata_store_pb2.Artifact]]:
  events = [e for e in store.get_events_by_execution_ids([execution_id])
            if e.type == metadata_store_pb2.Event.OUTPUT]
  artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
  found: dict[str, list] = {}
  for event in events:
    found.setdefault(event.path.steps[0].key, []).append(artifacts[event.artifact_id])
  return found


def inputs_of(store, execution_id: int) -> dict[str, list[int]]:
  found: dict[str, list[int]] = {}
  for event in store.get_events_by_execution_ids([execution_id]):
    if event.type == metadata_store_pb2.Event.INPUT:
      found.setdefault(event.path.steps[0].key, []).append(event.artifact_id)
  return found


def checkpoints_of(store, execution_id: int) -> list[metadata_store_pb2.Artifact]:
  return sorted(outputs_of(store, execution_id).get("checkpoints", []),
                key=lambda a: a.properties["step"].int_value)


# --- the whole pipeline ----------------------------------------------------------


def test_every_task_runs_once_in_dependency_order_and_completes(kfp_run):
  assert [r["task"] for r in kfp_run.results] == ORDER
  assert all(r["state"] == "COMPLETE" for r in kfp_run.results)
  store = kfp_run.store()
  for task in ORDER:
    assert [e.last_known_state for e in task_executions(store, kfp_run.run_id, task)] == [
        COMPLETE], task
  names = type_names(store)
  [dag] = [e for e in run_executions(store, kfp_run.run_id)
           if names[-e.type_id] == "system.DAGExecution"]
  assert dag.last_known_state == COMPLETE
  # Each task read its inputs from the upstream task's recorded outputs.
  [trainer] = task_executions(store, kfp_run.run_id, "CheckpointingTrainer")
  [example_gen] = task_executions(store, kfp_run.run_id, "CsvExampleGen")
  [examples] = outputs_of(store, example_gen.id)["examples"]
  assert inputs_of(store, trainer.id)["examples"] == [examples.id]
  assert names[examples.type_id] == "tfx.Examples"


def test_trainer_registers_each_checkpoint_in_mlmd_while_it_trains(kfp_run):
  store = kfp_run.store()
  [attempt] = trainer_attempts(store, kfp_run.run_id)
  assert attempt.last_known_state == COMPLETE
  assert attempt.custom_properties["task_name"].string_value == "CheckpointingTrainer"
  checkpoints = checkpoints_of(store, attempt.id)
  assert [c.properties["step"].int_value for c in checkpoints] == list(
      range(EVERY, TRAIN_STEPS + 1, EVERY))
  [trainer] = task_executions(store, kfp_run.run_id, "CheckpointingTrainer")
  [model] = outputs_of(store, trainer.id)["model"]
  for checkpoint in checkpoints:
    assert checkpoint.state == metadata_store_pb2.Artifact.LIVE
    assert (pathlib.Path(checkpoint.uri) / "ckpt.index").is_file()
    # Registered while training: before the task ended and its model was recorded.
    assert checkpoint.create_time_since_epoch < model.create_time_since_epoch
  created = [c.create_time_since_epoch for c in checkpoints]
  assert created == sorted(created) and created[-1] > created[0]
  # Attributed to KFP's run context, like the task's own outputs.
  run_context = store.get_context_by_type_and_name("system.PipelineRun", kfp_run.run_id)
  attributed = {a.id for a in store.get_artifacts_by_context(run_context.id)}
  assert {c.id for c in checkpoints} <= attributed


def test_trainer_task_declares_its_checkpoints_as_an_output_recorded_by_kfp(kfp_run):
  store = kfp_run.store()
  [trainer] = task_executions(store, kfp_run.run_id, "CheckpointingTrainer")
  outputs = outputs_of(store, trainer.id)
  [declared] = outputs["checkpoints"]
  [model] = outputs["model"]
  [attempt] = trainer_attempts(store, kfp_run.run_id)
  registered = [c.id for c in checkpoints_of(store, attempt.id)]
  assert type_names(store)[declared.type_id] == "ckptflow.Checkpoints"
  manifest = json.loads((pathlib.Path(declared.uri) / "manifest.json").read_text())
  assert [c["id"] for c in manifest["checkpoints"]] == registered
  assert manifest["trainer_execution_id"] == attempt.id
  final = declared.custom_properties["final_checkpoint_id"].double_value
  assert final == model.custom_properties["checkpoint_id"].double_value == registered[-1]


def test_blessed_model_is_pushed_as_serving_version_1(kfp_run):
  store = kfp_run.store()
  [pusher] = task_executions(store, kfp_run.run_id, "Pusher")
  [pushed] = outputs_of(store, pusher.id)["pushed_model"]
  assert pushed.custom_properties["pushed"].double_value == 1.0
  assert pushed.custom_properties["pushed_version"].string_value == "1"
  version_dir = kfp_run.serving / "penguin" / "1"
  assert pushed.custom_properties["pushed_destination"].string_value == str(version_dir)
  assert (version_dir / "saved_model.pb").is_file()
  assert "penguin" in (kfp_run.serving / "models.config").read_text()
  # Recorded by KFP (tfx.PushedModel, numbers as doubles), read by promotion.
  from ckptflow.components import promotion
  [record] = promotion.served_versions(store, "penguin")
  assert (record.version, record.artifact_id) == (1, pushed.id)
  assert promotion.current_labels(store, "penguin") == {"stable": 1}


def test_lineage_from_the_pushed_version_reaches_the_registered_checkpoint(kfp_run):
  store = kfp_run.store()
  names = type_names(store)
  [pusher] = task_executions(store, kfp_run.run_id, "Pusher")
  [pushed] = outputs_of(store, pusher.id)["pushed_model"]

  graph = lineage_lib.lineage(store, pushed.id)

  by_type: dict[str, list] = {}
  for node in graph.nodes.values():
    by_type.setdefault(node.type_name, []).append(node)
  [model] = by_type["tfx.Model"]
  [trainer] = task_executions(store, kfp_run.run_id, "CheckpointingTrainer")
  assert f"execution:{trainer.id}" in graph.nodes
  [examples] = by_type["tfx.Examples"]
  # The model names the checkpoint it was exported from; that checkpoint is
  # the OUTPUT of this run's Trainer attempt, which read the same Examples.
  checkpoint_id = int(model.properties["checkpoint_id"])
  [checkpoint] = store.get_artifacts_by_id([checkpoint_id])
  assert names[checkpoint.type_id] == "Checkpoint"
  assert checkpoint.properties["step"].int_value == TRAIN_STEPS
  [attempt] = trainer_attempts(store, kfp_run.run_id)
  assert checkpoint_id in [c.id for c in checkpoints_of(store, attempt.id)]
  assert inputs_of(store, attempt.id)["examples"] == [examples.id]
  # And walking back from the checkpoint reaches the same data.
  upstream = lineage_lib.lineage(store, checkpoint_id)
  assert f"artifact:{examples.id}" in upstream.nodes


# --- single tasks rerun in the same run ----------------------------------------


def test_rerun_evaluator_finds_the_blessed_baseline_in_mlmd_without_a_resolver(kfp_run):
  store = kfp_run.store()
  [trainer] = task_executions(store, kfp_run.run_id, "CheckpointingTrainer")
  [model] = outputs_of(store, trainer.id)["model"]

  kfp_run.launcher("--task", "Evaluator")

  first, second = task_executions(store, kfp_run.run_id, "Evaluator")
  assert second.last_known_state == COMPLETE
  [first_blessing] = outputs_of(store, first.id)["blessing"]
  [blessing] = outputs_of(store, second.id)["blessing"]
  assert "baseline_model" not in first_blessing.custom_properties  # nothing blessed yet
  assert blessing.custom_properties["baseline_model"].string_value == model.uri
  assert blessing.custom_properties["baseline_model_mlmd_id"].double_value == model.id
  assert blessing.custom_properties["blessed"].double_value == 1.0  # no worse than itself


def test_killed_trainer_task_is_retried_and_resumes_from_its_registered_checkpoint(kfp_run):
  store = kfp_run.store()
  before = len(trainer_attempts(store, kfp_run.run_id))
  launcher = subprocess.Popen(launcher_command(kfp_run, "--task", "CheckpointingTrainer"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=os.environ | {"TF_USE_LEGACY_KERAS": "1"})
  attempt_dirs = kfp_run.root / "ckptflow" / kfp_run.run_id / ".launcher" / "CheckpointingTrainer"
  deadline = time.monotonic() + 600
  while True:  # until the new attempt has registered two checkpoints
    assert launcher.poll() is None, launcher.communicate()[1][-3000:]
    assert time.monotonic() < deadline, "the Trainer registered no checkpoint in time"
    attempts = trainer_attempts(store, kfp_run.run_id)
    if len(attempts) > before and len(checkpoints_of(store, attempts[-1].id)) >= 2:
      victim = attempts[-1]
      break
    time.sleep(0.1)
  pod = max(attempt_dirs.iterdir(), key=lambda p: int(p.name.split("-")[1]))
  os.killpg(int((pod / "pid").read_text()), signal.SIGKILL)  # the whole "pod", at once

  # The task's retry policy (compiled in) makes the launcher run it again.
  _, stderr = launcher.communicate(timeout=1200)
  assert launcher.returncode == 0, stderr[-3000:]
  assert "task 'CheckpointingTrainer' was killed by signal 9" in stderr
  assert "retry 1/3" in stderr
  saved = checkpoints_of(store, victim.id)
  newest = saved[-1]
  assert newest.properties["step"].int_value < TRAIN_STEPS  # it was mid-training
  *_, killed_task, retried_task = task_executions(store, kfp_run.run_id, "CheckpointingTrainer")
  assert (killed_task.last_known_state, retried_task.last_known_state) == (FAILED, COMPLETE)

  retried = trainer_attempts(store, kfp_run.run_id)[-1]
  assert retried.last_known_state == COMPLETE and retried.id != victim.id
  [victim] = store.get_executions_by_id([victim.id])
  assert victim.last_known_state == FAILED
  assert victim.custom_properties["superseded_by"].int_value == retried.id
  assert inputs_of(store, retried.id)["resumed_from"] == [newest.id]
  steps = [c.properties["step"].int_value for c in checkpoints_of(store, retried.id)]
  assert steps == list(range(newest.properties["step"].int_value + EVERY, TRAIN_STEPS + 1, EVERY))
  [model_run] = outputs_of(store, retried_task.id)["model_run"]
  assert model_run.custom_properties["resumed_from_checkpoint"].double_value == newest.id
  assert model_run.custom_properties["final_step"].double_value == TRAIN_STEPS
