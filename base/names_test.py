"""Model names (one rule) and NAME=VALUE pairs."""

from __future__ import annotations

import re

import pytest

from ckptflow.base import names
from ckptflow.base.errors import CkptflowError, ServingError


@pytest.mark.parametrize("name", [
    "", "a/b", "a\\b", "..", "a..b", ".hidden", "has space", "tab\tname",
    "new\nline", "caf\u00e9", "semi;colon", "x" * 256, None, 7,
])
def test_invalid_model_name_is_refused_naming_it_and_what_is_expected(name):
  with pytest.raises(ServingError) as raised:
    names.ModelName(name)
  message = str(raised.value)
  assert "\n" not in message
  assert f"model name {name!r} is " in message
  assert f"Expected {names.MODEL_NAME_EXPECTED}" in message
  assert names.model_name_problem(name) is not None


@pytest.mark.parametrize("name", ["penguin", "my-model_2", "v1.2", "A", "x" * 255, "-m"])
def test_valid_model_name_is_a_str_equal_to_it(name):
  model = names.validate_model_name(name)
  assert isinstance(model, names.ModelName) and isinstance(model, str)
  assert model == name and str(model) == name
  assert names.ModelName(model) is model
  assert names.model_name_problem(name) is None


def test_names_config_used_to_accept_but_serving_refused_are_refused():
  # The config once accepted these and the push then failed on them.
  with pytest.raises(ServingError, match="is not valid"):
    names.ModelName("m" * 300)


def test_assignments_split_at_the_first_equals_sign():
  assert names.parse_assignments(["a=1", "b=x=y", "c=", "a=2"], flag="--param") == {
      "a": "2", "b": "x=y", "c": ""}
  assert names.parse_assignments([], flag="--param") == {}


@pytest.mark.parametrize("pair", ["novalue", "=1", ""])
def test_malformed_assignment_is_refused_naming_the_flag_and_the_pair(pair):
  with pytest.raises(CkptflowError) as raised:
    names.parse_assignments(["ok=1", pair], flag="--param")
  assert str(raised.value) == f"--param {pair!r} is not NAME=VALUE"


def test_assignment_name_must_match_the_pattern_whole():
  class EnvError(CkptflowError):
    pass

  pattern = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
  assert names.parse_assignments(["HOME_1=x"], flag="--env", name_pattern=pattern) == {
      "HOME_1": "x"}
  for pair in ("1X=y", "A-B=y", "A\n=y"):
    with pytest.raises(EnvError) as raised:
      names.parse_assignments([pair], flag="--env", name_pattern=pattern,
                              name_expected="an environment variable name", error=EnvError)
    assert str(raised.value) == (f"--env {pair!r} is not NAME=VALUE with NAME an "
                                 "environment variable name")
