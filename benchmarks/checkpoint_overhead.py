"""Checkpoint overhead: training steps/s with checkpoints vs. without.

Trains MLPs of about 1M, 5M and 25M parameters on synthetic data with the
product's own `TrainingLoop` and a real MLMD SQLite sink
(`MlmdCheckpointSink`), so every checkpoint is written, verified, hashed,
fsynced, renamed, registered in MLMD and pruned (keep last 2) exactly as the
Trainer does it.

Noise control (the machines are shared; other processes take a varying
share of the 2 cores, and absolute speed drifts by tens of percent within
seconds): each configuration (size, sync/async, interval N) is one training
run that alternates blocks of L steps without checkpoints (A) and with a
checkpoint every N steps (B), in the order A B B A A B ... A B block saves
at its first step and every N steps after, and its time includes waiting,
at its end, for its async checkpoints to be registered and pruned: per N
steps it pays for exactly one complete checkpoint, as in steady state. A
warm-up (tracing, and two checkpoints, so the first-save setup of TF's async
checkpointer is not measured) precedes the blocks and is not timed. Every
step is timed, and two estimates of steps/s with vs. without are reported:

* block ratio (the headline): the median over adjacent A/B block pairs of
  their steps/s ratio. Exact when the machine is quiet; when other
  processes load it, single pairs swing by +-20% and the median of a few
  pairs by several percent;
* period ratio: N x step / (N x step + cost), where the cost of one
  checkpoint is measured inside each checkpoint period of the B blocks: the
  time of the period's first half (the save, and the steps its background
  work slows) beyond the same number of steps at the pace of the period's
  second half, a second or two later under the same load; the median over
  periods (see `local_cost`). The same computation on A blocks is a control
  (~0). Only with at least MIN_PERIODS periods.

  .venv/bin/python benchmarks/checkpoint_overhead.py          # default, < 10 min on 2 cores
  .venv/bin/python benchmarks/checkpoint_overhead.py --full   # every size x interval, more pairs

Prints a table, writes benchmarks/results/checkpoint_overhead.json, and
prints last the ratio of the target configuration (async, every 100 steps,
5M parameters; target >= 0.97).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from typing import Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import measure  # noqa: E402

SIZES = {"1M": 1_000_000, "5M": 5_000_000, "25M": 25_000_000}
NUM_FEATURES = 16
NUM_CLASSES = 10
WARMUP_STEPS = 30
MIN_PERIODS = 4  # checkpoint periods needed for a within-period estimate
TARGET = ("5M", "async", 100)
TARGET_RATIO = 0.97

# size -> interval -> (block length L, pairs): the default run, sized to
# finish in under 10 minutes on 2 cores (25M only at the target interval).
DEFAULT_PLAN = {
    "1M": {50: (200, 2), 100: (200, 3), 500: (500, 1)},
    "5M": {50: (100, 2), 100: (100, 8), 500: (500, 1)},
    "25M": {100: (100, 1)},
}
FULL_PLAN = {
    "1M": {50: (500, 6), 100: (500, 6), 500: (500, 6)},
    "5M": {50: (500, 6), 100: (500, 6), 500: (500, 6)},
    "25M": {50: (500, 4), 100: (500, 4), 500: (500, 4)},
}


@dataclasses.dataclass(frozen=True)
class BlockSaves:
  """Save policy of one benchmark run: two saves during warm-up, then, in the
  B blocks only, a save at the block's first step and every `every` steps."""

  warmup_saves: tuple[int, ...]
  warmup: int
  block: int
  every: int
  b_blocks: frozenset

  def block_of(self, step: int) -> int | None:
    """Index of the block that `step` is in (None in the warm-up)."""
    return None if step <= self.warmup else (step - self.warmup - 1) // self.block

  def should_save(self, progress) -> bool:
    step = progress.step
    if step in self.warmup_saves:
      return True
    index = self.block_of(step)
    if index is None or index not in self.b_blocks:
      return False
    offset = (step - self.warmup - 1) % self.block
    return offset % self.every == 0


def block_order(pairs: int) -> list[str]:
  """A B B A A B B A ...: each pair is adjacent, and the order alternates so
  a steady drift in speed favours neither side."""
  order = []
  for i in range(pairs):
    order += ["A", "B"] if i % 2 == 0 else ["B", "A"]
  return order


