"""Evaluates a candidate Model against the version labelled stable, with TFMA.

`evaluate_candidate` runs TFX's own Evaluator executor in this process (Beam
DirectRunner), so a promotion is blessed by exactly the rule the pipeline's
Evaluator applies: the pipeline's TFMA EvalConfig, on the eval split of the
Examples the checkpoint was trained on, with the served stable version as
the baseline. With no stable version there is no baseline and only value
thresholds apply (TFX's rubber stamp).

The evaluation is recorded in one MLMD transaction as a COMPLETE
`ckptflow.Evaluate` execution with INPUT events from the candidate Model
(`model`), the stable version's Model (`baseline_model`) and PushedModel
(`baseline_pushed_model`), and the Examples (`examples`); and OUTPUT events
to a new `ModelBlessing` (custom property `blessed` 1/0 and the others TFX's
Evaluator sets; a BLESSED or NOT_BLESSED file in its directory) and a new
`ModelEvaluation` (TFMA's output directory).

`stable_baseline` imports neither TensorFlow nor TFX; `evaluate_candidate`
imports them when it runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Mapping, Sequence

from ml_metadata.proto import metadata_store_pb2

from ckptflow.components import promotion
from ckptflow.base import mlmd
from ckptflow.base.errors import CkptflowError
from ckptflow.base.metadata import Store

EVALUATE_TYPE_NAME = "ckptflow.Evaluate"
BLESSING_TYPE_NAME = "ModelBlessing"
EVALUATION_TYPE_NAME = "ModelEvaluation"
DEFAULT_BEAM_ARGS = ("--direct_running_mode=in_memory", "--direct_num_workers=1")

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Baseline:
  """The version of a model now labelled stable: what a candidate must beat.

  `model_artifact_id` is the Model that version was pushed from (None if
  MLMD does not say); `path` the served version directory.
  """

  model_name: str
  version: int
  path: str
  pushed_model_artifact_id: int
  model_artifact_id: int | None

  def as_json(self) -> dict:
    return dataclasses.asdict(self)


def stable_baseline(store: Store, model_name: str) -> Baseline | None:
  """The version of `model_name` labelled stable in MLMD, if its files are
  still there (`promotion.stable_served`); None if there is none. Its Model
  is the pushing execution's INPUT under key `model`. Read-only."""
  record = promotion.stable_served(store, model_name)
  if record is None:
    return None
  model_id = promotion.pushed_models(store, [record]).get(record.artifact_id)
  return Baseline(model_name=model_name, version=record.version, path=record.path,
                  pushed_model_artifact_id=record.artifact_id, model_artifact_id=model_id)


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """The outcome of one evaluation, as recorded in MLMD.

  `reason` says in one line why the candidate was not blessed ("" if it
  was); `metrics` are the overall-slice values TFMA computed, keyed
  "<model>/<metric>" (and "<model>/<metric>/diff" against the baseline).
  """

  execution_id: int
  blessing_artifact_id: int
  evaluation_artifact_id: int
  blessed: bool
  reason: str
  baseline: Baseline | None
  metrics: Mapping[str, float]
  output_dir: str

  def as_json(self) -> dict:
    return dataclasses.asdict(self) | {
        "baseline": self.baseline.as_json() if self.baseline else None,
        "metrics": dict(self.metrics)}


def _tfx_artifact(store, artifact: metadata_store_pb2.Artifact):
  from tfx.types import artifact_utils
  [artifact_type] = store.get_artifact_types_by_id([artifact.type_id])
  return artifact_utils.deserialize_artifact(artifact_type, artifact)


def _read_artifact(store, artifact_id: int, role: str) -> metadata_store_pb2.Artifact:
  found = store.get_artifacts_by_id([artifact_id])
  if not found:
    raise CkptflowError(f"{role} artifact {artifact_id} is not in the metadata store")
  return found[0]


