"""Runs the pipeline on this machine: TFX's LocalDagRunner or BeamDagRunner.

Everything a run makes lands under `--home`: the MLMD store, the pipeline
root (artifacts and checkpoints) and the TF Serving base path, unless the
pipeline root or the serving root is a bucket (`--pipeline-root`,
`--serving-dir` s3://...): then only the store, locks and logs stay local.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
from typing import Iterator

from ckptflow.components.trainer import declarations
from ckptflow.pipeline import data_validation
from ckptflow.base import identity, metadata, mlmd, progress, storage
from ckptflow.base.home import Home, shared_lock
from ckptflow.pipeline.config import PipelineConfig
from ckptflow.base.errors import CheckpointError, CkptflowError, ConfigError, Interrupted

MIN_FREE_ENV = "CKPTFLOW_MIN_FREE_MB"
DEFAULT_MIN_FREE_MB = 64

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunSummary:
  home: str
  metadata: str
  pipeline_root: str
  serving_dir: str
  checkpoints: int  # registered in the store, pruned ones included
  live_checkpoints: int  # of those, the ones whose files are kept
  served_version_path: str | None
  blessed: bool | None

  def lines(self) -> list[str]:
    served = self.served_version_path or "nothing pushed (model not blessed)"
    return [f"served model:    {served}",
            f"serving config:  {Home(self.home, self.serving_dir).models_config}",
            f"metadata store:  {metadata.describe(self.metadata)}",
            f"checkpoints:     {self.checkpoints} registered, {self.live_checkpoints} "
            f"live, under "
            f"{self.pipeline_root}/CheckpointingTrainer/checkpoints",
            f"list them with:  ckptflow checkpoints --home {self.home}" + (
                "" if metadata.sqlite_path(self.metadata) is not None
                else f" --metadata '{metadata.describe(self.metadata)}'")]


@contextlib.contextmanager
def metadata_env(target: str) -> Iterator[None]:
  """Points executors of this process at `target` while the run lasts."""
  previous = os.environ.get(metadata.METADATA_ENV)
  os.environ[metadata.METADATA_ENV] = target
  try:
    yield
  finally:
    if previous is None:
      os.environ.pop(metadata.METADATA_ENV, None)
    else:
      os.environ[metadata.METADATA_ENV] = previous


def min_free_bytes() -> int:
  """The free space a run needs before it starts: CKPTFLOW_MIN_FREE_MB
  (default 64) MiB on the file systems of the home and the serving root."""
  raw = os.environ.get(MIN_FREE_ENV, "").strip()
  if not raw:
    return DEFAULT_MIN_FREE_MB << 20
  if not raw.isdigit():
    raise ConfigError(f"{MIN_FREE_ENV} is {raw!r}. Expected a whole number of MiB")
  return int(raw) << 20


def check_free_space(config: PipelineConfig) -> None:
  """Fails before anything is written if the home or the serving root is
  on a (nearly) full file system: a run that fills the disk halfway leaves
  failed executions behind, one that never starts leaves nothing."""
  needed = min_free_bytes()
  for path in (config.home, config.serving_dir):
    if storage.is_remote(path):
      continue
    existing = storage.nearest_existing(path)
    free = shutil.disk_usage(existing).free
    if free < needed:
      raise CkptflowError(
          f"not enough free space for {path!r}: {free >> 20} MiB free on the file "
          f"system of {existing!r}. Expected at least {needed >> 20} MiB "
          f"(set {MIN_FREE_ENV} to change)")


def _layout(config: PipelineConfig) -> tuple[tuple[str, str], ...]:
  """The local directories a run creates, each with what it is called in
  messages (a bucket has no directories to create)."""
  return tuple((path, what) for path, what in (
      (config.home, "home"), (config.pipeline_root, "pipeline root"),
      (config.serving_dir, "serving directory")) if not storage.is_remote(path))


def remote_roots(config: PipelineConfig) -> tuple[tuple[str, str], ...]:
  """The run's roots that are bucket URIs, each with what it is called."""
  return tuple((uri, what) for uri, what in (
      (config.pipeline_root, "pipeline root"), (config.serving_dir, "serving directory"))
      if storage.is_remote(uri))


