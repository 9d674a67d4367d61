"""The checkpointing training loop.

`Checkpointer` saves, publishes, registers, prunes and restores a training
state; `TrainingLoop` drives it from a custom loop and `keras_callback`
from `model.fit`.

`TrainingLoop` runs the user's `train_step` and owns the whole training
state as one `tf.train.Checkpoint`: the model, every optimizer, the user's
extra variables, the step counter, the RNG and the input iterator (so a
resumed run continues at the same place in the data). It asks a
`SavePolicy` when to save, writes each checkpoint atomically
(`checkpoint_files`), hands it to a `CheckpointSink` (MLMD) once it is
complete and verified, and prunes with a `RetentionPolicy`. It tells a
`TrainingReporter` (by default the process's `base.progress` display) the
step, loss and last checkpoint as it goes.

Guarantees:
* A checkpoint reaches the sink only after its files are complete, readable
  and hashed; the sink records exactly those bytes.
* With async saving, training continues while a checkpoint is written; the
  checkpoint is verified and registered when the write has finished, never
  before. At most one checkpoint is in flight (the next save first waits for
  the previous one), so a kill costs at most one interval with sync saving
  and at most two with async saving. The loop waits for every outstanding
  write before returning.
* Resume tries registered checkpoints newest first and skips (and marks
  ABANDONED) one whose files fail their checksum or do not restore.
* On SIGTERM/SIGINT the loop saves and registers at the next step boundary,
  then raises `TrainingInterrupted`.

Under a distribution strategy (a `distribution.Cluster`), every worker runs
this loop in step: each takes its save and stop decisions from values agreed
by an all-reduce (the chief's clock decides time-based saves; a signal on
any worker stops all), so all save at the same step. The chief's
`Checkpointer` publishes and registers; the others write the same
checkpoint into a temporary directory they delete (a save is a collective
for some variables). Resume: the chief picks the checkpoint, the others
restore the one it names, and all agree that every worker succeeded.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import tempfile
import time
from typing import Mapping, Protocol, Sequence

import tensorflow as tf

from ckptflow.components.checkpoint import CheckpointRecord, NewCheckpoint
from ckptflow.components.trainer import checkpoint_files
from ckptflow.components.trainer import policies
from ckptflow.components.trainer.contract import TrainingSetup, default_eval_step
from ckptflow.components.trainer.distribution import Cluster
from ckptflow.base import storage
from ckptflow.base.errors import CheckpointError, Interrupted
from ckptflow.base.faults import fault_point
from ckptflow.base.progress import TrainingReporter, current as current_progress

_log = logging.getLogger(__name__)


class TrainingInterrupted(Interrupted):
  """Training stopped on a signal after saving and registering a checkpoint
  of `step`; the orchestrator may retry, and the retry resumes there."""

  def __init__(self, signum: int, step: int):
    super().__init__(f"training stopped by signal {signum} at step {step} "
                     "after saving a checkpoint; rerun to resume", signum)
    self.step = step


class CheckpointSink(Protocol):
  """Where checkpoints are recorded (MLMD in the Trainer)."""

  def resume_candidates(self) -> Sequence[CheckpointRecord]:
    """Registered checkpoints this run may resume from, newest first."""

  def register(self, checkpoint: NewCheckpoint) -> CheckpointRecord:
    """Records a complete, verified checkpoint; returns its record."""

  def record_restored(self, record: CheckpointRecord, key: str) -> None:
    """Records that this run restored `record` (key: resume, warm_start)."""

  def live(self) -> Sequence[CheckpointRecord]:
    """This run's live checkpoints, fresh from the store."""

  def mark_deleted(self, records: Sequence[CheckpointRecord]) -> None:
    """Records that these checkpoints' files are gone."""

  def mark_abandoned(self, record: CheckpointRecord, reason: str) -> None:
    """Records that a checkpoint is unusable (its files are damaged)."""


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  train_steps: int
  checkpoint_dir: str  # this execution's directory of step-N/ checkpoints
  fingerprint: str
  resume_key: str
  examples_per_epoch: int
  batch_size: int
  async_checkpoint: bool = False
  eval_every: int = 0


@dataclasses.dataclass
class LoopResult:
  final_step: int
  resumed_from: CheckpointRecord | None
  checkpoints: list[CheckpointRecord]
  final_checkpoint: CheckpointRecord | None
  metrics: Mapping[str, float]


