"""What a run shows while it works: the stage, training step / total, steps
per second and the last checkpoint.

One `Progress` reporter per process (`current()`), fed by the local runner
(a pipeline stage started or finished) and by the Trainer's loop (training
started, a step, a checkpoint, training ended). It renders in one of two
ways, chosen once from standard error:

* on a terminal, one live line rewritten in place with a carriage return
  (no escape sequences, no extra dependency), ended with a newline when a
  stage ends, when training ends or is interrupted, and before any log line
  (`ProgressAwareHandler` clears it, writes the record, redraws it);
* otherwise, plain log lines on the `ckptflow.progress` logger: one at each
  stage start and end, and while training one every `LOG_INTERVAL` seconds
  (so at most that long, plus scheduling delay, passes between two of them
  whatever a step costs).

A daemon thread ticks the display while a stage runs; the loop only sets
numbers under a lock, so a training step costs no formatting or I/O.
Thread-safe. Imports neither TensorFlow nor TFX.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import threading
import time
from typing import Iterator, TextIO

LOG_INTERVAL = 5.0  # seconds between training log lines (non-terminal)
STAGE_LOG_INTERVAL = 30.0  # seconds between "still running" lines of other stages
REDRAW_INTERVAL = 0.25  # seconds between redraws of the live line
BAR_WIDTH = 20

_log = logging.getLogger("ckptflow.progress")


@dataclasses.dataclass
class _Stage:
  name: str
  index: int | None
  total: int | None
  started: float

  def label(self) -> str:
    where = f"[{self.index}/{self.total}] " if self.index and self.total else ""
    return f"{where}{self.name}"


@dataclasses.dataclass
class _Training:
  total: int
  start_step: int
  step: int
  started: float
  last_checkpoint: int | None = None
  loss: float | None = None

  def rate(self, now: float) -> float:
    return (self.step - self.start_step) / max(1e-9, now - self.started)


class TrainingReporter:
  """What a training loop tells while it trains; does nothing. `Progress`
  shows it; a test or a benchmark may subclass it to observe steps."""

  def training_started(self, step: int, total: int) -> None:
    """Training begins (or resumes) at `step` of `total`."""

  def step(self, step: int, loss: float | None = None) -> None:
    """A training step finished (called once per step: keep it cheap)."""

  def checkpoint_saved(self, step: int) -> None:
    """A checkpoint of `step` was written (registration may follow)."""

  def training_finished(self, step: int, outcome: str = "finished") -> None:
    """Training ends at `step`: "finished", "interrupted" (by a signal, after
    saving) or "failed"."""


class Progress(TrainingReporter):
  """The reporter of one process. `stream` defaults to standard error;
  `live` (a live line) defaults to whether that stream is a terminal.
  `ticker` False leaves calling `tick` to the caller (tests)."""

  def __init__(self, stream: TextIO | None = None, *, live: bool | None = None,
               clock=time.monotonic, ticker: bool = True):
    self._stream = stream
    self._live = live
    self._clock = clock
    self._lock = threading.RLock()
    self._stage: _Stage | None = None
    self._training: _Training | None = None
    self._shown = 0  # characters of the live line now on screen
    self._last_log = 0.0
    self._ticker: threading.Thread | None = None
    self._tick_in_background = ticker  # False: the caller calls tick()
    self._stop = threading.Event()

  @property
  def stream(self) -> TextIO:
    return self._stream or sys.stderr

  @property
  def live(self) -> bool:
    if self._live is None:
      try:
        self._live = bool(self.stream.isatty())
      except (AttributeError, ValueError):
        self._live = False
    return self._live

  # --- what the runner and the loop call -------------------------------------

  def stage_started(self, name: str, index: int | None = None,
                    total: int | None = None) -> None:
    """A pipeline stage (component) starts; ends any stage still open."""
    self.stage_finished()
    with self._lock:
      self._stage = _Stage(name, index, total, self._clock())
      self._last_log = self._stage.started
      label = self._stage.label()
    self._permanent(f"{label}: running")
    self._start_ticker()

  def stage_finished(self, outcome: str = "done") -> None:
    """The open stage (if any) ends: `outcome` is "done", "failed", ..."""
    with self._lock:
      stage, self._stage = self._stage, None
      self._training = None
      if stage is None:
        return
      seconds = self._clock() - stage.started
    self._permanent(f"{stage.label()}: {outcome} in {seconds:.1f} s")

  def training_started(self, step: int, total: int) -> None:
    """Training begins (or resumes) at `step` of `total`."""
    with self._lock:
      now = self._clock()
      self._training = _Training(total=total, start_step=step, step=step, started=now)
      self._last_log = now
      if self._stage is None:  # a Trainer run outside a pipeline runner
        self._stage = _Stage("training", None, None, now)
    self._permanent(f"training: step {step}/{total}" + (
        f" (continuing from step {step})" if step else ""))
    self._start_ticker()

  def step(self, step: int, loss: float | None = None) -> None:
    """A training step finished; cheap (sets numbers only)."""
    with self._lock:
      if self._training is not None:
        self._training.step = step
        self._training.loss = loss

  def checkpoint_saved(self, step: int) -> None:
    with self._lock:
      if self._training is not None:
        self._training.last_checkpoint = step

  def training_finished(self, step: int, outcome: str = "finished") -> None:
    with self._lock:
      training, self._training = self._training, None
      if training is None:
        return
      training.step = step
      line = self._training_line(training, self._clock())
    self._permanent(f"training {outcome}: {line}")

  def close(self) -> None:
    """Ends the open stage and the live line; stops the ticker."""
    self.stage_finished("stopped")
    self._stop.set()
    ticker = self._ticker
    if ticker is not None and ticker is not threading.current_thread():
      ticker.join(timeout=2)
    self._ticker = None
    self._stop = threading.Event()

  # --- the live line and log handlers -----------------------------------------

  @contextlib.contextmanager
  def paused(self) -> Iterator[None]:
    """Clears the live line while something else writes to the stream."""
    if not self.live:
      yield
      return
    with self._lock:
      self._clear()
      try:
        yield
      finally:
        self._draw()

  def status_line(self) -> str | None:
    """The line the display shows now, or None when no stage runs."""
    with self._lock:
      if self._stage is None:
        return None
      now = self._clock()
      if self._training is not None:
        return f"{self._stage.label()}: {self._training_line(self._training, now, bar=True)}"
      return f"{self._stage.label()}: running, {now - self._stage.started:.0f} s"

  @staticmethod
  def _training_line(training: _Training, now: float, *, bar: bool = False) -> str:
    step, total = training.step, max(1, training.total)
    parts = []
    if bar:
      filled = min(BAR_WIDTH, BAR_WIDTH * step // total)
      parts.append("[" + "#" * filled + "." * (BAR_WIDTH - filled) + f"] {100 * step // total:3d}%")
    parts.append(f"step {step}/{training.total}")
    if step == training.start_step:  # the first step also builds the graph
      parts.append(f"first step running, {now - training.started:.0f} s")
    else:
      parts.append(f"{training.rate(now):.1f} steps/s")
    if training.loss is not None:
      parts.append(f"loss {training.loss:.4g}")
    parts.append("last checkpoint: " + (
        f"step {training.last_checkpoint}" if training.last_checkpoint is not None
        else "none yet"))
    return "  ".join(parts) if bar else ", ".join(parts)

  def _permanent(self, line: str) -> None:
    """A line that stays: above the live line on a terminal, else a log line."""
    if not self.live:
      _log.info("%s", line)
      return
    with self._lock:
      self._clear()
      self.stream.write(line + "\n")
      self._draw()

  def _clear(self) -> None:
    if self._shown:
      self.stream.write("\r" + " " * self._shown + "\r")
      self.stream.flush()
      self._shown = 0

  def _draw(self) -> None:
    line = self.status_line()
    if line is None:
      self.stream.flush()
      return
    # Pad over what was there, so a shorter line leaves no stale characters.
    self.stream.write("\r" + line.ljust(self._shown))
    self.stream.flush()
    self._shown = len(line)

  def tick(self) -> None:
    """Redraws the live line, or logs a line when one is due."""
    if self.live:
      with self._lock:
        self._draw()
      return
    with self._lock:
      if self._stage is None:
        return
      now = self._clock()
      interval = LOG_INTERVAL if self._training is not None else STAGE_LOG_INTERVAL
      if now - self._last_log < interval:
        return
      self._last_log = now
      line = self.status_line()
    _log.info("%s", line)  # outside the lock: a handler may pause the display

  def _start_ticker(self) -> None:
    if not self._tick_in_background:
      return
    with self._lock:
      if self._ticker is not None and self._ticker.is_alive():
        return
      stop = self._stop
      self._ticker = threading.Thread(target=self._tick_until, args=(stop,),
                                      name="ckptflow-progress", daemon=True)
      self._ticker.start()

  def _tick_until(self, stop: threading.Event) -> None:
    period = REDRAW_INTERVAL if self.live else 0.5
    while not stop.wait(period):
      try:
        self.tick()
      except (OSError, ValueError):  # the stream is gone (closed at exit)
        return


class ProgressAwareHandler(logging.StreamHandler):
  """A stream handler that clears the live progress line before writing a
  record and redraws it after, so log lines and the live line never mix."""

  def emit(self, record: logging.LogRecord) -> None:
    with current().paused():
      super().emit(record)


_current: Progress | None = None
_current_lock = threading.Lock()


def current() -> Progress:
  """This process's reporter (created on first use, on standard error)."""
  global _current
  with _current_lock:
    if _current is None:
      _current = Progress()
    return _current
