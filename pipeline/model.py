"""The example model module: a small classifier on numeric features.

It shows the Trainer contract (`components/trainer/contract.py`) with the
state a real custom loop has: two optimizers (Adam for the hidden layers,
SGD with momentum for the output layer), extra training variables (running
loss and accuracy), and input noise drawn from the Trainer's checkpointed
RNG. Hyperparameters (declared with their defaults in `HYPERPARAMETERS`):
`learning_rate`, `head_learning_rate`, `hidden_units` (list),
`num_classes` (inferred from the data when not set), `input_noise`.
"""

from __future__ import annotations

import tensorflow as tf

from ckptflow.components.trainer.contract import TrainingSetup, TrainingSpec

# Declarations a run checks before anything is written, reading this file
# without importing it (components/trainer/declarations.py). num_classes,
# when the config leaves it out, is inferred from the data's labels.
HYPERPARAMETERS = {
    "learning_rate": 0.01,
    "head_learning_rate": 0.05,
    "hidden_units": [16, 8],
    "num_classes": 3,
    "input_noise": 0.01,
}
METRICS = {
    "loop": ("loss", "accuracy", "running_loss", "running_accuracy"),
    "fit": ("loss", "sparse_categorical_accuracy"),
}
EVALUATION_METRICS = ("SparseCategoricalAccuracy", "SparseTopKCategoricalAccuracy")


def build_keras_model(spec: TrainingSpec) -> tf.keras.Model:
  """Dict of [batch, 1] float features -> class probabilities."""
  hp = spec.hyperparameters
  initializer_seed = spec.seed
  inputs = {key: tf.keras.layers.Input(shape=(1,), name=key, dtype=tf.float32)
            for key in spec.feature_keys}
  x = tf.keras.layers.Concatenate(name="features")(list(inputs.values()))
  for i, units in enumerate(hp.get("hidden_units", [16, 8])):
    x = tf.keras.layers.Dense(
        int(units), activation="relu", name=f"hidden_{i}",
        kernel_initializer=tf.keras.initializers.GlorotUniform(seed=initializer_seed + i))(x)
  outputs = tf.keras.layers.Dense(
      int(hp.get("num_classes", 3)), activation="softmax", name="head",
      kernel_initializer=tf.keras.initializers.GlorotUniform(seed=initializer_seed + 100))(x)
  model = tf.keras.Model(inputs=inputs, outputs=outputs)
  model.compile(
      optimizer=tf.keras.optimizers.Adam(float(hp.get("learning_rate", 0.01))),
      loss="sparse_categorical_crossentropy",
      metrics=["sparse_categorical_accuracy"])
  return model


def build_training(spec: TrainingSpec) -> TrainingSetup:
  hp = spec.hyperparameters
  model = build_keras_model(spec)
  head = model.get_layer("head")
  body_optimizer = tf.keras.optimizers.Adam(float(hp.get("learning_rate", 0.01)))
  head_optimizer = tf.keras.optimizers.SGD(
      float(hp.get("head_learning_rate", 0.05)), momentum=0.9)
  train_loss = tf.Variable(0.0, trainable=False, name="train_loss")
  train_accuracy = tf.Variable(0.0, trainable=False, name="train_accuracy")
  noise = float(hp.get("input_noise", 0.01))
  loss_fn = tf.keras.losses.SparseCategoricalCrossentropy()
  decay = 0.98  # running averages over roughly the last 50 steps

  def train_step(features, labels):
    if noise > 0:
      features = {k: v + spec.rng.normal(tf.shape(v), stddev=noise)
                  for k, v in features.items()}
    with tf.GradientTape() as tape:
      probabilities = model(features, training=True)
      loss = loss_fn(labels, probabilities)
    head_vars = head.trainable_variables
    head_ids = {id(v) for v in head_vars}
    body_vars = [v for v in model.trainable_variables if id(v) not in head_ids]
    gradients = tape.gradient(loss, body_vars + head_vars)
    body_optimizer.apply_gradients(zip(gradients[:len(body_vars)], body_vars))
    head_optimizer.apply_gradients(zip(gradients[len(body_vars):], head_vars))
    predicted = tf.argmax(probabilities, axis=-1)
    accuracy = tf.reduce_mean(
        tf.cast(tf.equal(predicted, tf.reshape(labels, [-1])), tf.float32))
    train_loss.assign(decay * train_loss + (1 - decay) * loss)
    train_accuracy.assign(decay * train_accuracy + (1 - decay) * accuracy)
    return {"loss": loss, "accuracy": accuracy,
            "running_loss": train_loss.read_value(),
            "running_accuracy": train_accuracy.read_value()}

  return TrainingSetup(
      model=model,
      optimizers={"body": body_optimizer, "head": head_optimizer},
      variables={"train_loss": train_loss, "train_accuracy": train_accuracy},
      train_step=train_step)
