"""Metadata: does MLMD stay fast as checkpoints pile up?

Fills an MLMD store (SQLite file, and a fresh MariaDB/MySQL database) with
1k, 10k and 50k `Checkpoint` artifacts shaped as the Trainer registers them
(declared properties, `state` custom property, external id, OUTPUT event
from a Trainer execution, attributions to the execution's pipeline / run /
node contexts; 100 checkpoints per training run, all but the last 5 pruned
to DELETED), around one served version built like the end-to-end run's
graph: CsvExampleGen -> Examples -> StatisticsGen -> SchemaGen -> Trainer ->
Model -> Evaluator -> ModelBlessing -> Pusher -> PushedModel (bench:1), all
with real MLMD calls. At each size it times:

* registration: `CheckpointRegistry.register` of a new checkpoint by a new
  Trainer execution (what the Trainer does after each save), p50 and p95;
* lineage: `lineage(store, "bench:1")` (served version back to the
  Examples), median and p95;
* prune read: one training run's live checkpoints as the Trainer reads
  them after each save to prune (`MlmdCheckpointSink.live`: the run's own
  events, then its artifacts by id), median; and the filter query on
  `resume_key` (`checkpoints_with_key`), which the Trainer now runs once
  per execution and used to run after every save, median.

Bulk filling uses batched MLMD puts (one transaction per 1000 artifacts)
and is not timed. Each SQLite commit waits for fsyncs, whose latency on a
shared disk depends on what other processes write at the time, so every
size also records the disk's fsync latency while it was measured. The ratio printed last is the scaling of the worse of
registration p50 and lineage median on SQLite, largest size vs. 1k.

Backends: `sqlite` is the file as ckptflow opens it (SQLite's default
rollback journal); `sqlite-wal` is the same with SQLite's write-ahead log
journal, which ckptflow does not use today, measured for comparison;
`mysql` is a fresh MariaDB/MySQL database.

  .venv/bin/python benchmarks/metadata.py                      # all backends, 1k/10k/50k
  .venv/bin/python benchmarks/metadata.py --backends sqlite --sizes 1000,10000

MariaDB: root with an empty password on 127.0.0.1:3306 by default
(--mysql mysql://USER:PASS@HOST:PORT); the benchmark creates its own
database and drops it at the end (with the `mysql` client).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from typing import Callable, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import measure  # noqa: E402
from ml_metadata.proto import metadata_store_pb2 as mlmd_pb  # noqa: E402

from ckptflow.operations import lineage as lineage_lib  # noqa: E402
from ckptflow.components import promotion  # noqa: E402
from ckptflow.components.checkpoint import (CheckpointRegistry, NewCheckpoint,  # noqa: E402
                                            checkpoint_artifact, ensure_checkpoint_type)
from ckptflow.components.trainer.registration import (  # noqa: E402
    MlmdCheckpointSink, checkpoints_with_key)
from ckptflow.base import metadata, mlmd  # noqa: E402

CHECKPOINTS_PER_RUN = 100
LIVE_PER_RUN = 5
BATCH = 1000
MODEL_NAME = "bench"
TARGET_REGISTER_P50_MS = 5.0
TARGET_LINEAGE_MS_AT_10K = 50.0


class Filler:
  """Builds the store's contents with real MLMD calls."""

  def __init__(self, store: metadata.Store, root: str):
    self.store = store
    self.root = root
    self.checkpoint_type_id = ensure_checkpoint_type(store)
    self._artifact_types: dict[str, int] = {}
    self._execution_types: dict[str, int] = {}
    self.pipeline_context = self._context("pipeline", "bench-pipeline")
    self.node_context = self._context("node", "bench-pipeline.Trainer")
    self.checkpoints = 0
    self.runs = 0
    self.examples_id = 0
    self.schema_id = 0

  def artifact_type(self, name: str) -> int:
    if name not in self._artifact_types:
      self._artifact_types[name] = mlmd.ensure_artifact_type(self.store, name)
    return self._artifact_types[name]

  def execution_type(self, name: str) -> int:
    if name not in self._execution_types:
      self._execution_types[name] = mlmd.ensure_execution_type(self.store, name)
    return self._execution_types[name]

  def _context(self, type_name: str, name: str) -> mlmd_pb.Context:
    type_id = mlmd.ensure_context_type(self.store, type_name)
    [context_id] = self.store.put_contexts([mlmd_pb.Context(type_id=type_id, name=name)])
    [context] = self.store.get_contexts_by_id([context_id])
    return context

  def execution(self, type_name: str, inputs: Sequence[int],
                outputs: Sequence[mlmd_pb.Artifact], *, run: str,
                state=mlmd_pb.Execution.COMPLETE) -> tuple[int, list[int]]:
    """A TFX-like execution in its pipeline, run and node contexts."""
    execution = mlmd_pb.Execution(type_id=self.execution_type(type_name),
                                  last_known_state=state)
    pairs = [(None, mlmd.input_event("input", artifact_id)) for artifact_id in inputs]
    pairs += [(artifact, mlmd.output_event("output")) for artifact in outputs]
    run_type = mlmd.ensure_context_type(self.store, "pipeline_run")
    contexts = [self.pipeline_context, self.node_context,
                mlmd_pb.Context(type_id=run_type, name=run)]
    execution_id, artifact_ids, _ = self.store.put_execution(
        execution, pairs, contexts=contexts, reuse_context_if_already_exist=True)
    return execution_id, list(artifact_ids[len(inputs):])

  def artifact(self, type_name: str, uri: str, **custom) -> mlmd_pb.Artifact:
    artifact = mlmd_pb.Artifact(type_id=self.artifact_type(type_name), uri=uri,
                                state=mlmd_pb.Artifact.LIVE)
    mlmd.set_properties(artifact.custom_properties, custom)
    return artifact

  def served_graph(self) -> int:
    """The end-to-end run's graph around one served version; returns the
    Trainer execution id."""
    root = self.root
    _, [self.examples_id] = self.execution(
        "tfx.components.example_gen.csv_example_gen.component.CsvExampleGen", [],
        [self.artifact("Examples", f"{root}/CsvExampleGen/examples/1",
                       split_names='["train", "eval"]', span=0)], run="served")
    _, [statistics_id] = self.execution(
        "tfx.components.statistics_gen.component.StatisticsGen", [self.examples_id],
        [self.artifact("ExampleStatistics", f"{root}/StatisticsGen/statistics/2")],
        run="served")
    _, [self.schema_id] = self.execution(
        "tfx.components.schema_gen.component.SchemaGen", [statistics_id],
        [self.artifact("Schema", f"{root}/SchemaGen/schema/3")], run="served")
    trainer_id, [model_id, _] = self.execution(
        "ckptflow.components.trainer.component.CheckpointingTrainer",
        [self.examples_id, self.schema_id],
        [self.artifact("Model", f"{root}/Trainer/model/4"),
         self.artifact("ModelRun", f"{root}/Trainer/model_run/4")], run="served")
    registry = CheckpointRegistry(self.store, trainer_id)
    for step in (100, 200, 300):
      registry.register(self.new_checkpoint(f"served-{step}", step, "served"))
    _, [blessing_id] = self.execution(
        "tfx.components.evaluator.component.Evaluator", [self.examples_id, model_id],
        [self.artifact("ModelBlessing", f"{root}/Evaluator/blessing/5", blessed=1)],
        run="served")
    version_dir = f"{root}/serving/{MODEL_NAME}/1"
    pushed = self.artifact("PushedModel", version_dir)
    promotion.mark_pushed(pushed, promotion.ServedVersion(
        model_name=MODEL_NAME, version=1, path=version_dir), label="stable", forced=False)
    self.execution("tfx.components.pusher.component.Pusher", [model_id, blessing_id],
                   [pushed], run="served")
    return trainer_id

  def new_checkpoint(self, name: str, step: int, run_key: str) -> NewCheckpoint:
    checksum = hashlib.sha256(name.encode()).hexdigest()
    return NewCheckpoint(
        uri=f"{self.root}/Trainer/checkpoints/{run_key[:16]}/{name}", step=step,
        epoch=step // 50, metrics={"loss": 1.0 / step, "accuracy": 0.9},
        size_bytes=12_345_678, checksum=checksum, tf_version="2.16.2",
        fingerprint="f" * 64, resume_key=run_key)

  def fill_to(self, total: int) -> None:
    """Adds training runs of 100 checkpoints until the store holds `total`
    Checkpoint artifacts (batched puts; each run is a Trainer execution that
    read the served graph's Examples and Schema)."""
    while self.checkpoints < total:
      batch_artifacts, batch_runs = [], []
      while len(batch_artifacts) < BATCH and self.checkpoints + len(batch_artifacts) < total:
        self.runs += 1
        run_key = hashlib.sha256(f"run-{self.runs}".encode()).hexdigest()
        execution_id, _ = self.execution(
            "ckptflow.components.trainer.component.CheckpointingTrainer",
            [self.examples_id, self.schema_id], [], run=f"run-{self.runs}")
        count = min(CHECKPOINTS_PER_RUN, total - self.checkpoints - len(batch_artifacts))
        for i in range(count):
          step = 100 * (i + 1)
          checkpoint = self.new_checkpoint(f"run-{self.runs}-step-{step}", step, run_key)
          # What `CheckpointRegistry.register` writes, already pruned
          # (DELETED) for all but the run's last few.
          batch_artifacts.append(checkpoint_artifact(
              self.checkpoint_type_id, checkpoint,
              state=mlmd_pb.Artifact.LIVE if i >= count - LIVE_PER_RUN
              else mlmd_pb.Artifact.DELETED))
          batch_runs.append((execution_id, step))
      ids = self.store.put_artifacts(batch_artifacts)
      events, attributions = [], []
      contexts_by_execution = {}
      for artifact_id, (execution_id, step) in zip(ids, batch_runs):
        events.append(mlmd.output_event("checkpoints", artifact_id=artifact_id,
                                        execution_id=execution_id, index=step))
        if execution_id not in contexts_by_execution:
          contexts_by_execution[execution_id] = self.store.get_contexts_by_execution(
              execution_id)
        attributions += [mlmd_pb.Attribution(context_id=c.id, artifact_id=artifact_id)
                         for c in contexts_by_execution[execution_id]]
      self.store.put_events(events)
      self.store.put_attributions_and_associations(attributions, [])
      self.checkpoints += len(ids)


