"""When to save a checkpoint, and which checkpoints to keep.

Small policy objects behind two Protocols, in the manner of Orbax's
`SaveDecisionPolicy` and `PreservationPolicy`:

* a `SavePolicy` answers "save now?" from the training progress;
* a `RetentionPolicy` answers "which of these checkpoints stay?".

Both compose (`AnySave`, `KeepAny`). Neither touches files or metadata: the
training loop acts on their answers. Pure Python; no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
from typing import Iterable, Mapping, Protocol, Sequence


@dataclasses.dataclass(frozen=True)
class Progress:
  """Where training stands after a step."""

  step: int
  epoch: int
  epoch_ended: bool
  now: float  # time.monotonic()
  last_saved_step: int | None
  last_saved_time: float  # time.monotonic() of the last save, or of the start


class SavePolicy(Protocol):

  def should_save(self, progress: Progress) -> bool:
    """Whether a checkpoint should be written after `progress.step`."""


@dataclasses.dataclass(frozen=True)
class EveryNSteps:
  n: int

  def __post_init__(self):
    if self.n < 1:
      raise ValueError(f"EveryNSteps needs n >= 1. Received: {self.n}")

  def should_save(self, progress: Progress) -> bool:
    return progress.step % self.n == 0


@dataclasses.dataclass(frozen=True)
class EveryNSeconds:
  seconds: float

  def __post_init__(self):
    if self.seconds <= 0:
      raise ValueError(f"EveryNSeconds needs seconds > 0. Received: {self.seconds}")

  def should_save(self, progress: Progress) -> bool:
    return progress.now - progress.last_saved_time >= self.seconds


@dataclasses.dataclass(frozen=True)
class AtEpochEnd:

  def should_save(self, progress: Progress) -> bool:
    return progress.epoch_ended


class OnSignal:
  """Saves when SIGTERM or SIGINT arrives, and asks the loop to stop.

  `install()` replaces the handlers (main thread only) and `uninstall()`
  puts the previous ones back. The handler only sets a flag: the save itself
  happens at the next step boundary, in the training thread, so a signal can
  never interrupt a checkpoint write halfway.
  """

  def __init__(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)):
    self._signals = tuple(signals)
    self._received: int | None = None
    self._previous: dict[int, object] = {}

  @property
  def received(self) -> int | None:
    """The signal that asked to stop, or None."""
    return self._received

  def install(self) -> "OnSignal":
    if threading.current_thread() is not threading.main_thread():
      return self  # signal handlers can only be set from the main thread
    for sig in self._signals:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def uninstall(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def _handle(self, signum, frame) -> None:
    del frame
    self._received = signum

  def should_save(self, progress: Progress) -> bool:
    return self._received is not None and progress.last_saved_step != progress.step


@dataclasses.dataclass(frozen=True)
class AnySave:
  """Saves when any of `policies` says so."""

  policies: tuple[SavePolicy, ...]

  def should_save(self, progress: Progress) -> bool:
    # Every policy is asked (no short-circuit) so none misses a step.
    return any([p.should_save(progress) for p in self.policies])


# --- Retention -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Candidate:
  """What retention needs to know of a live checkpoint."""

  id: int
  step: int
  metrics: Mapping[str, float]
  protected: bool = False  # exported or promoted: never pruned


class RetentionPolicy(Protocol):

  def keep(self, candidates: Sequence[Candidate]) -> set[int]:
    """The ids among `candidates` this policy wants kept."""


@dataclasses.dataclass(frozen=True)
class KeepLast:
  k: int

  def __post_init__(self):
    if self.k < 1:
      raise ValueError(f"KeepLast needs k >= 1. Received: {self.k}")

  def keep(self, candidates: Sequence[Candidate]) -> set[int]:
    newest = sorted(candidates, key=lambda c: (c.step, c.id))[-self.k:]
    return {c.id for c in newest}


@dataclasses.dataclass(frozen=True)
class KeepBest:
  """Keeps the `k` best by `metric`; checkpoints without it are not ranked."""

  k: int
  metric: str
  mode: str = "min"

  def __post_init__(self):
    if self.k < 1:
      raise ValueError(f"KeepBest needs k >= 1. Received: {self.k}")
    if self.mode not in ("min", "max"):
      raise ValueError(f"KeepBest mode must be 'min' or 'max'. Received: {self.mode!r}")

  def keep(self, candidates: Sequence[Candidate]) -> set[int]:
    ranked = [c for c in candidates
              if self.metric in c.metrics and not math.isnan(c.metrics[self.metric])]
    sign = 1 if self.mode == "min" else -1
    # Ties go to the later step: it has trained longer on the same metric.
    ranked.sort(key=lambda c: (sign * c.metrics[self.metric], -c.step))
    return {c.id for c in ranked[:self.k]}


@dataclasses.dataclass(frozen=True)
class KeepEveryNSteps:
  n: int

  def __post_init__(self):
    if self.n < 1:
      raise ValueError(f"KeepEveryNSteps needs n >= 1. Received: {self.n}")

  def keep(self, candidates: Sequence[Candidate]) -> set[int]:
    return {c.id for c in candidates if c.step % self.n == 0}


@dataclasses.dataclass(frozen=True)
class KeepAny:
  """Keeps what any of `policies` keeps; keeps everything if there is none."""

  policies: tuple[RetentionPolicy, ...]

  def keep(self, candidates: Sequence[Candidate]) -> set[int]:
    if not self.policies:
      return {c.id for c in candidates}
    kept: set[int] = set()
    for policy in self.policies:
      kept |= policy.keep(candidates)
    return kept


def to_prune(policy: RetentionPolicy, candidates: Sequence[Candidate]) -> list[Candidate]:
  """The candidates `policy` lets go, never a protected one nor the newest
  (the newest is what a resume would restore)."""
  if not candidates:
    return []
  kept = policy.keep(candidates)
  newest = max(candidates, key=lambda c: (c.step, c.id))
  return [c for c in candidates
          if c.id not in kept and not c.protected and c.id != newest.id]
