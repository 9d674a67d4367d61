"""The pipeline's typed configuration.

One `PipelineConfig` describes a run for every runner (local, Beam,
Kubeflow). It loads from a TOML file whose tables mirror the sections here
(`[data]`, `[training]`, `[evaluation]`, `[serving]`, `[run]`), and CLI flags
override single fields. Every field is checked in `__post_init__`, so a bad
value fails before any component runs, with a message naming the field.

Imports neither TensorFlow nor TFX.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import os
import tomllib
import typing
from typing import Any, Mapping

from ckptflow.base import names, storage
from ckptflow.base.errors import CkptflowError, ConfigError, DataError
from ckptflow.base.home import Home

DEFAULT_HOME_ENV = "CKPTFLOW_HOME"
WARM_START_CHOICES = ("none", "latest", "best")
# tf.distribute strategies the Trainer runs (components/trainer/distribution.py).
DISTRIBUTIONS = ("none", "mirrored", "multi_worker")
WARM_START_MODES = ("weights", "full")


def default_home() -> str:
  return os.environ.get(DEFAULT_HOME_ENV) or "./ckptflow_home"


def _fail(field: str, value: Any, expected: str) -> typing.NoReturn:
  raise ConfigError(f"config: {field} is invalid. Received: {value!r}. Expected {expected}")


def _positive_int(field: str, value: Any, *, allow_zero: bool = False) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
    _fail(field, value, "a non-negative integer" if allow_zero else "a positive integer")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the CSV data is, and which columns the model uses.

  `path` is a directory of `*.csv` files (other files are ignored); every file
  has the same header. `features` empty means every column but the label.
  """

  path: str = ""
  label: str = "species"
  features: tuple[str, ...] = ()
  eval_fraction_buckets: tuple[int, int] = (3, 1)  # train:eval hash buckets

  def __post_init__(self):
    if not isinstance(self.path, str):
      _fail("data.path", self.path, "a directory path")
    if not isinstance(self.label, str) or not self.label:
      _fail("data.label", self.label, "a column name")
    if any(not isinstance(f, str) or not f for f in self.features):
      _fail("data.features", self.features, "a list of column names")
    if self.label in self.features:
      _fail("data.features", self.features, f"columns other than the label {self.label!r}")
    if len(set(self.features)) != len(self.features):
      _fail("data.features", self.features, "each column at most once")
    train, evaluation = self.eval_fraction_buckets
    _positive_int("data.eval_fraction_buckets", train)
    _positive_int("data.eval_fraction_buckets", evaluation)

  def csv_files(self) -> list[str]:
    if not self.path:
      raise DataError("data.path is not set: pass --data DIR (a directory of CSV files)")
    if not os.path.isdir(self.path):
      raise DataError(f"data directory {self.path!r} does not exist or is not a directory")
    files = sorted(glob.glob(os.path.join(self.path, "*.csv")))
    if not files:
      raise DataError(f"data directory {self.path!r} holds no *.csv file")
    return files

  def header(self) -> list[str]:
    """The CSV header shared by every file; checks the files agree."""
    header = None
    for path in self.csv_files():
      with open(path, newline="") as f:
        first = next(csv.reader(f), None)
      if not first:
        raise DataError(f"data file {path!r} is empty (no header row)")
      first = [c.strip() for c in first]
      if header is not None and first != header:
        raise DataError(f"data file {path!r} has header {first}, other files have {header}")
      header = first
    assert header is not None
    return header

  def resolved_features(self) -> tuple[str, ...]:
    """The feature columns, after checking every configured column exists."""
    header = self.header()
    if self.label not in header:
      raise ConfigError(f"config: data.label column {self.label!r} is not in the data. "
                        f"Columns: {', '.join(header)}")
    missing = [f for f in self.features if f not in header]
    if missing:
      raise ConfigError(f"config: data.features column {missing[0]!r} is not in the data. "
                        f"Columns: {', '.join(header)}")
    return self.features or tuple(c for c in header if c != self.label)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
  """The Trainer: model module, steps, checkpointing and retention.

  `module` is an importable module path (or a .py file) defining the model;
  see `ckptflow/pipeline/model.py` for the contract. Retention counts of 0
  mean "no such rule"; with no rule at all every checkpoint is kept.

  `distribution`: "none" (one process, one device), "mirrored"
  (MirroredStrategy over `replicas` devices of one machine; on a CPU-only
  machine, `replicas` logical CPU devices) or "multi_worker"
  (MultiWorkerMirroredStrategy over `workers` processes). `batch_size` is
  the global batch, split evenly across the replicas.
  """

  module: str = "ckptflow.pipeline.model"
  style: str = "loop"  # "loop": build_training + train_step; "fit": model.fit
  train_steps: int = 600
  batch_size: int = 32
  checkpoint_every: int = 100
  checkpoint_every_seconds: float = 0.0
  checkpoint_at_epoch_end: bool = False
  keep_last: int = 0
  keep_best: int = 0
  best_metric: str = "loss"
  best_mode: str = "min"
  keep_every: int = 0
  warm_start: str = "none"
  # "weights": the model's weights only; "full": also every optimizer and
  # the extra variables (and the step, with warm_start_step).
  warm_start_mode: str = "weights"
  warm_start_step: bool = False
  async_checkpoint: bool = False
  eval_every: int = 0
  seed: int = 42
  distribution: str = "none"
  replicas: int = 1
  workers: int = 1
  hyperparameters: Mapping[str, Any] = dataclasses.field(
      default_factory=lambda: {"learning_rate": 0.01, "hidden_units": [16, 8]})

  def __post_init__(self):
    if not isinstance(self.module, str) or not self.module:
      _fail("training.module", self.module, "a module path or .py file")
    if self.style not in ("loop", "fit"):
      _fail("training.style", self.style, "'loop' (custom train_step) or 'fit' (model.fit)")
    _positive_int("training.train_steps", self.train_steps)
    _positive_int("training.batch_size", self.batch_size)
    _positive_int("training.checkpoint_every", self.checkpoint_every)
    if (isinstance(self.checkpoint_every_seconds, bool)
        or not isinstance(self.checkpoint_every_seconds, (int, float))
        or self.checkpoint_every_seconds < 0):
      _fail("training.checkpoint_every_seconds", self.checkpoint_every_seconds,
            "a non-negative number of seconds (0 = off)")
    for name in ("keep_last", "keep_best", "keep_every", "eval_every"):
      _positive_int(f"training.{name}", getattr(self, name), allow_zero=True)
    if self.best_mode not in ("min", "max"):
      _fail("training.best_mode", self.best_mode, "'min' or 'max'")
    if not isinstance(self.best_metric, str) or not self.best_metric:
      _fail("training.best_metric", self.best_metric, "a metric name")
    warm = self.warm_start
    if not (isinstance(warm, str) and (warm in WARM_START_CHOICES or warm.isdigit())):
      _fail("training.warm_start", warm, "'none', 'latest', 'best' or a checkpoint artifact id")
    if self.warm_start_mode not in WARM_START_MODES:
      _fail("training.warm_start_mode", self.warm_start_mode, "'weights' or 'full'")
    if not isinstance(self.warm_start_step, bool):
      _fail("training.warm_start_step", self.warm_start_step, "true or false")
    if self.warm_start_step and self.warm_start_mode != "full":
      _fail("training.warm_start_step", self.warm_start_step,
            "false unless warm_start_mode = 'full' (the step comes with the full state)")
    if isinstance(self.seed, bool) or not isinstance(self.seed, int):
      _fail("training.seed", self.seed, "an integer")
    if not isinstance(self.hyperparameters, Mapping):
      _fail("training.hyperparameters", self.hyperparameters, "a table of values")
    self._check_distribution()

  @property
  def num_replicas(self) -> int:
    """Replicas in sync: devices (mirrored) or workers (multi_worker)."""
    return {"mirrored": self.replicas, "multi_worker": self.workers}.get(self.distribution, 1)

  def _check_distribution(self) -> None:
    if self.distribution not in DISTRIBUTIONS:
      _fail("training.distribution", self.distribution,
            "'none', 'mirrored' (devices of one machine) or 'multi_worker' (worker processes)")
    _positive_int("training.replicas", self.replicas)
    _positive_int("training.workers", self.workers)
    if self.replicas != 1 and self.distribution != "mirrored":
      _fail("training.replicas", self.replicas,
            f"1 unless distribution = 'mirrored' (distribution is {self.distribution!r})")
    if self.workers != 1 and self.distribution != "multi_worker":
      _fail("training.workers", self.workers,
            f"1 unless distribution = 'multi_worker' (distribution is {self.distribution!r})")
    if self.batch_size % self.num_replicas:
      _fail("training.batch_size", self.batch_size,
            f"a multiple of the {self.num_replicas} replicas (the global batch is "
            "split evenly)")
    if self.async_checkpoint and self.distribution != "none":
      _fail("training.async_checkpoint", self.async_checkpoint,
            "false with a distribution strategy (every worker saves synchronously, "
            "at one agreed step)")


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
  """The Evaluator's blessing rule: an absolute floor on `metric`, and the
  largest drop allowed against the model blessed before."""

  metric: str = "SparseCategoricalAccuracy"  # a tf.keras.metrics class name
  lower_bound: float = 0.6
  allowed_regression: float = 0.01

  def __post_init__(self):
    if not isinstance(self.metric, str) or not self.metric:
      _fail("evaluation.metric", self.metric, "a tf.keras.metrics class name such as SparseCategoricalAccuracy")
    for name in ("lower_bound", "allowed_regression"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        _fail(f"evaluation.{name}", value, "a non-negative number")


@dataclasses.dataclass(frozen=True)
class ServingConfig:
  """Where pushes go. `model_name` is held as a `names.ModelName`."""

  model_name: str = "penguin"
  serving_dir: str = ""  # empty: HOME/serving; a path, s3://... or gs://...

  def __post_init__(self):
    if names.model_name_problem(self.model_name) is not None:
      _fail("serving.model_name", self.model_name, names.MODEL_NAME_EXPECTED)
    _check_root("serving.serving_dir", self.serving_dir, "serving directory")
    object.__setattr__(self, "model_name", names.ModelName(self.model_name))


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Where a run keeps its state, and how it is orchestrated."""

  home: str = dataclasses.field(default_factory=default_home)
  pipeline_name: str = "ckptflow"
  metadata: str = ""  # empty: HOME/metadata.sqlite
  pipeline_root: str = ""  # empty: HOME/pipeline_root; a path, s3://... or gs://...
  orchestrator: str = "local"
  beam_args: tuple[str, ...] = ("--direct_running_mode=in_memory", "--direct_num_workers=1")
  enable_cache: bool = True

  def __post_init__(self):
    if not isinstance(self.home, str) or not self.home:
      _fail("run.home", self.home, "a directory path")
    _check_root("run.pipeline_root", self.pipeline_root, "pipeline root")
    if self.orchestrator not in ("local", "beam"):
      _fail("run.orchestrator", self.orchestrator, "'local' or 'beam'")
    import re
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", self.pipeline_name or ""):
      _fail("run.pipeline_name", self.pipeline_name, "letters, digits, '_' and '-'")
    if any(not isinstance(a, str) or not a.startswith("--") for a in self.beam_args):
      _fail("run.beam_args", self.beam_args, "Beam flags such as --direct_num_workers=2")


def _check_root(field: str, value: Any, what: str) -> None:
  """A root field: empty (the default under the home), a path, or a
  bucket URI of a supported scheme."""
  if not isinstance(value, str):
    _fail(field, value, "a directory path, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX")
  if value:
    try:
      storage.check_uri(value, what)
    except CkptflowError as e:
      raise ConfigError(f"config: {field}: {e}") from e


_SECTIONS = {
    "data": DataConfig,
    "training": TrainingConfig,
    "evaluation": EvaluationConfig,
    "serving": ServingConfig,
    "run": RunConfig,
}


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Everything a run of the pipeline needs, validated on construction."""

  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
  evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
  serving: ServingConfig = dataclasses.field(default_factory=ServingConfig)
  run: RunConfig = dataclasses.field(default_factory=RunConfig)

  # Paths a run derives from `run.home`, `run.pipeline_root` and
  # `serving.serving_dir`.
  @property
  def home_layout(self) -> Home:
    """The run's home (`base.home.Home`): every path in it, absolute."""
    return Home(self.run.home, self.serving.serving_dir or None,
                self.run.pipeline_root or None)

  @property
  def home(self) -> str:
    return self.home_layout.home

  @property
  def metadata_target(self) -> str:
    """`[run] metadata`, else $CKPTFLOW_METADATA, else HOME/metadata.sqlite
    (`metadata.resolve_target`; a --metadata flag overrides `run.metadata`)."""
    from ckptflow.base import metadata
    return metadata.resolve_target(self.run.metadata, self.home)

  @property
  def pipeline_root(self) -> str:
    return self.home_layout.pipeline_root

  @property
  def serving_dir(self) -> str:
    return self.home_layout.serving_root

  def replace(self, **sections: Mapping[str, Any]) -> "PipelineConfig":
    """A copy with fields of the named sections replaced (and re-checked)."""
    updated = {}
    for section, fields in sections.items():
      current = getattr(self, section)
      updated[section] = _build(section, _SECTIONS[section], fields, base=current)
    return dataclasses.replace(self, **updated)

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, raw: Mapping[str, Any], *, source: str = "config") -> "PipelineConfig":
    unknown = set(raw) - set(_SECTIONS)
    if unknown:
      raise ConfigError(f"{source}: unknown section [{sorted(unknown)[0]}]. "
                        f"Expected one of: {', '.join(_SECTIONS)}")
    sections = {}
    for name, section_cls in _SECTIONS.items():
      fields = raw.get(name, {})
      if not isinstance(fields, Mapping):
        raise ConfigError(f"{source}: [{name}] must be a table")
      sections[name] = _build(name, section_cls, fields, base=None)
    return cls(**sections)

  @classmethod
  def from_toml(cls, path: str) -> "PipelineConfig":
    try:
      with open(path, "rb") as f:
        raw = tomllib.load(f)
    except FileNotFoundError as e:
      raise ConfigError(f"config file {path!r} does not exist") from e
    except IsADirectoryError as e:
      raise ConfigError(f"config file {path!r} is a directory") from e
    except tomllib.TOMLDecodeError as e:
      raise ConfigError(f"config file {path!r} is not valid TOML: {e}") from e
    except UnicodeDecodeError as e:
      raise ConfigError(f"config file {path!r} is not UTF-8 text (byte {e.start}). "
                        "Expected a TOML file saved as UTF-8") from e
    except OSError as e:
      raise ConfigError(f"config file {path!r} cannot be read: {e.strerror or e}") from e
    return cls.from_dict(raw, source=path)


def _build(section: str, section_cls: type, fields: Mapping[str, Any], *, base: Any) -> Any:
  known = {f.name: f for f in dataclasses.fields(section_cls)}
  hints = typing.get_type_hints(section_cls)
  values = {}
  for key, value in fields.items():
    if key not in known:
      raise ConfigError(f"config: unknown field {section}.{key}. "
                        f"Expected one of: {', '.join(known)}")
    if isinstance(value, list) and typing.get_origin(hints[key]) is tuple:
      value = tuple(value)
    values[key] = value
  if base is not None:
    return dataclasses.replace(base, **values)
  return section_cls(**values)
