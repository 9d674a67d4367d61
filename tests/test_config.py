"""The typed config: loading, overriding, and bad values caught before any
component runs."""

from __future__ import annotations

import pytest

from ckptflow.pipeline.config import PipelineConfig
from ckptflow.base.errors import ConfigError, DataError
from support import ckptflow


def test_toml_sections_load_into_typed_fields(tmp_path):
  path = tmp_path / "c.toml"
  path.write_text("""
[data]
path = "/data"
label = "y"
features = ["a", "b"]
[training]
train_steps = 50
checkpoint_every = 10
hyperparameters = { learning_rate = 0.1 }
[serving]
model_name = "m1"
[run]
beam_args = ["--direct_num_workers=2"]
""")
  config = PipelineConfig.from_toml(str(path))
  assert config.data.features == ("a", "b")
  assert config.training.train_steps == 50
  assert config.training.hyperparameters == {"learning_rate": 0.1}
  assert config.serving.model_name == "m1"
  assert config.run.beam_args == ("--direct_num_workers=2",)


def test_replace_overrides_one_field_and_keeps_the_rest(tmp_path):
  config = PipelineConfig().replace(training={"train_steps": 7})
  assert config.training.train_steps == 7
  assert config.training.checkpoint_every == PipelineConfig().training.checkpoint_every


@pytest.mark.parametrize("section, field, value, named", [
    ("training", "checkpoint_every", 0, "training.checkpoint_every"),
    ("training", "train_steps", -5, "training.train_steps"),
    ("training", "batch_size", "32", "training.batch_size"),
    ("training", "warm_start", "yesterday", "training.warm_start"),
    ("training", "best_mode", "up", "training.best_mode"),
    ("serving", "model_name", "../etc", "serving.model_name"),
    ("serving", "model_name", "a/b", "serving.model_name"),
    ("run", "orchestrator", "airflow", "run.orchestrator"),
    ("evaluation", "lower_bound", -1, "evaluation.lower_bound"),
])
def test_bad_field_value_names_the_field(section, field, value, named):
  with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
    PipelineConfig().replace(**{section: {field: value}})


def test_unknown_field_in_toml_is_named(tmp_path):
  path = tmp_path / "c.toml"
  path.write_text("[training]\ntrain_stpes = 5\n")
  with pytest.raises(ConfigError, match=r"unknown field training\.train_stpes"):
    PipelineConfig.from_toml(str(path))


def test_invalid_toml_is_reported_with_its_path(tmp_path):
  path = tmp_path / "c.toml"
  path.write_text("[training\n")
  with pytest.raises(ConfigError, match="not valid TOML"):
    PipelineConfig.from_toml(str(path))


def test_unknown_feature_column_is_named(penguins_dir):
  config = PipelineConfig().replace(data={"path": str(penguins_dir),
                                          "features": ("culmen_length_mm", "beak_colour")})
  with pytest.raises(ConfigError, match="'beak_colour' is not in the data"):
    config.data.resolved_features()


def test_unknown_label_column_is_named(penguins_dir):
  config = PipelineConfig().replace(data={"path": str(penguins_dir), "label": "kind"})
  with pytest.raises(ConfigError, match="data.label column 'kind'"):
    config.data.resolved_features()


def test_features_default_to_every_column_but_the_label(penguins_dir):
  config = PipelineConfig().replace(data={"path": str(penguins_dir)})
  assert config.data.resolved_features() == (
      "culmen_length_mm", "culmen_depth_mm", "flipper_length_mm", "body_mass_g")


def test_missing_data_dir_is_named(tmp_path):
  config = PipelineConfig().replace(data={"path": str(tmp_path / "nope")})
  with pytest.raises(DataError, match="does not exist"):
    config.data.resolved_features()


@pytest.mark.parametrize("flags, message", [
    (["--checkpoint-every", "0"], "training.checkpoint_every is invalid"),
    (["--train-steps", "-1"], "training.train_steps is invalid"),
    (["--label", "kind"], "data.label column 'kind' is not in the data"),
    (["--features", "culmen_length_mm,wingspan"], "column 'wingspan' is not in the data"),
])
def test_cli_rejects_bad_config_before_any_component_runs(tmp_path, penguins_dir, flags, message):
  home = tmp_path / "home"
  result = ckptflow("run", "--home", str(home), "--data", str(penguins_dir), *flags,
                    check=False, timeout=120)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith("ckptflow: error: ") and message in lines[-1]
  assert not (home / "metadata.sqlite").exists()
  assert not (home / "pipeline_root").exists()


def test_cli_rejects_missing_data_dir_in_one_line(tmp_path):
  result = ckptflow("run", "--home", str(tmp_path / "h"), "--data", str(tmp_path / "none"),
                    check=False, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      f"ckptflow: error: data directory {str(tmp_path / 'none')!r} does not exist "
      "or is not a directory")
  assert not (tmp_path / "h" / "pipeline_root").exists()


def _labels_csv(directory, labels):
  directory.mkdir(parents=True, exist_ok=True)
  lines = ["species,a,b"] + [f"{label},0.{i},0.5" for i, label in enumerate(labels)]
  (directory / "data.csv").write_text("\n".join(lines) + "\n")
  return str(directory)


def test_preflight_infers_num_classes_from_the_labels_and_writes_nothing(tmp_path):
  from ckptflow.pipeline import runner
  data = _labels_csv(tmp_path / "data", [0, 1, 2, 3, 1])
  home = tmp_path / "home"
  config = PipelineConfig().replace(data={"path": data}, run={"home": str(home)})
  checked = runner.preflight(config)
  assert checked.config.training.hyperparameters["num_classes"] == 4
  assert checked.config.training.hyperparameters["learning_rate"] == 0.01  # kept
  assert checked.feature_keys == ("a", "b")
  assert not home.exists()


def test_preflight_keeps_a_configured_num_classes_that_is_large_enough(tmp_path):
  from ckptflow.pipeline import runner
  data = _labels_csv(tmp_path / "data", [0, 1, 2])
  config = PipelineConfig().replace(
      data={"path": data}, run={"home": str(tmp_path / "home")},
      training={"hyperparameters": {"num_classes": 5}})
  assert runner.preflight(config).config.training.hyperparameters == {"num_classes": 5}


def test_a_module_that_does_not_declare_num_classes_gets_none_inferred(tmp_path):
  from ckptflow.pipeline import runner
  module = tmp_path / "plain_model.py"
  module.write_text("def build_training(spec):\n  pass\n")
  config = PipelineConfig().replace(
      data={"path": _labels_csv(tmp_path / "data", [0, 1, 3])},
      run={"home": str(tmp_path / "home")},
      training={"module": str(module), "hyperparameters": {"width": 3}})
  assert runner.preflight(config).config.training.hyperparameters == {"width": 3}
