"""What `ckptflow run` shows on a terminal: a live progress line, rewritten
in place, under a real pseudo-terminal."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.e2e

STEPS = 600


def _run_under_terminal(args: list[str], timeout: float = 900) -> tuple[int, str]:
  """Runs `python -m ckptflow.cli ARGS` with standard error (and output) on
  a pseudo-terminal; returns its exit status and everything it wrote."""
  master, slave = pty.openpty()
  env = os.environ | {"TF_USE_LEGACY_KERAS": "1", "COLUMNS": "200"}
  process = subprocess.Popen([sys.executable, "-m", "ckptflow.cli", *args],
                             stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                             env=env, close_fds=True)
  os.close(slave)
  chunks = []
  deadline = time.monotonic() + timeout
  try:
    while time.monotonic() < deadline:
      ready, _, _ = select.select([master], [], [], 1.0)
      if ready:
        try:
          data = os.read(master, 65536)
        except OSError:  # EIO: every writer closed the terminal
          break
        if not data:
          break
        chunks.append(data)
      elif process.poll() is not None:
        break
    else:
      process.kill()
      pytest.fail(f"ckptflow {' '.join(args)} did not finish in {timeout} s")
  finally:
    os.close(master)
  return process.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def test_run_on_a_terminal_shows_a_live_progress_line(tmp_path, penguins_dir):
  rc, output = _run_under_terminal([
      "run", "--home", str(tmp_path / "home"), "--data", str(penguins_dir),
      "--train-steps", str(STEPS), "--checkpoint-every", "200"])
  assert rc == 0, output[-3000:]
  text = output.replace("\r\n", "\n")  # the terminal turns each \n into \r\n
  # Live updates: carriage returns, each redrawing the Trainer's line with
  # its progress bar, step / total, rate and last checkpoint.
  live = re.findall(r"\r\[\d/\d\] CheckpointingTrainer: \[[#.]{20}\] +\d+%  step (\d+)/600  "
                    r"(?:[\d.]+ steps/s|first step running, \d+ s)(?:  loss [\d.e-]+)?"
                    r"  last checkpoint: (none yet|step \d+)", text)
  steps = [int(step) for step, _ in live]
  assert len(set(steps)) >= 3, text[-3000:]
  assert steps == sorted(steps)
  assert "step 200" in {checkpoint for _, checkpoint in live} or \
      "step 400" in {checkpoint for _, checkpoint in live}
  # Other stages are live lines too, and each ends on a line of its own.
  assert re.search(r"\r\[\d/\d\] StatisticsGen: running, \d+ s", text)
  for stage in ("CsvExampleGen", "StatisticsGen", "CheckpointingTrainer", "Evaluator", "Pusher"):
    assert re.search(rf"\r\[\d/\d\] {stage}: done in [\d.]+ s\n", text), stage
  assert re.search(rf"\rtraining finished: step {STEPS}/{STEPS}, [\d.]+ steps/s", text)
  # Permanent lines are not left behind by the live line: the summary
  # starts at the beginning of a line.
  assert re.search(r"(^|\n)served model: ", text)
  # No line of the default output is TensorFlow's or a Python warning.
  assert "Warning" not in text and "cuFFT" not in text
