"""One training job of the checkpointing Trainer, runnable in any process.

The executor (`executor.py`) reads TFX's artifacts and writes everything
training needs into a `TrainingJob`: plain values, JSON-serialisable. The
same `train()` then runs either in the executor's own process
(`distribution = "none"`) or in every worker process of a distributed run
(`worker.py`), so the loop, the resume, the checkpoints and the export are
one code path.

Imports TensorFlow but not TFX (a worker must not pay TFX's import).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import sys
from typing import Any, Callable, List, Mapping

import tensorflow as tf

from ckptflow.components.checkpoint import CheckpointRecord, list_checkpoints
from ckptflow.components.trainer import export, policies
from ckptflow.components.trainer.contract import TrainingSetup, TrainingSpec
from ckptflow.components.trainer.distribution import Cluster, check_variables
from ckptflow.components.trainer.keras_callback import fit_with_checkpoints
from ckptflow.components.trainer.loop import LoopResult, LoopSettings, TrainingLoop
from ckptflow.base.errors import CheckpointError, ConfigError
from ckptflow.base.progress import TrainingReporter

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainerSettings:
  """The Trainer's execution properties, parsed and typed."""

  module: str
  style: str
  feature_keys: tuple[str, ...]
  label_key: str
  train_steps: int
  batch_size: int
  checkpoint_every: int
  checkpoint_every_seconds: float
  checkpoint_at_epoch_end: bool
  keep_last: int
  keep_best: int
  best_metric: str
  best_mode: str
  keep_every: int
  warm_start: str
  async_checkpoint: bool
  eval_every: int
  seed: int
  hyperparameters: Mapping[str, Any]
  warm_start_mode: str = "weights"
  warm_start_step: bool = False
  distribution: str = "none"
  replicas: int = 1
  workers: int = 1

  @classmethod
  def from_exec_properties(cls, props: Mapping[str, Any]) -> "TrainerSettings":
    return cls(
        module=props["module"],
        style=props.get("style") or "loop",
        feature_keys=tuple(json.loads(props["feature_keys"])),
        label_key=props["label_key"],
        train_steps=int(props["train_steps"]),
        batch_size=int(props["batch_size"]),
        checkpoint_every=int(props["checkpoint_every"]),
        checkpoint_every_seconds=float(props.get("checkpoint_every_seconds") or 0),
        checkpoint_at_epoch_end=bool(int(props.get("checkpoint_at_epoch_end") or 0)),
        keep_last=int(props.get("keep_last") or 0),
        keep_best=int(props.get("keep_best") or 0),
        best_metric=props.get("best_metric") or "loss",
        best_mode=props.get("best_mode") or "min",
        keep_every=int(props.get("keep_every") or 0),
        warm_start=props.get("warm_start") or "none",
        async_checkpoint=bool(int(props.get("async_checkpoint") or 0)),
        eval_every=int(props.get("eval_every") or 0),
        seed=int(props.get("seed") or 0),
        hyperparameters=json.loads(props.get("hyperparameters") or "{}"),
        warm_start_mode=props.get("warm_start_mode") or "weights",
        warm_start_step=bool(int(props.get("warm_start_step") or 0)),
        distribution=props.get("distribution") or "none",
        replicas=int(props.get("replicas") or 1),
        workers=int(props.get("workers") or 1),
    )

  @property
  def num_replicas(self) -> int:
    """Replicas in sync: devices (mirrored) or worker processes (multi_worker)."""
    return {"mirrored": self.replicas, "multi_worker": self.workers}.get(
        self.distribution, 1)

  def save_policy(self) -> policies.SavePolicy:
    rules: list[policies.SavePolicy] = [policies.EveryNSteps(self.checkpoint_every)]
    if self.checkpoint_every_seconds:
      rules.append(policies.EveryNSeconds(self.checkpoint_every_seconds))
    if self.checkpoint_at_epoch_end:
      rules.append(policies.AtEpochEnd())
    return policies.AnySave(tuple(rules))

  def retention_policy(self) -> policies.RetentionPolicy:
    rules: list[policies.RetentionPolicy] = []
    if self.keep_last:
      rules.append(policies.KeepLast(self.keep_last))
    if self.keep_best:
      rules.append(policies.KeepBest(self.keep_best, self.best_metric, self.best_mode))
    if self.keep_every:
      rules.append(policies.KeepEveryNSteps(self.keep_every))
    return policies.KeepAny(tuple(rules))

  def result_affecting(self) -> dict:
    """The settings that change what training computes (not how it is
    checkpointed), for the run's fingerprint."""
    return {"style": self.style, "feature_keys": list(self.feature_keys),
            "label_key": self.label_key,
            "train_steps": self.train_steps, "batch_size": self.batch_size,
            "seed": self.seed, "hyperparameters": dict(self.hyperparameters)} | (
                # Exact resume needs the same replica count; one replica
                # adds nothing, so earlier runs keep their fingerprint.
                {"replicas": self.num_replicas} if self.num_replicas != 1 else {})


