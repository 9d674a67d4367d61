"""Tests for the MLMD record of pushes, labels and rollbacks (real SQLite MLMD)."""

import os
import shutil

import pytest
from ml_metadata.proto import metadata_store_pb2

from ckptflow.components import promotion
from ckptflow.components.pusher import serving
from ckptflow.base.errors import MetadataError, ServingError

INPUT = metadata_store_pb2.Event.INPUT
OUTPUT = metadata_store_pb2.Event.OUTPUT


@pytest.fixture
def root(tmp_path):
  return str(tmp_path / "serving")


def make_saved_model(path, marker="m"):
  os.makedirs(os.path.join(path, "variables"))
  with open(os.path.join(path, "saved_model.pb"), "wb") as f:
    f.write(marker.encode())
  with open(os.path.join(path, "variables", "variables.data-00000-of-00001"), "wb") as f:
    f.write(b"\0" * 128)
  return str(path)


def put_artifact(store, type_name, uri="", **custom):
  # Registered as TFX registers its standard types: a system base type, no
  # declared properties that matter here.
  type_id = store.put_artifact_type(
      metadata_store_pb2.ArtifactType(name=type_name,
                                      base_type=metadata_store_pb2.ArtifactType.MODEL),
      can_add_fields=True)
  artifact = metadata_store_pb2.Artifact(type_id=type_id, uri=uri,
                                         state=metadata_store_pb2.Artifact.LIVE)
  for key, value in custom.items():
    if isinstance(value, int):
      artifact.custom_properties[key].int_value = value
    else:
      artifact.custom_properties[key].string_value = value
  [artifact_id] = store.put_artifacts([artifact])
  return artifact_id


def put_model(store, tmp_path, name="model"):
  uri = make_saved_model(tmp_path / "exports" / name, name)
  return put_artifact(store, "Model", uri), uri


def counts(store):
  """How many executions, artifacts and events the store holds."""
  executions = store.get_executions()
  return (len(executions), len(store.get_artifacts()),
          len(store.get_events_by_execution_ids([e.id for e in executions])))


def labels_in_config(root, model_name):
  return dict(serving.read_models_config(root)[model_name].labels)


def props(node):
  return {k: getattr(v, v.WhichOneof("value")) for k, v in node.custom_properties.items()}


def test_record_push_writes_promote_execution_with_events_and_pushed_model(
    store, tmp_path, root):
  model_id, source = put_model(store, tmp_path)
  blessing_id = put_artifact(store, "ModelBlessing", "/b", blessed=1)
  served = serving.push_saved_model(source, root, "penguin")

  pushed_id = promotion.record_push(
      store, model_artifact_id=model_id, served=served, label="stable",
      forced=False, blessing_artifact_id=blessing_id, serving_root=root)

  [pushed] = store.get_artifacts_by_id([pushed_id])
  [pushed_type] = store.get_artifact_types_by_id([pushed.type_id])
  assert pushed_type.name == "PushedModel"
  assert pushed.uri == served.path
  assert pushed.state == metadata_store_pb2.Artifact.LIVE
  user, host = promotion.actor()
  assert props(pushed) == {
      "pushed": 1, "pushed_destination": served.path, "pushed_version": "1",
      "model_name": "penguin", "version": 1, "label": "stable", "forced": 0,
      "user": user, "host": host}
  [producer] = [e for e in store.get_events_by_artifact_ids([pushed_id])
                if e.type == OUTPUT]
  [execution] = store.get_executions_by_id([producer.execution_id])
  [execution_type] = store.get_execution_types_by_id([execution.type_id])
  assert execution_type.name == "ckptflow.Promote"
  assert execution.last_known_state == metadata_store_pb2.Execution.COMPLETE
  events = store.get_events_by_execution_ids([execution.id])
  assert sorted((e.type, e.artifact_id) for e in events) == sorted(
      [(INPUT, model_id), (INPUT, blessing_id), (OUTPUT, pushed_id)])
  # The Model was only linked, not rewritten.
  [model] = store.get_artifacts_by_id([model_id])
  assert model.uri == source


