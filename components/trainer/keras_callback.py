"""Checkpointing for Keras `model.fit`, with the same checkpoints and MLMD
records as the custom loop.

`fit_with_checkpoints` trains a compiled model with `model.fit` on an
iterator the checkpoint owns, so a resumed fit continues at the same place
in the data, with the same optimizer state and step. `CheckpointCallback`
asks the save policy after every batch and hands saves to a `Checkpointer`.

Exactness: the model, the compiled optimizer, the step counter, the data
position and any `extra_variables` come back exactly. Randomness inside
Keras layers (dropout) follows Keras' own seeding and is not part of the
checkpoint; use the custom loop with `spec.rng` when that matters.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Mapping

import tensorflow as tf

from ckptflow.components.checkpoint import CheckpointRecord
from ckptflow.components.trainer import policies
from ckptflow.components.trainer.loop import (Checkpointer, CheckpointSink, LoopResult,
                                              LoopSettings, TrainingInterrupted)
from ckptflow.base.faults import fault_point
from ckptflow.base.progress import TrainingReporter, current as current_progress


class CheckpointCallback(tf.keras.callbacks.Callback):
  """Saves through `checkpointer` when `save_policy` says so, and at the
  last step; on SIGTERM/SIGINT saves, stops training, and records the signal
  (`interrupted`)."""

  def __init__(self, checkpointer: Checkpointer, step: tf.Variable, *,
               train_steps: int, steps_per_epoch: int,
               save_policy: policies.SavePolicy,
               signal_policy: policies.OnSignal | None = None,
               progress: TrainingReporter | None = None):
    super().__init__()
    self._progress = progress or TrainingReporter()
    self._checkpointer = checkpointer
    self._step = step
    self._train_steps = train_steps
    self._steps_per_epoch = steps_per_epoch
    self._save_policy = save_policy
    self._signal_policy = signal_policy
    self._last_saved_step: int | None = None
    self._last_saved_time = time.monotonic()
    self.interrupted: TrainingInterrupted | None = None
    self.last_metrics: dict[str, float] = {}

  def on_train_begin(self, logs=None):
    self._last_saved_step = int(self._step.numpy()) or None
    if self._signal_policy:
      self._signal_policy.install()

  def on_train_batch_end(self, batch, logs=None):
    step = int(self._step.assign_add(1).numpy())
    fault_point("train-step")
    self.last_metrics = {k: float(v) for k, v in (logs or {}).items()}
    epoch = (step - 1) // self._steps_per_epoch
    progress = policies.Progress(
        step=step, epoch=epoch, epoch_ended=step % self._steps_per_epoch == 0,
        now=time.monotonic(), last_saved_step=self._last_saved_step,
        last_saved_time=self._last_saved_time)
    if step == self._train_steps or self._save_policy.should_save(progress):
      self._save(step, epoch)
    self._progress.step(step, self.last_metrics.get("loss"))
    if self._signal_policy and self._signal_policy.received is not None:
      if self._last_saved_step != step:
        self._save(step, epoch)
      self.interrupted = TrainingInterrupted(self._signal_policy.received, step)
      self.model.stop_training = True

  def on_train_end(self, logs=None):
    try:
      self._checkpointer.wait()
    finally:
      if self._signal_policy:
        self._signal_policy.uninstall()

  def _save(self, step: int, epoch: int) -> None:
    self._checkpointer.save(step, epoch, self.last_metrics)
    self._last_saved_step, self._last_saved_time = step, time.monotonic()
    self._progress.checkpoint_saved(step)


def fit_with_checkpoints(model: tf.keras.Model, *, batches: tf.data.Dataset,
                         settings: LoopSettings, save_policy: policies.SavePolicy,
                         retention: policies.RetentionPolicy, sink: CheckpointSink,
                         extra_variables: Mapping[str, tf.Variable] | None = None,
                         warm_start: Callable[[], CheckpointRecord] | None = None,
                         warm_start_mode: str = "weights", warm_start_step: bool = False,
                         signal_policy: policies.OnSignal | None = None,
                         callbacks: list | None = None,
                         progress: TrainingReporter | None = None) -> LoopResult:
  """Trains compiled `model` with `model.fit` to `settings.train_steps`,
  resuming from the sink's newest intact checkpoint if there is one, else
  loading the weights of the checkpoint `warm_start()` picks, if given.
  Tells `progress` (default: the process's `base.progress` display) how
  training goes.

  Raises:
    TrainingInterrupted: a signal stopped training (after saving).
  """
  if model.optimizer is None:
    raise ValueError("fit_with_checkpoints needs a compiled model (model.optimizer is None)")
  step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
  iterator = iter(batches)
  state = tf.train.Checkpoint(model=model, optimizers={"fit": model.optimizer},
                              variables=dict(extra_variables or {}), step=step,
                              data=iterator)
  checkpointer = Checkpointer(
      state, checkpoint_dir=settings.checkpoint_dir, fingerprint=settings.fingerprint,
      resume_key=settings.resume_key, sink=sink, retention=retention,
      async_checkpoint=settings.async_checkpoint)
  try:
    resumed = checkpointer.resume()
    if resumed is None and warm_start is not None:
      checkpointer.warm_start(warm_start(), model, mode=warm_start_mode,
                              restore_step=warm_start_step)
    start = int(step.numpy())
    remaining = settings.train_steps - start
    reporter = progress or current_progress()
    callback = CheckpointCallback(
        checkpointer, step, train_steps=settings.train_steps,
        steps_per_epoch=max(1, math.ceil(settings.examples_per_epoch / settings.batch_size)),
        save_policy=save_policy, signal_policy=signal_policy, progress=reporter)
    reporter.training_started(start, settings.train_steps)
    outcome = "failed"
    try:
      if remaining > 0:
        # The iterator, not the dataset: its position is in the checkpoint.
        model.fit(iterator, steps_per_epoch=remaining, epochs=1, verbose=0,
                  callbacks=[callback] + list(callbacks or []))
      outcome = "finished" if callback.interrupted is None else "interrupted"
    finally:
      reporter.training_finished(int(step.numpy()), outcome)
    if callback.interrupted is not None:
      raise callback.interrupted
  finally:
    checkpointer.close()
  registered = checkpointer.registered
  final = max(registered, key=lambda r: r.step) if registered else resumed
  return LoopResult(final_step=int(step.numpy()), resumed_from=resumed,
                    checkpoints=list(registered), final_checkpoint=final,
                    metrics=callback.last_metrics)
