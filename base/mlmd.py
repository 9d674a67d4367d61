"""ML Metadata record plumbing, written once: property values, events,
type registration and filter-query literals.

Every module that writes or reads MLMD records builds them with these, so
a property is read, an event path is shaped and a type is registered the
same way everywhere.

Imports ml_metadata only; never TensorFlow or TFX.
"""

from __future__ import annotations

from typing import Any, Mapping

from ml_metadata import errors as mlmd_errors
from ml_metadata.proto import metadata_store_pb2

Scalar = int | float | str | bool

_SCALAR_KINDS = ("int_value", "double_value", "string_value", "bool_value")


# --- values ------------------------------------------------------------------


def python_value(value: metadata_store_pb2.Value) -> Scalar | None:
  """The Python value of an MLMD property value: int, float, str or bool;
  None for the other kinds (struct, proto) and for an unset value."""
  kind = value.WhichOneof("value")
  return getattr(value, kind) if kind in _SCALAR_KINDS else None


def mlmd_value(value: Any) -> metadata_store_pb2.Value:
  """`value` as an MLMD property value: an int (or bool, as 0/1, as TFX
  records booleans) as int_value, a float as double_value, anything else as
  the string_value of its str()."""
  result = metadata_store_pb2.Value()
  if isinstance(value, (bool, int)):
    result.int_value = int(value)
  elif isinstance(value, float):
    result.double_value = value
  else:
    result.string_value = str(value)
  return result


def set_properties(properties, values: Mapping[str, Any]) -> None:
  """Sets each of `values` into a properties map (an artifact's or
  execution's `properties` or `custom_properties`), by `mlmd_value`."""
  for key, value in values.items():
    properties[key].CopyFrom(mlmd_value(value))


def properties(node) -> dict[str, Scalar]:
  """An execution's, artifact's or context's properties and custom
  properties with scalar values, as Python values. A name that is both a
  declared and a custom property has its declared value."""
  values = {}
  for props in (node.custom_properties, node.properties):
    for key, value in props.items():
      converted = python_value(value)
      if converted is not None:
        values[key] = converted
  return values


def property_value(node, key: str) -> Scalar | None:
  """The Python value of property `key` of `node` (declared, else custom),
  or None if it has none or it is not a scalar."""
  for props in (node.properties, node.custom_properties):
    if key in props:
      return python_value(props[key])
  return None


# --- events ------------------------------------------------------------------


def event(event_type: int, key: str, *, artifact_id: int | None = None,
          execution_id: int | None = None, index: int | None = 0
          ) -> metadata_store_pb2.Event:
  """An INPUT or OUTPUT event whose path is [key, index] (TFX's convention),
  or [key] with `index` None (KFP's). Artifact and execution ids are set
  when given; `put_execution` fills in the ones left out."""
  result = metadata_store_pb2.Event(type=event_type)
  if artifact_id is not None:
    result.artifact_id = artifact_id
  if execution_id is not None:
    result.execution_id = execution_id
  result.path.steps.add().key = key
  if index is not None:
    result.path.steps.add().index = index
  return result


def input_event(key: str, artifact_id: int, *, index: int | None = 0,
                execution_id: int | None = None) -> metadata_store_pb2.Event:
  """An INPUT event from artifact `artifact_id` (see `event`)."""
  return event(metadata_store_pb2.Event.INPUT, key, artifact_id=artifact_id,
               execution_id=execution_id, index=index)


def output_event(key: str, *, artifact_id: int | None = None, index: int | None = 0,
                 execution_id: int | None = None) -> metadata_store_pb2.Event:
  """An OUTPUT event (see `event`); without `artifact_id` for an artifact
  that `put_execution` creates with it."""
  return event(metadata_store_pb2.Event.OUTPUT, key, artifact_id=artifact_id,
               execution_id=execution_id, index=index)


def without_repeated_inputs(pairs):
  """`put_execution`'s (artifact, event) pairs with each existing artifact's
  INPUT event kept once: MLMD allows one event per (artifact, execution,
  type), so a second INPUT of the same artifact under another key (a
  candidate that is also the baseline) would fail the whole transaction.
  The first pair of an artifact wins; new artifacts (artifact not None)
  are kept as they are."""
  seen: set[tuple[int, int]] = set()
  kept = []
  for artifact, event_ in pairs:
    if artifact is None and event_.HasField("artifact_id"):
      key = (event_.artifact_id, event_.type)
      if key in seen:
        continue
      seen.add(key)
    kept.append((artifact, event_))
  return kept


# --- types -------------------------------------------------------------------


def _ensure_type(store, kind: str, type_proto, properties: Mapping[str, int]) -> int:
  existing = None
  try:
    existing = getattr(store, f"get_{kind}_type")(type_proto.name)
  except mlmd_errors.NotFoundError:
    pass
  if existing is not None and all(
      existing.properties.get(name) == property_type
      for name, property_type in properties.items()):
    # Registered already, with everything we declare: use it as it is (it
    # may be TFX's, with a base type or properties of its own).
    return existing.id
  for name, property_type in properties.items():
    type_proto.properties[name] = property_type
  return getattr(store, f"put_{kind}_type")(type_proto, can_add_fields=True,
                                            can_omit_fields=True)


def ensure_artifact_type(store, name: str, properties: Mapping[str, int] | None = None,
                         *, base_type: int | None = None) -> int:
  """The id of artifact type `name`, registered if needed.

  `properties` maps declared property names to MLMD types
  (`metadata_store_pb2.INT`, ...). An existing registration that declares
  them all is used as it is (e.g. TFX's, whatever its base type and other
  properties); otherwise the missing ones are added to it, keeping those
  it has. A new type gets `base_type` (e.g. `ArtifactType.MODEL`).
  """
  artifact_type = metadata_store_pb2.ArtifactType(name=name)
  if base_type is not None:
    artifact_type.base_type = base_type
  return _ensure_type(store, "artifact", artifact_type, properties or {})


def ensure_execution_type(store, name: str,
                          properties: Mapping[str, int] | None = None) -> int:
  """The id of execution type `name`, registered if needed (see
  `ensure_artifact_type` for `properties`)."""
  return _ensure_type(store, "execution", metadata_store_pb2.ExecutionType(name=name),
                      properties or {})


def ensure_context_type(store, name: str,
                        properties: Mapping[str, int] | None = None) -> int:
  """The id of context type `name`, registered if needed (see
  `ensure_artifact_type` for `properties`)."""
  return _ensure_type(store, "context", metadata_store_pb2.ContextType(name=name),
                      properties or {})


# --- filter queries -----------------------------------------------------------


def quote(text: str) -> str:
  """`text` as a string literal of an MLMD `filter_query`
  (`ListOptions(filter_query=...)`), quotes and backslashes escaped."""
  return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


__all__ = [
    "ensure_artifact_type", "ensure_context_type", "ensure_execution_type", "event",
    "input_event", "mlmd_value", "output_event", "properties", "property_value",
    "python_value", "quote", "set_properties", "without_repeated_inputs",
]
