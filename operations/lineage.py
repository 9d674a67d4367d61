"""Where a served version (or any artifact) came from, read from MLMD events.

`lineage(store, target)` walks ML Metadata events upstream, breadth-first:
an artifact's producer is the execution with an OUTPUT event to it, and an
execution's inputs are the artifacts with INPUT events to it. For a served
version this is PushedModel <- Promote (or Pusher) <- Model <- export (or,
for the Trainer's own Model, `ckptflow.TrainerExport`) <- Checkpoint <-
Trainer <- Examples/Schema ... down to the roots (artifacts nothing
produced). Only MLMD's own API is used; nothing is written.

Renderers: `to_text` (an indented tree from the target back to the data),
`to_json` (a dict), `to_dot` (graphviz source) and `to_svg` (runs `dot`).

This module imports neither TensorFlow nor TFX.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import shutil
import subprocess
from typing import Any, Mapping

from ml_metadata.proto import metadata_store_pb2

from ckptflow.components import promotion
from ckptflow.components.checkpoint import CHECKPOINT_TYPE_NAME
from ckptflow.base.errors import CkptflowError, MetadataError
from ckptflow.base.names import validate_model_name
from ckptflow.base.metadata import Store

DEFAULT_MAX_NODES = 500

ARTIFACT = "artifact"
EXECUTION = "execution"

# Properties worth a person's attention, in display order; to_json has all.
ARTIFACT_KEY_PROPERTIES = (
    "step", "epoch", "metrics", "span", "version", "split_names", "model_name",
    "pushed", "pushed_version", "label", "forced", "blessed", "reason",
    "checkpoint_id", "checkpoint_step", "size_bytes", "protected", "fingerprint")
EXECUTION_KEY_PROPERTIES = (
    "module", "fingerprint", "hyperparameters", "seed", "train_steps",
    "checkpoint_every", "checkpoint_step", "model_name", "label", "version",
    "previous_version", "blessed", "baseline_version", "reason", "forced",
    "outcome", "user_reason", "user", "host")
_MAX_SHOWN_CHARS = 80

_EVENT_NAMES = {metadata_store_pb2.Event.INPUT: "INPUT",
                metadata_store_pb2.Event.OUTPUT: "OUTPUT"}


@dataclasses.dataclass(frozen=True)
class LineageNode:
  """An artifact or an execution in a lineage graph.

  `properties` holds every property and custom property (declared ones win
  on a name clash), as JSON values. `state` is the MLMD state name (LIVE,
  DELETED for artifacts; COMPLETE, FAILED, ... for executions).
  """

  kind: str  # ARTIFACT or EXECUTION
  id: int
  type_name: str
  state: str
  uri: str = ""
  properties: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def key(self) -> str:
    return f"{self.kind}:{self.id}"

  def key_properties(self) -> dict[str, Any]:
    names = ARTIFACT_KEY_PROPERTIES if self.kind == ARTIFACT else EXECUTION_KEY_PROPERTIES
    return {n: self.properties[n] for n in names if n in self.properties}

  def as_json(self) -> dict:
    return {"kind": self.kind, "id": self.id, "type": self.type_name,
            "state": self.state, "uri": self.uri,
            "properties": dict(self.properties)}


@dataclasses.dataclass(frozen=True)
class LineageEdge:
  """An MLMD event, in the direction data flows: INPUT edges go from an
  artifact to the execution that read it, OUTPUT edges from an execution to
  the artifact it wrote."""

  source: str  # node key
  target: str  # node key
  event_type: str  # "INPUT" or "OUTPUT"

  def as_json(self) -> dict:
    return {"source": self.source, "target": self.target, "type": self.event_type}


@dataclasses.dataclass(frozen=True)
class LineageGraph:
  """The upstream lineage of `root` (a node key), as `target` named it.

  `truncated` is True if the walk stopped at its node cap before the roots.
  Nodes are in breadth-first order from the root.
  """

  target: str
  root: str
  nodes: Mapping[str, LineageNode]
  edges: tuple[LineageEdge, ...]
  truncated: bool
  max_nodes: int

  def upstream(self, key: str) -> list[tuple[LineageEdge, LineageNode]]:
    """The edges into `key`, with their source nodes, by source id."""
    found = [(e, self.nodes[e.source]) for e in self.edges if e.target == key]
    return sorted(found, key=lambda pair: (pair[1].kind, pair[1].id))


# --- walking -----------------------------------------------------------------


def _value(value: metadata_store_pb2.Value) -> Any:
  kind = value.WhichOneof("value")
  if kind in ("int_value", "double_value", "string_value", "bool_value"):
    text = getattr(value, kind)
    if kind == "string_value" and text[:1] in "{[":
      try:
        return json.loads(text)  # metrics, hyperparameters written as JSON
      except ValueError:
        pass
    return text
  if kind == "struct_value":
    from google.protobuf import json_format
    return json_format.MessageToDict(value.struct_value)
  if kind == "proto_value":
    return f"<{value.proto_value.TypeName()}>"
  return None


def _properties(node) -> dict[str, Any]:
  merged = {k: _value(v) for k, v in node.custom_properties.items()}
  merged.update({k: _value(v) for k, v in node.properties.items()})
  return dict(sorted(merged.items()))


def _node(kind: str, record, type_name: str) -> LineageNode:
  """The LineageNode of an MLMD Artifact (kind ARTIFACT) or Execution."""
  if kind == ARTIFACT:
    state = metadata_store_pb2.Artifact.State.Name(record.state)
    return LineageNode(kind=ARTIFACT, id=record.id, type_name=type_name, state=state,
                       uri=record.uri, properties=_properties(record))
  state = metadata_store_pb2.Execution.State.Name(record.last_known_state)
  return LineageNode(kind=EXECUTION, id=record.id, type_name=type_name, state=state,
                     properties=_properties(record))


class _TypeNames:
  """Artifact and execution type names by type id, read from MLMD once per
  type id."""

  def __init__(self, store: Store):
    self._store = store
    self._names: dict[tuple[str, int], str] = {}

  def of(self, kind: str, records) -> dict[int, str]:
    """type id -> type name for every record of `kind` in `records` ("?" for
    a type MLMD no longer has)."""
    type_ids = {r.type_id for r in records}
    missing = sorted(t for t in type_ids if (kind, t) not in self._names)
    if missing:
      types = (self._store.get_artifact_types_by_id(missing) if kind == ARTIFACT
               else self._store.get_execution_types_by_id(missing))
      for found in types:
        self._names[(kind, found.id)] = found.name
    return {t: self._names.get((kind, t), "?") for t in type_ids}


def _resolve_target(store, target) -> tuple[int, str]:
  """(root artifact id, canonical target text)."""
  if isinstance(target, int) and not isinstance(target, bool):
    return target, str(target)
  text = str(target).strip()
  if text.isdigit():
    return int(text), text
  if ":" in text:
    model_name, _, version = text.rpartition(":")
    if not version.isdigit():
      raise CkptflowError(f"lineage target {text!r} has version {version!r}. "
                          "Expected MODEL:VERSION with a numeric version, or an "
                          "artifact id")
    validate_model_name(model_name)
    record = promotion.served_version(store, model_name, int(version))
    return record.artifact_id, text
  raise CkptflowError(f"lineage target {text!r} is not MODEL:VERSION or an "
                      "artifact id")


def _key(kind: str, node_id: int) -> str:
  """A node's key in a LineageGraph: "artifact:12", "execution:7"."""
  return f"{kind}:{node_id}"