def hidden_width(parameters: int) -> int:
  """Width H of an MLP 16 -> H -> H -> 10 with about `parameters` weights
  (H^2 + (16 + 10 + 3) H + 10 = parameters)."""
  b = NUM_FEATURES + NUM_CLASSES + 3
  return int((-b + math.sqrt(b * b + 4 * (parameters - NUM_CLASSES))) / 2)


def build_setup(parameters: int, seed: int, rng):
  """A TrainingSetup: MLP with ~`parameters` weights, Adam, a running loss,
  input noise from the checkpointed RNG (the shape of pipeline/model.py)."""
  import tensorflow as tf
  from ckptflow.components.trainer.contract import TrainingSetup

  width = hidden_width(parameters)
  keys = [f"f{i:02d}" for i in range(NUM_FEATURES)]
  inputs = {k: tf.keras.layers.Input(shape=(1,), name=k, dtype=tf.float32) for k in keys}
  x = tf.keras.layers.Concatenate()(list(inputs.values()))
  for i in range(2):
    x = tf.keras.layers.Dense(width, activation="relu", name=f"hidden_{i}",
                              kernel_initializer=tf.keras.initializers.GlorotUniform(
                                  seed=seed + i))(x)
  outputs = tf.keras.layers.Dense(NUM_CLASSES, activation="softmax", name="head")(x)
  model = tf.keras.Model(inputs=inputs, outputs=outputs)
  optimizer = tf.keras.optimizers.Adam(1e-3)
  running_loss = tf.Variable(0.0, trainable=False, name="running_loss")
  loss_fn = tf.keras.losses.SparseCategoricalCrossentropy()

  def train_step(features, labels):
    features = {k: v + rng.normal(tf.shape(v), stddev=0.01) for k, v in features.items()}
    with tf.GradientTape() as tape:
      loss = loss_fn(labels, model(features, training=True))
    gradients = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    running_loss.assign(0.98 * running_loss + 0.02 * loss)
    return {"loss": loss, "running_loss": running_loss.read_value()}

  setup = TrainingSetup(model=model, optimizers={"adam": optimizer},
                        variables={"running_loss": running_loss}, train_step=train_step)
  return setup, keys, model.count_params()