def fsync_latency_ms(directory: str, samples: int = 20) -> float:
  """Median time to write 4 KB and fsync it, in `directory`: SQLite commits
  wait for fsyncs, and on a shared disk their latency depends on what every
  other process is writing at the time."""
  path = os.path.join(directory, f".fsync-probe-{os.getpid()}")
  seconds = []
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
  try:
    for _ in range(samples):
      os.write(fd, b"x" * 4096)
      start = time.perf_counter()
      os.fsync(fd)
      seconds.append(time.perf_counter() - start)
  finally:
    os.close(fd)
    os.remove(path)
  return 1000 * measure.median(seconds)


def timed(operation: Callable[[], object], repeats: int) -> list[float]:
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    operation()
    seconds.append(time.perf_counter() - start)
  return seconds


def measure_at(filler: Filler, size: int, *, registrations: int, queries: int,
               workdir: str) -> dict:
  store = filler.store
  fsync_before = fsync_latency_ms(workdir)
  # A new Trainer execution registers `registrations` checkpoints one by one,
  # as the Trainer does after each save.
  filler.runs += 1
  run_key = hashlib.sha256(f"timed-run-{filler.runs}".encode()).hexdigest()
  execution_id, _ = filler.execution(
      "ckptflow.components.trainer.component.CheckpointingTrainer",
      [filler.examples_id, filler.schema_id], [], run=f"timed-run-{filler.runs}",
      state=mlmd_pb.Execution.RUNNING)
  registry = CheckpointRegistry(store, execution_id)
  register_seconds = []
  for i in range(registrations):
    checkpoint = filler.new_checkpoint(f"timed-{filler.runs}-{i}", 100 * (i + 1), run_key)
    start = time.perf_counter()
    registry.register(checkpoint)
    register_seconds.append(time.perf_counter() - start)
  filler.checkpoints += registrations

  graph = lineage_lib.lineage(store, f"{MODEL_NAME}:1")
  types = {n.type_name for n in graph.nodes.values()}
  if "Examples" not in types or graph.truncated:
    raise RuntimeError(f"lineage of {MODEL_NAME}:1 did not reach the Examples: {sorted(types)}")
  lineage_seconds = timed(lambda: lineage_lib.lineage(store, f"{MODEL_NAME}:1"), queries)
  sink = MlmdCheckpointSink(store, execution_id, run_key)
  if len(sink.live()) != registrations:  # the first call finds the run
    raise RuntimeError("the prune read did not find the run's checkpoints")
  # Interleaved, so both face the same load on a shared machine.
  live_seconds, read_seconds = [], []
  for _ in range(queries):
    live_seconds += timed(lambda: checkpoints_with_key(store, run_key), 1)
    read_seconds += timed(sink.live, 1)
  return {
      "checkpoints_in_store": filler.checkpoints, "nominal": size,
      "register_ms_p50": 1000 * measure.percentile(register_seconds, 50),
      "register_ms_p95": 1000 * measure.percentile(register_seconds, 95),
      "lineage_ms_median": 1000 * measure.median(lineage_seconds),
      "lineage_ms_p95": 1000 * measure.percentile(lineage_seconds, 95),
      "lineage_nodes": len(graph.nodes),
      "prune_query_ms_median": 1000 * measure.median(live_seconds),
      "prune_read_ms_median": 1000 * measure.median(read_seconds),
      "fsync_ms": (fsync_before + fsync_latency_ms(workdir)) / 2,
      "registrations": registrations, "queries": queries}


