"""The contract between the checkpointing Trainer and the user's model module.

The user's module defines one function::

    def build_training(spec: TrainingSpec) -> TrainingSetup

It builds the model, one or more named optimizers, any extra variables the
training keeps (running means, counters), and a `train_step`. The Trainer
owns everything else: the input pipeline, the loop, the step counter, the
RNG, checkpointing (every object in the setup is saved and restored
together), MLMD registration and the export.

A module may instead (or also) define `build_keras_model(spec)` returning a
compiled Keras model, to train with `model.fit`; see `keras_callback.py`.

`train_step(features, labels)` runs inside `tf.function`. `features` maps
each feature name to a float32 tensor of shape [batch, 1]; `labels` is an
int64 tensor of shape [batch, 1]. It returns a mapping of scalar metrics;
"loss" is required. Randomness must come from `spec.rng` (a
`tf.random.Generator` that the Trainer checkpoints), so a resumed run draws
the same numbers an uninterrupted one would.

Under a distribution strategy (`[training] distribution`), the Trainer
calls `build_training` inside the strategy's scope and runs `train_step`
on every replica, each with its slice of the global batch
(`spec.global_batch_size / spec.num_replicas` examples). Then:

* scale the loss for gradients by the global batch:
  `tf.nn.compute_average_loss(per_example_loss,
  global_batch_size=spec.global_batch_size)` (the optimizers sum the
  replicas' gradients);
* return metrics as this replica's means; the Trainer averages them over
  the replicas;
* give every extra variable an aggregation, or its replicas' copies
  silently diverge and only the first is saved (the Trainer refuses a
  variable with aggregation NONE): update it from values all replicas share
  (`tf.distribute.get_replica_context().all_reduce`) with
  `aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA`.

`pipeline/model.py` does all three, and runs unchanged without a strategy.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class TrainingSpec:
  """What the Trainer tells the module about the run."""

  feature_keys: tuple[str, ...]
  label_key: str
  hyperparameters: Mapping[str, Any]
  seed: int
  rng: tf.random.Generator
  global_batch_size: int = 0  # examples per step over all replicas (0: unknown)
  num_replicas: int = 1  # replicas in sync (tf.distribute), 1 without a strategy


@dataclasses.dataclass(frozen=True)
class TrainingSetup:
  """What the module gives the Trainer: the whole state of its training.

  `model` maps a dict of feature tensors to class probabilities and is what
  gets exported for serving. Every optimizer and every variable here is part
  of each checkpoint; names must be stable across runs (they are checkpoint
  keys).
  """

  model: tf.keras.Model
  optimizers: Mapping[str, Any]
  train_step: Callable[[Mapping[str, tf.Tensor], tf.Tensor], Mapping[str, tf.Tensor]]
  variables: Mapping[str, tf.Variable] = dataclasses.field(default_factory=dict)
  eval_step: Callable[[Mapping[str, tf.Tensor], tf.Tensor],
                      Mapping[str, tf.Tensor]] | None = None

  def __post_init__(self):
    if not isinstance(self.model, tf.keras.Model):
      raise TypeError(f"TrainingSetup.model must be a tf.keras.Model. "
                      f"Received: {type(self.model).__name__}")
    if not self.optimizers:
      raise TypeError("TrainingSetup.optimizers must name at least one optimizer")
    for name in list(self.optimizers) + list(self.variables):
      if not name.isidentifier():
        raise TypeError(f"TrainingSetup names must be identifiers (they are "
                        f"checkpoint keys). Received: {name!r}")
    clash = set(self.optimizers) & set(self.variables)
    if clash:
      raise TypeError(f"TrainingSetup names {sorted(clash)} are used for both "
                      "an optimizer and a variable")


def default_eval_step(model: tf.keras.Model):
  """Loss and accuracy of a model that outputs class probabilities."""

  def eval_step(features, labels):
    probabilities = model(features, training=False)
    labels = tf.reshape(labels, [-1])
    loss = tf.keras.losses.sparse_categorical_crossentropy(labels, probabilities)
    predicted = tf.argmax(probabilities, axis=-1, output_type=labels.dtype)
    accuracy = tf.cast(tf.equal(predicted, labels), tf.float32)
    return {"eval_loss": tf.reduce_mean(loss), "eval_accuracy": tf.reduce_mean(accuracy)}

  return eval_step
