"""Promote latency: ckptflow's export + push of a checkpoint vs. a plain
`tf.saved_model.save` + copy of the same model.

What is timed, in one process, on the same checkpoint:

* ckptflow (A): `checkpoint_export.export_checkpoint(reuse=False)` (rebuild
  the model from the module and hyperparameters the Trainer recorded, check
  the checkpoint's sha256, restore it, write a SavedModel with the
  `serving_default` and `serving_raw` signatures, fsync, rename, record the
  export in MLMD) then `promotion.promote` (flock, staged copy with fsync,
  rename, PushedModel and label in MLMD, models.config rewritten);
* plain (B): `tf.saved_model.save(model, tmp)` of the same model, already
  restored in memory, then `shutil.copytree` into a numbered directory.

Not timed: evaluation (TFMA; `promote` adds it, the plain way has none),
process start and imports (both pay them once). A and B alternate (A B B A
A B ...) after one untimed warm-up of each, so drift on a shared machine
hits both alike; the ratio reported is the median over adjacent pairs of
A/B, next to the medians themselves.

  .venv/bin/python benchmarks/promote.py                 # runs the pipeline once in a temp home
  .venv/bin/python benchmarks/promote.py --home HOME     # uses HOME's latest checkpoint (HOME unchanged)
  .venv/bin/python benchmarks/promote.py --hidden-units 2560,2048 --train-steps 100 \
      --out benchmarks/results/promote_5m.json          # a model of realistic size (5.3M parameters)

With --home, the metadata store is copied into a scratch home: exports,
pushes and records go there, HOME's checkpoint files are only read. Prints
a table, writes benchmarks/results/promote.json, and prints the ratio last.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCHMARKS_DIR)
PENGUINS = os.environ.get("CKPTFLOW_PENGUINS") or os.path.join(
    os.path.dirname(REPO), "shared", "data", "penguins")
RESULT = os.path.join(BENCHMARKS_DIR, "results", "promote.json")


def log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def make_home(scratch: str, args) -> str:
  """A home with one pipeline run, or a scratch copy of `args.home`'s store."""
  home = os.path.join(scratch, "home")
  if args.home:
    source = os.path.join(os.path.abspath(args.home), "metadata.sqlite")
    if not os.path.isfile(source):
      sys.exit(f"promote.py: no metadata store at {source!r}")
    os.makedirs(os.path.join(home, "pipeline_root"))
    shutil.copy2(source, os.path.join(home, "metadata.sqlite"))
    return home
  log(f"running the pipeline once on {PENGUINS} (about a minute)...")
  extra = []
  if args.hidden_units:
    units = [int(u) for u in args.hidden_units.split(",")]
    config = os.path.join(scratch, "model.toml")
    with open(config, "w") as f:
      f.write(f"[training]\nhyperparameters = {{ learning_rate = 0.001, "
              f"hidden_units = {units} }}\n"
              "[evaluation]\nlower_bound = 0.0\nallowed_regression = 1.0\n")
    extra = ["--config", config]
  subprocess.run([sys.executable, "-m", "ckptflow.cli", "run", "--home", home,
                  "--data", PENGUINS, "--train-steps", str(args.train_steps),
                  "--checkpoint-every", "100", "--model-name", "penguin", *extra],
                 check=True, stdout=subprocess.DEVNULL,
                 env=os.environ | {"TF_USE_LEGACY_KERAS": "1"})
  return home