def _failures(output_dir: str) -> str:
  """One line naming the thresholds the candidate failed."""
  import tensorflow_model_analysis as tfma
  result = tfma.load_validation_result(output_dir)
  if result.validation_ok:
    return ""
  parts = []
  for per_slice in result.metric_validations_per_slice:
    for failure in per_slice.failures:
      key = failure.metric_key
      value = failure.metric_value.double_value.value
      expected = _threshold_text(failure.metric_threshold) or " ".join(failure.message.split())
      parts.append(f"{key.name}{' change vs stable' if key.is_diff else ''}="
                   f"{value:.4g}, expected {expected}")
  if result.missing_slices or result.missing_thresholds:
    parts.append("missing slices or thresholds")
  return "; ".join(parts) or "TFMA validation failed"


def _threshold_text(threshold) -> str:
  """'>= 0.6', 'change >= -0.01', ... for a tfma MetricThreshold."""
  bounds = []
  if threshold.HasField("value_threshold"):
    value = threshold.value_threshold
    if value.HasField("lower_bound"):
      bounds.append(f">= {value.lower_bound.value:g}")
    if value.HasField("upper_bound"):
      bounds.append(f"<= {value.upper_bound.value:g}")
  if threshold.HasField("change_threshold"):
    change = threshold.change_threshold
    from tensorflow_model_analysis.proto import config_pb2
    higher = change.direction == config_pb2.MetricDirection.HIGHER_IS_BETTER
    for kind in ("absolute", "relative"):
      if change.HasField(kind):
        bounds.append(f"{kind} change {'>=' if higher else '<='} "
                      f"{getattr(change, kind).value:g}")
  return " and ".join(bounds)


def _overall_metrics(output_dir: str) -> dict[str, float]:
  import tensorflow_model_analysis as tfma
  metrics: dict[str, float] = {}
  for metrics_for_slice in tfma.load_metrics(output_dir):
    if metrics_for_slice.slice_key.single_slice_keys:
      continue
    for item in metrics_for_slice.metric_keys_and_values:
      value = item.value
      if not value.HasField("double_value"):
        continue
      name = f"{item.key.model_name or 'candidate'}/{item.key.name}"
      metrics[name + ("/diff" if item.key.is_diff else "")] = value.double_value.value
  return dict(sorted(metrics.items()))


def evaluate_candidate(store: Store, *, model_artifact_id: int,
                       examples_artifact_id: int, baseline: Baseline | None,
                       eval_config_json: str, output_dir: str,
                       beam_args: Sequence[str] = DEFAULT_BEAM_ARGS,
                       extra_properties: Mapping[str, Any] | None = None) -> Evaluation:
  """Evaluates Model `model_artifact_id` on the eval split of Examples
  `examples_artifact_id` against `baseline` with the TFMA EvalConfig given as
  JSON, writes TFMA's output under `output_dir` (which must not exist), and
  records the evaluation and its blessing in MLMD (see the module docstring).

  An EvalConfig without thresholds blesses nothing (as TFX's Pusher reads
  a blessing without `blessed`).

  Raises:
    CkptflowError: an artifact is missing, or `output_dir` exists.
  """
  from tfx.components.evaluator import executor as evaluator_executor
  from tfx.dsl.components.base import base_beam_executor
  from tfx.types import standard_artifacts

  if os.path.lexists(output_dir):
    raise CkptflowError(f"evaluation directory {output_dir!r} already exists")
  model = _tfx_artifact(store, _read_artifact(store, model_artifact_id, "model"))
  examples = _tfx_artifact(store, _read_artifact(store, examples_artifact_id, "examples"))
  input_dict = {"model": [model], "examples": [examples]}
  if baseline is not None:
    # TFMA loads uri/Format-Serving: point it at the served version itself,
    # so the candidate is compared with exactly what serves.
    holder = os.path.join(output_dir, "baseline")
    os.makedirs(holder)
    os.symlink(baseline.path, os.path.join(holder, "Format-Serving"))
    baseline_model = standard_artifacts.Model()
    baseline_model.uri = holder
    baseline_model.id = baseline.model_artifact_id or baseline.pushed_model_artifact_id
    input_dict["baseline_model"] = [baseline_model]
  evaluation = standard_artifacts.ModelEvaluation()
  evaluation.uri = os.path.join(output_dir, "evaluation")
  blessing = standard_artifacts.ModelBlessing()
  blessing.uri = os.path.join(output_dir, "blessing")
  for artifact in (evaluation, blessing):
    os.makedirs(artifact.uri)
  context = base_beam_executor.BaseBeamExecutor.Context(
      beam_pipeline_args=list(beam_args), tmp_dir=os.path.join(output_dir, ".tmp"),
      unique_id="evaluate")
  evaluator_executor.Executor(context).Do(
      input_dict, {"evaluation": [evaluation], "blessing": [blessing]},
      {"eval_config": eval_config_json, "example_splits": "null"})

  blessed = blessing.has_custom_property("blessed") and \
      blessing.get_int_custom_property("blessed") == 1
  if not blessing.has_custom_property("blessed"):
    reason = "the EvalConfig sets no threshold, so nothing can be blessed"
    blessing.set_int_custom_property("blessed", 0)
  else:
    reason = "" if blessed else _failures(evaluation.uri)
  metrics = _overall_metrics(evaluation.uri)
  return _record(store, model_artifact_id=model_artifact_id,
                 examples_artifact_id=examples_artifact_id, baseline=baseline,
                 blessing=blessing, evaluation=evaluation, blessed=blessed,
                 reason=reason, metrics=metrics, output_dir=output_dir,
                 extra_properties=extra_properties or {})


