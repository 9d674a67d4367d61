"""End to end: export, promote, roll back and trace checkpoints of a real run,
through the real `ckptflow` CLI in subprocesses, checked in MLMD and on disk.

One pipeline run (penguins, 300 steps, a checkpoint every 100, keep the
last 2, so step 100 is pruned) makes this module's own home; the pipeline
pushes version 1 of `penguin`, labelled stable. Tests that push use their
own model names, so each sees only its own versions.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
from xml.etree import ElementTree

import numpy as np
import pytest
from ml_metadata.proto import metadata_store_pb2

from ckptflow.base.metadata import open_store
from support import E2E_EVERY, E2E_STEPS, ckptflow

pytestmark = pytest.mark.e2e

INPUT = metadata_store_pb2.Event.INPUT
OUTPUT = metadata_store_pb2.Event.OUTPUT
LENIENT = "[evaluation]\nlower_bound = 0.0\nallowed_regression = 1.0\n"
IMPOSSIBLE = "[evaluation]\nlower_bound = 1.01\n"


@pytest.fixture(scope="module")
def home(tmp_path_factory, penguins_dir) -> pathlib.Path:
  home = tmp_path_factory.mktemp("promote") / "home"
  ckptflow("run", "--home", str(home), "--data", str(penguins_dir),
           "--train-steps", str(E2E_STEPS), "--checkpoint-every", str(E2E_EVERY),
           "--keep-last", "2", "--model-name", "penguin")
  return home


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, str]:
  folder = tmp_path_factory.mktemp("configs")
  paths = {}
  for name, text in (("lenient", LENIENT), ("impossible", IMPOSSIBLE)):
    path = folder / f"{name}.toml"
    path.write_text(text)
    paths[name] = str(path)
  return paths


def store_of(home):
  return open_store(str(home / "metadata.sqlite"), create=False)


def checkpoint_at(home, step):
  [artifact] = [a for a in store_of(home).get_artifacts_by_type("Checkpoint")
                if a.properties["step"].int_value == step]
  return artifact


def promote(home, *args, env=None, check=True):
  return ckptflow("promote", *args, "--home", str(home), "--json", env=env, check=check)


def served_dirs(home, model_name):
  base = home / "serving" / model_name
  return sorted(p.name for p in base.iterdir()) if base.is_dir() else []


def numeric_versions(home, model_name):
  return sorted(int(n) for n in served_dirs(home, model_name) if n.isdigit())


def props(node):
  return {k: getattr(v, v.WhichOneof("value")) for k, v in node.custom_properties.items()
          if v.WhichOneof("value") in ("int_value", "string_value", "double_value")}


def config_labels(home):
  from google.protobuf import text_format
  from tensorflow_serving.config import model_server_config_pb2
  config = text_format.Parse((home / "serving" / "models.config").read_text(),
                             model_server_config_pb2.ModelServerConfig())
  return {c.name: (sorted(c.model_version_policy.specific.versions), dict(c.version_labels))
          for c in config.model_config_list.config}


def mlmd_labels(home, model_name):
  from ckptflow.components import promotion
  return promotion.current_labels(store_of(home), model_name)


def events_of_execution(store, execution_id):
  return store.get_events_by_execution_ids([execution_id])


def first_key(event):
  return event.path.steps[0].key


# --- promote an intermediate checkpoint --------------------------------------


@pytest.fixture(scope="module")
def intermediate(home, configs) -> dict:
  """`promote step:200` (not the last step) to `penguin`, whose stable
  version 1 is the pipeline's push of step 300, with a blessing rule it
  passes whatever the metrics."""
  result = promote(home, "step:200", "--config", configs["lenient"])
  return json.loads(result.stdout)


def test_promoting_an_intermediate_checkpoint_pushes_the_next_version_against_stable(
    home, intermediate):
  assert intermediate["outcome"] == "pushed" and not intermediate["forced"]
  assert intermediate["checkpoint"]["step"] == 200 < E2E_STEPS
  assert intermediate["served"]["version"] == 2
  assert intermediate["served"]["path"] == str(home / "serving" / "penguin" / "2")
  assert intermediate["evaluation"]["baseline"]["version"] == 1
  assert intermediate["eval_config_source"].startswith("config file")
  assert numeric_versions(home, "penguin") == [1, 2]
  assert mlmd_labels(home, "penguin") == {"stable": 2}


def test_promotion_is_recorded_as_export_evaluation_and_push_in_mlmd(home, intermediate):
  store = store_of(home)
  checkpoint_id = intermediate["checkpoint"]["id"]
  model_id = intermediate["export"]["model_artifact_id"]
  export_execution = intermediate["export"]["execution_id"]
  [execution] = store.get_executions_by_id([export_execution])
  [export_type] = store.get_execution_types_by_id([execution.type_id])
  assert export_type.name == "ckptflow.Export"
  events = {(e.type, first_key(e)): e.artifact_id
            for e in events_of_execution(store, export_execution)}
  assert events == {(INPUT, "checkpoint"): checkpoint_id, (OUTPUT, "model"): model_id}
  [model] = store.get_artifacts_by_id([model_id])
  assert store.get_artifact_types_by_id([model.type_id])[0].name == "Model"
  assert props(model)["checkpoint_step"] == 200

  evaluation = intermediate["evaluation"]
  [blessing] = store.get_artifacts_by_id([evaluation["blessing_artifact_id"]])
  assert store.get_artifact_types_by_id([blessing.type_id])[0].name == "ModelBlessing"
  assert props(blessing)["blessed"] == 1
  assert (pathlib.Path(blessing.uri) / "BLESSED").is_file()
  inputs = {first_key(e): e.artifact_id
            for e in events_of_execution(store, evaluation["execution_id"]) if e.type == INPUT}
  [trainer_model] = [a for a in store.get_artifacts_by_type("Model")
                     if props(a).get("checkpoint_step") == E2E_STEPS
                     and "/CheckpointingTrainer/" in a.uri]
  assert inputs["model"] == model_id
  assert inputs["baseline_model"] == trainer_model.id  # what stable version 1 serves
  assert "examples" in inputs and "baseline_pushed_model" in inputs

  [pushed] = store.get_artifacts_by_id([intermediate["pushed_model_artifact_id"]])
  assert props(pushed).items() >= {"pushed": 1, "model_name": "penguin", "version": 2,
                                   "label": "stable", "forced": 0}.items()
  assert pushed.uri == intermediate["served"]["path"]
  assert store_of(home).get_artifacts_by_id([checkpoint_id])[0].custom_properties[
      "protected"].string_value == "promoted"


def _eval_examples(home, count=24):
  import tensorflow as tf
  [examples] = store_of(home).get_artifacts_by_type("Examples")
  files = sorted(str(p) for p in (pathlib.Path(examples.uri) / "Split-eval").iterdir())
  return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")
          .take(count)]


def _restored_straight_from_checkpoint(home, step):
  """The model rebuilt with the run's own module and hyperparameters and
  restored from the checkpoint files, without any ckptflow export code."""
  import tensorflow as tf
  from ckptflow.components.trainer.contract import TrainingSpec
  from ckptflow.pipeline import model as model_module
  store = store_of(home)
  [trainer] = [e for t in store.get_execution_types() if t.name.endswith("CheckpointingTrainer")
               for e in store.get_executions_by_type(t.name)]
  settings = props(trainer)
  keys = tuple(json.loads(settings["feature_keys"]))
  spec = TrainingSpec(feature_keys=keys, label_key=settings["label_key"],
                      hyperparameters=json.loads(settings["hyperparameters"]),
                      seed=settings["seed"], rng=tf.random.Generator.from_seed(1))
  model = model_module.build_training(spec).model
  model({k: tf.zeros([1, 1]) for k in keys})
  checkpoint = checkpoint_at(home, step)
  status = tf.train.Checkpoint(model=model).read(os.path.join(checkpoint.uri, "ckpt"))
  status.expect_partial().assert_existing_objects_matched()
  return model, keys


def test_served_version_predicts_exactly_what_its_checkpoint_restored_directly_does(
    home, intermediate):
  import tensorflow as tf
  serialized = _eval_examples(home)
  model, keys = _restored_straight_from_checkpoint(home, 200)
  features = tf.io.parse_example(
      tf.constant(serialized), {k: tf.io.FixedLenFeature([1], tf.float32) for k in keys})
  expected = model(features, training=False).numpy()

  served = tf.saved_model.load(intermediate["served"]["path"])
  from_examples = served.signatures["serving_default"](
      examples=tf.constant(serialized))["outputs"].numpy()
  from_features = served.signatures["serving_raw"](**features)["outputs"].numpy()

  np.testing.assert_allclose(from_examples, expected, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(from_features, expected, rtol=1e-6, atol=1e-7)
  # And it is not the final model the pipeline pushed as version 1.
  final = tf.saved_model.load(str(home / "serving" / "penguin" / "1"))
  final_outputs = final.signatures["serving_default"](
      examples=tf.constant(serialized))["outputs"].numpy()
  assert np.abs(final_outputs - expected).max() > 1e-4


def test_saved_model_cli_loads_and_runs_the_served_version(home, intermediate):
  cli = pathlib.Path(sys.executable).parent / "saved_model_cli"
  env = os.environ | {"TF_USE_LEGACY_KERAS": "1"}
  served = intermediate["served"]["path"]
  shown = subprocess.run([str(cli), "show", "--dir", served, "--all"],
                         capture_output=True, text=True, env=env, timeout=300)
  assert shown.returncode == 0, shown.stderr[-2000:]
  assert "signature_def['serving_default']" in shown.stdout
  assert "signature_def['serving_raw']" in shown.stdout
  example = {"culmen_length_mm": [0.25], "culmen_depth_mm": [0.6],
             "flipper_length_mm": [0.2], "body_mass_g": [0.25]}
  ran = subprocess.run(
      [str(cli), "run", "--dir", served, "--tag_set", "serve",
       "--signature_def", "serving_default",
       "--input_examples", f"examples=[{json.dumps(example)}]"],
      capture_output=True, text=True, env=env, timeout=300)
  assert ran.returncode == 0, ran.stderr[-2000:]
  values = ran.stdout.split("Result for output key outputs:", 1)[1]
  probabilities = [float(v) for v in values.replace("[", " ").replace("]", " ").split()]
  assert len(probabilities) == 3 and abs(sum(probabilities) - 1) < 1e-4


def test_models_config_parses_with_tf_serving_protos_and_labels_the_new_version(
    home, intermediate):
  versions, labels = config_labels(home)["penguin"]
  assert 2 in versions and labels == {"stable": 2}
  from google.protobuf import text_format
  from tensorflow_serving.config import model_server_config_pb2
  config = text_format.Parse((home / "serving" / "models.config").read_text(),
                             model_server_config_pb2.ModelServerConfig())
  [entry] = [c for c in config.model_config_list.config if c.name == "penguin"]
  assert entry.base_path == str(home / "serving" / "penguin")
  assert entry.model_platform == "tensorflow"


def test_lineage_of_served_version_reaches_its_checkpoint_step_and_the_examples_uri(
    home, intermediate):
  document = json.loads(ckptflow("lineage", "penguin:2", "--home", str(home),
                                 "--format", "json").stdout)
  nodes = {n["key"]: n for n in document["nodes"]}
  [examples] = store_of(home).get_artifacts_by_type("Examples")
  checkpoint_key = f"artifact:{intermediate['checkpoint']['id']}"
  assert nodes[document["root"]]["type"] == "PushedModel"
  assert nodes[checkpoint_key]["properties"]["step"] == 200
  assert nodes[checkpoint_key]["properties"]["fingerprint"]
  assert f"artifact:{examples.id}" in nodes and nodes[f"artifact:{examples.id}"]["uri"] == (
      examples.uri)
  trainers = [n for n in nodes.values() if n["type"].endswith("CheckpointingTrainer")]
  assert trainers and trainers[0]["properties"]["hyperparameters"]["learning_rate"] == 0.01
  edges = {(e["source"], e["target"], e["type"]) for e in document["edges"]}
  export_key = f"execution:{intermediate['export']['execution_id']}"
  model_key = f"artifact:{intermediate['export']['model_artifact_id']}"
  assert (checkpoint_key, export_key, "INPUT") in edges
  assert (export_key, model_key, "OUTPUT") in edges
  assert (f"execution:{trainers[0]['id']}", checkpoint_key, "OUTPUT") in edges
  assert (f"artifact:{examples.id}", f"execution:{trainers[0]['id']}", "INPUT") in edges

  text = ckptflow("lineage", "penguin:2", "--home", str(home)).stdout
  assert "step=200" in text and examples.uri in text


def test_lineage_svg_has_one_node_per_artifact_and_execution_and_labelled_edges(
    home, intermediate, tmp_path):
  if shutil.which("dot") is None:
    pytest.skip("graphviz `dot` is not installed (make system-deps)")
  out = tmp_path / "lineage.svg"
  ckptflow("lineage", "penguin:2", "--home", str(home), "--format", "svg", "--out", str(out))
  document = json.loads(ckptflow("lineage", "penguin:2", "--home", str(home),
                                 "--json").stdout)

  svg = ElementTree.fromstring(out.read_bytes())
  ns = "{http://www.w3.org/2000/svg}"
  groups = [g for g in svg.iter(f"{ns}g")]
  nodes = [g for g in groups if g.get("class") == "node"]
  edges = [g for g in groups if g.get("class") == "edge"]
  assert len(nodes) == len(document["nodes"]) and len(edges) == len(document["edges"])
  texts = [t.text or "" for t in svg.iter(f"{ns}text")]
  assert "step=200" in texts
  assert {"INPUT", "OUTPUT"} <= set(texts)


def test_export_command_reuses_the_promoted_export_of_the_same_checkpoint(
    home, intermediate):
  result = json.loads(ckptflow("export", "step:200", "--home", str(home), "--json").stdout)

  assert result["export"]["reused"] is True
  assert result["export"]["model_artifact_id"] == intermediate["export"]["model_artifact_id"]


# --- not blessed ---------------------------------------------------------------


def test_promote_that_is_not_blessed_records_the_outcome_and_pushes_nothing(home, configs):
  result = promote(home, "step:200", "--config", configs["impossible"],
                   "--model-name", "penguin_rejected", check=False)

  assert result.returncode == 1, result.stderr[-3000:]
  document = json.loads(result.stdout)
  assert document["outcome"] == "not_pushed" and document["served"] is None
  assert "Traceback" not in result.stderr
  store = store_of(home)
  [pushed] = store.get_artifacts_by_id([document["pushed_model_artifact_id"]])
  assert props(pushed)["pushed"] == 0 and props(pushed)["model_name"] == "penguin_rejected"
  assert "not blessed" in props(pushed)["reason"] and ">= 1.01" in props(pushed)["reason"]
  [blessing] = store.get_artifacts_by_id([document["evaluation"]["blessing_artifact_id"]])
  assert props(blessing)["blessed"] == 0
  assert (pathlib.Path(blessing.uri) / "NOT_BLESSED").is_file()
  assert document["evaluation"]["baseline"] is None  # no stable version to compare with
  assert numeric_versions(home, "penguin_rejected") == []
  assert "penguin_rejected" not in config_labels(home)


# --- killed during the copy ----------------------------------------------------


def test_promote_killed_during_the_copy_leaves_no_partial_version_and_rerun_takes_next(
    home):
  store = store_of(home)
  exports_before = len(store.get_executions_by_type("ckptflow.Export"))

  killed = promote(home, "step:300", "--force", "--model-name", "penguin_killed",
                   env={"CKPTFLOW_FAULT": "push-copy"}, check=False)

  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  left = served_dirs(home, "penguin_killed")
  assert numeric_versions(home, "penguin_killed") == []
  assert any(n.startswith(".staging-1-") for n in left), left  # killed mid-copy
  assert "penguin_killed" not in config_labels(home)

  rerun = json.loads(promote(home, "step:300", "--force",
                             "--model-name", "penguin_killed").stdout)

  assert rerun["served"]["version"] == 1
  assert [n for n in served_dirs(home, "penguin_killed") if not n.startswith(".")] == ["1"]
  assert (home / "serving" / "penguin_killed" / "1" / "saved_model.pb").is_file()
  assert rerun["export"]["reused"] is True  # the killed run's export, recorded before
  assert len(store_of(home).get_executions_by_type("ckptflow.Export")) <= exports_before + 1
  assert config_labels(home)["penguin_killed"] == ([1], {"stable": 1})


# --- racing promotions ---------------------------------------------------------


def _race(home, model_name, specs):
  """Starts one `promote SPEC --force` per spec at once; their JSON documents."""
  env = os.environ | {"TF_USE_LEGACY_KERAS": "1"}
  racers = [subprocess.Popen(
      [sys.executable, "-m", "ckptflow.cli", "promote", spec, "--force", "--model-name",
       model_name, "--home", str(home), "--json"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for spec in specs]
  outputs = [racer.communicate(timeout=900) for racer in racers]
  for racer, (_, stderr) in zip(racers, outputs):
    assert racer.returncode == 0, stderr[-3000:]
  return [json.loads(stdout) for stdout, _ in outputs]


def test_two_promotions_racing_on_one_model_get_distinct_versions(home):
  documents = _race(home, "penguin_race", ["step:200", "latest"])

  versions = sorted(d["served"]["version"] for d in documents)
  assert versions == [1, 2]
  assert len({d["served"]["path"] for d in documents}) == 2
  assert len({d["export"]["model_artifact_id"] for d in documents}) == 2
  assert all(d["eval_config_source"].startswith("Evaluator execution") for d in documents)
  for version in (1, 2):
    assert (home / "serving" / "penguin_race" / str(version) / "saved_model.pb").is_file()
  from ckptflow.components import promotion
  records = promotion.served_versions(store_of(home), "penguin_race")
  assert sorted(r.version for r in records) == [1, 2]
  assert len({r.artifact_id for r in records}) == 2
  assert (home / "serving" / "penguin_race" / ".last_version").read_text().strip() == "2"


def test_two_promotions_of_one_checkpoint_racing_push_it_once(home):
  documents = _race(home, "penguin_race_once", ["latest", "latest"])

  outcomes = sorted(d["outcome"] for d in documents)
  assert outcomes == ["pushed", "relabelled"], documents
  assert {d["served"]["version"] for d in documents} == {1}
  # One export of the checkpoint: the second promotion exported nothing.
  exports = {d["outcome"]: d["export"] for d in documents}
  assert exports["relabelled"] is None and exports["pushed"]["model_artifact_id"]
  assert [n for n in served_dirs(home, "penguin_race_once") if not n.startswith(".")] == ["1"]
  from ckptflow.components import promotion
  records = promotion.served_versions(store_of(home), "penguin_race_once")
  assert [r.version for r in records] == [1]
  assert config_labels(home)["penguin_race_once"] == ([1], {"stable": 1})


# --- rollback --------------------------------------------------------------------


def assert_labels_agree(home, model_name, expected):
  assert mlmd_labels(home, model_name) == expected
  versions, labels = config_labels(home)[model_name]
  assert labels == expected
  assert set(expected.values()) <= set(versions)


def test_rollback_moves_stable_back_and_models_config_agrees_with_mlmd(home):
  model = "penguin_rb"
  promote(home, "step:200", "--force", "--model-name", model)
  promote(home, "step:300", "--force", "--model-name", model)
  assert_labels_agree(home, model, {"stable": 2})

  rolled = json.loads(ckptflow("rollback", model, "--home", str(home), "--json").stdout)

  assert (rolled["previous_version"], rolled["version"]) == (2, 1)
  assert_labels_agree(home, model, {"stable": 1})
  store = store_of(home)
  [change] = [e for e in store.get_executions_by_type("ckptflow.SetLabel")
              if props(e).get("model_name") == model]
  assert props(change).items() >= {"label": "stable", "version": 1, "previous_version": 2,
                                   "reason": "rollback"}.items()

  # step:300 is served already (version 2): the label moves there, no copy.
  canary = json.loads(promote(home, "step:300", "--force", "--model-name", model,
                              "--label", "canary").stdout)

  assert canary["outcome"] == "relabelled" and canary["served"]["version"] == 2
  assert_labels_agree(home, model, {"canary": 2, "stable": 1})

  ckptflow("rollback", model, "--to", "2", "--home", str(home))

  assert_labels_agree(home, model, {"canary": 2, "stable": 2})


def test_promoting_the_same_checkpoint_again_moves_the_label_to_its_version(home):
  model = "penguin_again"
  history = lambda: json.loads(ckptflow("history", model, "--home", str(home),
                                        "--json").stdout)["history"]
  first = json.loads(promote(home, "step:200", "--force", "--label", "stable",
                             "--model-name", model, "--reason", "first").stdout)
  assert first["outcome"] == "pushed" and first["served"]["version"] == 1
  assert_labels_agree(home, model, {"stable": 1})

  # The second time used to fail with UNIQUE constraint failed: Event... (exit 1).
  again = promote(home, "step:200", "--force", "--label", "stable", "--model-name", model,
                  "--reason", "ci rerun")
  assert json.loads(again.stdout)["outcome"] == "relabelled"
  assert numeric_versions(home, model) == [1]
  assert_labels_agree(home, model, {"stable": 1})
  assert [(h["action"], h["version"], h["reason"]) for h in history()] == [
      ("push", 1, "first")]  # nothing moved, nothing recorded

  promote(home, "step:300", "--force", "--model-name", model, "--reason", "newer")
  ckptflow("rollback", model, "--home", str(home), "--reason", "regression")
  assert_labels_agree(home, model, {"stable": 1})
  third = json.loads(promote(home, "step:300", "--force", "--label", "stable",
                             "--model-name", model, "--reason", "fixed upstream").stdout)

  assert third["outcome"] == "relabelled" and third["served"]["version"] == 2
  assert numeric_versions(home, model) == [1, 2]
  assert_labels_agree(home, model, {"stable": 2})
  assert [(h["action"], h["version"], h["label"], h["reason"]) for h in history()] == [
      ("push", 1, "stable", "first"), ("push", 2, "stable", "newer"),
      ("rollback", 1, "stable", "regression"), ("repromote", 2, "stable", "fixed upstream")]

  # Its version gone: pushed again as a new version.
  shutil.rmtree(home / "serving" / model / "2")
  ckptflow("doctor", "--repair", "--home", str(home), check=False)
  fourth = json.loads(promote(home, "step:300", "--force", "--model-name", model).stdout)
  assert fourth["outcome"] == "pushed" and fourth["served"]["version"] == 3
  assert_labels_agree(home, model, {"stable": 3})


# --- bad input -------------------------------------------------------------------


def snapshot(home):
  """Everything a command could write: MLMD rows and every file of the home
  except the SQLite file itself (compared through its rows)."""
  store = store_of(home)
  executions = store.get_executions()
  artifacts = sorted((a.id, a.state, a.uri, sorted(props(a).items(), key=str))
                     for a in store.get_artifacts())
  events = len(store.get_events_by_execution_ids([e.id for e in executions]))
  files = sorted((str(p.relative_to(home)), p.stat().st_size)
                 for p in home.rglob("*") if p.name != "metadata.sqlite")
  return len(executions), artifacts, events, files


@pytest.mark.parametrize("args", [
    ("promote", "999999"),
    ("promote", "PRUNED_ID"),
    ("promote", "step:100"),
    ("promote", "step:12345"),
    ("promote", "bogus"),
    ("promote", "step:200", "--model-name", "a/b"),
    ("promote", "step:200", "--model-name", "../escape"),
    ("promote", "step:200", "--model-name", ".."),
    ("promote", "step:200", "--serving-dir", "FILE/serving"),
    ("export", "999999"),
    ("export", "PRUNED_ID"),
    ("rollback", "never_pushed"),
    ("rollback", "../x"),
    ("rollback", "penguin", "--to", "999"),
    ("lineage", "penguin:999"),
    ("lineage", "999999"),
    ("lineage", "no/such:1"),
], ids=lambda a: " ".join(a))
def test_bad_input_fails_with_one_line_and_writes_nothing(home, tmp_path, args):
  pruned = checkpoint_at(home, 100)
  assert pruned.state == metadata_store_pb2.Artifact.DELETED
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  argv = [a.replace("PRUNED_ID", str(pruned.id)).replace("FILE", str(blocker)) for a in args]
  before = snapshot(home)

  result = ckptflow(*argv, "--home", str(home), check=False)

  assert result.returncode == 2, (result.stdout, result.stderr[-3000:])
  errors = [line for line in result.stderr.splitlines() if line.startswith("ckptflow: error:")]
  assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert snapshot(home) == before


def test_promote_to_a_serving_dir_that_is_not_writable_fails_and_writes_nothing(
    home, tmp_path):
  readonly = tmp_path / "readonly"
  readonly.mkdir()
  readonly.chmod(0o555)
  prefix = []
  if os.geteuid() == 0:
    # root writes anywhere; drop the capabilities that let it.
    if shutil.which("setpriv") is None:
      pytest.skip("running as root without setpriv to drop CAP_DAC_OVERRIDE")
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
              "--inh-caps=-dac_override,-dac_read_search"]
  before = snapshot(home)

  result = subprocess.run(
      prefix + [sys.executable, "-m", "ckptflow.cli", "promote", "step:200",
                "--serving-dir", str(readonly / "serving"), "--home", str(home)],
      capture_output=True, text=True, env=os.environ | {"TF_USE_LEGACY_KERAS": "1"},
      timeout=300)

  assert result.returncode == 2, result.stderr[-3000:]
  [error] = [line for line in result.stderr.splitlines() if line.startswith("ckptflow: error:")]
  assert "not writable" in error and str(readonly) in error
  assert list(readonly.iterdir()) == []
  assert snapshot(home) == before


def test_metadata_only_commands_do_not_import_tensorflow_or_tfx(home, intermediate):
  code = (
      "import sys\n"
      "from ckptflow.cli import main as cli\n"
      f"assert cli.main(['lineage', 'penguin:2', '--home', {str(home)!r}]) == 0\n"
      f"assert cli.main(['rollback', 'no_such_model', '--home', {str(home)!r}]) == 2\n"
      "heavy = [m for m in ('tensorflow', 'tfx', 'tensorflow_model_analysis') "
      "if m in sys.modules]\n"
      "assert not heavy, heavy\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=os.environ | {"TF_USE_LEGACY_KERAS": "1"}, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