def check_remote_roots(config: PipelineConfig) -> None:
  """Checks, writing nothing, that every bucket root can be used: S3
  credentials in AWS_*, a reachable endpoint, an existing bucket that
  accepts the keys (one HEAD request each). gs:// roots are left to
  TensorFlow's own client.

  Raises:
    CkptflowError: one line naming the root and the problem (never a key).
  """
  from ckptflow.base import s3
  for uri, what in remote_roots(config):
    if storage.uri_scheme(uri) == "s3":
      s3.check_bucket(uri, what)


def beam_args(config: PipelineConfig) -> list[str]:
  """The run's Beam flags: the config's, then the S3 options derived from
  AWS_* (no keys: Beam's boto3 reads them from the environment) when a
  root is on S3 and the config does not set them itself."""
  args = list(config.run.beam_args)
  if any(storage.uri_scheme(uri) == "s3" for uri, _ in remote_roots(config)):
    from ckptflow.base import s3
    given = {a.split("=", 1)[0] for a in args}
    args += [a for a in s3.beam_args(s3.settings()) if a.split("=", 1)[0] not in given]
  return args


def check_directories(config: PipelineConfig) -> None:
  """Fails, writing nothing, unless the home layout can be created."""
  for path, what in _layout(config):
    storage.check_creatable_dir(path, what)


def prepare_home(config: PipelineConfig) -> None:
  """Creates the home layout, failing with a one-line error if it cannot.

  Checks that every directory can be created before creating any.
  """
  check_directories(config)
  for path, what in _layout(config):
    storage.create_dir(path, what)


def check_module(config: PipelineConfig) -> declarations.ModuleDeclarations:
  """Checks the model module against the config without running it: it
  exists and parses, the packages it imports are installed, it defines
  what `training.style` calls, and (where it declares them) accepts the
  config's hyperparameters, has the metric `best_metric` names and offers
  `evaluation.metric`. Imports neither TensorFlow nor the module itself
  (`components/trainer/declarations.py`).

  Raises:
    ConfigError: naming the setting, the value and what was expected.
  """
  training = config.training
  declared = declarations.read(training.module)
  declarations.check_imports(declared)
  declarations.check_entry_point(declared, training.style)
  declarations.check_hyperparameters(declared, training.hyperparameters)
  if training.keep_best or training.warm_start == "best":
    names = declarations.checkpoint_metrics(declared, training.style,
                                            with_eval=training.eval_every > 0)
    if names is not None and training.best_metric not in names:
      used_by = "keep_best" if training.keep_best else "warm_start = 'best'"
      raise ConfigError(
          f"config: training.best_metric is invalid (used by {used_by}). Received: "
          f"{training.best_metric!r}. Expected a metric {training.module}'s "
          f"checkpoints carry with training.style = {training.style!r}"
          f"{' and eval_every' if training.eval_every else ''}: {', '.join(names)}")
  offered = declared.evaluation_metrics
  if offered is not None and config.evaluation.metric not in offered:
    raise ConfigError(
        f"config: evaluation.metric is invalid. Received: {config.evaluation.metric!r}. "
        f"Expected a metric {training.module} declares for evaluation: {', '.join(offered)}")
  return declared


def _configured_num_classes(config: PipelineConfig) -> int | None:
  value = config.training.hyperparameters.get("num_classes")
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ConfigError(f"config: {data_validation.NUM_CLASSES_SETTING} is invalid. "
                      f"Received: {value!r}. Expected a positive integer (or leave it "
                      "out to infer it from the data)")
  return value


