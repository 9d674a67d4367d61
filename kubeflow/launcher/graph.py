"""The task graph of a compiled spec's root DAG: who depends on whom, and
the order tasks run in.

A task depends on the tasks it names in `dependentTasks` and on the
producers of the artifacts and parameters it reads. The order is
deterministic: among the tasks that are ready, the first by name runs next.
"""

from __future__ import annotations

from typing import Mapping

from kfp.pipeline_spec import pipeline_spec_pb2

from ckptflow.kubeflow.launcher.errors import LauncherError


def upstream_tasks(task: pipeline_spec_pb2.PipelineTaskSpec) -> set[str]:
  """The names of the tasks `task` must wait for."""
  artifacts = {spec.task_output_artifact.producer_task
               for spec in task.inputs.artifacts.values()
               if spec.WhichOneof("kind") == "task_output_artifact"}
  parameters = {spec.task_output_parameter.producer_task
                for spec in task.inputs.parameters.values()
                if spec.WhichOneof("kind") == "task_output_parameter"}
  return set(task.dependent_tasks) | artifacts | parameters


def task_order(tasks: Mapping[str, pipeline_spec_pb2.PipelineTaskSpec]) -> list[str]:
  """Task names in dependency order (ties by name).

  Raises:
    LauncherError: a task depends on a task the DAG does not have, or the
      tasks depend on each other in a cycle.
  """
  upstream = {name: upstream_tasks(task) for name, task in tasks.items()}
  for name, needs in upstream.items():
    unknown = needs - set(tasks)
    if unknown:
      raise LauncherError(f"task {name!r} depends on unknown task {sorted(unknown)[0]!r}")
  order: list[str] = []
  done: set[str] = set()
  while len(order) < len(tasks):
    ready = sorted(n for n in tasks if n not in done and upstream[n] <= done)
    if not ready:
      raise LauncherError("the spec's tasks depend on each other in a cycle: "
                          f"{', '.join(sorted(set(tasks) - done))}")
    order.append(ready[0])
    done.add(ready[0])
  return order