def load_module(module: str):
  """Imports the user's model module: an import path, or a .py file."""
  try:
    if module.endswith(".py"):
      if not os.path.isfile(module):
        raise ConfigError(f"config: training.module file {module!r} does not exist")
      name = "ckptflow_user_module_" + hashlib.sha256(module.encode()).hexdigest()[:8]
      spec = importlib.util.spec_from_file_location(name, module)
      loaded = importlib.util.module_from_spec(spec)
      sys.modules[name] = loaded
      spec.loader.exec_module(loaded)
      return loaded
    return importlib.import_module(module)
  except ImportError as e:
    raise ConfigError(f"config: training.module {module!r} cannot be imported: {e}") from e


def module_fingerprint(module, settings: TrainerSettings) -> str:
  """sha256 of the model code and the settings that affect the result."""
  sha = hashlib.sha256()
  sha.update(inspect.getsource(module).encode())
  sha.update(json.dumps(settings.result_affecting(), sort_keys=True).encode())
  return sha.hexdigest()


def make_dataset(files: List[str], feature_dtypes: Mapping[str, tf.DType],
                 label_key: str, batch_size: int, seed: int, *,
                 training: bool) -> tf.data.Dataset:
  """Batches of (features, labels) from gzipped tf.Example TFRecords.

  Deterministic: files in sorted order, seeded shuffle, no parallel
  interleaving, so a restored iterator continues exactly where it was.
  """
  spec = export.parse_spec(feature_dtypes) | {
      label_key: tf.io.FixedLenFeature([1], tf.int64)}

  def parse(serialized):
    parsed = tf.io.parse_example(serialized, spec)
    labels = parsed.pop(label_key)
    return export.as_model_inputs(parsed), labels

  dataset = tf.data.TFRecordDataset(sorted(files), compression_type="GZIP")
  if training:
    dataset = dataset.repeat().shuffle(1024, seed=seed, reshuffle_each_iteration=True)
  dataset = dataset.batch(batch_size, drop_remainder=training).map(parse)
  return dataset


def pick_warm_start(store, choice: str, settings: TrainerSettings,
                    exclude_key: str) -> CheckpointRecord:
  """The checkpoint `warm_start` names: latest, best, or an artifact id."""
  candidates = [r for r in list_checkpoints(store) if r.live and r.resume_key != exclude_key]
  if choice.isdigit():
    matches = [r for r in list_checkpoints(store) if r.id == int(choice)]
    if not matches:
      raise CheckpointError(f"warm_start: no Checkpoint artifact with id {choice}")
    if not matches[0].live:
      raise CheckpointError(f"warm_start: checkpoint {choice} is {matches[0].state}, "
                            "its files are gone")
    return matches[0]
  if not candidates:
    raise CheckpointError(f"warm_start={choice!r}: the store holds no live checkpoint "
                          "of an earlier run")
  if choice == "latest":
    return max(candidates, key=lambda r: r.id)
  ranked = [r for r in candidates if settings.best_metric in r.metrics]
  if not ranked:
    raise CheckpointError(f"warm_start='best': no checkpoint records metric "
                          f"{settings.best_metric!r}")
  sign = 1 if settings.best_mode == "min" else -1
  return min(ranked, key=lambda r: (sign * r.metrics[settings.best_metric], -r.id))




@dataclasses.dataclass(frozen=True)
class TrainingJob:
  """Everything a process needs to train: settings, data files, where
  checkpoints and the export go, and which MLMD execution and run they
  belong to. Written as JSON for worker processes (`to_json`)."""

  exec_properties: Mapping[str, Any]
  feature_dtypes: Mapping[str, str]  # feature -> "float32" | "int64"
  train_files: tuple[str, ...]
  eval_files: tuple[str, ...]
  examples_per_epoch: int
  checkpoint_dir: str
  fingerprint: str
  resume_key: str
  execution_id: int
  export_dir: str
  summary_dir: str

  @property
  def settings(self) -> TrainerSettings:
    return TrainerSettings.from_exec_properties(self.exec_properties)

  def dtypes(self) -> dict[str, tf.DType]:
    return {k: tf.as_dtype(v) for k, v in self.feature_dtypes.items()}

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "TrainingJob":
    raw = json.loads(text)
    raw["train_files"] = tuple(raw["train_files"])
    raw["eval_files"] = tuple(raw["eval_files"])
    return cls(**raw)


