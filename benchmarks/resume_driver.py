"""One training process for the resume benchmark (see resume.py).

Like the Trainer's executor, it opens the MLMD store, records a RUNNING
execution, builds the model (the benchmark MLP of --size parameters),
creates a `TrainingLoop` with an `MlmdCheckpointSink`, calls `resume()`
(which restores the newest intact checkpoint of an unfinished earlier run
with the same run key, after checking its sha256) and trains.

--interrupt-at STEP sends this process SIGTERM after that step: the loop
saves, registers and stops (TrainingInterrupted), and the execution is
marked FAILED, as a preempted Trainer leaves it. --exit-after-first-step
exits right after the first step of this process (the benchmark measures
only the time to it). Prints one JSON line with wall-clock timestamps
(time.time()) of each phase.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

STARTED = time.time()
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tensorflow as tf  # noqa: E402
from ml_metadata.proto import metadata_store_pb2  # noqa: E402

import checkpoint_overhead  # noqa: E402
from ckptflow.components.trainer import policies  # noqa: E402
from ckptflow.components.trainer.loop import (LoopSettings, TrainingInterrupted,  # noqa: E402
                                              TrainingLoop)
from ckptflow.components.trainer.registration import MlmdCheckpointSink  # noqa: E402
from ckptflow.base import metadata  # noqa: E402
from ckptflow.base.progress import TrainingReporter  # noqa: E402

IMPORTED = time.time()


def main() -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("--store", required=True)
  parser.add_argument("--dir", required=True)
  parser.add_argument("--run-key", required=True)
  parser.add_argument("--size", default="5M", choices=sorted(checkpoint_overhead.SIZES))
  parser.add_argument("--steps", type=int, required=True)
  parser.add_argument("--every", type=int, required=True)
  parser.add_argument("--interrupt-at", type=int, default=0)
  parser.add_argument("--exit-after-first-step", action="store_true")
  parser.add_argument("--seed", type=int, default=7)
  args = parser.parse_args()
  times = {"process_start": STARTED, "imports_done": IMPORTED}

  store = metadata.open_store(args.store)
  type_id = store.put_execution_type(metadata_store_pb2.ExecutionType(name="bench.TrainerRun"))
  [execution_id] = store.put_executions([metadata_store_pb2.Execution(
      type_id=type_id, last_known_state=metadata_store_pb2.Execution.RUNNING)])
  sink = MlmdCheckpointSink(store, execution_id, args.run_key)

  tf.keras.utils.set_random_seed(args.seed)
  tf.config.experimental.enable_op_determinism()
  rng = tf.random.Generator.from_seed(args.seed)
  setup, keys, _ = checkpoint_overhead.build_setup(
      checkpoint_overhead.SIZES[args.size], args.seed, rng)
  batches, examples = checkpoint_overhead.synthetic_batches(keys, 32, args.seed)
  times["model_built"] = time.time()
  first_step: list[int] = []
  loop_steps = [0]

  class StepClock(TrainingReporter):
    def step(self, step: int, loss: float | None = None) -> None:
      on_step()

  def on_step() -> None:
    loop_steps[0] += 1
    if not first_step:
      times["first_step_done"] = time.time()
      first_step.append(1)
      if args.exit_after_first_step:
        print(json.dumps({"execution_id": execution_id, "resumed_step": resumed_step,
                          "times": times}), flush=True)
        os._exit(0)  # only the time to the first step is measured
    if args.interrupt_at and resumed_step + loop_steps[0] == args.interrupt_at:
      os.kill(os.getpid(), signal.SIGTERM)

  loop = TrainingLoop(
      setup, batches=batches, eval_batches=None, rng=rng,
      settings=LoopSettings(
          train_steps=args.steps, checkpoint_dir=os.path.join(args.dir, f"exec-{execution_id}"),
          fingerprint="benchmark", resume_key=args.run_key, examples_per_epoch=examples,
          batch_size=32),
      save_policy=policies.EveryNSteps(args.every), retention=policies.KeepLast(2),
      sink=sink, signal_policy=policies.OnSignal(), progress=StepClock())
  resumed = loop.resume()
  resumed_step = resumed.step if resumed else 0
  times["resume_done"] = time.time()
  state = metadata_store_pb2.Execution.COMPLETE
  try:
    loop.run(resumed)
  except TrainingInterrupted:
    state = metadata_store_pb2.Execution.FAILED
  [execution] = store.get_executions_by_id([execution_id])
  execution.last_known_state = state
  store.put_executions([execution])
  print(json.dumps({"execution_id": execution_id, "resumed_step": resumed_step,
                    "state": metadata_store_pb2.Execution.State.Name(state),
                    "times": times}), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
