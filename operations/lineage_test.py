"""Tests for walking and rendering lineage (real SQLite MLMD, real graphviz)."""

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import pytest
from ml_metadata.proto import metadata_store_pb2

from ckptflow.operations import lineage as lineage_lib
from ckptflow.components import promotion
from ckptflow.components.checkpoint import CheckpointRegistry, NewCheckpoint
from ckptflow.base.errors import CkptflowError, MetadataError, ServingError

INPUT = metadata_store_pb2.Event.INPUT
OUTPUT = metadata_store_pb2.Event.OUTPUT
EXAMPLES_URI = "/data/pipeline_root/CsvExampleGen/examples/1"
SCHEMA_URI = "/data/pipeline_root/SchemaGen/schema/2"


def artifact_type(store, name, **properties):
  artifact_type = metadata_store_pb2.ArtifactType(name=name)
  for key, value_type in properties.items():
    artifact_type.properties[key] = value_type
  return store.put_artifact_type(artifact_type, can_add_fields=True)


def execution_type(store, name):
  return store.put_execution_type(metadata_store_pb2.ExecutionType(name=name),
                                  can_add_fields=True)


def put_execution(store, type_name, inputs=(), outputs=(), contexts=(), **custom):
  """An execution with INPUT events from `inputs` (artifact ids) and OUTPUT
  events to `outputs` (new Artifact protos); returns (execution id, output ids)."""
  execution = metadata_store_pb2.Execution(
      type_id=execution_type(store, type_name),
      last_known_state=metadata_store_pb2.Execution.COMPLETE)
  for key, value in custom.items():
    execution.custom_properties[key].string_value = value
  pairs = [(None, metadata_store_pb2.Event(artifact_id=i, type=INPUT)) for i in inputs]
  pairs += [(a, metadata_store_pb2.Event(type=OUTPUT)) for a in outputs]
  execution_id, artifact_ids, _ = store.put_execution(execution, pairs,
                                                      contexts=list(contexts))
  return execution_id, artifact_ids[len(inputs):]


@pytest.fixture
def served_graph(store, tmp_path):
  """Examples, Schema -> Trainer -> Checkpoint -> export -> Model -> promote
  -> PushedModel (m:1), and a SetLabel downstream of the PushedModel."""
  examples_type = artifact_type(store, "Examples", span=metadata_store_pb2.INT,
                                split_names=metadata_store_pb2.STRING)
  examples = metadata_store_pb2.Artifact(type_id=examples_type, uri=EXAMPLES_URI)
  examples.properties["span"].int_value = 0
  examples.properties["split_names"].string_value = '["train", "eval"]'
  schema = metadata_store_pb2.Artifact(type_id=artifact_type(store, "Schema"),
                                       uri=SCHEMA_URI)
  _, (examples_id, schema_id) = put_execution(store, "CsvExampleGen",
                                              outputs=[examples, schema])
  # TFX attributes every execution to its pipeline run; CheckpointRegistry
  # expects that.
  run_type = store.put_context_type(metadata_store_pb2.ContextType(name="pipeline_run"))
  run = metadata_store_pb2.Context(type_id=run_type, name="run-1")
  trainer_id, _ = put_execution(
      store, "Trainer", inputs=[examples_id, schema_id], contexts=[run],
      fingerprint="fp-123",
      hyperparameters='{"learning_rate": 0.01}')
  checkpoint = CheckpointRegistry(store, trainer_id).register(NewCheckpoint(
      uri=str(tmp_path / "ckpt" / "step-200"), step=200, epoch=2,
      metrics={"loss": 0.25}, size_bytes=1024, checksum="abc", tf_version="2.16.2",
      fingerprint="fp-123", resume_key="rk"))
  model_dir = tmp_path / "export" / "Format-Serving"
  os.makedirs(model_dir / "variables")
  (model_dir / "saved_model.pb").write_bytes(b"pb")
  model = metadata_store_pb2.Artifact(
      type_id=artifact_type(store, "Model"), uri=str(model_dir))
  export_id, (model_id,) = put_execution(store, "ckptflow.Export",
                                         inputs=[checkpoint.id], outputs=[model])
  served = promotion.promote(store, saved_model_dir=str(model_dir),
                             serving_root=str(tmp_path / "serving"),
                             model_name="m", model_artifact_id=model_id)
  promotion.set_label(store, "m", "canary", 1, reason="promote")
  return {"examples": examples_id, "schema": schema_id, "trainer": trainer_id,
          "checkpoint": checkpoint.id, "export": export_id, "model": model_id,
          "pushed": served.artifact_id, "served": served}


