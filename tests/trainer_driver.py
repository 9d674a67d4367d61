"""Runs the checkpointing training loop in a process of its own, for tests
that kill it with real signals and run it again.

Each invocation is one "execution": it records an MLMD execution (RUNNING,
then COMPLETE), resumes from LIVE checkpoints of unfinished earlier
executions with the same run key, trains to --steps, and writes every
training variable to --out (.npz) so runs can be compared bit for bit.

  python trainer_driver.py --store S --dir D --steps N --every K --out F.npz
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from ml_metadata.proto import metadata_store_pb2  # noqa: E402

from ckptflow.components.trainer import policies  # noqa: E402
from ckptflow.components.trainer.contract import TrainingSetup, TrainingSpec  # noqa: E402
from ckptflow.components.trainer.keras_callback import fit_with_checkpoints  # noqa: E402
from ckptflow.components.trainer.loop import (LoopSettings, TrainingInterrupted,  # noqa: E402
                                              TrainingLoop)
from ckptflow.components.trainer.registration import MlmdCheckpointSink  # noqa: E402
from ckptflow.base import metadata  # noqa: E402
from ckptflow.base.progress import TrainingReporter  # noqa: E402
from ckptflow.pipeline import model  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reliability_support import start_execution  # noqa: E402
from support import finish_execution  # noqa: E402

FEATURES = ("culmen_length_mm", "culmen_depth_mm", "flipper_length_mm", "body_mass_g")


def load_penguins(path: str):
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  features = {k: np.array([[float(r[k])] for r in rows], np.float32) for k in FEATURES}
  labels = np.array([[int(r["species"])] for r in rows], np.int64)
  return features, labels


def main() -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("--store", required=True)
  parser.add_argument("--dir", required=True)
  parser.add_argument("--data", required=True)
  parser.add_argument("--steps", type=int, required=True)
  parser.add_argument("--every", type=int, required=True)
  parser.add_argument("--seed", type=int, default=1)
  parser.add_argument("--keep-last", type=int, default=0)
  parser.add_argument("--async-save", action="store_true")
  parser.add_argument("--fit", action="store_true", help="train with model.fit")
  parser.add_argument("--out", required=True)
  args = parser.parse_args()

  store = metadata.open_store(args.store)
  execution_id = start_execution(store)
  run_key = hashlib.sha256(json.dumps(
      [args.data, args.steps, args.seed]).encode()).hexdigest()
  sink = MlmdCheckpointSink(store, execution_id, run_key)

  tf.keras.utils.set_random_seed(args.seed)
  tf.config.experimental.enable_op_determinism()
  rng = tf.random.Generator.from_seed(args.seed)
  spec = TrainingSpec(feature_keys=FEATURES, label_key="species",
                      hyperparameters={"hidden_units": [16, 8], "input_noise": 0.05},
                      seed=args.seed, rng=rng)
  features, labels = load_penguins(args.data)
  batches = (tf.data.Dataset.from_tensor_slices((features, labels)).repeat()
             .shuffle(256, seed=args.seed).batch(16, drop_remainder=True))
  retention = policies.KeepAny(
      (policies.KeepLast(args.keep_last),) if args.keep_last else ())
  settings = LoopSettings(
      train_steps=args.steps, checkpoint_dir=os.path.join(args.dir, f"exec-{execution_id}"),
      fingerprint="driver", resume_key=run_key, examples_per_epoch=len(labels),
      batch_size=16, async_checkpoint=args.async_save)
  try:
    if args.fit:
      keras_model = model.build_keras_model(spec)
      print(json.dumps({"event": "started", "execution_id": execution_id}), flush=True)
      result = fit_with_checkpoints(
          keras_model, batches=batches, settings=settings,
          save_policy=policies.EveryNSteps(args.every), retention=retention, sink=sink,
          signal_policy=policies.OnSignal())
      setup = TrainingSetup(model=keras_model, optimizers={"fit": keras_model.optimizer},
                            train_step=lambda f, l: {})
    else:
      setup = model.build_training(spec)
      loop = TrainingLoop(
          setup, batches=batches, eval_batches=None, rng=rng, settings=settings,
          save_policy=policies.EveryNSteps(args.every), retention=retention, sink=sink,
          signal_policy=policies.OnSignal(), progress=TrainingReporter())
      resumed = loop.resume()
      print(json.dumps({"event": "started", "execution_id": execution_id,
                        "resumed_step": resumed.step if resumed else None,
                        "resumed_id": resumed.id if resumed else None}), flush=True)
      result = loop.run(resumed)
  except TrainingInterrupted as e:
    finish_execution(store, execution_id, metadata_store_pb2.Execution.FAILED)
    print(json.dumps({"event": "interrupted", "step": e.step}), flush=True)
    return 3
  finish_execution(store, execution_id, metadata_store_pb2.Execution.COMPLETE)
  variables = {f"model/{v.name}": v.numpy() for v in setup.model.variables}
  for name, optimizer in setup.optimizers.items():
    variables |= {f"optimizer_{name}/{i}/{v.name}": v.numpy()
                  for i, v in enumerate(optimizer.variables)}
  variables |= {f"var/{k}": v.numpy() for k, v in setup.variables.items()}
  variables["rng_state"] = rng.state.numpy()
  np.savez(args.out, **variables)
  print(json.dumps({"event": "finished", "final_step": result.final_step,
                    "resumed_step": result.resumed_from.step if result.resumed_from else None,
                    "registered": [c.step for c in result.checkpoints]}), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
