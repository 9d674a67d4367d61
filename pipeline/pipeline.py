"""`create_pipeline(config)`: the one pipeline definition every runner uses.

CsvExampleGen -> StatisticsGen -> SchemaGen -> ExampleValidator ->
CheckpointingTrainer -> Evaluator (locally: against the version labelled
stable, as `promote`; on Kubeflow: the latest blessed model) ->
Pusher (atomic, versioned push to a TF Serving base path).
"""

from __future__ import annotations

import os

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx
from tfx.types import standard_artifacts

from ckptflow.components.evaluator.component import Evaluator
from ckptflow.components.pusher.component import Pusher
from ckptflow.components.trainer.component import CheckpointingTrainer
from ckptflow.base import metadata, storage
from ckptflow.pipeline.config import PipelineConfig

EXAMPLE_GEN_SPLITS = ("train", "eval")
# Where the pipeline runs. "local": TFX's LocalDagRunner/BeamDagRunner.
# "kubeflow": open-source KFP v2 (no Resolver nodes; the Evaluator finds its
# baseline through MLMD; the Trainer records its own execution per attempt
# and declares its checkpoints as a task output). "vertex": Vertex AI
# Pipelines, which runs Resolver nodes: as "kubeflow", with the Resolver.
TARGETS = ("local", "kubeflow", "vertex")


def eval_config(config: PipelineConfig) -> tfma.EvalConfig:
  """The blessing rule: `metric` above a floor, and no worse than the
  baseline (locally the version labelled stable; on Kubeflow the latest
  blessed model) by more than `allowed_regression`."""
  evaluation = config.evaluation
  threshold = tfma.MetricThreshold(
      value_threshold=tfma.GenericValueThreshold(
          lower_bound={"value": evaluation.lower_bound}),
      change_threshold=tfma.GenericChangeThreshold(
          direction=tfma.MetricDirection.HIGHER_IS_BETTER,
          absolute={"value": -max(evaluation.allowed_regression, 1e-10)}))
  return tfma.EvalConfig(
      model_specs=[tfma.ModelSpec(label_key=config.data.label,
                                  signature_name="serving_default")],
      slicing_specs=[tfma.SlicingSpec()],
      metrics_specs=[tfma.MetricsSpec(metrics=[
          tfma.MetricConfig(class_name="ExampleCount"),
          tfma.MetricConfig(class_name=evaluation.metric, threshold=threshold),
      ])])


def create_pipeline(config: PipelineConfig, *, feature_keys: tuple[str, ...] | None = None,
                    data_root: str | None = None,
                    with_resolver: bool | None = None,
                    target: str = "local",
                    pipeline_root: str | None = None,
                    beam_pipeline_args: list[str] | None = None) -> tfx.dsl.Pipeline:
  """Builds the TFX pipeline for `config`.

  Args:
    config: the validated configuration.
    feature_keys: the feature columns; by default read from the data's
      header (`config.data.resolved_features()`), which also checks them.
    data_root: overrides `config.data.path` (the Kubeflow compiler passes a
      runtime parameter here).
    with_resolver: include TFX's Resolver that finds the latest blessed
      model as baseline (default: only for the "vertex" target; locally the
      Evaluator takes the version labelled stable). Open-source KFP v2
      cannot run Resolver nodes.
    target: one of TARGETS; "local" builds exactly the local pipeline.
    pipeline_root: overrides `config.pipeline_root` (for a compiled spec
      it is only the default; KFP sets the root per run).
    beam_pipeline_args: overrides `config.run.beam_args` (the local runner
      adds the S3 options of a bucket root, `runner.beam_args`).
  """
  if target not in TARGETS:
    raise ValueError(f"create_pipeline: target {target!r} is unknown. "
                     f"Expected one of {', '.join(TARGETS)}")
  if with_resolver is None:
    # Local: the Evaluator's baseline is the version labelled stable
    # (components/evaluator), as for `promote`; Vertex keeps TFX's Resolver.
    with_resolver = target == "vertex"
  if with_resolver and target == "kubeflow":
    raise ValueError("create_pipeline: open-source KFP v2 cannot run Resolver "
                     "nodes; use target='vertex' or with_resolver=False")
  if feature_keys is None:
    feature_keys = config.data.resolved_features()
  training = config.training
  train_buckets, eval_buckets = config.data.eval_fraction_buckets

  example_gen = tfx.components.CsvExampleGen(
      input_base=data_root if data_root is not None else os.path.abspath(config.data.path),
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
  trainer_class = CheckpointingTrainer
  if target != "local":
    from ckptflow.components.kubeflow.components import KubeflowCheckpointingTrainer
    trainer_class = KubeflowCheckpointingTrainer
  trainer = trainer_class(
      examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
      module=training.module, style=training.style, feature_keys=feature_keys, label_key=config.data.label,
      train_steps=training.train_steps, batch_size=training.batch_size,
      checkpoint_every=training.checkpoint_every,
      checkpoint_every_seconds=training.checkpoint_every_seconds,
      checkpoint_at_epoch_end=training.checkpoint_at_epoch_end,
      keep_last=training.keep_last, keep_best=training.keep_best,
      best_metric=training.best_metric, best_mode=training.best_mode,
      keep_every=training.keep_every, warm_start=training.warm_start,
      warm_start_mode=training.warm_start_mode, warm_start_step=training.warm_start_step,
      async_checkpoint=training.async_checkpoint, eval_every=training.eval_every,
      seed=training.seed, hyperparameters=training.hyperparameters,
      distribution=training.distribution, replicas=training.replicas,
      workers=training.workers)

  components = [example_gen, statistics_gen, schema_gen, example_validator, trainer]
  baseline = None
  if with_resolver:
    resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    components.append(resolver)
    baseline = resolver.outputs["model"]
  if target == "local":
    evaluator = Evaluator(
        examples=example_gen.outputs["examples"], model=trainer.outputs["model"],
        baseline_model=baseline, eval_config=eval_config(config),
        model_name=config.serving.model_name)
  else:
    from ckptflow.components.kubeflow.components import KubeflowEvaluator
    evaluator = KubeflowEvaluator(
        examples=example_gen.outputs["examples"], model=trainer.outputs["model"],
        baseline_model=baseline, eval_config=eval_config(config),
        pipeline_name=config.run.pipeline_name)
  pusher = Pusher(
      model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
      push_destination=tfx.proto.PushDestination(
          filesystem=tfx.proto.PushDestination.Filesystem(
              base_directory=storage.join(config.serving_dir, config.serving.model_name))),
      custom_config={"label": "stable"})
  components += [evaluator, pusher]

  return tfx.dsl.Pipeline(
      pipeline_name=config.run.pipeline_name,
      pipeline_root=config.pipeline_root if pipeline_root is None else pipeline_root,
      components=components,
      enable_cache=config.run.enable_cache,
      metadata_connection_config=metadata.connection_config(config.metadata_target),
      beam_pipeline_args=list(config.run.beam_args if beam_pipeline_args is None
                              else beam_pipeline_args))