def test_lineage_of_served_version_walks_back_to_examples(store, served_graph):
  graph = lineage_lib.lineage(store, "m:1")

  ids = served_graph
  artifact_keys = {f"artifact:{ids[k]}" for k in
                   ("examples", "schema", "checkpoint", "model", "pushed")}
  assert artifact_keys <= set(graph.nodes)
  assert graph.root == f"artifact:{ids['pushed']}"
  kinds = {n.type_name for n in graph.nodes.values()}
  assert kinds == {"PushedModel", "ckptflow.Promote", "Model", "ckptflow.Export",
                   "Checkpoint", "Trainer", "Examples", "Schema", "CsvExampleGen"}
  # Downstream executions (the SetLabel that reads the PushedModel) are not lineage.
  assert len(store.get_executions_by_type("ckptflow.SetLabel")) == 1
  assert "ckptflow.SetLabel" not in kinds
  edges = {(e.source, e.target, e.event_type) for e in graph.edges}
  assert (f"artifact:{ids['checkpoint']}", f"execution:{ids['export']}", "INPUT") in edges
  assert (f"execution:{ids['trainer']}", f"artifact:{ids['checkpoint']}", "OUTPUT") in edges
  assert (f"artifact:{ids['examples']}", f"execution:{ids['trainer']}", "INPUT") in edges
  assert not graph.truncated
  checkpoint = graph.nodes[f"artifact:{ids['checkpoint']}"]
  assert checkpoint.properties["step"] == 200
  assert checkpoint.properties["metrics"] == {"loss": 0.25}


def test_lineage_by_artifact_id_matches_lineage_by_served_version(store, served_graph):
  by_version = lineage_lib.lineage(store, "m:1")
  by_id = lineage_lib.lineage(store, str(served_graph["pushed"]))

  assert lineage_lib.to_json(by_id)["nodes"] == lineage_lib.to_json(by_version)["nodes"]
  assert lineage_lib.lineage(store, served_graph["checkpoint"]).root == (
      f"artifact:{served_graph['checkpoint']}")


def test_text_is_a_tree_from_served_version_back_to_the_data(store, served_graph):
  text = lineage_lib.to_text(lineage_lib.lineage(store, "m:1"))
  lines = text.splitlines()

  assert lines[0] == "lineage of m:1"
  assert lines[1].startswith("PushedModel #")
  order = [next(i for i, line in enumerate(lines) if marker in line)
           for marker in ("PushedModel #", "INPUT Model #", "Checkpoint #", "Trainer #",
                          EXAMPLES_URI)]
  assert order == sorted(order)
  depth = [len(lines[i]) - len(lines[i].lstrip()) for i in order]
  assert depth == sorted(depth) and len(set(depth)) == len(depth)
  checkpoint_line = lines[order[2]]
  assert "step=200" in checkpoint_line and "<- INPUT" in checkpoint_line
  assert "<- OUTPUT of Trainer" in lines[order[3]]
  assert "fingerprint=fp-123" in lines[order[3]]
  assert "span=0" in lines[order[4]]
  assert "pushed_version=1" in lines[1]


def test_json_is_serialisable_and_names_step_and_examples_uri(store, served_graph):
  document = lineage_lib.to_json(lineage_lib.lineage(store, "m:1"))

  assert json.loads(json.dumps(document)) == document
  nodes = {n["key"]: n for n in document["nodes"]}
  assert nodes[f"artifact:{served_graph['checkpoint']}"]["properties"]["step"] == 200
  assert nodes[f"artifact:{served_graph['examples']}"]["uri"] == EXAMPLES_URI
  assert nodes[f"execution:{served_graph['trainer']}"]["properties"][
      "hyperparameters"] == {"learning_rate": 0.01}
  assert {e["type"] for e in document["edges"]} == {"INPUT", "OUTPUT"}
  assert document["nodes"][0]["key"] == document["root"]


