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

A checkpoint already served (a version of the model pushed from one of
its exports, whose directory exists) is not copied again: the label moves
to that version, recorded as a SetLabel with reason "repromote" (like a
rollback), and nothing is evaluated; promoting it twice is idempotent. If
that version's directory is gone, the checkpoint is pushed as a new version.

`--reason TEXT` is recorded on the execution that pushes or relabels (with
the user and host).

Which EvalConfig and model name: `--config FILE` if given (its [evaluation]
and [serving] sections); else those the checkpoint's pipeline run recorded
in MLMD (its Evaluator's `eval_config`, its Pusher's push destination);
else the defaults of `PipelineConfig`, with the label the Trainer used.

Imports neither TensorFlow nor TFX at module level.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
from typing import Iterator, Sequence

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
from ckptflow.base import identity, mlmd, storage
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
  Flags (`model_name`, `serving_dir`) win over every source; the serving
  root is then the config file's, else the one the home's runs push to
  (`identity.serving_dir_of`), else HOME/serving.

  Raises:
    ConfigError: the config file is invalid.
    ServingError: the model name is not valid.
  """
  if config_path:
    config = PipelineConfig.from_toml(config_path)
    from google.protobuf import json_format

    from ckptflow.pipeline.pipeline import eval_config
    name = model_name or config.serving.model_name
    root = Home(home, serving_dir or config.serving.serving_dir
                or identity.serving_dir_of(home)).serving_root
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
  root = Home(home, serving_dir or identity.serving_dir_of(home)).serving_root
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
  export: ExportRecord | None  # None when an existing version was relabelled
  evaluation: Evaluation | None  # likewise
  settings: PromotionSettings
  label: str
  pushed: bool
  forced: bool
  served: promotion.ServedRecord | None
  pushed_model_artifact_id: int
  reason: str
  user_reason: str = ""
  relabelled_from: int | None = None  # re-promotion: the label's version before
  relabelled: bool = False  # re-promotion: the label moved to an existing version

  def as_json(self) -> dict:
    outcome = ("relabelled" if self.relabelled else
               "pushed" if self.pushed else "not_pushed")
    return {
        "outcome": outcome,
        "reason": self.reason, "user_reason": self.user_reason,
        "forced": self.forced, "label": self.label,
        "model_name": self.settings.model_name,
        "serving_root": self.settings.serving_root,
        "eval_config_source": self.settings.eval_config_source,
        "checkpoint": self.checkpoint.as_json(),
        "export": self.export.as_json() if self.export else None,
        "evaluation": self.evaluation.as_json() if self.evaluation else None,
        "served": self.served.as_json() if self.served else None,
        "previous_version": self.relabelled_from,
        "pushed_model_artifact_id": self.pushed_model_artifact_id}

  def lines(self) -> list[str]:
    c, e, v = self.checkpoint, self.export, self.evaluation
    if self.relabelled or e is None or v is None:
      assert self.served is not None
      before = ("it already had it" if self.relabelled_from == self.served.version
                else f"moved from version {self.relabelled_from}"
                if self.relabelled_from is not None else "new label")
      return [f"checkpoint {c.id} (step {c.step}) is already served as "
              f"{self.served.model_name} version {self.served.version}: label "
              f"{self.label} points at it ({before}); nothing copied: {self.served.path}"]
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
                       beam_args: Sequence[str] | None = None,
                       reason: str = "") -> PromotionResult:
  """Exports (or reuses the export of) checkpoint `spec`, evaluates it
  against the stable version, and pushes it if blessed or `force`d.

  `home` holds the pipeline root (exports and evaluations are written under
  HOME/pipeline_root) and, unless `serving_dir`, the config or the home's
  runs say otherwise, the serving root (HOME/serving). `reason` (the user's
  `--reason`) is recorded with the push or relabel.

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
  with shared_lock(home), _promoting(pipeline_root, record.id):
    existing = served_version_of(store, settings, record.id)
    if existing is not None:
      previous = promotion.move_label(store, settings.serving_root, settings.model_name,
                                      label, existing.version, reason="repromote",
                                      user_reason=reason)
      return PromotionResult(
          checkpoint=get_checkpoint(store, record.id), export=None, evaluation=None,
          settings=settings, label=label, pushed=True, forced=existing.forced,
          served=existing, pushed_model_artifact_id=existing.artifact_id,
          reason="already served", user_reason=reason, relabelled_from=previous,
          relabelled=True)
    return _export_evaluate_push(store, record, training, settings, pipeline_root,
                                 label=label, force=force, user_reason=reason)


