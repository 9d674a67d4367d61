"""The worker entrypoint of a distributed training job.

    python -m ckptflow.components.trainer.worker JOB.json [--error-file F]

One process of a `mirrored` or `multi_worker` job. The Trainer executor
starts these on this machine (`workers.py`); on a cluster a TFJob or a
Vertex CustomJob runs the same command in every worker pod, with the
TF_CONFIG it sets. JOB.json is the `TrainingJob` the executor wrote.

The strategy is created first, before any other TensorFlow op (a
requirement of both strategies: `distribution.py`). Then every worker
trains in step (`job.train`). The chief alone opens the metadata store,
registers and prunes checkpoints, exports the model to the job's export
directory and writes the outcome (`JOB.json.outcome`) for the executor;
the other workers export into a temporary directory they delete (a
SavedModel write takes part in collectives too).

Exit status: 0 done; `EXIT_INTERRUPTED` a signal stopped the job after a
cluster-wide save; `EXIT_PEER_LOST` a collective failed because another
worker is gone (exits at once, rather than lingering in TensorFlow's
shutdown); `EXIT_ERROR` an error of its own, one line in the error file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import traceback

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from ckptflow.components.trainer.workers import (EXIT_ERROR, EXIT_INTERRUPTED,  # noqa: E402
                                                 EXIT_PEER_LOST)

_log = logging.getLogger("ckptflow.worker")


def outcome_path(job_path: str) -> str:
  return job_path + ".outcome"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m " + __spec__.name if __spec__ else None)
  parser.add_argument("job", help="the TrainingJob JSON file the Trainer executor wrote")
  parser.add_argument("--error-file", default=None,
                      help="where to write a one-line error if this worker fails")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                      format="%(asctime)s %(levelname).1s worker: %(message)s")
  if int(os.environ.get("TF_CPP_MIN_LOG_LEVEL") or 0) >= 1:
    # The CLI's quiet mode (set unless --verbose) reaches the workers here:
    # TensorFlow's and absl's Python INFO lines too.
    for noisy in ("absl", "tensorflow", "root"):
      logging.getLogger(noisy).setLevel(logging.WARNING)
  with open(args.job, encoding="utf-8") as f:
    raw = json.load(f)
  props = raw["exec_properties"]

  # Before anything else touches TensorFlow.
  from ckptflow.components.trainer.distribution import Cluster
  cluster = Cluster.start(props.get("distribution") or "none", int(props.get("replicas") or 1))

  import tensorflow as tf
  from ckptflow.base.errors import CkptflowError
  from ckptflow.components.trainer.loop import TrainingInterrupted
  peer_errors = (tf.errors.UnavailableError, tf.errors.CancelledError,
                 tf.errors.DeadlineExceededError, tf.errors.AbortedError)
  try:
    code = _train(args.job, cluster)
  except TrainingInterrupted as e:
    if cluster.is_chief:
      _write(outcome_path(args.job), {"interrupted": e.signum, "final_step": e.step})
    _log.info("worker %d: %s", cluster.worker_index, e)
    code = EXIT_INTERRUPTED
  except peer_errors as e:
    _log.error("worker %d: a collective failed, another worker is gone: %s",
               cluster.worker_index, str(e).splitlines()[0])
    code = EXIT_PEER_LOST
  except Exception as e:  # noqa: BLE001: every failure becomes one line for the executor
    if isinstance(e, CkptflowError):
      message = str(e)
    else:
      traceback.print_exc()
      message = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if args.error_file:
      with open(args.error_file, "w", encoding="utf-8") as f:
        f.write(message)
    code = EXIT_ERROR
  sys.stdout.flush()
  sys.stderr.flush()
  logging.shutdown()
  # Not sys.exit: after a lost peer TensorFlow's shutdown can linger for
  # tens of seconds; everything this worker owns is already written.
  os._exit(code)


def _train(job_path: str, cluster) -> int:
  from ckptflow.base import metadata, storage
  from ckptflow.components.trainer import export, policies
  from ckptflow.components.trainer.job import TrainingJob, pick_warm_start, train
  from ckptflow.components.trainer.registration import MlmdCheckpointSink

  with open(job_path, encoding="utf-8") as f:
    job = TrainingJob.from_json(f.read())
  settings = job.settings
  sink, warm_start = None, None
  if cluster.is_chief:
    store = metadata.open_store(metadata.target_from_env())
    sink = MlmdCheckpointSink(store, job.execution_id, job.resume_key)
    if settings.warm_start != "none":
      warm_start = lambda: pick_warm_start(store, settings.warm_start, settings,
                                           job.resume_key)
  elif settings.warm_start != "none":
    warm_start = lambda: None  # the chief's pick is shared with this worker
  model, result = train(job, sink=sink, cluster=cluster, warm_start=warm_start,
                        signal_policy=policies.OnSignal())
  if cluster.is_chief:
    export.export_saved_model(model, job.export_dir, job.dtypes())
    final = result.final_checkpoint
    _write(outcome_path(job_path), {
        "final_step": result.final_step,
        "final_checkpoint": None if final is None else {"id": final.id, "step": final.step},
        "resumed_from": None if result.resumed_from is None else result.resumed_from.id,
        "registered": len(result.checkpoints),
        "metrics": dict(result.metrics),
        "replicas": cluster.num_replicas,
    })
  else:
    scratch = tempfile.mkdtemp(prefix="ckptflow-worker-export-")
    try:
      export.export_saved_model(model, os.path.join(scratch, "model"), job.dtypes())
    finally:
      storage.remove_tree(scratch, (tempfile.gettempdir(),))
  _log.info("worker %d of %d: trained to step %d", cluster.worker_index,
            cluster.num_workers, result.final_step)
  return 0


def _write(path: str, value: dict) -> None:
  from ckptflow.base import storage
  storage.atomic_write(path, json.dumps(value, sort_keys=True))


if __name__ == "__main__":
  main()
