"""The pipeline's Pusher executor: TFX's Pusher, with ckptflow's push.

Stock TFX copies a blessed model into a timestamp directory in place. This
executor keeps TFX's blessing check and output conventions (`pushed`,
`pushed_destination`, `pushed_version`) but pushes through
`serving.push_saved_model`: the next integer version, staged under a
non-numeric name and renamed, never reusing a number recorded in MLMD. The
pushed version gets the label from `custom_config["label"]` (default
"stable") and `models.config` is rewritten to load it.

The push destination's `base_directory` is `SERVING_ROOT/<model_name>`.

Before the blessing check, it records where the Model came from: TFX
publishes the Trainer's Model after the Trainer returns, so the link from
the Model to its final Checkpoint is recorded here (`record_trainer_export`),
for pushed and not-pushed models alike.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

from tfx import types
from tfx.components.pusher import executor as tfx_pusher_executor
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from ckptflow.components import checkpoint, promotion
from ckptflow.components.pusher import serving
from ckptflow.base import metadata
from ckptflow.base.errors import ServingError
from ckptflow.base.faults import fault_point
from ckptflow.base.names import validate_model_name


class Executor(tfx_pusher_executor.Executor):
  """Pushes a blessed model as a new, atomically published TF Serving version."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    self._log_startup(input_dict, output_dict, exec_properties)
    model_push = artifact_utils.get_single_instance(
        output_dict[standard_component_specs.PUSHED_MODEL_KEY])
    push_destination = proto_utils.json_to_proto(
        exec_properties[standard_component_specs.PUSH_DESTINATION_KEY],
        tfx_pusher_executor.pusher_pb2.PushDestination())
    base_directory = push_destination.filesystem.base_directory
    if not base_directory:
      raise ServingError("Pusher: push_destination.filesystem.base_directory is not set. "
                         "Expected SERVING_ROOT/<model_name>")
    serving_root = os.path.dirname(base_directory.rstrip("/"))
    model_name = validate_model_name(os.path.basename(base_directory.rstrip("/")))
    custom_config = self._custom_config(exec_properties)
    label = serving.validate_label(custom_config.get("label", promotion.STABLE))

    store = metadata.open_store(metadata.target_from_env())
    record_trainer_export(store, input_dict)
    if not self.CheckBlessing(input_dict):
      self._MarkNotPushed(model_push)
      promotion.mark_not_pushed(model_push.mlmd_artifact, model_name=model_name,
                                reason="model not blessed")
      return

    # The checkpoint behind a served version is never pruned: protected
    # before the version becomes visible, as `promote` does.
    protect_source_checkpoint(store, input_dict)
    recorded = [r.version for r in promotion.served_versions(store, model_name)]
    served = serving.push_saved_model(self.GetModelPath(input_dict), serving_root,
                                      model_name, reserved_versions=recorded)
    self._MarkPushed(model_push, pushed_destination=served.path,
                     pushed_version=str(served.version))
    promotion.mark_pushed(model_push.mlmd_artifact, served, label=label, forced=False)
    # This PushedModel reaches MLMD only when TFX publishes the execution,
    # after Do returns; so models.config gets the new version from here.
    promotion.sync_models_config(store, serving_root, pending=served, pending_label=label)
    fault_point("push-record")  # published and configured, not yet in MLMD

  @staticmethod
  def _custom_config(exec_properties: Dict[str, Any]) -> Dict[str, Any]:
    import json
    raw = exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY)
    return json.loads(raw) if isinstance(raw, str) and raw else dict(raw or {})


def record_trainer_export(store, input_dict: Dict[str, List[types.Artifact]]) -> int | None:
  """Links the Model to push to the Checkpoint it was written from (its
  `checkpoint_id`, set by the Trainer), so that lineage reads PushedModel
  <- Model <- Checkpoint <- Trainer (`checkpoint.record_model_source`; a
  no-op once recorded, e.g. for a cached Trainer's Model pushed again).
  Models without a checkpoint id are left alone."""
  model = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_KEY])
  properties = model.mlmd_artifact.custom_properties
  if not model.id or "checkpoint_id" not in properties:
    return None
  return checkpoint.record_model_source(store, model.id, properties["checkpoint_id"].int_value)


def protect_source_checkpoint(store, input_dict: Dict[str, List[types.Artifact]]) -> None:
  """Marks the Checkpoint the Model was written from (its `checkpoint_id`)
  "promoted", so that retention in a later run never prunes the checkpoint
  behind a served version. Models without a checkpoint id are left alone."""
  model = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_KEY])
  properties = model.mlmd_artifact.custom_properties
  if "checkpoint_id" not in properties:
    return
  checkpoint_id = properties["checkpoint_id"].int_value
  if store.get_artifacts_by_id([checkpoint_id]):
    checkpoint.protect(store, checkpoint_id, "promoted")
