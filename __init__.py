"""ckptflow: a TFX pipeline whose checkpoints and exports are MLMD artifacts."""


def __getattr__(name: str):
  # TFX's KFP v2 entrypoint imports a custom artifact class by its type name
  # ("ckptflow.Checkpoints"); loaded lazily so `import ckptflow` stays light.
  if name == "Checkpoints":
    from ckptflow.components.kubeflow.artifacts import Checkpoints
    return Checkpoints
  raise AttributeError(f"module 'ckptflow' has no attribute {name!r}")
