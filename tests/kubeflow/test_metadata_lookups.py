"""The Kubeflow target's own MLMD records, on a real SQLite store: the
Trainer's per-attempt executions (resume scope, closing killed attempts) and
the Evaluator's baseline lookup without a Resolver node."""

from __future__ import annotations

import pytest
from ml_metadata.proto import metadata_store_pb2

from ckptflow.components.checkpoint import NewCheckpoint
from ckptflow.components.kubeflow import baseline, trainer_attempt
from ckptflow.base import metadata

RESUME_KEY = "k" * 64
TASK = "CheckpointingTrainer"


def _register(sink, step: int) -> int:
  record = sink.register(NewCheckpoint(
      uri=f"/ckpt/{sink.execution_id}/step-{step}", step=step, epoch=0,
      metrics={"loss": 1.0 / step}, size_bytes=10, checksum=f"{sink.execution_id}-{step}",
      tf_version="2.16.2", fingerprint="f", resume_key=RESUME_KEY))
  return record.id


def _start(store, run_id: str) -> trainer_attempt.TrainerAttempt:
  return trainer_attempt.start(store, run_id=run_id, task_name=TASK,
                               resume_key=RESUME_KEY, input_uris={})


def test_retried_attempt_resumes_only_from_the_killed_attempt_of_its_own_run(store):
  other_run = _start(store, "run-other")  # killed too, but another run
  _register(other_run.checkpoint_sink(RESUME_KEY), 900)
  first = _start(store, "run-1")
  sink = first.checkpoint_sink(RESUME_KEY)
  ids = [_register(sink, step) for step in (100, 200)]

  # The pod was killed: no complete(), no fail(). The retry starts.
  second = _start(store, "run-1")
  candidates = second.checkpoint_sink(RESUME_KEY).resume_candidates()

  assert [r.id for r in candidates] == [ids[1], ids[0]]  # newest first, run-1 only
  assert second.attempt == 2 and second.earlier_unfinished == (first.execution_id,)
  [closed] = store.get_executions_by_id([first.execution_id])
  assert closed.last_known_state == metadata_store_pb2.Execution.FAILED
  assert closed.custom_properties["superseded_by"].int_value == second.execution_id
  [other] = store.get_executions_by_id([other_run.execution_id])
  assert other.last_known_state == metadata_store_pb2.Execution.RUNNING


def test_completed_attempt_is_never_resumed_from(store):
  first = _start(store, "run-1")
  _register(first.checkpoint_sink(RESUME_KEY), 100)
  first.complete(final_step=100, checkpoint_ids=[])

  second = _start(store, "run-1")

  assert second.earlier_unfinished == ()
  assert list(second.checkpoint_sink(RESUME_KEY).resume_candidates()) == []


def test_attempt_is_attributed_to_the_kfp_run_context_and_reads_its_inputs(store):
  context_type = store.put_context_type(metadata_store_pb2.ContextType(name="system.PipelineRun"))
  [run_context] = store.put_contexts([metadata_store_pb2.Context(type_id=context_type,
                                                                  name="run-1")])
  artifact_type = store.put_artifact_type(metadata_store_pb2.ArtifactType(name="tfx.Examples"))
  [examples] = store.put_artifacts([metadata_store_pb2.Artifact(type_id=artifact_type,
                                                                 uri="/root/examples")])

  attempt = trainer_attempt.start(store, run_id="run-1", task_name=TASK,
                                  resume_key=RESUME_KEY,
                                  input_uris={"examples": "/root/examples",
                                              "schema": "/root/not-recorded"})

  assert [c.id for c in store.get_contexts_by_execution(attempt.execution_id)] == [run_context]
  [event] = store.get_events_by_execution_ids([attempt.execution_id])
  assert (event.artifact_id, event.type, event.path.steps[0].key) == (
      examples, metadata_store_pb2.Event.INPUT, "examples")


