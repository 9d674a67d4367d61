"""The example model module: it passes the Trainer's distributed-training
check, and its running means are true means (no strategy needed)."""

from __future__ import annotations

import pytest
import tensorflow as tf

from ckptflow.components.trainer.contract import TrainingSpec
from ckptflow.components.trainer.distribution import check_variables
from ckptflow.pipeline import model

FEATURES = ("a", "b")


def test_the_example_module_passes_the_check():
  spec = TrainingSpec(feature_keys=FEATURES, label_key="y", hyperparameters={}, seed=1,
                      rng=tf.random.Generator.from_seed(1), global_batch_size=4)
  check_variables(model.build_training(spec).variables)


def test_running_means_are_true_means_from_the_first_step():
  spec = TrainingSpec(feature_keys=FEATURES, label_key="y",
                      hyperparameters={"input_noise": 0.0}, seed=1,
                      rng=tf.random.Generator.from_seed(1), global_batch_size=4)
  setup = model.build_training(spec)
  features = {k: tf.constant([[0.1], [0.2], [0.3], [0.4]]) for k in FEATURES}
  labels = tf.constant([[0], [1], [2], [1]], tf.int64)
  step = tf.function(setup.train_step)
  first = {k: float(v) for k, v in step(features, labels).items()}
  # Step 1: the mean of one value is that value (not 2% of it).
  assert first["running_loss"] == pytest.approx(first["loss"], rel=1e-5)
  assert first["running_accuracy"] == pytest.approx(first["accuracy"], rel=1e-5)
  second = {k: float(v) for k, v in step(features, labels).items()}
  # Step 2: a weighted mean of the two losses (weights 1 and 0.98, normalised).
  expected = (0.98 * first["loss"] + second["loss"]) / 1.98
  assert second["running_loss"] == pytest.approx(expected, rel=1e-5)
