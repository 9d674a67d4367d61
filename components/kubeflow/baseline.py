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

from ckptflow.base.metadata import query

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


def _quote(value: str) -> str:
  return "'" + value.replace("'", "''") + "'"


def _number(value: metadata_store_pb2.Value) -> float | None:
  kind = value.WhichOneof("value")
  if kind in ("int_value", "double_value"):
    return float(getattr(value, kind))
  if kind == "string_value":
    try:
      return float(value.string_value)
    except ValueError:
      return None
  return None


def _blessings(store: metadata_store.MetadataStore,
               pipeline_name: str) -> list[metadata_store_pb2.Artifact]:
  found = []
  for type_name in BLESSING_TYPE_NAMES:
    for context_type in PIPELINE_CONTEXT_TYPES:
      condition = (f"type = {_quote(type_name)} AND state = LIVE AND "
                   f"contexts_a.type = {_quote(context_type)} AND "
                   f"contexts_a.name = {_quote(pipeline_name)}")
      found += query(lambda: store.get_artifacts(
          list_options=metadata_store.ListOptions(filter_query=condition)),
                     what="listing model blessings")
  return found


def latest_blessed_model(store: metadata_store.MetadataStore,
                         pipeline_name: str) -> Baseline | None:
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
    models = query(lambda: store.get_artifacts_by_id([model_id]),
                   what="reading a blessed model") if model_id is not None else []
    types = {t.id: t.name for t in query(
        lambda: store.get_artifact_types_by_id([m.type_id for m in models]),
        what="reading artifact types")} if models else {}
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
