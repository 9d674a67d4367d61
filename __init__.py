"""ckptflow: a TFX pipeline whose checkpoints and exports are MLMD artifacts."""
