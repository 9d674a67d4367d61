"""`ckptflow compile --target kubeflow`: the compiled KFP v2 spec.

The golden file is `kubeflow/testdata/pipeline_golden.json`. After an
intended change to the compiled pipeline, regenerate it and review the diff:

  make golden      # = .venv/bin/python -m ckptflow.kubeflow.golden
"""

from __future__ import annotations

import difflib
import json

import pytest
import yaml

from support import ckptflow

from ckptflow.kubeflow import golden
from ckptflow.kubeflow import spec as spec_lib

# Compiling imports TFX (5-10 s each time): those tests are marked heavy. The
# refusals below fail before that import.
TASKS = ["CheckpointingTrainer", "CsvExampleGen", "Evaluator", "ExampleValidator",
         "Pusher", "SchemaGen", "StatisticsGen"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, penguins_dir):
  """One `ckptflow compile` of the penguins pipeline (it imports TFX: slow)."""
  out = tmp_path_factory.mktemp("compiled")
  result = ckptflow("compile", "--target", "kubeflow", "--out", str(out),
                    "--image", "registry.example.com/ckptflow:test",
                    "--data", str(penguins_dir), "--home", str(out / "home"),
                    "--train-steps", "200", "--checkpoint-every", "50",
                    "--metadata", "grpc://metadata-grpc-service.kubeflow:8080")
  return out, result


@pytest.mark.heavy
def test_compiled_spec_matches_the_golden_file_modulo_versions_and_image():
  expected = open(golden.GOLDEN_PATH, encoding="utf-8").read()
  actual = golden.render()
  if actual != expected:
    diff = "".join(list(difflib.unified_diff(
        expected.splitlines(True), actual.splitlines(True), "golden", "compiled"))[:80])
    pytest.fail("the compiled spec differs from kubeflow/testdata/pipeline_golden.json; "
                "if the change is intended, run `make golden` and review the diff:\n" + diff)


@pytest.mark.heavy
def test_compile_writes_json_and_yaml_that_parse_strictly_into_the_same_pipelinespec(compiled):
  out, result = compiled
  assert "compiled 7 tasks for kubeflow" in result.stdout
  from_json = spec_lib.load(str(out / "pipeline.json"))  # unknown fields are fatal
  from_yaml = spec_lib.load(str(out / "pipeline.yaml"))
  assert from_json.spec == from_yaml.spec
  assert sorted(from_json.spec.root.dag.tasks) == TASKS
  assert from_json.spec.schema_version == "2.1.0"


@pytest.mark.heavy
def test_open_source_target_has_no_resolver_and_looks_up_its_baseline(compiled):
  out, _ = compiled
  job = json.loads((out / "pipeline.json").read_text())
  executors = job["pipelineSpec"]["deploymentSpec"]["executors"]
  assert all(set(e) == {"container"} for e in executors.values())
  evaluator = job["pipelineSpec"]["root"]["dag"]["tasks"]["Evaluator"]["inputs"]
  assert "baseline_model" not in evaluator["artifacts"]
  assert evaluator["parameters"]["baseline_pipeline"] == {"runtimeValue": {"constant": "ckptflow"}}
  assert executors["Evaluator_executor"]["container"]["args"][1] == (
      "ckptflow.components.kubeflow.components.KubeflowEvaluatorExecutor")


@pytest.mark.heavy
def test_trainer_task_gets_the_kfp_run_id_a_retry_policy_and_declares_its_checkpoints(
    compiled):
  out, _ = compiled
  spec = json.loads((out / "pipeline.json").read_text())["pipelineSpec"]
  tasks = spec["root"]["dag"]["tasks"]
  assert tasks["CheckpointingTrainer"]["retryPolicy"]["maxRetryCount"] == 3
  assert [t for t in tasks if "retryPolicy" in tasks[t]] == ["CheckpointingTrainer"]
  parameters = spec["root"]["dag"]["tasks"]["CheckpointingTrainer"]["inputs"]["parameters"]
  assert parameters["kfp_run_id"] == {"runtimeValue": {"constant": "{{$.pipeline_job_uuid}}"}}
  assert parameters["kfp_task_name"] == {"runtimeValue": {"constant": "CheckpointingTrainer"}}
  outputs = spec["components"]["CheckpointingTrainer"]["outputDefinitions"]["artifacts"]
  assert yaml.safe_load(outputs["checkpoints"]["artifactType"]["instanceSchema"])["title"] == (
      "ckptflow.Checkpoints")
  container = spec["deploymentSpec"]["executors"]["CheckpointingTrainer_executor"]["container"]
  assert container["image"] == "registry.example.com/ckptflow:test"
  # TFX's task entry point, wrapped for s3:// roots and the real exit status.
  assert container["command"] == ["python", "-m", "ckptflow.components.kubeflow.entry"]


