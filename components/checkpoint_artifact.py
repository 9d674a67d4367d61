"""The `Checkpoint` artifact type as a TFX artifact class.

Built from the same property table as `checkpoint.py`, so TFX and the
Trainer's direct MLMD registrations agree on the type.
"""

from ml_metadata.proto import metadata_store_pb2
from tfx.types import artifact

from ckptflow.components.checkpoint import CHECKPOINT_PROPERTIES, CHECKPOINT_TYPE_NAME

_PROPERTY_TYPES = {
    metadata_store_pb2.INT: artifact.PropertyType.INT,
    metadata_store_pb2.STRING: artifact.PropertyType.STRING,
    metadata_store_pb2.DOUBLE: artifact.PropertyType.FLOAT,
}


class Checkpoint(artifact.Artifact):
  """One complete, verified training checkpoint (a directory)."""

  TYPE_NAME = CHECKPOINT_TYPE_NAME
  PROPERTIES = {name: artifact.Property(type=_PROPERTY_TYPES[t])
                for name, t in CHECKPOINT_PROPERTIES.items()}
