"""kubeflow/Dockerfile: no Docker engine runs here, so what the image must
hold is checked in the file itself; the end-to-end test runs the spec's
own container commands with the same lock file."""

from __future__ import annotations

import json
import re

from support import REPO

from ckptflow.kubeflow import golden

DOCKERFILE = REPO / "kubeflow" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
  text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())  # join continued lines
  found = []
  for line in text.splitlines():
    line = line.strip()
    if line and not line.startswith("#"):
      keyword, _, rest = line.partition(" ")
      found.append((keyword.upper(), rest.strip()))
  return found


def test_image_is_python_311_with_the_locked_stack_the_project_and_legacy_keras():
  steps = instructions()
  [base] = [rest for keyword, rest in steps if keyword == "FROM"]
  assert re.fullmatch(r"python:3\.11[-.\w]*", base)
  env = " ".join(rest for keyword, rest in steps if keyword == "ENV")
  assert "TF_USE_LEGACY_KERAS=1" in env.split()
  runs = [rest for keyword, rest in steps if keyword == "RUN"]
  assert any("-r requirements.lock" in run for run in runs)
  assert any("--no-deps" in run and "/opt/ckptflow/src" in run for run in runs)
  copies = [rest.split()[0] for keyword, rest in steps if keyword == "COPY"]
  assert all((REPO / source).exists() for source in copies), copies


def test_image_leaves_the_command_to_the_spec():
  steps = instructions()
  assert not [k for k, _ in steps if k in ("ENTRYPOINT", "CMD")]
  spec = json.loads(open(golden.GOLDEN_PATH).read())["pipelineSpec"]
  commands = {tuple(e["container"]["command"]) for e in
              spec["deploymentSpec"]["executors"].values()} - {()}
  # Every task starts the image's `python`, which the Dockerfile's base provides.
  assert {c[0] for c in commands} == {"python"}
  # The image imports what every task's command needs, tensorflow-io included.
  runs = [rest for keyword, rest in steps if keyword == "RUN"]
  assert any("import" in run and "ckptflow.components.kubeflow.entry" in run
             and "tensorflow_io" in run for run in runs)