def _record(store, *, model_artifact_id, examples_artifact_id, baseline, blessing,
            evaluation, blessed, reason, metrics, output_dir,
            extra_properties) -> Evaluation:
  blessing_artifact = metadata_store_pb2.Artifact(
      type_id=mlmd.ensure_artifact_type(store, BLESSING_TYPE_NAME), uri=blessing.uri,
      state=metadata_store_pb2.Artifact.LIVE)
  blessing_artifact.custom_properties.MergeFrom(blessing.mlmd_artifact.custom_properties)
  if baseline is not None:  # TFX recorded the symlink holder; name what serves
    blessing_artifact.custom_properties["baseline_model"].string_value = baseline.path
  if reason:
    blessing_artifact.custom_properties["reason"].string_value = reason
  evaluation_artifact = metadata_store_pb2.Artifact(
      type_id=mlmd.ensure_artifact_type(store, EVALUATION_TYPE_NAME), uri=evaluation.uri,
      state=metadata_store_pb2.Artifact.LIVE)
  evaluation_artifact.custom_properties["metrics"].string_value = json.dumps(metrics)
  execution = metadata_store_pb2.Execution(
      type_id=mlmd.ensure_execution_type(store, EVALUATE_TYPE_NAME),
      last_known_state=metadata_store_pb2.Execution.COMPLETE)
  props = execution.custom_properties
  props["blessed"].int_value = int(blessed)
  if reason:
    props["reason"].string_value = reason
  if baseline is not None:
    props["baseline_model_name"].string_value = baseline.model_name
    props["baseline_version"].int_value = baseline.version
  mlmd.set_properties(props, extra_properties)
  pairs = [(None, mlmd.input_event("model", model_artifact_id)),
           (None, mlmd.input_event("examples", examples_artifact_id))]
  if baseline is not None:
    if baseline.model_artifact_id is not None:
      pairs.append((None, mlmd.input_event("baseline_model", baseline.model_artifact_id)))
    pairs.append((None, mlmd.input_event("baseline_pushed_model",
                                         baseline.pushed_model_artifact_id)))
  pairs += [(blessing_artifact, mlmd.output_event("blessing")),
            (evaluation_artifact, mlmd.output_event("evaluation"))]
  # A re-promoted candidate can be the baseline itself: one INPUT event.
  execution_id, artifact_ids, _ = store.put_execution(
      execution, mlmd.without_repeated_inputs(pairs), contexts=[])
  return Evaluation(execution_id=execution_id, blessing_artifact_id=artifact_ids[-2],
                    evaluation_artifact_id=artifact_ids[-1], blessed=blessed,
                    reason=reason, baseline=baseline, metrics=metrics,
                    output_dir=output_dir)


__all__ = ["Baseline", "EVALUATE_TYPE_NAME", "Evaluation", "evaluate_candidate",
           "stable_baseline"]
