"""TrainingLoop and Checkpointer in-process, on a real MLMD SQLite store."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from ml_metadata.proto import metadata_store_pb2  # noqa: E402

from ckptflow.components import checkpoint as ckpt  # noqa: E402
from ckptflow.components.trainer import checkpoint_files, policies  # noqa: E402
from ckptflow.components.trainer.contract import TrainingSpec  # noqa: E402
from ckptflow.components.trainer.executor import TrainerSettings, pick_warm_start  # noqa: E402
from ckptflow.components.trainer.loop import LoopSettings, TrainingLoop  # noqa: E402
from ckptflow.components.trainer.registration import MlmdCheckpointSink  # noqa: E402
from ckptflow.pipeline import model  # noqa: E402
from ckptflow.base.errors import CheckpointError  # noqa: E402
from ckptflow.base.progress import TrainingReporter  # noqa: E402
from reliability_support import start_execution  # noqa: E402
from support import finish_execution  # noqa: E402

FEATURES = ("a", "b", "c")


def _batches(seed: int = 0) -> tf.data.Dataset:
  rng = np.random.RandomState(0)
  features = {k: rng.rand(256, 1).astype(np.float32) for k in FEATURES}
  labels = rng.randint(0, 3, size=(256, 1)).astype(np.int64)
  return (tf.data.Dataset.from_tensor_slices((features, labels)).repeat()
          .shuffle(64, seed=seed).batch(8, drop_remainder=True))


class Run:
  """One training execution against a real store."""

  def __init__(self, store, root, *, key="run", seed=1, steps=30, every=10,
               retention=policies.KeepAny(())):
    self.execution_id = start_execution(store)
    self.rng = tf.random.Generator.from_seed(seed)
    tf.keras.utils.set_random_seed(seed)
    spec = TrainingSpec(feature_keys=FEATURES, label_key="y",
                        hyperparameters={"hidden_units": [8], "input_noise": 0.1},
                        seed=seed, rng=self.rng)
    self.setup = model.build_training(spec)
    self.sink = MlmdCheckpointSink(store, self.execution_id, key)
    self.loop = TrainingLoop(
        self.setup, batches=_batches(), eval_batches=None, rng=self.rng,
        settings=LoopSettings(train_steps=steps, checkpoint_dir=os.path.join(
            root, f"exec-{self.execution_id}"), fingerprint="f", resume_key=key,
            examples_per_epoch=256, batch_size=8),
        save_policy=policies.EveryNSteps(every), retention=retention, sink=self.sink,
        progress=TrainingReporter())

  def state(self) -> dict[str, np.ndarray]:
    """Every variable the checkpoint must bring back, by a stable name."""
    values = {f"model/{v.name}": v.numpy() for v in self.setup.model.variables}
    for name, optimizer in self.setup.optimizers.items():
      # By position: slot names carry the name scope they were created in.
      values |= {f"{name}/{i}": v.numpy() for i, v in enumerate(optimizer.variables)}
    values |= {f"var/{k}": v.numpy() for k, v in self.setup.variables.items()}
    values["rng"] = self.rng.state.numpy()
    values["step"] = self.loop.state.step.numpy()
    return values


def test_two_optimizers_and_two_extra_variables_restore_bit_for_bit(store, tmp_path):
  first = Run(store, str(tmp_path), seed=1)
  first.loop.run()
  saved = first.state()
  next_batch = next(first.loop._iterator)
  # Both optimizers have slot variables, and the extra variables moved.
  assert sum(1 for k in saved if k.startswith("body/")) > 1
  assert sum(1 for k in saved if k.startswith("head/")) > 1
  assert saved["var/train_loss"] != 0 and saved["var/train_accuracy"] != 0

  second = Run(store, str(tmp_path), seed=99)  # different initial values
  assert not np.array_equal(second.state()["model/hidden_0/kernel:0"],
                            saved["model/hidden_0/kernel:0"])
  resumed = second.loop.resume()
  assert resumed is not None and resumed.step == 30
  # Optimizer slots are created lazily; create them on the variables each
  # optimizer trains, and the checkpoint's values are restored into them.
  head = second.setup.model.get_layer("head").trainable_variables
  body = [v for v in second.setup.model.trainable_variables if all(v is not h for h in head)]
  second.setup.optimizers["body"].build(body)
  second.setup.optimizers["head"].build(head)
  restored = second.state()
  assert sorted(restored) == sorted(saved)
  for name, value in saved.items():
    assert np.array_equal(restored[name], value), name
  # The data iterator continues where the first run stopped.
  restored_batch = next(second.loop._iterator)
  for key in FEATURES:
    assert np.array_equal(restored_batch[0][key], next_batch[0][key])


def test_registered_checkpoints_are_verified_outputs_of_the_execution(store, tmp_path):
  run = Run(store, str(tmp_path))
  result = run.loop.run()
  assert [c.step for c in result.checkpoints] == [10, 20, 30]
  events = store.get_events_by_execution_ids([run.execution_id])
  outputs = {e.artifact_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT}
  assert outputs == {c.id for c in result.checkpoints}
  for record in result.checkpoints:
    checkpoint_files.verify_against_record(record.uri, record.checksum)
    assert record.fingerprint == "f" and record.tf_version == tf.__version__
    assert record.epoch == (record.step - 1) // 32
    assert "loss" in record.metrics and "running_loss" in record.metrics
  assert not [d for d in os.listdir(tmp_path / f"exec-{run.execution_id}")
              if d.endswith(checkpoint_files.STAGING_SUFFIX)]


def test_unreadable_staged_checkpoint_is_never_published(tmp_path):
  staged = tmp_path / "step-00000010.staging"
  staged.mkdir()
  (staged / "ckpt.index").write_bytes(b"not an index")
  (staged / "ckpt.data-00000-of-00001").write_bytes(b"")
  with pytest.raises(CheckpointError, match="unreadable"):
    checkpoint_files.verify_readable(str(staged))
  assert checkpoint_files.sweep_staging(str(tmp_path)) == [str(staged)]
  assert not staged.exists()


def test_completed_run_is_not_resumed_but_can_warm_start_the_next(store, tmp_path):
  first = Run(store, str(tmp_path), key="first")
  first.loop.run()
  finish_execution(store, first.execution_id, metadata_store_pb2.Execution.COMPLETE)
  weights = [w.copy() for w in first.setup.model.get_weights()]

  second = Run(store, str(tmp_path), key="first", seed=5)
  assert second.loop.resume() is None  # its producer finished

  third = Run(store, str(tmp_path), key="second", seed=5)
  settings = TrainerSettings.from_exec_properties({
      "module": "m", "feature_keys": "[]", "label_key": "y", "train_steps": 1,
      "batch_size": 1, "checkpoint_every": 1})
  start = pick_warm_start(store, "latest", settings, exclude_key="second")
  assert start.step == 30 and start.resume_key == "first"
  third.loop.warm_start(start)
  for restored, saved in zip(third.setup.model.get_weights(), weights):
    assert np.array_equal(restored, saved)
  # Weights only: the optimizers start fresh, the step at 0.
  assert int(third.loop.state.step.numpy()) == 0
  inputs = [e for e in store.get_events_by_execution_ids([third.execution_id])
            if e.type == metadata_store_pb2.Event.INPUT]
  assert [e.artifact_id for e in inputs] == [start.id]


def test_warm_start_best_picks_the_lowest_loss_and_rejects_a_pruned_id(store, tmp_path):
  run = Run(store, str(tmp_path), key="k", retention=policies.KeepLast(1))
  result = run.loop.run()
  settings = TrainerSettings.from_exec_properties({
      "module": "m", "feature_keys": "[]", "label_key": "y", "train_steps": 1,
      "batch_size": 1, "checkpoint_every": 1, "best_metric": "loss", "best_mode": "min"})
  live = [r for r in ckpt.list_checkpoints(store) if r.live]
  assert [r.step for r in live] == [30]
  assert pick_warm_start(store, "best", settings, exclude_key="other").id == live[0].id
  pruned = [r for r in ckpt.list_checkpoints(store) if r.state == "DELETED"]
  assert [r.step for r in pruned] == [10, 20]
  assert not os.path.exists(pruned[0].uri)
  with pytest.raises(CheckpointError, match="DELETED"):
    pick_warm_start(store, str(pruned[0].id), settings, exclude_key="other")
  with pytest.raises(CheckpointError, match="no Checkpoint artifact with id 9999"):
    pick_warm_start(store, "9999", settings, exclude_key="other")
  assert result.final_checkpoint.step == 30


def _create_slots(run: "Run") -> None:
  """Creates every optimizer's slot variables without a training step (Keras
  creates them lazily; restored values from a checkpoint are applied then)."""
  model = run.setup.model
  head_ids = {id(v) for v in model.layers[-1].trainable_variables}
  body = [v for v in model.trainable_variables if id(v) not in head_ids]
  head = [v for v in model.trainable_variables if id(v) in head_ids]
  run.setup.optimizers["body"].build(body)
  run.setup.optimizers["head"].build(head)


@pytest.mark.parametrize("restore_step", [False, True])
def test_full_warm_start_restores_every_optimizer_slot_and_extra_variable(
    store, tmp_path, restore_step):
  first = Run(store, str(tmp_path), key="first")
  first.loop.run()
  finish_execution(store, first.execution_id, metadata_store_pb2.Execution.COMPLETE)
  saved = first.state()
  [record] = [r for r in ckpt.list_checkpoints(store) if r.step == 30]
  reader = tf.train.load_checkpoint(checkpoint_files.prefix(record.uri))
  # Every optimizer slot in the file (iterations are saved under another name).
  saved_slots = [k for k in reader.get_variable_to_shape_map()
                 if k.startswith("optimizers/") and "/_variables/" in k
                 and k.endswith("VARIABLE_VALUE")]
  assert len(saved_slots) == 6  # Adam m and v for 2 body variables, SGD momentum x2

  second = Run(store, str(tmp_path), key="second", seed=5)
  fresh = second.state()
  second.loop.warm_start(record, mode="full", restore_step=restore_step)
  _create_slots(second)
  restored = second.state()

  optimizer_keys = [k for k in saved if k.startswith(("body/", "head/"))]
  assert len(optimizer_keys) == 8  # the slots and each optimizer's iterations
  for key in optimizer_keys + [k for k in saved if k.startswith(("var/", "model/"))]:
    assert np.array_equal(restored[key], saved[key]), key
    if not key.startswith("model/"):
      assert not np.array_equal(fresh.get(key, np.zeros(0)), saved[key]), key
  # Every slot value in the checkpoint file is one of the restored slots.
  restored_slots = [restored[k] for k in optimizer_keys]
  for name in saved_slots:
    value = reader.get_tensor(name)
    assert any(v.shape == value.shape and np.array_equal(v, value)
               for v in restored_slots), name
  assert int(restored["step"]) == (30 if restore_step else 0)
  assert np.array_equal(restored["rng"], fresh["rng"])  # a new run's randomness
  [event] = [e for e in store.get_events_by_execution_ids([second.execution_id])
             if e.type == metadata_store_pb2.Event.INPUT]
  assert event.artifact_id == record.id
  assert event.path.steps[0].key == ("warm_start:full+step" if restore_step
                                     else "warm_start:full")


def test_weights_warm_start_leaves_the_optimizers_fresh(store, tmp_path):
  first = Run(store, str(tmp_path), key="first")
  first.loop.run()
  saved = first.state()
  [record] = [r for r in ckpt.list_checkpoints(store) if r.step == 30]
  second = Run(store, str(tmp_path), key="second", seed=5)
  second.loop.warm_start(record)
  _create_slots(second)
  restored = second.state()
  slots = [k for k in saved if k.startswith("body/") and saved[k].ndim > 0]
  assert slots and all(not np.any(restored[k]) for k in slots)