def train(job: TrainingJob, *, sink, cluster: Cluster | None = None,
          warm_start: Callable[[], CheckpointRecord] | None = None,
          signal_policy: policies.OnSignal | None = None
          ) -> tuple[tf.keras.Model, LoopResult]:
  """Trains `job` to its last step, resuming or warm-starting as the sink
  and `warm_start` say; returns the trained model and the loop's result.

  Under `cluster` every worker calls this: the model module runs in the
  strategy's scope, `sink` is the chief's (None on the others), and
  summaries are written by the chief only. `warm_start` is given on every
  worker or on none (on the others it returns None: the chief's pick is
  shared).
  """
  settings = job.settings
  module = load_module(settings.module)
  tf.keras.utils.set_random_seed(settings.seed)
  tf.config.experimental.enable_op_determinism()
  scope = cluster.scope if cluster else contextlib.nullcontext
  with scope():
    rng = tf.random.Generator.from_seed(settings.seed)
  spec = TrainingSpec(feature_keys=settings.feature_keys, label_key=settings.label_key,
                      hyperparameters=settings.hyperparameters, seed=settings.seed, rng=rng,
                      global_batch_size=settings.batch_size,
                      num_replicas=cluster.num_replicas if cluster else 1)
  dtypes = job.dtypes()
  batches = make_dataset(list(job.train_files), dtypes, settings.label_key,
                         settings.batch_size, settings.seed, training=True)
  loop_settings = LoopSettings(
      train_steps=settings.train_steps, checkpoint_dir=job.checkpoint_dir,
      fingerprint=job.fingerprint, resume_key=job.resume_key,
      examples_per_epoch=job.examples_per_epoch, batch_size=settings.batch_size,
      async_checkpoint=settings.async_checkpoint, eval_every=settings.eval_every)
  is_chief = cluster is None or cluster.is_chief
  if settings.style == "fit":
    if not hasattr(module, "build_keras_model"):
      raise ConfigError(f"training.style='fit' needs {settings.module}.build_keras_model(spec)")
    with scope():
      model = module.build_keras_model(spec)
    if not isinstance(model, tf.keras.Model) or model.optimizer is None:
      raise ConfigError(f"{settings.module}.build_keras_model must return a compiled "
                        "tf.keras.Model")
    result = fit_with_checkpoints(
        model, batches=batches, settings=loop_settings, save_policy=settings.save_policy(),
        retention=settings.retention_policy(), sink=sink, warm_start=warm_start,
        warm_start_mode=settings.warm_start_mode,
        warm_start_step=settings.warm_start_step,
        signal_policy=signal_policy, cluster=cluster,
        progress=None if is_chief else TrainingReporter())
    return model, result

  if not hasattr(module, "build_training"):
    raise ConfigError(f"training.style='loop' needs {settings.module}.build_training(spec)")
  with scope():
    setup = module.build_training(spec)
  if not isinstance(setup, TrainingSetup):
    raise ConfigError(f"{settings.module}.build_training must return a TrainingSetup. "
                      f"Received: {type(setup).__name__}")
  if cluster is not None:
    try:
      check_variables(setup.variables)
    except ValueError as e:
      raise ConfigError(f"{settings.module}: {e}") from e
  eval_batches = make_dataset(list(job.eval_files), dtypes, settings.label_key,
                              settings.batch_size, settings.seed, training=False)
  loop = TrainingLoop(
      setup, batches=batches, eval_batches=eval_batches, rng=rng,
      settings=loop_settings, save_policy=settings.save_policy(),
      retention=settings.retention_policy(), sink=sink, signal_policy=signal_policy,
      summary_dir=job.summary_dir if is_chief else None, cluster=cluster,
      # One progress display per job: the chief's.
      progress=None if is_chief else TrainingReporter())
  resumed = loop.resume()
  if warm_start is not None:
    if cluster is None:
      if resumed is None:
        loop.warm_start(warm_start(), mode=settings.warm_start_mode,
                        restore_step=settings.warm_start_step)
    else:
      # Whether to warm-start is the chief's call (only it knows whether
      # it resumed); every worker then loads the weights it picks.
      [resumed_anywhere] = cluster.agree([float(resumed is not None)])
      if not resumed_anywhere:
        loop.checkpointer.warm_start(warm_start(), setup.model,
                                     mode=settings.warm_start_mode,
                                     restore_step=settings.warm_start_step)
  return setup.model, loop.run(resumed)
