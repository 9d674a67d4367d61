"""Named fault points, for tests that kill a real process at a chosen place.

`fault_point("push-copy")` does nothing unless the environment variable
CKPTFLOW_FAULT names that point; then the process sends itself SIGKILL there
(no cleanup handler, no `finally`, exactly like a power cut or an OOM kill).
CKPTFLOW_FAULT_AFTER=N lets the point pass N times before it fires.
"""

import os
import signal

FAULT_ENV = "CKPTFLOW_FAULT"
FAULT_AFTER_ENV = "CKPTFLOW_FAULT_AFTER"

_passes: dict[str, int] = {}


def fault_point(name: str) -> None:
  """Kills this process with SIGKILL if CKPTFLOW_FAULT names `name`."""
  if os.environ.get(FAULT_ENV) != name:
    return
  seen = _passes.get(name, 0)
  _passes[name] = seen + 1
  if seen >= int(os.environ.get(FAULT_AFTER_ENV, "0")):
    os.kill(os.getpid(), signal.SIGKILL)
