"""The Evaluator executor: TFX's, with the served version labelled stable as
the baseline.

Given no `baseline_model` input and a `baseline_model_name`, it looks up the
version of that model labelled `stable` in the run's metadata store (the
CKPTFLOW_METADATA store the runners set; `promotion.current_labels`, which
reads pushes and label changes alike, so after a `ckptflow rollback` it is
the rolled-back-to version) and evaluates the candidate against the served
version's own files (hard-linked into the executor's temp dir). That is the baseline `ckptflow promote` uses, so
the pipeline and `promote` bless by the same comparison. No stable version
(or its directory is gone): no baseline, only value thresholds apply.

The blessing records which version it was compared with:
`baseline_model` (the served directory), `baseline_model_name`,
`baseline_version`, `baseline_pushed_model_mlmd_id` and, when MLMD says
which Model was pushed, `baseline_model_mlmd_id`.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List

from tfx import types
from tfx.components.evaluator import executor as evaluator_executor
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs

from ckptflow.base import metadata, storage
from ckptflow.components import promotion

BASELINE_MODEL_NAME_KEY = "baseline_model_name"
# TFX sets this from the baseline artifact's id, which a looked-up version
# does not have in the pipeline's channel.
_TFX_BASELINE_MODEL_ID_KEY = "baseline_model_id"

_log = logging.getLogger(__name__)


def stable_version(store, model_name: str) -> tuple[promotion.ServedRecord, int | None] | None:
  """(the served version of `model_name` labelled stable, the Model it was
  pushed from or None), if its SavedModel is still there; else None."""
  record = promotion.stable_served(store, model_name)
  if record is None:
    return None
  return record, promotion.pushed_models(store, [record]).get(record.artifact_id)


class Executor(evaluator_executor.Executor):
  """TFX's Evaluator executor with the stable version as baseline (see the
  module docstring)."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    exec_properties = dict(exec_properties)
    model_name = exec_properties.pop(BASELINE_MODEL_NAME_KEY, "") or ""
    input_dict = dict(input_dict)
    found = None
    if not input_dict.get(standard_component_specs.BASELINE_MODEL_KEY) and model_name:
      found = stable_version(metadata.open_store(metadata.target_from_env()), model_name)
    holder = None
    if found is not None:
      record, _ = found
      # TFMA loads URI/Format-Serving: hard links to the served version's
      # files, not a symlink (TFX empties a symlinked directory when it
      # deletes its temp dir).
      tmp_dir = self._get_tmp_dir()
      holder = os.path.join(tmp_dir, "stable-baseline")
      storage.remove_tree(holder, (tmp_dir,))
      storage.link_tree(record.path, os.path.join(holder, "Format-Serving"))
      model = standard_artifacts.Model()
      model.uri = holder
      input_dict[standard_component_specs.BASELINE_MODEL_KEY] = [model]
    try:
      super().Do(input_dict, output_dict, exec_properties)
    finally:
      if holder is not None:
        storage.remove_tree(holder, (tmp_dir,))
    if found is not None:
      record, model_id = found
      blessing = artifact_utils.get_single_instance(
          output_dict[standard_component_specs.BLESSING_KEY])
      blessing.mlmd_artifact.custom_properties.pop(_TFX_BASELINE_MODEL_ID_KEY, None)
      blessing.set_string_custom_property("baseline_model", record.path)
      blessing.set_string_custom_property("baseline_model_name", record.model_name)
      blessing.set_int_custom_property("baseline_version", record.version)
      blessing.set_int_custom_property("baseline_pushed_model_mlmd_id", record.artifact_id)
      if model_id is not None:
        blessing.set_int_custom_property("baseline_model_mlmd_id", model_id)