def check_warm_start(config: PipelineConfig) -> None:
  """Checks `training.warm_start` against the store before anything runs: an
  id must name a LIVE Checkpoint whose files match their recorded sha256;
  'latest' and 'best' need some LIVE checkpoint. Opens nothing that does not
  exist (a new home has no checkpoints)."""
  choice = config.training.warm_start
  if choice == "none":
    return
  target = config.metadata_target
  path = metadata.sqlite_path(target)
  from ckptflow.components import checkpoint as ckpt_records
  records = []
  if path is None or os.path.isfile(path):
    store = metadata.open_store(target, create=False)
    records = ckpt_records.list_checkpoints(store)
  if not choice.isdigit():
    if not any(r.live for r in records):
      raise CheckpointError(f"warm_start={choice!r}: the metadata store "
                            f"{metadata.describe(target)!r} holds no live checkpoint "
                            "to start from. Expected an earlier run's checkpoint")
    return
  matches = [r for r in records if r.id == int(choice)]
  if not matches:
    raise CheckpointError(f"warm_start: no Checkpoint artifact with id {choice} in "
                          f"{metadata.describe(target)!r}. Expected an id from "
                          "`ckptflow checkpoints`")
  [record] = matches
  if not record.live:
    raise CheckpointError(f"warm_start: checkpoint {choice} is {record.state} (its "
                          "files are gone or damaged). Expected a LIVE checkpoint")
  if not os.path.isdir(record.uri):
    raise CheckpointError(f"warm_start: checkpoint {choice}'s directory "
                          f"{record.uri!r} is missing")
  if ckpt_records.directory_digest(record.uri)[1] != record.checksum:
    raise CheckpointError(f"warm_start: checkpoint {choice} at {record.uri!r} is "
                          "corrupted: its files do not match the recorded sha256")


@dataclasses.dataclass(frozen=True)
class Checked:
  """What the preflight decided: the config to run (with `num_classes`
  inferred from the data where the module declares it and the config
  leaves it out) and the feature columns."""

  config: PipelineConfig
  feature_keys: tuple[str, ...]
  # What it found worth saying (rows checked, num_classes inferred); said
  # when the run starts, so that a run failing a check prints one line.
  notes: tuple[str, ...] = ()


def preflight(config: PipelineConfig) -> Checked:
  """Everything that can be checked before anything is written: the model
  module and its hyperparameters and metric names, the data (every row),
  a metadata server's reachability, that an existing store is this home's
  (`identity.check`: not a copied or moved home's), the warm-start
  checkpoint, free space and writable directories. Imports neither
  TensorFlow nor TFX.

  Raises:
    CkptflowError: naming what is wrong; nothing has been written.
  """
  declared = check_module(config)
  configured = _configured_num_classes(config)
  summary = data_validation.check_csv(config.data, num_classes=configured)
  sample = os.path.abspath(config.data.path) == os.path.abspath(
      config.home_layout.sample_data_dir)
  notes = [f"data: {summary.rows} rows in {summary.files} file(s) checked in "
           + ("the generated sample dataset " if sample else "") + config.data.path]
  if (configured is None and declared.hyperparameters is not None
      and "num_classes" in declared.hyperparameters):
    notes.append(f"num_classes: {summary.num_classes}, inferred from the labels in the "
                 f"data (set {data_validation.NUM_CLASSES_SETTING} to choose)")
    config = config.replace(training={"hyperparameters": {
        **config.training.hyperparameters, "num_classes": summary.num_classes}})
  target = config.metadata_target
  path = metadata.sqlite_path(target)
  store = None
  if path is None:
    store = metadata.open_store(target)  # reachable, and a real MLMD store
  elif os.path.exists(path):
    store = metadata.open_store(target, create=False)  # not corrupted
  if store is not None:
    # A copied or moved home stops here, before anything is written.
    identity.check(store, target, config.home_layout)
  check_warm_start(config)
  check_remote_roots(config)
  check_directories(config)
  check_free_space(config)
  return Checked(config=config, feature_keys=summary.feature_keys, notes=tuple(notes))


def execute(config: PipelineConfig, feature_keys: tuple[str, ...]) -> None:
  """Runs the whole pipeline on the configured local orchestrator.

  The caller has run `preflight` and `prepare_home`. While the pipeline
  runs this holds the home's shared lock, so that no repair mistakes its
  unfinished writes for debris, and points executors at the run's store.
  """
  reporter = progress.current()
  # Importing TFX (and TensorFlow with it) takes tens of seconds: say so.
  reporter.stage_started("loading TFX and TensorFlow")
  try:
    from ckptflow.pipeline.pipeline import create_pipeline
    for uri, _ in remote_roots(config):
      storage.prepare(uri)  # tensorflow-io and its S3 settings, before TFX opens it
    pipeline = create_pipeline(config, feature_keys=feature_keys,
                               beam_pipeline_args=beam_args(config))
  except BaseException:
    reporter.close()
    raise
  with shared_lock(config.home_layout), metadata_env(config.metadata_target), \
      watch_stages(reporter, [c.id for c in pipeline.components]):
    if config.run.orchestrator == "beam":
      from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner
      BeamDagRunner().run(pipeline)
    else:
      from tfx.orchestration.local.local_dag_runner import LocalDagRunner
      LocalDagRunner().run(pipeline)


