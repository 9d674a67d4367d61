"""Object storage (Ceph RGW on 127.0.0.1) against local disk, in one run.

1. Checkpoint save + commit + register: the product's own `Checkpointer`
   (the Trainer's: write the tf.train.Checkpoint, verify it reads, hash it,
   publish it: rename on disk, commit marker on the bucket; register it in
   an MLMD SQLite store) saving one state of an MLP (~1M parameters, with
   its Adam slots) alternately to a local directory and to an RGW bucket:
   L B B L L B ... so that both see the same machine load. Reports the
   median seconds per checkpoint and their ratio.
2. With `--pipeline`: `ckptflow run` on the penguins, pipeline root and
   serving directory local vs. on the bucket (interleaved, `--runs` each),
   wall time, and per component (MLMD execution create -> last update) so
   that what dominates shows.

Needs the RGW server: `.ci/rgw` (started here if not running).

  .venv/bin/python benchmarks/object_storage.py [--rounds 10] [--pipeline --runs 1]

Prints a table and writes benchmarks/results/object_storage.json (with the
command, the git commit and the load average at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "object_storage.json"
PENGUINS = pathlib.Path(os.environ.get("CKPTFLOW_PENGUINS",
                                       REPO.parent / "shared" / "data" / "penguins"))


def rgw_env() -> dict[str, str]:
  out = subprocess.run([str(REPO / ".ci" / "rgw")], capture_output=True, text=True,
                       check=True).stdout
  return dict(line.split("=", 1) for line in out.split() if "=" in line)


def make_bucket() -> str:
  from ckptflow.base import s3
  name = f"ckptflow-bench-{uuid.uuid4().hex[:8]}"
  s3.client().create_bucket(Bucket=name)
  return name


def checkpoint_bench(rounds: int, workdir: str, bucket: str) -> dict:
  import tensorflow as tf
  from ml_metadata.proto import metadata_store_pb2

  from ckptflow.base.metadata import open_store
  from ckptflow.components.trainer import policies
  from ckptflow.components.trainer.loop import Checkpointer
  from ckptflow.components.trainer.registration import MlmdCheckpointSink

  model = tf.keras.Sequential([tf.keras.layers.Dense(1000, activation="relu"),
                               tf.keras.layers.Dense(1000)])
  model.build((None, 10))
  optimizer = tf.keras.optimizers.Adam()
  optimizer.build(model.trainable_variables)
  params = sum(int(tf.size(v)) for v in model.trainable_variables)
  state = tf.train.Checkpoint(model=model, optimizer=optimizer)

  store = open_store(os.path.join(workdir, "m.sqlite"))
  type_id = store.put_execution_type(metadata_store_pb2.ExecutionType(name="bench.Trainer"))
  checkpointers = {}
  for target, root in (("local", os.path.join(workdir, "ckpt")),
                       ("rgw", f"s3://{bucket}/ckpt")):
    [execution_id] = store.put_executions([metadata_store_pb2.Execution(
        type_id=type_id, last_known_state=metadata_store_pb2.Execution.RUNNING)])
    sink = MlmdCheckpointSink(store, execution_id, f"bench-{target}")
    checkpointers[target] = Checkpointer(
        state, checkpoint_dir=root, fingerprint="bench", resume_key=f"bench-{target}",
        sink=sink, retention=policies.KeepLast(10 ** 6))
  # Warm-up: one save each (first-use setup of the S3 client and TF's saver).
  for checkpointer in checkpointers.values():
    checkpointer.save(1, 0, {})
  seconds: dict[str, list[float]] = {"local": [], "rgw": []}
  order = []
  for i in range(rounds):
    order += ["local", "rgw"] if i % 2 == 0 else ["rgw", "local"]
  for step, target in enumerate(order, start=2):
    start = time.perf_counter()
    checkpointers[target].save(step, 0, {})  # sync: written, published, registered
    seconds[target].append(time.perf_counter() - start)
  size = checkpointers["local"].registered[-1].size_bytes
  for checkpointer in checkpointers.values():
    checkpointer.close()
  local, remote = statistics.median(seconds["local"]), statistics.median(seconds["rgw"])
  return {"parameters": params, "checkpoint_bytes": size, "rounds": rounds,
          "order": order, "seconds": seconds, "median_local_s": local,
          "median_rgw_s": remote, "rgw_over_local": remote / local}


def component_seconds(home: pathlib.Path) -> dict[str, float]:
  from ckptflow.base.metadata import open_store
  store = open_store(str(home / "metadata.sqlite"), create=False)
  out = {}
  for execution in store.get_executions():
    [type_] = store.get_execution_types_by_id([execution.type_id])
    name = type_.name.rsplit(".", 1)[-1]
    seconds = (execution.last_update_time_since_epoch
               - execution.create_time_since_epoch) / 1000
    out[name] = out.get(name, 0.0) + seconds
  return out


def pipeline_bench(runs: int, workdir: str, bucket: str, env: dict) -> dict:
  results = []
  for i in range(runs):
    for target in (("local", "rgw") if i % 2 == 0 else ("rgw", "local")):
      home = pathlib.Path(workdir) / f"{target}-{i}"
      args = [sys.executable, "-m", "ckptflow.cli", "run", "--home", str(home),
              "--data", str(PENGUINS), "--train-steps", "300", "--checkpoint-every", "100"]
      if target == "rgw":
        args += ["--pipeline-root", f"s3://{bucket}/p{i}",
                 "--serving-dir", f"s3://{bucket}/serving{i}"]
      start = time.perf_counter()
      subprocess.run(args, check=True, capture_output=True, env=os.environ | env)
      wall = time.perf_counter() - start
      results.append({"target": target, "run": i, "wall_s": wall,
                      "components_s": component_seconds(home)})
  summary = {}
  for target in ("local", "rgw"):
    walls = [r["wall_s"] for r in results if r["target"] == target]
    summary[target] = statistics.median(walls)
  summary["rgw_over_local"] = summary["rgw"] / summary["local"]
  return {"runs": results, "median_wall_s": summary}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=10)
  parser.add_argument("--pipeline", action="store_true")
  parser.add_argument("--runs", type=int, default=1)
  args = parser.parse_args()
  env = rgw_env()
  os.environ.update(env)
  bucket = make_bucket()
  result = {"command": " ".join(["benchmarks/object_storage.py", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
  with tempfile.TemporaryDirectory() as workdir:
    result["checkpoint"] = ckpt = checkpoint_bench(args.rounds, workdir, bucket)
    print(f"checkpoint save+commit+register, {ckpt['parameters']:,} parameters, "
          f"{ckpt['checkpoint_bytes'] / 2**20:.1f} MiB, {args.rounds} each, interleaved")
    print(f"  {'target':<8}{'median s':>10}{'min s':>8}{'max s':>8}")
    for target in ("local", "rgw"):
      values = ckpt["seconds"][target]
      print(f"  {target:<8}{statistics.median(values):>10.3f}{min(values):>8.3f}"
            f"{max(values):>8.3f}")
    print(f"  rgw / local = {ckpt['rgw_over_local']:.2f}")
    if args.pipeline:
      result["pipeline"] = pipe = pipeline_bench(args.runs, workdir, bucket, env)
      print("pipeline wall time (ckptflow run, 300 steps), interleaved")
      for run in pipe["runs"]:
        top = sorted(run["components_s"].items(), key=lambda kv: -kv[1])[:4]
        print(f"  {run['target']:<6} run {run['run']}: {run['wall_s']:7.1f} s; "
              + ", ".join(f"{k} {v:.1f} s" for k, v in top))
      print(f"  rgw / local = {pipe['median_wall_s']['rgw_over_local']:.2f}")
  result["load_average_at_end"] = os.getloadavg()
  result["git_commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"],
                                        capture_output=True, text=True).stdout.strip()
  RESULTS.parent.mkdir(parents=True, exist_ok=True)
  RESULTS.write_text(json.dumps(result, indent=1) + "\n")
  print(f"wrote {RESULTS}")
  sys.stdout.flush()
  from ckptflow.base import storage
  storage.exit_process(0)


if __name__ == "__main__":
  main()
