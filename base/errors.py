"""Errors a user can act on.

Every error raised for bad input (data, config, ids, paths) is a
`CkptflowError`; the CLI prints it as one line and exits non-zero. Messages
name the bad value and what was expected. `Interrupted` is not bad input:
a signal stopped the work; it is printed the same way, with the signal's
conventional exit status.
"""

import signal


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


class Interrupted(CkptflowError):
  """A signal (SIGINT, SIGTERM) stopped the work, after it saved what it
  could. Exit status 128 + the signal's number (130 for SIGINT, 143 for
  SIGTERM), as a shell reports a process the signal ended."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum
    self.exit_code = 128 + signum

  @property
  def signal_name(self) -> str:
    try:
      return signal.Signals(self.signum).name
    except ValueError:
      return f"signal {self.signum}"