def test_record_push_of_unknown_model_id_fails_and_writes_nothing(store, tmp_path, root):
  _, source = put_model(store, tmp_path)
  served = serving.push_saved_model(source, root, "m")
  before = counts(store)

  with pytest.raises(MetadataError, match="9999"):
    promotion.record_push(store, model_artifact_id=9999, served=served,
                          label="stable", forced=False, serving_root=root)
  assert counts(store) == before


def test_record_push_of_non_model_artifact_fails_naming_its_type(store, tmp_path, root):
  _, source = put_model(store, tmp_path)
  examples_id = put_artifact(store, "Examples", "/data")
  served = serving.push_saved_model(source, root, "m")

  with pytest.raises(MetadataError, match="is a Examples. Expected a Model"):
    promotion.record_push(store, model_artifact_id=examples_id, served=served,
                          label="stable", forced=False, serving_root=root)


def test_unblessed_push_is_refused_unless_forced(store, tmp_path, root):
  model_id, source = put_model(store, tmp_path)
  blessing_id = put_artifact(store, "ModelBlessing", "/b", blessed=0)
  served = serving.push_saved_model(source, root, "m")
  before = counts(store)

  with pytest.raises(ServingError, match="not blessed"):
    promotion.record_push(store, model_artifact_id=model_id, served=served,
                          label="stable", forced=False,
                          blessing_artifact_id=blessing_id, serving_root=root)
  assert counts(store) == before

  pushed_id = promotion.record_push(
      store, model_artifact_id=model_id, served=served, label="stable",
      forced=True, blessing_artifact_id=blessing_id, serving_root=root)
  [record] = promotion.served_versions(store, "m")
  assert (record.artifact_id, record.forced) == (pushed_id, True)


def test_same_push_recorded_twice_is_idempotent(store, tmp_path, root):
  model_id, source = put_model(store, tmp_path)
  served = serving.push_saved_model(source, root, "m")
  first = promotion.record_push(store, model_artifact_id=model_id, served=served,
                                label="stable", forced=False, serving_root=root)
  before = counts(store)

  again = promotion.record_push(store, model_artifact_id=model_id, served=served,
                                label="stable", forced=False, serving_root=root)

  assert again == first
  assert counts(store) == before


def test_same_version_recorded_twice_fails_and_keeps_one_record(store, tmp_path, root):
  model_id, source = put_model(store, tmp_path)
  served = serving.push_saved_model(source, root, "m")
  promotion.record_push(store, model_artifact_id=model_id, served=served,
                        label="stable", forced=False, serving_root=root)
  before = counts(store)

  with pytest.raises(ServingError, match="already recorded"):
    promotion.record_push(store, model_artifact_id=model_id, served=served,
                          label="canary", forced=False, serving_root=root)
  assert counts(store) == before
  assert len(promotion.served_versions(store, "m")) == 1


def test_record_push_of_path_outside_serving_root_fails(store, tmp_path, root):
  model_id, source = put_model(store, tmp_path)
  served = serving.push_saved_model(source, root, "m")

  with pytest.raises(ServingError, match="is not a version directory"):
    promotion.record_push(store, model_artifact_id=model_id, served=served,
                          label="stable", forced=False,
                          serving_root=str(tmp_path / "elsewhere"))
  assert promotion.served_versions(store, "m") == []


def test_not_pushed_is_recorded_as_pushed_model_with_pushed_0(store, tmp_path):
  model_id, _ = put_model(store, tmp_path)
  blessing_id = put_artifact(store, "ModelBlessing", "/b", blessed=0)

  pushed_id = promotion.record_not_pushed(
      store, model_artifact_id=model_id, model_name="m", reason="not blessed",
      blessing_artifact_id=blessing_id)

  [pushed] = store.get_artifacts_by_id([pushed_id])
  assert props(pushed) == {"pushed": 0, "model_name": "m", "reason": "not blessed"}
  assert promotion.served_versions(store, "m") == []
  [producer] = [e for e in store.get_events_by_artifact_ids([pushed_id])
                if e.type == OUTPUT]
  inputs = [e.artifact_id for e in store.get_events_by_execution_ids([producer.execution_id])
            if e.type == INPUT]
  assert sorted(inputs) == sorted([model_id, blessing_id])


