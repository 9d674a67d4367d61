"""End to end: `ckptflow run` on the penguins data, checked in MLMD."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from support import E2E_EVERY, E2E_STEPS, OUTPUT_ENV, ckptflow

pytestmark = pytest.mark.e2e

COMPONENTS = ("CsvExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator",
              "CheckpointingTrainer", "Evaluator", "Pusher")


def _store(home: pathlib.Path) -> metadata_store.MetadataStore:
  config = metadata_store_pb2.ConnectionConfig()
  config.sqlite.filename_uri = str(home / "metadata.sqlite")
  config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE
  return metadata_store.MetadataStore(config)


def _executions_by_component(store) -> dict[str, list[metadata_store_pb2.Execution]]:
  by_component: dict[str, list] = {}
  for execution_type in store.get_execution_types():
    short = execution_type.name.rsplit(".", 1)[-1]
    by_component.setdefault(short, []).extend(store.get_executions_by_type(execution_type.name))
  return by_component


def _trainer_execution(store) -> metadata_store_pb2.Execution:
  [execution] = [e for e in _executions_by_component(store)["CheckpointingTrainer"]
                 if e.last_known_state == metadata_store_pb2.Execution.COMPLETE]
  return execution


def test_run_completes_every_component(e2e_home):
  store = _store(e2e_home)
  executions = _executions_by_component(store)
  for component in COMPONENTS:
    states = [e.last_known_state for e in executions.get(component, [])]
    assert states == [metadata_store_pb2.Execution.COMPLETE], (component, states)


def test_trainer_registers_each_checkpoint_as_its_output(e2e_home):
  store = _store(e2e_home)
  trainer = _trainer_execution(store)
  checkpoints = store.get_artifacts_by_type("Checkpoint")
  steps = sorted(a.properties["step"].int_value for a in checkpoints)
  assert steps == list(range(E2E_EVERY, E2E_STEPS + 1, E2E_EVERY))
  events = store.get_events_by_artifact_ids([a.id for a in checkpoints])
  outputs = {e.artifact_id for e in events
             if e.type == metadata_store_pb2.Event.OUTPUT and e.execution_id == trainer.id}
  assert outputs == {a.id for a in checkpoints}
  for artifact in checkpoints:
    assert artifact.state == metadata_store_pb2.Artifact.LIVE
    assert artifact.custom_properties["state"].string_value == "LIVE"
    assert os.path.isfile(os.path.join(artifact.uri, "ckpt.index")), artifact.uri
    assert artifact.properties["size_bytes"].int_value > 0
    assert len(artifact.properties["checksum"].string_value) == 64
    assert "loss" in json.loads(artifact.properties["metrics"].string_value)


def test_trainer_consumes_examples_and_schema_and_outputs_model(e2e_home):
  store = _store(e2e_home)
  trainer = _trainer_execution(store)
  events = store.get_events_by_execution_ids([trainer.id])
  artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
  type_names = {t.id: t.name for t in store.get_artifact_types()}
  inputs = sorted(type_names[artifacts[e.artifact_id].type_id] for e in events
                  if e.type == metadata_store_pb2.Event.INPUT)
  outputs = sorted({type_names[artifacts[e.artifact_id].type_id] for e in events
                    if e.type == metadata_store_pb2.Event.OUTPUT})
  assert inputs == ["Examples", "Schema"]
  assert outputs == ["Checkpoint", "Model", "ModelRun"]
  [model] = [a for a in artifacts.values() if type_names[a.type_id] == "Model"]
  final = max(store.get_artifacts_by_type("Checkpoint"), key=lambda a: a.properties["step"].int_value)
  assert model.custom_properties["checkpoint_id"].int_value == final.id


def test_blessed_model_is_pushed_as_a_numbered_version(e2e_home):
  store = _store(e2e_home)
  [blessing] = store.get_artifacts_by_type("ModelBlessing")
  assert blessing.custom_properties["blessed"].int_value == 1
  [pushed] = store.get_artifacts_by_type("PushedModel")
  assert pushed.custom_properties["pushed"].int_value == 1
  version = pushed.custom_properties["pushed_version"].string_value
  assert version == "1"
  served = e2e_home / "serving" / "penguin" / version
  assert (served / "saved_model.pb").is_file()
  assert pushed.custom_properties["pushed_destination"].string_value == str(served)
  listing = sorted(p.name for p in (e2e_home / "serving" / "penguin").iterdir()
                   if not p.name.startswith("."))
  assert listing == ["1"]


def test_models_config_loads_the_pushed_version_as_stable(e2e_home):
  from google.protobuf import text_format
  from tensorflow_serving.config import model_server_config_pb2
  config = text_format.Parse((e2e_home / "serving" / "models.config").read_text(),
                             model_server_config_pb2.ModelServerConfig())
  [model] = config.model_config_list.config
  assert model.name == "penguin"
  assert model.base_path == str(e2e_home / "serving" / "penguin")
  assert list(model.model_version_policy.specific.versions) == [1]
  assert dict(model.version_labels) == {"stable": 1}


def test_saved_model_cli_predicts_from_a_serialized_example(e2e_home):
  served = e2e_home / "serving" / "penguin" / "1"
  example = {"culmen_length_mm": [0.25], "culmen_depth_mm": [0.6],
             "flipper_length_mm": [0.2], "body_mass_g": [0.25]}
  cli = pathlib.Path(sys.executable).parent / "saved_model_cli"
  result = subprocess.run(
      [str(cli), "run", "--dir", str(served), "--tag_set", "serve",
       "--signature_def", "serving_default",
       "--input_examples", f"examples=[{json.dumps(example)}]"],
      capture_output=True, text=True, env=os.environ | {"TF_USE_LEGACY_KERAS": "1"},
      timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "Result for output key outputs" in result.stdout
  values = result.stdout.split("Result for output key outputs:", 1)[1]
  probabilities = [float(v) for v in values.replace("[", " ").replace("]", " ").split()]
  assert len(probabilities) == 3
  assert abs(sum(probabilities) - 1.0) < 1e-4


def test_run_prints_where_things_landed(e2e_home):
  stdout = (e2e_home / "run1.stdout").read_text()
  assert str(e2e_home / "serving" / "penguin" / "1") in stdout
  assert str(e2e_home / "metadata.sqlite") in stdout
  assert "checkpoints:     3 registered, 3 live" in stdout


def test_checkpoints_command_lists_them_as_json(e2e_home):
  result = ckptflow("checkpoints", "--home", str(e2e_home), "--json")
  listed = json.loads(result.stdout)["checkpoints"]
  assert [c["step"] for c in listed] == [100, 200, 300]
  assert all(c["state"] == "LIVE" and os.path.isdir(c["uri"]) for c in listed)


def test_rerun_with_unchanged_inputs_does_not_retrain(tmp_path, penguins_dir):
  # A home of its own, not e2e_home: the rerun adds executions, which the
  # tests reading e2e_home must not see whatever order they run in.
  home = tmp_path / "home"
  run = ("run", "--home", str(home), "--data", str(penguins_dir),
         "--train-steps", "100", "--checkpoint-every", "50", "--model-name", "penguin")
  ckptflow(*run)
  store = _store(home)
  before = len(store.get_artifacts_by_type("Checkpoint"))
  ckptflow(*run)
  store = _store(home)
  trainer_states = [e.last_known_state
                    for e in _executions_by_component(store)["CheckpointingTrainer"]]
  assert trainer_states == [metadata_store_pb2.Execution.COMPLETE,
                            metadata_store_pb2.Execution.CACHED]
  assert len(store.get_artifacts_by_type("Checkpoint")) == before


def test_beam_orchestrator_with_multi_process_beam_jobs_runs_the_pipeline(tmp_path, penguins_dir):
  home = tmp_path / "home"
  result = ckptflow("run", "--home", str(home), "--data", str(penguins_dir),
                    "--orchestrator", "beam",
                    "--beam-arg=--direct_running_mode=multi_processing",
                    "--beam-arg=--direct_num_workers=2",
                    "--train-steps", "100", "--checkpoint-every", "50", unset=OUTPUT_ENV)
  # Quiet in the Beam worker processes too, and the stages are reported.
  lines = result.stderr.splitlines()
  noise = [l for l in lines if _PYTHON_WARNING.search(l) or _TF_CPP_LINE.search(l)]
  assert noise == [], noise[:5]
  assert any(re.search(r"\] CheckpointingTrainer: done in ", l) for l in lines)
  store = _store(home)
  executions = _executions_by_component(store)
  for component in COMPONENTS:
    states = [e.last_known_state for e in executions.get(component, [])]
    assert states == [metadata_store_pb2.Execution.COMPLETE], (component, states)
  steps = sorted(a.properties["step"].int_value for a in store.get_artifacts_by_type("Checkpoint"))
  assert steps == [50, 100]
  assert (home / "serving" / "penguin" / "1" / "saved_model.pb").is_file()


def _blessing_of_latest_evaluator(store) -> metadata_store_pb2.Artifact:
  evaluator = max(_executions_by_component(store)["Evaluator"], key=lambda e: e.id)
  [blessing_id] = [e.artifact_id for e in store.get_events_by_execution_ids([evaluator.id])
                   if e.type == metadata_store_pb2.Event.OUTPUT
                   and e.path.steps[0].key == "blessing"]
  [blessing] = store.get_artifacts_by_id([blessing_id])
  return blessing


def test_after_a_rollback_the_next_run_evaluates_against_the_rolled_back_to_version(
    tmp_path, penguins_dir):
  home = tmp_path / "home"
  lenient = tmp_path / "lenient.toml"
  lenient.write_text("[evaluation]\nlower_bound = 0.0\nallowed_regression = 1.0\n")

  def run(steps):
    ckptflow("run", "--home", str(home), "--data", str(penguins_dir), "--config",
             str(lenient), "--train-steps", str(steps), "--checkpoint-every", "50",
             "--model-name", "penguin")

  run(100)  # version 1, stable; no baseline
  run(150)  # evaluated against 1; version 2, stable
  blessing = _blessing_of_latest_evaluator(_store(home))
  assert blessing.custom_properties["baseline_version"].int_value == 1
  ckptflow("rollback", "penguin", "--home", str(home), "--reason", "test")

  run(200)

  store = _store(home)
  blessing = _blessing_of_latest_evaluator(store)
  props = blessing.custom_properties
  assert props["baseline_version"].int_value == 1
  assert props["baseline_model"].string_value == str(home / "serving" / "penguin" / "1")
  from ckptflow.components import promotion
  [first] = [r for r in promotion.served_versions(store, "penguin") if r.version == 1]
  assert props["baseline_pushed_model_mlmd_id"].int_value == first.artifact_id
  assert props["baseline_model_mlmd_id"].int_value == promotion.pushed_models(
      store, [first])[first.artifact_id]
  assert promotion.current_labels(store, "penguin") == {"stable": 3}


# --- what a default run prints on standard error ------------------------------

# ckptflow's log lines: "2026-01-02 03:04:05,678 I ckptflow.progress: ..."
_OWN_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ([IWE]) (ckptflow[\w.]*): (.*)$")
_PYTHON_WARNING = re.compile(r"\b\w*(Warning|warnings\.warn)\b")
# TensorFlow's C++ log ("2026-01-02 03:04:05.678901: E external/...cc:479]",
# "E0000 00:00:... cuda_dnn.cc:8310]") and absl's C++ preamble.
_TF_CPP_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] |[IWEF]\d{4} \d\d:)"
                          r"|cuFFT|cuDNN|cuBLAS|oneDNN|cpu_feature_guard|absl::InitializeLog")


def _stderr_lines(home: pathlib.Path) -> list[str]:
  return (home / "run1.stderr").read_text().splitlines()


def test_default_run_prints_no_warnings_and_no_tensorflow_log_lines(e2e_home):
  lines = _stderr_lines(e2e_home)
  warnings = [l for l in lines if _PYTHON_WARNING.search(l)]
  tf_cpp = [l for l in lines if _TF_CPP_LINE.search(l)]
  assert (len(warnings), len(tf_cpp)) == (0, 0), warnings[:5] + tf_cpp[:5]
  # Nothing but ckptflow's own lines (no absl/TFX/Beam INFO or WARNING).
  foreign = [l for l in lines if not _OWN_LINE.match(l)]
  assert foreign == [], foreign[:10]


def _progress(home: pathlib.Path) -> list[tuple[datetime.datetime, str]]:
  found = []
  for line in _stderr_lines(home):
    match = _OWN_LINE.match(line)
    if match and match.group(3) == "ckptflow.progress":
      stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
      found.append((stamp, match.group(4)))
  return found


def test_non_terminal_run_logs_each_stage_and_training_progress_at_most_10_s_apart(e2e_home):
  logged = _progress(e2e_home)
  messages = [m for _, m in logged]
  for component in COMPONENTS:
    started = [m for m in messages if re.fullmatch(rf"\[\d/\d\] {component}: running", m)]
    ended = [m for m in messages if re.fullmatch(rf"\[\d/\d\] {component}: done in [\d.]+ s", m)]
    assert len(started) == 1 and len(ended) == 1, (component, messages)
  start = messages.index("training: step 0/%d" % E2E_STEPS)
  [end] = [i for i, m in enumerate(messages) if m.startswith("training finished: ")]
  assert re.match(rf"training finished: step {E2E_STEPS}/{E2E_STEPS}, [\d.]+ steps/s, "
                  rf"loss [\d.e-]+, last checkpoint: step {E2E_STEPS}$", messages[end])
  training = logged[start:end + 1]
  assert all("CheckpointingTrainer: [" in m for _, m in training[1:-1]), training
  gaps = [(b - a).total_seconds() for (a, _), (b, _) in zip(training, training[1:])]
  assert max(gaps) <= 10.0, list(zip(gaps, [m for _, m in training[1:]]))


# --- the Trainer's Model and the checkpoint it came from ----------------------


def test_trainer_model_is_linked_to_its_final_checkpoint_by_mlmd_events(e2e_home):
  store = _store(e2e_home)
  trainer = _trainer_execution(store)
  events = store.get_events_by_execution_ids([trainer.id])
  type_names = {t.id: t.name for t in store.get_artifact_types()}
  [model] = [a for a in store.get_artifacts_by_id([e.artifact_id for e in events
                                                   if e.type == metadata_store_pb2.Event.OUTPUT])
             if type_names[a.type_id] == "Model"]
  final = max(store.get_artifacts_by_type("Checkpoint"),
              key=lambda a: a.properties["step"].int_value)
  [link] = store.get_executions_by_type("ckptflow.TrainerExport")
  assert link.last_known_state == metadata_store_pb2.Execution.COMPLETE
  link_events = {(e.type, e.artifact_id, e.path.steps[0].key)
                 for e in store.get_events_by_execution_ids([link.id])}
  assert link_events == {(metadata_store_pb2.Event.INPUT, final.id, "checkpoint"),
                         (metadata_store_pb2.Event.OUTPUT, model.id, "model")}
  # The Model's producers: the Trainer (TFX's OUTPUT event) and the link.
  producers = {e.execution_id for e in store.get_events_by_artifact_ids([model.id])
               if e.type == metadata_store_pb2.Event.OUTPUT}
  assert producers == {trainer.id, link.id}
  contexts = {c.id for c in store.get_contexts_by_execution(trainer.id)}
  assert {c.id for c in store.get_contexts_by_execution(link.id)} == contexts


def test_lineage_of_a_pipeline_push_reads_model_checkpoint_trainer_data(e2e_home):
  text = ckptflow("lineage", "penguin:1", "--home", str(e2e_home)).stdout
  order = [re.sub(r"^\s*(<- (OUTPUT of|INPUT) )?", "", line).split(" ")[0]
           for line in text.splitlines()[1:]]
  model = order.index("Model")
  assert order[model + 1:model + 5] == [
      "ckptflow.TrainerExport", "Checkpoint",
      "ckptflow.components.trainer.component.CheckpointingTrainer", "Examples"], text
  final_step = f"step={E2E_STEPS}"
  [checkpoint_line] = [l for l in text.splitlines() if "<- INPUT Checkpoint" in l]
  assert final_step in checkpoint_line


def test_checkpoints_lists_whole_metric_names_and_marks_the_served_one(e2e_home):
  store = _store(e2e_home)
  names = sorted({name for a in store.get_artifacts_by_type("Checkpoint")
                  for name in json.loads(a.properties["metrics"].string_value)})
  lines = ckptflow("checkpoints", "--home", str(e2e_home)).stdout.splitlines()
  header = lines[0].split()
  assert header == ["id", "step", "state", *names, "served", "uri"]
  rows = {int(line.split()[1]): line for line in lines[1:]}
  assert sorted(rows) == list(range(E2E_EVERY, E2E_STEPS + 1, E2E_EVERY))
  stable = [line for line in rows.values() if "served penguin:" in line]
  assert len(stable) == 1 and re.search(r"served penguin:\d+ \(stable\)", stable[0])
  assert rows[E2E_STEPS] == stable[0]
  listed = json.loads(ckptflow("checkpoints", "--home", str(e2e_home), "--json").stdout)
  served = {c["step"]: c["served_as"] for c in listed["checkpoints"]}
  assert [s for s, v in served.items() if v] == [E2E_STEPS]
