"""One of several processes that write to one metadata store at once.

It records an execution of its own, writes and registers N checkpoints as
that execution's outputs (each a directory under the home's checkpoint
root, registered through `CheckpointRegistry`, as the Trainer does), then
promotes a SavedModel once (`promotion.promote`, holding the home's shared
lock like a ckptflow command). It waits for --start-file to appear before
writing, so that every process writes at the same time.

  python concurrency_driver.py --metadata T --home H --worker W
      --checkpoints 50 --saved-model DIR --start-file F

Prints one JSON line: execution id, checkpoint ids, served version.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

from ckptflow.components import promotion
from ckptflow.components.checkpoint import CheckpointRegistry
from ckptflow.base import metadata
from ckptflow.base.home import shared_lock
from reliability_support import (put_model, register_checkpoint, start_execution,
                                 write_checkpoint_dir)


def main() -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("--metadata", required=True)
  parser.add_argument("--home", required=True)
  parser.add_argument("--worker", required=True)
  parser.add_argument("--checkpoints", type=int, default=50)
  parser.add_argument("--saved-model", required=True)
  parser.add_argument("--model-name", default="penguin")
  parser.add_argument("--start-file", required=True)
  args = parser.parse_args()

  home = pathlib.Path(args.home)
  store = metadata.open_store(args.metadata)
  execution_id = start_execution(store, "test.ConcurrentTrainer")
  registry = CheckpointRegistry(store, execution_id)
  print(json.dumps({"event": "ready", "worker": args.worker}), flush=True)
  deadline = time.monotonic() + 300
  while not os.path.exists(args.start_file):
    if time.monotonic() > deadline:
      raise TimeoutError("no start signal")
    time.sleep(0.01)

  ids = []
  for step in range(1, args.checkpoints + 1):
    directory = write_checkpoint_dir(home, execution_id, step,
                                     payload=f"{args.worker}:{step}".encode())
    ids.append(register_checkpoint(registry, directory, step).id)
  model_id = put_model(store, args.saved_model)
  with shared_lock(str(home)):
    record = promotion.promote(store, saved_model_dir=args.saved_model,
                               serving_root=str(home / "serving"),
                               model_name=args.model_name, model_artifact_id=model_id,
                               forced=True, required_signature="serving_default")
  print(json.dumps({"event": "done", "worker": args.worker,
                    "execution_id": execution_id, "checkpoint_ids": ids,
                    "version": record.version, "pushed_artifact_id": record.artifact_id}),
        flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
