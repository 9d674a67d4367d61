"""Promotes any checkpoint to TF Serving: export, evaluate, push, label.

`promote_checkpoint` is `ckptflow promote CHECKPOINT`:

1. checks everything the user typed before writing anything: the label, the
   model name, the checkpoint (it exists and is LIVE), that the serving root
   and the pipeline root can be written;
2. exports the checkpoint as a `Model`, or reuses its earlier export
   (`operations/export.py`);
3. evaluates it with the pipeline's TFMA EvalConfig on the eval split of the
   Examples its Trainer read, against the version now labelled stable, and
   records the `ModelBlessing` (`operations/evaluation.py`);
4. if blessed, or if forced: pushes it as the next version through the same
   push the pipeline's Pusher uses (`promotion.promote`: staged copy and
   rename, a `PushedModel` recording model name, version, path and label,
   models.config rewritten), recording `forced`=1 when it was not blessed.
   Otherwise records a `PushedModel` with `pushed`=0 and the reason: not
   promoted is an outcome, not an error.

Which EvalConfig and model name: `--config FILE` if given (its [evaluation]
and [serving] sections); else those the checkpoint's pipeline run recorded
in MLMD (its Evaluator's `eval_config`, its Pusher's push destination);
else the defaults of `PipelineConfig`, with the label the Trainer used.

Imports neither TensorFlow nor TFX at module level.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
from typing import Sequence

from ml_metadata.proto import metadata_store_pb2

from ckptflow.operations import export as checkpoint_export
from ckptflow.components import promotion
from ckptflow.operations.evaluation import (DEFAULT_BEAM_ARGS, Evaluation,
                                                      evaluate_candidate, stable_baseline)
from ckptflow.components.checkpoint import CheckpointRecord, get_checkpoint
from ckptflow.operations.export import ExportRecord, Training
from ckptflow.components.pusher import serving
from ckptflow.base.home import Home, shared_lock
from ckptflow.base.names import validate_model_name
from ckptflow.pipeline.config import PipelineConfig
from ckptflow.base.errors import CheckpointError
from ckptflow.base import mlmd, storage
from ckptflow.base.metadata import Store

PROMOTION_DIR_NAME = "CheckpointPromotion"  # evaluations, under the pipeline root
LABELS = ("stable", "canary")

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PromotionSettings:
  """Where to push, and the blessing rule. `eval_config_source` says where
  the EvalConfig came from (a config file, a recorded Evaluator execution,
  or the defaults)."""

  model_name: str
  serving_root: str
  eval_config_json: str
  eval_config_source: str
  beam_args: tuple[str, ...] = DEFAULT_BEAM_ARGS


def _run_executions(store, execution_id: int) -> list[metadata_store_pb2.Execution]:
  """Executions of the pipeline run that `execution_id` belongs to (newest
  first), then those of its pipeline (newest first)."""
  contexts = store.get_contexts_by_execution(execution_id)
  if not contexts:
    return []
  type_names = {t.id: t.name for t in store.get_context_types_by_id(
      sorted({c.type_id for c in contexts}))}
  ordered = [c for c in contexts if type_names.get(c.type_id) == "pipeline_run"] + \
            [c for c in contexts if type_names.get(c.type_id) == "pipeline"]
  seen: set[int] = set()
  found = []
  for context in ordered:
    executions = store.get_executions_by_context(context.id)
    for execution in sorted(executions, key=lambda e: e.id, reverse=True):
      if execution.id not in seen:
        seen.add(execution.id)
        found.append(execution)
  return found


def _recorded(store, training: Training, component: str, key: str
              ) -> tuple[metadata_store_pb2.Execution, str] | None:
  """(execution, value of exec property `key`) of the newest COMPLETE
  execution of TFX component `component` in the checkpoint's run or,
  failing that, in its pipeline."""
  executions = _run_executions(store, training.execution_id)
  if not executions:
    return None
  type_names = {t.id: t.name for t in store.get_execution_types_by_id(
      sorted({e.type_id for e in executions}))}
  for execution in executions:
    if execution.last_known_state != metadata_store_pb2.Execution.COMPLETE:
      continue
    if not type_names.get(execution.type_id, "").endswith("." + component):
      continue
    value = mlmd.properties(execution).get(key)
    if isinstance(value, str) and value and value != "null":
      return execution, value
  return None


def promotion_settings(store: Store, training: Training, *,
                       home: str, config_path: str | None = None,
                       model_name: str | None = None, serving_dir: str | None = None
                       ) -> PromotionSettings:
  """The model name, serving root and EvalConfig for promoting a checkpoint
  of `training` (see the module docstring for the order of sources).
  Flags (`model_name`, `serving_dir`) win over every source.

  Raises:
    ConfigError: the config file is invalid.
    ServingError: the model name is not valid.
  """
  if config_path:
    config = PipelineConfig.from_toml(config_path)
    from google.protobuf import json_format

    from ckptflow.pipeline.pipeline import eval_config
    name = model_name or config.serving.model_name
    root = Home(home, serving_dir or config.serving.serving_dir or None).serving_root
    return PromotionSettings(
        model_name=validate_model_name(name), serving_root=root,
        eval_config_json=json_format.MessageToJson(eval_config(config)),
        eval_config_source=f"config file {config_path}",
        beam_args=tuple(config.run.beam_args))

  name = model_name
  if name is None:
    pushed = _recorded(store, training, "Pusher", "push_destination")
    if pushed is not None:
      try:
        base = json.loads(pushed[1])["filesystem"]["base_directory"]
        name = os.path.basename(base.rstrip("/"))
      except (ValueError, KeyError, TypeError):
        name = None
  name = validate_model_name(name or PipelineConfig().serving.model_name)
  root = Home(home, serving_dir).serving_root
  recorded = _recorded(store, training, "Evaluator", "eval_config")
  if recorded is not None:
    execution, eval_config_json = recorded
    return PromotionSettings(model_name=name, serving_root=root,
                             eval_config_json=eval_config_json,
                             eval_config_source=f"Evaluator execution {execution.id}")
  from google.protobuf import json_format

  from ckptflow.pipeline.pipeline import eval_config
  label = str(training.exec_properties.get("label_key") or PipelineConfig().data.label)
  config = PipelineConfig().replace(data={"label": label})
  return PromotionSettings(model_name=name, serving_root=root,
                           eval_config_json=json_format.MessageToJson(eval_config(config)),
                           eval_config_source="defaults")


@dataclasses.dataclass(frozen=True)
class PromotionResult:
  """What `promote_checkpoint` did. `served` is None when not pushed;
  `pushed_model_artifact_id` is the PushedModel recording either outcome."""

  checkpoint: CheckpointRecord
  export: ExportRecord
  evaluation: Evaluation
  settings: PromotionSettings
  label: str
  pushed: bool
  forced: bool
  served: promotion.ServedRecord | None
  pushed_model_artifact_id: int
  reason: str

  def as_json(self) -> dict:
    return {
        "outcome": "pushed" if self.pushed else "not_pushed",
        "reason": self.reason, "forced": self.forced, "label": self.label,
        "model_name": self.settings.model_name,
        "serving_root": self.settings.serving_root,
        "eval_config_source": self.settings.eval_config_source,
        "checkpoint": self.checkpoint.as_json(), "export": self.export.as_json(),
        "evaluation": self.evaluation.as_json(),
        "served": self.served.as_json() if self.served else None,
        "pushed_model_artifact_id": self.pushed_model_artifact_id}

  def lines(self) -> list[str]:
    c, e, v = self.checkpoint, self.export, self.evaluation
    how = "reused export" if e.reused else "exported as"
    against = (f"{v.baseline.model_name} version {v.baseline.version} (stable)"
               if v.baseline else "no baseline (no stable version yet)")
    verdict = "blessed" if v.blessed else f"NOT blessed: {v.reason}"
    out = [f"checkpoint {c.id} (step {c.step}): {how} Model {e.model_artifact_id} "
           f"at {e.saved_model_dir}",
           f"evaluated against {against} with the EvalConfig of "
           f"{self.settings.eval_config_source}: {verdict}"]
    shown = {k: x for k, x in v.metrics.items() if not k.endswith("example_count")}
    if shown:
      out.append("  " + "  ".join(f"{k}={x:.4g}" for k, x in shown.items()))
    if self.pushed:
      assert self.served is not None
      forced = " (forced: not blessed)" if self.forced else ""
      out.append(f"pushed {self.served.model_name} version {self.served.version}, "
                 f"labelled {self.label}{forced}: {self.served.path}")
    else:
      out.append(f"not pushed: recorded as PushedModel {self.pushed_model_artifact_id} "
                 "with pushed=0; pass --force to push anyway")
    return out


def promote_checkpoint(store: Store, spec: str, *, home: str,
                       label: str = promotion.STABLE, force: bool = False,
                       config_path: str | None = None, model_name: str | None = None,
                       serving_dir: str | None = None,
                       beam_args: Sequence[str] | None = None) -> PromotionResult:
  """Exports (or reuses the export of) checkpoint `spec`, evaluates it
  against the stable version, and pushes it if blessed or `force`d.

  `home` holds the pipeline root (exports and evaluations are written under
  HOME/pipeline_root) and, unless `serving_dir` or the config says
  otherwise, the serving root (HOME/serving).

  Raises (before anything is written):
    CheckpointError: `spec` names no checkpoint, or a pruned one.
    ServingError: the label or model name is not valid.
    CkptflowError: the serving root or pipeline root cannot be written.
    ConfigError: the config file is invalid.
  """
  serving.validate_label(label)
  if model_name is not None:
    validate_model_name(model_name)
  where = Home(home)
  home = where.home
  record = checkpoint_export.resolve_checkpoint(store, spec)
  training = checkpoint_export.training_of(store, record)
  if training.examples is None:
    raise CheckpointError(f"execution {training.execution_id}, which wrote checkpoint "
                          f"{record.id}, records no Examples input, so there is nothing "
                          "to evaluate it on")
  settings = promotion_settings(store, training, home=home, config_path=config_path,
                                model_name=model_name, serving_dir=serving_dir)
  if beam_args is not None:
    settings = dataclasses.replace(settings, beam_args=tuple(beam_args))
  storage.check_creatable_dir(settings.serving_root, "serving directory")
  pipeline_root = storage.check_creatable_dir(where.pipeline_root, "pipeline root")
  # The shared home lock: `doctor --repair` (and the recovery `run` starts
  # with) must not take this promotion's unfinished files for debris.
  with shared_lock(home):
    return _export_evaluate_push(store, record, training, settings, pipeline_root,
                                 label=label, force=force)


def _export_evaluate_push(store, record: CheckpointRecord, training: Training,
                          settings: PromotionSettings, pipeline_root: str, *,
                          label: str, force: bool) -> PromotionResult:
  exported = checkpoint_export.export_checkpoint(
      store, record, export_root=os.path.join(pipeline_root, checkpoint_export.EXPORT_DIR_NAME))
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
  evaluation = evaluate_candidate(
      store, model_artifact_id=exported.model_artifact_id,
      examples_artifact_id=training.examples.id,
      baseline=stable_baseline(store, settings.model_name),
      eval_config_json=settings.eval_config_json,
      output_dir=os.path.join(pipeline_root, PROMOTION_DIR_NAME, f"checkpoint-{record.id}",
                              f"{stamp}-{os.getpid()}"),
      beam_args=settings.beam_args,
      extra_properties={"checkpoint_id": record.id, "model_name": settings.model_name,
                        "eval_config_source": settings.eval_config_source})

  if not (evaluation.blessed or force):
    reason = f"not blessed: {evaluation.reason}"
    pushed_id = promotion.record_not_pushed(
        store, model_artifact_id=exported.model_artifact_id,
        model_name=settings.model_name, reason=reason,
        blessing_artifact_id=evaluation.blessing_artifact_id)
    return PromotionResult(checkpoint=get_checkpoint(store, record.id), export=exported,
                           evaluation=evaluation,
                           settings=settings, label=label, pushed=False, forced=False,
                           served=None, pushed_model_artifact_id=pushed_id, reason=reason)

  before = checkpoint_export.protect(store, record.id, "promoted")
  try:
    served = promotion.promote(
        store, saved_model_dir=exported.saved_model_dir, serving_root=settings.serving_root,
        model_name=settings.model_name, model_artifact_id=exported.model_artifact_id,
        label=label, forced=not evaluation.blessed,
        blessing_artifact_id=evaluation.blessing_artifact_id)
  except BaseException:
    if before != "promoted":
      checkpoint_export.restore_protection(store, record.id, before)
    raise
  return PromotionResult(
      checkpoint=get_checkpoint(store, record.id),
      export=exported, evaluation=evaluation, settings=settings, label=label,
      pushed=True, forced=not evaluation.blessed, served=served,
      pushed_model_artifact_id=served.artifact_id,
      reason="" if evaluation.blessed else f"forced: {evaluation.reason}")


__all__ = ["LABELS", "PromotionResult", "PromotionSettings", "promote_checkpoint",
           "promotion_settings"]
