"""Runs the pipeline on this machine: TFX's LocalDagRunner or BeamDagRunner.

Everything a run makes lands under `--home`: the MLMD store, the pipeline
root (artifacts and checkpoints) and the TF Serving base path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from typing import Iterator

from ckptflow.pipeline import metadata
from ckptflow.pipeline.config import PipelineConfig
from ckptflow.pipeline.errors import CkptflowError

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunSummary:
  home: str
  metadata: str
  pipeline_root: str
  serving_dir: str
  checkpoints: int
  served_version_path: str | None
  blessed: bool | None

  def lines(self) -> list[str]:
    served = self.served_version_path or "nothing pushed (model not blessed)"
    return [f"served model:    {served}",
            f"serving config:  {os.path.join(self.serving_dir, 'models.config')}",
            f"metadata store:  {metadata.describe(self.metadata)}",
            f"checkpoints:     {self.checkpoints} registered, under "
            f"{self.pipeline_root}/CheckpointingTrainer/checkpoints",
            f"list them with:  ckptflow checkpoints --home {self.home}"]


@contextlib.contextmanager
def metadata_env(target: str) -> Iterator[None]:
  """Points executors of this process at `target` while the run lasts."""
  previous = os.environ.get(metadata.METADATA_ENV)
  os.environ[metadata.METADATA_ENV] = target
  try:
    yield
  finally:
    if previous is None:
      os.environ.pop(metadata.METADATA_ENV, None)
    else:
      os.environ[metadata.METADATA_ENV] = previous


def prepare_home(config: PipelineConfig) -> None:
  """Creates the home layout, failing with a one-line error if it cannot."""
  for path in (config.home, config.pipeline_root, config.serving_dir):
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as e:
      raise CkptflowError(f"cannot create directory {path!r}: {e.strerror}") from e
    if not os.access(path, os.W_OK):
      raise CkptflowError(f"directory {path!r} is not writable")


def run(config: PipelineConfig) -> RunSummary:
  """Validates `config` against its data, then runs the whole pipeline."""
  # Everything that can be checked is checked before any component runs.
  feature_keys = config.data.resolved_features()
  prepare_home(config)
  metadata.open_store(config.metadata_target)  # reachable, and a real MLMD store

  from ckptflow.pipeline.pipeline import create_pipeline
  pipeline = create_pipeline(config, feature_keys=feature_keys)
  with metadata_env(config.metadata_target):
    if config.run.orchestrator == "beam":
      from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner
      BeamDagRunner().run(pipeline)
    else:
      from tfx.orchestration.local.local_dag_runner import LocalDagRunner
      LocalDagRunner().run(pipeline)
  return summarize(config)


def summarize(config: PipelineConfig) -> RunSummary:
  from ckptflow.components.checkpoint import list_checkpoints
  store = metadata.open_store(config.metadata_target, create=False)
  pushed = store.get_artifacts_by_type("PushedModel")
  pushed.sort(key=lambda a: a.id)
  blessed = None
  served = None
  if pushed:
    latest = pushed[-1]
    blessed = bool(latest.custom_properties["pushed"].int_value) \
        if "pushed" in latest.custom_properties else None
    if blessed:
      served = latest.custom_properties["pushed_destination"].string_value
  return RunSummary(
      home=config.home, metadata=config.metadata_target,
      pipeline_root=config.pipeline_root, serving_dir=config.serving_dir,
      checkpoints=sum(1 for r in list_checkpoints(store) if r.live),
      served_version_path=served, blessed=blessed)