def test_dot_has_boxes_for_artifacts_ellipses_for_executions_and_labelled_edges(
    store, served_graph):
  graph = lineage_lib.lineage(store, "m:1")
  dot = lineage_lib.to_dot(graph)

  assert dot.startswith("digraph lineage {")
  for node in graph.nodes.values():
    shape = "box" if node.kind == "artifact" else "ellipse"
    assert f'"{node.key}" [shape={shape}' in dot
  assert dot.count(" -> ") == len(graph.edges)
  assert '[label="INPUT"]' in dot and '[label="OUTPUT"]' in dot
  assert "step=200" in dot
  assert EXAMPLES_URI in dot


def test_svg_output_is_valid_svg_naming_the_checkpoint_step(store, served_graph):
  if shutil.which("dot") is None:
    pytest.skip("graphviz `dot` is not installed")
  svg = lineage_lib.to_svg(lineage_lib.lineage(store, "m:1"))

  root = ElementTree.fromstring(svg.encode())
  assert root.tag == "{http://www.w3.org/2000/svg}svg"
  texts = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]
  assert "step=200" in texts
  assert any(EXAMPLES_URI in t for t in texts)


def test_svg_without_graphviz_fails_with_one_line_install_hint(
    store, served_graph, tmp_path, monkeypatch):
  empty = tmp_path / "empty_bin"
  empty.mkdir()
  monkeypatch.setenv("PATH", str(empty))

  with pytest.raises(CkptflowError, match="graphviz") as raised:
    lineage_lib.to_svg(lineage_lib.lineage(store, "m:1"))
  assert "\n" not in str(raised.value)
  assert "install" in str(raised.value).lower()


@pytest.mark.parametrize("target, error, words", [
    ("m:9", ServingError, "no served version 9"),
    ("other:1", ServingError, "no served version 1"),
    ("99999", MetadataError, "no artifact with id 99999"),
    ("m:latest", CkptflowError, "Expected MODEL:VERSION"),
    ("nonsense", CkptflowError, "is not MODEL:VERSION"),
    ("../x:1", ServingError, "model name"),
])
def test_unknown_or_malformed_target_fails_with_one_line_error(
    store, served_graph, target, error, words):
  with pytest.raises(error, match=words) as raised:
    lineage_lib.lineage(store, target)
  assert "\n" not in str(raised.value)


def test_walk_stops_at_node_cap_and_says_so(store):
  # A resume chain: checkpoint_k <- Trainer_k <- checkpoint_{k-1} ...
  ckpt_type = artifact_type(store, "Chain")
  _, (previous,) = put_execution(
      store, "Seed", outputs=[metadata_store_pb2.Artifact(type_id=ckpt_type, uri="/c/0")])
  for k in range(1, 10):
    _, (previous,) = put_execution(
        store, "Trainer", inputs=[previous],
        outputs=[metadata_store_pb2.Artifact(type_id=ckpt_type, uri=f"/c/{k}")])

  graph = lineage_lib.lineage(store, previous, max_nodes=5)

  assert graph.truncated
  assert len(graph.nodes) == 5
  assert all(e.source in graph.nodes and e.target in graph.nodes for e in graph.edges)
  assert "truncated at 5 nodes" in lineage_lib.to_text(graph)
  full = lineage_lib.lineage(store, previous)
  assert not full.truncated and len(full.nodes) == 20


def test_artifact_read_twice_is_listed_once_and_shown_again_as_see_above(store):
  schema_type = artifact_type(store, "Schema")
  _, (schema_id,) = put_execution(
      store, "SchemaGen", outputs=[metadata_store_pb2.Artifact(type_id=schema_type,
                                                               uri=SCHEMA_URI)])
  data_type = artifact_type(store, "Data")
  _, (transformed_id,) = put_execution(
      store, "Transform", inputs=[schema_id],
      outputs=[metadata_store_pb2.Artifact(type_id=data_type, uri="/t")])
  _, (model_id,) = put_execution(
      store, "Trainer", inputs=[transformed_id, schema_id],
      outputs=[metadata_store_pb2.Artifact(type_id=data_type, uri="/model")])

  graph = lineage_lib.lineage(store, model_id)
  text = lineage_lib.to_text(graph)

  assert [n.uri for n in graph.nodes.values()].count(SCHEMA_URI) == 1
  assert text.count(SCHEMA_URI) == 2
  assert text.count("(see above)") == 1


