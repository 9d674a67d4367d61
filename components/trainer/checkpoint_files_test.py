"""Checkpoint files on local disk (staged, renamed) and in an RGW bucket
(written in place, committed by a marker): the same checksum for the same
state, nothing unfinished ever passes as published, the sweep removes only
unfinished writes."""

from __future__ import annotations

import pytest
import tensorflow as tf

from ckptflow.base import storage
from ckptflow.base.errors import CheckpointError
from ckptflow.components.trainer import checkpoint_files


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
  if request.param == "local":
    return str(tmp_path / "checkpoints")
  bucket = request.getfixturevalue("bucket")
  storage.prepare(f"s3://{bucket}")
  return f"s3://{bucket}/checkpoints"


def _state() -> tf.train.Checkpoint:
  return tf.train.Checkpoint(v=tf.Variable(tf.range(1000, dtype=tf.float32)),
                             step=tf.Variable(7, dtype=tf.int64))


def _write(root: str, step: int) -> str:
  if not storage.is_remote(root):
    tf.io.gfile.makedirs(root)
  written = checkpoint_files.write_dir(root, step)
  _state().write(checkpoint_files.prefix(written))
  return written


def test_publish_makes_a_checkpoint_whose_digest_matches_the_local_one(root, tmp_path):
  written = _write(root, 100)
  final = checkpoint_files.final_dir(root, 100)
  assert (written == final) == storage.is_remote(root)
  checkpoint_files.verify_readable(written)
  size, checksum = checkpoint_files.digest(written)
  checkpoint_files.publish(written, final)
  checkpoint_files.verify_against_record(final, checksum)
  # The same state written on local disk has the same digest.
  local = _write(str(tmp_path / "reference"), 100)
  assert checkpoint_files.digest(local) == (size, checksum)


def test_unpublished_bucket_checkpoint_fails_verification_and_is_swept(root):
  published = _write(root, 100)
  checkpoint_files.publish(published, checkpoint_files.final_dir(root, 100))
  _, checksum = checkpoint_files.digest(checkpoint_files.final_dir(root, 100))
  unfinished = _write(root, 200)  # killed before publish
  if storage.is_remote(root):
    with pytest.raises(CheckpointError, match="no commit marker"):
      checkpoint_files.verify_against_record(unfinished, checksum)
    assert checkpoint_files.uncommitted(root) == [unfinished]
  removed = checkpoint_files.sweep_staging(root)
  assert removed == [unfinished]
  assert not storage.exists(unfinished)
  checkpoint_files.verify_against_record(checkpoint_files.final_dir(root, 100), checksum)


def test_guarded_removal_takes_the_commit_marker_with_the_files(root):
  written = _write(root, 100)
  final = checkpoint_files.final_dir(root, 100)
  checkpoint_files.publish(written, final)
  with pytest.raises(storage.OutsideRootsError):
    storage.remove_tree(final, (storage.join(root, "elsewhere"),))
  checkpoint_files.verify_against_record(final, checkpoint_files.digest(final)[1])
  storage.remove_tree(final, (root,))
  assert not storage.exists(final)
  with pytest.raises(CheckpointError):
    checkpoint_files.verify_against_record(final, "0" * 64)