@contextlib.contextmanager
def _promoting(pipeline_root: str, checkpoint_id: int) -> Iterator[None]:
  """One promotion of checkpoint `checkpoint_id` at a time (per home): a
  second one waits, then finds the version the first pushed and moves its
  label there instead of pushing a second copy. Not the export's own lock
  (`export_checkpoint` takes that one inside)."""
  directory = os.path.join(pipeline_root, checkpoint_export.EXPORT_DIR_NAME,
                           f"checkpoint-{checkpoint_id}")
  os.makedirs(directory, exist_ok=True)
  with storage.file_lock(os.path.join(directory, ".promote.lock")):
    yield


def served_version_of(store: Store, settings: PromotionSettings,
                      checkpoint_id: int) -> promotion.ServedRecord | None:
  """The newest version of the model that was pushed from an export of
  checkpoint `checkpoint_id` and is still served (LIVE record, directory
  present under the serving root), or None. Read-only."""
  records = [r for r in promotion.served_versions(store, settings.model_name)
             if not r.deleted and serving.version_exists(settings.serving_root,
                                                         r.model_name, r.version)]
  models = promotion.pushed_models(store, records)
  if not models:
    return None
  artifacts = {a.id: a for a in store.get_artifacts_by_id(sorted(set(models.values())))}
  ours = [r for r in records if r.artifact_id in models and
          mlmd.property_value(artifacts.get(models[r.artifact_id],
                                            metadata_store_pb2.Artifact()),
                              "checkpoint_id") == checkpoint_id]
  return max(ours, key=lambda r: r.version) if ours else None


def _export_evaluate_push(store, record: CheckpointRecord, training: Training,
                          settings: PromotionSettings, pipeline_root: str, *,
                          label: str, force: bool, user_reason: str) -> PromotionResult:
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
        blessing_artifact_id=evaluation.blessing_artifact_id, user_reason=user_reason)
    return PromotionResult(checkpoint=get_checkpoint(store, record.id), export=exported,
                           evaluation=evaluation,
                           settings=settings, label=label, pushed=False, forced=False,
                           served=None, pushed_model_artifact_id=pushed_id, reason=reason,
                           user_reason=user_reason)

  before = checkpoint_export.protect(store, record.id, "promoted")
  try:
    served = promotion.promote(
        store, saved_model_dir=exported.saved_model_dir, serving_root=settings.serving_root,
        model_name=settings.model_name, model_artifact_id=exported.model_artifact_id,
        label=label, forced=not evaluation.blessed,
        blessing_artifact_id=evaluation.blessing_artifact_id, user_reason=user_reason)
  except BaseException:
    if before != "promoted":
      checkpoint_export.restore_protection(store, record.id, before)
    raise
  return PromotionResult(
      checkpoint=get_checkpoint(store, record.id),
      export=exported, evaluation=evaluation, settings=settings, label=label,
      pushed=True, forced=not evaluation.blessed, served=served,
      pushed_model_artifact_id=served.artifact_id,
      reason="" if evaluation.blessed else f"forced: {evaluation.reason}",
      user_reason=user_reason)


__all__ = ["LABELS", "PromotionResult", "PromotionSettings", "promote_checkpoint",
           "promotion_settings"]
