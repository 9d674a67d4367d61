"""The checkpointing Trainer's own MLMD execution when it runs on Kubeflow.

Under TFX's LocalDagRunner/BeamDagRunner the Trainer registers checkpoints
against the execution TFX made for it (TFX passes its id). Under KFP v2's
TFX container entrypoint there is no such id in the store that
CKPTFLOW_METADATA names, so each run of the Trainer task (an *attempt*:
the first pod, or a retried one after a preemption) registers an execution
of its own there:

* type `ckptflow.KubeflowTrainer`, custom properties `run_id` (the KFP run,
  from the `{{$.pipeline_job_uuid}}` placeholder that KFP resolves),
  `task_name`, `resume_key` and `attempt` (1, 2, ...);
* state RUNNING while it trains, COMPLETE once the model is exported, FAILED
  if it raised; an attempt that was killed stays RUNNING until the next
  attempt of the same run and task marks it FAILED (`superseded_by`);
* attributed to KFP's `system.PipelineRun` context of the run (and its
  `system.Pipeline` parent) when the store holds them, i.e. when
  CKPTFLOW_METADATA is KFP's own metadata service, so checkpoints are listed
  with the run's other artifacts;
* INPUT events to the store's artifacts at the Examples and Schema URIs,
  when the store has them, so a checkpoint's lineage reaches its data.

An attempt resumes only from checkpoints of earlier, unfinished attempts of
the same run and task (`RunScopedCheckpointSink`), never from another run.

Imports ml_metadata only (TensorFlow, already loaded in the Trainer, only
inside `finish`); never TFX.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Mapping, Sequence

from ml_metadata import errors as mlmd_errors
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from ckptflow.components.checkpoint import CheckpointRecord
from ckptflow.components.trainer.registration import MlmdCheckpointSink
from ckptflow.base.errors import CkptflowError
from ckptflow.base import mlmd
from ckptflow.base.metadata import Store

_log = logging.getLogger(__name__)

EXECUTION_TYPE_NAME = "ckptflow.KubeflowTrainer"
# Execution parameters the Kubeflow Trainer component adds; KFP resolves
# these placeholders in constant parameter values before the task starts.
RUN_ID_PARAMETER = "kfp_run_id"
TASK_NAME_PARAMETER = "kfp_task_name"
RUN_ID_PLACEHOLDER = "{{$.pipeline_job_uuid}}"
# KFP's own MLMD context types (backend/src/v2/metadata).
KFP_RUN_CONTEXT_TYPE = "system.PipelineRun"

_RUNNING = metadata_store_pb2.Execution.RUNNING
_FINISHED = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)


class KubeflowAttemptError(CkptflowError):
  """The Trainer cannot tell which Kubeflow run and task it belongs to."""


def run_identity(exec_properties: Mapping[str, object]) -> tuple[str, str]:
  """(run id, task name) from the Kubeflow Trainer's execution properties.

  Raises:
    KubeflowAttemptError: they are missing (the component was not compiled
      for Kubeflow) or the run id is an unresolved placeholder (the spec was
      run by something that does not resolve KFP placeholders).
  """
  run_id = str(exec_properties.get(RUN_ID_PARAMETER) or "").strip()
  task_name = str(exec_properties.get(TASK_NAME_PARAMETER) or "").strip()
  if not run_id or not task_name:
    raise KubeflowAttemptError(
        "the Trainer is not running under a TFX runner that gives it an MLMD "
        f"execution id, and it has no {RUN_ID_PARAMETER}/{TASK_NAME_PARAMETER} "
        "parameters. Expected `ckptflow run` (local) or a spec compiled with "
        "`ckptflow compile --target kubeflow`")
  if run_id.startswith("{{"):
    raise KubeflowAttemptError(
        f"the Trainer's {RUN_ID_PARAMETER} is the unresolved placeholder "
        f"{run_id!r}. Expected KFP (or ckptflow's launcher) to replace it with "
        "the run id")
  return run_id, task_name


@dataclasses.dataclass
class TrainerAttempt:
  """One run of the Trainer task, recorded as an MLMD execution."""

  store: Store
  execution_id: int
  run_id: str
  task_name: str
  attempt: int
  earlier_unfinished: tuple[int, ...]  # execution ids, oldest first

  def checkpoint_sink(self, resume_key: str) -> "RunScopedCheckpointSink":
    return RunScopedCheckpointSink(self.store, self.execution_id, resume_key,
                                   resumable_from=self.earlier_unfinished)

  def complete(self, *, final_step: int, checkpoint_ids: Sequence[int]) -> None:
    """Marks the attempt COMPLETE (the model is exported)."""
    self._update(metadata_store_pb2.Execution.COMPLETE,
                 {"final_step": final_step,
                  "checkpoint_ids": json.dumps(list(checkpoint_ids))})

  def fail(self, reason: str) -> None:
    """Marks the attempt FAILED; its checkpoints stay resumable."""
    self._update(metadata_store_pb2.Execution.FAILED, {"state_reason": reason[:500]})

  def _update(self, state: int, custom: Mapping[str, object]) -> None:
    [execution] = self.store.get_executions_by_id([self.execution_id])
    execution.last_known_state = state
    mlmd.set_properties(execution.custom_properties, custom)
    self.store.put_executions([execution])


def attempts_of(store: Store, run_id: str,
                task_name: str) -> list[metadata_store_pb2.Execution]:
  """Every recorded attempt of `task_name` in KFP run `run_id`, oldest first."""
  condition = (f"type = {mlmd.quote(EXECUTION_TYPE_NAME)} AND "
               f"custom_properties.run_id.string_value = {mlmd.quote(run_id)} AND "
               f"custom_properties.task_name.string_value = {mlmd.quote(task_name)}")
  executions = store.get_executions(
      list_options=metadata_store.ListOptions(filter_query=condition))
  return sorted(executions, key=lambda e: e.id)


def _run_contexts(store: Store, run_id: str) -> list[metadata_store_pb2.Context]:
  """KFP's run context and its pipeline parent, if the store has them."""
  try:
    run_context = store.get_context_by_type_and_name(KFP_RUN_CONTEXT_TYPE, run_id)
  except mlmd_errors.NotFoundError:  # no such context type in this store
    run_context = None
  if run_context is None:
    return []
  return [run_context] + list(store.get_parent_contexts_by_context(run_context.id))


