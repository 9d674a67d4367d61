"""`ckptflow run`: check everything, repair what killed commands left, run
the pipeline, and say where its results are."""

from __future__ import annotations

import logging

from ckptflow.base import identity, metadata
from ckptflow.operations import doctor
from ckptflow.pipeline import runner
from ckptflow.pipeline.config import PipelineConfig

_log = logging.getLogger(__name__)


def run(config: PipelineConfig) -> runner.RunSummary:
  """Validates `config` against its data, then runs the whole pipeline.

  Everything that can be checked is checked before anything is written
  (`runner.preflight`, which also infers `num_classes` from the data),
  including that the store is this home's (a copied or moved home stops
  there). The home is then registered in its store if it is not yet
  (`identity.check`). Before the pipeline starts, and if no other ckptflow
  command is writing in the home, repairs what killed commands left behind
  (`doctor.recover`).
  """
  checked = runner.preflight(config)
  config = checked.config  # with what the preflight inferred (num_classes)
  runner.prepare_home(config)
  store = metadata.open_store(config.metadata_target)  # reachable, a real MLMD store
  identity.check(store, config.metadata_target, config.home_layout, adopt=True)
  identity.remember_serving_dir(config.home_layout)  # the default of later commands
  doctor.recover(config.metadata_target, config.home_layout)
  for note in checked.notes:
    _log.info("%s", note)
  runner.execute(config, checked.feature_keys)
  return runner.summarize(config)
