"""Distributed training: steps/s and checkpoint cost of 2 workers
(MultiWorkerMirroredStrategy on 127.0.0.1) against one process, same model,
same global batch, in one run.

Each trial is fresh processes running `distributed_driver.py` (the example
model module, the product's `TrainingLoop`, a real MLMD SQLite sink, a
checkpoint every --every steps, keep last 2): one process alone (A), or two
workers started with their TF_CONFIG (B). Trials alternate A B B A ... so
load drift hits both alike. Step rate excludes the first steps (tracing)
and the saves; a save's cost is its wall time on the chief (write, verify,
sha256, fsync, rename, register, prune; under 2 workers the other worker
writes its own copy at the same step).

  .venv/bin/python benchmarks/distributed.py               # 2 pairs x 300 steps
  .venv/bin/python benchmarks/distributed.py --pairs 3 --steps 400

Prints a table, writes benchmarks/results/distributed.json and prints last
the ratio of steps/s (2 workers / one process). On a 2-core machine the
two workers share the cores the one process had: this measures what the
distribution machinery costs, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import measure  # noqa: E402

DRIVER = os.path.join(measure.BENCHMARKS_DIR, "distributed_driver.py")


def trial(mode: str, args) -> dict:
  """One trial; returns the chief's report."""
  from ckptflow.components.trainer.workers import free_ports, tf_config  # no TensorFlow
  with tempfile.TemporaryDirectory(prefix="ckptflow-bench-") as work:
    command = [sys.executable, DRIVER, "--mode", mode, "--store",
               os.path.join(work, "store.sqlite"), "--dir", work, "--steps", str(args.steps),
               "--every", str(args.every), "--batch", str(args.batch), "--hidden", args.hidden]
    env = os.environ | {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    count = 2 if mode == "multi_worker" else 1
    ports = free_ports(count)
    procs = []
    for index in range(count):
      worker_env = dict(env)
      if mode == "multi_worker":
        worker_env["TF_CONFIG"] = tf_config(ports, index)
      procs.append(subprocess.Popen(command, env=worker_env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True))
    reports = []
    for p in procs:
      out, err = p.communicate(timeout=1800)
      if p.returncode != 0:
        raise RuntimeError(f"driver ({mode}) exited {p.returncode}:\n{err[-3000:]}")
      reports += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
  [chief] = [r for r in reports if r["chief"]]
  return chief


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pairs", type=int, default=2)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--every", type=int, default=50)
  parser.add_argument("--batch", type=int, default=64, help="global batch")
  parser.add_argument("--hidden", default="256,256", help="hidden layer sizes")
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)

  order = []
  for pair in range(args.pairs):
    order += ["none", "multi_worker"] if pair % 2 == 0 else ["multi_worker", "none"]
  trials = []
  started = time.monotonic()
  for mode in order:
    report = trial(mode, args)
    trials.append(report)
    measure.log(f"[{time.monotonic() - started:5.0f}s] {mode}: {report['steps_per_s']:.1f} "
                f"steps/s, save median {measure.median(report['save_s']) * 1000:.0f} ms")

  def of(mode):
    return [t for t in trials if t["mode"] == mode]

  rows, summary = [], {}
  for mode, label in (("none", "one process"), ("multi_worker", "2 workers")):
    rates = [t["steps_per_s"] for t in of(mode)]
    saves = [s for t in of(mode) for s in t["save_s"]]
    summary[mode] = {"steps_per_s": measure.median(rates),
                     "save_ms_p50": measure.median(saves) * 1000,
                     "save_ms_p90": measure.percentile(saves, 90) * 1000}
    rows.append([label, len(rates), f"{min(rates):.1f}-{max(rates):.1f}",
                 summary[mode]["steps_per_s"], summary[mode]["save_ms_p50"],
                 summary[mode]["save_ms_p90"]])
  measure.print_table(["setup", "trials", "steps/s range", "steps/s median",
                       "save ms p50", "save ms p90"], rows)
  rate_ratio = summary["multi_worker"]["steps_per_s"] / summary["none"]["steps_per_s"]
  save_ratio = summary["multi_worker"]["save_ms_p50"] / summary["none"]["save_ms_p50"]
  document = {"settings": vars(args), "parameters": trials[0]["parameters"],
              "trials": trials, "summary": summary,
              "ratio_steps_per_s": rate_ratio, "ratio_save_ms_p50": save_ratio}
  path = measure.write_results("distributed", document, args.out)
  print(f"checkpoint cost, 2 workers / one process (p50): {save_ratio:.3f}")
  print(f"results: {os.path.relpath(path, measure.REPO)}")
  measure.print_ratio("steps/s, 2 workers / one process (same model, same global batch)",
                      rate_ratio, "none set")
  return 0


if __name__ == "__main__":
  sys.exit(main())