def _artifacts_at(store: Store, uris: Mapping[str, str]) -> dict[str, int]:
  """input key -> id of the newest artifact recorded at that URI."""
  found = {}
  for key, uri in uris.items():
    artifacts = store.get_artifacts_by_uri(uri)
    if artifacts:
      found[key] = max(a.id for a in artifacts)
  return found


def start(store: Store, *, run_id: str, task_name: str,
          resume_key: str, input_uris: Mapping[str, str]) -> TrainerAttempt:
  """Records a new attempt (RUNNING) of `task_name` in run `run_id`.

  Earlier attempts of the same run and task that are still RUNNING were
  killed (a pod runs one attempt at a time): they are marked FAILED with
  `superseded_by`, and their checkpoints become this attempt's resume
  candidates.
  """
  type_id = mlmd.ensure_execution_type(store, EXECUTION_TYPE_NAME)
  earlier = attempts_of(store, run_id, task_name)
  execution = metadata_store_pb2.Execution(type_id=type_id, last_known_state=_RUNNING)
  custom = execution.custom_properties
  custom["run_id"].string_value = run_id
  custom["task_name"].string_value = task_name
  custom["resume_key"].string_value = resume_key
  custom["attempt"].int_value = len(earlier) + 1
  custom["pod_name"].string_value = os.environ.get("KFP_POD_NAME", "")
  contexts = _run_contexts(store, run_id)
  # KFP's event paths are [key], without TFX's index.
  events = [(None, mlmd.input_event(key, artifact_id, index=None))
            for key, artifact_id in sorted(_artifacts_at(store, input_uris).items())]
  # One transaction: the execution, its INPUT events and its contexts.
  execution_id, _, _ = store.put_execution(execution, events, contexts,
                                           force_reuse_context=True)
  unfinished = tuple(e.id for e in earlier if e.last_known_state not in _FINISHED)
  stale = [e for e in earlier if e.last_known_state == _RUNNING]
  for e in stale:
    e.last_known_state = metadata_store_pb2.Execution.FAILED
    e.custom_properties["superseded_by"].int_value = execution_id
    e.custom_properties["state_reason"].string_value = (
        "a later attempt of the same run and task started")
  if stale:
    store.put_executions(stale)
  _log.info("Kubeflow run %s task %s: attempt %d is execution %d (resumable "
            "attempts: %s)", run_id, task_name, len(earlier) + 1, execution_id,
            list(unfinished) or "none")
  return TrainerAttempt(store=store, execution_id=execution_id, run_id=run_id,
                        task_name=task_name, attempt=len(earlier) + 1,
                        earlier_unfinished=unfinished)


