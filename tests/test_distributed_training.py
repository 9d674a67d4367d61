"""Distributed training end to end: `ckptflow run --distribution ...` on the
penguins data, with real worker processes on 127.0.0.1, real kills and
signals, and every checkpoint read back from MLMD and disk.

One uninterrupted 2-worker run (`reference`) is the yardstick: every other
run (killed and resumed, stopped by SIGTERM and resumed, mirrored over two
logical CPUs) must end with the same bits in its final checkpoint.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from ml_metadata.proto import metadata_store_pb2

from ckptflow.base import metadata
from ckptflow.components import checkpoint as ckpt
from support import ckptflow

pytestmark = [pytest.mark.e2e, pytest.mark.heavy]  # whole pipelines, several processes

STEPS, EVERY = 60, 20
MULTI_WORKER = ("--distribution", "multi_worker", "--workers", "2")
MIRRORED = ("--distribution", "mirrored", "--replicas", "2")


def run_args(home: pathlib.Path, data: pathlib.Path, *extra: str) -> tuple[str, ...]:
  return ("run", "--home", str(home), "--data", str(data), "--train-steps", str(STEPS),
          "--checkpoint-every", str(EVERY), *extra)


def checkpoints(home: pathlib.Path) -> list[ckpt.CheckpointRecord]:
  store = metadata.open_store(str(home / "metadata.sqlite"), create=False)
  return ckpt.list_checkpoints(store)


def variables_of(record: ckpt.CheckpointRecord) -> dict[str, np.ndarray]:
  """Every tensor in a checkpoint: model, optimizers, extra variables, step,
  RNG (the input iterator's state is a variant tensor that cannot be read
  as an array; its effect shows in every other value)."""
  import tensorflow as tf
  reader = tf.train.load_checkpoint(os.path.join(record.uri, "ckpt"))
  return {name: reader.get_tensor(name)
          for name, dtype in reader.get_variable_to_dtype_map().items()
          if dtype != tf.variant and not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")}


def final_variables(home: pathlib.Path) -> dict[str, np.ndarray]:
  """Every variable of the newest live checkpoint at the last step."""
  finals = [r for r in checkpoints(home) if r.step == STEPS and r.live]
  return variables_of(max(finals, key=lambda r: r.id))


def assert_same_bits(actual: dict, expected: dict) -> None:
  assert len(expected) > 20 and sorted(actual) == sorted(expected)
  different = [name for name in expected
               if np.asarray(actual[name]).tobytes() != np.asarray(expected[name]).tobytes()]
  assert not different, f"{len(different)} variables differ, e.g. {different[:5]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, penguins_dir) -> pathlib.Path:
  """The home of one uninterrupted 2-worker run."""
  home = tmp_path_factory.mktemp("reference") / "home"
  ckptflow(*run_args(home, penguins_dir, *MULTI_WORKER))
  return home


def test_two_worker_run_registers_each_checkpoint_once_with_its_replicas(reference):
  records = checkpoints(reference)
  assert sorted(r.step for r in records) == [20, 40, 60]
  assert {r.replicas for r in records} == {2}
  store = metadata.open_store(str(reference / "metadata.sqlite"), create=False)
  producers = ckpt.producer_execution_ids(store, [r.id for r in records])
  [trainer] = set(producers.values())  # one Trainer execution registered them all
  [execution] = store.get_executions_by_id([trainer])
  assert execution.last_known_state == metadata_store_pb2.Execution.COMPLETE
  # The non-chief's checkpoints went to a temporary directory: only the
  # chief's are under the pipeline root, one directory per checkpoint.
  exec_dir = pathlib.Path(records[0].uri).parent
  assert sorted(p.name for p in exec_dir.iterdir()) == [
      "step-00000020", "step-00000040", "step-00000060"]
  [model_run] = store.get_artifacts_by_type("ModelRun")
  assert model_run.custom_properties["replicas"].int_value == 2

  import tensorflow as tf
  served = tf.saved_model.load(str(reference / "serving" / "penguin" / "1"))
  features = {k: tf.constant([[0.5]]) for k in
              ("culmen_length_mm", "culmen_depth_mm", "flipper_length_mm", "body_mass_g")}
  probabilities = served.signatures["serving_raw"](**features)["outputs"].numpy()
  assert probabilities.shape == (1, 3)
  assert abs(float(probabilities.sum()) - 1.0) < 1e-5


def test_mirrored_over_two_replicas_ends_bit_identical_to_two_workers(reference, penguins_dir):
  # Same home: the data stages are cached; the Trainer runs again (its
  # settings differ) from scratch (the reference run finished).
  ckptflow(*run_args(reference, penguins_dir, *MIRRORED))
  store = metadata.open_store(str(reference / "metadata.sqlite"), create=False)
  runs = store.get_artifacts_by_type("ModelRun")
  assert len(runs) == 2 and "resumed_from_checkpoint" not in runs[-1].custom_properties
  finals = sorted((r for r in checkpoints(reference) if r.step == STEPS), key=lambda r: r.id)
  assert len(finals) == 2
  assert {r.replicas for r in finals} == {2}
  assert_same_bits(variables_of(finals[1]), variables_of(finals[0]))


@pytest.mark.parametrize("lost", [1, 0], ids=["worker-1", "chief"])
def test_killed_worker_fails_the_run_in_one_line_and_the_rerun_resumes_exactly(
    lost, reference, tmp_path, penguins_dir):
  home = tmp_path / "home"
  args = run_args(home, penguins_dir, *MULTI_WORKER)
  # Worker `lost` SIGKILLs itself after step 30; step 20 is registered.
  killed = ckptflow(*args, check=False, env={
      "CKPTFLOW_FAULT": "train-step", "CKPTFLOW_FAULT_AFTER": "29",
      "CKPTFLOW_FAULT_WORKER": str(lost)})
  assert killed.returncode == 1, killed.stderr[-3000:]
  last = killed.stderr.strip().splitlines()[-1]
  assert last.startswith(f"ckptflow: error: training worker {lost} of 2 (pid "), last
  assert ("was killed by SIGKILL; the other workers were stopped; rerun to resume from "
          "the last registered checkpoint (checkpoint ") in last
  assert last.endswith(", step 20)")
  [saved] = checkpoints(home)
  assert saved.step == 20

  ckptflow(*args)
  assert sorted(r.step for r in checkpoints(home)) == [20, 40, 60]
  store = metadata.open_store(str(home / "metadata.sqlite"), create=False)
  [model_run] = store.get_artifacts_by_type("ModelRun")
  assert model_run.custom_properties["resumed_from_checkpoint"].int_value == saved.id
  assert_same_bits(final_variables(home), final_variables(reference))


def worker_pids(cli: subprocess.Popen) -> dict[int, int]:
  """Worker index -> pid, for the training workers under `cli`."""
  import psutil
  found = {}
  for child in psutil.Process(cli.pid).children(recursive=True):
    try:
      if "ckptflow.components.trainer.worker" in " ".join(child.cmdline()):
        config = json.loads(child.environ().get("TF_CONFIG", "{}"))
        found[config["task"]["index"]] = child.pid
    except (psutil.NoSuchProcess, KeyError):
      continue
  return found


def test_sigterm_to_one_worker_saves_on_every_worker_and_the_rerun_resumes(
    reference, tmp_path, penguins_dir):
  home = tmp_path / "home"
  args = run_args(home, penguins_dir, *MULTI_WORKER)
  env = os.environ | {"TF_USE_LEGACY_KERAS": "1"}
  log = tmp_path / "stderr.txt"
  with open(log, "w") as stderr_file:
    cli = subprocess.Popen([sys.executable, "-m", "ckptflow.cli", *args], env=env,
                           stdout=subprocess.DEVNULL, stderr=stderr_file)
  try:
    # Once the first checkpoint is registered, training is under way.
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and cli.poll() is None:
      if (home / "metadata.sqlite").exists() and any(
          r.step == EVERY for r in checkpoints(home)):
        break
      time.sleep(0.5)
    pids = worker_pids(cli)
    assert sorted(pids) == [0, 1], cli.poll()
    os.kill(pids[1], signal.SIGTERM)
    cli.wait(timeout=600)
  finally:
    if cli.poll() is None:
      cli.kill()
      cli.wait()
  stderr = log.read_text()
  # The interrupted status: 128 + SIGTERM, with one line naming the step.
  assert cli.returncode == 128 + signal.SIGTERM, stderr[-3000:]
  last = stderr.strip().splitlines()[-1]
  assert last.startswith("ckptflow: error: interrupted by SIGTERM at step "), last
  stopped_at = int(last.split(" at step ")[1].split(":")[0])
  assert f"the checkpoint of step {stopped_at} is saved and registered" in last
  records = checkpoints(home)
  assert EVERY < stopped_at < STEPS
  [interrupted] = [r for r in records if r.step == stopped_at]  # registered once, by the chief
  if stopped_at % EVERY:
    assert sorted(r.step for r in records) == sorted(
        {s for s in (20, 40) if s < stopped_at} | {stopped_at})

  ckptflow(*args)
  store = metadata.open_store(str(home / "metadata.sqlite"), create=False)
  [model_run] = store.get_artifacts_by_type("ModelRun")
  assert model_run.custom_properties["resumed_from_checkpoint"].int_value == interrupted.id
  assert_same_bits(final_variables(home), final_variables(reference))


def test_fit_style_trains_under_both_strategies_and_resumes_exactly(tmp_path, penguins_dir):
  config = tmp_path / "fit.toml"
  config.write_text('[training]\nstyle = "fit"\n')
  home = tmp_path / "home"
  # An uninterrupted mirrored fit, then (same home, data stages cached) a
  # 2-worker fit whose worker 1 is killed after step 30, and its rerun.
  ckptflow(*run_args(home, penguins_dir, "--config", str(config), *MIRRORED))
  [mirrored_final] = [r for r in checkpoints(home) if r.step == STEPS]
  args = run_args(home, penguins_dir, "--config", str(config), *MULTI_WORKER)
  killed = ckptflow(*args, check=False, env={
      "CKPTFLOW_FAULT": "train-step", "CKPTFLOW_FAULT_AFTER": "29",
      "CKPTFLOW_FAULT_WORKER": "1"})
  assert killed.returncode == 1, killed.stderr[-3000:]
  assert "training worker 1 of 2" in killed.stderr.strip().splitlines()[-1]
  ckptflow(*args)
  store = metadata.open_store(str(home / "metadata.sqlite"), create=False)
  resumed_run = max(store.get_artifacts_by_type("ModelRun"), key=lambda a: a.id)
  resumed_from = resumed_run.custom_properties["resumed_from_checkpoint"].int_value
  [resumed_checkpoint] = [r for r in checkpoints(home) if r.id == resumed_from]
  assert resumed_checkpoint.step == 20 and resumed_checkpoint.replicas == 2
  assert_same_bits(final_variables(home), variables_of(mirrored_final))