def _neighbour_id(event: metadata_store_pb2.Event, kind: str) -> int:
  """The id of the `kind` end of `event`."""
  return event.execution_id if kind == EXECUTION else event.artifact_id


def _records(store: Store, kind: str, ids: list[int]) -> list:
  """The MLMD Artifacts or Executions with these ids."""
  if not ids:
    return []
  if kind == ARTIFACT:
    return store.get_artifacts_by_id(ids)
  return store.get_executions_by_id(ids)


def _upstream_events(store: Store, kind: str,
                     ids: list[int]) -> list[metadata_store_pb2.Event]:
  """The events that lead upstream from the nodes `ids` of `kind`: the
  OUTPUT events that wrote these artifacts, or the INPUT events these
  executions read."""
  if kind == ARTIFACT:
    events = store.get_events_by_artifact_ids(ids)
    return [e for e in events if e.type == metadata_store_pb2.Event.OUTPUT]
  events = store.get_events_by_execution_ids(ids)
  return [e for e in events if e.type == metadata_store_pb2.Event.INPUT]


def _edge(event: metadata_store_pb2.Event) -> LineageEdge:
  """`event` as an edge in data-flow direction."""
  artifact = _key(ARTIFACT, event.artifact_id)
  execution = _key(EXECUTION, event.execution_id)
  name = _EVENT_NAMES[event.type]
  if event.type == metadata_store_pb2.Event.OUTPUT:
    return LineageEdge(source=execution, target=artifact, event_type=name)
  return LineageEdge(source=artifact, target=execution, event_type=name)


