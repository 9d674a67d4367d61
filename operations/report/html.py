"""The report's page, `index.html`, rendered from a jinja2 template.

The page references only the files written beside it (`metrics.png`,
`served.png`, the lineage SVGs), by relative name: no script, no stylesheet
and no font from the network, so it opens from disk without network access.
Every value from MLMD or the home is HTML-escaped (autoescape is on for the
whole template).
"""

from __future__ import annotations

import datetime
from typing import Mapping

import jinja2

from ckptflow.operations.report.collect import CATEGORIES, CATEGORY_MEANING, ReportData
from ckptflow.operations.report.plots import MAX_RUNS_PLOTTED, runs_to_plot

METRICS_PNG = "metrics.png"
SERVED_PNG = "served.png"
INDEX_HTML = "index.html"

_TEMPLATE = "index.html"  # in templates/, package data


def _metrics_text(metrics: Mapping[str, float]) -> str:
  return " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())
                  if isinstance(v, (int, float)))


def _environment() -> jinja2.Environment:
  environment = jinja2.Environment(
      loader=jinja2.PackageLoader("ckptflow.operations.report", "templates"),
      autoescape=True, trim_blocks=True, lstrip_blocks=True,
      undefined=jinja2.StrictUndefined)  # a misspelt name fails, not renders ""
  environment.filters["metrics_text"] = _metrics_text
  return environment


def render_html(data: ReportData, *, title_target: str, lineage_files: Mapping[str, str],
                lineage_problems: Mapping[str, str]) -> str:
  """The page for `data`. `lineage_files` maps a heading ("model:version
  (why)") to the SVG file drawn for it; `lineage_problems` maps a model to
  why its lineage was not drawn."""
  generated = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  template = _environment().get_template(_TEMPLATE)
  return template.render(
      data=data, title_target=title_target, generated=generated,
      checkpoint_count=sum(len(r.checkpoints) for r in data.runs),
      plotted_count=len(runs_to_plot(data.runs)), max_runs_plotted=MAX_RUNS_PLOTTED,
      categories=[(c, CATEGORY_MEANING[c]) for c in CATEGORIES],
      label_history=sorted(data.labels.items()),
      lineage_files=sorted(lineage_files.items()),
      lineage_problems=sorted(lineage_problems.items()),
      metrics_png=METRICS_PNG, served_png=SERVED_PNG) + "\n"
