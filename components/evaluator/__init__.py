"""The pipeline's Evaluator: TFX's, with the version labelled stable as its
baseline (the baseline `promote` uses)."""
