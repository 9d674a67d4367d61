"""The home layout and the home lock."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from ckptflow.base import home as home_module
from ckptflow.base.errors import CkptflowError
from ckptflow.base.home import Home, exclusive_lock_if_idle, shared_lock

_HOLD_SHARED = """
    import sys, time
    from ckptflow.base.home import shared_lock
    with shared_lock(sys.argv[1]):
      print("held", flush=True)
      time.sleep(60)
    """


def start_holder(home) -> subprocess.Popen:
  holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_HOLD_SHARED), str(home)],
                            stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "held"
  return holder


# --- layout ------------------------------------------------------------------


def test_home_derives_every_path_from_the_home_directory(tmp_path):
  where = Home(str(tmp_path / "h"))
  h = str(tmp_path / "h")
  assert where.home == h
  assert where.metadata_sqlite == os.path.join(h, "metadata.sqlite")
  assert where.pipeline_root == os.path.join(h, "pipeline_root")
  assert where.serving_root == os.path.join(h, "serving")
  assert where.models_config == os.path.join(h, "serving", "models.config")
  assert where.report_dir == os.path.join(h, "report")
  assert where.sample_data_dir == os.path.join(h, "data", "sample")
  assert where.kubeflow_dir == os.path.join(h, "kubeflow")
  assert where.export_root == os.path.join(h, "pipeline_root", "CheckpointExport")
  assert where.lock_file == os.path.join(h, ".ckptflow.lock")


def test_serving_dir_overrides_the_serving_root_and_models_config(tmp_path):
  where = Home(str(tmp_path / "h"), str(tmp_path / "tfs"))
  assert where.serving_root == str(tmp_path / "tfs")
  assert where.models_config == str(tmp_path / "tfs" / "models.config")
  assert where.pipeline_root == str(tmp_path / "h" / "pipeline_root")
  assert Home(str(tmp_path / "h"), None) == Home(str(tmp_path / "h"))


def test_relative_paths_are_made_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  where = Home("h", "s")
  assert where.home == str(tmp_path / "h")
  assert where.serving_root == str(tmp_path / "s")


def test_home_is_frozen_and_replace_derives_the_paths_again(tmp_path):
  where = Home(str(tmp_path / "a"))
  with pytest.raises(dataclasses.FrozenInstanceError):
    where.home = "/elsewhere"
  moved = dataclasses.replace(where, home=str(tmp_path / "b"))
  assert moved.pipeline_root == str(tmp_path / "b" / "pipeline_root")
  assert moved.serving_root == str(tmp_path / "b" / "serving")


def test_empty_home_is_refused_naming_it():
  with pytest.raises(CkptflowError, match=r"home '' is not valid. Expected"):
    Home("")


def test_checkpoint_roots_lists_nodes_that_have_checkpoints(tmp_path):
  where = Home(str(tmp_path))
  assert where.checkpoint_roots() == []
  (tmp_path / "pipeline_root" / "Trainer" / "checkpoints").mkdir(parents=True)
  (tmp_path / "pipeline_root" / "Evaluator" / "evaluation").mkdir(parents=True)
  (tmp_path / "pipeline_root" / "A" / "checkpoints").mkdir(parents=True)
  assert where.checkpoint_roots() == [
      str(tmp_path / "pipeline_root" / "A" / "checkpoints"),
      str(tmp_path / "pipeline_root" / "Trainer" / "checkpoints")]


# --- lock --------------------------------------------------------------------


def test_shared_lock_on_a_missing_home_creates_nothing(tmp_path):
  with shared_lock(str(tmp_path / "missing")):
    pass
  assert not (tmp_path / "missing").exists()


def test_recovery_is_not_idle_while_a_command_holds_the_shared_lock(tmp_path):
  holder = start_holder(tmp_path)
  try:
    with exclusive_lock_if_idle(str(tmp_path)) as idle:
      assert idle is False
    with exclusive_lock_if_idle(Home(str(tmp_path)), create=False) as idle:
      assert idle is False
    with shared_lock(str(tmp_path)):  # writers run side by side
      pass
  finally:
    holder.kill()
    holder.wait()


def test_home_is_idle_again_once_the_holder_is_killed(tmp_path):
  holder = start_holder(tmp_path)
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  with exclusive_lock_if_idle(str(tmp_path)) as idle:
    assert idle is True


def test_exclusive_lock_excludes_writers_while_held(tmp_path):
  with exclusive_lock_if_idle(str(tmp_path)) as idle:
    assert idle is True
    probe = subprocess.run(
        [sys.executable, "-c", textwrap.dedent("""
            import sys
            from ckptflow.base.home import exclusive_lock_if_idle
            with exclusive_lock_if_idle(sys.argv[1]) as idle:
              print(idle)
            """), str(tmp_path)], capture_output=True, text=True, timeout=60)
  assert probe.stdout.strip() == "False", probe.stderr


def test_idle_check_without_create_leaves_no_lock_file(tmp_path):
  with exclusive_lock_if_idle(str(tmp_path), create=False) as idle:
    assert idle is True
  assert not os.path.exists(tmp_path / home_module.LOCK_NAME)
  with exclusive_lock_if_idle(str(tmp_path / "missing")) as idle:
    assert idle is True
  assert not (tmp_path / "missing").exists()


def test_unwritable_home_lock_is_a_one_line_error(tmp_path):
  (tmp_path / home_module.LOCK_NAME).mkdir()  # cannot be opened for writing
  with pytest.raises(CkptflowError, match="cannot open the home lock"):
    with shared_lock(str(tmp_path)):
      pass