@pytest.mark.parametrize("properties, expected", [
    ({}, "no kfp_run_id/kfp_task_name parameters"),
    ({"kfp_run_id": "{{$.pipeline_job_uuid}}", "kfp_task_name": TASK},
     "unresolved placeholder '{{$.pipeline_job_uuid}}'"),
])
def test_trainer_without_a_resolved_run_id_fails_with_one_line(properties, expected):
  with pytest.raises(trainer_attempt.KubeflowAttemptError) as raised:
    trainer_attempt.run_identity(properties)
  assert expected in str(raised.value) and "\n" not in str(raised.value)


# --- baseline lookup -----------------------------------------------------------


def _kfp_pipeline(store, pipeline: str) -> int:
  type_id = store.put_context_type(metadata_store_pb2.ContextType(name="system.Pipeline"))
  [context_id] = store.put_contexts([metadata_store_pb2.Context(type_id=type_id, name=pipeline)])
  return context_id


def _kfp_model_and_blessing(store, context_id: int, *, blessed: float) -> tuple[int, int]:
  """What KFP records for a Trainer's model and an Evaluator's blessing."""
  model_type = store.put_artifact_type(metadata_store_pb2.ArtifactType(name="tfx.Model"))
  blessing_type = store.put_artifact_type(
      metadata_store_pb2.ArtifactType(name="tfx.ModelBlessing"))
  [model_id] = store.put_artifacts([metadata_store_pb2.Artifact(
      type_id=model_type, uri=f"/root/model-{blessed}-{context_id}",
      state=metadata_store_pb2.Artifact.LIVE)])
  blessing = metadata_store_pb2.Artifact(type_id=blessing_type, uri="/root/blessing",
                                         state=metadata_store_pb2.Artifact.LIVE)
  blessing.custom_properties["blessed"].double_value = blessed
  blessing.custom_properties["current_model_id"].string_value = str(model_id)
  blessing.custom_properties["current_model"].string_value = f"/root/model-{blessed}"
  [blessing_id] = store.put_artifacts([blessing])
  store.put_attributions_and_associations(
      [metadata_store_pb2.Attribution(context_id=context_id, artifact_id=a)
       for a in (model_id, blessing_id)], [])
  return model_id, blessing_id


def test_baseline_is_the_newest_blessed_model_of_the_same_pipeline(store):
  ours = _kfp_pipeline(store, "ckptflow")
  theirs = _kfp_pipeline(store, "another-pipeline")
  older, _ = _kfp_model_and_blessing(store, ours, blessed=1.0)
  newest, blessing = _kfp_model_and_blessing(store, ours, blessed=1.0)
  _kfp_model_and_blessing(store, ours, blessed=0.0)  # newer, but not blessed
  _kfp_model_and_blessing(store, theirs, blessed=1.0)  # newest, other pipeline

  found = baseline.latest_blessed_model(store, "ckptflow")

  assert found is not None and newest > older
  assert (found.model_id, found.blessing_id) == (newest, blessing)
  [model] = store.get_artifacts_by_id([newest])
  assert found.model_uri == model.uri


def test_no_blessed_model_means_no_baseline(store):
  ours = _kfp_pipeline(store, "ckptflow")
  _kfp_model_and_blessing(store, ours, blessed=0.0)

  assert baseline.latest_blessed_model(store, "ckptflow") is None


# --- where a task finds the store ----------------------------------------------


def test_task_without_ckptflow_metadata_uses_kfps_metadata_service(monkeypatch):
  monkeypatch.delenv("CKPTFLOW_METADATA", raising=False)
  monkeypatch.setenv("METADATA_GRPC_SERVICE_HOST", "metadata-grpc-service.kubeflow")
  monkeypatch.setenv("METADATA_GRPC_SERVICE_PORT", "8080")
  assert metadata.target_from_env() == "grpc://metadata-grpc-service.kubeflow:8080"

  monkeypatch.setenv("CKPTFLOW_METADATA", "mysql://ckptflow@db:3306/mlmd")
  assert metadata.target_from_env() == "mysql://ckptflow@db:3306/mlmd"  # explicit wins