def test_pushed_model_written_by_another_executor_counts_as_served(store, tmp_path, root):
  # TFX registers PushedModel itself (base type MODEL, no properties); a
  # pusher executor marks its own artifact with mark_pushed.
  type_id = store.put_artifact_type(metadata_store_pb2.ArtifactType(
      name="PushedModel", base_type=metadata_store_pb2.ArtifactType.MODEL))
  _, source = put_model(store, tmp_path)
  served = serving.push_saved_model(source, root, "m")
  artifact = metadata_store_pb2.Artifact(type_id=type_id, uri="/pipeline_root/Pusher/1")
  promotion.mark_pushed(artifact, served, label="canary", forced=False)
  [artifact_id] = store.put_artifacts([artifact])
  # A PushedModel that names no model (stock TFX) is ignored, not an error.
  store.put_artifacts([metadata_store_pb2.Artifact(type_id=type_id, uri="/x")])

  assert promotion.ensure_types(store)["PushedModel"] == type_id
  [record] = promotion.served_versions(store, "m")
  assert (record.artifact_id, record.version, record.path, record.label) == (
      artifact_id, 1, served.path, "canary")


def test_set_label_records_execution_with_previous_version_and_input_event(
    store, tmp_path, root):
  model_id, source = put_model(store, tmp_path)
  records = []
  for _ in range(2):
    served = serving.push_saved_model(source, root, "m")
    records.append(promotion.record_push(
        store, model_artifact_id=model_id, served=served, label=None,
        forced=False, serving_root=root))
  assert promotion.current_labels(store, "m") == {}

  promotion.set_label(store, "m", "stable", 1, reason="promote")
  execution_id = promotion.set_label(store, "m", "stable", 2, reason="promote")
  promotion.set_label(store, "m", "canary", 2, reason="promote")

  assert promotion.current_labels(store, "m") == {"canary": 2, "stable": 2}
  [execution] = store.get_executions_by_id([execution_id])
  user, host = promotion.actor()
  assert props(execution) == {"model_name": "m", "label": "stable", "version": 2,
                              "previous_version": 1, "reason": "promote",
                              "user_reason": "", "user": user, "host": host}
  [event] = store.get_events_by_execution_ids([execution_id])
  assert (event.type, event.artifact_id) == (INPUT, records[1])
  [first, second] = promotion.label_history(store, "m", "stable")
  assert (first.previous_version, second.previous_version) == (None, 1)


def test_set_label_to_unserved_version_fails_and_writes_nothing(store, tmp_path, root):
  model_id, source = put_model(store, tmp_path)
  promotion.promote(store, saved_model_dir=source, serving_root=root,
                    model_name="m", model_artifact_id=model_id)
  before = counts(store)

  with pytest.raises(ServingError, match="no served version 7"):
    promotion.set_label(store, "m", "stable", 7, reason="promote")
  with pytest.raises(ServingError, match="label"):
    promotion.set_label(store, "m", "bad label", 1, reason="promote")
  assert counts(store) == before


def test_promote_pushes_records_labels_and_writes_config(store, tmp_path, root):
  model_id, source = put_model(store, tmp_path)

  first = promotion.promote(store, saved_model_dir=source, serving_root=root,
                            model_name="m", model_artifact_id=model_id)
  canary = promotion.promote(store, saved_model_dir=source, serving_root=root,
                             model_name="m", model_artifact_id=model_id,
                             label="canary")

  assert (first.version, canary.version) == (1, 2)
  assert [r.version for r in promotion.served_versions(store, "m")] == [1, 2]
  assert promotion.current_labels(store, "m") == {"canary": 2, "stable": 1}
  assert serving.read_models_config(root) == {"m": serving.ModelServingState(
      versions=(1, 2), labels={"stable": 1, "canary": 2})}


