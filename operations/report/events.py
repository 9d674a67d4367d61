"""TensorBoard event files, read without TensorFlow.

`tfrecords(path)` yields the records of a TFRecord file;
`read_event_scalars(directory)` reads the scalar summaries of the event
files in a directory with TensorBoard's protobuf classes. Imports neither
TensorFlow nor TFX.
"""

from __future__ import annotations

import glob
import os
import struct
from typing import Iterator


def tfrecords(path: str) -> Iterator[bytes]:
  """The records of a TFRecord file (length, crc, data, crc). A truncated
  last record (a writer still open, or killed) ends the file."""
  with open(path, "rb") as f:
    while True:
      header = f.read(12)
      if len(header) < 12:
        return
      (length,) = struct.unpack("<Q", header[:8])
      data = f.read(length)
      if len(data) < length or len(f.read(4)) < 4:
        return
      yield data


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
