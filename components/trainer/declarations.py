"""What a model module declares, read from its source without running it.

A run checks its model module before anything is written, and before
TensorFlow is imported (importing it costs seconds, and the module itself
usually imports it). So the module's source is parsed, not executed:

* it must exist, be UTF-8 text and parse as Python, and every package it
  imports at its top level must be installed;
* it must define the function its training style calls
  (`build_training` for "loop", `build_keras_model` for "fit"; see
  `contract.py`), as a top-level `def` or an imported name;
* it may declare, as top-level literal assignments:

  ``HYPERPARAMETERS``: a dict of name -> default value. A config's
  `training.hyperparameters` may then name only these keys, each with a
  value of its default's type (an int is accepted for a float; a list's
  items must have the type of the default's items). A default of None
  accepts any value.

  ``METRICS``: a dict of training style -> the names of the metrics its
  checkpoints carry (what `train_step` returns, or `model.fit`'s logs).
  `best_metric` (used by `keep_best` and `warm_start = "best"`) must be
  one of them, or one of ``EVAL_METRICS`` when `eval_every` is set.

  ``EVAL_METRICS``: the names `eval_step` returns (default: those of
  `contract.default_eval_step`, `eval_loss` and `eval_accuracy`).

  ``EVALUATION_METRICS``: the `tf.keras.metrics` class names (higher is
  better) that the Evaluator's blessing rule may use on this model's
  outputs (`evaluation.metric`).

A module that declares none of these is still checked for the function;
its hyperparameters and metric names are then not checked before the run.

Imports neither TensorFlow nor TFX.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import math
import os
from typing import Any, Mapping

from ckptflow.base.errors import ConfigError

# What `contract.default_eval_step` returns, plus the step the loop adds.
DEFAULT_EVAL_METRICS = ("eval_loss", "eval_accuracy", "eval_at_step")
ENTRY_POINTS = {"loop": "build_training", "fit": "build_keras_model"}
_DECLARED = ("HYPERPARAMETERS", "METRICS", "EVAL_METRICS", "EVALUATION_METRICS")


@dataclasses.dataclass(frozen=True)
class ModuleDeclarations:
  """The declarations of one model module (None: not declared)."""

  module: str
  path: str
  functions: frozenset[str]
  imports: tuple[tuple[str, int], ...] = ()  # (top-level package, line)
  hyperparameters: Mapping[str, Any] | None = None
  metrics: Mapping[str, tuple[str, ...]] | None = None
  eval_metrics: tuple[str, ...] = DEFAULT_EVAL_METRICS
  evaluation_metrics: tuple[str, ...] | None = None


def _fail(module: str, problem: str) -> ConfigError:
  return ConfigError(f"config: training.module {module!r} {problem}")


def source_path(module: str) -> str:
  """The file of `module` (an import path or a .py file), found without
  running it (parent packages of an import path are imported).

  Raises:
    ConfigError: there is no such module, or it has no Python source.
  """
  if module.endswith(".py"):
    if not os.path.isfile(module):
      raise _fail(module, "does not exist. Expected a .py file or an importable "
                  "module path")
    return module
  if not all(part.isidentifier() for part in module.split(".")):
    raise _fail(module, "is not a module path. Expected dotted Python names such "
                "as mypackage.model, or a .py file")
  try:
    spec = importlib.util.find_spec(module)
  except ImportError as e:  # a parent package is missing or fails to import
    raise _fail(module, f"cannot be imported: {e}") from e
  except Exception as e:  # pylint: disable=broad-except  # a parent package raised
    raise _fail(module, f"cannot be imported: its package raised "
                f"{type(e).__name__}: {e}") from e
  if spec is None:
    raise _fail(module, "cannot be imported: no such module. Expected an importable "
                "module path or a .py file")
  origin = spec.origin
  if not origin or not origin.endswith(".py") or not os.path.isfile(origin):
    raise _fail(module, f"has no Python source file (found {origin!r})")
  return origin


def read(module: str) -> ModuleDeclarations:
  """Parses `module`'s source and returns what it declares.

  Raises:
    ConfigError: the module cannot be found, read or parsed, or a
      declaration is not a literal of the expected shape.
  """
  path = source_path(module)
  where = "" if module == path else f"({path}) "
  try:
    with open(path, "rb") as f:
      text = f.read().decode("utf-8")
  except UnicodeDecodeError as e:
    raise _fail(module, f"{where}is not UTF-8 text (byte {e.start})") from e
  except OSError as e:
    raise _fail(module, f"{where}cannot be read: {e.strerror}") from e
  try:
    tree = ast.parse(text, filename=path)
  except SyntaxError as e:
    raise _fail(module, f"{where}has a syntax error at line {e.lineno}: {e.msg}") from e
  functions: set[str] = set()
  values: dict[str, Any] = {}
  imports: list[tuple[str, int]] = []
  for node in tree.body:
    if isinstance(node, ast.Import):
      imports += [(alias.name.split(".")[0], node.lineno) for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      imports.append((node.module.split(".")[0], node.lineno))
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      functions.add(node.name)
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      for alias in node.names:
        functions.add(alias.asname or alias.name.split(".")[0])
        if alias.name == "*":
          functions.update(ENTRY_POINTS.values())  # cannot tell: let the import decide
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      for target in targets:
        if isinstance(target, ast.Name):
          functions.add(target.id)
          if target.id in _DECLARED and node.value is not None:
            try:
              values[target.id] = ast.literal_eval(node.value)
            except ValueError as e:
              raise _fail(module, f"declares {target.id} with a value that is not a "
                          f"literal (line {node.lineno}). Expected a dict or tuple of "
                          "plain values") from e
  return ModuleDeclarations(
      module=module, path=path, functions=frozenset(functions), imports=tuple(imports),
      hyperparameters=_mapping(module, values, "HYPERPARAMETERS"),
      metrics=_metrics(module, values),
      eval_metrics=_names(module, values, "EVAL_METRICS") or DEFAULT_EVAL_METRICS,
      evaluation_metrics=_names(module, values, "EVALUATION_METRICS"))


def _mapping(module: str, values: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
  value = values.get(name)
  if value is not None and not (isinstance(value, dict)
                                and all(isinstance(k, str) for k in value)):
    raise _fail(module, f"declares {name} as {type(value).__name__}. Expected a dict "
                "of name -> default value")
  return value


def _names(module: str, values: Mapping[str, Any], name: str) -> tuple[str, ...] | None:
  value = values.get(name)
  if value is None:
    return None
  if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
    raise _fail(module, f"declares {name} as {value!r}. Expected a tuple of names")
  return tuple(value)


def _metrics(module: str, values: Mapping[str, Any]) -> Mapping[str, tuple[str, ...]] | None:
  value = values.get("METRICS")
  if value is None:
    return None
  if not isinstance(value, dict) or not all(
      k in ENTRY_POINTS and isinstance(v, (list, tuple)) and all(isinstance(n, str) for n in v)
      for k, v in value.items()):
    raise _fail(module, f"declares METRICS as {value!r}. Expected a dict of training "
                "style ('loop', 'fit') -> tuple of metric names")
  return {k: tuple(v) for k, v in value.items()}


def _type_name(default: Any) -> str:
  if isinstance(default, bool):
    return "true or false"
  if isinstance(default, int):
    return "an integer"
  if isinstance(default, float):
    return "a number"
  if isinstance(default, str):
    return "a string"
  if isinstance(default, (list, tuple)):
    return f"a list of {_item_name(default[0])}" if default else "a list"
  if isinstance(default, dict):
    return "a table"
  return type(default).__name__


def _item_name(default: Any) -> str:
  if isinstance(default, bool):
    return "booleans"
  if isinstance(default, int):
    return "integers"
  if isinstance(default, float):
    return "numbers"
  if isinstance(default, str):
    return "strings"
  return "values"


def _matches(value: Any, default: Any) -> bool:
  if default is None:
    return True
  if isinstance(default, bool):
    return isinstance(value, bool)
  if isinstance(default, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(default, (list, tuple)):
    return isinstance(value, (list, tuple)) and (
        not default or all(_matches(item, default[0]) for item in value))
  if isinstance(default, dict):
    return isinstance(value, dict)
  return isinstance(value, type(default))


def check_hyperparameters(declared: ModuleDeclarations,
                          hyperparameters: Mapping[str, Any]) -> None:
  """Checks a config's hyperparameters against the module's declaration.

  Raises:
    ConfigError: a key the module does not declare, or a value whose type
      is not its default's; naming the key, the value and the type.
  """
  if declared.hyperparameters is None:
    return
  for key, value in hyperparameters.items():
    if key not in declared.hyperparameters:
      raise ConfigError(
          f"config: training.hyperparameters has unknown key {key!r}: "
          f"{declared.module} declares {', '.join(sorted(declared.hyperparameters))}")
    default = declared.hyperparameters[key]
    if not _matches(value, default):
      raise ConfigError(
          f"config: training.hyperparameters.{key} is invalid. Received: {value!r}. "
          f"Expected {_type_name(default)} (default {default!r}, declared in "
          f"{declared.module} HYPERPARAMETERS)")
    if isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(
          f"config: training.hyperparameters.{key} is invalid. Received: {value!r}. "
          "Expected a finite number")


def check_imports(declared: ModuleDeclarations) -> None:
  """Every package the module imports at its top level is installed
  (found, not imported: finding a top-level package runs none of its code).

  Raises:
    ConfigError: naming the package and the line that imports it.
  """
  for package, line in declared.imports:
    if package == "__future__":
      continue
    try:
      found = importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
      found = False
    if not found:
      raise _fail(declared.module, f"imports {package!r} (line {line}), which is not "
                  "installed. Expected an installed package (pip install it, or fix "
                  "the import)")


def check_entry_point(declared: ModuleDeclarations, style: str) -> None:
  """The module defines the function training style `style` calls."""
  entry = ENTRY_POINTS[style]
  if entry not in declared.functions:
    other = "fit" if style == "loop" else "loop"
    hint = (f"; it defines {ENTRY_POINTS[other]}, set training.style = {other!r}"
            if ENTRY_POINTS[other] in declared.functions else "")
    raise _fail(declared.module, f"does not define {entry}(spec), which training.style "
                f"= {style!r} calls (see components/trainer/contract.py){hint}")


def checkpoint_metrics(declared: ModuleDeclarations, style: str,
                       with_eval: bool) -> tuple[str, ...] | None:
  """The metric names this module's checkpoints carry in `style` (None:
  not declared)."""
  if declared.metrics is None or style not in declared.metrics:
    return None
  return declared.metrics[style] + (declared.eval_metrics if with_eval else ())
