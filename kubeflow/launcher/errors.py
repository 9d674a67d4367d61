"""The launcher's errors."""

from __future__ import annotations

from ckptflow.base.errors import CkptflowError


class LauncherError(CkptflowError):
  """The spec cannot be run as asked (unsupported feature, missing input)."""


class TaskFailed(LauncherError):
  """A task's process failed or was killed; its execution is FAILED."""

  exit_code = 1