def lineage(store: Store, target: str | int, *,
            max_nodes: int = DEFAULT_MAX_NODES) -> LineageGraph:
  """The upstream lineage of `target`: `MODEL:VERSION` (a served version) or
  an artifact id.

  Breadth-first over MLMD events, at most `max_nodes` nodes (the graph says
  when it was truncated). Read-only.

  Raises:
    CkptflowError: `target` is malformed (CkptflowError), names no served
      version (ServingError) or no artifact (MetadataError).
  """
  if max_nodes < 1:
    raise CkptflowError(f"max_nodes is {max_nodes}. Expected at least 1")
  root_id, target_text = _resolve_target(store, target)
  [root] = store.get_artifacts_by_id([root_id]) or [None]
  if root is None:
    raise MetadataError(f"no artifact with id {root_id} in the metadata store. "
                        "Expected an artifact id or MODEL:VERSION")

  type_names = _TypeNames(store)
  root_type = type_names.of(ARTIFACT, [root])[root.type_id]
  # The visited set, in visit order (breadth-first from the root).
  nodes: dict[str, LineageNode] = {_key(ARTIFACT, root.id): _node(ARTIFACT, root, root_type)}
  edges: dict[LineageEdge, None] = {}  # an ordered set
  truncated = False
  # Each entry is one level of the walk: visited nodes of one kind whose
  # upstream neighbours are still to be read. Levels alternate between
  # artifacts and executions; reading a level's events in one MLMD call keeps
  # the walk at a few calls per level however wide the graph is.
  queue: collections.deque[tuple[str, list[int]]] = collections.deque()
  queue.append((ARTIFACT, [root.id]))
  while queue:
    kind, ids = queue.popleft()
    events = _upstream_events(store, kind, ids)
    upstream = EXECUTION if kind == ARTIFACT else ARTIFACT
    new_ids = sorted({i for i in (_neighbour_id(e, upstream) for e in events)
                      if _key(upstream, i) not in nodes})
    records = _records(store, upstream, new_ids)
    names = type_names.of(upstream, records)
    visited_now = []
    for record in sorted(records, key=lambda r: r.id):
      if len(nodes) >= max_nodes:
        truncated = True
        break
      nodes[_key(upstream, record.id)] = _node(upstream, record, names[record.type_id])
      visited_now.append(record.id)
    # An edge needs both of its ends in the graph: after a truncation, events
    # to nodes left out are dropped.
    for event in events:
      edge = _edge(event)
      if edge.source in nodes and edge.target in nodes:
        edges.setdefault(edge)
    if visited_now:
      queue.append((upstream, visited_now))

  return LineageGraph(target=target_text, root=_key(ARTIFACT, root_id),
                      nodes=nodes, edges=tuple(edges), truncated=truncated,
                      max_nodes=max_nodes)