class Checkpointer:
  """Saves, publishes, registers, prunes and restores one training state.

  Shared by the custom loop (`TrainingLoop`) and the Keras `model.fit`
  callback (`keras_callback.py`), so both produce the same checkpoints and
  MLMD records. `state` is the `tf.train.Checkpoint` of everything that must
  come back on resume.

  Retention deletes only below this node's checkpoint root, the directory
  two levels above `checkpoint_dir` (`<node>/checkpoints/<run>/exec-<id>`):
  a record that names files anywhere else (a store copied along with its
  home, or shared with another one) is left LIVE with its files, and the
  refusal is logged (`storage.check_within_roots`).
  """

  def __init__(self, state: tf.train.Checkpoint, *, checkpoint_dir: str,
               fingerprint: str, resume_key: str, sink: CheckpointSink | None,
               retention: policies.RetentionPolicy, async_checkpoint: bool = False,
               cluster: Cluster | None = None, properties: Mapping[str, int] | None = None):
    """`sink` None: a non-chief worker's checkpointer, which writes each
    checkpoint into a temporary directory and deletes it (it takes part in
    the save's collectives; the chief's copy is the one kept). `properties`:
    extra integer properties of every registered checkpoint (replicas)."""
    self._state = state
    self._checkpoint_dir = checkpoint_dir
    self._fingerprint = fingerprint
    self._resume_key = resume_key
    self._sink = sink
    self._retention = retention
    self._async = async_checkpoint
    self._cluster = cluster
    self._properties = dict(properties or {})
    self._scratch = None if sink is not None else tempfile.mkdtemp(prefix="ckptflow-worker-")
    # One worker finishes checkpoints in order: wait for the write, verify,
    # hash, publish, register, prune. Sync saving runs the same code inline.
    self._finisher = concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="checkpoint-finisher")
    self._pending: list[concurrent.futures.Future] = []
    self.registered: list[CheckpointRecord] = []
    # Deletes stay inside the pipeline root's node directory (the delete
    # guard): a local path, or a bucket prefix.
    if storage.is_remote(checkpoint_dir):
      self._roots = (checkpoint_dir.rstrip("/").rsplit("/", 2)[0],)
      storage.prepare(checkpoint_dir)  # tensorflow-io before TensorFlow opens it
    else:
      self._roots = (os.path.dirname(os.path.dirname(os.path.abspath(checkpoint_dir))),)
      if sink is not None:
        os.makedirs(checkpoint_dir, exist_ok=True)

  @property
  def is_chief(self) -> bool:
    return self._sink is not None

  @property
  def state(self) -> tf.train.Checkpoint:
    return self._state

  def restore_from(self, record: CheckpointRecord, key: str) -> bool:
    """Restores `record` if its files are intact; False (and ABANDONED in
    the sink) if they are not."""
    try:
      checkpoint_files.verify_against_record(record.uri, record.checksum)
      status = self._state.read(checkpoint_files.prefix(record.uri))
      status.assert_existing_objects_matched()
    except (CheckpointError, tf.errors.OpError, AssertionError, ValueError) as e:
      _log.warning("skipping checkpoint %d (step %d): %s", record.id, record.step,
                   str(e).splitlines()[0])
      self._sink.mark_abandoned(record, str(e).splitlines()[0])
      return False
    self._sink.record_restored(record, key)
    return True

  def resume(self) -> CheckpointRecord | None:
    """Restores the newest intact checkpoint of an unfinished earlier run.

    Under a cluster the chief picks and restores it, then hands its uri to
    the other workers, which restore it too; all then agree that every
    worker succeeded (CheckpointError otherwise). Non-chiefs return None:
    the record is the chief's to report."""
    record = None
    if self.is_chief:
      for candidate in self._sink.resume_candidates():
        if self.restore_from(candidate, "resumed_from"):
          _log.info("resumed from checkpoint %d at step %d", candidate.id, candidate.step)
          record = candidate
          break
    if self._cluster is not None:
      self._restore_shared("resume", record)
    return record

  def _restore_shared(self, key: str, record: CheckpointRecord | None,
                      parts: dict | None = None, *, complete: bool = True) -> None:
    """The chief's choice of `record` restored on every worker: the whole
    state, or only `parts` (a warm start; `complete`: every object in them
    must come from the checkpoint)."""
    cluster = self._cluster
    plan = json.loads(cluster.share(
        f"ckptflow/{key}",
        json.dumps(None if record is None else {"uri": record.uri, "id": record.id,
                                                "checksum": record.checksum})
        if self.is_chief else None))
    ok, problem = 1.0, ""
    if plan is not None and not self.is_chief:
      try:
        checkpoint_files.verify_against_record(plan["uri"], plan["checksum"])
        target = tf.train.Checkpoint(**parts) if parts else self._state
        status = target.read(checkpoint_files.prefix(plan["uri"]))
        if parts:
          if complete:
            status.assert_existing_objects_matched()
          status.expect_partial()
        else:
          status.assert_existing_objects_matched()
      except (CheckpointError, tf.errors.OpError, AssertionError, ValueError) as e:
        ok, problem = 0.0, str(e).splitlines()[0]
        _log.error("worker %d could not restore checkpoint %s: %s",
                   cluster.worker_index, plan["id"], problem)
    [restored] = cluster.agree([ok])
    if restored < cluster.num_workers:
      raise CheckpointError(
          f"{cluster.num_workers - int(restored)} worker(s) could not restore checkpoint "
          f"{plan['id']} ({plan['uri']}){': ' + problem if problem else ''}")

  def _warm_start_parts(self, model: tf.keras.Model, mode: str, restore_step: bool) -> dict:
    """What a warm start of `mode` restores."""
    parts: dict = {"model": model}
    if mode == "full":
      parts["optimizers"] = self._state.optimizers
      parts["variables"] = self._state.variables
      if restore_step:
        parts["step"] = self._state.step
    return parts

  def warm_start(self, record: CheckpointRecord | None, model: tf.keras.Model, *,
                 mode: str = "weights", restore_step: bool = False) -> None:
    """Starts this run from `record`, and records it as an input of this
    run (INPUT event key `warm_start`, then the mode: `weights`, `full` or
    `full+step`).

    mode "weights": `model`'s weights only (the optimizers start fresh, the
    step at 0). mode "full": also every optimizer (slots and iterations;
    Keras creates slots on the first step and they are filled from the
    checkpoint then) and the extra variables; the step too with
    `restore_step`, else it starts at 0. Never the RNG or the data position:
    a warm start is a new run.

    Under a cluster the chief passes the record, the others None: they load
    the chief's pick, the same parts.
    """
    if mode not in ("weights", "full"):
      raise ValueError(f"warm start mode must be 'weights' or 'full'. Received: {mode!r}")
    if self._cluster is not None:
      if self.is_chief:
        self._warm_start_local(record, model, mode, restore_step)
      self._restore_shared("warm_start", record,
                           self._warm_start_parts(model, mode, restore_step),
                           complete=mode == "full")
      return
    self._warm_start_local(record, model, mode, restore_step)

  def _warm_start_local(self, record: CheckpointRecord, model: tf.keras.Model,
                        mode: str, restore_step: bool) -> None:
    _log.info("warm start (%s) from checkpoint %d (step %d)", mode, record.id, record.step)
    checkpoint_files.verify_against_record(record.uri, record.checksum)
    partial = tf.train.Checkpoint(**self._warm_start_parts(model, mode, restore_step))
    try:
      status = partial.read(checkpoint_files.prefix(record.uri))
      if mode == "full":
        # Every model, optimizer and extra variable that exists now must
        # come from the checkpoint (slots created later are restored then).
        status.assert_existing_objects_matched()
      status.expect_partial()
    except (tf.errors.OpError, ValueError, AssertionError) as e:
      raise CheckpointError(f"warm start: checkpoint {record.id} does not fit this "
                            f"model: {str(e).splitlines()[0]}") from e
    key = "warm_start" if mode == "weights" else (
        "warm_start:full+step" if restore_step else "warm_start:full")
    self._sink.record_restored(record, key)

  def save(self, step: int, epoch: int, metrics: Mapping[str, float]) -> None:
    """Writes the state at `step`. Returns once the write has started
    (async) or the checkpoint is registered (sync)."""
    # At most one checkpoint in flight: the previous one is registered
    # before the next write starts, so an async run killed at any moment
    # loses at most two intervals (one for sync saving).
    self.wait()
    if not self.is_chief:
      # Written for the collectives, then thrown away: the chief's is kept.
      scratch = os.path.join(self._scratch, f"step-{step}")
      self._state.write(checkpoint_files.prefix(scratch))
      storage.remove_tree(scratch, (self._scratch,))
      return
    staged = checkpoint_files.write_dir(self._checkpoint_dir, step)
    storage.remove_tree(staged, self._roots)  # a killed attempt's leftover
    options = tf.train.CheckpointOptions(enable_async=self._async)
    self._state.write(checkpoint_files.prefix(staged), options=options)
    fault_point("checkpoint-write")
    future = self._finisher.submit(self._finish, step, epoch, dict(metrics), staged)
    self._pending.append(future)
    if not self._async:
      self.wait()

  def wait(self) -> None:
    """Blocks until every started save is registered; raises its error."""
    for future in self._pending:
      future.result()
    self._pending = []

  def close(self) -> None:
    self._finisher.shutdown(wait=True)
    if self._scratch:
      storage.remove_tree(self._scratch, (tempfile.gettempdir(),))

  def _finish(self, step: int, epoch: int, metrics: Mapping[str, float],
              staged: str) -> CheckpointRecord:
    """Runs on the finisher thread: waits for the write, then publishes."""
    self._state.sync()  # no-op for sync saves; waits for an async write
    checkpoint_files.verify_readable(staged)
    size, checksum = checkpoint_files.digest(staged)
    final = checkpoint_files.final_dir(self._checkpoint_dir, step)
    checkpoint_files.publish(staged, final)
    fault_point("checkpoint-register")
    record = self._sink.register(NewCheckpoint(
        uri=final, step=step, epoch=epoch, metrics=metrics, size_bytes=size,
        checksum=checksum, tf_version=tf.__version__,
        fingerprint=self._fingerprint, resume_key=self._resume_key,
        **self._properties))
    self.registered.append(record)
    self._prune()
    return record

  def _prune(self) -> None:
    live = self._sink.live()
    candidates = [policies.Candidate(id=r.id, step=r.step, metrics=r.metrics,
                                     protected=bool(r.protected)) for r in live]
    doomed_ids = {c.id for c in policies.to_prune(self._retention, candidates)}
    doomed = []
    for record in live:
      if record.id not in doomed_ids:
        continue
      try:
        storage.check_within_roots(record.uri, self._roots)
      except storage.OutsideRootsError:
        continue  # logged; the record stays LIVE, its files untouched
      doomed.append(record)
    if not doomed:
      return
    # MLMD first: a crash in between leaves stray files (swept by `doctor`),
    # never a LIVE artifact without its files.
    self._sink.mark_deleted(doomed)
    for record in doomed:
      try:
        storage.remove_tree(record.uri, self._roots)  # on a bucket: its marker first
      except (OSError, tf.errors.OpError) as e:  # stray files: doctor sweeps them
        _log.warning("could not remove pruned checkpoint %s: %s", record.uri, e)
    _log.info("pruned checkpoints at steps %s", [r.step for r in doomed])


