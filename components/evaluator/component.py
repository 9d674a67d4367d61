"""The pipeline's Evaluator: TFX's Evaluator whose baseline is the version
labelled stable (`executor.py`), the one `ckptflow promote` compares with.

Same inputs, outputs and parameters as `tfx.components.Evaluator`, plus
`baseline_model_name`; given a `baseline_model` channel (a Resolver) it
behaves as TFX's. The component's id stays `Evaluator`.
"""

from __future__ import annotations

from typing import Any

import tensorflow_model_analysis as tfma
from tfx import types
from tfx.components.evaluator import component as evaluator_component
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import json_utils

from ckptflow.components.evaluator import executor
from ckptflow.components.evaluator.executor import BASELINE_MODEL_NAME_KEY


class EvaluatorSpec(standard_component_specs.EvaluatorSpec):
  PARAMETERS = {
      **standard_component_specs.EvaluatorSpec.PARAMETERS,
      BASELINE_MODEL_NAME_KEY: ExecutionParameter(type=str),
  }


def evaluator_spec(spec_class: type, *, examples: types.BaseChannel,
                   model: types.BaseChannel, eval_config: tfma.EvalConfig,
                   baseline_model: types.BaseChannel | None,
                   **parameters: Any) -> standard_component_specs.EvaluatorSpec:
  """The spec TFX's Evaluator builds for these inputs (no slicing spec,
  fairness thresholds, splits, schema or module), as `spec_class`, an
  EvaluatorSpec with `parameters` of its own: the Evaluators of the local
  and the Kubeflow pipelines differ only there."""
  return spec_class(
      examples=examples, model=model, baseline_model=baseline_model,
      feature_slicing_spec=None,
      fairness_indicator_thresholds=json_utils.dumps(None),
      example_splits=json_utils.dumps(None),
      evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
      eval_config=eval_config,
      blessing=types.Channel(type=standard_artifacts.ModelBlessing),
      schema=None, module_file=None, module_path=None,
      **parameters)


class Evaluator(evaluator_component.Evaluator):
  """TFX's Evaluator with the stable version as baseline (see the module
  docstring)."""

  SPEC_CLASS = EvaluatorSpec
  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

  def __init__(self, *, examples: types.BaseChannel, model: types.BaseChannel,
               eval_config: tfma.EvalConfig, model_name: str,
               baseline_model: types.BaseChannel | None = None):
    spec = evaluator_spec(EvaluatorSpec, examples=examples, model=model,
                          eval_config=eval_config, baseline_model=baseline_model,
                          **{BASELINE_MODEL_NAME_KEY: model_name})
    # TFX's Evaluator.__init__ builds its own spec class; skip to its base.
    base_beam_component.BaseBeamComponent.__init__(self, spec=spec)
    self.with_id("Evaluator")
