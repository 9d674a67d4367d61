"""A tf.distribute strategy as the training loop sees it: `Cluster`.

`Cluster.start(kind, replicas)` creates the strategy. It must run before
any other TensorFlow op in the process: MultiWorkerMirroredStrategy
configures the collective ops at program startup ("Collective ops must be
configured at program startup"), and logical CPU devices for a mirrored run
must exist before TensorFlow initialises. That is why distributed training
runs in fresh worker processes (`worker.py`), never in the runner's own.

What the loop needs from the strategy, and how each is done:

* **Input.** Every worker builds the same plain iterator over *global*
  batches; each step, `split` hands replica i its slice i of the batch
  (`experimental_distribute_values_from_function`, by
  `replica_id_in_sync_group`). The iterator's state is then identical on
  every worker, so the chief's checkpointed copy restores every worker
  exactly. (A distributed iterator cannot be checkpointed in TF 2.16, and
  per-worker shard iterators restored from the chief's state silently feed
  the wrong data.)
* **Agreement.** `agree(values)` sums small host values over every replica
  with one all-reduce: a save requested by the chief's clock, a stop asked
  by a signal on any worker. Every worker gets the same answer at the same
  step, so all save together (a lone save deadlocks the collectives).
* **One choice, shared.** `share(key, value)`: the chief's value, handed to
  the others through the coordination service's key-value store (which
  checkpoint to restore).

Guarantees: `agree` and every train step are collectives; all
workers must call them in the same order, which the loop does by taking
every decision from agreed values only.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Mapping, Sequence

import tensorflow as tf

NONE, MIRRORED, MULTI_WORKER = "none", "mirrored", "multi_worker"
TF_CONFIG_ENV = "TF_CONFIG"


def task_of(tf_config_value: str) -> tuple[int, int]:
  """(worker index, number of workers) from a TF_CONFIG value."""
  config = json.loads(tf_config_value)
  cluster = config.get("cluster", {})
  task = config.get("task", {})
  workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
  index = int(task.get("index", 0))
  if task.get("type") == "worker" and cluster.get("chief"):
    index += 1  # a separate "chief" task is worker 0
  return index, workers


@dataclasses.dataclass
class Cluster:
  """One process's view of the strategy it trains under."""

  kind: str
  strategy: tf.distribute.Strategy
  worker_index: int
  num_workers: int

  @classmethod
  def start(cls, kind: str, replicas: int = 1) -> "Cluster":
    """Creates the strategy. Call before any other TensorFlow op."""
    if kind == MIRRORED:
      [cpu, *_] = tf.config.list_physical_devices("CPU")
      gpus = tf.config.list_physical_devices("GPU")
      if len(gpus) >= replicas:
        devices = [f"/gpu:{i}" for i in range(replicas)]
      else:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)])
        devices = [f"/cpu:{i}" for i in range(replicas)]
      return cls(kind, tf.distribute.MirroredStrategy(devices), 0, 1)
    if kind == MULTI_WORKER:
      if TF_CONFIG_ENV not in os.environ:
        raise RuntimeError("a multi_worker worker needs TF_CONFIG")
      index, workers = task_of(os.environ[TF_CONFIG_ENV])
      strategy = tf.distribute.MultiWorkerMirroredStrategy()
      return cls(kind, strategy, index, workers)
    raise ValueError(f"Cluster.start: kind must be {MIRRORED!r} or {MULTI_WORKER!r}. "
                     f"Received: {kind!r}")

  @property
  def is_chief(self) -> bool:
    """The one worker that writes checkpoints and metadata
    (`strategy.extended.should_checkpoint`)."""
    return bool(self.strategy.extended.should_checkpoint)

  @property
  def num_replicas(self) -> int:
    return int(self.strategy.num_replicas_in_sync)

  def scope(self):
    return self.strategy.scope()

  def split(self, *tensors: tf.Tensor):
    """Per-replica values: replica i gets slice i of each global batch."""
    def slice_for(context):
      i, n = context.replica_id_in_sync_group, context.num_replicas_in_sync
      return tuple(_slice(t, i, n) for t in tensors)
    return self.strategy.experimental_distribute_values_from_function(slice_for)

  def step_function(self, replica_fn: Callable) -> Callable:
    """`replica_fn` run on every replica, as one `tf.function`."""
    strategy = self.strategy

    @tf.function
    def distributed(*args):
      return strategy.run(replica_fn, args=args)

    return distributed

  def train_function(self, train_step: Callable) -> Callable[..., dict[str, float]]:
    """`train_step` (per replica, returns scalar metrics) as one
    `tf.function` over every replica that returns each metric averaged over
    the replicas. The metrics travel as one vector in the same graph as the
    step, so they cost one collective, not one eager reduce per metric."""
    strategy = self.strategy
    names: list[str] = []

    def stacked_step(*args):
      metrics = train_step(*args)
      names[:] = sorted(metrics)
      return tf.stack([tf.cast(tf.reshape(metrics[k], []), tf.float32) for k in names])

    @tf.function
    def distributed(*args):
      return strategy.reduce(tf.distribute.ReduceOp.MEAN,
                             strategy.run(stacked_step, args=args), axis=None)

    def run(*args) -> dict[str, float]:
      values = distributed(*args).numpy()
      return dict(zip(names, (float(v) for v in values)))

    return run

  def agree(self, values: Sequence[float]) -> list[float]:
    """The sum over every replica of `values` (a collective): each worker
    passes its own values, all get the same sums."""
    if not hasattr(self, "_agree_fn"):
      def reduce_on_replica(local):
        # tf.identity: an all-reduce of an argument as passed fails under
        # MultiWorkerMirroredStrategy ("destinations can not be empty").
        return tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.identity(local))
      self._agree_fn = self.step_function(reduce_on_replica)
    local = tf.constant([float(v) for v in values], tf.float32)
    # Each local replica contributes once; divide by the local replicas so
    # a worker with several devices counts once.
    per_replica = self.strategy.experimental_distribute_values_from_function(
        lambda context: tf.identity(local))
    summed = self.strategy.experimental_local_results(self._agree_fn(per_replica))[0]
    local_replicas = len(self.strategy.extended.worker_devices)
    return [float(v) / local_replicas for v in summed.numpy()]

  def share(self, key: str, value: str | None) -> str:
    """The chief's `value` for `key`, on every worker (the chief passes it,
    the others pass None and wait for it)."""
    if self.num_workers == 1:
      assert value is not None
      return value
    from tensorflow.python.eager import context
    if self.is_chief:
      context.context().set_config_key_value(key, value)
      return value
    return context.context().get_config_key_value(key)


def _slice(tensor, index: int, count: int):
  if isinstance(tensor, Mapping):
    return {k: _slice(v, index, count) for k, v in tensor.items()}
  size = tf.shape(tensor)[0] // count
  return tensor[index * size:(index + 1) * size]


def check_variables(variables: Mapping[str, tf.Variable]) -> None:
  """Raises ValueError for an extra training variable that would silently
  diverge across replicas: created with the default aggregation (NONE), a
  replica's assignment changes only its own copy and only the first copy
  is saved. Give it an aggregation (ONLY_FIRST_REPLICA for a value every
  replica computes alike, MEAN or SUM otherwise)."""
  for name, variable in variables.items():
    aggregation = getattr(variable, "aggregation", tf.VariableAggregation.NONE)
    if aggregation == tf.VariableAggregation.NONE:
      raise ValueError(
          f"TrainingSetup.variables[{name!r}] has aggregation NONE: under a "
          "distribution strategy its replicas' copies diverge and only the first is "
          "saved. Create it with aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA "
          "(or MEAN/SUM)")
