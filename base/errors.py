"""Errors a user can act on.

Every error raised for bad input (data, config, ids, paths) is a
`CkptflowError`; the CLI prints it as one line and exits non-zero. Messages
name the bad value and what was expected.
"""


class CkptflowError(Exception):
  """An error caused by input the user can fix. Printed as one line."""

  exit_code = 2


class ConfigError(CkptflowError):
  """The pipeline configuration (file or flags) is invalid."""


class DataError(CkptflowError):
  """The input data is missing or does not match the configuration."""


class MetadataError(CkptflowError):
  """The ML Metadata store cannot be reached or does not hold what was asked."""


class CheckpointError(CkptflowError):
  """A checkpoint is unknown, pruned, or unreadable."""


class ServingError(CkptflowError):
  """A push, label change or rollback cannot be done."""
