"""The progress display: a live line on a terminal, log lines otherwise."""

from __future__ import annotations

import io
import logging

from ckptflow.base import progress
from ckptflow.base.progress import Progress


class Clock:
  def __init__(self):
    self.now = 100.0

  def __call__(self) -> float:
    return self.now


def _log_lines(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.name == "ckptflow.progress"]


def test_log_mode_reports_stages_and_training_every_interval(caplog):
  caplog.set_level(logging.INFO, logger="ckptflow.progress")
  clock = Clock()
  reporter = Progress(io.StringIO(), live=False, clock=clock, ticker=False)
  reporter.stage_started("CsvExampleGen", 1, 7)
  clock.now += 3
  reporter.stage_started("CheckpointingTrainer", 5, 7)  # ends the first stage
  reporter.training_started(0, 300)
  logged_at = []
  for step in range(1, 126):  # 12.5 s at 10 steps/s
    clock.now += 0.1
    reporter.step(step, loss=0.5)
    if step == 50:
      reporter.checkpoint_saved(50)
    before = len(caplog.records)
    reporter.tick()
    if len(caplog.records) > before:
      logged_at.append(step)
  reporter.training_finished(125)
  reporter.stage_finished()
  lines = _log_lines(caplog)
  assert lines[:4] == ["[1/7] CsvExampleGen: running", "[1/7] CsvExampleGen: done in 3.0 s",
                       "[5/7] CheckpointingTrainer: running", "training: step 0/300"]
  # One line per LOG_INTERVAL (5 s = 50 steps here), none in between.
  assert len(logged_at) == 2 and 50 <= logged_at[0] <= 51 and 100 <= logged_at[1] <= 102
  periodic = lines[4:6]
  assert periodic[0].startswith("[5/7] CheckpointingTrainer: [###")
  assert f"step {logged_at[0]}/300  10.0 steps/s  loss 0.5  last checkpoint: step 50" \
      in periodic[0]
  assert f"step {logged_at[1]}/300" in periodic[1]
  assert lines[6:] == [
      "training finished: step 125/300, 10.0 steps/s, loss 0.5, last checkpoint: step 50",
      "[5/7] CheckpointingTrainer: done in 12.5 s"]


def test_live_mode_rewrites_one_line_with_carriage_returns():
  stream = io.StringIO()
  clock = Clock()
  reporter = Progress(stream, live=True, clock=clock, ticker=False)
  reporter.stage_started("CheckpointingTrainer", 5, 7)
  reporter.training_started(100, 300)
  for step in (150, 200):
    clock.now += 1
    reporter.step(step)
    reporter.tick()
  reporter.checkpoint_saved(200)
  reporter.training_finished(200, "interrupted")
  reporter.stage_finished()
  frames = stream.getvalue().split("\r")
  assert frames[0] == "[5/7] CheckpointingTrainer: running\n"
  live = [f.rstrip() for f in frames if f.startswith("[5/7] CheckpointingTrainer: [")]
  assert live == [
      "[5/7] CheckpointingTrainer: [######..............]  33%  step 100/300"
      "  first step running, 0 s  last checkpoint: none yet",
      "[5/7] CheckpointingTrainer: [##########..........]  50%  step 150/300  50.0 steps/s"
      "  last checkpoint: none yet",
      "[5/7] CheckpointingTrainer: [#############.......]  66%  step 200/300  50.0 steps/s"
      "  last checkpoint: none yet"]
  # Permanent lines start on a cleared line and end with a newline; the
  # stream ends on one, so the shell prompt starts on a fresh line.
  assert "training: step 100/300 (continuing from step 100)\n" in frames
  assert "training interrupted: step 200/300, 50.0 steps/s, last checkpoint: step 200\n" \
      in frames
  assert frames[-1] == "[5/7] CheckpointingTrainer: done in 2.0 s\n"
  assert all(f.strip(" ") == "" for f, after in zip(frames, frames[1:])
             if after.startswith(("training", "[5/7] CheckpointingTrainer: done")))


def test_live_line_is_cleared_before_a_log_line_and_redrawn_after():
  stream = io.StringIO()
  reporter = Progress(stream, live=True, clock=Clock(), ticker=False)
  reporter.stage_started("Evaluator", 6, 7)
  before = stream.getvalue()
  with reporter.paused():
    stream.write("LOG\n")
  after = stream.getvalue()[len(before):]
  shown = len("[6/7] Evaluator: running, 0 s")
  assert after == "\r" + " " * shown + "\r" + "LOG\n" + "\r[6/7] Evaluator: running, 0 s"


def test_close_ends_an_open_stage_and_a_non_terminal_stream_gets_no_live_line():
  stream = io.StringIO()
  reporter = Progress(stream, live=False, clock=Clock(), ticker=False)
  reporter.stage_started("Pusher", 7, 7)
  reporter.close()
  assert stream.getvalue() == ""  # log mode writes through logging only
  assert reporter.status_line() is None


def test_a_training_reporter_does_nothing_and_current_is_one_per_process():
  quiet = progress.TrainingReporter()
  quiet.training_started(0, 10)
  quiet.step(1, 0.1)
  quiet.checkpoint_saved(1)
  quiet.training_finished(1)
  assert progress.current() is progress.current()
