"""The pipeline benchmark's reference: ckptflow's pipeline built from stock
TFX 1.16 components only, run with TFX's LocalDagRunner.

CsvExampleGen -> StatisticsGen -> SchemaGen -> ExampleValidator -> Trainer
(stock, `stock_trainer_module.py`: same model, steps and batch size) ->
Resolver (latest blessed model) -> Evaluator (same EvalConfig) -> Pusher
(stock, filesystem push). Same split, Beam arguments and metadata layout as
`ckptflow run`; caching off.

  .venv/bin/python benchmarks/stock_tfx_pipeline.py --home DIR --data DIR [--train-steps N]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# The Trainer imports its module by path (`run_fn`), from this directory:
# a `module_file` would be packaged as a wheel and pip-installed per run, and
# this project's venv (made by uv) has no pip.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
RUN_FN = "stock_trainer_module.run_fn"


def create_stock_pipeline(config, feature_keys):
  from tfx import v1 as tfx
  from tfx.types import standard_artifacts
  from ckptflow.base import metadata
  from ckptflow.pipeline.pipeline import eval_config

  train_buckets, eval_buckets = config.data.eval_fraction_buckets
  example_gen = tfx.components.CsvExampleGen(
      input_base=os.path.abspath(config.data.path),
      input_config=tfx.proto.Input(splits=[
          tfx.proto.Input.Split(name="single_split", pattern="*.csv")]),
      output_config=tfx.proto.Output(split_config=tfx.proto.SplitConfig(splits=[
          tfx.proto.SplitConfig.Split(name="train", hash_buckets=train_buckets),
          tfx.proto.SplitConfig.Split(name="eval", hash_buckets=eval_buckets),
      ])))
  statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
  schema_gen = tfx.components.SchemaGen(
      statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
  example_validator = tfx.components.ExampleValidator(
      statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
  training = config.training
  trainer = tfx.components.Trainer(
      run_fn=RUN_FN,
      examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
      train_args=tfx.proto.TrainArgs(num_steps=training.train_steps),
      eval_args=tfx.proto.EvalArgs(num_steps=0),
      custom_config={"feature_keys": list(feature_keys), "label_key": config.data.label,
                     "batch_size": training.batch_size, "seed": training.seed,
                     "hyperparameters": dict(training.hyperparameters)})
  resolver = tfx.dsl.Resolver(
      strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
      model=tfx.dsl.Channel(type=standard_artifacts.Model),
      model_blessing=tfx.dsl.Channel(type=standard_artifacts.ModelBlessing),
  ).with_id("latest_blessed_model_resolver")
  evaluator = tfx.components.Evaluator(
      examples=example_gen.outputs["examples"], model=trainer.outputs["model"],
      baseline_model=resolver.outputs["model"], eval_config=eval_config(config))
  pusher = tfx.components.Pusher(
      model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
      push_destination=tfx.proto.PushDestination(
          filesystem=tfx.proto.PushDestination.Filesystem(
              base_directory=os.path.join(config.serving_dir, config.serving.model_name))))
  return tfx.dsl.Pipeline(
      pipeline_name="stock_tfx", pipeline_root=config.pipeline_root,
      components=[example_gen, statistics_gen, schema_gen, example_validator, trainer,
                  resolver, evaluator, pusher],
      enable_cache=False,
      metadata_connection_config=metadata.connection_config(config.metadata_target),
      beam_pipeline_args=list(config.run.beam_args))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--home", required=True)
  parser.add_argument("--data", required=True)
  parser.add_argument("--train-steps", type=int, default=None)
  parser.add_argument("--batch-size", type=int, default=None)
  parser.add_argument("--model-name", default="penguin")
  args = parser.parse_args(argv)

  import logging
  logging.basicConfig(level=logging.WARNING)
  from ckptflow.pipeline.config import PipelineConfig
  training = {k: v for k, v in (("train_steps", args.train_steps),
                                ("batch_size", args.batch_size)) if v is not None}
  config = PipelineConfig().replace(
      data={"path": args.data}, training=training,
      serving={"model_name": args.model_name},
      run={"home": os.path.abspath(args.home), "enable_cache": False})
  feature_keys = config.data.resolved_features()
  for path in (config.home, config.pipeline_root, config.serving_dir):
    os.makedirs(path, exist_ok=True)
  from tfx.orchestration.local.local_dag_runner import LocalDagRunner
  LocalDagRunner().run(create_stock_pipeline(config, feature_keys))
  return 0


if __name__ == "__main__":
  sys.exit(main())
