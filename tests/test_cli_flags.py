"""The pipeline flags are declared once (cli/flags.py) and map onto real
config fields; `run` and `compile` share them."""

from __future__ import annotations

import dataclasses

import pytest

from ckptflow.cli import flags
from ckptflow.cli.main import build_parser
from ckptflow.pipeline.config import PipelineConfig


@pytest.mark.parametrize("flag", flags.CONFIG_FLAGS, ids=lambda f: f.flag)
def test_every_config_flag_names_a_field_of_its_config_section(flag):
  section = getattr(PipelineConfig(), flag.section)
  assert flag.field in {f.name for f in dataclasses.fields(section)}


def test_run_and_compile_parse_the_shared_flags_into_the_same_overrides():
  shared = ["--data", "d", "--label", "y", "--features", "a,b", "--model-name", "m",
            "--train-steps", "7", "--checkpoint-every", "3", "--keep-last", "2",
            "--warm-start", "best", "--beam-arg=--direct_num_workers=2", "--no-cache"]
  parser = build_parser()
  run = parser.parse_args(["run", *shared, "--async-checkpoint", "--orchestrator", "beam"])
  compiled = parser.parse_args(["compile", *shared])
  expected = {
      "data": {"path": "d", "label": "y", "features": ("a", "b")},
      "serving": {"model_name": "m"},
      "training": {"train_steps": 7, "checkpoint_every": 3, "keep_last": 2,
                   "warm_start": "best"},
      "run": {"beam_args": ("--direct_num_workers=2",), "enable_cache": False},
  }
  assert flags.config_overrides(compiled, flags.COMPILE) == expected
  run_overrides = flags.config_overrides(run, flags.RUN)
  assert run_overrides["training"].pop("async_checkpoint") is True
  assert run_overrides["run"].pop("orchestrator") == "beam"
  assert run_overrides == expected


def test_flags_left_out_override_nothing():
  args = build_parser().parse_args(["run"])
  assert flags.config_overrides(args, flags.RUN) == {}


def test_integer_flags_take_their_type_from_the_config_field(capsys):
  with pytest.raises(SystemExit):
    build_parser().parse_args(["run", "--train-steps", "many"])
  assert "--train-steps: invalid int value: 'many'" in capsys.readouterr().err


def test_run_only_flags_are_refused_by_compile(capsys):
  with pytest.raises(SystemExit):
    build_parser().parse_args(["compile", "--async-checkpoint"])
  assert "unrecognized arguments: --async-checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("argv, verbose", [
    (["run"], False), (["-v", "run"], True), (["--verbose", "checkpoints"], True),
    (["run", "--verbose"], True), (["doctor", "-v"], True), (["lineage", "1"], False),
], ids=lambda value: " ".join(value) if isinstance(value, list) else str(value))
def test_verbose_is_taken_before_or_after_any_subcommand(argv, verbose):
  assert build_parser().parse_args(argv).verbose is verbose


def test_quiet_logging_passes_ckptflow_lines_and_errors_only():
  import logging

  from ckptflow.cli.main import _own_lines_only

  def record(name, level):
    return logging.LogRecord(name, level, __file__, 1, "m", (), None)

  assert _own_lines_only(record("ckptflow", logging.INFO))
  assert _own_lines_only(record("ckptflow.progress", logging.INFO))
  assert _own_lines_only(record("absl", logging.ERROR))
  assert not _own_lines_only(record("absl", logging.WARNING))
  assert not _own_lines_only(record("apache_beam.io.tfrecordio", logging.WARNING))
  assert not _own_lines_only(record("ckptflowish", logging.INFO))


def test_checkpoint_table_keeps_metric_names_whole_and_marks_served_checkpoints():
  from ckptflow.cli.main import checkpoint_table
  from ckptflow.components.checkpoint import CheckpointRecord

  def record(id, step, metrics, protected=""):
    return CheckpointRecord(
        id=id, uri=f"/h/step-{step}", step=step, epoch=0, metrics=metrics, size_bytes=1,
        checksum="c", created_at="", state="LIVE", fingerprint="f", resume_key="k",
        tf_version="t", protected=protected)

  records = [record(4, 100, {"loss": 0.5, "running_accuracy_over_a_long_window": 0.25}),
             record(5, 200, {"loss": 0.125, "eval_accuracy": 0.9}, protected="promoted")]
  lines = checkpoint_table(records, {5: ["penguin:1 (stable)", "penguin:2 (canary)"]})

  assert lines[0].split() == ["id", "step", "state", "eval_accuracy", "loss",
                              "running_accuracy_over_a_long_window", "served", "uri"]
  assert lines[1].split() == ["4", "100", "LIVE", "-", "0.5", "0.25", "/h/step-100"]
  assert lines[2].split() == ["5", "200", "LIVE", "0.9", "0.125", "-", "served",
                              "penguin:1", "(stable),", "penguin:2", "(canary)",
                              "[promoted]", "/h/step-200"]
  # Columns line up: every value ends where its header ends, uris start together.
  for name in ("loss", "running_accuracy_over_a_long_window"):
    end = lines[0].index(name) + len(name)
    assert lines[1][:end].endswith(("0.5", "0.25")) and lines[2][:end].endswith(("0.125", "-"))
  assert len({line.index("/h/") for line in lines[1:]}) == 1
  assert lines[0].index("uri") == lines[1].index("/h/")


def test_listing_into_a_closed_pipe_stops_quietly_with_sigpipes_status(tmp_path):
  """`ckptflow checkpoints --json | head -0`: the reader is gone before the
  listing is written; no BrokenPipeError traceback, status 128 + SIGPIPE."""
  import signal
  import subprocess
  import sys
  from ckptflow.base.metadata import open_store
  open_store(f"sqlite://{tmp_path / 'metadata.sqlite'}")
  process = subprocess.Popen(
      [sys.executable, "-m", "ckptflow.cli", "checkpoints", "--home", str(tmp_path), "--json"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  process.stdout.close()
  stderr = process.stderr.read().decode()
  assert process.wait(timeout=120) == 128 + signal.SIGPIPE
  assert "Traceback" not in stderr and "BrokenPipeError" not in stderr
