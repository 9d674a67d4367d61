"""The launcher's command line: `python -m ckptflow.kubeflow.launcher`.

Prints one JSON line with the run id and run root, then one per task run;
errors a user can act on are one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import Sequence

from ckptflow.base import metadata, names
from ckptflow.base.errors import CkptflowError
from ckptflow.kubeflow import spec as spec_lib
from ckptflow.kubeflow.launcher.errors import LauncherError
from ckptflow.kubeflow.launcher.run import LocalRun


def _parse_params(pairs: Sequence[str]) -> dict[str, str]:
  return names.parse_assignments(pairs, flag="--param", error=LauncherError)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the launcher with `argv` (default: sys.argv); returns the exit status."""
  parser = argparse.ArgumentParser(
      prog="python -m ckptflow.kubeflow.launcher",
      description="Run a compiled KFP v2 spec here, task by task, as KFP would.")
  parser.add_argument("spec", help="pipeline.json, pipeline.yaml, or the compile directory")
  parser.add_argument("--pipeline-root", default="",
                      help="where outputs go (default: the spec's runtimeConfig)")
  parser.add_argument("--metadata", default=None,
                      help="MLMD store for the run (default: $CKPTFLOW_METADATA)")
  parser.add_argument("--run-id", default=None, help="run id (default: a new UUID); "
                      "an existing run's id reruns tasks in it")
  parser.add_argument("--task", action="append", default=[],
                      help="run only this task (repeatable); its upstream tasks must "
                      "have completed in the run")
  parser.add_argument("--param", action="append", default=[], help="NAME=VALUE")
  parser.add_argument("--task-timeout", type=float, default=None, help="seconds per task")
  parser.add_argument("--no-retries", action="store_true",
                      help="ignore the tasks' retry policies (a failed task ends the run)")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                      format="%(asctime)s %(levelname).1s launcher: %(message)s")
  logging.getLogger("ckptflow").setLevel(logging.INFO)  # progress; not MLMD's chatter
  try:
    target = args.metadata or os.environ.get(metadata.METADATA_ENV, "").strip()
    if not target:
      raise LauncherError(f"no metadata store: pass --metadata TARGET or set "
                          f"{metadata.METADATA_ENV}")
    run = LocalRun(spec_lib.load(args.spec), pipeline_root=args.pipeline_root,
                   store_target=target, run_id=args.run_id,
                   parameters=_parse_params(args.param), task_timeout=args.task_timeout,
                   retries=not args.no_retries)
    print(json.dumps({"run_id": run.run_id, "run_root": run.run_root}), flush=True)
    for result in run.run(args.task or None):
      print(json.dumps(dataclasses.asdict(result), sort_keys=True), flush=True)
  except CkptflowError as e:
    print(f"launcher: error: {' '.join(str(e).split())}", file=sys.stderr)
    return e.exit_code
  return 0
