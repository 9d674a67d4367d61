"""The checkpointing Trainer component.

Like TFX's Trainer it consumes Examples and a Schema and produces a `Model`
(a SavedModel under `Format-Serving/`) and a `ModelRun` (TensorBoard logs).
Unlike it, it trains with a loop that checkpoints periodically, registers
every checkpoint in MLMD as a `Checkpoint` artifact linked to its execution,
resumes an unfinished run exactly, and can warm-start from any checkpoint.
Checkpoints are registered by the executor while it runs, not returned as
an output channel: TFX would publish a second record of each (DESIGN.md).
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from ckptflow.components.trainer import executor


class CheckpointingTrainerSpec(types.ComponentSpec):
  PARAMETERS = {
      "module": ExecutionParameter(type=str),
      "style": ExecutionParameter(type=str, optional=True),
      "feature_keys": ExecutionParameter(type=str),  # JSON list
      "label_key": ExecutionParameter(type=str),
      "train_steps": ExecutionParameter(type=int),
      "batch_size": ExecutionParameter(type=int),
      "checkpoint_every": ExecutionParameter(type=int),
      "checkpoint_every_seconds": ExecutionParameter(type=float, optional=True),
      "checkpoint_at_epoch_end": ExecutionParameter(type=int, optional=True),
      "keep_last": ExecutionParameter(type=int, optional=True),
      "keep_best": ExecutionParameter(type=int, optional=True),
      "best_metric": ExecutionParameter(type=str, optional=True),
      "best_mode": ExecutionParameter(type=str, optional=True),
      "keep_every": ExecutionParameter(type=int, optional=True),
      "warm_start": ExecutionParameter(type=str, optional=True),
      "warm_start_mode": ExecutionParameter(type=str, optional=True),
      "warm_start_step": ExecutionParameter(type=int, optional=True),
      "async_checkpoint": ExecutionParameter(type=int, optional=True),
      "eval_every": ExecutionParameter(type=int, optional=True),
      "seed": ExecutionParameter(type=int, optional=True),
      "hyperparameters": ExecutionParameter(type=str, optional=True),  # JSON
  }
  INPUTS = {
      executor.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
      executor.SCHEMA_KEY: ChannelParameter(type=standard_artifacts.Schema),
  }
  OUTPUTS = {
      executor.MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
      executor.MODEL_RUN_KEY: ChannelParameter(type=standard_artifacts.ModelRun),
  }


class CheckpointingTrainer(base_component.BaseComponent):
  """Trains a model from a user module, checkpointing into MLMD."""

  SPEC_CLASS = CheckpointingTrainerSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

  def __init__(self, *, examples: types.BaseChannel, schema: types.BaseChannel,
               module: str, style: str = "loop", feature_keys: Sequence[str], label_key: str,
               train_steps: int, batch_size: int, checkpoint_every: int,
               checkpoint_every_seconds: float = 0.0, checkpoint_at_epoch_end: bool = False,
               keep_last: int = 0, keep_best: int = 0, best_metric: str = "loss",
               best_mode: str = "min", keep_every: int = 0, warm_start: str = "none",
               warm_start_mode: str = "weights", warm_start_step: bool = False,
               async_checkpoint: bool = False, eval_every: int = 0, seed: int = 0,
               hyperparameters: Mapping[str, Any] | None = None):
    if style not in ("loop", "fit"):
      raise ValueError(f"CheckpointingTrainer: style must be 'loop' or 'fit'. Received: {style!r}")
    if not feature_keys:
      raise ValueError("CheckpointingTrainer needs at least one feature key")
    if label_key in feature_keys:
      raise ValueError(f"CheckpointingTrainer: label {label_key!r} is also listed as a "
                       "feature; remove it from feature_keys")
    if train_steps < 1 or batch_size < 1 or checkpoint_every < 1:
      raise ValueError("CheckpointingTrainer: train_steps, batch_size and "
                       "checkpoint_every must be positive. Received: "
                       f"{train_steps}, {batch_size}, {checkpoint_every}")
    if warm_start_mode not in ("weights", "full"):
      raise ValueError("CheckpointingTrainer: warm_start_mode must be 'weights' or 'full'. "
                       f"Received: {warm_start_mode!r}")
    # Set only when not the default, so specs compiled before these
    # parameters existed (and their cache keys) stay the same.
    warm_args = {}
    if warm_start_mode != "weights":
      warm_args["warm_start_mode"] = warm_start_mode
    if warm_start_step:
      warm_args["warm_start_step"] = 1
    spec = self.SPEC_CLASS(
        examples=examples, schema=schema, module=module, style=style,
        feature_keys=json.dumps(list(feature_keys)), label_key=label_key,
        train_steps=train_steps, batch_size=batch_size,
        checkpoint_every=checkpoint_every,
        checkpoint_every_seconds=float(checkpoint_every_seconds),
        checkpoint_at_epoch_end=int(checkpoint_at_epoch_end),
        keep_last=keep_last, keep_best=keep_best, best_metric=best_metric,
        best_mode=best_mode, keep_every=keep_every, warm_start=warm_start,
        async_checkpoint=int(async_checkpoint), eval_every=eval_every, seed=seed,
        hyperparameters=json.dumps(dict(hyperparameters or {}), sort_keys=True),
        model=types.Channel(type=standard_artifacts.Model),
        model_run=types.Channel(type=standard_artifacts.ModelRun),
        **warm_args, **self._target_spec_args())
    super().__init__(spec=spec)

  def _target_spec_args(self) -> dict[str, Any]:
    """Spec arguments a subclass for another orchestrator adds (the
    Kubeflow target's run id parameters and checkpoints output); none here."""
    return {}
