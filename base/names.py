"""Names the user gives: model names, and NAME=VALUE pairs.

A model name is checked once, where it enters (config, CLI, a directory
found on disk), and handed on as a `ModelName`. The rule is the one thing
every consumer accepts: a TF Serving model name that is also a safe
directory name under the serving root, and a `name` in models.config.

Imports neither TensorFlow nor TFX.
"""

from __future__ import annotations

import re
from typing import Iterable

from ckptflow.base.errors import CkptflowError, ServingError

MAX_MODEL_NAME_LEN = 255  # a directory name on common file systems
MODEL_NAME_EXPECTED = ("1-255 characters from [A-Za-z0-9_.-], not starting with "
                       "'.' and without '..'")

_MODEL_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")


def model_name_problem(name: object) -> str | None:
  """Why `name` is not a valid model name ("empty", "not valid"), or None
  if it is one."""
  if not isinstance(name, str) or not name:
    return "empty"
  if ("/" in name or "\\" in name or ".." in name or name.startswith(".")
      or len(name) > MAX_MODEL_NAME_LEN or not _MODEL_NAME_RE.fullmatch(name)):
    return "not valid"
  return None


class ModelName(str):
  """A valid model name: a TF Serving model name and the directory
  SERVING_ROOT/<name> (its base path). A `str`, so it goes wherever a name
  goes; constructing one checks it.

  Raises (on construction):
    ServingError: `name` is empty, contains a path separator, '..',
      whitespace or a character outside [A-Za-z0-9_.-], starts with '.', or
      is longer than 255 characters.
  """

  __slots__ = ()

  def __new__(cls, name: str) -> "ModelName":
    if isinstance(name, ModelName):
      return name
    problem = model_name_problem(name)
    if problem is not None:
      raise ServingError(f"model name {name!r} is {problem}. Expected "
                         f"{MODEL_NAME_EXPECTED}")
    return super().__new__(cls, name)


def validate_model_name(name: str) -> ModelName:
  """`name` as a `ModelName`, if it is one (see `ModelName`).

  Raises:
    ServingError: `name` is not a valid model name; the message names it and
      what is expected, on one line.
  """
  return ModelName(name)


# --- NAME=VALUE --------------------------------------------------------------


def parse_assignments(pairs: Iterable[str], *, flag: str,
                      name_pattern: re.Pattern | None = None, name_expected: str = "",
                      error: type[CkptflowError] = CkptflowError) -> dict[str, str]:
  """Parses `NAME=VALUE` strings (e.g. repeated `--param` flags) into a dict.

  The value is everything after the first '='; it may be empty or hold '='.
  A later pair overrides an earlier one with the same name. `name_pattern`,
  if given, must match the whole name; `name_expected` says in words what
  it allows.

  Raises:
    `error` (a CkptflowError): a pair has no '=', an empty name, or a name
      `name_pattern` does not match; the message is
      "<flag> '<pair>' is not NAME=VALUE[ with NAME <name_expected>]".
  """
  parsed = {}
  for pair in pairs:
    name, sep, value = pair.partition("=")
    if (not sep or not name
        or (name_pattern is not None and not name_pattern.fullmatch(name))):
      with_name = f" with NAME {name_expected}" if name_expected else ""
      raise error(f"{flag} {pair!r} is not NAME=VALUE{with_name}")
    parsed[name] = value
  return parsed


__all__ = ["MODEL_NAME_EXPECTED", "ModelName", "model_name_problem", "parse_assignments",
           "validate_model_name"]
