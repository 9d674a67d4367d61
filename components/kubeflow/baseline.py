"""The Evaluator's baseline model on Kubeflow, found through ML Metadata.

Open-source KFP v2 does not run TFX Resolver nodes, so the Kubeflow target
has no `latest_blessed_model_resolver`. Its Evaluator looks the baseline up
itself, with the rule of TFX's `LatestBlessedModelStrategy`: among the
pipeline's LIVE ModelBlessing artifacts whose `blessed` is 1, the blessed
model with the largest artifact id.

It reads what KFP records: artifact types named by schema title
(`tfx.ModelBlessing`, `tfx.Model`), TFX properties as custom properties
(numbers as doubles), `current_model_id` as the KFP artifact name (the MLMD
id as text), artifacts attributed to the `system.Pipeline` context. TFX's
own names (`ModelBlessing`, `Model`, int values, the `pipeline` context)
are read too, so a store shared with local runs works the same way.

Imports ml_metadata only; never TensorFlow or TFX.
"""

from __future__ import annotations

import dataclasses

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from ckptflow.base import mlmd
from ckptflow.base.metadata import Store

BLESSING_TYPE_NAMES = ("tfx.ModelBlessing", "ModelBlessing")
MODEL_TYPE_NAMES = ("tfx.Model", "Model")
PIPELINE_CONTEXT_TYPES = ("system.Pipeline", "pipeline")


@dataclasses.dataclass(frozen=True)
class Baseline:
  """A blessed model to compare against: the model's URI, its artifact id
  (None if the blessing names no model in this store) and the blessing's."""

  model_uri: str
  model_id: int | None
  blessing_id: int


def _number(value: metadata_store_pb2.Value) -> float | None:
  """A property as a number: KFP records TFX's ints as doubles, and some
  as text."""
  python = mlmd.python_value(value)
  if isinstance(python, str):
    try:
      return float(python)
    except ValueError:
      return None
  return float(python) if isinstance(python, (int, float)) and not isinstance(
      python, bool) else None


def _blessings(store: Store, pipeline_name: str) -> list[metadata_store_pb2.Artifact]:
  found = []
  for type_name in BLESSING_TYPE_NAMES:
    for context_type in PIPELINE_CONTEXT_TYPES:
      condition = (f"type = {mlmd.quote(type_name)} AND state = LIVE AND "
                   f"contexts_a.type = {mlmd.quote(context_type)} AND "
                   f"contexts_a.name = {mlmd.quote(pipeline_name)}")
      found += store.get_artifacts(
          list_options=metadata_store.ListOptions(filter_query=condition))
  return found


def latest_blessed_model(store: Store, pipeline_name: str) -> Baseline | None:
  """The baseline for the next evaluation in pipeline `pipeline_name`, or
  None if none of its models was blessed yet (the Evaluator then only checks
  the absolute threshold, as TFX does without a baseline)."""
  candidates: list[Baseline] = []
  for blessing in _blessings(store, pipeline_name):
    custom = blessing.custom_properties
    if "blessed" not in custom or _number(custom["blessed"]) != 1.0:
      continue
    model_id = None
    if "current_model_id" in custom:
      number = _number(custom["current_model_id"])
      model_id = int(number) if number is not None else None
    models = store.get_artifacts_by_id([model_id]) if model_id is not None else []
    types = {t.id: t.name for t in store.get_artifact_types_by_id(
        [m.type_id for m in models])} if models else {}
    models = [m for m in models if types.get(m.type_id) in MODEL_TYPE_NAMES
              and m.state == metadata_store_pb2.Artifact.LIVE]
    if models:
      candidates.append(Baseline(model_uri=models[0].uri, model_id=models[0].id,
                                 blessing_id=blessing.id))
    elif "current_model" in custom and custom["current_model"].string_value:
      # The blessing names a model this store does not hold (KFP names it
      # by another store's id): its URI is still recorded.
      candidates.append(Baseline(model_uri=custom["current_model"].string_value,
                                 model_id=None, blessing_id=blessing.id))
  if not candidates:
    return None
  return max(candidates, key=lambda b: (b.model_id or 0, b.blessing_id))
