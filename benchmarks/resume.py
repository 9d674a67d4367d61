"""Resume: time from process start to the first resumed step vs. to the first
step of a fresh run.

A training process (`resume_driver.py`: the benchmark MLP, `TrainingLoop`,
real MLMD SQLite sink) is interrupted with a real SIGTERM at step 150 after
a checkpoint at step 100: the loop saves step 150, registers it and stops,
and its execution is marked FAILED. Then fresh processes alternate (A B B A
...): a resumed run (same run key; `resume()` finds the FAILED execution's
newest checkpoint, checks its sha256 and restores model, optimizer, step,
RNG and data position) and a fresh run (a new store and run key: nothing to
resume). Both stop right after their first step. Before each resumed run the
store and checkpoint files are put back as the interrupted run left them.
Time is measured by this script from just before it starts the process to
the first step the child reports (wall clock), imports included.

  .venv/bin/python benchmarks/resume.py                # 5M parameters, 5 pairs
  .venv/bin/python benchmarks/resume.py --size 25M --pairs 3

Prints a table, writes benchmarks/results/resume.json and prints last the
ratio (resumed / fresh time to first step).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import measure  # noqa: E402

DRIVER = os.path.join(measure.BENCHMARKS_DIR, "resume_driver.py")
INTERRUPT_AT = 150
EVERY = 100
STEPS = 1000
PHASES = ("imports_done", "model_built", "resume_done", "first_step_done")


def drive(store: str, directory: str, run_key: str, size: str, *extra: str,
          timeout: float = 600) -> tuple[dict, float]:
  """Runs the driver; returns its report and when it was started."""
  command = [sys.executable, DRIVER, "--store", store, "--dir", directory,
             "--run-key", run_key, "--size", size, "--steps", str(STEPS),
             "--every", str(EVERY), *extra]
  env = os.environ | {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
  started = time.time()
  result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
  if result.returncode != 0:
    raise RuntimeError(f"driver exited {result.returncode}:\n{result.stderr[-3000:]}")
  lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
  if not lines:
    raise RuntimeError(f"driver printed no report:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
  return json.loads(lines[-1]), started


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--size", default="5M", help="model size: 1M, 5M or 25M")
  parser.add_argument("--pairs", type=int, default=5)
  parser.add_argument("--workdir", default=None)
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)

  workdir = args.workdir or tempfile.mkdtemp(prefix="ckptflow-bench-resume-")
  os.makedirs(workdir, exist_ok=True)
  store = os.path.join(workdir, "interrupted.sqlite")
  checkpoints = os.path.join(workdir, "interrupted-checkpoints")
  pristine = os.path.join(workdir, "pristine")
  trials = []
  started_all = time.monotonic()
  try:
    report, _ = drive(store, checkpoints, "interrupted", args.size,
                      "--interrupt-at", str(INTERRUPT_AT))
    if report.get("state") != "FAILED":
      raise RuntimeError(f"the interrupted run ended {report.get('state')}, expected FAILED")
    os.makedirs(pristine)
    shutil.copy2(store, os.path.join(pristine, "store.sqlite"))
    shutil.copytree(checkpoints, os.path.join(pristine, "checkpoints"))
    measure.log(f"[{time.monotonic() - started_all:5.0f}s] interrupted run left checkpoints "
                f"at steps {EVERY} and {INTERRUPT_AT}")

    for pair in range(args.pairs):
      order = ("resumed", "fresh") if pair % 2 == 0 else ("fresh", "resumed")
      for kind in order:
        if kind == "resumed":
          shutil.copy2(os.path.join(pristine, "store.sqlite"), store)
          shutil.rmtree(checkpoints)
          shutil.copytree(os.path.join(pristine, "checkpoints"), checkpoints)
          report, started = drive(store, checkpoints, "interrupted", args.size,
                                  "--exit-after-first-step")
          if report["resumed_step"] != INTERRUPT_AT:
            raise RuntimeError(f"resumed at step {report['resumed_step']}, "
                               f"expected {INTERRUPT_AT}")
        else:
          fresh_store = os.path.join(workdir, f"fresh-{pair}.sqlite")
          fresh_dir = os.path.join(workdir, f"fresh-{pair}")
          report, started = drive(fresh_store, fresh_dir, f"fresh-{pair}", args.size,
                                  "--exit-after-first-step")
          if report["resumed_step"] != 0:
            raise RuntimeError(f"a fresh run resumed at step {report['resumed_step']}")
          shutil.rmtree(fresh_dir, ignore_errors=True)
        phases = {p: report["times"][p] - started for p in PHASES}
        trials.append({"kind": kind, "pair": pair, "seconds_to_first_step":
                       phases["first_step_done"], "phases": phases})
        measure.log(f"[{time.monotonic() - started_all:5.0f}s] pair {pair + 1}/{args.pairs} "
                    f"{kind:<7} first step after {phases['first_step_done']:.2f}s")
  finally:
    if not args.workdir:
      shutil.rmtree(workdir, ignore_errors=True)

  ratios = []
  for pair in range(args.pairs):
    by_kind = {t["kind"]: t["seconds_to_first_step"] for t in trials if t["pair"] == pair}
    ratios.append(by_kind["resumed"] / by_kind["fresh"])
  ratio = measure.median(ratios)
  print(f"resume: seconds from process start to the first training step "
        f"({args.size} params, median of {args.pairs})")
  rows = []
  for kind in ("fresh", "resumed"):
    mine = [t for t in trials if t["kind"] == kind]
    medians = {p: measure.median(t["phases"][p] for t in mine) for p in PHASES}
    rows.append([kind, medians["imports_done"], medians["model_built"] - medians["imports_done"],
                 medians["resume_done"] - medians["model_built"],
                 medians["first_step_done"] - medians["resume_done"],
                 medians["first_step_done"]])
  measure.print_table(["run", "imports s", "+ store, model s", "+ resume() s",
                       "+ first step s", "to first step s"], rows)
  document = {"settings": {"size": args.size, "pairs": args.pairs, "interrupt_at": INTERRUPT_AT,
                           "checkpoint_every": EVERY},
              "trials": trials, "ratios": ratios,
              "median_seconds_to_first_step": {
                  k: measure.median(t["seconds_to_first_step"] for t in trials if t["kind"] == k)
                  for k in ("fresh", "resumed")},
              "ratio": ratio}
  path = measure.write_results("resume", document, args.out)
  print(f"results: {os.path.relpath(path, measure.REPO)}")
  measure.print_ratio("resume (time to first resumed step / time to first fresh step)",
                      ratio, "close to 1; no target set")
  return 0


if __name__ == "__main__":
  sys.exit(main())