class StageWatcher(logging.Filter):
  """Reports pipeline stages from the TFX runners' own log records.

  TFX's LocalDagRunner logs "Component %s is running." / "... is finished."
  around each node it launches, and BeamDagRunner "node %s is running." /
  "... is finished." (tfx/orchestration/local/local_dag_runner.py,
  beam/beam_dag_runner.py), on absl's logger. This filter reads those
  records (it drops none) and tells `reporter`; `order` (the node ids in
  pipeline order) numbers the stages.
  """

  STARTED = ("Component %s is running.", "node %s is running.")
  FINISHED = ("Component %s is finished.", "node %s is finished.")

  def __init__(self, reporter: progress.Progress, order: list[str]):
    super().__init__()
    self._reporter = reporter
    self._order = list(order)

  def filter(self, record: logging.LogRecord) -> bool:
    if record.msg in self.STARTED or record.msg in self.FINISHED:
      args = record.args if isinstance(record.args, tuple) else (record.args,)
      node = str(args[0]) if args else "?"
      if record.msg in self.STARTED:
        index = self._order.index(node) + 1 if node in self._order else None
        self._reporter.stage_started(node, index, len(self._order))
      else:
        self._reporter.stage_finished()
    return True


def _interrupted(error: BaseException) -> bool:
  """Whether `error` is a Ctrl-C or a signal that stopped the work after it
  saved (`Interrupted`: the Trainer's `TrainingInterrupted`, or SIGTERM)."""
  return isinstance(error, (KeyboardInterrupt, Interrupted))


@contextlib.contextmanager
def watch_stages(reporter: progress.Progress, order: list[str]) -> Iterator[None]:
  """Reports the stages of the pipeline run inside the block (`StageWatcher`
  on absl's logger, whose verbosity is at least INFO meanwhile); ends the
  display when the block ends, also on an error or an interrupt."""
  from absl import logging as absl_logging
  absl_logger = logging.getLogger("absl")
  watcher = StageWatcher(reporter, order)
  # Through absl's own verbosity, not only the logger's level: TensorFlow
  # saves and restores absl's verbosity around each save of a Keras model
  # (trackable/autotrackable.py), which sets the logger back to it.
  previous = absl_logging.get_verbosity()
  if previous < absl_logging.INFO:
    absl_logging.set_verbosity(absl_logging.INFO)
  absl_logger.addFilter(watcher)
  try:
    yield
  except BaseException as e:
    reporter.stage_finished("interrupted" if _interrupted(e) else "failed")
    raise
  finally:
    absl_logger.removeFilter(watcher)
    absl_logging.set_verbosity(previous)
    reporter.close()


def summarize(config: PipelineConfig) -> RunSummary:
  from ckptflow.components.checkpoint import list_checkpoints
  store = metadata.open_store(config.metadata_target, create=False)
  records = list_checkpoints(store)
  pushed = store.get_artifacts_by_type("PushedModel")
  pushed.sort(key=lambda a: a.id)
  blessed = None
  served = None
  if pushed:
    latest = pushed[-1]
    pushed_flag = mlmd.property_value(latest, "pushed")
    blessed = bool(pushed_flag) if pushed_flag is not None else None
    if blessed:
      served = mlmd.property_value(latest, "pushed_destination") or ""
  return RunSummary(
      home=config.home, metadata=config.metadata_target,
      pipeline_root=config.pipeline_root, serving_dir=config.serving_dir,
      checkpoints=len(records), live_checkpoints=sum(1 for r in records if r.live),
      served_version_path=served, blessed=blessed)