@pytest.mark.heavy
def test_metadata_store_given_at_compile_time_is_set_in_every_task_environment(compiled):
  out, _ = compiled
  executors = json.loads((out / "pipeline.json").read_text())[
      "pipelineSpec"]["deploymentSpec"]["executors"]
  assert {json.dumps(e["container"].get("env")) for e in executors.values()} == {json.dumps(
      [{"name": "CKPTFLOW_METADATA", "value": "grpc://metadata-grpc-service.kubeflow:8080"}])}


@pytest.mark.heavy
def test_data_location_is_a_runtime_parameter_and_no_pipeline_root_is_baked_in(
    compiled, penguins_dir):
  out, _ = compiled
  job = json.loads((out / "pipeline.json").read_text())
  data_root = job["pipelineSpec"]["root"]["inputDefinitions"]["parameters"]["data_root"]
  assert data_root == {"parameterType": "STRING", "defaultValue": str(penguins_dir),
                       "isOptional": True}
  example_gen = job["pipelineSpec"]["root"]["dag"]["tasks"]["CsvExampleGen"]["inputs"]
  assert example_gen["parameters"]["input_base"] == {"componentInputParameter": "data_root"}
  assert "gcsOutputDirectory" not in job["runtimeConfig"]
  assert str(out / "home" / "pipeline_root") not in (out / "pipeline.json").read_text()


@pytest.mark.heavy
def test_local_pipeline_evaluates_against_stable_without_a_resolver(penguins_dir):
  from ckptflow.components.trainer.component import CheckpointingTrainer
  from ckptflow.pipeline.config import PipelineConfig
  from ckptflow.pipeline.pipeline import create_pipeline
  config = PipelineConfig().replace(data={"path": str(penguins_dir)})

  pipeline = create_pipeline(config)

  by_id = {c.id: c for c in pipeline.components}
  assert "latest_blessed_model_resolver" not in by_id
  assert type(by_id["CheckpointingTrainer"]) is CheckpointingTrainer
  assert set(by_id["CheckpointingTrainer"].outputs) == {"model", "model_run"}
  assert "kfp_run_id" not in by_id["CheckpointingTrainer"].exec_properties
  assert type(by_id["Evaluator"]).__module__ == "ckptflow.components.evaluator.component"
  assert by_id["Evaluator"].exec_properties["baseline_model_name"] == "penguin"


@pytest.mark.heavy
def test_vertex_target_keeps_the_resolver_nodes(penguins_dir):
  from ckptflow.pipeline.config import PipelineConfig
  from ckptflow.kubeflow.compile import build_job
  config = PipelineConfig().replace(data={"path": str(penguins_dir)})

  job = build_job(config, image="registry.example.com/ckptflow:test", target="vertex")

  executors = job["pipelineSpec"]["deploymentSpec"]["executors"]
  assert sorted(k for k, e in executors.items() if "resolver" in e) == [
      "latest_blessed_model_resolver-model-blessing-resolver_executor",
      "latest_blessed_model_resolver-model-resolver_executor"]


@pytest.mark.parametrize("flags, env, expected", [
    ([], {"CKPTFLOW_IMAGE": ""}, "no container image: pass --image IMAGE"),
    (["--image", "Not An Image"], {}, "image 'Not An Image' is not a container image"),
    (["--image", "registry.example.com/ckptflow:1", "--features", "a,b",
      "--env", "CKPTFLOW_METADATA=mysql://root:s3cret@db:3306/mlmd"], {},
     "CKPTFLOW_METADATA=mysql://root:***@db:3306/mlmd holds a password"),
    (["--image", "registry.example.com/ckptflow:1", "--features", "a,b",
      "--metadata", "mysql://root:s3cret@db:3306/mlmd"], {},
     "CKPTFLOW_METADATA=mysql://root:***@db:3306/mlmd holds a password"),
])
def test_compile_bad_input_fails_with_one_line_and_writes_nothing(tmp_path, flags, env, expected):
  out = tmp_path / "out"
  result = ckptflow("compile", "--out", str(out), "--home", str(tmp_path / "home"), *flags,
                    env=env, check=False)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2
  assert len(lines) == 1 and lines[0].startswith("ckptflow: error: ") and expected in lines[0]
  assert "s3cret" not in result.stderr
  assert not out.exists()


@pytest.mark.heavy
def test_compile_without_data_uses_the_sample_data_as_run_does(tmp_path):
  home = tmp_path / "home"
  out = tmp_path / "out"
  ckptflow("compile", "--target", "kubeflow", "--image", "registry.example.com/ckptflow:1",
           "--home", str(home), "--out", str(out))
  sample = home / "data" / "sample"
  assert (sample / "data.csv").is_file()
  job = json.loads((out / "pipeline.json").read_text())
  data_root = job["pipelineSpec"]["root"]["inputDefinitions"]["parameters"]["data_root"]
  assert data_root["defaultValue"] == str(sample)
