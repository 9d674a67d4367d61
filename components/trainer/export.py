"""Writes a trained model as a SavedModel that TF Serving and TFMA load.

Signatures:
* `serving_default`: input `examples`, a batch of serialized `tf.Example`
  (what TF Serving's Predict/Classify clients and TFMA send);
* `serving_raw`: one float32 [batch, 1] input per feature.
Both return `outputs`, the class probabilities.

What is saved is a `tf.Module` holding the model's variables and
resources (lookup tables and the like) and those two functions, not the
Keras object graph: TF Serving, TFMA and `tf.saved_model.load` use the
signatures only, and saving the Keras graph traces every layer's call
again (and its compiled metrics and losses) for functions nothing serves.
On a 5.3M-parameter model that tracing was most of the export's time
(BENCHMARKS.md, "Promote").

The SavedModel is written into a temporary sibling directory and renamed
into place (`storage.publish_dir`), so a reader never sees a partial export.
On a bucket, where there is no rename, it is written in place and published
by its commit marker (`storage.commit`, written last).
"""

from __future__ import annotations

import os
from typing import Mapping

import tensorflow as tf

from ckptflow.base import storage
from ckptflow.base.faults import fault_point

SERVING_DIR_NAME = "Format-Serving"  # TFX's layout inside a Model artifact


def parse_spec(feature_dtypes: Mapping[str, tf.DType]) -> dict:
  """tf.Example parsing spec: one value per feature, in its stored dtype."""
  return {k: tf.io.FixedLenFeature([1], dtype) for k, dtype in feature_dtypes.items()}


def as_model_inputs(features: Mapping[str, tf.Tensor]) -> dict:
  """The model sees every feature as float32, whatever its stored dtype."""
  return {k: tf.cast(v, tf.float32) for k, v in features.items()}


def serving_root(model: tf.keras.Model) -> tf.Module:
  """The object a SavedModel export saves: `model`'s variables and the
  resources it owns (found through its checkpoint dependencies, which trace
  nothing), so that every capture of the serving signatures is tracked."""
  root = tf.Module()
  root.model_variables = list(model.variables)
  known = {id(v) for v in root.model_variables}
  root.model_resources = [
      d for d in tf.train.TrackableView(model).descendants()
      if isinstance(d, tf.saved_model.experimental.TrackableResource) and id(d) not in known]
  return root


def export_saved_model(model: tf.keras.Model, export_dir: str,
                       feature_dtypes: Mapping[str, tf.DType]) -> str:
  """Writes `model` to `export_dir` (which must not exist yet); returns it.

  `feature_dtypes` maps each feature to the dtype it has in tf.Examples
  (tf.float32 or tf.int64), as the Trainer read it from the Schema.
  """
  spec = parse_spec(feature_dtypes)
  feature_keys = list(feature_dtypes)

  # The model is traced once, for `serving_raw`; `serving_default` calls that
  # traced function after parsing. No autograph: a Keras model's call is
  # graph code already, and converting it again is most of a trace's cost.
  serve_raw = tf.function(
      lambda features: {"outputs": model(features, training=False)}, autograph=False
  ).get_concrete_function(
      {k: tf.TensorSpec([None, 1], tf.float32, name=k) for k in feature_keys})

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")],
               autograph=False)
  def serve_examples(serialized):
    return serve_raw(as_model_inputs(tf.io.parse_example(serialized, spec)))

  signatures = {"serving_default": serve_examples, "serving_raw": serve_raw}
  if storage.is_remote(export_dir):
    storage.prepare(export_dir)
    # An earlier attempt's unfinished write (the guard: its parent only).
    storage.remove_tree(export_dir, (export_dir.rstrip("/").rsplit("/", 1)[0],))
    tf.saved_model.save(serving_root(model), export_dir, signatures=signatures)
    fault_point("export-write")  # written, not yet committed
    storage.commit(export_dir)
    return export_dir
  staging = export_dir.rstrip("/") + ".tmp"
  # A killed export's leftover, beside the export (the guard: nowhere else).
  storage.remove_tree(staging, (os.path.dirname(os.path.abspath(staging)),))
  tf.saved_model.save(serving_root(model), staging, signatures=signatures)
  fault_point("export-write")  # written, not yet published
  storage.publish_dir(staging, export_dir)
  return export_dir
