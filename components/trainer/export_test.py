"""Tests for the SavedModel export TF Serving and TFMA load."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from ckptflow.components.trainer import export

FEATURES = {"length": tf.float32, "count": tf.int64}


def _model(table: tf.lookup.StaticHashTable | None = None) -> tf.keras.Model:
  tf.keras.utils.set_random_seed(7)
  inputs = {k: tf.keras.layers.Input(shape=(1,), name=k, dtype=tf.float32) for k in FEATURES}
  count = inputs["count"]
  if table is not None:
    count = _Lookup(table)(count)
  x = tf.keras.layers.Concatenate()([inputs["length"], count])
  x = tf.keras.layers.Dense(8, activation="relu")(x)
  outputs = tf.keras.layers.Dense(3, activation="softmax")(x)
  model = tf.keras.Model(inputs=inputs, outputs=outputs)
  model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                metrics=["sparse_categorical_accuracy"])
  return model


class _Lookup(tf.keras.layers.Layer):
  """Maps each count through a hash table: a resource the model owns."""

  def __init__(self, table, **kwargs):
    super().__init__(**kwargs)
    self.table = table

  def call(self, x):
    return self.table.lookup(tf.cast(x, tf.int64))


def _serialized(rows) -> tf.Tensor:
  examples = []
  for length, count in rows:
    examples.append(tf.train.Example(features=tf.train.Features(feature={
        "length": tf.train.Feature(float_list=tf.train.FloatList(value=[length])),
        "count": tf.train.Feature(int64_list=tf.train.Int64List(value=[count])),
    })).SerializeToString())
  return tf.constant(examples)


ROWS = [(1.5, 2), (-0.25, 7), (3.0, 0)]


def _expected(model) -> np.ndarray:
  features = {"length": tf.constant([[r[0]] for r in ROWS], tf.float32),
              "count": tf.constant([[float(r[1])] for r in ROWS], tf.float32)}
  return model(features, training=False).numpy(), features


def test_both_signatures_predict_what_the_model_does(tmp_path):
  model = _model()
  expected, features = _expected(model)
  path = export.export_saved_model(model, str(tmp_path / "Format-Serving"), FEATURES)

  loaded = tf.saved_model.load(path)
  assert set(loaded.signatures) == {"serving_default", "serving_raw"}
  from_examples = loaded.signatures["serving_default"](examples=_serialized(ROWS))["outputs"]
  from_features = loaded.signatures["serving_raw"](**features)["outputs"]
  np.testing.assert_allclose(from_examples.numpy(), expected, rtol=1e-6)
  np.testing.assert_allclose(from_features.numpy(), expected, rtol=1e-6)
  assert not os.path.exists(str(tmp_path / "Format-Serving.tmp"))


def test_the_export_holds_variables_and_signatures_not_the_keras_object_graph(tmp_path):
  model = _model()
  path = export.export_saved_model(model, str(tmp_path / "Format-Serving"), FEATURES)

  saved = saved_model_pb2.SavedModel()
  with open(os.path.join(path, "saved_model.pb"), "rb") as f:
    saved.ParseFromString(f.read())
  graph = saved.meta_graphs[0]
  identifiers = {n.user_object.identifier for n in graph.object_graph_def.nodes
                 if n.WhichOneof("kind") == "user_object"}
  assert not [i for i in identifiers if "keras" in i], identifiers
  assert not os.path.exists(os.path.join(path, "keras_metadata.pb"))
  # The variables are all there: the model's weights, restored on load.
  variables = [n for n in graph.object_graph_def.nodes if n.WhichOneof("kind") == "variable"]
  assert len(variables) == len(model.variables)
  # The model is traced once, for serving_raw, which serving_default calls;
  # no Keras layer's call function is traced and saved.
  functions = [f.signature.name for f in graph.graph_def.library.function]
  assert not [name for name in functions if "layer_call" in name], functions
  assert len([name for name in functions if "lambda" in name]) == 1, functions


def test_a_model_owning_a_lookup_table_exports_it_with_the_variables(tmp_path):
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(tf.constant([0, 2, 7], tf.int64),
                                          tf.constant([10.0, 20.0, 70.0])), default_value=-1.0)
  model = _model(table)
  expected, _ = _expected(model)
  path = export.export_saved_model(model, str(tmp_path / "Format-Serving"), FEATURES)

  loaded = tf.saved_model.load(path)
  outputs = loaded.signatures["serving_default"](examples=_serialized(ROWS))["outputs"]
  np.testing.assert_allclose(outputs.numpy(), expected, rtol=1e-6)


def test_an_export_over_a_killed_exports_leftover_replaces_it(tmp_path):
  leftover = tmp_path / "Format-Serving.tmp"
  leftover.mkdir()
  (leftover / "saved_model.pb").write_bytes(b"half written")
  path = export.export_saved_model(_model(), str(tmp_path / "Format-Serving"), FEATURES)
  assert set(tf.saved_model.load(path).signatures) == {"serving_default", "serving_raw"}
  assert not leftover.exists()


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__]))