class TrainingLoop:
  """Trains `setup` on `batches`, checkpointing per `save_policy`."""

  def __init__(self, setup: TrainingSetup, *, batches: tf.data.Dataset,
               eval_batches: tf.data.Dataset | None, rng: tf.random.Generator,
               settings: LoopSettings, save_policy: policies.SavePolicy,
               retention: policies.RetentionPolicy, sink: CheckpointSink,
               signal_policy: policies.OnSignal | None = None,
               summary_dir: str | None = None,
               progress: TrainingReporter | None = None,
               cluster: Cluster | None = None):
    """`cluster`: train under its strategy (`setup` built in its scope);
    `sink` is then the chief's, None on the other workers."""
    self._setup = setup
    self._cluster = cluster
    self._settings = settings
    self._save_policy = save_policy
    self._signal_policy = signal_policy
    self._eval_batches = eval_batches
    self._progress = progress or current_progress()
    self._step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    self._iterator = iter(batches)
    state = tf.train.Checkpoint(
        model=setup.model,
        optimizers=dict(setup.optimizers),
        variables=dict(setup.variables),
        step=self._step,
        rng=rng,
        data=self._iterator)
    self.checkpointer = Checkpointer(
        state, checkpoint_dir=settings.checkpoint_dir, fingerprint=settings.fingerprint,
        resume_key=settings.resume_key, sink=sink, retention=retention,
        async_checkpoint=settings.async_checkpoint, cluster=cluster,
        properties={"replicas": cluster.num_replicas if cluster else 1})
    if cluster is None:
      self._train_step = tf.function(setup.train_step)
    else:
      self._train_step = cluster.train_function(setup.train_step)
    self._eval_step = tf.function(setup.eval_step or default_eval_step(setup.model))
    self._summary = tf.summary.create_file_writer(summary_dir) if summary_dir else None
    self._last_eval: dict[str, float] = {}

  @property
  def state(self) -> tf.train.Checkpoint:
    return self.checkpointer.state

  def resume(self) -> CheckpointRecord | None:
    return self.checkpointer.resume()

  def warm_start(self, record: CheckpointRecord, *, mode: str = "weights",
                 restore_step: bool = False) -> None:
    self.checkpointer.warm_start(record, self._setup.model, mode=mode,
                                 restore_step=restore_step)

  def run(self, resumed_from: CheckpointRecord | None = None) -> LoopResult:
    settings = self._settings
    checkpointer = self.checkpointer
    steps_per_epoch = max(1, math.ceil(settings.examples_per_epoch / settings.batch_size))
    step = int(self._step.numpy())
    last_saved_step = step if resumed_from else None
    last_saved_time = time.monotonic()
    metrics: dict[str, float] = {}
    if self._signal_policy:
      self._signal_policy.install()
    self._progress.training_started(step, settings.train_steps)
    outcome = "failed"
    try:
      while step < settings.train_steps:
        features, labels = next(self._iterator)
        if self._cluster is None:
          metrics = {k: float(v) for k, v in self._train_step(features, labels).items()}
        else:
          metrics = self._train_step(*self._cluster.split(features, labels))
        step = int(self._step.assign_add(1).numpy())
        fault_point("train-step")
        if not all(math.isfinite(v) for v in metrics.values()):
          raise FloatingPointError(f"training diverged at step {step}: {metrics}")
        if settings.eval_every and step % settings.eval_every == 0:
          self._evaluate(step)
        self._write_summaries(step, metrics)
        progress = policies.Progress(
            step=step, epoch=(step - 1) // steps_per_epoch,
            epoch_ended=step % steps_per_epoch == 0, now=time.monotonic(),
            last_saved_step=last_saved_step, last_saved_time=last_saved_time)
        save, stop = self._decide(step, progress)
        if save:
          checkpointer.save(step, progress.epoch, metrics | self._last_eval)
          last_saved_step, last_saved_time = step, time.monotonic()
          self._progress.checkpoint_saved(step)
        self._progress.step(step, metrics.get("loss"))
        if stop is not None:
          outcome = "interrupted"
          if last_saved_step != step:
            checkpointer.save(step, progress.epoch, metrics | self._last_eval)
            self._progress.checkpoint_saved(step)
          checkpointer.wait()
          raise TrainingInterrupted(stop, step)
      checkpointer.wait()
      outcome = "finished"
    finally:
      self._progress.training_finished(step, outcome)
      if self._signal_policy:
        self._signal_policy.uninstall()
      checkpointer.close()
      if self._summary:
        self._summary.flush()
    registered = checkpointer.registered
    final = max(registered, key=lambda r: r.step) if registered else resumed_from
    return LoopResult(final_step=step, resumed_from=resumed_from,
                      checkpoints=list(registered), final_checkpoint=final,
                      metrics=metrics | self._last_eval)

  def _decide(self, step: int, progress: policies.Progress) -> tuple[bool, int | None]:
    """(save after this step?, the signal that asks to stop, or None).

    Under a cluster both are agreed by an all-reduce, so every worker acts
    alike at this step: the chief's save policy decides (its clock for
    time-based saves), and a signal on any worker stops them all."""
    save = step == self._settings.train_steps or self._save_policy.should_save(progress)
    received = self._signal_policy.received if self._signal_policy else None
    if self._cluster is None:
      return save, received
    chief_save = float(save) if self._cluster.is_chief else 0.0
    agreed_save, agreed_signal = self._cluster.agree([chief_save, float(received or 0)])
    stop = None
    if agreed_signal:
      # The signal a worker received (one of SIGTERM/SIGINT; if several
      # workers got different ones, their sum names none: use SIGTERM).
      stop = received or int(agreed_signal)
      if stop not in (signal.SIGTERM, signal.SIGINT):
        stop = signal.SIGTERM
    return step == self._settings.train_steps or agreed_save > 0, stop

  def _evaluate(self, step: int) -> None:
    if self._eval_batches is None:
      return
    totals: dict[str, float] = {}
    batches = 0
    for features, labels in self._eval_batches:
      for k, v in self._eval_step(features, labels).items():
        totals[k] = totals.get(k, 0.0) + float(v)
      batches += 1
    self._last_eval = {k: v / max(1, batches) for k, v in totals.items()}
    self._last_eval["eval_at_step"] = float(step)
    self._write_summaries(step, self._last_eval)

  def _write_summaries(self, step: int, metrics: Mapping[str, float]) -> None:
    if self._summary is None:
      return
    with self._summary.as_default(step=step):
      for name, value in metrics.items():
        tf.summary.scalar(name, value)


def count_records(dataset: tf.data.Dataset) -> int:
  return int(dataset.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1).numpy())