class MysqlDatabase:
  """A database of its own on the server, dropped at the end."""

  def __init__(self, server: str):
    parsed = urllib.parse.urlsplit(server)
    self.host = parsed.hostname or "127.0.0.1"
    self.port = parsed.port or 3306
    self.user = urllib.parse.unquote(parsed.username or "root")
    self.password = urllib.parse.unquote(parsed.password or "")
    self.name = f"ckptflow_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    auth = f"{urllib.parse.quote(self.user)}:{urllib.parse.quote(self.password)}" \
        if self.password else urllib.parse.quote(self.user)
    self.target = f"mysql://{auth}@{self.host}:{self.port}/{self.name}"

  def drop(self) -> None:
    client = shutil.which("mariadb") or shutil.which("mysql")
    if client is None:
      measure.log(f"warning: no mysql client to drop database {self.name}; drop it by hand")
      return
    command = [client, "-h", self.host, "-P", str(self.port), "-u", self.user,
               "-e", f"DROP DATABASE IF EXISTS `{self.name}`"]
    env = os.environ | ({"MYSQL_PWD": self.password} if self.password else {})
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    if result.returncode != 0:
      measure.log(f"warning: dropping {self.name} failed: {result.stderr.strip()}")


def set_wal_journal(path: str) -> None:
  """Creates the SQLite file in write-ahead-log journal mode (a setting
  stored in the file, so MLMD's own connections use it). Not what
  `ckptflow` does today: measured to show what it would change."""
  import sqlite3
  connection = sqlite3.connect(path)
  try:
    [mode] = connection.execute("PRAGMA journal_mode=WAL").fetchone()
  finally:
    connection.close()
  if mode.lower() != "wal":
    raise RuntimeError(f"SQLite refused WAL journal mode for {path!r} (got {mode!r})")