def test_serving_modules_import_without_tensorflow_or_tfx():
  code = ("import sys, ckptflow.operations.lineage, ckptflow.components.promotion, "
          "ckptflow.components.pusher.serving; "
          "print(sorted(m for m in sys.modules if m.split('.')[0] in "
          "('tensorflow', 'tfx', 'keras', 'tf_keras')))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=60, check=True)
  assert result.stdout.strip() == "[]"


@pytest.fixture
def pipeline_push(store, tmp_path):
  """The shape a pipeline run leaves: a Trainer that resumed from checkpoint
  `resumed` (INPUT), wrote checkpoints 100 and 200 and the Model (OUTPUT,
  without a `checkpoint_id` property here), the Model linked to checkpoint
  200 by `record_model_source`, and a push of that Model (m:1, stable)."""
  from ckptflow.components import checkpoint as checkpoint_lib
  run_type = store.put_context_type(metadata_store_pb2.ContextType(name="pipeline_run"))
  run = metadata_store_pb2.Context(type_id=run_type, name="run-1")
  earlier_id, _ = put_execution(store, "Trainer", contexts=[run])
  registry = CheckpointRegistry(store, earlier_id)

  def checkpoint(step, registry):
    return registry.register(NewCheckpoint(
        uri=str(tmp_path / "ckpt" / f"step-{step}"), step=step, epoch=0,
        metrics={"loss": 1 / step}, size_bytes=1, checksum=f"c{step}", tf_version="t",
        fingerprint="f", resume_key="rk"))

  resumed = checkpoint(50, registry)
  model_dir = tmp_path / "model" / "Format-Serving"
  os.makedirs(model_dir / "variables")
  (model_dir / "saved_model.pb").write_bytes(b"pb")
  model = metadata_store_pb2.Artifact(type_id=artifact_type(store, "Model"),
                                      uri=str(model_dir))
  [run_ctx] = store.get_contexts_by_type("pipeline_run")
  trainer_id, (model_id,) = put_execution(store, "Trainer", inputs=[resumed.id],
                                          outputs=[model], contexts=[run_ctx])
  registry = CheckpointRegistry(store, trainer_id)
  first, final = checkpoint(100, registry), checkpoint(200, registry)
  link_id = checkpoint_lib.record_model_source(store, model_id, final.id)
  served = promotion.promote(store, saved_model_dir=str(model_dir),
                             serving_root=str(tmp_path / "serving"),
                             model_name="m", model_artifact_id=model_id)
  return {"resumed": resumed.id, "first": first.id, "final": final.id, "model": model_id,
          "trainer": trainer_id, "link": link_id, "served": served,
          "serving_root": str(tmp_path / "serving")}


def test_pipeline_model_text_lineage_reads_model_checkpoint_trainer(store, pipeline_push):
  lines = lineage_lib.to_text(lineage_lib.lineage(store, "m:1")).splitlines()
  model = next(i for i, line in enumerate(lines) if "<- INPUT Model #" in line)
  assert "<- OUTPUT of ckptflow.TrainerExport #" in lines[model + 1]
  assert f"<- INPUT Checkpoint #{pipeline_push['final']} " in lines[model + 2]
  assert "step=200" in lines[model + 2]
  assert f"<- OUTPUT of Trainer #{pipeline_push['trainer']} " in lines[model + 3]
  # The Model's other producer, the Trainer itself, is shown once more.
  assert any(f"<- OUTPUT of Trainer #{pipeline_push['trainer']} " in line
             and line.endswith("(see above)") for line in lines[model + 4:])


def test_served_checkpoints_marks_the_linked_checkpoint_not_the_resumed_one(
    store, pipeline_push):
  behind = lineage_lib.served_checkpoints(store, pipeline_push["serving_root"])

  assert behind == {pipeline_push["final"]: ["m:1 (stable)"]}


def test_served_checkpoints_uses_the_models_checkpoint_id_when_it_has_one(
    store, pipeline_push):
  [model] = store.get_artifacts_by_id([pipeline_push["model"]])
  model.custom_properties["checkpoint_id"].int_value = pipeline_push["first"]
  store.put_artifacts([model])

  behind = lineage_lib.served_checkpoints(store, pipeline_push["serving_root"])

  assert behind == {pipeline_push["first"]: ["m:1 (stable)"]}


def test_served_checkpoints_leaves_out_versions_models_config_no_longer_serves(
    store, pipeline_push):
  shutil.rmtree(pipeline_push["served"].path)

  assert lineage_lib.served_checkpoints(store, pipeline_push["serving_root"]) == {}
