"""The command every task of the compiled Kubeflow pipeline runs:
`python -m ckptflow.components.kubeflow.entry ARGS`, which is TFX's
`kubeflow_v2_run_executor` with ARGS, plus two things a pod on a bucket needs:

* tensorflow-io is imported, with its S3 settings derived from AWS_*
  (`base.s3`), before TFX touches an s3:// URI of the task (stock TFX
  components would otherwise report every s3:// path as not found);
* the process leaves through `storage.exit_process` with the executor's
  real status: a process that used tensorflow-io's S3 client aborts at exit
  with SIGABRT (tensorflow/io#2039), which KFP would read as a failed task.
"""

from __future__ import annotations

import sys

from ckptflow.base import storage

TFX_ENTRY = "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"


def prepare_remote(argv: list[str]) -> None:
  """Prepares TensorFlow for the schemes of the URIs named in `argv` (the
  executor input is JSON on the command line: output URIs under the
  pipeline root, input artifact URIs)."""
  text = " ".join(argv)
  for scheme in storage.REMOTE_SCHEMES:
    if f"{scheme}://" in text:
      storage.prepare(f"{scheme}://bucket")


def main(argv: list[str]) -> int:
  from absl import app
  from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor as entry
  prepare_remote(argv)
  status = 0
  try:
    app.run(entry.main, argv=[TFX_ENTRY, *argv], flags_parser=entry._parse_flags)
  except SystemExit as e:
    status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  except BaseException:
    if not storage.remote_touched():
      raise
    import traceback
    traceback.print_exc()
    status = 1
  storage.exit_process(status)
  return status


if __name__ == "__main__":
  main(sys.argv[1:])
