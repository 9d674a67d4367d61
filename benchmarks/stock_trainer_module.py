"""The stock TFX Trainer's module for the pipeline benchmark: the same model,
input pipeline, steps and batch size as ckptflow's Trainer, trained the
stock way (`run_fn`, one `model.fit`, no checkpoints), exported with the
same serving signatures so the stock Evaluator and Pusher see the same
SavedModel.

`custom_config`: feature_keys, label_key, batch_size, seed, hyperparameters.
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx.utils import io_utils

from ckptflow.components.trainer import export
from ckptflow.components.trainer.contract import TrainingSpec
from ckptflow.pipeline import model as ckptflow_model

_DTYPES = {schema_pb2.FLOAT: tf.float32, schema_pb2.INT: tf.int64}


def _dataset(files, feature_dtypes, label_key: str, batch_size: int, seed: int):
  """As ckptflow's Trainer reads the Examples: gzipped tf.Example records,
  repeated, shuffled with a seed, batched, parsed."""
  spec = export.parse_spec(feature_dtypes) | {label_key: tf.io.FixedLenFeature([1], tf.int64)}

  def parse(serialized):
    parsed = tf.io.parse_example(serialized, spec)
    labels = parsed.pop(label_key)
    return export.as_model_inputs(parsed), labels

  dataset = tf.data.TFRecordDataset(sorted(files), compression_type="GZIP")
  dataset = dataset.repeat().shuffle(1024, seed=seed, reshuffle_each_iteration=True)
  return dataset.batch(batch_size, drop_remainder=True).map(parse)


def run_fn(fn_args) -> None:
  config = fn_args.custom_config
  feature_keys = tuple(config["feature_keys"])
  label_key = config["label_key"]
  schema = io_utils.SchemaReader().read(fn_args.schema_path)
  types = {f.name: f.type for f in schema.feature}
  feature_dtypes = {k: _DTYPES[types[k]] for k in feature_keys}
  seed = int(config["seed"])

  tf.keras.utils.set_random_seed(seed)
  spec = TrainingSpec(feature_keys=feature_keys, label_key=label_key,
                      hyperparameters=config["hyperparameters"], seed=seed,
                      rng=tf.random.Generator.from_seed(seed))
  model = ckptflow_model.build_keras_model(spec)
  files = [f for pattern in fn_args.train_files for f in tf.io.gfile.glob(pattern)]
  batches = _dataset(files, feature_dtypes, label_key,
                     int(config["batch_size"]), seed)
  model.fit(batches, steps_per_epoch=fn_args.train_steps, epochs=1, verbose=0)
  export.export_saved_model(model, fn_args.serving_model_dir, feature_dtypes)
