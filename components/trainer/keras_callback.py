"""Checkpointing for Keras `model.fit`, with the same checkpoints and MLMD
records as the custom loop.

`fit_with_checkpoints` trains a compiled model with `model.fit` on an
iterator the checkpoint owns, so a resumed fit continues at the same place
in the data, with the same optimizer state and step. `CheckpointCallback`
asks the save policy after every batch and hands saves to a `Checkpointer`.

Exactness: the model, the compiled optimizer, the step counter, the data
position and any `extra_variables` come back exactly.

Under a distribution strategy (`cluster`), Keras wraps an iterator and reads
ahead, so `fit(iterator)` would not resume exactly; instead the data
position is the step: `fit` gets the global batches from `step` on
(`dataset.skip(step)`), each replica its slice of each global batch, as the
custom loop splits them. Save and stop decisions are agreed by all workers
(the loop's `_decide`), so all save at one step. Randomness inside
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
from ckptflow.components.trainer.distribution import Cluster
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
               progress: TrainingReporter | None = None,
               cluster: Cluster | None = None):
    super().__init__()
    self._progress = progress or TrainingReporter()
    self._cluster = cluster
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
    save = step == self._train_steps or self._save_policy.should_save(progress)
    received = self._signal_policy.received if self._signal_policy else None
    if self._cluster is not None:
      # All workers act alike at this step: the chief's save decision,
      # and a signal on any worker.
      agreed_save, agreed_signal = self._cluster.agree(
          [float(save) if self._cluster.is_chief else 0.0, float(received or 0)])
      save = step == self._train_steps or agreed_save > 0
      received = (received or 15) if agreed_signal else None
    if save:
      self._save(step, epoch)
    self._progress.step(step, self.last_metrics.get("loss"))
    if received is not None:
      if self._last_saved_step != step:
        self._save(step, epoch)
      self.interrupted = TrainingInterrupted(received, step)
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
                         progress: TrainingReporter | None = None,
                         cluster: Cluster | None = None) -> LoopResult:
  """Trains compiled `model` with `model.fit` to `settings.train_steps`,
  resuming from the sink's newest intact checkpoint if there is one, else
  loading the weights of the checkpoint `warm_start()` picks, if given.
  Tells `progress` (default: the process's `base.progress` display) how
  training goes.

  Under `cluster`, `model` was built and compiled in its scope, `batches`
  are global batches, and `sink` is the chief's (None on other workers).

  Raises:
    TrainingInterrupted: a signal stopped training (after saving).
  """
  if model.optimizer is None:
    raise ValueError("fit_with_checkpoints needs a compiled model (model.optimizer is None)")
  step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
  parts = dict(model=model, optimizers={"fit": model.optimizer},
               variables=dict(extra_variables or {}), step=step)
  iterator = None
  if cluster is None:
    iterator = iter(batches)
    parts["data"] = iterator
  checkpointer = Checkpointer(
      tf.train.Checkpoint(**parts), checkpoint_dir=settings.checkpoint_dir,
      fingerprint=settings.fingerprint, resume_key=settings.resume_key, sink=sink,
      retention=retention, async_checkpoint=settings.async_checkpoint, cluster=cluster,
      properties={"replicas": cluster.num_replicas if cluster else 1})
  try:
    resumed = checkpointer.resume()
    if cluster is not None and warm_start is not None:
      # The chief knows whether it resumed; every worker must take part.
      [resumed_anywhere] = cluster.agree([float(resumed is not None)])
      if not resumed_anywhere:
        checkpointer.warm_start(warm_start(), model, mode=warm_start_mode,
                                restore_step=warm_start_step)
    elif resumed is None and warm_start is not None:
      checkpointer.warm_start(warm_start(), model, mode=warm_start_mode,
                              restore_step=warm_start_step)
    start = int(step.numpy())
    remaining = settings.train_steps - start
    reporter = progress or current_progress()
    callback = CheckpointCallback(
        checkpointer, step, train_steps=settings.train_steps,
        steps_per_epoch=max(1, math.ceil(settings.examples_per_epoch / settings.batch_size)),
        save_policy=save_policy, signal_policy=signal_policy, progress=reporter,
        cluster=cluster)
    reporter.training_started(start, settings.train_steps)
    outcome = "failed"
    try:
      if remaining > 0:
        # The iterator, not the dataset: its position is in the checkpoint.
        # Under a strategy, the data from this step on, split per replica.
        data = iterator if cluster is None else replica_slices(cluster, batches, start)
        model.fit(data, steps_per_epoch=remaining, epochs=1, verbose=0,
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


def replica_slices(cluster: Cluster, batches: tf.data.Dataset, start: int):
  """`batches` (global batches) from batch `start` on, as a distributed
  dataset in which replica i gets slice i of each global batch: the split
  the custom loop makes (`Cluster.split`), for `model.fit`."""
  replicas = cluster.num_replicas

  def for_pipeline(context: tf.distribute.InputContext) -> tf.data.Dataset:
    # One input pipeline per worker; it feeds its local replicas in order.
    local = replicas // context.num_input_pipelines
    first = context.input_pipeline_id * local

    def own_slices(features, labels):
      size = tf.shape(labels)[0] // replicas
      cut = lambda t: t[first * size:(first + local) * size]
      return tf.nest.map_structure(cut, features), cut(labels)

    per_replica = context.get_per_replica_batch_size(
        int(batches.element_spec[1].shape[0]))
    return batches.skip(start).map(own_slices).unbatch().batch(per_replica)

  return cluster.strategy.distribute_datasets_from_function(for_pipeline)
