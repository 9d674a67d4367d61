"""What a model module declares, read from its source without running it."""

from __future__ import annotations

import sys

import pytest

from ckptflow.base.errors import ConfigError
from ckptflow.components.trainer import declarations


def write_module(tmp_path, text: str) -> str:
  path = tmp_path / "model.py"
  path.write_text(text)
  return str(path)


def test_example_module_declarations_are_read_without_importing_it():
  before = set(sys.modules)
  declared = declarations.read("ckptflow.pipeline.model")
  assert "ckptflow.pipeline.model" not in set(sys.modules) - before
  assert declared.hyperparameters["learning_rate"] == 0.01
  assert declared.hyperparameters["num_classes"] == 3
  assert "build_training" in declared.functions
  assert "build_keras_model" in declared.functions
  assert declarations.checkpoint_metrics(declared, "loop", with_eval=False) == (
      "loss", "accuracy", "running_loss", "running_accuracy")
  assert "eval_loss" in declarations.checkpoint_metrics(declared, "loop", with_eval=True)


@pytest.mark.parametrize("hyperparameters", [
    {}, {"learning_rate": 0.5}, {"learning_rate": 1}, {"hidden_units": [32]},
    {"hidden_units": []}, {"num_classes": 4, "input_noise": 0.0}])
def test_values_of_the_declared_types_are_accepted(hyperparameters):
  declared = declarations.read("ckptflow.pipeline.model")
  declarations.check_hyperparameters(declared, hyperparameters)


@pytest.mark.parametrize("hyperparameters, expected", [
    ({"learning_rate": "fast"}, "learning_rate is invalid. Received: 'fast'. Expected a number"),
    ({"num_classes": 3.0}, "num_classes is invalid. Received: 3.0. Expected an integer"),
    ({"num_classes": True}, "Received: True. Expected an integer"),
    ({"hidden_units": 16}, "hidden_units is invalid. Received: 16. Expected a list of integers"),
    ({"hidden_units": [16, 8.5]}, "Expected a list of integers"),
    ({"learning_rate": float("inf")}, "Expected a finite number"),
    ({"dropout": 0.1}, "unknown key 'dropout'"),
])
def test_values_of_other_types_and_unknown_keys_are_refused(hyperparameters, expected):
  declared = declarations.read("ckptflow.pipeline.model")
  with pytest.raises(ConfigError, match=expected.replace(".", r"\.").replace("(", r"\(")
                     .replace("[", r"\[")):
    declarations.check_hyperparameters(declared, hyperparameters)


def test_a_module_without_declarations_is_checked_only_for_its_entry_point(tmp_path):
  declared = declarations.read(write_module(tmp_path, "def build_training(spec):\n  pass\n"))
  assert declared.hyperparameters is None and declared.metrics is None
  declarations.check_hyperparameters(declared, {"anything": "goes"})
  declarations.check_entry_point(declared, "loop")
  assert declarations.checkpoint_metrics(declared, "loop", with_eval=True) is None
  with pytest.raises(ConfigError, match="does not define build_keras_model"):
    declarations.check_entry_point(declared, "fit")


def test_an_imported_entry_point_counts_as_defined(tmp_path):
  declared = declarations.read(write_module(
      tmp_path, "from somewhere.models import build_training\n"))
  declarations.check_entry_point(declared, "loop")


def test_a_none_default_accepts_any_value(tmp_path):
  declared = declarations.read(write_module(
      tmp_path, "HYPERPARAMETERS = {'schedule': None}\ndef build_training(spec):\n  pass\n"))
  declarations.check_hyperparameters(declared, {"schedule": [1, "a"]})


@pytest.mark.parametrize("text, expected", [
    ("METRICS = ('loss',)\n", "declares METRICS as"),
    ("METRICS = {'train': ('loss',)}\n", "declares METRICS as"),
    ("HYPERPARAMETERS = [1]\n", "declares HYPERPARAMETERS as list"),
    ("EVALUATION_METRICS = 'AUC'\n", "declares EVALUATION_METRICS as"),
])
def test_malformed_declarations_are_refused(tmp_path, text, expected):
  with pytest.raises(ConfigError, match=expected):
    declarations.read(write_module(tmp_path, text))


def test_imports_of_installed_packages_pass_and_a_missing_one_is_named(tmp_path):
  declared = declarations.read(write_module(
      tmp_path, "from __future__ import annotations\nimport json\nimport os.path\n"
      "from . import sibling\nimport not_installed_pkg.sub\n"))
  assert ("not_installed_pkg", 5) in declared.imports
  assert all(name != "" for name, _ in declared.imports)  # relative imports skipped
  with pytest.raises(ConfigError, match=r"imports 'not_installed_pkg' \(line 5\), which "
                     "is not installed"):
    declarations.check_imports(declared)
  declarations.check_imports(declarations.read("ckptflow.pipeline.model"))