def dir_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path)
             for f in files)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--home", help="a home after `ckptflow run` (left unchanged)")
  parser.add_argument("--checkpoint", default="latest",
                      help="checkpoint to promote: id, step:N, best, latest")
  parser.add_argument("--pairs", type=int, default=6, help="timed A/B pairs")
  parser.add_argument("--train-steps", type=int, default=300,
                      help="steps of the pipeline run made without --home")
  parser.add_argument("--hidden-units", default="",
                      help="hidden layer sizes of the model the pipeline run trains, "
                      "e.g. 2560,2048 (5.3M parameters; default: the module's 16,8)")
  parser.add_argument("--out", default=RESULT, help="JSON result file")
  args = parser.parse_args()

  import tensorflow as tf

  from ckptflow.operations import export as checkpoint_export
  from ckptflow.components import promotion
  from ckptflow.base import metadata

  scratch = tempfile.mkdtemp(prefix="ckptflow-promote-bench-")
  try:
    home = make_home(scratch, args)
    store = metadata.open_store(os.path.join(home, "metadata.sqlite"), create=False)
    record = checkpoint_export.resolve_checkpoint(store, args.checkpoint)
    export_root = os.path.join(home, "pipeline_root", checkpoint_export.EXPORT_DIR_NAME)
    serving_root = os.path.join(home, "serving")
    plain_root = os.path.join(scratch, "plain")
    os.makedirs(plain_root)
    model = checkpoint_export.rebuild_model(store, record).model
    log(f"checkpoint {record.id} (step {record.step}), {model.count_params()} parameters")

    def ckptflow_way() -> dict:
      start = time.perf_counter()
      exported = checkpoint_export.export_checkpoint(store, record, export_root=export_root,
                                                     reuse=False)
      exported_at = time.perf_counter()
      promotion.promote(store, saved_model_dir=exported.saved_model_dir,
                        serving_root=serving_root, model_name="bench",
                        model_artifact_id=exported.model_artifact_id, forced=True)
      end = time.perf_counter()
      return {"total": end - start, "export": exported_at - start, "push": end - exported_at,
              "bytes": dir_bytes(exported.saved_model_dir)}

    plain_count = [0]

    def plain_way() -> dict:
      plain_count[0] += 1
      saved = os.path.join(plain_root, f"saved-{plain_count[0]}")
      start = time.perf_counter()
      tf.saved_model.save(model, saved)
      saved_at = time.perf_counter()
      shutil.copytree(saved, os.path.join(plain_root, "served", str(plain_count[0])))
      end = time.perf_counter()
      return {"total": end - start, "save": saved_at - start, "copy": end - saved_at,
              "bytes": dir_bytes(saved)}

    log("warm-up (untimed)...")
    ckptflow_way()
    plain_way()
    a_runs, b_runs = [], []
    for pair in range(args.pairs):
      order = (ckptflow_way, plain_way) if pair % 2 == 0 else (plain_way, ckptflow_way)
      for way in order:
        (a_runs if way is ckptflow_way else b_runs).append(way())
      log(f"pair {pair + 1}/{args.pairs}: ckptflow {a_runs[-1]['total']:.3f}s, "
          f"plain {b_runs[-1]['total']:.3f}s")
  finally:
    shutil.rmtree(scratch, ignore_errors=True)

  median = statistics.median
  ratios = [a["total"] / b["total"] for a, b in zip(a_runs, b_runs)]
  rows = [
      ("ckptflow export + push", median(r["total"] for r in a_runs),
       min(r["total"] for r in a_runs), max(r["total"] for r in a_runs)),
      ("  export (rebuild, restore, save, record)", median(r["export"] for r in a_runs),
       min(r["export"] for r in a_runs), max(r["export"] for r in a_runs)),
      ("  push (staged copy, record, models.config)", median(r["push"] for r in a_runs),
       min(r["push"] for r in a_runs), max(r["push"] for r in a_runs)),
      ("plain tf.saved_model.save + copy", median(r["total"] for r in b_runs),
       min(r["total"] for r in b_runs), max(r["total"] for r in b_runs)),
      ("  tf.saved_model.save", median(r["save"] for r in b_runs),
       min(r["save"] for r in b_runs), max(r["save"] for r in b_runs)),
      ("  copytree", median(r["copy"] for r in b_runs),
       min(r["copy"] for r in b_runs), max(r["copy"] for r in b_runs)),
  ]
  width = max(len(r[0]) for r in rows)
  print(f"{'seconds':<{width}}  {'median':>8}  {'min':>8}  {'max':>8}")
  for name, mid, low, high in rows:
    print(f"{name:<{width}}  {mid:8.3f}  {low:8.3f}  {high:8.3f}")
  ratio = median(ratios)

  try:
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, timeout=10).stdout.strip()
  except OSError:
    commit = "unknown"
  document = {
      "benchmark": "promote",
      "command": " ".join([".venv/bin/python", "benchmarks/promote.py"]
                          + [shlex.quote(a) for a in sys.argv[1:]]),
      "environment": {"cpus": os.cpu_count(), "python": platform.python_version(),
                      "tensorflow": tf.__version__, "git_commit": commit,
                      "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                      "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                          timespec="seconds")},
      "checkpoint": {"id": record.id, "step": record.step,
                     "parameters": int(model.count_params())},
      "saved_model_bytes": {"ckptflow": a_runs[-1]["bytes"], "plain": b_runs[-1]["bytes"]},
      "pairs": args.pairs,
      "ckptflow_seconds": a_runs, "plain_seconds": b_runs, "pair_ratios": ratios,
      "ratio_ckptflow_over_plain": ratio,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out + ".tmp", "w") as f:
    json.dump(document, f, indent=2)
    f.write("\n")
  os.replace(args.out + ".tmp", args.out)
  log(f"wrote {args.out}")
  print(f"ratio promote (export + push) / plain (tf.saved_model.save + copy): {ratio:.2f}",
        flush=True)


if __name__ == "__main__":
  main()
