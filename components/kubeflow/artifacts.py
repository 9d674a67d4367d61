"""The artifact type the Kubeflow Trainer declares its checkpoints with.

`ckptflow.Checkpoints` is one task output per Trainer run on Kubeflow: its
URI holds `manifest.json`, listing every LIVE checkpoint of the run (ids in
the CKPTFLOW_METADATA store, steps, URIs, checksums, metrics), and its
custom properties describe the final checkpoint (the one the model was
exported from): `final_checkpoint_id`, `final_step`, `final_metrics`,
`final_checksum`, `final_uri`, plus `count`, `checkpoint_ids`,
`checkpoint_dir` and `trainer_execution_id`. (TFX's KFP v2 compiler allows
custom types no declared properties.) KFP records it with the Trainer task, so the checkpoints show in
KFP's UI and lineage; the checkpoints themselves stay `Checkpoint`
artifacts registered by the Trainer while it trained.

The type name is also its import path, as TFX's KFP v2 compiler requires of
custom types (the schema title is how the container entrypoint finds the
class): `ckptflow/__init__.py` exposes it lazily as `ckptflow.Checkpoints`.
"""

from tfx.types import artifact


class Checkpoints(artifact.Artifact):
  """A Trainer run's checkpoints: a manifest, and the final one's properties."""

  TYPE_NAME = "ckptflow.Checkpoints"
