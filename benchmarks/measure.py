"""What every benchmark script shares: statistics, the printed table, the
JSON result file, and the ratio line each script prints last.

Each benchmark answers one question with the ratio of two things measured
in the same run (these machines are shared and noisy: absolute times drift
between runs, ratios of interleaved measurements much less). Results go to
`benchmarks/results/<name>.json` with the command that made them and the
machine they ran on, so BENCHMARKS.md can quote them as committed.

Imports neither TensorFlow nor TFX.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from typing import Any, Iterable, Mapping, Sequence

BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCHMARKS_DIR)
RESULTS_DIR = os.path.join(BENCHMARKS_DIR, "results")
PENGUINS = os.environ.get("CKPTFLOW_PENGUINS") or os.path.join(
    os.path.dirname(REPO), "shared", "data", "penguins")


def median(values: Iterable[float]) -> float:
  values = list(values)
  return statistics.median(values) if values else float("nan")


def percentile(values: Iterable[float], q: float) -> float:
  """The q-th percentile (0..100), linear interpolation between ranks."""
  ordered = sorted(values)
  if not ordered:
    return float("nan")
  rank = (len(ordered) - 1) * q / 100.0
  low = int(rank)
  high = min(low + 1, len(ordered) - 1)
  return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def command_line() -> str:
  """How this script was started, relative to the repository root."""
  script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO)
  return " ".join([".venv/bin/python", shlex.quote(script)]
                  + [shlex.quote(a) for a in sys.argv[1:]])


def _git_commit() -> str:
  try:
    return subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, timeout=10,
                          check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def environment() -> dict:
  """The machine and code a result was measured on."""
  try:
    load = os.getloadavg()
  except OSError:
    load = (float("nan"),) * 3
  return {"cpus": os.cpu_count(), "python": platform.python_version(),
          "platform": platform.platform(), "git_commit": _git_commit(),
          "load_average_at_end": [round(x, 2) for x in load],
          "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
              timespec="seconds")}


def write_results(name: str, document: Mapping[str, Any], out: str | None = None) -> str:
  """Writes `document` (plus command and environment) as JSON; returns the
  path. Written to a temporary file and renamed, so a reader never sees half
  a result."""
  path = out or os.path.join(RESULTS_DIR, f"{name}.json")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  full = {"benchmark": name, "command": command_line(),
          "environment": environment()} | dict(document)
  staging = path + ".tmp"
  with open(staging, "w") as f:
    json.dump(full, f, indent=2, sort_keys=False, default=float)
    f.write("\n")
  os.replace(staging, path)
  return path


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
  """Prints rows under headers, columns aligned; floats with 3 significant
  decimals."""
  def cell(value: Any) -> str:
    if isinstance(value, float):
      return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)

  text_rows = [[cell(v) for v in row] for row in rows]
  widths = [max(len(h), *(len(r[i]) for r in text_rows)) if text_rows else len(h)
            for i, h in enumerate(headers)]
  print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
  print("  ".join("-" * w for w in widths))
  for row in text_rows:
    print("  ".join(v.rjust(w) for v, w in zip(row, widths)))
  sys.stdout.flush()


def print_ratio(what: str, value: float, target: str) -> None:
  """The line every benchmark prints last."""
  print(f"ratio {what}: {value:.3f} (target {target})", flush=True)


def log(message: str) -> None:
  """Progress on stderr, so stdout holds only the table and the ratio."""
  print(message, file=sys.stderr, flush=True)
