"""Tests for reading TFRecord and TensorBoard event files without TensorFlow:
files written by TensorFlow itself, read back, and damage detected."""

from __future__ import annotations

import os
import struct

import pytest

from ckptflow.base.errors import CkptflowError
from ckptflow.operations.report import events

RECORDS = [b"first", b"", b"\x00\xff" * 5000, "naïve".encode()]


@pytest.fixture(scope="module")
def tf():
  os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
  import tensorflow
  return tensorflow


@pytest.fixture
def tf_written(tf, tmp_path):
  """A TFRecord file written by tf.io.TFRecordWriter, holding RECORDS."""
  path = tmp_path / "data.tfrecord"
  with tf.io.TFRecordWriter(str(path)) as writer:
    for record in RECORDS:
      writer.write(record)
  return path


def flip_byte(path, offset: int) -> None:
  data = bytearray(path.read_bytes())
  data[offset] ^= 0x01
  path.write_bytes(bytes(data))


def test_records_written_by_tensorflow_read_back_unchanged(tf, tf_written):
  assert list(events.tfrecords(str(tf_written))) == RECORDS
  # The same bytes TensorFlow's own reader returns.
  assert [r.numpy() for r in tf.data.TFRecordDataset(str(tf_written))] == RECORDS


def test_masked_crc_matches_the_one_tensorflow_wrote(tf_written):
  data = tf_written.read_bytes()
  (length,) = struct.unpack("<Q", data[:8])
  (length_crc,) = struct.unpack("<I", data[8:12])
  (data_crc,) = struct.unpack("<I", data[12 + length:16 + length])

  assert events.masked_crc32c(data[:8]) == length_crc
  assert events.masked_crc32c(data[12:12 + length]) == data_crc


def test_corrupted_data_byte_fails_in_one_line_naming_the_file(tf_written):
  flip_byte(tf_written, 12 + 2)  # a byte of RECORDS[0]'s data

  with pytest.raises(events.TFRecordError) as raised:
    list(events.tfrecords(str(tf_written)))

  message = str(raised.value)
  assert isinstance(raised.value, CkptflowError)
  assert "\n" not in message
  assert repr(str(tf_written)) in message
  assert "record 0 (at byte 0) fails its data CRC32C check" in message


def test_corrupted_length_fails_before_the_length_is_used(tf_written):
  first = len(RECORDS[0])
  third_record = 2 * 16 + first  # after RECORDS[0] and the empty RECORDS[1]
  flip_byte(tf_written, third_record + 7)  # the top byte of a uint64 length

  reader = events.tfrecords(str(tf_written))

  assert next(reader) == RECORDS[0] and next(reader) == RECORDS[1]
  with pytest.raises(events.TFRecordError, match=(
      rf"record 2 \(at byte {third_record}\) fails its length CRC32C check")):
    next(reader)


def test_truncated_last_record_ends_the_file_without_error(tf_written):
  data = tf_written.read_bytes()
  tf_written.write_bytes(data[:-3])  # a writer killed inside the last CRC

  assert list(events.tfrecords(str(tf_written))) == RECORDS[:-1]


def test_event_file_scalars_written_by_tf_summary_are_read(tf, tmp_path):
  writer = tf.summary.create_file_writer(str(tmp_path))
  with writer.as_default():
    for step in (1, 2, 3):
      tf.summary.scalar("loss", 1.0 / step, step=step)
  writer.close()

  scalars, files = events.read_event_scalars(str(tmp_path))

  assert files == 1
  assert [s for s, _ in scalars["loss"]] == [1, 2, 3]
  assert scalars["loss"][2][1] == pytest.approx(1 / 3)


def test_damaged_event_file_fails_in_one_line_naming_it(tf, tmp_path):
  writer = tf.summary.create_file_writer(str(tmp_path))
  with writer.as_default():
    tf.summary.scalar("loss", 0.5, step=1)
  writer.close()
  [name] = os.listdir(tmp_path)
  flip_byte(tmp_path / name, os.path.getsize(tmp_path / name) - 6)  # last record's data

  with pytest.raises(events.TFRecordError, match="fails its data CRC32C check") as raised:
    events.read_event_scalars(str(tmp_path))
  assert name in str(raised.value) and "\n" not in str(raised.value)
