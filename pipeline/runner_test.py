"""The local runner reports pipeline stages from the TFX runners' records."""

from __future__ import annotations

import io
import logging

import pytest
from absl import logging as absl_logging

from ckptflow.base.progress import Progress
from ckptflow.pipeline import runner


def _messages(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.name == "ckptflow.progress"]


@pytest.mark.parametrize("started, finished", [
    ("Component %s is running.", "Component %s is finished."),  # LocalDagRunner
    ("node %s is running.", "node %s is finished."),  # BeamDagRunner
])
def test_stage_lines_come_from_the_runners_records_even_after_absl_is_quietened(
    caplog, started, finished):
  caplog.set_level(logging.INFO, logger="ckptflow.progress")
  reporter = Progress(io.StringIO(), live=False, ticker=False)
  with runner.watch_stages(reporter, ["CsvExampleGen", "Trainer", "Pusher"]):
    absl_logging.info(started, "CsvExampleGen")
    absl_logging.info(finished, "CsvExampleGen")
    # TensorFlow saves and restores absl's verbosity around Keras saves.
    saved = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.FATAL)
    absl_logging.set_verbosity(saved)
    absl_logging.info(started, "Trainer")
  messages = _messages(caplog)
  assert messages[0] == "[1/3] CsvExampleGen: running"
  assert messages[1].startswith("[1/3] CsvExampleGen: done in ")
  assert messages[2] == "[2/3] Trainer: running"
  assert messages[3].startswith("[2/3] Trainer: stopped in ")  # the block ended
  assert len(messages) == 4


def test_an_interrupted_or_failed_run_ends_its_stage_saying_so(caplog):
  caplog.set_level(logging.INFO, logger="ckptflow.progress")
  reporter = Progress(io.StringIO(), live=False, ticker=False)
  with pytest.raises(KeyboardInterrupt):
    with runner.watch_stages(reporter, ["Trainer"]):
      absl_logging.info("Component %s is running.", "Trainer")
      raise KeyboardInterrupt
  assert _messages(caplog)[-1].startswith("[1/1] Trainer: interrupted in ")
  with pytest.raises(ValueError):
    with runner.watch_stages(reporter, ["Trainer"]):
      absl_logging.info("Component %s is running.", "Trainer")
      raise ValueError("boom")
  assert _messages(caplog)[-1].startswith("[1/1] Trainer: failed in ")
  assert not any(isinstance(f, runner.StageWatcher)
                 for f in logging.getLogger("absl").filters)
