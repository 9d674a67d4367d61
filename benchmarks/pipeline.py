"""Pipeline: wall time of `ckptflow run` vs. the same pipeline in stock TFX.

Runs, as fresh processes in fresh homes with caching off, `ckptflow run` on
the penguins data and `stock_tfx_pipeline.py` (CsvExampleGen,
StatisticsGen, SchemaGen, ExampleValidator, stock Trainer with an
equivalent module, Resolver, Evaluator, stock Pusher) with the same data,
steps, batch size, Beam arguments and EvalConfig. The two alternate
(A B B A ...) and each adjacent pair gives a ratio (ckptflow / stock); the
reported ratio is the median over pairs. Wall time is from process start to
exit, imports included, as a user sees it.

  .venv/bin/python benchmarks/pipeline.py                  # 3 pairs, 600 steps, checkpoint every 100
  .venv/bin/python benchmarks/pipeline.py --pairs 5 --train-steps 2000

Prints a table, writes benchmarks/results/pipeline.json and prints last the
ratio (target <= 1.10).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import measure  # noqa: E402

TARGET_RATIO = 1.10
STOCK_SCRIPT = os.path.join(measure.BENCHMARKS_DIR, "stock_tfx_pipeline.py")


def served_versions(home: str, model_name: str) -> list[str]:
  base = os.path.join(home, "serving", model_name)
  if not os.path.isdir(base):
    return []
  return sorted(n for n in os.listdir(base) if n.isdigit())


def run_pipeline(kind: str, home: str, args) -> dict:
  """Runs one pipeline in a fresh process; returns its wall time."""
  common = ["--home", home, "--data", args.data, "--train-steps", str(args.train_steps),
            "--batch-size", str(args.batch_size), "--model-name", "penguin"]
  if kind == "ckptflow":
    command = [sys.executable, "-m", "ckptflow.cli", "run", *common,
               "--checkpoint-every", str(args.checkpoint_every), "--no-cache"]
  else:
    command = [sys.executable, STOCK_SCRIPT, *common]
  env = os.environ | {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
  env.pop("CKPTFLOW_METADATA", None)
  start = time.monotonic()
  result = subprocess.run(command, capture_output=True, text=True, env=env,
                          timeout=args.timeout)
  seconds = time.monotonic() - start
  if result.returncode != 0:
    raise RuntimeError(f"{kind} pipeline exited {result.returncode}:\n{result.stderr[-3000:]}")
  versions = served_versions(home, "penguin")
  if len(versions) != 1:
    raise RuntimeError(f"{kind} pipeline pushed {versions} under {home}/serving/penguin; "
                       "expected one version (a blessed model), so both do the full work")
  return {"kind": kind, "seconds": seconds, "pushed_version": versions[0]}


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--pairs", type=int, default=3)
  parser.add_argument("--data", default=measure.PENGUINS)
  parser.add_argument("--train-steps", type=int, default=600)
  parser.add_argument("--checkpoint-every", type=int, default=100)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--timeout", type=float, default=900)
  parser.add_argument("--workdir", default=None)
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  if not os.path.isdir(args.data) or not any(n.endswith(".csv") for n in os.listdir(args.data)):
    parser.error(f"--data {args.data!r} is not a directory of CSV files")

  workdir = args.workdir or tempfile.mkdtemp(prefix="ckptflow-bench-pipeline-")
  runs = []
  started = time.monotonic()
  try:
    for pair in range(args.pairs):
      order = ("ckptflow", "stock") if pair % 2 == 0 else ("stock", "ckptflow")
      for kind in order:
        home = os.path.join(workdir, f"{kind}-{pair}")
        outcome = run_pipeline(kind, home, args) | {"pair": pair}
        runs.append(outcome)
        shutil.rmtree(home, ignore_errors=True)
        measure.log(f"[{time.monotonic() - started:5.0f}s] pair {pair + 1}/{args.pairs} "
                    f"{kind:<8} {outcome['seconds']:.1f}s")
  finally:
    if not args.workdir:
      shutil.rmtree(workdir, ignore_errors=True)

  ratios = []
  rows = []
  for pair in range(args.pairs):
    seconds = {r["kind"]: r["seconds"] for r in runs if r["pair"] == pair}
    ratio = seconds["ckptflow"] / seconds["stock"]
    ratios.append(ratio)
    rows.append([pair + 1, seconds["ckptflow"], seconds["stock"], ratio])
  print(f"pipeline: wall time of `ckptflow run` vs. the stock TFX pipeline "
        f"({args.train_steps} steps, batch {args.batch_size}, checkpoint every "
        f"{args.checkpoint_every}, penguins, fresh homes, no cache)")
  measure.print_table(["pair", "ckptflow s", "stock TFX s", "ratio"], rows)
  ratio = measure.median(ratios)
  document = {"settings": {"pairs": args.pairs, "train_steps": args.train_steps,
                           "checkpoint_every": args.checkpoint_every,
                           "batch_size": args.batch_size, "data": os.path.abspath(args.data)},
              "runs": runs, "ratios": ratios,
              "median_seconds": {k: measure.median(r["seconds"] for r in runs if r["kind"] == k)
                                 for k in ("ckptflow", "stock")},
              "target": {"threshold": TARGET_RATIO, "ratio": ratio,
                         "met": ratio <= TARGET_RATIO}}
  path = measure.write_results("pipeline", document, args.out)
  print(f"results: {os.path.relpath(path, measure.REPO)}")
  measure.print_ratio("pipeline wall time (ckptflow run / stock TFX)", ratio,
                      f"<= {TARGET_RATIO}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
