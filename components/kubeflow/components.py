"""The components the Kubeflow target uses where the local pipeline's differ.

* `KubeflowCheckpointingTrainer`: the checkpointing Trainer
  with its own executor (`KubeflowTrainerExecutor`, which records the
  execution KFP does not) and two more parameters, `kfp_run_id` = `{{$.pipeline_job_uuid}}` (KFP
  resolves it to the run id) and `kfp_task_name`, so the Trainer can record
  its own execution per attempt and resume a retried pod from the same run's
  checkpoints; and one more output, `checkpoints` (a `ckptflow.Checkpoints`
  artifact: a manifest of the run's checkpoints, see `artifacts.py`), so KFP records the checkpoints
  with the task. The local pipeline keeps the plain Trainer: under TFX's
  runners an output listing registered checkpoints would publish a second
  record of each (DESIGN.md).
* `KubeflowEvaluator`: TFX's Evaluator whose executor, given no baseline
  (there is no Resolver node on open-source KFP), finds the latest blessed
  model of the pipeline in the metadata store itself (`baseline.py`).
"""

from __future__ import annotations

from typing import Any, Dict, List

import tensorflow_model_analysis as tfma
from tfx import types
from tfx.components.evaluator import component as evaluator_component
from tfx.components.evaluator import executor as evaluator_executor
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from ckptflow.components.evaluator.component import evaluator_spec
from ckptflow.components.trainer import executor as trainer_executor
from ckptflow.components.trainer.component import CheckpointingTrainer, CheckpointingTrainerSpec
from ckptflow.components.kubeflow import baseline, trainer_attempt
from ckptflow.components.kubeflow.artifacts import Checkpoints
from ckptflow.base import metadata

BASELINE_PIPELINE_KEY = "baseline_pipeline"
# TFX's KFP entrypoint maps this int property to a KFP artifact name, which it
# knows only for the task's own inputs; a looked-up baseline is not one.
_TFX_BASELINE_MODEL_ID_KEY = "baseline_model_id"
BASELINE_MODEL_MLMD_ID_KEY = "baseline_model_mlmd_id"


class KubeflowTrainerExecutor(trainer_executor.Executor):
  """The Trainer executor in a KFP v2 task: no TFX runner records an
  execution there, so it records its own (`trainer_attempt`), registers
  checkpoints against it, and closes it with the outcome."""

  def Do(self, input_dict, output_dict, exec_properties) -> None:
    self._attempt = None  # set once the attempt's execution is recorded
    try:
      super().Do(input_dict, output_dict, exec_properties)
    except BaseException as e:
      # A killed process says nothing: the next attempt closes it
      # (trainer_attempt.start).
      if self._attempt is not None:
        self._attempt.fail(f"{type(e).__name__}: {e}")
      raise

  def _checkpoint_sink(self, store, resume_key, exec_properties, input_uris):
    run_id, task_name = trainer_attempt.run_identity(exec_properties)
    self._attempt = trainer_attempt.start(store, run_id=run_id, task_name=task_name,
                                          resume_key=resume_key, input_uris=input_uris)
    return self._attempt.checkpoint_sink(resume_key)

  def _on_trained(self, sink, output_dict, *, checkpoint_dir, final_step) -> None:
    trainer_attempt.finish(self._attempt, sink, output_dict,
                           checkpoint_dir=checkpoint_dir, final_step=final_step)


class KubeflowTrainerSpec(CheckpointingTrainerSpec):
  PARAMETERS = {
      **CheckpointingTrainerSpec.PARAMETERS,
      trainer_attempt.RUN_ID_PARAMETER: ExecutionParameter(type=str),
      trainer_attempt.TASK_NAME_PARAMETER: ExecutionParameter(type=str),
  }
  OUTPUTS = {
      **CheckpointingTrainerSpec.OUTPUTS,
      trainer_attempt.CHECKPOINTS_OUTPUT_KEY: ChannelParameter(type=Checkpoints),
  }


class KubeflowCheckpointingTrainer(CheckpointingTrainer):
  """The checkpointing Trainer as a KFP v2 task (see the module docstring).

  Its id is the task name; it is compiled into the `kfp_task_name` parameter.
  """

  SPEC_CLASS = KubeflowTrainerSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(KubeflowTrainerExecutor)

  def __init__(self, *, task_name: str = "CheckpointingTrainer", **kwargs: Any):
    self._task_name = task_name
    super().__init__(**kwargs)
    self.with_id(task_name)

  def _target_spec_args(self) -> dict[str, Any]:
    return {
        trainer_attempt.RUN_ID_PARAMETER: trainer_attempt.RUN_ID_PLACEHOLDER,
        trainer_attempt.TASK_NAME_PARAMETER: self._task_name,
        trainer_attempt.CHECKPOINTS_OUTPUT_KEY: types.Channel(type=Checkpoints),
    }


class KubeflowEvaluatorExecutor(evaluator_executor.Executor):
  """TFX's Evaluator executor; without a baseline input it uses the latest
  blessed model of the pipeline found in the CKPTFLOW_METADATA store.

  The blessing then records the baseline's URI (`baseline_model`, as TFX
  does) and its artifact id in that store as `baseline_model_mlmd_id`.
  """

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    exec_properties = dict(exec_properties)
    pipeline_name = exec_properties.pop(BASELINE_PIPELINE_KEY, "") or ""
    input_dict = dict(input_dict)
    found = None
    if not input_dict.get(standard_component_specs.BASELINE_MODEL_KEY) and pipeline_name:
      store = metadata.open_store(metadata.target_from_env())
      found = baseline.latest_blessed_model(store, pipeline_name)
      if found is not None:
        model = standard_artifacts.Model()
        model.uri = found.model_uri
        input_dict[standard_component_specs.BASELINE_MODEL_KEY] = [model]
    super().Do(input_dict, output_dict, exec_properties)
    if found is not None:
      blessing = artifact_utils.get_single_instance(
          output_dict[standard_component_specs.BLESSING_KEY])
      blessing.mlmd_artifact.custom_properties.pop(_TFX_BASELINE_MODEL_ID_KEY, None)
      if found.model_id is not None:
        blessing.set_int_custom_property(BASELINE_MODEL_MLMD_ID_KEY, found.model_id)


class KubeflowEvaluatorSpec(standard_component_specs.EvaluatorSpec):
  PARAMETERS = {
      **standard_component_specs.EvaluatorSpec.PARAMETERS,
      BASELINE_PIPELINE_KEY: ExecutionParameter(type=str),
  }


class KubeflowEvaluator(evaluator_component.Evaluator):
  """TFX's Evaluator for the Kubeflow target (see the module docstring).

  With `baseline_model` given (a Resolver, on Vertex) it behaves as TFX's;
  without, it looks the baseline up in pipeline `pipeline_name`.
  """

  SPEC_CLASS = KubeflowEvaluatorSpec
  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(KubeflowEvaluatorExecutor)

  def __init__(self, *, examples: types.BaseChannel, model: types.BaseChannel,
               eval_config: tfma.EvalConfig, pipeline_name: str,
               baseline_model: types.BaseChannel | None = None):
    spec = evaluator_spec(KubeflowEvaluatorSpec, examples=examples, model=model,
                          eval_config=eval_config, baseline_model=baseline_model,
                          **{BASELINE_PIPELINE_KEY: pipeline_name})
    # TFX's Evaluator.__init__ builds its own spec class; skip to its base.
    base_beam_component.BaseBeamComponent.__init__(self, spec=spec)
    self.with_id("Evaluator")
