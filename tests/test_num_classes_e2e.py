"""Data with more classes than the example module's default trains: the
run infers `num_classes` from the labels (the issue: 4 classes failed with
`Expected a class id below num_classes=3`)."""

from __future__ import annotations

import json
import random

import pytest

from ckptflow.base import metadata
from support import ckptflow

pytestmark = [pytest.mark.e2e]  # a whole (short) pipeline run


def test_four_class_data_trains_a_four_class_model(tmp_path):
  rng = random.Random(3)
  centres = [(0.2, 0.2), (0.8, 0.2), (0.2, 0.8), (0.8, 0.8)]
  lines = ["species,x,y"]
  for _ in range(400):
    label = rng.randrange(4)
    cx, cy = centres[label]
    lines.append(f"{label},{cx + rng.gauss(0, 0.05):.4f},{cy + rng.gauss(0, 0.05):.4f}")
  data = tmp_path / "data"
  data.mkdir()
  (data / "data.csv").write_text("\n".join(lines) + "\n")
  home = tmp_path / "home"

  ckptflow("run", "--home", str(home), "--data", str(data), "--train-steps", "60",
           "--checkpoint-every", "30")

  store = metadata.open_store(str(home / "metadata.sqlite"), create=False)
  [trainer] = [e for e in store.get_executions()
               if "hyperparameters" in e.properties or "hyperparameters" in e.custom_properties]
  raw = (trainer.properties.get("hyperparameters") or
         trainer.custom_properties["hyperparameters"]).string_value
  assert json.loads(raw)["num_classes"] == 4
