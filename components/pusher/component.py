"""The pipeline's Pusher: TFX's Pusher component with ckptflow's executor.

Same inputs, outputs and parameters as `tfx.components.Pusher` (a blessed
Model is pushed to `push_destination`); the executor (`executor.py`) pushes
through `serving.push_saved_model` (a never-reused integer version, staged
and renamed) and records the served version and its label in MLMD. The
component's id stays `Pusher`.
"""

from tfx.components.pusher import component as tfx_pusher_component
from tfx.dsl.components.base import executor_spec

from ckptflow.components.pusher import executor


class Pusher(tfx_pusher_component.Pusher):
  """TFX's Pusher whose executor is ckptflow's (see the module docstring)."""

  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)