def run_backend(backend: str, target: str, sizes: Sequence[int], *, registrations: int,
                queries: int, root: str, workdir: str) -> list[dict]:
  store = metadata.open_store(target)
  filler = Filler(store, root)
  filler.served_graph()
  rows = []
  for size in sorted(sizes):
    start = time.monotonic()
    filler.fill_to(size)
    fill_seconds = time.monotonic() - start
    result = measure_at(filler, size, registrations=registrations, queries=queries,
                        workdir=workdir)
    result |= {"backend": backend, "fill_seconds": fill_seconds}
    rows.append(result)
    measure.log(f"{backend} {size:>6} checkpoints: filled in {fill_seconds:.0f}s, "
                f"register p50 {result['register_ms_p50']:.2f} ms, "
                f"lineage {result['lineage_ms_median']:.2f} ms")
  return rows


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", default="1000,10000,50000")
  parser.add_argument("--backends", default="sqlite,sqlite-wal,mysql",
                      help="sqlite (as ckptflow opens it), sqlite-wal (the same with "
                      "the WAL journal, for comparison) and/or mysql")
  parser.add_argument("--mysql", default="mysql://root@127.0.0.1:3306",
                      help="MySQL/MariaDB server (a database of its own is created)")
  parser.add_argument("--registrations", type=int, default=200,
                      help="timed registrations per size")
  parser.add_argument("--queries", type=int, default=30, help="timed lineage queries per size")
  parser.add_argument("--workdir", default=None, help="where the SQLite file goes")
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  sizes = [int(s) for s in args.sizes.split(",")]
  backends = args.backends.split(",")
  for backend in backends:
    if backend not in ("sqlite", "sqlite-wal", "mysql"):
      parser.error(f"--backends: unknown backend {backend!r}. Expected sqlite, "
                   "sqlite-wal and/or mysql")

  workdir = args.workdir or tempfile.mkdtemp(prefix="ckptflow-bench-metadata-")
  results = []
  try:
    for backend in backends:
      if backend in ("sqlite", "sqlite-wal"):
        path = os.path.join(workdir, f"{backend}.sqlite")
        if os.path.exists(path):
          os.remove(path)
        if backend == "sqlite-wal":
          set_wal_journal(path)
        results += run_backend(backend, path, sizes, registrations=args.registrations,
                               queries=args.queries, root="/pipeline_root", workdir=workdir)
      else:
        database = MysqlDatabase(args.mysql)
        try:
          results += run_backend("mysql", database.target, sizes,
                                 registrations=args.registrations, queries=args.queries,
                                 root="/pipeline_root", workdir=workdir)
        finally:
          database.drop()
  finally:
    if not args.workdir:
      shutil.rmtree(workdir, ignore_errors=True)

  print("metadata: MLMD registration and lineage time vs. checkpoints in the store")
  base = {r["backend"]: r for r in results if r["nominal"] == min(sizes)}
  rows = []
  for r in results:
    b = base[r["backend"]]
    rows.append([r["backend"], r["checkpoints_in_store"],
                 r["register_ms_p50"], r["register_ms_p95"],
                 r["register_ms_p50"] / b["register_ms_p50"],
                 r["lineage_ms_median"], r["lineage_ms_p95"],
                 r["lineage_ms_median"] / b["lineage_ms_median"],
                 r["prune_read_ms_median"],
                 r["prune_read_ms_median"] / b["prune_read_ms_median"],
                 r["prune_query_ms_median"], r["fsync_ms"], f"{r['fill_seconds']:.0f}s"])
  measure.print_table(
      ["backend", "checkpoints", "register p50 ms", "p95 ms", "vs 1k",
       "lineage ms", "p95 ms", "vs 1k", "prune read ms", "vs 1k",
       "resume_key query ms", "disk fsync ms", "fill"], rows)
  print("prune read: what the Trainer reads after each save (the run's events); "
        "resume_key query: the filter query it runs once per execution.")
  print("disk fsync ms: median latency of a 4 KB write + fsync beside the SQLite file "
        "while measuring; SQLite commits wait for it, so registration follows it.")

  sqlite_rows = [r for r in results if r["backend"] == "sqlite"]
  reference = sqlite_rows or results
  first, last = reference[0], reference[-1]
  at_10k = next((r for r in reference if r["nominal"] == 10_000), None)
  register_scaling = last["register_ms_p50"] / first["register_ms_p50"]
  lineage_scaling = last["lineage_ms_median"] / first["lineage_ms_median"]
  targets = {
      "register_p50_ms": {"threshold": TARGET_REGISTER_P50_MS,
                          "value": max(r["register_ms_p50"] for r in sqlite_rows)
                          if sqlite_rows else None},
      "lineage_ms_at_10k": {"threshold": TARGET_LINEAGE_MS_AT_10K,
                            "value": at_10k["lineage_ms_median"] if at_10k else None},
  }
  for target in targets.values():
    target["met"] = target["value"] is not None and target["value"] <= target["threshold"]
  document = {"settings": {"sizes": sizes, "backends": backends,
                           "registrations": args.registrations, "queries": args.queries,
                           "checkpoints_per_run": CHECKPOINTS_PER_RUN,
                           "live_per_run": LIVE_PER_RUN},
              "results": results, "targets": targets,
              "scaling": {"backend": first["backend"], "from": first["nominal"],
                          "to": last["nominal"], "register_p50": register_scaling,
                          "lineage": lineage_scaling}}
  path = measure.write_results("metadata", document, args.out)
  print(f"registration p50 (worst size, SQLite): {targets['register_p50_ms']['value']:.2f} ms "
        f"(target <= {TARGET_REGISTER_P50_MS} ms)" if sqlite_rows else
        "registration p50 on SQLite: not measured")
  if at_10k:
    print(f"lineage at 10k checkpoints ({first['backend']}): "
          f"{at_10k['lineage_ms_median']:.2f} ms (target <= {TARGET_LINEAGE_MS_AT_10K} ms)")
  print(f"results: {os.path.relpath(path, measure.REPO)}")
  measure.print_ratio(
      f"metadata scaling ({first['backend']}, {last['nominal']} vs. {first['nominal']} "
      f"checkpoints; worse of registration p50 {register_scaling:.2f}x and lineage "
      f"{lineage_scaling:.2f}x)", max(register_scaling, lineage_scaling), "close to 1")
  return 0


if __name__ == "__main__":
  sys.exit(main())