# --- checkpoints behind served versions -------------------------------------


def checkpoints_behind(store: Store, served: "list[promotion.ServedRecord]",
                       serving_now: Mapping[str, set[int]],
                       labels_now: Mapping[str, Mapping[str, int]]) -> dict[int, list[str]]:
  """checkpoint id -> the currently served versions whose Model came from it,
  as "model:version (label, ...)". A version counts while models.config
  serves it (`serving_now`: model -> versions). Its Model is the one the
  execution that pushed it read (a pipeline Pusher or `promote`); the
  checkpoint is the one the Model records (`checkpoint_id`, set by the
  Trainer and by exports when they write the Model), else the Checkpoint
  read by an execution that made the Model from one checkpoint (an export,
  or the Trainer's final-model record: executions with a `checkpoint_id`;
  a Trainer's resume and warm-start inputs are not it). Read-only."""
  behind: dict[int, list[str]] = {}
  for record in served:
    if record.version not in serving_now.get(record.model_name, set()):
      continue
    graph = lineage(store, record.artifact_id, max_nodes=60)
    names = [label for label, v in labels_now.get(record.model_name, {}).items()
             if v == record.version]
    text = f"{record.model_name}:{record.version}" + (f" ({', '.join(names)})" if names else "")
    found: set[int] = set()
    for _, pusher in graph.upstream(graph.root):
      for _, model in graph.upstream(pusher.key):
        if model.kind != ARTIFACT or model.type_name != promotion.MODEL_TYPE_NAME:
          continue
        if isinstance(model.properties.get("checkpoint_id"), int):
          found.add(model.properties["checkpoint_id"])
          continue
        found |= {source.id for _, producer in graph.upstream(model.key)
                  if "checkpoint_id" in producer.properties
                  for _, source in graph.upstream(producer.key)
                  if source.type_name == CHECKPOINT_TYPE_NAME}
    for checkpoint_id in sorted(found):
      behind.setdefault(checkpoint_id, []).append(text)
  return behind


def served_checkpoints(store: Store, serving_root: str) -> dict[int, list[str]]:
  """`checkpoints_behind` for what `serving_root`'s models.config serves now
  (per MLMD: labelled versions plus the newest of each model). Read-only.

  Raises:
    CkptflowError: the served versions cannot be worked out.
  """
  served = promotion.all_served_versions(store)
  states = promotion.serving_states(store, serving_root)
  serving_now = {m: set(s.versions) for m, s in states.items()}
  labels_now = {m: promotion.current_labels(store, m) for m in serving_now}
  return checkpoints_behind(store, served, serving_now, labels_now)


# --- rendering ---------------------------------------------------------------


def _shown(value: Any) -> str:
  text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
  return text if len(text) <= _MAX_SHOWN_CHARS else text[:_MAX_SHOWN_CHARS - 3] + "..."


def _describe(node: LineageNode) -> str:
  parts = [f"{node.type_name} #{node.id} [{node.state}]"]
  if node.uri:
    parts.append(node.uri)
  parts.extend(f"{k}={_shown(v)}" for k, v in node.key_properties().items())
  return "  ".join(parts)


