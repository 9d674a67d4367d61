"""A deterministic sample dataset, so the demo needs nothing but the repo.

Three classes of points drawn around fixed centres in four numeric features
(seeded, so every machine writes byte-identical files), in the same shape as
the penguins data: an integer class label column `species` and float
features scaled to [0, 1].
"""

from __future__ import annotations

import os

import numpy as np

from ckptflow.base import storage

FEATURES = ("culmen_length_mm", "culmen_depth_mm", "flipper_length_mm", "body_mass_g")
LABEL = "species"

_CENTRES = np.array([
    [0.25, 0.60, 0.20, 0.25],
    [0.55, 0.65, 0.35, 0.30],
    [0.55, 0.25, 0.70, 0.70],
])


def write_sample_data(directory: str, *, rows: int = 3000, seed: int = 7) -> str:
  """Writes `directory/data.csv` (unless it already holds the same data) and
  returns the directory. The file appears complete or not at all."""
  rng = np.random.RandomState(seed)
  labels = rng.randint(0, len(_CENTRES), size=rows)
  points = _CENTRES[labels] + rng.normal(scale=0.08, size=(rows, len(FEATURES)))
  points = np.clip(points, 0.0, 1.0)
  lines = [",".join((LABEL,) + FEATURES)]
  lines += [f"{label}," + ",".join(f"{v:.6f}" for v in point)
            for label, point in zip(labels, points)]
  content = "\n".join(lines) + "\n"

  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, "data.csv")
  if os.path.exists(path):
    with open(path) as f:
      if f.read() == content:
        return directory  # unchanged input keeps TFX's cache valid
  storage.atomic_write(path, content)
  return directory
