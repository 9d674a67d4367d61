"""TensorBoard event files, read without TensorFlow.

`tfrecords(path)` yields the records of a TFRecord file, checking both of
each record's masked CRC32C values (TFRecord format: a little-endian uint64
length, the masked CRC32C of those 8 bytes, the data, the masked CRC32C of
the data). `read_event_scalars(directory)` reads the scalar summaries of
the event files in a directory with TensorBoard's protobuf classes.

Imports neither TensorFlow nor TFX: CRC32C comes from `google_crc32c` (a C
extension, in the lock through the Google Cloud clients).
"""

from __future__ import annotations

import glob
import os
import struct
from typing import Iterator

import google_crc32c

from ckptflow.base.errors import CkptflowError

_HEADER_BYTES = 12  # uint64 length + uint32 masked CRC of the length
_FOOTER_BYTES = 4  # uint32 masked CRC of the data
_MASK_DELTA = 0xA282EAD8


class TFRecordError(CkptflowError):
  """A TFRecord file has a record whose CRC does not match: it is damaged."""


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC32C of `data`: the CRC rotated right by 15 bits
  plus a constant, modulo 2**32."""
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def tfrecords(path: str) -> Iterator[bytes]:
  """The records of the TFRecord file at `path`, in order.

  A truncated last record (a writer still open, or killed) ends the file
  without error. A record whose length or data does not match its CRC
  raises, so no garbage is ever yielded.

  Raises:
    OSError: the file cannot be read.
    TFRecordError: a record is damaged (one line naming the file, the
      record and its byte offset).
  """
  with open(path, "rb") as f:
    index = 0
    while True:
      offset = f.tell()
      header = f.read(_HEADER_BYTES)
      if len(header) < _HEADER_BYTES:
        return
      length_bytes = header[:8]
      (length_crc,) = struct.unpack("<I", header[8:])
      # Checked before the length is used: a damaged length must not make
      # the reader skip, or read, an arbitrary number of bytes.
      if masked_crc32c(length_bytes) != length_crc:
        raise _damaged(path, index, offset, "length")
      (length,) = struct.unpack("<Q", length_bytes)
      data = f.read(length)
      footer = f.read(_FOOTER_BYTES)
      if len(data) < length or len(footer) < _FOOTER_BYTES:
        return
      (data_crc,) = struct.unpack("<I", footer)
      if masked_crc32c(data) != data_crc:
        raise _damaged(path, index, offset, "data")
      yield data
      index += 1


def _damaged(path: str, index: int, offset: int, part: str) -> TFRecordError:
  return TFRecordError(f"TFRecord file {path!r} is damaged: record {index} (at byte "
                       f"{offset}) fails its {part} CRC32C check. Expected every record "
                       "to match its masked CRC32C")


def _scalar_value(value) -> float | None:
  """A summary value's float: TF2 summaries store a scalar tensor."""
  kind = value.WhichOneof("value")
  if kind == "simple_value":
    return float(value.simple_value)
  if kind != "tensor":
    return None
  tensor = value.tensor
  if tensor.float_val:
    return float(tensor.float_val[0])
  if tensor.double_val:
    return float(tensor.double_val[0])
  if tensor.tensor_content:
    formats = {1: "<f", 2: "<d"}  # DT_FLOAT, DT_DOUBLE
    fmt = formats.get(tensor.dtype)
    if fmt and len(tensor.tensor_content) == struct.calcsize(fmt):
      return float(struct.unpack(fmt, tensor.tensor_content)[0])
  return None


def read_event_scalars(directory: str) -> tuple[dict[str, list[tuple[int, float]]], int]:
  """tag -> [(step, value)] from the TensorBoard event files in `directory`,
  and how many files were read.

  Raises:
    OSError: a file cannot be read.
    ValueError: a file is not an event file.
    TFRecordError: a file is damaged.
  """
  from google.protobuf.message import DecodeError
  from tensorboard.compat.proto import event_pb2

  scalars: dict[str, list[tuple[int, float]]] = {}
  files = sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*")))
  for path in files:
    for data in tfrecords(path):
      try:
        event = event_pb2.Event.FromString(data)
      except DecodeError as e:
        raise ValueError(f"{path}: not a TensorBoard event file ({e})") from e
      for value in event.summary.value:
        number = _scalar_value(value)
        if number is not None:
          scalars.setdefault(value.tag, []).append((int(event.step), number))
  return scalars, len(files)
