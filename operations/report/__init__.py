"""`ckptflow report`: a home's training runs and served versions as pictures.

`write_report(store, out_dir, serving_root=...)` reads everything from ML
Metadata and the files it points to, and writes into `out_dir`:

* `metrics.png`: train and eval metrics against the training step, one
  line per metric and training run. The lines are the per-step scalars of
  the Trainer's TensorBoard event files (the `tensorboard/` folder of each
  Trainer execution's ModelRun artifact) where those files are readable,
  otherwise the checkpoints' own `metrics`. Every checkpoint is marked on
  every curve, its marker saying what became of it: pruned (DELETED),
  abandoned (ABANDONED: damaged files), kept (LIVE), exported / promoted
  (custom property `protected`), served (the Model behind a version that
  models.config serves was exported from it).
* `served.png`: served versions over time, per model: every push, and
  which version each label (stable, canary, ...) pointed at, when.
* `lineage-<model>.svg`: the lineage graph of each model's stable version
  (graphviz `dot`, as `ckptflow lineage --format svg`).
* `index.html`: the pictures and the tables behind them. It references
  only those files, by relative name: no script, no stylesheet and no font
  from the network, so it opens from disk without network access.

Guarantees: read-only on MLMD and on the home. Each file is written under a
temporary name and renamed into place, `index.html` last, so a reader never
sees a partial file nor an index that points at a missing one. A missing
`dot` or unreadable or damaged event files degrade the report (said in the
page), they do not fail it.

One job per module: `collect` (MLMD and the home -> plain dataclasses),
`events` (TFRecord and TensorBoard event files, CRC-checked), `plots`
(matplotlib), `html` (the page, a jinja2 template in `templates/`) and
`write` (publishing the files). Imports neither TensorFlow nor TFX.
"""

from __future__ import annotations

from ckptflow.operations.report.collect import (CATEGORIES, CATEGORY_MEANING,
                                                MarkedCheckpoint, ReportData,
                                                TrainingRun, collect)
from ckptflow.operations.report.events import TFRecordError, read_event_scalars
from ckptflow.operations.report.html import INDEX_HTML, METRICS_PNG, SERVED_PNG, render_html
from ckptflow.operations.report.plots import draw_metrics, draw_served
from ckptflow.operations.report.write import write_report

__all__ = ["CATEGORIES", "CATEGORY_MEANING", "INDEX_HTML", "METRICS_PNG", "MarkedCheckpoint",
           "ReportData", "SERVED_PNG", "TFRecordError", "TrainingRun", "collect",
           "draw_metrics", "draw_served", "read_event_scalars", "render_html",
           "write_report"]
