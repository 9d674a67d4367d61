"""Flags declared once.

The pipeline flags that `run` and `compile` share are one table of
`ConfigFlag`s, each naming the config field it overrides
(`pipeline/config.py`); the argument type comes from that field's type.
`config_flags(command)` builds an argparse parent parser from the table,
and `config_overrides(args, command)` turns parsed flags back into the
sections `PipelineConfig.replace` takes. The flags every subcommand takes
(`--home`, `--metadata`, `--verbose`) and the ones many take (`--json`,
`--serving-dir`) are parent parsers too.

Imports neither TensorFlow nor TFX.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Sequence

from ckptflow.pipeline.config import DISTRIBUTIONS, PipelineConfig

RUN, COMPILE = "run", "compile"


@dataclasses.dataclass(frozen=True)
class ConfigFlag:
  """A command-line flag that overrides one field of the pipeline config.

  `kind`: "value" (one value of the field's type), "csv" (a comma-separated
  list into a tuple field), "append" (repeatable, into a tuple field),
  "true" / "false" (a bare flag that sets a bool field to that value).
  """

  flag: str
  section: str
  field: str
  help: str | None = None
  kind: str = "value"
  commands: tuple[str, ...] = (RUN, COMPILE)
  choices: tuple[str, ...] | None = None
  metavar: str | None = None
  compile_help: str | None = None  # where `compile` reads the flag differently

  @property
  def dest(self) -> str:
    return self.flag.lstrip("-").replace("-", "_")

  def field_type(self) -> type:
    section_cls = type(getattr(PipelineConfig(), self.section))
    return typing.get_type_hints(section_cls)[self.field]


CONFIG_FLAGS: tuple[ConfigFlag, ...] = (
    ConfigFlag("--data", "data", "path",
               "directory of CSV files (default: a generated sample)",
               compile_help="directory of CSV files: read for the columns, and the "
               "default of data_root (default: the generated sample, as for run; "
               "not needed with --features)"),
    ConfigFlag("--label", "data", "label", "label column"),
    ConfigFlag("--features", "data", "features",
               "comma-separated feature columns (default: all others)", kind="csv"),
    ConfigFlag("--model-name", "serving", "model_name", "served model name"),
    ConfigFlag("--module", "training", "module", "model module: import path or .py file"),
    ConfigFlag("--train-steps", "training", "train_steps", "training steps"),
    ConfigFlag("--batch-size", "training", "batch_size", "examples per step"),
    ConfigFlag("--checkpoint-every", "training", "checkpoint_every",
               "save a checkpoint every N steps"),
    ConfigFlag("--eval-every", "training", "eval_every",
               "evaluate on the eval split every N steps"),
    ConfigFlag("--keep-last", "training", "keep_last", "keep only the last K checkpoints"),
    ConfigFlag("--warm-start", "training", "warm_start",
               "none, latest, best, or a checkpoint artifact id"),
    ConfigFlag("--warm-start-mode", "training", "warm_start_mode",
               "weights (the model's weights) or full (also every optimizer and the "
               "extra variables)", choices=("weights", "full")),
    ConfigFlag("--distribution", "training", "distribution",
               "tf.distribute strategy: none, mirrored (devices of this machine) or "
               "multi_worker (worker processes)",
               choices=DISTRIBUTIONS),
    ConfigFlag("--replicas", "training", "replicas",
               "devices for --distribution mirrored (logical CPUs on a CPU-only machine)"),
    ConfigFlag("--workers", "training", "workers",
               "worker processes for --distribution multi_worker"),
    ConfigFlag("--async-checkpoint", "training", "async_checkpoint",
               "write checkpoints in the background", kind="true", commands=(RUN,)),
    ConfigFlag("--pipeline-root", "run", "pipeline_root",
               "where TFX artifacts, checkpoints and exports go: a directory or "
               "s3://BUCKET/PREFIX, gs://BUCKET/PREFIX (default: HOME/pipeline_root)",
               commands=(RUN,), metavar="URI"),
    ConfigFlag("--serving-dir", "serving", "serving_dir",
               "TF Serving root: a directory or s3://BUCKET/PREFIX, gs://BUCKET/PREFIX "
               "(default: HOME/serving)", commands=(RUN,), metavar="URI"),
    ConfigFlag("--orchestrator", "run", "orchestrator",
               "TFX LocalDagRunner (default) or BeamDagRunner", commands=(RUN,),
               choices=("local", "beam")),
    ConfigFlag("--beam-arg", "run", "beam_args",
               "a Beam pipeline flag, e.g. --beam-arg=--direct_num_workers=2 (repeatable)",
               kind="append", compile_help="a Beam pipeline flag for every task (repeatable)"),
    ConfigFlag("--no-cache", "run", "enable_cache", "rerun every component", kind="false",
               compile_help="disable KFP caching"),
)


def _flags_of(command: str) -> list[ConfigFlag]:
  return [f for f in CONFIG_FLAGS if command in f.commands]


def config_flags(command: str) -> argparse.ArgumentParser:
  """A parent parser with `--config` and the config flags of `command`."""
  parser = argparse.ArgumentParser(add_help=False)
  group = parser.add_argument_group("pipeline configuration (overrides the config file)")
  group.add_argument("--config", metavar="FILE",
                     help="TOML config file (sections data, training, evaluation, "
                     "serving, run)")
  for flag in _flags_of(command):
    help_text = flag.compile_help if command == COMPILE and flag.compile_help else flag.help
    kwargs: dict[str, Any] = {"help": help_text, "dest": flag.dest}
    if flag.kind in ("true", "false"):
      kwargs["action"] = "store_true"
    elif flag.kind == "append":
      kwargs.update(action="append", default=[], metavar=flag.metavar or "ARG")
    else:
      value_type = flag.field_type()
      if flag.kind == "value" and value_type in (int, float):
        kwargs["type"] = value_type
      if flag.choices:
        kwargs["choices"] = flag.choices
      if flag.metavar:
        kwargs["metavar"] = flag.metavar
    group.add_argument(flag.flag, **kwargs)
  return parser


def config_overrides(args: argparse.Namespace, command: str) -> dict[str, dict[str, Any]]:
  """The config sections and fields the flags of `command` given in `args`
  override (flags left out override nothing)."""
  overrides: dict[str, dict[str, Any]] = {}
  for flag in _flags_of(command):
    value = getattr(args, flag.dest, None)
    if flag.kind in ("true", "false"):
      if not value:
        continue
      value = flag.kind == "true"
    elif flag.kind == "append":
      if not value:
        continue
      value = tuple(value)
    elif value is None:
      continue
    elif flag.kind == "csv":
      value = tuple(part for part in value.split(",") if part)
    overrides.setdefault(flag.section, {})[flag.field] = value
  return overrides


def home_flags() -> argparse.ArgumentParser:
  """`--home` and `--metadata`: every subcommand takes them."""
  parser = argparse.ArgumentParser(add_help=False)
  parser.add_argument("--home", default=None,
                      help="where runs keep metadata, artifacts and served models "
                      "(default: $CKPTFLOW_HOME, else ./ckptflow_home)")
  parser.add_argument("--metadata", default=None,
                      help="metadata store: a SQLite path, mysql://USER:PASS@HOST:PORT/DB "
                      "or grpc://HOST:PORT (default: $CKPTFLOW_METADATA, else "
                      "HOME/metadata.sqlite)")
  return parser


VERBOSE_HELP = ("show every log line: TFX, Beam and absl logs, Python warnings and "
                "TensorFlow's C++ log (default: only ckptflow's own lines and errors)")


def verbose_flag(*, top_level: bool = False) -> argparse.ArgumentParser:
  """`-v/--verbose`, taken before or after the subcommand. The subcommand's
  copy has no default, so it cannot reset a `--verbose` given before it."""
  parser = argparse.ArgumentParser(add_help=False)
  parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP,
                      default=False if top_level else argparse.SUPPRESS)
  return parser


def json_flag() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(add_help=False)
  parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
  return parser


def serving_dir_flag(help: str = "TF Serving root (default: HOME/serving)") -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(add_help=False)
  parser.add_argument("--serving-dir", default=None, help=help)
  return parser


def reason_flag() -> argparse.ArgumentParser:
  """`--reason TEXT` of the commands that change what is served."""
  parser = argparse.ArgumentParser(add_help=False)
  parser.add_argument("--reason", default="", metavar="TEXT",
                      help="why: recorded in MLMD with the user and host, shown by "
                      "history, lineage and the report")
  return parser


def parents(*parsers: argparse.ArgumentParser) -> Sequence[argparse.ArgumentParser]:
  """`home_flags()` first, then `parsers`, then `verbose_flag()`: the
  parents of a subcommand."""
  return [home_flags(), *parsers, verbose_flag()]
