"""The golden Kubeflow spec: a fixed config compiled and normalised.

`tests/kubeflow/test_compile.py` compares a fresh compile of `golden_config()`
with `kubeflow/testdata/pipeline_golden.json`. After an intended change to
the compiled pipeline, regenerate the file and review its diff:

  make golden            # = .venv/bin/python -m ckptflow.kubeflow.golden

Normalised (they change between releases or machines, not with the
pipeline): TFX's version in `sdkVersion` and in the telemetry `labels`, and
the container image.
"""

from __future__ import annotations

import copy
import json
import os
import sys

from ckptflow.base import storage
from ckptflow.pipeline.config import PipelineConfig

GOLDEN_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata",
                           "pipeline_golden.json")
GOLDEN_IMAGE = "registry.example.com/ckptflow:golden"
# Fixed, machine-independent inputs: no data is read (features are given).
GOLDEN_FEATURES = ("culmen_length_mm", "culmen_depth_mm", "flipper_length_mm", "body_mass_g")
VERSION = "<version>"
IMAGE = "<image>"


def golden_config() -> PipelineConfig:
  return PipelineConfig.from_dict({
      "data": {"path": "/data/penguins", "label": "species",
               "features": list(GOLDEN_FEATURES)},
      "training": {"train_steps": 200, "checkpoint_every": 50},
      "serving": {"model_name": "penguin", "serving_dir": "/serving"},
      "run": {"home": "/ckptflow_home", "pipeline_name": "ckptflow"},
  }, source="golden config")


def normalize(job: dict) -> dict:
  """A copy of a compiled PipelineJob with release-dependent values masked."""
  job = copy.deepcopy(job)
  job["labels"] = {key: VERSION if key.endswith("version") else value
                   for key, value in job.get("labels", {}).items()}
  spec = job["pipelineSpec"]
  if spec.get("sdkVersion", "").startswith("tfx-"):
    spec["sdkVersion"] = f"tfx-{VERSION}"
  for executor in spec.get("deploymentSpec", {}).get("executors", {}).values():
    if "image" in executor.get("container", {}):
      executor["container"]["image"] = IMAGE
  return job


def render() -> str:
  """The normalised golden spec, as the file holds it."""
  from ckptflow.kubeflow.compile import build_job
  job = build_job(golden_config(), image=GOLDEN_IMAGE, feature_keys=GOLDEN_FEATURES)
  return json.dumps(normalize(job), indent=2, sort_keys=True) + "\n"


def main() -> int:
  text = render()
  os.makedirs(os.path.dirname(GOLDEN_PATH), exist_ok=True)
  storage.atomic_write(GOLDEN_PATH, text)
  print(f"wrote {GOLDEN_PATH}")
  return 0


if __name__ == "__main__":
  os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
  sys.exit(main())