def synthetic_batches(keys: Sequence[str], batch_size: int, seed: int):
  """Random examples through the Trainer's input pipeline
  (`executor.make_dataset`): serialized tf.Examples, repeated, shuffled
  (1024), batched, parsed. The shuffle buffer holds serialized examples, as
  in the product: its state is part of every checkpoint (the data position),
  and a buffer of parsed feature dicts would cost several times more to
  save."""
  import numpy as np
  import tensorflow as tf
  generator = np.random.default_rng(seed)
  n = 4096
  features = generator.normal(size=(n, len(keys))).astype(np.float32)
  labels = generator.integers(0, NUM_CLASSES, size=n)
  serialized = []
  for i in range(n):
    feature = {k: tf.train.Feature(float_list=tf.train.FloatList(value=[features[i, j]]))
               for j, k in enumerate(keys)}
    feature["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[labels[i]]))
    serialized.append(tf.train.Example(
        features=tf.train.Features(feature=feature)).SerializeToString())
  spec = {k: tf.io.FixedLenFeature([1], tf.float32) for k in keys}
  spec["label"] = tf.io.FixedLenFeature([1], tf.int64)

  def parse(batch):
    parsed = tf.io.parse_example(batch, spec)
    labels = parsed.pop("label")
    return parsed, labels

  dataset = (tf.data.Dataset.from_tensor_slices(serialized).repeat()
             .shuffle(1024, seed=seed, reshuffle_each_iteration=True)
             .batch(batch_size, drop_remainder=True).map(parse))
  return dataset, n


class StageTimes:
  """Wall time of each stage of a checkpoint: the save call on the training
  thread, and on the finisher thread the wait for the async write, verify,
  hash, fsync + rename, MLMD registration and pruning. Measured by wrapping
  the functions the loop calls; the loop's code is unchanged."""

  FILE_STAGES = ("verify_readable", "digest", "publish")

  def __init__(self):
    self.seconds: dict[str, list[float]] = {}
    self.cpu_seconds: dict[str, list[float]] = {}

  def _timed(self, name, function):
    def timed(*args, **kwargs):
      start, cpu = time.perf_counter(), time.thread_time()
      try:
        return function(*args, **kwargs)
      finally:
        self.seconds.setdefault(name, []).append(time.perf_counter() - start)
        self.cpu_seconds.setdefault(name, []).append(time.thread_time() - cpu)
    return timed

  def install(self, loop, sink):
    """Wraps this loop's save machinery; returns a function that undoes the
    module-level wraps."""
    from ckptflow.components.trainer import checkpoint_files
    originals = {name: getattr(checkpoint_files, name) for name in self.FILE_STAGES}
    for name, function in originals.items():
      setattr(checkpoint_files, name, self._timed(name, function))
    state = loop.state  # the tf.train.Checkpoint the loop saves
    state.write = self._timed("save call (training thread)", state.write)
    state.sync = self._timed("wait for async write", state.sync)
    # The save machinery is `loop.checkpointer` (older loop.py: the loop).
    owner = getattr(loop, "checkpointer", loop)
    owner._prune = self._timed("prune", owner._prune)
    sink.register = self._timed("MLMD register", sink.register)

    def undo():
      for name, function in originals.items():
        setattr(checkpoint_files, name, function)
    return undo

  def summary(self) -> dict:
    return {name: {"count": len(v), "median_ms": 1000 * measure.median(v),
                   "p95_ms": 1000 * measure.percentile(v, 95),
                   "cpu_median_ms": 1000 * measure.median(self.cpu_seconds[name])}
            for name, v in self.seconds.items()}


def wait_for_saves(loop) -> None:
  """Blocks until every checkpoint the loop started is registered."""
  checkpointer = getattr(loop, "checkpointer", None)
  if checkpointer is not None:
    checkpointer.wait()
  else:  # loop.py before the Checkpointer split
    loop._wait_for_saves()


def run_config(size: str, mode: str, every: int, block: int, pairs: int, *, setup, batches,
               examples: int, rng, store, workdir: str, batch_size: int, run_index: int,
               profile: bool) -> dict:
  """One TrainingLoop run of alternating A/B blocks; returns its pairs."""
  from ml_metadata.proto import metadata_store_pb2
  from ckptflow.components.trainer import policies
  from ckptflow.base.progress import TrainingReporter
  from ckptflow.components.trainer.loop import LoopSettings, TrainingLoop
  from ckptflow.components.trainer.registration import MlmdCheckpointSink

  type_id = store.put_execution_type(metadata_store_pb2.ExecutionType(name="bench.TrainerRun"))
  [execution_id] = store.put_executions([metadata_store_pb2.Execution(
      type_id=type_id, last_known_state=metadata_store_pb2.Execution.RUNNING)])
  run_key = hashlib.sha256(f"bench-{run_index}".encode()).hexdigest()
  sink = MlmdCheckpointSink(store, execution_id, run_key)
  checkpoint_dir = os.path.join(workdir, f"run-{run_index}")
  order = block_order(pairs)
  # Two warm-up saves: TF's async checkpointer sets itself up on the first
  # and traces its copy function on the second.
  policy = BlockSaves(warmup_saves=(WARMUP_STEPS // 3, 2 * WARMUP_STEPS // 3),
                      warmup=WARMUP_STEPS, block=block,
                      every=every, b_blocks=frozenset(i for i, k in enumerate(order) if k == "B"))
  total = WARMUP_STEPS + block * len(order)
  stamps: list[float] = []
  cpu_stamps: dict[int, float] = {}  # step -> process CPU seconds, at block edges
  loop_box = []

  class StepClock(TrainingReporter):
    def step(self, step: int, loss: float | None = None) -> None:
      clock(step)

  def clock(_step: int) -> None:
    step = len(stamps) + 1
    if step >= WARMUP_STEPS and (step - WARMUP_STEPS) % block == 0 and step <= total:
      # End of the warm-up or of a block: its checkpoints' work is finished
      # before the clock is read (counted in the block that caused it).
      wait_for_saves(loop_box[0])
      usage = resource.getrusage(resource.RUSAGE_SELF)
      cpu_stamps[step] = usage.ru_utime + usage.ru_stime
    stamps.append(time.perf_counter())

  loop = TrainingLoop(
      setup, batches=batches, eval_batches=None, rng=rng,
      settings=LoopSettings(
          train_steps=total + 1, checkpoint_dir=checkpoint_dir,
          fingerprint="benchmark", resume_key=run_key, examples_per_epoch=examples,
          batch_size=batch_size, async_checkpoint=mode == "async"),
      save_policy=policy, retention=policies.KeepLast(2), sink=sink, progress=StepClock())
  loop_box.append(loop)
  stages = StageTimes() if profile else None
  undo = stages.install(loop, sink) if stages else None
  try:
    result = loop.run()
  finally:
    if undo:
      undo()
  [execution] = store.get_executions_by_id([execution_id])
  execution.last_known_state = metadata_store_pb2.Execution.COMPLETE
  store.put_executions([execution])
  shutil.rmtree(checkpoint_dir, ignore_errors=True)
  if result.final_step != total + 1:
    raise RuntimeError(f"run stopped at step {result.final_step}, expected {total + 1}")

  def block_seconds(i: int) -> float:
    start = WARMUP_STEPS + i * block  # stamps[s - 1] is read after step s
    return stamps[start + block - 1] - stamps[start - 1]

  seconds = {k: [] for k in "AB"}
  cpu = {k: [] for k in "AB"}
  for i, kind in enumerate(order):
    seconds[kind].append(block_seconds(i))
    start = WARMUP_STEPS + i * block
    cpu[kind].append(cpu_stamps[start + block] - cpu_stamps[start])
  ratios = [a / b for a, b in zip(seconds["A"], seconds["B"])]
  local = local_cost(stamps, order, block, every)
  saves_per_block = block // every
  extra_cpu = [(b - a) / saves_per_block for a, b in zip(cpu["A"], cpu["B"])]
  saves = len(result.checkpoints)
  expected_saves = 2 + pairs * (block // every) + 1  # warm-up, B blocks, final
  if saves != expected_saves:
    raise RuntimeError(f"{saves} checkpoints registered, expected {expected_saves}")
  return {"size": size, "mode": mode, "every": every, "block_steps": block,
          "pairs": pairs, "order": "".join(order),
          "none_steps_per_second": [block / s for s in seconds["A"]],
          "checkpoint_steps_per_second": [block / s for s in seconds["B"]],
          "ratios": ratios, "ratio_median": measure.median(ratios),
          "step_ratio": local["ratio"], "local": local,
          "cpu_seconds_per_block": cpu,
          "cpu_ratio_median": measure.median(a / b for a, b in zip(cpu["A"], cpu["B"])),
          "extra_cpu_ms_per_checkpoint": 1000 * measure.median(extra_cpu),
          "checkpoint_bytes": result.checkpoints[-1].size_bytes,
          "stage_times": stages.summary() if stages else None}


def local_cost(stamps: Sequence[float], order: Sequence[str], block: int,
               every: int) -> dict:
  """What one checkpoint costs the training, measured inside each checkpoint
  period, robust to slow drift in the machine's load.

  A period is the N steps from a save. Its first half holds the save step
  and the steps its background work slows; its second half, measured a
  second or two later under the same load, is the baseline. The cost is
  the first half's time beyond N/2 baseline steps (plus, for a block's last
  period, its final step's excess: the wait for the block's checkpoints).
  The same computation on A blocks (no checkpoint) is a control that should
  come out near zero. The cost is the median over periods (a burst of
  another process's load inflates one period, not the median); with fewer
  than MIN_PERIODS periods there is no estimate (None). Returns ms and the
  ratio N x baseline / (N x baseline + cost)."""
  half = every // 2
  found = {"A": [], "B": []}
  baselines = []
  periods = block // every
  for i, kind in enumerate(order):
    start = WARMUP_STEPS + i * block  # steps start+1 .. start+block
    for p in range(periods):
      first = start + p * every + 1
      durations = [stamps[s - 1] - stamps[s - 2] for s in range(first, first + every)]
      last_in_block = p == periods - 1
      tail = durations[half:-1] if last_in_block else durations[half:]
      baseline = sum(tail) / len(tail)
      excess = sum(durations[:half]) - half * baseline
      if last_in_block:
        excess += durations[-1] - baseline
      found[kind].append(excess)
      if kind == "B":
        baselines.append(baseline)

  step = measure.median(baselines)
  summary = {"periods": len(found["B"]), "baseline_step_ms": 1000 * step,
             "period_costs_ms": [1000 * c for c in found["B"]],
             "control_costs_ms": [1000 * c for c in found["A"]],
             "cost_ms": None, "cost_p25_ms": None, "cost_p75_ms": None,
             "control_ms": None, "ratio": None}
  if len(found["B"]) >= MIN_PERIODS:
    cost = measure.median(found["B"])
    summary |= {"cost_ms": 1000 * cost,
                "cost_p25_ms": 1000 * measure.percentile(found["B"], 25),
                "cost_p75_ms": 1000 * measure.percentile(found["B"], 75),
                "control_ms": 1000 * measure.median(found["A"]),
                "ratio": every * step / (every * step + cost)}
  return summary


def parse_plan(text: str) -> dict:
  """"5M:100=200x4,1M:50=500x2" -> {size: {every: (block, pairs)}}."""
  plan: dict = {}
  for item in text.split(","):
    try:
      size, _, rest = item.partition(":")
      every, _, shape = rest.partition("=")
      block, _, pairs = shape.partition("x")
      plan.setdefault(size, {})[int(every)] = (int(block), int(pairs))
    except ValueError as e:
      raise SystemExit(f"--plan: cannot parse {item!r}. Expected SIZE:EVERY=BLOCKxPAIRS, "
                       "e.g. 5M:100=200x4") from e
  return plan


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--full", action="store_true",
                      help="every size x interval, 500-step blocks, 4-6 pairs (hours on 2 cores)")
  parser.add_argument("--plan", default=None,
                      help="what to run, as SIZE:EVERY=BLOCKxPAIRS,... "
                      "(e.g. 5M:100=200x6); overrides the default plan")
  parser.add_argument("--modes", default="sync,async")
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--profile", action="store_true",
                      help="also report the time of each checkpoint stage")
  parser.add_argument("--workdir", default=None,
                      help="scratch directory on the disk to measure (default: a temp dir)")
  parser.add_argument("--threads", type=int, default=0,
                      help="TensorFlow intra-op threads for training (default 0: one "
                      "per core); 1 leaves a core free for checkpointing")
  parser.add_argument("--seed", type=int, default=7)
  parser.add_argument("--out", default=None, help="result JSON (default: benchmarks/results/)")
  args = parser.parse_args(argv)

  plan = parse_plan(args.plan) if args.plan else (FULL_PLAN if args.full else DEFAULT_PLAN)
  for size, intervals in plan.items():
    if size not in SIZES:
      parser.error(f"unknown size {size!r}. Expected one of {', '.join(SIZES)}")
    for every, (block, pairs) in intervals.items():
      if every < 1 or block % every or pairs < 1:
        parser.error(f"{size}: interval {every} must divide the block length {block}, "
                     "and pairs must be >= 1")
  modes = args.modes.split(",")

  import tensorflow as tf
  from ckptflow.base import metadata

  if args.threads:
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
  tf.keras.utils.set_random_seed(args.seed)
  tf.config.experimental.enable_op_determinism()  # as the Trainer does
  workdir = args.workdir or tempfile.mkdtemp(prefix="ckptflow-bench-overhead-")
  os.makedirs(workdir, exist_ok=True)
  store = metadata.open_store(os.path.join(workdir, "metadata.sqlite"))

  results = []
  run_index = 0
  started = time.monotonic()
  try:
    for size, intervals in plan.items():
      rng = tf.random.Generator.from_seed(args.seed)
      setup, keys, parameters = build_setup(SIZES[size], args.seed, rng)
      batches, examples = synthetic_batches(keys, args.batch_size, args.seed)
      for every, (block, pairs) in sorted(intervals.items()):
        for mode in modes:
          run_index += 1
          outcome = run_config(size, mode, every, block, pairs, setup=setup,
                               batches=batches, examples=examples, rng=rng, store=store,
                               workdir=workdir, batch_size=args.batch_size,
                               run_index=run_index, profile=args.profile)
          outcome["parameters"] = parameters
          results.append(outcome)
          measure.log(f"[{time.monotonic() - started:5.0f}s] {size} {mode:<5} every {every:<4} "
                      f"block pairs {', '.join(f'{r:.3f}' for r in outcome['ratios'])}")
  finally:
    if not args.workdir:
      shutil.rmtree(workdir, ignore_errors=True)

  print(f"checkpoint overhead: steps/s with a checkpoint every N steps vs. without "
        f"(batch {args.batch_size}, keep last 2, MLMD SQLite)")
  rows = []
  for r in results:
    rows.append([r["size"], f"{r['parameters'] / 1e6:.1f}M",
                 f"{r['checkpoint_bytes'] / 1e6:.0f} MB", r["mode"], r["every"],
                 f"{r['pairs']}x{r['block_steps']}",
                 measure.median(r["none_steps_per_second"]),
                 measure.median(r["checkpoint_steps_per_second"]),
                 r["ratio_median"], f"{min(r['ratios']):.3f}-{max(r['ratios']):.3f}",
                 "n/a" if r["step_ratio"] is None else f"{r['step_ratio']:.3f}",
                 "n/a" if r["local"]["cost_ms"] is None else
                 f"{r['local']['cost_ms']:.0f} ({r['local']['cost_p25_ms']:.0f}-"
                 f"{r['local']['cost_p75_ms']:.0f})",
                 "n/a" if r["local"]["control_ms"] is None else f"{r['local']['control_ms']:.0f}"])
  measure.print_table(["size", "params", "checkpoint", "mode", "every", "pairs x steps",
                       "none steps/s", "ckpt steps/s", "block ratio", "block range",
                       "period ratio", "ms/ckpt (IQR)", "control ms"], rows)
  print("block ratio: median over adjacent A/B block pairs of steps/s with / without "
        "checkpoints (range: min-max). period ratio = N x step / (N x step + ms/ckpt), "
        "where ms/ckpt is the median over checkpoint periods of what the checkpoint adds "
        "(a period's first half vs. its second half); control ms: the same on blocks "
        "without checkpoints (~0 when the estimate is sound); n/a: fewer than "
        f"{MIN_PERIODS} periods.")
  if args.profile:
    print("\nper-checkpoint stages, median wall ms / CPU ms of the thread that ran it:")
    stage_names = []
    for r in results:
      stage_names += [n for n in r["stage_times"] if n not in stage_names]
    measure.print_table(
        ["size", "mode", "every"] + stage_names,
        [[r["size"], r["mode"], r["every"]]
         + [f"{r['stage_times'][n]['median_ms']:.1f} / {r['stage_times'][n]['cpu_median_ms']:.1f}"
            if n in r["stage_times"] else "-" for n in stage_names] for r in results])

  size, mode, every = TARGET
  target = next((r for r in results if (r["size"], r["mode"], r["every"]) == TARGET), None)
  target_name = f"{mode}, every {every} steps, {size} params"
  document = {"settings": {"plan": {s: {str(n): list(v) for n, v in p.items()}
                                    for s, p in plan.items()},
                           "modes": modes, "batch_size": args.batch_size,
                           "warmup_steps": WARMUP_STEPS, "retention": "keep last 2",
                           "intra_op_threads": args.threads or "one per core",
                           "seed": args.seed},
              "results": results,
              "target": {"configuration": target_name, "threshold": TARGET_RATIO,
                         "ratio": target["ratio_median"] if target else None,
                         "period_ratio": target["step_ratio"] if target else None,
                         "met": bool(target and target["ratio_median"] >= TARGET_RATIO)}}
  path = measure.write_results("checkpoint_overhead", document, args.out)
  print(f"results: {os.path.relpath(path, measure.REPO)}")
  if target is None:
    last = results[-1]
    print(f"ratio checkpoint overhead ({last['mode']}, every {last['every']} steps, "
          f"{last['size']} params; target configuration not measured): "
          f"{last['ratio_median']:.3f}")
  else:
    period = ("n/a" if target["step_ratio"] is None else
              f"{target['step_ratio']:.3f}, {target['local']['cost_ms']:.0f} ms per checkpoint")
    measure.print_ratio(f"checkpoint overhead ({target_name}; steps/s with / without, "
                        f"median of block pairs; within-period estimate {period})",
                        target["ratio_median"], f">= {TARGET_RATIO}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