def test_rollback_moves_stable_back_and_config_agrees_with_mlmd(store, tmp_path, root):
  model_id, source = put_model(store, tmp_path)
  for _ in range(3):
    promotion.promote(store, saved_model_dir=source, serving_root=root,
                      model_name="m", model_artifact_id=model_id)
  assert labels_in_config(root, "m") == {"stable": 3}

  assert promotion.rollback(store, root, "m") == (3, 2)
  assert promotion.current_labels(store, "m") == {"stable": 2}
  assert serving.read_models_config(root)["m"] == serving.ModelServingState(
      versions=(2, 3), labels={"stable": 2})
  last = promotion.label_history(store, "m", "stable")[-1]
  assert (last.version, last.previous_version, last.reason) == (2, 3, "rollback")

  # A second rollback goes further back, not forth to 3.
  assert promotion.rollback(store, root, "m") == (2, 1)
  assert labels_in_config(root, "m") == promotion.current_labels(store, "m") == {"stable": 1}

  before = (counts(store), open(serving.models_config_path(root)).read())
  with pytest.raises(ServingError, match="no earlier 'stable' version"):
    promotion.rollback(store, root, "m")
  assert (counts(store), open(serving.models_config_path(root)).read()) == before


def test_promote_after_rollback_then_rollback_returns_to_rolled_back_version(
    store, tmp_path, root):
  model_id, source = put_model(store, tmp_path)
  for _ in range(2):
    promotion.promote(store, saved_model_dir=source, serving_root=root,
                      model_name="m", model_artifact_id=model_id)
  promotion.rollback(store, root, "m")  # stable 2 -> 1

  fixed = promotion.promote(store, saved_model_dir=source, serving_root=root,
                            model_name="m", model_artifact_id=model_id)

  assert fixed.version == 3
  assert labels_in_config(root, "m") == promotion.current_labels(store, "m") == {"stable": 3}
  assert promotion.rollback(store, root, "m") == (3, 1)
  assert labels_in_config(root, "m") == promotion.current_labels(store, "m") == {"stable": 1}
  assert serving.read_models_config(root)["m"].versions == (1, 3)


def test_rollback_to_explicit_version(store, tmp_path, root):
  model_id, source = put_model(store, tmp_path)
  for _ in range(3):
    promotion.promote(store, saved_model_dir=source, serving_root=root,
                      model_name="m", model_artifact_id=model_id)

  assert promotion.rollback(store, root, "m", to_version=1) == (3, 1)
  assert labels_in_config(root, "m") == promotion.current_labels(store, "m") == {"stable": 1}


@pytest.mark.parametrize("to_version", [9, 2])
def test_rollback_to_unserved_or_deleted_version_fails_and_writes_nothing(
    store, tmp_path, root, to_version):
  model_id, source = put_model(store, tmp_path)
  for _ in range(3):
    promotion.promote(store, saved_model_dir=source, serving_root=root,
                      model_name="m", model_artifact_id=model_id)
  shutil.rmtree(serving.version_path(root, "m", 2))
  before = (counts(store), open(serving.models_config_path(root)).read())

  with pytest.raises(ServingError, match=f"to version {to_version}") as raised:
    promotion.rollback(store, root, "m", to_version=to_version)

  assert "\n" not in str(raised.value)
  assert (counts(store), open(serving.models_config_path(root)).read()) == before


def test_rollback_skips_versions_whose_directory_is_gone(store, tmp_path, root):
  model_id, source = put_model(store, tmp_path)
  for _ in range(3):
    promotion.promote(store, saved_model_dir=source, serving_root=root,
                      model_name="m", model_artifact_id=model_id)
  shutil.rmtree(serving.version_path(root, "m", 2))

  assert promotion.rollback(store, root, "m") == (3, 1)