def to_text(graph: LineageGraph) -> str:
  """An indented tree from the target back to its data, one node per line.

  A node reached a second time (a Schema read by two executions) is printed
  once in full and then as "(see above)".
  """
  lines = [f"lineage of {graph.target}"]
  seen: set[str] = set()

  def visit(key: str, prefix: str, depth: int) -> None:
    node = graph.nodes[key]
    again = key in seen
    lines.append("  " * depth + prefix + _describe(node) + ("  (see above)" if again else ""))
    if again:
      return
    seen.add(key)
    upstream = graph.upstream(key)
    if node.kind == ARTIFACT:
      # An artifact with two producers is a Model with its Trainer and the
      # later record of the checkpoint it came from: that one first, so the
      # tree reads Model <- Checkpoint <- Trainer <- data.
      upstream.sort(key=lambda pair: -pair[1].id)
    for edge, source in upstream:
      arrow = "<- OUTPUT of " if edge.event_type == "OUTPUT" else "<- INPUT "
      visit(source.key, arrow, depth + 1)

  visit(graph.root, "", 0)
  if graph.truncated:
    lines.append(f"... truncated at {graph.max_nodes} nodes (raise max_nodes to "
                 "see the rest)")
  return "\n".join(lines) + "\n"


def to_json(graph: LineageGraph) -> dict:
  """The graph as a JSON-serialisable dict: target, root, truncated, nodes
  (breadth-first from the root, every property) and edges."""
  return {"target": graph.target, "root": graph.root, "truncated": graph.truncated,
          "nodes": [n.as_json() | {"key": n.key} for n in graph.nodes.values()],
          "edges": [e.as_json() for e in graph.edges]}


def _dot_quote(text: str) -> str:
  escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
  return f'"{escaped}"'


def to_dot(graph: LineageGraph) -> str:
  """Graphviz dot source: artifacts as boxes, executions as ellipses, edges
  in data-flow direction labelled INPUT or OUTPUT. The target is bold.
  Drawn top to bottom (data at the top, the target at the bottom): lineage
  chains are long, and a left-to-right drawing of one is too wide to read."""
  lines = ["digraph lineage {", "  rankdir=TB;",
           '  node [fontname="Helvetica", fontsize=10];',
           '  edge [fontname="Helvetica", fontsize=9];']
  for node in graph.nodes.values():
    label = [f"{node.type_name} #{node.id}", node.state]
    if node.uri:
      label.append(_shown(node.uri))
    label.extend(f"{k}={_shown(v)}" for k, v in node.key_properties().items())
    shape = "box" if node.kind == ARTIFACT else "ellipse"
    style = ', style="bold"' if node.key == graph.root else ""
    lines.append(f"  {_dot_quote(node.key)} [shape={shape}{style}, "
                 f"label={_dot_quote(chr(10).join(label))}];")
  for edge in graph.edges:
    lines.append(f"  {_dot_quote(edge.source)} -> {_dot_quote(edge.target)} "
                 f"[label={_dot_quote(edge.event_type)}];")
  if graph.truncated:
    lines.append(f'  label={_dot_quote(f"truncated at {graph.max_nodes} nodes")};')
  lines.append("}")
  return "\n".join(lines) + "\n"


def to_svg(graph: LineageGraph, *, timeout: float = 60.0) -> str:
  """The graph drawn as SVG by graphviz's `dot`.

  Raises:
    CkptflowError: `dot` is not installed (install graphviz), or it failed.
  """
  dot = shutil.which("dot")
  if dot is None:
    raise CkptflowError("the graphviz `dot` program is not installed, so SVG "
                        "cannot be drawn. Install graphviz (e.g. apt-get install "
                        "graphviz) or use the dot/text/json output")
  try:
    result = subprocess.run([dot, "-Tsvg"], input=to_dot(graph), text=True,
                            capture_output=True, timeout=timeout, check=False)
  except (OSError, subprocess.TimeoutExpired) as e:
    raise CkptflowError(f"running graphviz {dot!r} failed: {e}") from e
  if result.returncode != 0:
    detail = (result.stderr.strip().splitlines() or ["no message"])[0]
    raise CkptflowError(f"graphviz {dot!r} exited with {result.returncode}: {detail}")
  return result.stdout


__all__ = [
    "LineageEdge", "LineageGraph", "LineageNode", "lineage", "to_dot",
    "to_json", "to_svg", "to_text",
]