class RunScopedCheckpointSink(MlmdCheckpointSink):
  """`MlmdCheckpointSink` that resumes only from the given earlier attempts
  (those of the same KFP run and task)."""

  def __init__(self, store: Store, execution_id: int,
               resume_key: str, *, resumable_from: Sequence[int]):
    super().__init__(store, execution_id, resume_key)
    self._resumable_from = frozenset(resumable_from)

  def resume_candidates(self) -> Sequence[CheckpointRecord]:
    candidates = super().resume_candidates()
    if not candidates:
      return []
    from ckptflow.components import checkpoint as ckpt_records
    producers = ckpt_records.producer_execution_ids(self._store, [r.id for r in candidates])
    return [r for r in candidates if producers.get(r.id) in self._resumable_from]


CHECKPOINTS_OUTPUT_KEY = "checkpoints"
MANIFEST_FILE_NAME = "manifest.json"


def finish(attempt: TrainerAttempt, sink: MlmdCheckpointSink,
           output_dict: Mapping[str, Sequence[object]], *, checkpoint_dir: str,
           final_step: int) -> None:
  """Declares the run's checkpoints as the task's `checkpoints` output (when
  the component has one) and marks the attempt COMPLETE.

  The output (`ckptflow.Checkpoints`, see `artifacts.py`) describes the
  final checkpoint in its custom properties and lists every LIVE checkpoint
  of the run in `manifest.json` under its URI; KFP records it with the task.
  """
  live = sorted(sink.live(), key=lambda r: (r.step, r.id))
  outputs = output_dict.get(CHECKPOINTS_OUTPUT_KEY) or []
  if outputs:
    [artifact] = outputs
    _describe_checkpoints(artifact, live, checkpoint_dir=checkpoint_dir,
                          execution_id=attempt.execution_id)
  attempt.complete(final_step=final_step, checkpoint_ids=[r.id for r in live])


def _describe_checkpoints(artifact, live: Sequence[CheckpointRecord], *,
                          checkpoint_dir: str, execution_id: int) -> None:
  import tensorflow as tf  # the Trainer's process has it loaded already

  manifest = {
      "trainer_execution_id": execution_id,
      "checkpoint_dir": checkpoint_dir,
      "checkpoints": [{"id": r.id, "step": r.step, "epoch": r.epoch, "uri": r.uri,
                       "checksum": r.checksum, "size_bytes": r.size_bytes,
                       "metrics": dict(r.metrics), "state": r.state} for r in live],
  }
  tf.io.gfile.makedirs(artifact.uri)
  # Written under a temporary name, then renamed: readers see all or nothing.
  path = os.path.join(artifact.uri, MANIFEST_FILE_NAME)
  with tf.io.gfile.GFile(path + ".tmp", "w") as f:
    f.write(json.dumps(manifest, indent=2, sort_keys=True))
  tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
  if live:
    final = live[-1]
    artifact.set_int_custom_property("final_checkpoint_id", final.id)
    artifact.set_int_custom_property("final_step", final.step)
    artifact.set_string_custom_property("final_metrics",
                                        json.dumps(dict(final.metrics), sort_keys=True))
    artifact.set_string_custom_property("final_checksum", final.checksum)
    artifact.set_string_custom_property("final_uri", final.uri)
  artifact.set_int_custom_property("count", len(live))
  artifact.set_int_custom_property("trainer_execution_id", execution_id)
  artifact.set_string_custom_property("checkpoint_ids", json.dumps([r.id for r in live]))
  artifact.set_string_custom_property("checkpoint_dir", checkpoint_dir)