def test_rollback_to_current_version_only_rewrites_config(store, tmp_path, root):
  model_id, source = put_model(store, tmp_path)
  promotion.promote(store, saved_model_dir=source, serving_root=root,
                    model_name="m", model_artifact_id=model_id)
  os.remove(serving.models_config_path(root))
  before = counts(store)

  assert promotion.rollback(store, root, "m", to_version=1) == (1, 1)
  assert counts(store) == before
  assert labels_in_config(root, "m") == {"stable": 1}


def test_rollback_without_stable_label_fails(store, tmp_path, root):
  model_id, source = put_model(store, tmp_path)
  promotion.promote(store, saved_model_dir=source, serving_root=root,
                    model_name="m", model_artifact_id=model_id, label="canary")

  with pytest.raises(ServingError, match="has no 'stable' version"):
    promotion.rollback(store, root, "m")


def test_promote_after_serving_dir_is_wiped_does_not_reuse_recorded_versions(
    store, tmp_path, root):
  model_id, source = put_model(store, tmp_path)
  for _ in range(2):
    promotion.promote(store, saved_model_dir=source, serving_root=root,
                      model_name="m", model_artifact_id=model_id)
  shutil.rmtree(serving.model_dir(root, "m"))

  again = promotion.promote(store, saved_model_dir=source, serving_root=root,
                            model_name="m", model_artifact_id=model_id)

  assert again.version == 3
  assert serving.read_models_config(root)["m"] == serving.ModelServingState(
      versions=(3,), labels={"stable": 3})


def test_sync_models_config_rebuilds_lost_config_from_mlmd(store, tmp_path, root):
  model_id, source = put_model(store, tmp_path)
  for name, label in (("a", "stable"), ("a", "canary"), ("b", "stable")):
    promotion.promote(store, saved_model_dir=source, serving_root=root,
                      model_name=name, model_artifact_id=model_id, label=label)
  # A pushed, recorded but unlabelled version is loaded as the newest one.
  served = serving.push_saved_model(source, root, "b")
  promotion.record_push(store, model_artifact_id=model_id, served=served,
                        label=None, forced=False, serving_root=root)
  expected = {
      "a": serving.ModelServingState(versions=(1, 2), labels={"stable": 1, "canary": 2}),
      "b": serving.ModelServingState(versions=(1, 2), labels={"stable": 1}),
  }
  os.remove(serving.models_config_path(root))

  assert promotion.sync_models_config(store, root) == expected
  assert serving.read_models_config(root) == expected


def test_rollback_of_never_promoted_model_fails_and_creates_nothing(store, tmp_path, root):
  with pytest.raises(ServingError, match="nothing to roll back"):
    promotion.rollback(store, root, "m")
  assert not os.path.exists(root)
  assert counts(store) == (0, 0, 0)


def put_tfx_pusher_execution(store, pushed_artifact):
  """Publishes `pushed_artifact` as the OUTPUT of a pusher execution, as TFX
  does after its executor returns."""
  type_id = store.put_execution_type(metadata_store_pb2.ExecutionType(
      name="tfx.components.pusher.component.Pusher"))
  execution = metadata_store_pb2.Execution(
      type_id=type_id, last_known_state=metadata_store_pb2.Execution.COMPLETE)
  _, [artifact_id], _ = store.put_execution(
      execution, [(pushed_artifact, metadata_store_pb2.Event(type=OUTPUT))], contexts=[])
  return artifact_id


