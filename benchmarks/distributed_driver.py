"""One training process for benchmarks/distributed.py.

Trains the example model module (`pipeline/model.py`) with the product's
`TrainingLoop` on synthetic data: as the only process (`--mode none`), or as
one worker of a MultiWorkerMirroredStrategy job (`--mode multi_worker`,
TF_CONFIG set by the caller). The chief registers checkpoints in a real
MLMD SQLite store; the other worker writes and deletes its own copy, as in
the Trainer. Prints one JSON line: step time outside saves, and each save's
wall time (write, verify, hash, publish, register, prune).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

WARMUP = 10  # steps before measuring; checkpoints come later (--every > WARMUP)


def main() -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("--mode", choices=("none", "multi_worker"), required=True)
  parser.add_argument("--store", required=True)
  parser.add_argument("--dir", required=True)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--every", type=int, default=50)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--hidden", default="256,256")
  args = parser.parse_args()

  # The strategy first, before any other TensorFlow op.
  from ckptflow.components.trainer.distribution import Cluster
  cluster = Cluster.start("multi_worker") if args.mode == "multi_worker" else None

  import contextlib

  import numpy as np
  import tensorflow as tf
  from ml_metadata.proto import metadata_store_pb2

  from ckptflow.base import metadata
  from ckptflow.components.trainer import policies
  from ckptflow.components.trainer.contract import TrainingSpec
  from ckptflow.components.trainer.loop import LoopSettings, TrainingLoop
  from ckptflow.components.trainer.registration import MlmdCheckpointSink
  from ckptflow.pipeline import model

  is_chief = cluster is None or cluster.is_chief
  sink = None
  if is_chief:
    store = metadata.open_store(args.store)
    type_id = store.put_execution_type(metadata_store_pb2.ExecutionType(name="bench.Trainer"))
    [execution_id] = store.put_executions([metadata_store_pb2.Execution(
        type_id=type_id, last_known_state=metadata_store_pb2.Execution.RUNNING)])
    sink = MlmdCheckpointSink(store, execution_id, f"bench-{args.mode}-{time.time()}")
  features = ("a", "b", "c", "d")
  rows = np.random.default_rng(0).normal(size=(4096, len(features))).astype(np.float32)
  labels = (rows.sum(axis=1) > 0).astype(np.int64).reshape(-1, 1)
  batches = (tf.data.Dataset.from_tensor_slices(
      ({k: rows[:, [i]] for i, k in enumerate(features)}, labels))
      .repeat().shuffle(1024, seed=1).batch(args.batch, drop_remainder=True))
  tf.keras.utils.set_random_seed(1)
  tf.config.experimental.enable_op_determinism()
  scope = cluster.scope() if cluster else contextlib.nullcontext()
  with scope:
    rng = tf.random.Generator.from_seed(1)
    spec = TrainingSpec(feature_keys=features, label_key="y", seed=1, rng=rng,
                        hyperparameters={"hidden_units": [int(h) for h in args.hidden.split(",")],
                                         "num_classes": 2},
                        global_batch_size=args.batch,
                        num_replicas=cluster.num_replicas if cluster else 1)
    setup = model.build_training(spec)
  settings = LoopSettings(
      train_steps=args.steps, checkpoint_dir=os.path.join(args.dir, "ckpts"),
      fingerprint="bench", resume_key="bench", examples_per_epoch=len(labels),
      batch_size=args.batch, log_every=WARMUP)
  loop = TrainingLoop(setup, batches=batches, eval_batches=None, rng=rng, settings=settings,
                      save_policy=policies.EveryNSteps(args.every),
                      retention=policies.KeepLast(2), sink=sink,
                      progress=lambda line: marks.append(time.perf_counter()),
                      cluster=cluster)
  marks: list[float] = []  # after every WARMUP steps
  saves: list[float] = []
  save = loop.checkpointer.save

  def timed_save(*a, **k):
    started = time.perf_counter()
    save(*a, **k)
    saves.append(time.perf_counter() - started)

  loop.checkpointer.save = timed_save
  result = loop.run()
  # From the first mark on: the first WARMUP steps trace the step function.
  measured_steps = result.final_step - WARMUP
  step_s = (marks[-1] - marks[0] - sum(saves)) / measured_steps
  print(json.dumps({"mode": args.mode, "chief": is_chief, "steps": result.final_step,
                    "steps_per_s": 1.0 / step_s, "save_s": saves,
                    "parameters": int(sum(np.prod(v.shape) for v in setup.model.weights))}),
        flush=True)
  sys.stdout.flush()
  os._exit(0)


if __name__ == "__main__":
  main()
