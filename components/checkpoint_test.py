"""The link from a Trainer's Model to the Checkpoint it was written from
(real SQLite MLMD)."""

from __future__ import annotations

from ml_metadata.proto import metadata_store_pb2

from ckptflow.components import checkpoint as checkpoint_lib
from ckptflow.components.checkpoint import CheckpointRegistry, NewCheckpoint

INPUT = metadata_store_pb2.Event.INPUT
OUTPUT = metadata_store_pb2.Event.OUTPUT


def _trainer_with_model_and_checkpoint(store, tmp_path):
  """A Trainer execution in a pipeline-run context that wrote a Model (TFX's
  OUTPUT event) and registered checkpoint 300."""
  context_type = store.put_context_type(metadata_store_pb2.ContextType(name="pipeline_run"))
  execution_type = store.put_execution_type(metadata_store_pb2.ExecutionType(name="Trainer"))
  model_type = store.put_artifact_type(metadata_store_pb2.ArtifactType(name="Model"))
  execution = metadata_store_pb2.Execution(
      type_id=execution_type, last_known_state=metadata_store_pb2.Execution.COMPLETE)
  model = metadata_store_pb2.Artifact(type_id=model_type, uri=str(tmp_path / "model"))
  trainer_id, (model_id,), _ = store.put_execution(
      execution, [(model, metadata_store_pb2.Event(type=OUTPUT))],
      contexts=[metadata_store_pb2.Context(type_id=context_type, name="run-1")])
  # A consumer (the Evaluator's node) attributes the Model to its context too.
  [evaluator] = store.put_contexts([metadata_store_pb2.Context(type_id=context_type,
                                                               name="evaluator")])
  store.put_attributions_and_associations(
      [metadata_store_pb2.Attribution(context_id=evaluator, artifact_id=model_id)], [])
  checkpoint = CheckpointRegistry(store, trainer_id).register(NewCheckpoint(
      uri=str(tmp_path / "step-300"), step=300, epoch=1, metrics={"loss": 0.1},
      size_bytes=1, checksum="c", tf_version="t", fingerprint="f", resume_key="k"))
  return trainer_id, model_id, checkpoint.id


def test_record_model_source_links_checkpoint_to_model_once(store, tmp_path):
  trainer_id, model_id, checkpoint_id = _trainer_with_model_and_checkpoint(store, tmp_path)

  link_id = checkpoint_lib.record_model_source(store, model_id, checkpoint_id)
  again = checkpoint_lib.record_model_source(store, model_id, checkpoint_id)

  assert link_id is not None and again is None
  [link] = store.get_executions_by_type(checkpoint_lib.TRAINER_EXPORT_TYPE_NAME)
  assert link.id == link_id and link.last_known_state == metadata_store_pb2.Execution.COMPLETE
  assert link.custom_properties["checkpoint_step"].int_value == 300
  events = {(e.type, e.artifact_id, e.path.steps[0].key)
            for e in store.get_events_by_execution_ids([link_id])}
  assert events == {(INPUT, checkpoint_id, "checkpoint"), (OUTPUT, model_id, "model")}
  assert ({c.name for c in store.get_contexts_by_execution(link_id)}
          == {c.name for c in store.get_contexts_by_execution(trainer_id)} == {"run-1"})
  # Neither artifact was rewritten: the checkpoint stays LIVE with its step.
  [checkpoint] = store.get_artifacts_by_id([checkpoint_id])
  assert checkpoint.state == metadata_store_pb2.Artifact.LIVE
  assert checkpoint.properties["step"].int_value == 300


def test_record_model_source_writes_nothing_for_unknown_or_mistyped_artifacts(
    store, tmp_path):
  _, model_id, checkpoint_id = _trainer_with_model_and_checkpoint(store, tmp_path)

  assert checkpoint_lib.record_model_source(store, model_id, 999) is None
  assert checkpoint_lib.record_model_source(store, 999, checkpoint_id) is None
  # Swapped: a Checkpoint is not a Model.
  assert checkpoint_lib.record_model_source(store, checkpoint_id, model_id) is None
  assert store.get_executions_by_type(checkpoint_lib.TRAINER_EXPORT_TYPE_NAME) == []