def test_pipeline_push_labels_config_before_publish_and_mlmd_after(store, tmp_path, root):
  model_id, source = put_model(store, tmp_path)
  promotion.promote(store, saved_model_dir=source, serving_root=root,
                    model_name="m", model_artifact_id=model_id)
  # What the pipeline's Pusher executor does: push, mark its output artifact,
  # sync with the version MLMD does not hold yet.
  served = serving.push_saved_model(source, root, "m")
  type_id = promotion.ensure_types(store)["PushedModel"]
  artifact = metadata_store_pb2.Artifact(type_id=type_id, uri="/pipeline_root/Pusher/7")
  promotion.mark_pushed(artifact, served, label="stable", forced=False)

  states = promotion.sync_models_config(store, root, pending=served,
                                        pending_label="stable")

  expected = {"m": serving.ModelServingState(versions=(2,), labels={"stable": 2})}
  assert states == serving.read_models_config(root) == expected
  assert promotion.current_labels(store, "m") == {"stable": 1}

  put_tfx_pusher_execution(store, artifact)  # TFX publishes after Do returns

  assert promotion.current_labels(store, "m") == {"stable": 2}
  assert promotion.sync_models_config(store, root) == expected
  last = promotion.label_history(store, "m", "stable")[-1]
  assert (last.version, last.previous_version, last.reason) == (2, 1, "push")
  assert promotion.rollback(store, root, "m") == (2, 1)


def test_latest_assignment_wins_between_pushes_and_set_label(store, tmp_path, root):
  model_id, source = put_model(store, tmp_path)
  for label in ("stable", "canary"):
    promotion.promote(store, saved_model_dir=source, serving_root=root,
                      model_name="m", model_artifact_id=model_id, label=label)

  promotion.set_label(store, "m", "stable", 2, reason="promote")  # canary -> stable

  assert promotion.current_labels(store, "m") == {"canary": 2, "stable": 2}
  third = promotion.promote(store, saved_model_dir=source, serving_root=root,
                            model_name="m", model_artifact_id=model_id,
                            label="canary")
  assert promotion.current_labels(store, "m") == {"canary": third.version, "stable": 2}
  assert labels_in_config(root, "m") == promotion.current_labels(store, "m")


def test_sync_with_pending_version_outside_serving_root_fails_and_keeps_config(
    store, tmp_path, root):
  model_id, source = put_model(store, tmp_path)
  promotion.promote(store, saved_model_dir=source, serving_root=root,
                    model_name="m", model_artifact_id=model_id)
  before = open(serving.models_config_path(root)).read()

  with pytest.raises(ServingError, match="pending version"):
    promotion.sync_models_config(
        store, root, pending=serving.ServedVersion("m", 5, "/nowhere/m/5"),
        pending_label="stable")
  assert open(serving.models_config_path(root)).read() == before


def test_cached_pusher_rerun_does_not_move_the_label_back(store, tmp_path, root):
  # A pipeline push (v1), then a promotion (v2); then the pipeline runs again
  # with nothing new, and TFX links the cached Pusher execution to the v1
  # PushedModel with another OUTPUT event. stable stays on v2.
  model_id, source = put_model(store, tmp_path)
  served = serving.push_saved_model(source, root, "m")
  type_id = promotion.ensure_types(store)["PushedModel"]
  artifact = metadata_store_pb2.Artifact(type_id=type_id, uri="/pipeline_root/Pusher/7")
  promotion.mark_pushed(artifact, served, label="stable", forced=False)
  pipeline_push_id = put_tfx_pusher_execution(store, artifact)
  promotion.promote(store, saved_model_dir=source, serving_root=root,
                    model_name="m", model_artifact_id=model_id)
  assert promotion.current_labels(store, "m") == {"stable": 2}

  pusher_type = store.get_execution_type("tfx.components.pusher.component.Pusher")
  cached = metadata_store_pb2.Execution(
      type_id=pusher_type.id, last_known_state=metadata_store_pb2.Execution.CACHED)
  store.put_execution(cached, [(None, metadata_store_pb2.Event(
      artifact_id=pipeline_push_id, type=OUTPUT))], contexts=[])

  assert promotion.current_labels(store, "m") == {"stable": 2}
  assert promotion.sync_models_config(store, root)["m"].labels == {"stable": 2}
