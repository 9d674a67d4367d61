"""Runs a compiled KFP v2 pipeline spec on this machine, task by task.

No Kubeflow cluster runs here, so this does, for each task of the spec in
dependency order, what KFP's driver and launcher do for a container task:

1. resolve the task's inputs: parameters (constants, with KFP's
   `{{$.pipeline_job_uuid}}`-style placeholders replaced; pipeline
   parameters; upstream output parameters) and artifacts (the upstream
   task's recorded output, with its MLMD id as the artifact name, its URI,
   its custom properties as metadata);
2. provision the outputs: `PIPELINE_ROOT/<pipeline>/<run_id>/<task>/<uuid>/<key>`
   and an output metadata file;
3. record a `system.ContainerExecution` (RUNNING, custom property
   `task_name`, INPUT events) in the run's `system.Pipeline` and
   `system.PipelineRun` contexts;
4. run exactly the task's container `command` + `args` from the spec, with
   `{{$}}` replaced by the `ExecutorInput` JSON, as a subprocess in its own
   process group (its "pod"), `python` resolving to this interpreter (the
   stand-in for the image, which `kubeflow/Dockerfile` builds from the same
   lock file), CKPTFLOW_METADATA set to the store as a deployment sets it;
5. read the `ExecutorOutput` the task wrote, record its output artifacts
   (type named by the schema title, e.g. `tfx.Model`; metadata as custom
   properties; state LIVE; OUTPUT events keyed by output name) and mark the
   execution COMPLETE, or FAILED if the process failed or was killed.

A task that fails is run again as its `retryPolicy` allows (the compiled
Trainer task has one), each time as a new attempt with fresh output URIs;
KFP waits the policy's backoff first, this launcher does not.

Not done, as on open-source KFP: `resolver` and `importer` executors are
refused; container `lifecycle` hooks (Vertex's pre-cache check) are not
run; there is no caching (every task runs). Running one task again in an
existing run (`tasks=[...]`, `--task`) takes its inputs from the latest
COMPLETE execution of each upstream task of that run, as a retry does.

One job per module, as in `kfp.local`: `graph` (task order), `executor_input`
(steps 1-2), `placeholders` (resolving `{{$...}}`), `recorder` (MLMD
contexts, executions and outputs: steps 3 and 5), `task` (the task's
process, environment and signals: step 4), `run` (`LocalRun`, which
orchestrates them) and `command` (the command line):

  python -m ckptflow.kubeflow.launcher SPEC --pipeline-root DIR \\
      --metadata mysql://root@127.0.0.1:3306/db [--run-id ID] [--task NAME] \\
      [--param data_root=/path/to/csvs]
"""

from __future__ import annotations

from ckptflow.kubeflow.launcher.command import main
from ckptflow.kubeflow.launcher.errors import LauncherError, TaskFailed
from ckptflow.kubeflow.launcher.recorder import (CONTAINER_EXECUTION_TYPE,
                                                 DAG_EXECUTION_TYPE, PIPELINE_CONTEXT_TYPE,
                                                 RUN_CONTEXT_TYPE)
from ckptflow.kubeflow.launcher.run import LocalRun, TaskResult
from ckptflow.kubeflow.launcher.task import WORK_DIR_NAME, SubprocessTaskHandler, TaskHandler

__all__ = ["CONTAINER_EXECUTION_TYPE", "DAG_EXECUTION_TYPE", "LauncherError", "LocalRun",
           "PIPELINE_CONTEXT_TYPE", "RUN_CONTEXT_TYPE", "SubprocessTaskHandler",
           "TaskFailed", "TaskHandler", "TaskResult", "WORK_DIR_NAME", "main"]
