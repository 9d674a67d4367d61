"""`[training] distribution`, `replicas`, `workers`: the config checks and
the flags `run` and `compile` share (no TensorFlow)."""

from __future__ import annotations

import pytest

from ckptflow.base.errors import ConfigError
from ckptflow.cli import flags
from ckptflow.cli.main import build_parser
from ckptflow.pipeline.config import PipelineConfig
from support import ckptflow


@pytest.mark.parametrize("command", ["run", "compile"])
def test_distribution_flags_override_the_training_section(command):
  args = build_parser().parse_args(
      [command, "--distribution", "multi_worker", "--workers", "3", "--batch-size", "30"])
  overrides = flags.config_overrides(args, command)
  assert overrides["training"] == {"distribution": "multi_worker", "workers": 3,
                                   "batch_size": 30}
  config = PipelineConfig().replace(**overrides)
  assert config.training.num_replicas == 3


def test_mirrored_counts_its_replicas_and_none_counts_one():
  assert PipelineConfig().training.num_replicas == 1
  mirrored = PipelineConfig().replace(training={"distribution": "mirrored", "replicas": 4})
  assert mirrored.training.num_replicas == 4


@pytest.mark.parametrize("fields, message", [
    ({"distribution": "parameter_server"},
     "training.distribution is invalid. Received: 'parameter_server'"),
    ({"distribution": "multi_worker", "workers": 0},
     "training.workers is invalid. Received: 0. Expected a positive integer"),
    ({"replicas": 2}, "training.replicas is invalid. Received: 2. Expected 1 unless "
                      "distribution = 'mirrored'"),
    ({"distribution": "mirrored", "workers": 2},
     "training.workers is invalid. Received: 2. Expected 1 unless distribution = "
     "'multi_worker'"),
    ({"distribution": "multi_worker", "workers": 3, "batch_size": 32},
     "training.batch_size is invalid. Received: 32. Expected a multiple of the 3 replicas"),
    ({"distribution": "mirrored", "replicas": 2, "async_checkpoint": True},
     "training.async_checkpoint is invalid. Received: True. Expected false with a "
     "distribution strategy"),
])
def test_bad_distribution_settings_name_the_field(fields, message):
  with pytest.raises(ConfigError) as raised:
    PipelineConfig().replace(training=fields)
  assert message in str(raised.value)


def test_an_unknown_distribution_flag_value_is_refused_by_argparse(capsys):
  with pytest.raises(SystemExit):
    build_parser().parse_args(["run", "--distribution", "tpu"])
  assert "--distribution: invalid choice: 'tpu'" in capsys.readouterr().err


def test_a_bad_worker_count_fails_in_one_line_before_anything_is_written(tmp_path, penguins_dir):
  home = tmp_path / "home"
  result = ckptflow("run", "--home", str(home), "--data", str(penguins_dir),
                    "--distribution", "multi_worker", "--workers", "3", check=False)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "ckptflow: error: config: training.batch_size is invalid. Received: 32. "
      "Expected a multiple of the 3 replicas (the global batch is split evenly)")
  assert not home.exists()
